"""`npeff-pefs trainer.devices=2 trainer.strategy=ddp` (2 CPU processes: Lightning re-runs the
console script as rank 1) writes the same pefs.h5 as the single-process stage. (ddp_spawn is
covered by test_pefs_ddp.py.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from npeff.artifacts.pefs import load_pefs
from npeff.models import build_model, save_checkpoint
from npeff.run.pefs import run
from npeff.tasks import build_task
from tests.helpers.compose import compose_config
from tests.helpers.problems import PEFS_MODEL, PEFS_TASK

pytestmark = pytest.mark.slow  # 2 processes


def test_cli_two_processes_equal_one(tmp_path):
    task = build_task(PEFS_TASK)
    torch.manual_seed(0)
    ckpt = save_checkpoint(
        tmp_path / "model.ckpt",
        build_model(PEFS_MODEL, task.model_hints()),
        {"model": PEFS_MODEL, "task": PEFS_TASK},
    )
    args = [
        f"inputs.checkpoint={ckpt}",
        "n_examples=9",
        "batch_size=2",
        "fisher=lvrm",
        "fisher.n_values=25",
        "fisher.min_prob_class=0.2",
        "progress=false",
    ]
    cfg = compose_config("pefs", args)
    one = run(cfg, tmp_path / "one")
    exe = Path(sys.executable).parent / "npeff-pefs"
    cmd = [
        str(exe) if exe.exists() else shutil.which("npeff-pefs"),
        *args,
        "trainer.devices=2",
        "trainer.strategy=ddp",
        f"hydra.run.dir={tmp_path / 'two'}",
    ]
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    subprocess.run(cmd, env=env, check=True, timeout=300)
    a, b = load_pefs(one["pefs"]), load_pefs(tmp_path / "two" / "pefs.h5")
    assert b.metadata["config"]["trainer"]["devices"] == 2
    for f in (
        "values",
        "indices",
        "norms",
        "labels",
        "logits",
        "ranks",
        "col_sizes",
        "source_indices",
    ):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)
    assert not list((tmp_path / "two").glob(".pefs.h5.shard*")), (
        "shards are removed after the merge"
    )
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert metrics["devices"] == 2 and metrics["n_examples"] == 9
