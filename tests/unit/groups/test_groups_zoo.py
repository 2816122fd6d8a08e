"""The stacked zoo trainer against separately trained GroupMLPs (the reference)."""

from __future__ import annotations

import torch

from npeff.groups.zoo import build_zoo_optimizer, init_params, train_zoo, unstack, zoo_logits
from npeff.models.lightning import build_optimizer
from npeff.models.simple import GroupMLP
from npeff.tasks import build_task

OPTIM = {"name": "adam", "lr": 1e-2, "betas": [0.9, 0.98], "weight_decay": 2e-4}


def test_zoo_logits_equal_groupmlp_forward():
    p = init_params(3, 6, 8, 16, True, seed=5)
    x, y = torch.arange(36) // 6, torch.arange(36) % 6
    out = zoo_logits(p, x, y)
    for s in range(3):
        torch.manual_seed(5 + s)
        m = GroupMLP(6, 6, 8, 16, True)
        assert torch.allclose(out[s], m(x, y), atol=1e-5)


def test_zoo_training_equals_separate_runs():
    task = build_task({"name": "group", "group": "S3", "train_fraction": 0.5})
    t = task.tensors("train")
    x, y, labels = t["x"], t["y"], t["labels"]
    p0 = init_params(2, 6, 8, 16, True, seed=0)
    res = train_zoo(p0, (x, y, labels), None, OPTIM, epochs=25, check_every=5)
    for s in range(2):
        m = GroupMLP(6, 6, 8, 16, True)
        m.load_state_dict(unstack(p0, s))
        opt = build_optimizer(m, OPTIM)
        for _ in range(25):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(x, y), labels).backward()
            opt.step()
        for k, v in m.state_dict().items():
            assert torch.allclose(res.params[k][s], v, atol=1e-4), k
    assert len(res.history) == 5


def test_zoo_optimizer_does_not_decay_biases():
    p = {k: torch.nn.Parameter(v) for k, v in init_params(2, 4, 3, 5).items()}
    opt = build_zoo_optimizer(p, OPTIM)
    decay = {id(q): g["weight_decay"] for g in opt.param_groups for q in g["params"]}
    assert decay[id(p["hidden.bias"])] == 0.0 and decay[id(p["unembed.bias"])] == 0.0
    assert decay[id(p["hidden.weight"])] == 2e-4 and decay[id(p["embed_left"])] == 2e-4


def test_zoo_resumes_from_state(tmp_path):
    task = build_task({"name": "group", "group": "S3", "train_fraction": 0.5})
    t = task.tensors("train")
    data = (t["x"], t["y"], t["labels"])
    p0 = init_params(2, 6, 8, 16, True, seed=0)
    full = train_zoo(p0, data, None, OPTIM, epochs=20, check_every=10)
    state = tmp_path / "state.pt"
    train_zoo(p0, data, None, OPTIM, epochs=10, check_every=10, state_path=state)
    resumed = train_zoo(p0, data, None, OPTIM, epochs=20, check_every=10, state_path=state)
    assert resumed.start_epoch == 10
    for k in full.params:
        assert torch.allclose(full.params[k], resumed.params[k], atol=1e-6)


def test_recipes_override_optim():
    import pytest
    from omegaconf import OmegaConf

    from npeff.groups.zoo_run import zoo_optim

    cfg = OmegaConf.create({"optim": {"name": "adam", "lr": 0.5}, "task": {"recipe": "chughtai"}})
    o = zoo_optim(cfg)
    assert o["name"] == "adamw" and o["lr"] == 1e-3 and o["weight_decay"] == 1.0
    cfg.task.recipe = None
    assert zoo_optim(cfg)["lr"] == 0.5
    cfg.task.recipe = "nope"
    with pytest.raises(ValueError, match="unknown recipe"):
        zoo_optim(cfg)


def test_hand_written_gradients_equal_autograd_in_float64():
    """zoo_loss_and_grads against autograd of zoo_logits + cross-entropy, with blocks that split
    the batch (block < B) and that hold several seeds (block > B), with and without u."""
    import pytest

    from npeff.groups.zoo_grad import join_hidden, split_hidden, zoo_loss_and_grads

    task = build_task({"name": "group", "group": "S3", "train_fraction": 0.5})
    t = task.tensors("train")
    x, y, labels = t["x"], t["y"], t["labels"]
    for bias in (True, False):
        p = {k: v.double() for k, v in init_params(3, 6, 8, 16, bias, seed=1).items()}
        q = {k: v.clone().requires_grad_(True) for k, v in p.items()}
        logits = zoo_logits(q, x, y)
        s, b, n = logits.shape
        ref = (
            torch.nn.functional.cross_entropy(
                logits.reshape(s * b, n), labels.repeat(s), reduction="sum"
            )
            / b
        )
        ref.backward()
        for block in (5, 1000):
            loss, grads = zoo_loss_and_grads(p, x, y, labels, block=block)
            assert float(loss) == pytest.approx(float(ref), rel=1e-12)
            assert set(grads) == set(p)
            for k in p:
                assert torch.allclose(grads[k], q[k].grad, rtol=1e-10, atol=1e-12), (k, block)
            # the trainer's split form (two halves of hidden.weight) gives the same gradient
            _, split_grads = zoo_loss_and_grads(split_hidden(p), x, y, labels, block=block)
            assert set(split_grads) == set(split_hidden(p))
            for k, g in join_hidden(split_grads).items():
                assert torch.allclose(g, q[k].grad, rtol=1e-10, atol=1e-12), (k, block)


def test_group_mlp_parameter_names_are_its_state_dict_keys():
    from npeff.models.simple import GROUP_MLP_PARAMETERS, GroupMLP

    assert list(GroupMLP(group_order=6, num_classes=6).state_dict()) == list(GROUP_MLP_PARAMETERS)
