"""The pipeline's steps: one :class:`Step` per job of ``npeff``, run in ``order`` by
:func:`npeff.run.pipeline.run`.

A step reads the artifacts earlier steps made (``ctx.artifacts``: name → path), runs one or more
stages into ``<run dir>/<stage>/`` through ``ctx.stage`` and returns the artifacts it made (an
artifact an earlier step made under the same name is replaced: ``expand`` returns a new
``decomposition``; ``section`` artifacts are collected for the report).

Adding a step: a module in this package with ``STEPS = [Step(...)]`` (found by :func:`registry`),
and, for an optional step, its switch ``steps.<name>.enabled`` (``true`` | ``false`` | ``auto``)
with its settings in ``conf/pipeline.yaml``. Its stage settings are ``stages.<stage>``.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from npeff.errors import NpeffUserError
from npeff.run import common
from npeff.run.configs import stage_config

log = logging.getLogger(__name__)

# pipeline keys of older versions → where their setting lives now
RENAMED_KEYS = {
    "flawed": "steps.expand",
    "recovery": "steps.recover",
    "group_analysis": "steps.groups",
    "coar_compare": "steps.coar_compare",
    "shortcut_fix": "steps.shortcut",
    "tracr_compile": "steps.tracr_compile",
    "tracr_check": "steps.tracr_check",
}


# the inputs most stages take: the model and the decomposition's eval coefficients and PEFs
EVAL_INPUTS = {
    "checkpoint": "checkpoint",
    "decomposition": "decomposition",
    "coeffs": "coeffs",
    "pefs": "eval_pefs",
}


@dataclass
class Context:
    """What the steps of one pipeline job share: its config, run directory, the artifacts made
    so far (name → path), each stage's metrics and seconds, and the report's extra sections."""

    cfg: DictConfig
    run_dir: Path
    artifacts: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, dict] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    sections: list[str] = field(default_factory=list)

    def dir(self, stage: str) -> Path:
        """``<run dir>/<stage>/`` (created)."""
        d = self.run_dir / stage
        d.mkdir(parents=True, exist_ok=True)
        return d

    def stage(self, stage: str, fn: Callable, *args: Any, single: bool = False) -> Any:
        """Run ``fn(*args)`` as stage ``stage``, timed, its metrics kept under that name. Started
        as several processes every rank runs it together, except ``single`` stages, which run on
        global rank 0 while the others wait."""
        log.info("── npeff: %s ──", stage)
        t0 = time.perf_counter()
        out = common.on_rank_zero(fn, *args) if single else fn(*args)
        self.seconds[stage] = round(time.perf_counter() - t0, 3)
        self.metrics[stage] = out if isinstance(out, dict) else {}
        return out

    def config(self, name: str, section: str | None = None, **settings: Any) -> DictConfig:
        """Stage ``name``'s config in this pipeline (:func:`npeff.run.configs.stage_config`)."""
        return stage_config(self.cfg, name, section, **settings)

    def inputs(self, **names: str) -> dict[str, str]:
        """``{input key: path of artifact name}``, e.g. ``ctx.inputs(pefs="eval_pefs")``."""
        return {key: str(self.artifacts[name]) for key, name in names.items()}

    def settings(self, step: str) -> DictConfig:
        """``steps.<step>`` of the pipeline config (empty when absent)."""
        return (self.cfg.get("steps") or {}).get(step) or OmegaConf.create({})


@dataclass(frozen=True)
class Step:
    """One job of the pipeline.

    ``run(ctx) -> {artifact: path}``; ``needs``: the artifacts it reads (checked before it runs);
    ``auto(cfg)``: whether an optional step runs when ``steps.<name>.enabled`` is ``auto``
    (``None``: a core step, always on); ``check(cfg)``: raises ``ValueError`` on settings that
    cannot work, before any step runs; ``headline(ctx) -> dict``: its keys of the job's
    ``metrics.json``; ``summary(headline) -> lines`` for the printed summary.
    """

    name: str
    order: int
    run: Callable[[Context], dict[str, Any]]
    needs: tuple[str, ...] = ()
    auto: Callable[[DictConfig], bool] | None = None
    check: Callable[[DictConfig], None] | None = None
    headline: Callable[[Context], dict] | None = None
    summary: Callable[[dict], list[str]] | None = None

    @property
    def optional(self) -> bool:
        return self.auto is not None

    def enabled(self, cfg: DictConfig) -> bool:
        """Core steps always; optional ones by ``steps.<name>.enabled`` (true/false/auto)."""
        if not self.optional:
            return True
        switch = ((cfg.get("steps") or {}).get(self.name) or {}).get("enabled", "auto")
        if isinstance(switch, bool):
            return switch
        if str(switch) == "auto":
            return bool(self.auto(cfg))
        raise NpeffUserError(f"steps.{self.name}.enabled={switch!r}: use true, false or auto")


def fmt(v: Any) -> str:
    """A value as the printed summary shows it (floats with 3 decimals)."""
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def registry() -> list[Step]:
    """Every step of the modules of this package, in ``order``."""
    steps: list[Step] = []
    for info in pkgutil.iter_modules(__path__):
        steps += getattr(importlib.import_module(f"{__name__}.{info.name}"), "STEPS", [])
    names = [s.name for s in steps]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise RuntimeError(f"pipeline steps defined twice: {dup}")
    return sorted(steps, key=lambda s: s.order)


def check_config(cfg: DictConfig, steps: list[Step]) -> list[Step]:
    """The enabled steps, after every check that can fail before any work: renamed keys,
    unknown ``steps.<name>``, each enabled step's ``check``."""
    for old, new in RENAMED_KEYS.items():
        if cfg.get(old) is not None:
            raise NpeffUserError(
                f"`{old}` is now `{new}` (e.g. {new}.enabled=true): rename it in your "
                "experiment file or overrides"
            )
    optional = {s.name for s in steps if s.optional}
    unknown = sorted(set(cfg.get("steps") or {}) - optional)
    if unknown:
        raise NpeffUserError(
            f"unknown steps {unknown} under `steps`: choose from {sorted(optional)}"
        )
    on = [s for s in steps if s.enabled(cfg)]
    for s in on:
        if s.check is not None:
            s.check(cfg)
    return on


def run_steps(ctx: Context, steps: list[Step]) -> None:
    """Run ``steps`` in order; each one's artifacts join ``ctx.artifacts``."""
    for s in steps:
        missing = [a for a in s.needs if a not in ctx.artifacts]
        if missing:
            raise RuntimeError(f"step {s.name} needs {missing}, which no earlier step made")
        made = s.run(ctx) or {}
        section = made.pop("section", None)
        if section is not None:
            ctx.sections.append(str(section))
        ctx.artifacts.update(made)
