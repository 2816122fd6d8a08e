"""Benchmark: causal-LM PEFs on a tiny GPT-2 with a 50k-token vocabulary.

1. PEFs per second (``compute_pefs`` to an HDF5 file, fast path, padded batches) under
   ``fisher.classes=top_p`` (q 0.9, cap k) and ``sample`` (S tokens), with the process's peak RSS.
   Only the chosen tokens' gradients are formed (k·m floats per example, never V·m).
2. Projection vs top-K at equal bytes per example: top-K stores K (value, index) pairs = 8K bytes;
   a projected row stores d values and no index (the indices of a dense row are implicit) =
   4·C·d bytes, so d = 2K/C. On the exact dense rows A_i (C sampled rows each) of a few examples:
   compression time, the error of the normalised PEF Gram matrix ⟨F̃_i, F̃_j⟩_F (what the NPEFF
   loss sees; F̃ = F/‖F‖_F) and, for top-K, the per-example Frobenius error ‖F̂ − F‖/‖F‖ (a
   projected PEF lives in R^{d×d}, so for it the error of ‖F̂‖ is given instead).

    .venv/bin/python bench/pefs_lm.py            # 16 examples per mode
    .venv/bin/python bench/pefs_lm.py --quick    # 8

Prints one line per measurement, then as its last line one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from npeff.fisher import compute_pefs  # noqa: E402
from npeff.fisher.fast import FisherEngine  # noqa: E402
from npeff.fisher.grads import select_named_parameters  # noqa: E402
from npeff.fisher.lm_classes import LMClasses  # noqa: E402
from npeff.fisher.projection import SparseProjection  # noqa: E402
from npeff.fisher.sparsify import sparsify_rows  # noqa: E402
from npeff.models.causal_lm import build_tiny_gpt2  # noqa: E402


def peak_rss_gb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return r / 1024**2 if sys.platform != "darwin" else r / 1024**3


def make_batch(n: int, vocab: int, length: int, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n, length), generator=gen)
    lengths = torch.randint(length // 2, length + 1, (n,), generator=gen)
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    return {"input_ids": ids * mask, "attention_mask": mask, "labels": torch.zeros(n).long()}


def loader(batch, bs):
    items = [{k: v[i] for k, v in batch.items()} for i in range(len(batch["labels"]))]
    return torch.utils.data.DataLoader(items, batch_size=bs)


def gram(rows: list[torch.Tensor]) -> torch.Tensor:
    """⟨F_i, F_j⟩_F = ‖A_i A_jᵀ‖²_F for rows A_i [C, d] → [n, n] (float64)."""
    n = len(rows)
    out = torch.empty(n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(i, n):
            out[i, j] = out[j, i] = (rows[i].double() @ rows[j].double().T).square().sum()
    return out


def normalised(g: torch.Tensor, norms_sq: torch.Tensor) -> torch.Tensor:
    s = norms_sq.sqrt()
    return g / (s[:, None] * s[None, :])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--length", type=int, default=32)
    args = ap.parse_args()
    torch.manual_seed(0)
    n = 8 if args.quick else 16
    model = build_tiny_gpt2(
        args.vocab, max_length=args.length, hidden_size=64, num_layers=2, num_heads=2
    ).eval()
    m = sum(p.numel() for p in model.parameters())
    print(f"tiny GPT-2: vocab {args.vocab}, {m} parameters, seq {args.length}, {n} examples")
    batch = make_batch(n, args.vocab, args.length)
    out: dict = {"vocab": args.vocab, "n_parameters": m, "n_examples": n}
    modes = {
        "top_p": LMClasses("top_p", q=0.9, k=8),
        "sample": LMClasses("sample", n_samples=8, seed=0),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, classes in modes.items():
            # warm-up (engine check, allocator) on 2 examples, then the timed run
            small = {k: v[:2] for k, v in batch.items()}
            compute_pefs(
                model,
                loader(small, 2),
                Path(tmp) / f"w_{name}.h5",
                n_values=4096,
                classes=classes,
                chunk_size=2,
                progress=False,
            )
            t0 = time.perf_counter()
            path = compute_pefs(
                model,
                loader(batch, 4),
                Path(tmp) / f"{name}.h5",
                n_values=4096,
                classes=classes,
                chunk_size=2,
                progress=False,
            )
            sec = time.perf_counter() - t0
            out[name] = {"pefs_per_s": n / sec, "seconds": sec, "file": path.name}
            print(f"{name}: {n / sec:.2f} PEFs/s, peak RSS so far {peak_rss_gb():.2f} GB")

        # -- projection vs top-K at equal bytes, on exact dense rows of a few examples
        n_err, C = (4, 4) if args.quick else (6, 4)
        named = select_named_parameters(model)
        engine = FisherEngine(model, named, "auto")
        sub = {k: v[:n_err] for k, v in batch.items()}
        engine.prepare(sub)
        logits = engine.logits(sub)
        sel = LMClasses("sample", n_samples=C, seed=0).select(logits, 0)
        A = engine.class_grads(sub, sel.classes, logits.shape[-1], sel.weights)  # [n, C, m]
        exact_g = gram([A[i] for i in range(n_err)])
        exact_nsq = exact_g.diagonal().clone()
        exact_norm_g = normalised(exact_g, exact_nsq)
        comp: list = []
        for K in (2048, 8192):
            d = 2 * K // C
            t0 = time.perf_counter()
            sp = sparsify_rows(A, K)
            t_topk = time.perf_counter() - t0
            dense_topk = torch.zeros_like(A).reshape(n_err, -1)
            for i in range(n_err):
                offs = torch.cat([torch.zeros(1, dtype=torch.long), sp.counts[i].cumsum(0)])
                for c in range(C):
                    sl = slice(int(offs[c]), int(offs[c + 1]))
                    dense_topk[i, c * m + sp.row_indices[i, sl]] = sp.values[i, sl]
            dense_topk = dense_topk.reshape(n_err, C, m)
            proj = SparseProjection(m, d, seed=0, kind="sparse_jl", s=4)
            proj.hashes()  # drawn once per (seed, m), like the engine's check: not timed
            t0 = time.perf_counter()
            P = proj.apply(A)
            t_proj = time.perf_counter() - t0
            g_topk = gram([dense_topk[i] for i in range(n_err)])
            g_proj = gram([P[i] for i in range(n_err)])
            err_topk = float(
                (normalised(g_topk, exact_nsq) - exact_norm_g).norm() / exact_norm_g.norm()
            )
            err_proj = float(
                (normalised(g_proj, exact_nsq) - exact_norm_g).norm() / exact_norm_g.norm()
            )
            # per-example Frobenius error of the top-K PEF: ‖ÂᵀÂ − AᵀA‖² via C×C Grams
            fro = []
            for i in range(n_err):
                a, b = A[i].double(), dense_topk[i].double()
                sq = (
                    (b @ b.T).square().sum()
                    + (a @ a.T).square().sum()
                    - 2 * (a @ b.T).square().sum()
                )
                fro.append(float(sq.clamp_min(0).sqrt() / (a @ a.T).square().sum().sqrt()))
            norm_err = float(
                ((g_proj.diagonal().sqrt() - exact_nsq.sqrt()).abs() / exact_nsq.sqrt()).mean()
            )
            row = {
                "K": K,
                "d_per_row": d,
                "bytes_per_example": 8 * K,
                "topk_seconds": t_topk,
                "projection_seconds": t_proj,
                "gram_rel_err_topk": err_topk,
                "gram_rel_err_projection": err_proj,
                "frobenius_rel_err_topk_mean": sum(fro) / len(fro),
                "norm_rel_err_projection_mean": norm_err,
            }
            comp.append(row)
            print(
                f"{8 * K} B/example: Gram error top-K {err_topk:.4f} vs projection {err_proj:.4f}; "
                f"top-K Frobenius error {row['frobenius_rel_err_topk_mean']:.4f}; "
                f"time top-K {t_topk:.3f} s vs projection {t_proj:.3f} s ({n_err}×{C} rows)"
            )
            del dense_topk, P, sp
        out["projection_vs_topk"] = comp
        out["sample_rows_for_errors"] = C
        out["n_examples_for_errors"] = n_err
    out["peak_rss_gb"] = peak_rss_gb()
    out["under_4gb"] = out["peak_rss_gb"] < 4.0
    print(json.dumps(out))


if __name__ == "__main__":
    main()
