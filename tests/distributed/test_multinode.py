"""Two "nodes" × one process on 127.0.0.1 (two `torchrun --nnodes 2 --nproc-per-node 1` agents,
as README "Running on a cluster" runs them) for `npeff-decompose` and `npeff-pefs`: the same
result as one process, one run directory (rank 0's, which rank 1 learns from torchrun's store),
and every file in it written once (``.hydra/`` and the log by rank 0 only). The same for two
tasks as `srun --nodes 2 --ntasks-per-node 1` starts them (SLURM's environment, simulated: the
ranks are SLURM_PROCID; LOCAL_RANK is unset and SLURM_LOCALID is 0 on both)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from npeff.artifacts.decomposition import load_decomposition
from npeff.artifacts.pefs import load_pefs, save_pefs
from npeff.decomp.synthetic import planted_lrm_pefs
from npeff.models import build_model, save_checkpoint
from npeff.run import decompose, pefs
from npeff.tasks import build_task
from tests.helpers.compose import compose_config
from tests.helpers.problems import DDP_DECOMP_OVERRIDES, PEFS_MODEL, PEFS_TASK

BIN = Path(sys.executable).parent
TIMEOUT_S = 240


def wait_all(procs: list[subprocess.Popen], what: str) -> list[str]:
    """The outputs of ``procs`` (killed past TIMEOUT_S); each must have exited with status 0."""
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=TIMEOUT_S)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    for i, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"{what} {i} failed:\n{out[-4000:]}"
    return outs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_two_nodes(exe: str, args: list[str], cwd: Path) -> list[str]:
    """Run ``torchrun --nnodes 2 --nproc-per-node 1 --node-rank {0,1} ... $(which exe) args`` as
    two processes on 127.0.0.1; returns their outputs (asserting both succeeded)."""
    port = free_port()
    env = dict(os.environ, WANDB_MODE="disabled", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    procs = [
        subprocess.Popen(
            [
                str(BIN / "torchrun"),
                "--nnodes",
                "2",
                "--nproc-per-node",
                "1",
                "--node-rank",
                str(node),
                "--master-addr",
                "127.0.0.1",
                "--master-port",
                str(port),
                str(BIN / exe),
                *args,
            ],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for node in (0, 1)
    ]
    return wait_all(procs, "node")


def the_run_dir(outputs: Path, stage: str) -> Path:
    """The one run directory under ``outputs/<stage>/<date>/<time>/`` (both ranks share it)."""
    dirs = [d for d in (outputs / stage).glob("*/*") if d.is_dir()]
    assert len(dirs) == 1, f"expected one run dir for both ranks, found {dirs}"
    run = dirs[0]
    assert (run / ".hydra" / "config.yaml").is_file()
    assert [p.name for p in run.glob("*.log")] == [f"{stage}.log"], "one log file (rank 0's)"
    return run


@pytest.mark.slow
def test_decompose_two_nodes_equals_one_process(tmp_path):
    pefs_data, _ = planted_lrm_pefs(n=20, m=29, C=2, r=3, K=30, seed=2)
    path = save_pefs(pefs_data, tmp_path / "pefs.h5")
    args = [f"inputs.pefs={path}", *DDP_DECOMP_OVERRIDES]
    cfg = compose_config("decompose", args)
    decompose.run(cfg, tmp_path / "one")

    outputs = tmp_path / "outputs"
    torchrun_two_nodes(
        "npeff-decompose",
        [
            *args,
            f"paths.output_dir={outputs}",
            "trainer.num_nodes=2",
            "trainer.devices=1",
            "trainer.strategy=ddp",
        ],
        tmp_path,
    )
    run = the_run_dir(outputs, "decompose")
    one = load_decomposition(tmp_path / "one" / "decomposition.h5")
    two = load_decomposition(run / "decomposition.h5")
    np.testing.assert_allclose(two.W, one.W, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(two.G, one.G, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(two.losses["joint"], one.losses["joint"], rtol=1e-6)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["num_nodes"] == 2 and metrics["n_steps"] == 16


def srun_two_nodes(exe: str, args: list[str], cwd: Path) -> None:
    """The two tasks ``srun --nodes 2 --ntasks-per-node 1 exe args`` starts, on 127.0.0.1."""
    port = free_port()
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TORCHELASTIC", "SLURM", "MASTER_", "RANK", "LOCAL_RANK"))
    }
    base.update(
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
        SLURM_JOB_ID="4242",
        SLURM_STEP_ID="0",
        SLURM_JOB_NAME="npeff",
        SLURM_NTASKS="2",
        SLURM_NNODES="2",
        SLURM_NTASKS_PER_NODE="1",
        SLURM_NODELIST="127.0.0.1",
        SLURM_LOCALID="0",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    procs = [
        subprocess.Popen(
            [str(BIN / exe), *args],
            cwd=cwd,
            env=dict(base, SLURM_PROCID=str(r), SLURM_NODEID=str(r)),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in (0, 1)
    ]
    wait_all(procs, "task")


@pytest.mark.slow
def test_decompose_srun_two_nodes_equals_one_process(tmp_path):
    pefs_data, _ = planted_lrm_pefs(n=20, m=29, C=2, r=3, K=30, seed=2)
    path = save_pefs(pefs_data, tmp_path / "pefs.h5")
    args = [f"inputs.pefs={path}", *DDP_DECOMP_OVERRIDES]
    cfg = compose_config("decompose", args)
    decompose.run(cfg, tmp_path / "one")

    outputs = tmp_path / "outputs"
    args = [a for a in args if a != "logger=none"] + ["logger=wandb"]  # one W&B run, rank 0's
    srun_two_nodes(
        "npeff-decompose",
        [
            *args,
            f"paths.output_dir={outputs}",
            "trainer.num_nodes=2",
            "trainer.devices=1",
            "trainer.strategy=ddp",
        ],
        tmp_path,
    )
    run = outputs / "decompose" / "slurm-4242" / "0"  # README: outputs/<stage>/slurm-<job>/<step>
    assert [d for d in (outputs / "decompose").glob("*/*")] == [run]
    assert [p.name for p in run.glob("*.log")] == ["decompose.log"]
    assert len(list((run / "wandb").glob("offline-run-*"))) == 1
    one = load_decomposition(tmp_path / "one" / "decomposition.h5")
    two = load_decomposition(run / "decomposition.h5")
    np.testing.assert_allclose(two.W, one.W, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(two.G, one.G, rtol=1e-6, atol=1e-9)
    assert json.loads((run / "metrics.json").read_text())["world_size"] == 2


@pytest.mark.slow
def test_pefs_two_nodes_equals_one_process(tmp_path):
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
    one = pefs.run(cfg, tmp_path / "one")

    outputs = tmp_path / "outputs"
    torchrun_two_nodes(
        "npeff-pefs",
        [
            *args,
            f"paths.output_dir={outputs}",
            "trainer.num_nodes=2",
            "trainer.devices=1",
            "trainer.strategy=ddp",
        ],
        tmp_path,
    )
    run = the_run_dir(outputs, "pefs")
    a, b = load_pefs(one["pefs"]), load_pefs(run / "pefs.h5")
    for f in ("values", "indices", "norms", "labels", "logits", "ranks", "col_sizes"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)
    np.testing.assert_array_equal(a.source_indices, b.source_indices)
    assert not list(run.glob(".pefs.h5.shard*")), "shards are removed after the merge"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["num_nodes"] == 2 and metrics["n_examples"] == 9


def test_num_nodes_without_a_launcher_is_refused(tmp_path):
    """trainer.num_nodes=2 in a plain process: one message naming torchrun and srun, exit 2,
    before any work (no run directory is written past Hydra's own files)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TORCHELASTIC", "SLURM", "MASTER_", "NODE_RANK", "WORLD_SIZE"))
    }
    env["WANDB_MODE"] = "disabled"
    proc = subprocess.run(
        [
            str(BIN / "npeff-decompose"),
            f"inputs.pefs={tmp_path / 'missing.h5'}",
            "trainer.num_nodes=2",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "trainer.num_nodes=2" in proc.stderr and "torchrun" in proc.stderr
    assert "srun" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "decomposition.h5").exists()
