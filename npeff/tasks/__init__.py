"""npeff.tasks: built-in tasks as LightningDataModules with seeded ``train``/``fit``/``eval`` splits.

``build_task(task_cfg)`` builds one from its config (``name`` + the task's keyword arguments) and
sets it up. See :class:`npeff.tasks.base.NpeffTask` for the API every task has.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from npeff.errors import NpeffUserError
from npeff.tasks.backdoor import DigitsBackdoorTask
from npeff.tasks.base import SPLITS, NpeffTask, SplitData, TaskInfo
from npeff.tasks.digits import DigitsTask
from npeff.tasks.group import GroupTask
from npeff.tasks.text_csv import TextCsvTask
from npeff.tasks.tiny_lm import TinyLmTask
from npeff.tasks.toy_nli import ToyNliTask
from npeff.tasks.tracr import TracrTask
from npeff.tasks.zero_shot import ToyNliZeroShotTask

TASKS: dict[str, type[NpeffTask]] = {
    "toy_nli": ToyNliTask,
    "group": GroupTask,
    "digits": DigitsTask,
    "text_csv": TextCsvTask,
    "digits_backdoor": DigitsBackdoorTask,
    "tracr": TracrTask,
    "tiny_lm": TinyLmTask,  # causal-LM tasks (issue 18)
    "toy_nli_zero_shot": ToyNliZeroShotTask,
}


def _plain(cfg: Any) -> dict[str, Any]:
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover
        pass
    if isinstance(cfg, Mapping):
        return dict(cfg)
    raise TypeError(f"a task config must be a mapping with a 'name', got {type(cfg).__name__}")


def build_task(task_cfg: Any, *, setup: bool = True) -> NpeffTask:
    """Build (and by default set up) the task named by ``task_cfg['name']``.

    Every other key is a keyword argument of the task class. Unknown names or arguments fail at
    once with what is available.
    """
    kwargs = _plain(task_cfg)
    name = kwargs.pop("name", None)
    if name not in TASKS:
        raise NpeffUserError(f"unknown task {name!r}; available tasks: {sorted(TASKS)}")
    cls = TASKS[name]
    params = inspect.signature(cls.__init__).parameters
    unknown = sorted(k for k in kwargs if k not in params)
    if unknown:
        allowed = sorted(k for k in params if k != "self")
        raise NpeffUserError(
            f"task {name!r} got unknown option(s) {unknown}; its options: {allowed}"
        )
    task = cls(**kwargs)
    if setup:
        task.setup()
    return task


__all__ = ["SPLITS", "TASKS", "NpeffTask", "SplitData", "TaskInfo", "build_task"]
