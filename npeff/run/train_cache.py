"""The training cache: a trained model is reused by every run whose training config is the same."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from npeff.artifacts.atomic import atomic_path, write_json_atomic
from npeff.run import common
from npeff.run.common import write_metrics

log = logging.getLogger(__name__)

CACHE_IGNORED = ("logger", "paths", "progress", "hydra", "stage", "enable_model_summary")


def train_cache_key(train_cfg: DictConfig) -> str:
    """A hash of everything that determines the trained model (not logging or paths)."""
    d = OmegaConf.to_container(train_cfg, resolve=True)
    for key in CACHE_IGNORED:
        d.pop(key, None)
    if isinstance(d.get("trainer"), dict):
        d["trainer"].pop("enable_model_summary", None)
    text = json.dumps(d, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cached_train(train_cfg: DictConfig, step_dir: Path, cache_root: Path) -> tuple[Path, dict]:
    """Train, or reuse the checkpoint of an identical earlier training run.

    Returns the checkpoint path and the training metrics (with ``cached`` set).
    """
    from npeff.run import train

    cache_dir = cache_root / "train" / train_cache_key(train_cfg)
    ckpt, metrics_path = cache_dir / "model.ckpt", cache_dir / "metrics.json"
    if ckpt.is_file() and metrics_path.is_file():
        log.info("reusing the trained model cached at %s", cache_dir)
        metrics = json.loads(metrics_path.read_text()) | {"cached": True, "checkpoint": str(ckpt)}
        common.on_rank_zero(write_metrics, step_dir, metrics)
        return ckpt, metrics
    metrics = dict(train.run(train_cfg, step_dir))  # every rank trains (DDP); rank 0 saved it
    common.on_rank_zero(_fill_cache, step_dir, cache_dir, metrics)
    return step_dir / "model.ckpt", metrics | {"cached": False}


def _fill_cache(step_dir: Path, cache_dir: Path, metrics: dict) -> None:
    cache_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(cache_dir / "model.ckpt") as tmp:
        shutil.copyfile(step_dir / "model.ckpt", tmp)
    write_json_atomic(cache_dir / "metrics.json", metrics)
