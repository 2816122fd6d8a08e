"""Shared plumbing for the stage entry points: output dir, metrics, seeding, W&B hygiene."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
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


# --- reproducibility ---------------------------------------------------------------------------
def seed_everything(seed: int) -> int:
    """Seed Python, NumPy and torch (all ranks the same); returns the seed."""
    import lightning as L

    return int(L.seed_everything(int(seed), workers=True, verbose=False))


# --- experiment tracking -----------------------------------------------------------------------
def _wandb_has_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


def wandb_mode(requested: str | None = "auto") -> str:
    """The W&B mode to use: ``WANDB_MODE`` if set, else ``requested``; ``auto`` means online
    with an API key and offline without (no network stalls, nothing lost: ``wandb sync``)."""
    mode = os.environ.get("WANDB_MODE") or (requested or "auto")
    mode = str(mode).lower()
    if mode in ("dryrun",):
        mode = "offline"
    if mode == "auto":
        mode = "online" if _wandb_has_key() else "offline"
    if mode not in ("online", "offline", "disabled"):
        raise ValueError(f"unknown W&B mode {mode!r}; available: auto, online, offline, disabled")
    return mode


LOGGERS = ("wandb", "csv", "none")


def build_logger(cfg: Any, output_dir: str | os.PathLike) -> Any:
    """The Lightning logger chosen by ``cfg.logger`` (``wandb``/``csv``/``none``), or None.

    W&B writes under ``<output_dir>/wandb`` and records the resolved config; with mode
    ``disabled`` no logger is made. Only rank 0 logs (Lightning's loggers are rank-aware).
    """
    from omegaconf import OmegaConf

    lcfg = cfg.get("logger") if hasattr(cfg, "get") else None
    if lcfg is None:
        return None
    name = str(lcfg.get("name", "none"))
    if name not in LOGGERS:
        raise ValueError(f"unknown logger {name!r}; available: {list(LOGGERS)}")
    output_dir = Path(output_dir)
    if name == "none":
        return None
    if name == "csv":
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(str(output_dir), name="csv", version="")
    mode = wandb_mode(lcfg.get("mode", "auto"))
    if mode == "disabled":
        return None
    from lightning.pytorch.loggers import WandbLogger

    stage = cfg.get("stage", "run")
    config = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
    return WandbLogger(
        project=str(lcfg.get("project", "npeff")),
        entity=lcfg.get("entity"),
        group=lcfg.get("group"),
        tags=list(lcfg.get("tags") or []) + [str(stage)],
        name=f"{stage}-{output_dir.parent.name}-{output_dir.name}",
        save_dir=str(output_dir),
        offline=(mode == "offline"),
        log_model=bool(lcfg.get("log_model", False)),
        config=config,
        job_type=str(stage),
    )


def finish_tracking() -> None:
    """End the active W&B run, if any, so each multirun job gets its own run."""
    import sys

    if _pipeline_owns_run:
        return
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


# --- one tracking run for a whole pipeline job -------------------------------------------------
_pipeline_owns_run = False


@contextlib.contextmanager
def pipeline_tracking(cfg: Any, output_dir: str | os.PathLike) -> Iterator[None]:
    """Open one W&B run for a pipeline job (when ``cfg.logger`` is wandb and not disabled).

    Inside it, stages' Lightning ``WandbLogger`` attach to the active run and ``finish_tracking``
    is deferred, so a multirun job is exactly one W&B run; the run is finished on exit.
    """
    global _pipeline_owns_run
    lcfg = cfg.get("logger") if hasattr(cfg, "get") else None
    if lcfg is None or str(lcfg.get("name", "none")) != "wandb":
        yield
        return
    mode = wandb_mode(lcfg.get("mode", "auto"))
    if mode == "disabled":
        yield
        return
    import wandb
    from omegaconf import OmegaConf

    output_dir = Path(output_dir)
    wandb.init(
        project=str(lcfg.get("project", "npeff")),
        entity=lcfg.get("entity"),
        group=lcfg.get("group"),
        tags=list(lcfg.get("tags") or []) + ["pipeline"],
        name=f"npeff-{output_dir.parent.name}-{output_dir.name}",
        dir=str(output_dir),
        mode=mode,
        job_type="pipeline",
        config=OmegaConf.to_container(cfg, resolve=True),
    )
    _pipeline_owns_run = True
    try:
        yield
    finally:
        _pipeline_owns_run = False
        finish_tracking()


def log_stage_metrics(cfg: Any, output_dir: str | os.PathLike, metrics: dict, prefix: str) -> None:
    """Send a stage's numeric metrics (as ``<prefix>/<name>``) to the tracker chosen by
    ``cfg.logger``, if any, then end its run (deferred inside a pipeline job)."""
    if cfg.get("logger") is None:
        return
    try:
        logger = build_logger(cfg, output_dir)
        if logger is not None:
            logger.log_metrics(
                {
                    f"{prefix}/{k}": float(v)
                    for k, v in metrics.items()
                    if isinstance(v, int | float) and not isinstance(v, bool)
                }
            )
            logger.finalize("success")
    finally:
        finish_tracking()
