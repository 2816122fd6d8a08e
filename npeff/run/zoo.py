"""``npeff-train task=group task.n_seeds=S``: train a zoo of S group networks at once, and read it.

Writes into the run dir:
  * ``zoo.pt``: every model's stacked parameters ``{key: [S, ...]}``, the resolved config, the
    seeds, the per-seed metrics and the training history (format ``npeff-group-zoo``);
  * ``seeds/seed_<s>/model.ckpt``: model s as an ordinary npeff checkpoint (``load_checkpoint``
    rebuilds its ``GroupMLP`` and task), and ``model.ckpt`` = the first seed's, so every later
    stage that takes ``inputs.checkpoint=<run dir>`` works on a zoo run too;
  * ``metrics.json``: per-seed train / held-out accuracy, epochs to 99 % held-out accuracy, the
    fraction of seeds at >= 99 %, seconds and seeds × epochs per second.
  * ``zoo_state.pt`` while training (parameters + Adam state at every check): rerunning in the
    same run dir resumes from it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from npeff.artifacts.zoo import save_zoo, zoo_path
from npeff.errors import NpeffUserError
from npeff.groups.zoo import (
    STATE_NAME,
    epochs_to_reach,
    init_params,
    train_zoo,
    unstack,
    zoo_accuracy,
)
from npeff.groups.zoo_run import zoo_optim
from npeff.run.common import write_metrics
from npeff.tasks import build_task

log = logging.getLogger(__name__)


def _split_tensors(task, splits) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    xs, ys, zs = [], [], []
    for split in splits:
        t = task.tensors(split)
        xs.append(t["x"])
        ys.append(t["y"])
        zs.append(t["labels"])
    return torch.cat(xs), torch.cat(ys), torch.cat(zs)


def run(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """Train ``cfg.task.n_seeds`` group networks at once; write the zoo (see the module doc)."""
    from npeff.models import CHECKPOINT_NAME, save_checkpoint

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if str(cfg.model.get("name")) != "group_mlp":
        raise NpeffUserError(
            f"a group zoo (task.n_seeds > 1) trains model=group_mlp, not model={cfg.model.name}"
        )
    if cfg.get("batch_size") not in (None, "null"):
        raise NpeffUserError("the group zoo trains full batch: set batch_size=null")
    t_start = time.perf_counter()
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    task = build_task(cfg.task)
    n_seeds = int(cfg.task.n_seeds)
    seed0 = int(cfg.get("seed", 0))
    n = task.info.num_classes
    params = init_params(
        n_seeds,
        n,
        int(cfg.model.embed_dim),
        int(cfg.model.hidden),
        bool(cfg.model.get("unembed_bias", True)),
        seed0,
    )
    optim = zoo_optim(cfg)
    epochs = int(cfg.trainer.max_epochs)
    check = int(cfg.trainer.get("check_val_every_n_epoch") or 100)
    train = _split_tensors(task, ["train"])
    heldout = _split_tensors(task, ["fit", "eval"])
    log.info(
        "group zoo: %d seeds of %s on %s (%d train / %d held-out pairs), %d epochs, optim %s",
        n_seeds,
        cfg.model.name,
        task.group.name,
        len(train[2]),
        len(heldout[2]),
        epochs,
        optim,
    )
    result = train_zoo(
        params,
        train,
        heldout,
        optim,
        epochs,
        check_every=check,
        state_path=output_dir / STATE_NAME,
        progress=bool(cfg.get("progress", True)),
    )
    p = result.params
    acc = {
        "train": zoo_accuracy(p, *train).tolist(),
        "heldout": zoo_accuracy(p, *heldout).tolist(),
        "eval": zoo_accuracy(p, *_split_tensors(task, ["eval"])).tolist(),
    }
    seeds = [seed0 + s for s in range(n_seeds)]
    reach = epochs_to_reach(result.history, "eval_accuracy", 0.99, n_seeds)
    frac99 = sum(a >= 0.99 for a in acc["heldout"]) / n_seeds
    metrics: dict[str, Any] = {
        "task": "group",
        "group": task.group.name,
        "model": str(cfg.model.name),
        "n_seeds": n_seeds,
        "seeds": seeds,
        "epochs": epochs,
        "optim": optim,
        "train_accuracy_per_seed": acc["train"],
        "heldout_accuracy_per_seed": acc["heldout"],
        "eval_accuracy_per_seed": acc["eval"],
        "epochs_to_99_heldout_per_seed": reach,
        "frac_seeds_heldout_ge_99": frac99,
        "train_accuracy": min(acc["train"]),
        "eval_accuracy": sum(acc["eval"]) / n_seeds,
        "train_seconds": result.seconds,
        "seed_epochs_per_second": n_seeds
        * (epochs - result.start_epoch)
        / max(result.seconds, 1e-9),
    }
    plain_cfg = OmegaConf.to_container(cfg, resolve=True)
    save_zoo(zoo_path(output_dir), p, plain_cfg, seeds, metrics, result.history)
    from npeff.models.simple import GroupMLP

    model = GroupMLP(
        n,
        n,
        int(cfg.model.embed_dim),
        int(cfg.model.hidden),
        bool(cfg.model.get("unembed_bias", True)),
    )
    for s in range(n_seeds):
        model.load_state_dict(unstack(p, s))
        seed_cfg = {**plain_cfg, "seed": seeds[s]}
        m = {
            "train_accuracy": acc["train"][s],
            "heldout_accuracy": acc["heldout"][s],
            "eval_accuracy": acc["eval"][s],
            "zoo_index": s,
        }
        save_checkpoint(
            output_dir / "seeds" / f"seed_{s:03d}" / CHECKPOINT_NAME, model, seed_cfg, m
        )
        if s == 0:
            save_checkpoint(output_dir / CHECKPOINT_NAME, model, seed_cfg, m)
    (output_dir / STATE_NAME).unlink(missing_ok=True)
    metrics["seconds"] = time.perf_counter() - t_start
    metrics["checkpoint"] = str(output_dir / CHECKPOINT_NAME)
    metrics["zoo"] = str(zoo_path(output_dir))
    write_metrics(output_dir, metrics)
    log.info(
        "zoo: held-out accuracy >= 99%% on %d/%d seeds (min %.4f); %.1f s",
        round(frac99 * n_seeds),
        n_seeds,
        min(acc["heldout"]),
        metrics["seconds"],
    )
    return metrics
