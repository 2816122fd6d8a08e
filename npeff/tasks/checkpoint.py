"""Loading a ``model.ckpt``: the task and the model its resolved config describes, with the
checkpoint's weights (the file format: :mod:`npeff.models.checkpoint`). Here, not in
``models/``, because it builds a task (``tasks/`` uses ``models/``, not the other way round)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from npeff.errors import NpeffUserError
from npeff.models.checkpoint import read_checkpoint, resolve_checkpoint_path
from npeff.models.registry import build_model
from npeff.tasks import build_task


@dataclass
class LoadedModel:
    """What :func:`load_checkpoint` returns: the model (eval mode), its task (set up), the config."""

    model: nn.Module
    task: Any  # npeff.tasks.NpeffTask
    cfg: DictConfig
    path: Path


def load_checkpoint(path: str | os.PathLike) -> LoadedModel:
    """Rebuild task and model from a checkpoint path alone (model in eval mode)."""
    p = resolve_checkpoint_path(path)
    payload = read_checkpoint(p)
    cfg = OmegaConf.create(payload["config"])
    task = build_task(cfg.task)
    model = build_model(cfg.model, task.model_hints())
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as e:
        raise NpeffUserError(
            f"{p}: the weights do not fit the model its config describes: {e}"
        ) from None
    model.eval()
    return LoadedModel(model=model, task=task, cfg=cfg, path=p)
