"""Compact proof vs brute force: verifier and explanation seconds next to brute force, per seed.

    python bench/group_bound.py                                  # S5 and S4, 3 seeds each, trained here
    python bench/group_bound.py --groups S5 --seeds 5 --threads 1 --save-zoo /tmp/zoos
    python bench/group_bound.py --zoo /tmp/zoos/S5 --zoo /tmp/zoos/S4 --threads 1

Per group, a zoo is trained in the script (npeff.groups.zoo: the Wu et al. recipe, full batch,
50 % train fraction, width 128; ``--epochs``, default 1500 for S5 and 2000 otherwise) unless
``--zoo <dir>`` gives one (an ``npeff-train task=group task.n_seeds=S`` run dir, or a dir that
``--save-zoo`` wrote). Per seed, in one process, best of ``--repeats``:

  * ``verifier_s``: :func:`npeff.groups.bound.verify` (the proof's checking part),
  * ``explanation_s``: circuits + ideal-model fit (:func:`npeff.groups.bound.explain`),
  * ``brute_force_s``: every logit of all |G|² inputs and the argmax, float32
    (:func:`npeff.groups.network.brute_force_accuracy`),

their ratios ``ratio_verifier`` = verifier / brute force and ``ratio`` = (explanation +
verifier) / brute force, the bound, the brute-force accuracy and soundness (bound ≤ accuracy, no
certified input that the real model gets wrong, and on every input the certified lower bound on
the margin ≤ the float64 brute-force margin). The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from threads import add_threads_argument, apply_threads  # noqa: E402

from npeff.groups import get_group  # noqa: E402
from npeff.groups.bound import correct_mask, explain, verify  # noqa: E402
from npeff.groups.network import all_logits, brute_force_accuracy, fold  # noqa: E402
from npeff.groups.neurons import analyze_neurons  # noqa: E402
from npeff.groups.zoo import RECIPES, ZOO_FORMAT, ZOO_NAME, init_params, train_zoo  # noqa: E402
from npeff.groups.zoo_run import load_zoo  # noqa: E402


def train(group: str, seeds: int, epochs: int, width: int, embed: int) -> dict:
    """Stacked parameters of ``seeds`` networks trained on ``group`` (Wu et al. recipe)."""
    from npeff.tasks import build_task

    task = build_task({"name": "group", "group": group, "train_fraction": 0.5})
    t = task.tensors("train")
    p = init_params(seeds, task.num_classes, embed, width, True, 0)
    res = train_zoo(p, (t["x"], t["y"], t["labels"]), None, RECIPES["wu"], epochs, epochs + 1)
    return {k: v.detach().clone() for k, v in res.params.items()}


def best_of(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def bench_seed(g, state, repeats: int, member_share, fourier_share: float) -> dict:
    net = fold(state)
    na = analyze_neurons(g, net, threshold=0.95)
    t_expl, (_, ideal, (L, R, U), _) = best_of(lambda: explain(g, net, na.irrep, na.live), repeats)
    b = net.bias.numpy()
    t_ver, cert = best_of(
        lambda: verify(
            g, L, R, U, b, ideal, fourier_share=fourier_share, member_share=member_share
        ),
        repeats,
    )
    t_bf, acc = best_of(lambda: brute_force_accuracy(net, g.table), repeats)
    bound = float(cert.certified.mean())
    wrong = int((cert.certified & ~correct_mask(net, g.table)).sum())
    # per input, the certified lower bound on the margin against the float64 brute-force margin
    logits = all_logits(net, dtype=torch.float64)
    t = torch.as_tensor(g.table).reshape(-1)
    right = logits.gather(1, t[:, None])[:, 0].clone()
    logits.scatter_(1, t[:, None], -float("inf"))
    true = (right - logits.max(1).values).numpy()
    lower = cert.slack * (cert.margin if cert.margin > 0 else 1.0)
    return {
        "bound": bound,
        "brute_force_accuracy": acc,
        "sound": bool(bound <= acc + 1e-12 and wrong == 0 and np.all(lower <= true + 1e-9)),
        "n_certified_wrong": wrong,
        "max_lower_bound_minus_true_margin": float(np.max(lower - true)),
        "frac_first_pass": float(cert.first_pass.mean()),
        "verifier_s": t_ver,
        "explanation_s": t_expl,
        "brute_force_s": t_bf,
        "ratio_verifier": t_ver / t_bf,
        "ratio": (t_ver + t_expl) / t_bf,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--groups", default="S5,S4", help="comma-separated, trained here")
    ap.add_argument("--zoo", action="append", default=[], help="zoo run dir (repeatable)")
    ap.add_argument("--seeds", type=int, default=3, help="seeds per group (trained or read)")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--embed-dim", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--member-share", default="0.0", help="verify(member_share=...); 'none'")
    ap.add_argument("--fourier-share", type=float, default=0.01)
    ap.add_argument("--save-zoo", default=None, help="write each trained zoo to <dir>/<group>")
    add_threads_argument(ap)
    args = ap.parse_args()
    apply_threads(args.threads)
    ms = None if args.member_share.lower() == "none" else float(args.member_share)

    zoos = []  # (group name, stacked params, seconds trained)
    for path in args.zoo:
        z = load_zoo(path)
        zoos.append((z.group_name, z.params, None))
    if not args.zoo:
        for name in [s for s in args.groups.split(",") if s]:
            get_group(name)  # a bad name fails here, before any training
            epochs = args.epochs or (1500 if name == "S5" else 2000)
            t0 = time.perf_counter()
            params = train(name, args.seeds, epochs, args.width, args.embed_dim)
            zoos.append((name, params, time.perf_counter() - t0))
            if args.save_zoo:
                d = Path(args.save_zoo) / name
                d.mkdir(parents=True, exist_ok=True)
                torch.save(
                    {
                        "format": ZOO_FORMAT,
                        "version": 1,
                        "params": params,
                        "config": {"task": {"name": "group", "group": name}, "epochs": epochs},
                        "seeds": list(range(args.seeds)),
                        "metrics": {},
                    },
                    d / ZOO_NAME,
                )

    out = {"threads": torch.get_num_threads(), "member_share": ms, "groups": {}}
    for name, params, t_train in zoos:
        g = get_group(name)
        g.irrep_info()  # the group's irreps and bases: built once, not part of a model's proof
        n_seeds = min(args.seeds, int(next(iter(params.values())).shape[0]))
        rows = []
        for s in range(n_seeds):
            r = bench_seed(
                g, {k: v[s] for k, v in params.items()}, args.repeats, ms, args.fourier_share
            )
            rows.append(r)
            print(
                f"{name} seed {s}: bound {r['bound']:.4f} acc {r['brute_force_accuracy']:.4f} "
                f"sound {r['sound']} first-pass {r['frac_first_pass']:.3f} | verifier "
                f"{r['verifier_s'] * 1e3:.1f} ms, explanation {r['explanation_s'] * 1e3:.1f} ms, "
                f"brute force {r['brute_force_s'] * 1e3:.1f} ms | ratio verifier "
                f"{r['ratio_verifier']:.2f}, with explanation {r['ratio']:.2f}",
                flush=True,
            )
        out["groups"][name] = {
            "n_seeds": n_seeds,
            "train_s": t_train,
            "median_ratio_verifier": float(np.median([r["ratio_verifier"] for r in rows])),
            "median_ratio": float(np.median([r["ratio"] for r in rows])),
            "frac_bound_ge_95": float(np.mean([r["bound"] >= 0.95 for r in rows])),
            "all_sound": all(r["sound"] for r in rows),
            "seeds": rows,
        }
    for name, s in out["groups"].items():
        print(
            f"{name}: median ratio verifier / brute force {s['median_ratio_verifier']:.2f}, "
            f"with explanation {s['median_ratio']:.2f}; bound >= 95% on "
            f"{s['frac_bound_ge_95']:.2f} of {s['n_seeds']} seeds; sound on all: {s['all_sound']}"
        )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
