"""A group zoo's training recipe and its file: ``zoo_optim`` (the optimizer settings of a named
recipe) and ``load_zoo`` (``zoo.pt``, or a one-model zoo from a group ``model.ckpt``). The zoo
is trained by ``npeff-train task=group task.n_seeds=S`` (:mod:`npeff.run.zoo`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from npeff.artifacts.zoo import ZOO_NAME, GroupZoo, load_zoo_file, zoo_path
from npeff.errors import NpeffFileNotFoundError, NpeffUserError
from npeff.groups.zoo import RECIPES
from npeff.models.simple import GROUP_HIDDEN_WEIGHT, GROUP_UNEMBED_WEIGHT

log = logging.getLogger(__name__)


def zoo_optim(cfg: DictConfig) -> dict[str, Any]:
    """``cfg.optim``, or a named recipe (``task.recipe=wu|chughtai``) over it."""
    optim = OmegaConf.to_container(cfg.optim, resolve=True) if cfg.get("optim") else {}
    recipe = cfg.task.get("recipe")
    if recipe:
        if str(recipe) not in RECIPES:
            raise NpeffUserError(f"unknown recipe {recipe!r}; available: {sorted(RECIPES)}")
        optim = {**optim, **RECIPES[str(recipe)]}
    return optim


def load_zoo(path: str | Path) -> GroupZoo:
    """A zoo from ``zoo.pt`` / its run dir, or a one-model zoo from a group ``model.ckpt``.

    Fails clearly when the file is neither (e.g. a checkpoint of another task or model)."""
    from npeff.models.checkpoint import CHECKPOINT_NAME, read_checkpoint

    p = Path(path).expanduser()
    if p.is_dir():
        p = zoo_path(p) if zoo_path(p).is_file() else p / CHECKPOINT_NAME
    if not p.is_file():
        raise NpeffFileNotFoundError(
            f"no group zoo or checkpoint at {path}: train one with "
            "`npeff-train task=group task.n_seeds=20` and pass its run dir"
        )
    if p.name == ZOO_NAME:
        return load_zoo_file(p)
    raw = read_checkpoint(p)
    conf = raw["config"]
    if (conf.get("task") or {}).get("name") != "group" or (conf.get("model") or {}).get(
        "name"
    ) != "group_mlp":
        raise NpeffUserError(
            f"{p} is not a group-operation network: its task is "
            f"{(conf.get('task') or {}).get('name')!r} and model {(conf.get('model') or {}).get('name')!r} "
            "(need task=group, model=group_mlp)"
        )
    sd = raw["state_dict"]
    missing = [
        k
        for k in ("embed_left", "embed_right", GROUP_HIDDEN_WEIGHT, GROUP_UNEMBED_WEIGHT)
        if k not in sd
    ]
    if missing:
        raise NpeffUserError(f"{p} lacks the group network parameters {missing}")
    params = {k: v[None] for k, v in sd.items()}
    return GroupZoo(params, conf, [int(conf.get("seed", 0))], raw.get("metrics") or {}, p)
