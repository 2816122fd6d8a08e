"""``model.ckpt``: a model's state dict plus the resolved config that rebuilds model and task.

Format (a ``torch.save`` dict, loadable with ``weights_only=True``): ``format`` =
``"npeff-model"``, ``version``, ``state_dict``, ``config`` (plain dict with at least ``model``
and ``task``), ``metrics`` (optional).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from npeff.artifacts.atomic import atomic_path
from npeff.artifacts.torch_file import load_torch_file
from npeff.errors import NpeffFileNotFoundError, NpeffUserError

CHECKPOINT_NAME = "model.ckpt"
CHECKPOINT_FORMAT = "npeff-model"
CHECKPOINT_VERSION = 1


def save_checkpoint(
    path: str | os.PathLike, model: nn.Module, cfg: DictConfig | dict, metrics: dict | None = None
) -> Path:
    """Write ``model.ckpt`` atomically; ``cfg`` must hold ``model`` and ``task`` sections."""
    config = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    for key in ("model", "task"):
        if key not in config:
            raise NpeffUserError(f"checkpoint config needs a {key!r} section")
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": config,
        "metrics": dict(metrics or {}),
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def resolve_checkpoint_path(path: str | os.PathLike | None) -> Path:
    """A ``model.ckpt`` file, or a run directory that holds one; fails clearly otherwise."""
    if path is None or str(path) in ("", "???"):
        raise NpeffUserError(
            "no checkpoint given: pass inputs.checkpoint=<run dir of npeff-train>/model.ckpt"
        )
    p = Path(path).expanduser()
    if p.is_dir():
        if (p / CHECKPOINT_NAME).is_file():
            return p / CHECKPOINT_NAME
        raise NpeffFileNotFoundError(
            f"{p} is a directory without {CHECKPOINT_NAME}; run npeff-train or point at its model.ckpt"
        )
    if not p.is_file():
        raise NpeffFileNotFoundError(
            f"checkpoint not found: {p}. Train one with `npeff-train` (it writes "
            f"outputs/train/<date>/<time>/{CHECKPOINT_NAME}) and pass inputs.checkpoint=<that path>"
        )
    return p


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The raw checkpoint dict, after checking it is an npeff model checkpoint."""
    p = resolve_checkpoint_path(path)
    return load_torch_file(
        p, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, "npeff model checkpoint", "written by npeff-train"
    )
