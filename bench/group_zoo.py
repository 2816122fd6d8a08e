"""Zoo training throughput: seeds × epochs per second, stacked vs one seed at a time.

    python bench/group_zoo.py                       # S4, 20 seeds, 100 epochs each
    python bench/group_zoo.py --group S5 --seeds 20 --epochs 5 --threads 1

Compares, on the same data and recipe (Wu et al.: Adam, coupled L2 2e-4, lr 1e-2, full batch):
  * ``zoo``: all seeds at once on stacked parameters (npeff.groups.zoo.train_zoo);
  * ``zoo_loop``: the same trainer with one seed, run once per seed;
  * ``module_loop``: one ``GroupMLP`` + ``build_optimizer`` per seed (a plain torch loop);
  * ``lightning_loop``: one seed through the ``npeff-train`` path (Lightning ``Trainer`` +
    ``ClassifierModule``), timed on ``--lightning-seeds`` seeds.
The last line is JSON; its ``speedup`` is zoo ÷ ``module_loop``, the issue's "training one seed
at a time" (the project's network and optimiser, one seed after another, without Lightning's
per-step overhead). ``speedup_vs_zoo_loop`` is bounded by the share of a one-seed step that is
fixed per-step cost: the zoo does the same FLOPs per seed, so it can only amortise that share.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from threads import add_threads_argument, apply_threads  # noqa: E402

from npeff.groups.zoo import RECIPES, init_params, train_zoo  # noqa: E402
from npeff.models.lightning import ClassifierModule, build_optimizer  # noqa: E402
from npeff.models.simple import GroupMLP  # noqa: E402
from npeff.tasks import build_task  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--group", default="S4")
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--embed-dim", type=int, default=256)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--lightning-seeds", type=int, default=2)
    add_threads_argument(ap)
    args = ap.parse_args()
    apply_threads(args.threads)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    task = build_task({"name": "group", "group": args.group, "train_fraction": 0.5})
    t = task.tensors("train")
    data = (t["x"], t["y"], t["labels"])
    n = task.num_classes
    optim = RECIPES["wu"]
    S, E = args.seeds, args.epochs

    p = init_params(S, n, args.embed_dim, args.width, True, 0)
    t0 = time.perf_counter()
    train_zoo(p, data, None, optim, E, check_every=E + 1)
    zoo = S * E / (time.perf_counter() - t0)

    t0 = time.perf_counter()
    for s in range(S):
        train_zoo(
            init_params(1, n, args.embed_dim, args.width, True, s),
            data,
            None,
            optim,
            E,
            check_every=E + 1,
        )
    zoo_loop = S * E / (time.perf_counter() - t0)

    t0 = time.perf_counter()
    for s in range(S):
        torch.manual_seed(s)
        m = GroupMLP(n, n, args.embed_dim, args.width)
        opt = build_optimizer(m, optim)
        for _ in range(E):
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(m(data[0], data[1]), data[2]).backward()
            opt.step()
    module_loop = S * E / (time.perf_counter() - t0)

    import lightning as L

    ls = max(1, min(args.lightning_seeds, S))
    t0 = time.perf_counter()
    for s in range(ls):
        torch.manual_seed(s)
        module = ClassifierModule(GroupMLP(n, n, args.embed_dim, args.width), optim)
        trainer = L.Trainer(
            max_epochs=E,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            limit_val_batches=0,
        )
        trainer.fit(module, train_dataloaders=task.dataloader("train", None, shuffle=True))
    lightning_loop = ls * E / (time.perf_counter() - t0)

    out = {
        "group": args.group,
        "seeds": S,
        "epochs": E,
        "threads": torch.get_num_threads(),
        "zoo_seed_epochs_per_s": zoo,
        "zoo_loop_seed_epochs_per_s": zoo_loop,
        "module_loop_seed_epochs_per_s": module_loop,
        "lightning_loop_seed_epochs_per_s": lightning_loop,
        "speedup": zoo / module_loop,
        "speedup_vs_zoo_loop": zoo / zoo_loop,
        "speedup_vs_module_loop": zoo / module_loop,
        "speedup_vs_lightning_loop": zoo / lightning_loop,
    }
    for k, v in out.items():
        print(f"{k:36s} {v:.3f}" if isinstance(v, float) else f"{k:36s} {v}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
