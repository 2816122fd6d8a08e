"""Models: the forward contract, vmap per-example gradients vs a loop of backward passes for each
built-in model, parameter selection, checkpoints and clear errors."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, grad, vmap

from npeff.models import (
    MODELS,
    build_model,
    forward_logits,
    parameter_layout,
    save_checkpoint,
    select_parameters,
)
from npeff.tasks import build_task
from npeff.tasks.checkpoint import load_checkpoint

TINY_BERT = {
    "name": "tiny_bert",
    "hidden_size": 16,
    "num_layers": 1,
    "num_heads": 2,
    "intermediate_size": 32,
}


def _batch_for(model_name: str, n: int = 5) -> tuple[dict, dict]:
    """A small batch and the task hints for a model (padded token batch for BERT)."""
    g = torch.Generator().manual_seed(0)
    if model_name == "tiny_bert":
        ids = torch.randint(4, 30, (n, 12), generator=g)
        mask = torch.ones(n, 12, dtype=torch.long)
        for i in range(n):  # different amounts of padding per example
            mask[i, 12 - 2 * i :] = 0
        ids = ids * mask
        types = torch.zeros_like(ids)
        types[:, 5:] = 1
        batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types * mask}
        hints = {"num_classes": 3, "vocab_size": 30, "max_length": 12}
    elif model_name == "group_mlp":
        batch = {
            "x": torch.randint(0, 6, (n,), generator=g),
            "y": torch.randint(0, 6, (n,), generator=g),
        }
        hints = {"num_classes": 6, "group_order": 6}
    else:  # mlp, cnn on 8x8 images
        batch = {"x": torch.rand(n, 1, 8, 8, generator=g)}
        hints = {"num_classes": 4, "in_features": 64, "in_channels": 1, "image_size": 8}
    batch["labels"] = torch.randint(0, hints["num_classes"], (n,), generator=g)
    return batch, hints


MODEL_CFGS = {
    "mlp": {"name": "mlp", "hidden_sizes": [8]},
    "cnn": {"name": "cnn", "channels": [4, 4], "hidden": 8},
    "group_mlp": {"name": "group_mlp", "embed_dim": 8, "hidden": 8},
    "tiny_bert": TINY_BERT,
}


@pytest.mark.parametrize("name", list(MODEL_CFGS))
def test_vmap_per_example_grads_equal_loop(name):
    torch.manual_seed(0)
    batch, hints = _batch_for(name)
    model = build_model(MODEL_CFGS[name], hints).double().eval()
    if name == "cnn":  # non-trivial running statistics so eval-mode BatchNorm matters
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    batch = {k: (v.double() if v.is_floating_point() else v) for k, v in batch.items()}
    params = {n: p.detach() for n, p in select_parameters(model)}
    buffers = {n: b for n, b in model.named_buffers()}
    inputs = {k: v for k, v in batch.items() if k != "labels"}

    def loss_one(p, example, label):
        ex = {k: v.unsqueeze(0) for k, v in example.items()}
        logits = functional_call(model, (p, buffers), (), ex)
        return torch.nn.functional.cross_entropy(logits, label.unsqueeze(0))

    per_example = vmap(grad(loss_one), in_dims=(None, 0, 0))(params, inputs, batch["labels"])

    n = batch["labels"].shape[0]
    for i in range(n):
        model.zero_grad()
        one = {k: v[i : i + 1] for k, v in batch.items()}
        loss = torch.nn.functional.cross_entropy(forward_logits(model, one), one["labels"])
        loss.backward()
        for pname, p in model.named_parameters():
            torch.testing.assert_close(per_example[pname][i], p.grad, rtol=1e-7, atol=1e-9)


def test_tiny_bert_ignores_padding_and_batching():
    batch, hints = _batch_for("tiny_bert")
    model = build_model(TINY_BERT, hints)
    assert not model.training
    logits = forward_logits(model, batch)
    junk = dict(batch)
    junk["input_ids"] = torch.where(
        batch["attention_mask"].bool(), batch["input_ids"], torch.full_like(batch["input_ids"], 7)
    )
    torch.testing.assert_close(forward_logits(model, junk), logits)
    # each example alone, trimmed to its real length, gives the same logits
    for i in range(batch["labels"].shape[0]):
        length = int(batch["attention_mask"][i].sum())
        one = {k: v[i : i + 1, :length] for k, v in batch.items() if k != "labels"}
        torch.testing.assert_close(model(**one), logits[i : i + 1], rtol=1e-5, atol=1e-5)


def test_forward_logits_accepts_objects_and_drops_labels():
    class WithLogits(torch.nn.Module):
        def forward(self, x):
            return type("Out", (), {"logits": x * 2})()

    x = torch.randn(3, 4)
    torch.testing.assert_close(
        forward_logits(WithLogits(), {"x": x, "labels": torch.zeros(3)}), x * 2
    )


def test_select_parameters_patterns_and_layout():
    batch, hints = _batch_for("tiny_bert")
    model = build_model(TINY_BERT, hints)
    all_named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert [n for n, _ in select_parameters(model)] == [n for n, _ in all_named]
    head = select_parameters(model, include=["hf.classifier.*"])
    assert [n for n, _ in head] == ["hf.classifier.weight", "hf.classifier.bias"]
    no_bias = select_parameters(model, include="hf.classifier.*", exclude="*.bias")
    assert [n for n, _ in no_bias] == ["hf.classifier.weight"]
    layout = parameter_layout(model, include=["hf.classifier.*", "hf.bert.pooler.*"])
    # model order, not pattern order
    assert layout.names == (
        "hf.bert.pooler.dense.weight",
        "hf.bert.pooler.dense.bias",
        "hf.classifier.weight",
        "hf.classifier.bias",
    )
    assert layout.offsets[1] == 16 * 16 and layout.n_parameters == 16 * 16 + 16 + 3 * 16 + 3
    with pytest.raises(ValueError, match="match nothing.*hf.bert.embeddings"):
        select_parameters(model, include=["nope.*"])
    frozen = build_model({**TINY_BERT, "trainable": ["hf.classifier.*"]}, hints)
    assert [n for n, _ in select_parameters(frozen)] == [
        "hf.classifier.weight",
        "hf.classifier.bias",
    ]


def test_build_model_errors_list_what_is_available():
    with pytest.raises(ValueError, match="available models.*tiny_bert"):
        build_model({"name": "resnet9000"}, {"num_classes": 2})
    with pytest.raises(ValueError, match="unknown option.*hiden.*hidden"):
        build_model({"name": "group_mlp", "hiden": 3}, {"num_classes": 2, "group_order": 2})
    with pytest.raises(ValueError, match="needs \\['group_order'\\]"):
        build_model({"name": "group_mlp"}, {"num_classes": 2})
    assert {"mlp", "cnn", "group_mlp", "tiny_bert", "hf_local", "torchvision"} <= set(MODELS)


def test_checkpoint_round_trip(toy_checkpoint, tmp_path):
    loaded = load_checkpoint(toy_checkpoint)
    assert not loaded.model.training
    assert loaded.cfg.task.name == "toy_nli" and loaded.cfg.model.name == "tiny_bert"
    assert loaded.path == toy_checkpoint
    batch = next(iter(loaded.task.dataloader("eval", 8)))
    logits = forward_logits(loaded.model, batch)
    # the run directory works as well, and a re-save/load gives identical logits
    again = load_checkpoint(toy_checkpoint.parent)
    torch.testing.assert_close(forward_logits(again.model, batch), logits)
    copy = save_checkpoint(tmp_path / "model.ckpt", loaded.model, loaded.cfg)
    torch.testing.assert_close(forward_logits(load_checkpoint(copy).model, batch), logits)
    # the weights are the trained ones, not a fresh init
    fresh = build_model(loaded.cfg.model, loaded.task.model_hints())
    assert not torch.allclose(forward_logits(fresh, batch), logits)


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found.*npeff-train"):
        load_checkpoint(tmp_path / "missing" / "model.ckpt")
    with pytest.raises(FileNotFoundError, match="without model.ckpt"):
        load_checkpoint(tmp_path)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"something": torch.zeros(2)}, foreign)
    with pytest.raises(ValueError, match="not an npeff model checkpoint"):
        load_checkpoint(foreign)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="not a readable npeff model checkpoint"):
        load_checkpoint(garbage)


def test_hf_local_loads_a_saved_folder(tmp_path):
    batch, hints = _batch_for("tiny_bert")
    model = build_model(TINY_BERT, hints)
    model.hf.save_pretrained(tmp_path / "hf")
    local = build_model({"name": "hf_local", "path": str(tmp_path / "hf")}, hints)
    torch.testing.assert_close(forward_logits(local, batch), forward_logits(model, batch))
    with pytest.raises(FileNotFoundError, match="not found"):
        build_model({"name": "hf_local", "path": str(tmp_path / "nothing")}, hints)


def test_torchvision_model_or_clear_error():
    from npeff.models.vision import torchvision_available

    hints = {"num_classes": 10}
    if torchvision_available():
        model = build_model({"name": "torchvision", "arch": "resnet18"}, hints)
        assert forward_logits(model, {"x": torch.rand(2, 1, 8, 8)}).shape == (2, 10)
    else:
        with pytest.raises(RuntimeError, match="torchvision"):
            build_model({"name": "torchvision"}, hints)


def test_models_fit_their_default_tasks():
    """Each task's batch keys are exactly the keyword arguments of its default model."""
    for task_cfg, model_cfg in [
        ({"name": "toy_nli", "n_train": 20, "n_fit": 5, "n_eval": 5}, TINY_BERT),
        ({"name": "group", "group": "S3"}, MODEL_CFGS["group_mlp"]),
        ({"name": "digits"}, MODEL_CFGS["cnn"]),
        ({"name": "digits"}, MODEL_CFGS["mlp"]),
    ]:
        task = build_task(task_cfg)
        model = build_model(model_cfg, task.model_hints())
        batch = next(iter(task.dataloader("fit", 4)))
        assert forward_logits(model, batch).shape == (4, task.num_classes)
