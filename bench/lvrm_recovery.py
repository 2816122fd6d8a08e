"""LVRM-NPEFF on planted rank-1 components: recovery, rank-0 examples, fitting back to W.

    .venv/bin/python bench/lvrm_recovery.py          # n=150, m=60, ranks 0..3, r=5, K=110

Variable-rank PEFs (rank 0 with probability ``--p-rank0``) with planted unit g_k are decomposed by
the ``decompose`` runner (the same LightningModule as ``npeff-decompose``), then W is fitted back
with G frozen. Last line: one JSON object with the mean best |cos| of the planted to the learned
components, the largest W entry of a rank-0 example, and the relative error of the fitted W.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import warnings

import numpy as np
import torch

from npeff.decomp.fitting import fit_coefficients
from npeff.decomp.module import DecompSettings
from npeff.decomp.runner import decompose
from npeff.fisher.synthetic import planted_lvrm_pefs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=150)
    ap.add_argument("--m", type=int, default=60)
    ap.add_argument("--max-rank", type=int, default=3)
    ap.add_argument("--r", type=int, default=5)
    ap.add_argument("--K", type=int, default=110)
    ap.add_argument("--p-rank0", type=float, default=0.15)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    pefs, G_true = planted_lvrm_pefs(
        a.n, a.m, a.max_rank, a.r, a.K, p_rank0=a.p_rank0, noise=0.02, seed=a.seed
    )
    s = DecompSettings(
        kind="lrm",
        n_components=a.r,
        n_iters_g_only=20,
        n_iters_joint=a.steps,
        lr_g=3e-3,
        seed=5,
        dtype="float64",
    )
    with tempfile.TemporaryDirectory() as tmp:
        dec = decompose(pefs, s, tmp, progress=False)
    G = np.zeros((a.r, a.m))
    G[:, dec.new_to_old_col_indices] = dec.G
    best = np.abs(G_true @ (G / np.linalg.norm(G, axis=1, keepdims=True)).T).max(1)
    fitted, _ = fit_coefficients(pefs, dec, n_iters=2000, dtype=torch.float64, seed=3)
    out = {
        "ranks_histogram": np.bincount(pefs.ranks).tolist(),
        "mean_best_abs_cos": float(best.mean()),
        "min_best_abs_cos": float(best.min()),
        "max_W_rank0": float(dec.W[pefs.ranks == 0].max()) if (pefs.ranks == 0).any() else None,
        "n_classes": dec.n_classes,
        "fit_rel_err_W": float(np.linalg.norm(fitted.W - dec.W) / np.linalg.norm(dec.W)),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
