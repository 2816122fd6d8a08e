"""Shared plumbing for the stage entry points: output dir, metrics, seeding, W&B hygiene, and the
launch checks every entry point runs (``stage_main``: launcher plugins, multi-node ranks)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from npeff import CONFIG_PATH  # noqa: F401 (the stages' config dir, package data)
from npeff.artifacts.atomic import write_json_atomic
from npeff.errors import NpeffUserError, one_line


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
        raise NpeffUserError(
            f"unknown W&B mode {mode!r}; available: auto, online, offline, disabled"
        )
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
        raise NpeffUserError(f"unknown logger {name!r}; available: {list(LOGGERS)}")
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
    if mode == "disabled" or not is_global_zero():  # one W&B run per job: global rank 0's
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


# --- launchers and ranks -----------------------------------------------------------------------
# The entry points run as one process, as one of several processes started by ``torchrun`` or by
# SLURM's ``srun`` (one process per device and node), or as a Hydra multirun job (basic or submitit
# launcher). Under several processes every output file has one writer, global rank 0.

# Hydra launcher plugins npeff documents: option -> (plugin module, what to install).
LAUNCHER_PLUGINS = {
    "submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "cluster"),
    "submitit_local": ("hydra_plugins.hydra_submitit_launcher", "cluster"),
}
RUN_DIR_TIMEOUT_S = 600  # how long ranks > 0 wait for rank 0 to name the run directory


class LaunchError(NpeffUserError, RuntimeError):
    """A run that cannot start as launched (missing plugin, processes not matching the trainer)."""


def launch_env() -> dict | None:
    """The external launcher that started this process as one of several, else None.

    Returns ``{"launcher": "torchrun" | "slurm", "rank": global rank, "world_size": ...,
    "local_world_size": processes on this node}``. Detection mirrors Lightning's
    ``TorchElasticEnvironment`` (``TORCHELASTIC_RUN_ID``) and ``SLURMEnvironment`` (``SLURM_NTASKS``,
    job name not ``bash``/``interactive``); a single SLURM task counts as no launcher.
    """
    env = os.environ
    if "TORCHELASTIC_RUN_ID" in env and "RANK" in env:
        return {
            "launcher": "torchrun",
            "rank": int(env["RANK"]),
            "world_size": int(env.get("WORLD_SIZE", 1)),
            "local_world_size": int(env.get("LOCAL_WORLD_SIZE", 1)),
        }
    ntasks = int(env.get("SLURM_NTASKS", "0") or 0)
    if ntasks > 1 and env.get("SLURM_JOB_NAME") not in ("bash", "interactive"):
        per_node = env.get("SLURM_NTASKS_PER_NODE", "").split("(")[0] or str(ntasks)
        return {
            "launcher": "slurm",
            "rank": int(env.get("SLURM_PROCID", 0)),
            "world_size": ntasks,
            "local_world_size": int(per_node) if per_node.isdigit() else ntasks,
        }
    return None


def global_rank() -> int:
    """This process's global rank: from the process group once it exists, else from the launcher's
    environment (``RANK``/``SLURM_PROCID`` — never ``LOCAL_RANK`` alone, which is 0 on every
    node), else Lightning's rank-zero rank (a Lightning-started child), else 0. Before the group
    exists, a process of Lightning's own multi-node launch (``NODE_RANK`` > 0) counts as
    ``NODE_RANK × LOCAL_WORLD_SIZE + LOCAL_RANK`` (not 0, whatever the per-node count)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    env = launch_env()
    if env is not None:
        return env["rank"]
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    node = int(os.environ.get("NODE_RANK", 0) or 0)
    if node > 0:
        local = int(os.environ.get("LOCAL_RANK", 0) or 0)
        return node * int(os.environ.get("LOCAL_WORLD_SIZE", 1) or 1) + local
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0)


def is_global_zero() -> bool:
    return global_rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op with one process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def on_rank_zero(fn, *args, **kwargs):
    """Run a single-process step on global rank 0 only (one writer per file); every rank then
    waits for it. Returns ``fn``'s result on rank 0 and ``{}`` on the others."""
    out = fn(*args, **kwargs) if is_global_zero() else {}
    barrier()
    return out


