"""Shared plumbing for the stage entry points: output dir, metrics, seeding, W&B hygiene."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from npeff.artifacts.atomic import write_json_atomic

CONFIG_PATH = str(Path(__file__).resolve().parents[2] / "conf")


def hydra_output_dir() -> Path:
    """The current Hydra run's output directory (``hydra.runtime.output_dir``)."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def write_metrics(output_dir: str | os.PathLike, metrics: dict[str, Any]) -> Path:
    """Write a stage's ``metrics.json`` atomically into its run directory."""
    return write_json_atomic(Path(output_dir) / "metrics.json", metrics)
