"""How far several processes drift from one on a real PEF file: float32 and float64 side by side.

    python bench/ddp_agreement.py --pefs outputs/pipeline/<date>/<time>/pefs_fit/pefs.h5
    python bench/ddp_agreement.py --pefs ... --g-only 50 --joint 500 --dtypes float32,float64

Runs `npeff-decompose` on the file as one process, as two "nodes" × one process
(`torchrun --nnodes 2 --nproc-per-node 1` on 127.0.0.1, README "Running on a cluster") and as two
ddp_spawn processes (and, as a control without any second process, one process that sums A·Gᵀ
in other column chunks: ``--launches one_block_cols_4096``), each in float32 and float64, and prints max|Δ| / max|·| of W and G against
the one-process run of the same dtype, one JSON line per (dtype, launch) and a last summary line.

Reading it: if float64 agrees to ~1e-12 while float32 drifts, the processes hold the same state
and compute the same maths; the float32 gap is the reduction order of the all-reduced sums
(rounding), amplified by the iterations. A bug (state that differs between processes) would show
in float64 too.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from npeff.artifacts.decomposition import load_decomposition

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    return dict(os.environ, WANDB_MODE="disabled", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")


def _check(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        out = p.communicate(timeout=1800)[0]
        if p.returncode != 0:
            raise SystemExit(f"a decomposition failed:\n{out[-3000:]}")


def run_decompose(launch: str, args: list[str], run_dir: Path) -> Path:
    """``npeff-decompose args`` as ``launch`` (one | torchrun_2_nodes | ddp_spawn_2 |
    one_block_cols_<k>: one process summing A·Gᵀ in column chunks of k) into run_dir; returns the
    decomposition file."""
    args = [*args, f"hydra.run.dir={run_dir}"]
    exe = str(BIN / "npeff-decompose")
    if launch.startswith("one_block_cols_"):  # one process, another summation order
        launch, args = "one", [*args, f"decomp.block_cols={launch.rsplit('_', 1)[1]}"]
    if launch == "one":
        procs = [subprocess.Popen([exe, *args], env=_env(), stdout=subprocess.PIPE, text=True)]
    elif launch == "ddp_spawn_2":
        cmd = [exe, *args, "trainer.devices=2", "trainer.strategy=ddp_spawn"]
        procs = [subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, text=True)]
    else:
        port = _free_port()
        procs = [
            subprocess.Popen(
                [
                    str(BIN / "torchrun"),
                    *("--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(node)),
                    *("--master-addr", "127.0.0.1", "--master-port", str(port)),
                    exe,
                    *args,
                    "trainer.num_nodes=2",
                    "trainer.devices=1",
                    "trainer.strategy=ddp",
                ],
                env=_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for node in (0, 1)
        ]
    _check(procs)
    return run_dir / "decomposition.h5"


def rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    """max|a − b| / max|b|."""
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pefs", required=True, help="a pefs.h5 (e.g. the default run's pefs_fit)")
    ap.add_argument("--g-only", type=int, default=50)
    ap.add_argument("--joint", type=int, default=500)
    ap.add_argument("--n-components", type=int, default=None, help="default: the config's")
    ap.add_argument("--dtypes", default="float32,float64")
    ap.add_argument("--launches", default="torchrun_2_nodes,ddp_spawn_2")
    a = ap.parse_args()
    args = [
        f"inputs.pefs={Path(a.pefs).resolve()}",
        f"decomp.n_iters_g_only={a.g_only}",
        f"decomp.n_iters_joint={a.joint}",
        "decomp.num_threads=1",
        "checkpoint_every=0",
        "resume=false",
        "progress=false",
        "logger=none",
    ]
    if a.n_components:
        args.append(f"decomp.n_components={a.n_components}")
    summary = {}
    with tempfile.TemporaryDirectory(prefix="npeff-ddp-") as tmp:
        for dtype in a.dtypes.split(","):
            dargs = [*args, f"decomp.dtype={dtype}"]
            one = load_decomposition(run_decompose("one", dargs, Path(tmp) / f"{dtype}-one"))
            for launch in a.launches.split(","):
                d = load_decomposition(
                    run_decompose(launch, dargs, Path(tmp) / f"{dtype}-{launch}")
                )
                row = {
                    "dtype": dtype,
                    "launch": launch,
                    "g_only": a.g_only,
                    "joint": a.joint,
                    "W_rel_diff": rel_diff(d.W, one.W),
                    "G_rel_diff": rel_diff(d.G, one.G),
                }
                summary[f"{dtype}.{launch}"] = row["W_rel_diff"]
                print(json.dumps(row), flush=True)
    print(json.dumps({"W_rel_diff": summary, "pefs": str(a.pefs)}))


if __name__ == "__main__":
    main()