def _as_int(v: Any) -> int | None:
    return int(v) if isinstance(v, int) or (isinstance(v, str) and v.isdigit()) else None


def check_launch(cfg: Any) -> None:
    """Refuse, before any work, a ``trainer`` section that does not match how this process was
    started: ``trainer.num_nodes`` > 1 without torchrun/SLURM, or a launcher that started a
    different number of processes than ``trainer.num_nodes`` × ``trainer.devices``."""
    trainer = cfg.get("trainer") if hasattr(cfg, "get") else None
    if not trainer:
        return
    num_nodes = _as_int(trainer.get("num_nodes", 1)) or 1
    devices = _as_int(trainer.get("devices", 1))
    env = launch_env()
    stage = str(cfg.get("stage", "npeff"))
    exe = "npeff" if stage == "pipeline" else f"npeff-{stage.replace('_pefs', '')}"
    manual = "NODE_RANK" in os.environ and "MASTER_ADDR" in os.environ  # Lightning's own launch
    if num_nodes > 1 and env is None and not manual:
        raise LaunchError(
            f"trainer.num_nodes={num_nodes} needs one process per device on each of {num_nodes} "
            "nodes, started by a launcher, but this process has no torchrun or SLURM environment "
            "(no TORCHELASTIC_RUN_ID/RANK, no SLURM_NTASKS > 1). Start it on every node with\n"
            f"  torchrun --nnodes {num_nodes} --nproc-per-node {devices or '<devices>'} "
            f"--node-rank <i> --master-addr <node 0> --master-port <port> $(which {exe}) ... "
            f"trainer.num_nodes={num_nodes} trainer.strategy=ddp\n"
            f"or under SLURM with  srun --nodes {num_nodes} --ntasks-per-node "
            f"{devices or '<devices>'} {exe} ...  (README: 'Running on a cluster'); "
            "on one machine use trainer.num_nodes=1."
        )
    if env is not None and devices is not None and num_nodes * devices != env["world_size"]:
        raise LaunchError(
            f"{env['launcher']} started {env['world_size']} processes "
            f"({env['local_world_size']} per node), but trainer.num_nodes={num_nodes} × "
            f"trainer.devices={devices} = {num_nodes * devices}: set "
            f"trainer.num_nodes={max(env['world_size'] // max(env['local_world_size'], 1), 1)} "
            f"trainer.devices={env['local_world_size']} trainer.strategy=ddp"
        )


def check_launcher_plugins(argv: list[str]) -> None:
    """Refuse ``hydra/launcher=<name>`` when its plugin is not installed, with what to install
    (Hydra itself would only list the launchers it has)."""

    for tok in argv:
        key, _, name = tok.partition("=")
        if key.lstrip("+~") not in ("hydra/launcher", "override hydra/launcher"):
            continue
        plugin = LAUNCHER_PLUGINS.get(name)
        if plugin is None:
            continue
        module, extra = plugin
        if not (_module_exists(module) and _module_exists("submitit")):
            raise LaunchError(
                f"hydra/launcher={name} needs the Hydra submitit launcher plugin, which is not "
                f'installed: pip install -e ".[{extra}]" (or pip install '
                "hydra-submitit-launcher==1.2.0), then rerun with --multirun"
            )


def _module_exists(name: str) -> bool:
    """Whether ``name`` can be imported; False also when a parent package (the ``hydra_plugins``
    namespace, say) is itself missing, where ``find_spec`` raises instead of returning None."""
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def _has_override(argv: list[str], key: str) -> bool:
    return any(t.lstrip("+").split("=", 1)[0] == key for t in argv if "=" in t)


def _is_multirun(argv: list[str]) -> bool:
    return any(t in ("-m", "--multirun") for t in argv)


