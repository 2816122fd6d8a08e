"""``zoo.pt``: a zoo of S group networks trained at once (``npeff-train task=group
task.n_seeds=S``), read by the group analysis.

Format (a ``torch.save`` dict of plain types and tensors, loaded with ``weights_only=True``):
``format`` = ``"npeff-group-zoo"``, ``version``, ``params`` ``{GroupMLP state-dict key: [S, ...]}``,
``config`` (the resolved run config: ``task.group`` names the group), ``seeds`` (int ``[S]``),
``metrics`` (the run's metrics) and ``history`` (per check: epoch, loss, accuracies per seed).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from npeff.artifacts.atomic import atomic_path
from npeff.artifacts.torch_file import load_torch_file
from npeff.errors import NpeffFileNotFoundError

ZOO_NAME = "zoo.pt"
ZOO_FORMAT = "npeff-group-zoo"
ZOO_VERSION = 1
_HOW = "train one with `npeff-train task=group task.n_seeds=20` and pass its run dir"


@dataclass
class GroupZoo:
    """A loaded zoo: ``params`` ``{key: [S, ...]}``, ``config`` (dict), ``seeds``, ``metrics``,
    ``path`` (where it was read from), ``history`` (training checks; empty when not recorded)."""

    params: dict[str, torch.Tensor]
    config: dict[str, Any]
    seeds: list[int]
    metrics: dict[str, Any]
    path: Path
    history: list[dict] = field(default_factory=list)

    @property
    def n_seeds(self) -> int:
        return len(self.seeds)

    @property
    def group_name(self) -> str:
        return str(self.config["task"]["group"])


def zoo_path(run_dir: str | os.PathLike) -> Path:
    """Where a zoo training run dir keeps its ``zoo.pt``."""
    return Path(run_dir) / ZOO_NAME


def save_zoo(
    path: str | os.PathLike,
    params: dict[str, torch.Tensor],
    config: dict[str, Any],
    seeds: list[int],
    metrics: dict[str, Any],
    history: list[dict],
) -> Path:
    """Write a zoo file atomically; ``params`` ``{key: [S, ...]}`` with S = ``len(seeds)``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(
            {
                "format": ZOO_FORMAT,
                "version": ZOO_VERSION,
                "params": params,
                "config": config,
                "seeds": seeds,
                "metrics": metrics,
                "history": history,
            },
            tmp,
        )
    return path


def load_zoo_file(path: str | os.PathLike) -> GroupZoo:
    """Read a ``zoo.pt``; a file that is not one is a one-line ValueError naming it."""
    path = Path(path)
    if not path.is_file():
        raise NpeffFileNotFoundError(f"no group zoo at {path}: {_HOW}")
    raw = load_torch_file(path, ZOO_FORMAT, ZOO_VERSION, "npeff group zoo", _HOW)
    return GroupZoo(
        params=raw["params"],
        config=raw["config"],
        seeds=[int(s) for s in raw["seeds"]],
        metrics=raw["metrics"],
        path=path,
        history=list(raw.get("history") or []),
    )
