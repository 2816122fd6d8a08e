"""npeff-train with task.n_seeds (the zoo) and npeff-groups on it, on shrunken configs."""

from __future__ import annotations

import json

import pytest
import torch

from npeff.groups.zoo_run import load_zoo
from npeff.models import accuracy
from npeff.run import groups, train
from npeff.tasks.checkpoint import load_checkpoint
from tests.helpers.compose import compose_config

ZOO = [
    "task=group",
    "task.group=S3",
    "task.n_seeds=3",
    "model.embed_dim=8",
    "model.hidden=24",
    "trainer.max_epochs=60",
    "trainer.check_val_every_n_epoch=20",
    "logger=none",
    "progress=false",
]


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("zoo")
    train.run(compose_config("train", ZOO), out)
    return out


def test_zoo_writes_per_seed_checkpoints_and_accuracies(zoo_dir):
    m = json.loads((zoo_dir / "metrics.json").read_text())
    assert m["n_seeds"] == 3 and len(m["heldout_accuracy_per_seed"]) == 3
    for s in range(3):
        loaded = load_checkpoint(zoo_dir / "seeds" / f"seed_{s:03d}" / "model.ckpt")
        acc = accuracy(loaded.model, loaded.task.dataloader("eval", 64))
        assert acc == pytest.approx(m["eval_accuracy_per_seed"][s], abs=1e-6)
    zoo = load_zoo(zoo_dir)
    assert zoo.n_seeds == 3 and zoo.params["hidden.weight"].shape == (3, 24, 16)
    # model.ckpt at the root is seed 0's, for stages that take a run dir
    root = torch.load(zoo_dir / "model.ckpt", weights_only=True)["state_dict"]
    assert torch.equal(root["hidden.weight"], zoo.params["hidden.weight"][0])


def test_groups_stage_bound_sound_on_every_seed(zoo_dir, tmp_path):
    cfg = compose_config("groups", [f"inputs.zoo={zoo_dir}", "progress=false"])
    m = groups.run(cfg, tmp_path)
    summary = json.loads((tmp_path / "groups_summary.json").read_text())
    assert m["n_seeds"] == 3 and m["bound_sound_all_seeds"]
    for s in summary["seeds"]:
        assert s["bound"]["bound"] <= s["bound"]["brute_force_accuracy"]
    assert (tmp_path / "group_section.html").read_text().startswith("<h2>Group network: S3")
    assert len(list((tmp_path / "seeds").glob("seed_*.json"))) == 3


def test_groups_stage_rejects_other_checkpoints(toy_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="not a group-operation network"):
        groups.run(compose_config("groups", [f"inputs.zoo={toy_checkpoint}"]), tmp_path)


def test_zoo_bad_settings(tmp_path):
    with pytest.raises(ValueError, match="full batch"):
        train.run(compose_config("train", [*ZOO, "batch_size=16"]), tmp_path)
    with pytest.raises(ValueError, match="n_seeds must be >= 1"):
        train.run(
            compose_config("train", [*ZOO, "task.n_seeds=0", "task.zoo_trainer=true"]), tmp_path
        )


def test_groups_stage_reads_coar_top_units_against_irreps(zoo_dir, tmp_path):
    """COAR attributions of the zoo's first seed (npeff.coar's public API), read by npeff-groups:
    per-example irrep purity of the top units next to the shuffled control; attributions of
    another model are refused."""
    from npeff.coar import compute_attributions

    ck = load_checkpoint(zoo_dir / "model.ckpt")
    units = [{"pattern": "hidden.weight", "granularity": "neuron"}]
    loader = ck.task.dataloader("eval", 64)
    path = tmp_path / "attributions.h5"
    compute_attributions(
        ck.model, loader, path, units=units, n_masks=120, evaluate=False, progress=False
    )
    cfg = compose_config(
        "groups", [f"inputs.zoo={zoo_dir}", f"inputs.coar={path}", "progress=false"]
    )
    m = groups.run(cfg, tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "groups_summary.json").read_text())
    coar = summary["coar"]
    assert coar["n_examples"] == len(ck.task.tensors("eval")["labels"]) and coar["top_k"] == 5
    assert 0 < coar["mean_purity"] <= 1 and 0 < coar["shuffled_mean_purity"] <= 1
    assert m["coar_top_unit_irrep_purity"] == coar["mean_purity"]
    other = load_checkpoint(zoo_dir / "seeds" / "seed_001" / "model.ckpt")
    compute_attributions(
        other.model,
        loader,
        tmp_path / "other.h5",
        units=units,
        n_masks=120,
        evaluate=False,
        progress=False,
    )
    bad = compose_config(
        "groups", [f"inputs.zoo={zoo_dir}", f"inputs.coar={tmp_path / 'other.h5'}"]
    )
    with pytest.raises(ValueError, match="differ"):
        groups.run(bad, tmp_path / "bad")