def _agent_store():
    """torchrun's own key-value store (the agent's, which its workers share), or None."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() != "true":
        return None
    from datetime import timedelta

    import torch.distributed as dist

    return dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        is_master=False,
        timeout=timedelta(seconds=RUN_DIR_TIMEOUT_S),
    )


def _run_dir_key() -> str:
    return f"npeff/run_dir/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"


# Set by stage_main when rank 0 must tell the other torchrun ranks its run directory.
_publish_run_dir = False


def _shared_run_dir_overrides(argv: list[str], env: dict) -> list[str]:
    """Overrides that put every rank of one launch into the same run directory (a directory all
    nodes see) unless ``hydra.run.dir`` is given: under SLURM one named after the job and step;
    under torchrun rank 0's own, which the other ranks read from torchrun's store."""
    global _publish_run_dir
    if _has_override(argv, "hydra.run.dir") or _is_multirun(argv):
        return []
    if env["launcher"] == "slurm":
        job = os.environ.get("SLURM_JOB_ID", "job")
        step = os.environ.get("SLURM_STEP_ID", os.environ.get("SLURM_STEPID", "0"))
        return [f"hydra.run.dir=${{paths.output_dir}}/${{stage}}/slurm-{job}/{step}"]
    store = _agent_store()
    if store is None:
        raise LaunchError(
            "torchrun started this as one of several processes, but they cannot agree on a run "
            "directory (no torchrun agent store): pass hydra.run.dir=<a directory every node sees>"
        )
    if env["rank"] == 0:
        _publish_run_dir = True
        return []
    value = store.get(_run_dir_key()).decode()
    if value.startswith("!"):
        raise LaunchError(f"rank 0 stopped before starting: {value[1:]}")
    return [f"hydra.run.dir={value}"]


def _rank_overrides(argv: list[str]) -> list[str]:
    """Extra Hydra overrides for a process that is one of several (torchrun / srun ranks): one run
    directory for all, and for ranks > 0 no ``.hydra/`` files and no log file (rank 0 writes
    them; the others log to the console only)."""
    env = launch_env()
    if env is None or env["world_size"] <= 1:
        return []
    out = _shared_run_dir_overrides(argv, env)
    if env["rank"] != 0:
        out += ["hydra.output_subdir=null", "hydra/job_logging=stdout"]
    return out


def _publish(value: str) -> None:
    global _publish_run_dir
    if _publish_run_dir:
        _publish_run_dir = False
        _agent_store().set(_run_dir_key(), value)


def _fail(e: NpeffUserError) -> None:
    """Print ``<program>: error: <message>`` on one line to stderr and exit with status 2."""
    import sys

    print(f"{os.path.basename(sys.argv[0])}: error: {one_line(e)}", file=sys.stderr, flush=True)
    raise SystemExit(2) from None


def stage_main(config_name: str, run_fn, *, single_process: bool = False):
    """The console entry point of a stage: ``hydra.main`` on ``conf/<config_name>.yaml`` calling
    ``run_fn(cfg, output_dir)``, with the launch checks (``check_launcher_plugins`` before Hydra
    starts, ``check_launch`` before any work) and the rank handling of ``_rank_overrides``.
    A failed check, or any ``NpeffUserError`` the stage raises, prints one line (no traceback;
    ``HYDRA_FULL_ERROR=1`` keeps it) and exits with status 2. A ``single_process`` stage started as several processes runs on global rank 0 only."""
    import sys

    import hydra

    def task(cfg) -> None:
        try:
            check_launch(cfg)
        except LaunchError as e:
            _publish(f"!{e}")
            _fail(e)
        _publish(str(hydra_output_dir().resolve()))
        if single_process and not is_global_zero():
            print(f"rank {global_rank()}: {config_name} runs on one process (rank 0)", flush=True)
            return
        try:
            run_fn(cfg, hydra_output_dir())
        except NpeffUserError as e:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            _fail(e)

    # Hydra names the job (log file, submitit job name) after the task function's module.
    task.__module__ = run_fn.__module__
    task.__qualname__ = task.__name__ = "_stage_task"
    decorated = hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=config_name)(
        task
    )

    def main() -> None:
        argv = sys.argv[1:]
        try:
            check_launcher_plugins(argv)
            sys.argv = [sys.argv[0], *argv, *_rank_overrides(argv)]
        except LaunchError as e:
            _fail(e)
        decorated()

    main.__doc__ = f"Console entry point of conf/{config_name}.yaml ({run_fn.__module__})."
    main.task_function = task
    return main
