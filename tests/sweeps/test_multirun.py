"""A two-job `npeff` multirun (own dirs, own offline W&B runs) and the ablation comparison step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.problems import TINY_PIPELINE

pytestmark = pytest.mark.slow  # Hydra multiruns of the pipeline

BIN = Path(sys.executable).parent


def npeff(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [str(BIN / "npeff"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def tiny_args(tmp_path: Path) -> list[str]:
    return [a for a in TINY_PIPELINE if not a.startswith("logger=")] + [
        f"paths.output_dir={tmp_path / 'outputs'}"
    ]


def test_two_job_multirun_with_wandb_and_compare(tmp_path):
    sweep = tmp_path / "sweep"
    args = tiny_args(tmp_path) + [
        "logger=wandb",
        "decomp.n_components=3,4",
        f"hydra.sweep.dir={sweep}",
        "--multirun",
    ]
    npeff(args, tmp_path)
    run_ids = set()
    for job, r in (("0", 3), ("1", 4)):
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        assert metrics["n_components"] == r
        runs = list((sweep / job / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, f"job {job}: expected one W&B run, found {runs}"
        run_ids.add(runs[0].name.rsplit("-", 1)[-1])
    assert len(run_ids) == 2, "each job must log into its own W&B run"
    # job 1 trained the same model as job 0: it came from the cache
    assert json.loads((sweep / "1" / "metrics.json").read_text())["train_cached"]

    out = tmp_path / "cmp"
    env = dict(os.environ, WANDB_MODE="disabled")
    proc = subprocess.run(
        [str(BIN / "npeff-compare"), str(sweep), f"hydra.run.dir={out}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = json.loads((out / "metrics.json").read_text())
    assert table, "npeff-compare wrote an empty table"
    assert list(out.glob("*.png")) or list(out.rglob("*.png"))


def test_components_ablation_runs_the_comparison_step(tmp_path):
    sweep = tmp_path / "ablation"
    args = tiny_args(tmp_path) + [
        "logger=none",
        "experiment=components_ablation",
        "decomp.n_components=2,4",
        f"hydra.sweep.dir={sweep}",
    ]
    # experiment=components_ablation turns on MULTIRUN itself; the command-line sweep narrows it
    npeff(args, tmp_path)
    assert (sweep / "0" / "metrics.json").is_file() and (sweep / "1" / "metrics.json").is_file()
    compare = sweep / "compare"
    assert (compare / "metrics.json").is_file()
    assert list(compare.rglob("*.png"))
