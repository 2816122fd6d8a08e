"""Benchmark: seconds per LRM-NPEFF joint step vs a roofline measured in the same run.

    .venv/bin/python bench/decompose.py            # n=2000, K=16384, C=3, r=32, m=1e6 (m' ≈ 1e6)

FLOPs per joint step (algorithm.md §4.11): 4·nnz·r (A·Gᵀ and Qᵀ·A) + 4·r²·m' (G·Gᵀ and
(WᵀW∘S)·G) + 4·n·r² + 3·n·C·r. The roofline is the time those FLOPs take at this machine's best
measured rates, measured here in the same process on the same data: dense float32 GEMM
(torch.mm, large square) for the dense part, and the best of the libraries' plain sparse×dense
products on this very matrix (torch.sparse.mm of A·Gᵀ and of Aᵀ·Q, scipy CSC·Gᵀ) for the sparse
part. Element-wise
work and memory traffic outside the products are not in the roofline (so it is optimistic).
Last line: one JSON object with seconds_per_step and roofline_ratio (roofline time ÷ npeff time).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from threads import add_threads_argument, apply_threads

from npeff.decomp.kinds import Hyper, build_factorization
from npeff.decomp.matrix import _to_torch_csr, build_matrix
from npeff.decomp.synthetic import random_lrm_pefs


def best_time(fn, repeats: int = 3) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--K", type=int, default=16384)
    ap.add_argument("--C", type=int, default=3)
    ap.add_argument("--r", type=int, default=32)
    ap.add_argument("--m", type=int, default=1_000_000)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--block-cols", type=int, default=262144)
    add_threads_argument(ap)
    args = ap.parse_args()
    apply_threads(args.threads)
    n, K, C, r = args.n, args.K, args.C, args.r
    print(f"threads={torch.get_num_threads()}  n={n} K={K} C={C} r={r} m={args.m}", flush=True)

    t = time.perf_counter()
    pefs = random_lrm_pefs(n, args.m, C, K, seed=0)
    mat = build_matrix(pefs, "lrm")
    t_pre = time.perf_counter() - t
    nnz, mp = mat.A.nnz, mat.n_cols
    print(f"preprocess: {t_pre:.1f} s  nnz={nnz}  m'={mp}  T={mat.const:.6g}", flush=True)

    t = time.perf_counter()
    fac = build_factorization(
        mat, n_components=r, seed=0, hyper=Hyper(lr_g=1e-6), block_cols=args.block_cols
    )
    print(f"blocks + init: {time.perf_counter() - t:.1f} s", flush=True)
    fac.step("joint")  # warm-up
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        fac.step("joint")
        times.append(time.perf_counter() - t)
    sec = sorted(times)[len(times) // 2]
    loss_t = best_time(fac.loss, repeats=1)

    sparse_flops = 4.0 * nnz * r
    dense_flops = 4.0 * r * r * mp + 4.0 * n * r * r + 3.0 * n * C * r
    flops = sparse_flops + dense_flops

    # Roofline rates, same process, same data.
    X = torch.randn(2048, 2048)
    gemm_rate = 2 * 2048**3 / best_time(lambda: X @ X)
    A = _to_torch_csr(mat.A, torch.float32)
    At = _to_torch_csr(mat.A.T.tocsr(), torch.float32)
    Gt = fac.Ft.contiguous()
    Q = torch.randn(n * C, r)
    spmm_ag = 2 * nnz * r / best_time(lambda: torch.sparse.mm(A, Gt), repeats=2)
    spmm_atq = 2 * nnz * r / best_time(lambda: torch.sparse.mm(At, Q), repeats=2)
    Gt_np = Gt.numpy()
    csc = mat.A.astype("float32").tocsc()
    spmm_csc = 2 * nnz * r / best_time(lambda: csc @ Gt_np, repeats=2)
    spmm_rate = max(spmm_ag, spmm_atq, spmm_csc)
    roof = sparse_flops / spmm_rate + dense_flops / gemm_rate
    print(
        f"rates: dense GEMM {gemm_rate / 1e9:.1f} GFLOP/s; torch.sparse.mm A·Gᵀ "
        f"{spmm_ag / 1e9:.2f}, Aᵀ·Q {spmm_atq / 1e9:.2f}; scipy CSC A·Gᵀ {spmm_csc / 1e9:.2f} GFLOP/s",
        flush=True,
    )
    print(
        f"npeff joint step: {sec:.3f} s (steps {[round(x, 3) for x in times]}), "
        f"{flops / sec / 1e9:.2f} GFLOP/s achieved; loss eval {loss_t:.3f} s; "
        f"roofline {roof:.3f} s; ratio {roof / sec:.2f}",
        flush=True,
    )
    print(
        json.dumps(
            {
                "seconds_per_step": sec,
                "roofline_seconds": roof,
                "roofline_ratio": roof / sec,
                "gflops_achieved": flops / sec / 1e9,
                "flops_per_step": flops,
                "gemm_gflops": gemm_rate / 1e9,
                "spmm_gflops_AGt": spmm_ag / 1e9,
                "spmm_gflops_AtQ": spmm_atq / 1e9,
                "spmm_gflops_scipy_csc": spmm_csc / 1e9,
                "loss_seconds": loss_t,
                "preprocess_seconds": t_pre,
                "n": n,
                "K": K,
                "C": C,
                "r": r,
                "m_prime": mp,
                "nnz": nnz,
                "threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    main()
