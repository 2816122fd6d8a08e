"""`npeff trainer=ddp`: every Lightning stage of the pipeline on 2 CPU processes (ddp_spawn)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.problems import TINY_PIPELINE

pytestmark = pytest.mark.slow  # the pipeline on 2 processes

BIN = Path(sys.executable).parent


def test_pipeline_on_two_processes(tmp_path):
    args = [a for a in TINY_PIPELINE if not a.startswith("trainer.max_epochs")] + [
        "trainer=ddp",
        "trainer.max_epochs=3",
        f"paths.output_dir={tmp_path / 'outputs'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    env = dict(os.environ, WANDB_MODE="disabled", HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [str(BIN / "npeff"), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "run"
    assert json.loads((run / "decompose" / "metrics.json").read_text())["world_size"] == 2
    assert json.loads((run / "pefs_fit" / "metrics.json").read_text())["devices"] == 2
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["n_components"] == 4 and metrics["kl_ratio_median"] is not None
