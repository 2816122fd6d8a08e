"""``npeff-train``: fit a classifier on a task with a Lightning Trainer.

    npeff-train                      # tiny BERT on toy_nli
    npeff-train task=group           # S4 group-operation network
    npeff-train task=digits trainer.max_epochs=30 logger=csv
    npeff-train task=group task.group=S5 task.n_seeds=20   # a zoo (npeff.run.zoo)

Writes ``model.ckpt`` (state dict + the resolved model/task config, so ``load_checkpoint(path)``
rebuilds everything) and ``metrics.json`` (train/fit/eval accuracy, seconds) in the run dir.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from npeff.run.common import (
    build_logger,
    finish_tracking,
    seed_everything,
    stage_main,
    write_metrics,
)

log = logging.getLogger(__name__)

# Trainer arguments the stage sets itself (not taken from cfg.trainer).
_STAGE_TRAINER_KEYS = ("logger", "enable_checkpointing", "default_root_dir", "callbacks")


def trainer_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """Keyword arguments for ``lightning.Trainer`` from ``cfg.trainer`` (None values dropped)."""
    raw = OmegaConf.to_container(cfg.trainer, resolve=True) if cfg.get("trainer") else {}
    return {k: v for k, v in raw.items() if v is not None and k not in _STAGE_TRAINER_KEYS}


def run(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.task``; write ``model.ckpt`` and ``metrics.json``."""
    import lightning as L
    import torch

    from npeff.models import CHECKPOINT_NAME, accuracy, build_model, save_checkpoint
    from npeff.models.lightning import ClassifierModule
    from npeff.tasks import build_task

    if cfg.task.get("name") == "group" and (
        int(cfg.task.get("n_seeds") or 1) > 1 or cfg.task.get("zoo_trainer")
    ):
        from npeff.run import zoo as zoo_run  # many seeds at once on stacked parameters

        return zoo_run.run(cfg, output_dir)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    seed_everything(int(cfg.get("seed", 0)))

    task = build_task(cfg.task)
    model = build_model(cfg.model, task.model_hints())
    n_params = sum(p.numel() for p in model.parameters())
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info(
        "task %s (%s train / %s fit / %s eval), model %s with %d parameters (%d trainable)",
        cfg.task.name,
        task.num_examples("train"),
        task.num_examples("fit"),
        task.num_examples("eval"),
        cfg.model.name,
        n_params,
        n_trainable,
    )
    module = ClassifierModule(model.train(), OmegaConf.to_container(cfg.optim, resolve=True))
    batch_size = cfg.get("batch_size")
    eval_bs = int(cfg.get("eval_batch_size") or 512)
    train_loader = task.dataloader("train", batch_size, shuffle=True, seed=int(cfg.get("seed", 0)))
    eval_loader = task.dataloader("eval", eval_bs)

    if "spawn" in str(cfg.trainer.get("strategy", "")):
        # ddp_spawn pickles the module and loaders to the new processes; torch's default
        # file-descriptor sharing fails there for some storages ("unable to resize file")
        torch.multiprocessing.set_sharing_strategy("file_system")
    logger = build_logger(cfg, output_dir)
    trainer = L.Trainer(
        logger=logger if logger is not None else False,
        enable_checkpointing=False,
        default_root_dir=str(output_dir),
        enable_progress_bar=bool(cfg.get("progress", True)),
        **trainer_kwargs(cfg),
    )
    try:
        t_fit = time.perf_counter()
        trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=eval_loader)
        fit_seconds = time.perf_counter() - t_fit

        model.eval()
        metrics: dict[str, Any] = {
            "task": str(cfg.task.name),
            "model": str(cfg.model.name),
            "n_parameters": int(n_params),
            "n_trainable_parameters": int(n_trainable),
            "epochs": int(trainer.current_epoch),
            "steps": int(trainer.global_step),
            "train_seconds": fit_seconds,
        }
        if trainer.is_global_zero:
            for split in ("train", "fit", "eval"):
                metrics[f"{split}_accuracy"] = accuracy(model, task.dataloader(split, eval_bs))
                metrics[f"{split}_examples"] = task.num_examples(split)
            metrics.update(_shortcut_metrics(model, task, eval_bs))
            metrics["seconds"] = time.perf_counter() - t_start
            ckpt = save_checkpoint(output_dir / CHECKPOINT_NAME, model, cfg, metrics)
            metrics["checkpoint"] = str(ckpt)
            write_metrics(output_dir, metrics)
            if logger is not None:
                logger.log_metrics(
                    {f"final/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}
                )
            log.info(
                "train acc %.4f, eval acc %.4f, %.1f s; checkpoint %s",
                metrics["train_accuracy"],
                metrics["eval_accuracy"],
                metrics["seconds"],
                ckpt,
            )
        trainer.strategy.barrier("npeff-train-checkpoint-written")  # later stages read it
    finally:
        finish_tracking()
    return metrics


def _shortcut_metrics(model, task, batch_size: int) -> dict[str, Any]:
    """With a planted shortcut (task concepts ``cue``/``cue_conflict``): eval and fit accuracy on
    cue-conflicting examples, on the rest and on cue-free ones (``shortcut_eval_conflict_acc``...);
    nothing otherwise."""
    from npeff.analysis.shortcut import cue_columns, shortcut_accuracy_metrics
    from npeff.models.core import predict_logits

    if cue_columns(task.concept_names) is None:
        return {}
    out: dict[str, Any] = {}
    for split in ("fit", "eval"):
        logits, labels = predict_logits(model, task.dataloader(split, batch_size))
        figures = shortcut_accuracy_metrics(
            logits.argmax(-1).numpy(), labels.numpy(), task.concepts(split), task.concept_names
        )
        out.update({f"shortcut_{split}_{k}": v for k, v in figures.items()})
    log.info(
        "shortcut: eval accuracy %.4f on %d cue-conflicting examples, %.4f on the rest, "
        "%.4f on cue-free ones",
        out["shortcut_eval_conflict_acc"],
        out["shortcut_eval_n_conflict"],
        out["shortcut_eval_other_acc"],
        out["shortcut_eval_cue_free_acc"],
    )
    return out


main = stage_main("train", run)


if __name__ == "__main__":
    main()
