"""Benchmark: masked forwards per second of npeff's batched ablation engine vs a loop that ablates
one mask at a time (zero the unit weights in place, run the loader, restore) on the same model,
units, masks and data.

Models (random init: throughput does not depend on training), each on its task's eval split:
  group_mlp  the S4 group MLP, units = its 128 hidden neurons (144 examples)
  cnn        the digits CNN, units = conv-2 channels + hidden neurons (96; 400 examples); the
             keep-mask is carried through BatchNorm/ReLU/max-pool and the batch expanded at the
             flatten before the hidden Linear (``carry``)
  cnn_all    the same CNN with conv-1 channels too (112 units): the batch is expanded at conv 2's
             input, so conv 2 runs M times (reported, not part of ``ratio``)
  tiny_bert  tiny BERT (2 layers, 4 heads) on toy NLI, units = heads (upfront expansion)
Both methods produce the same margins (checked). Prints one line per model, then as its last line
one JSON object: per-model masks/s and ratios, ``ratio`` = min over group_mlp and cnn.

    .venv/bin/python bench/coar.py            # 64 masks per model
    .venv/bin/python bench/coar.py --quick    # 16 masks
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from threads import add_threads_argument, apply_threads  # noqa: E402

from npeff.coar.ablation import AblationEngine, collect_batches, loop_margins  # noqa: E402
from npeff.coar.masks import sample_masks  # noqa: E402
from npeff.models import build_model  # noqa: E402
from npeff.models.units import build_unit_map  # noqa: E402
from npeff.tasks import build_task  # noqa: E402

CNN_UNITS = [
    {"pattern": "features.3.weight", "granularity": "channel"},
    {"pattern": "head.1.weight", "granularity": "neuron"},
]
PROBLEMS = {
    "group_mlp": ({"name": "group", "group": "S4"}, {"name": "group_mlp"}, ["hidden.weight"]),
    "cnn": ({"name": "digits"}, {"name": "cnn"}, CNN_UNITS),
    "cnn_all": ({"name": "digits"}, {"name": "cnn"}, ["features.0.weight", *CNN_UNITS]),
    "tiny_bert": (
        {"name": "toy_nli", "n_train": 64, "n_fit": 16, "n_eval": 256, "max_length": 24},
        {"name": "tiny_bert", "hidden_size": 64, "num_layers": 2, "num_heads": 4},
        "heads",
    ),
}


def bench(name: str, n_masks: int, batch_size: int, masks_per_forward: int, rounds: int) -> dict:
    task_cfg, model_cfg, units = PROBLEMS[name]
    torch.manual_seed(0)
    task = build_task(task_cfg)
    model = build_model(model_cfg, task.model_hints()).eval()
    unit_map = build_unit_map(model, units)
    loader = task.dataloader("eval", batch_size)
    keep = sample_masks(unit_map.n_units, 0.1, 0, 0, n_masks)
    engine = AblationEngine(model, unit_map, masks_per_forward=masks_per_forward)
    engine.margins(keep[:2], collect_batches(loader))  # warm-up + the one-time self-check
    t_eng, t_loop = [], []
    for _ in range(rounds):  # alternate: the machine is shared and its load drifts
        t0 = time.perf_counter()
        got = engine.margins(keep, collect_batches(loader))
        t_eng.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ref = loop_margins(model, unit_map, keep, loader)
        t_loop.append(time.perf_counter() - t0)
    err = float((got - ref).abs().max())
    if err > 1e-3 * (1 + float(ref.abs().max())):
        raise AssertionError(f"{name}: batched margins differ from the loop by {err}")
    e, lo = min(t_eng), min(t_loop)
    return {
        "units": unit_map.n_units,
        "examples": int(ref.shape[1]),
        "method": f"{engine.method}/{engine._expand}",
        "npeff_masks_per_s": n_masks / e,
        "loop_masks_per_s": n_masks / lo,
        "ratio": lo / e,
        "max_abs_diff": err,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="16 masks per model instead of 64")
    ap.add_argument("--models", default=",".join(PROBLEMS), help="comma-separated subset")
    ap.add_argument("--batch-size", type=int, default=256, help="loader batch (both methods)")
    ap.add_argument("--masks-per-forward", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    add_threads_argument(ap)
    args = ap.parse_args()
    apply_threads(args.threads)
    n_masks = 16 if args.quick else 64
    out = {"n_masks": n_masks, "threads": torch.get_num_threads(), "models": {}}
    for name in args.models.split(","):
        r = bench(name, n_masks, args.batch_size, args.masks_per_forward, args.rounds)
        out["models"][name] = r
        print(
            f"{name:10s} {r['units']:4d} units {r['examples']:4d} ex  npeff {r['npeff_masks_per_s']:8.1f} "
            f"masks/s  loop {r['loop_masks_per_s']:7.1f} masks/s  ratio {r['ratio']:5.2f}  ({r['method']})",
            flush=True,
        )
    core = [out["models"][k]["ratio"] for k in ("group_mlp", "cnn") if k in out["models"]]
    out["ratio"] = min(core) if core else None
    print(json.dumps(out))


if __name__ == "__main__":
    main()
