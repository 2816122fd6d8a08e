"""A two-job `npeff` sweep through Hydra's submitit launcher (`hydra/launcher=submitit_local`, the
`cluster` extra): the jobs run in their own processes, each with its own run directory and W&B
run; the ablation's comparison step runs once, after both; the results equal the basic
launcher's. `submitit_slurm` is the same launcher on a SLURM queue (README "Running on a
cluster")."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from npeff.artifacts.decomposition import load_decomposition

pytestmark = pytest.mark.slow  # a submitit sweep of the pipeline

BIN = Path(sys.executable).parent


def _has_submitit_launcher() -> bool:
    # find_spec of a dotted name raises when the parent namespace `hydra_plugins` is absent too.
    try:
        return importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is not None
    except ModuleNotFoundError:
        return False


needs_cluster_extra = pytest.mark.skipif(
    not _has_submitit_launcher(),
    reason='the cluster extra (hydra-submitit-launcher) is not installed: pip install -e ".[cluster]"',
)

# Smaller than tests.helpers.problems.TINY_PIPELINE: two jobs start their own interpreters.
TINIER = [
    "task.n_train=240",
    "task.n_fit=48",
    "task.n_eval=48",
    "model.hidden_size=16",
    "model.num_layers=1",
    "model.intermediate_size=32",
    "trainer.max_epochs=3",
    "trainer.enable_model_summary=false",
    "progress=false",
    "fisher.n_values=200",
    "decomp.n_iters_g_only=3",
    "decomp.n_iters_joint=12",
    "perturb.n_top=8",
    "+stages.fit.n_iters=20",
    "+stages.report.n_shuffles=2",
    "experiment=components_ablation",
    "decomp.n_components=2,3",
]


def sweep(tmp_path: Path, name: str, extra: list[str]) -> tuple[Path, str, int]:
    """Run the sweep; returns its directory, the launching process's output and its pid."""
    out = tmp_path / name
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", HF_HUB_OFFLINE="1")
    cmd = [
        str(BIN / "npeff"),
        *TINIER,
        f"paths.output_dir={tmp_path / 'outputs'}",  # one training cache for both sweeps
        f"hydra.sweep.dir={out}",
        *extra,
    ]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        stdout = proc.communicate(timeout=900)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stdout[-5000:]
    return out, stdout, proc.pid


@needs_cluster_extra
def test_submitit_local_sweep_equals_basic_launcher(tmp_path):
    sub, stdout, launcher_pid = sweep(
        tmp_path, "submitit", ["hydra/launcher=submitit_local", "logger=wandb"]
    )
    # each job ran in its own process: submitit_local names a job's folder by its process id
    jobs = sorted((sub / ".submitit").glob("[0-9]*"))
    pids = {int(j.name) for j in jobs}
    assert len(pids) == 2 and all(list(j.glob("*_result.pkl")) for j in jobs), jobs
    assert launcher_pid not in pids and os.getpid() not in pids
    for j in jobs:
        assert "npeff: done" in (j / f"{j.name}_0_log.out").read_text()
    assert "npeff: done" not in stdout, "the jobs must not run in the launching process"
    # own run dirs, own W&B runs
    run_ids = set()
    for job in ("0", "1"):
        runs = list((sub / job / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, f"job {job}: expected one W&B run, found {runs}"
        run_ids.add(runs[0].name.rsplit("-", 1)[-1])
    assert len(run_ids) == 2
    # the comparison step ran once, in the launching process, after both jobs
    assert stdout.count("npeff sweep comparison:") == 1
    assert (sub / "compare" / "metrics.json").is_file()

    basic, _, _ = sweep(tmp_path, "basic", ["logger=none"])
    for job, r in (("0", 2), ("1", 3)):
        a = json.loads((sub / job / "metrics.json").read_text())
        b = json.loads((basic / job / "metrics.json").read_text())
        assert a["n_components"] == b["n_components"] == r
        assert b["train_cached"], "the basic sweep reuses the model the submitit jobs trained"
        da = load_decomposition(sub / job / "decompose" / "decomposition.h5")
        db = load_decomposition(basic / job / "decompose" / "decomposition.h5")
        np.testing.assert_allclose(da.W, db.W, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(da.G, db.G, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(a["kl_ratio_median"], b["kl_ratio_median"], rtol=1e-5)
    ca = json.loads((sub / "compare" / "metrics.json").read_text())
    cb = json.loads((basic / "compare" / "metrics.json").read_text())
    assert ca.keys() == cb.keys()
    for k in ca:
        if isinstance(ca[k], float):
            np.testing.assert_allclose(ca[k], cb[k], rtol=1e-5, err_msg=k)
