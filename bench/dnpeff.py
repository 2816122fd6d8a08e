"""Benchmark: D-NPEFF multiplicative updates vs scikit-learn's NMF on the same problem.

    .venv/bin/python bench/dnpeff.py        # n=5000, m=50000, K=2048, r=32, 200 iterations

Both get the same normalized, column-pruned sparse matrix A (float32 CSR), the same initial W and
H (U(0,1], seeded) and the same iteration count. scikit-learn runs
``NMF(solver="mu", beta_loss="frobenius", init="custom", tol=0, max_iter=iters)``; npeff runs its
D-NPEFF factorization (W first, then H, as sklearn) for ``iters`` steps plus one loss evaluation.
Both report the un-squared error ‖A − WH‖_F. Last line: one JSON object with ``ratio`` (sklearn
seconds ÷ npeff seconds) and ``loss_ratio`` (npeff final loss ÷ sklearn final loss).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np
import torch
from threads import add_threads_argument, apply_threads

from npeff.decomp.kinds import Hyper, build_factorization
from npeff.decomp.matrix import build_matrix
from npeff.decomp.synthetic import random_diag_pefs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--m", type=int, default=50000)
    ap.add_argument("--K", type=int, default=2048)
    ap.add_argument("--r", type=int, default=32)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    add_threads_argument(ap)
    args = ap.parse_args()
    apply_threads(args.threads)
    from sklearn.decomposition import NMF

    print(
        f"threads={torch.get_num_threads()} n={args.n} m={args.m} K={args.K} r={args.r}", flush=True
    )
    t = time.perf_counter()
    pefs = random_diag_pefs(args.n, args.m, args.K, seed=args.seed)
    mat = build_matrix(pefs, "diag")
    print(
        f"preprocess {time.perf_counter() - t:.1f} s, nnz={mat.A.nnz}, m'={mat.n_cols}", flush=True
    )

    fac = build_factorization(
        mat, n_components=args.r, seed=args.seed, hyper=Hyper(mu_eps=1e-10), dtype=torch.float32
    )
    W0 = fac.W.numpy().copy()
    H0 = np.ascontiguousarray(fac.Ft.T.numpy())
    X = mat.A.astype(np.float32)

    t = time.perf_counter()
    for _ in range(args.iters):
        fac.step("joint")
    npeff_loss = fac.loss()
    npeff_s = time.perf_counter() - t
    print(f"npeff: {npeff_s:.2f} s, loss {npeff_loss:.6f}", flush=True)

    model = NMF(
        n_components=args.r,
        solver="mu",
        beta_loss="frobenius",
        init="custom",
        max_iter=args.iters,
        tol=0.0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "maximum number of iterations reached"
        t = time.perf_counter()
        Ws = model.fit_transform(X, W=W0.copy(), H=H0.copy())
        sk_s = time.perf_counter() - t
    sk_loss = float(model.reconstruction_err_)
    print(f"sklearn: {sk_s:.2f} s, loss {sk_loss:.6f} ({model.n_iter_} iterations)", flush=True)
    rel_w = float(np.linalg.norm(Ws - fac.W.numpy()) / np.linalg.norm(Ws))
    print(
        json.dumps(
            {
                "ratio": sk_s / npeff_s,
                "loss_ratio": npeff_loss / sk_loss,
                "npeff_seconds": npeff_s,
                "sklearn_seconds": sk_s,
                "npeff_loss": npeff_loss,
                "sklearn_loss": sk_loss,
                "W_rel_diff": rel_w,
                "iterations": args.iters,
                "n": args.n,
                "m_prime": mat.n_cols,
                "K": args.K,
                "r": args.r,
                "nnz": int(mat.A.nnz),
                "threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    main()
