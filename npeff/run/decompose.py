"""Stage ``npeff-decompose``: PEF file → decomposition.h5 (LRM-NPEFF or D-NPEFF)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from npeff.run import common


def stage_logger(cfg: DictConfig, output_dir: Path):
    """The configured Lightning logger (``common.build_logger``; None for ``logger=none``).

    Without a ``logger`` config (or without ``build_logger``) a CSV logger in the run dir, so the
    per-step losses are always recorded somewhere besides the decomposition file.
    """
    build = getattr(common, "build_logger", None)
    if build is not None and cfg.get("logger") is not None:
        return build(cfg, output_dir)
    from lightning.pytorch.loggers import CSVLogger

    return CSVLogger(str(output_dir), name="logs", version="")


def finish_tracking() -> None:
    fn = getattr(common, "finish_tracking", None)
    if fn is not None:
        fn()


def run(cfg: DictConfig, output_dir: Path) -> dict:
    from npeff.decomp.collectives import rank_and_world
    from npeff.decomp.module import DecompSettings
    from npeff.decomp.runner import decompose

    output_dir = Path(output_dir)
    settings = DecompSettings.from_dict(OmegaConf.to_container(cfg.decomp, resolve=True))
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True) if cfg.get("trainer") else {}
    t0 = time.perf_counter()
    try:
        dec = decompose(
            cfg.inputs.pefs,
            settings,
            output_dir,
            trainer_cfg=trainer_cfg,
            logger=stage_logger(cfg, output_dir),
            checkpoint_every=int(cfg.get("checkpoint_every", 0) or 0),
            resume=cfg.get("resume", "auto"),
            convergence_every=int(cfg.get("convergence_every", 0) or 0),
            keep_snapshots=bool(cfg.get("keep_snapshots", True)),
            progress=bool(cfg.get("progress", True)),
            metadata={"config": OmegaConf.to_yaml(cfg, resolve=True), "stage": "decompose"},
        )
    finally:
        finish_tracking()
    rank, world = rank_and_world()  # the process group Lightning set up (global ranks)
    if world == 1 and trainer_cfg:  # ddp_spawn: this is the parent, the group was the children's
        world = (common._as_int(trainer_cfg.get("devices", 1)) or 1) * (
            common._as_int(trainer_cfg.get("num_nodes", 1)) or 1
        )
    n_steps = int(dec.metadata.get("n_steps", 0))
    seconds = float(dec.metadata.get("seconds", 0.0))
    comps = dec.G if dec.kind == "lrm" else dec.H
    metrics = {
        "kind": dec.kind,
        # loss of the final factors (LRM: squared error incl. T; D: ‖A − WH‖_F)
        "final_loss": dec.metadata.get("final_loss"),
        "final_losses": {k: float(v[-1]) for k, v in dec.losses.items() if len(v)},
        "seconds": seconds,
        "seconds_per_step": seconds / max(n_steps, 1),
        "wall_seconds": time.perf_counter() - t0,
        "n_steps": n_steps,
        "stopped_early": "stopped_at" in dec.metadata
        or n_steps
        < sum(
            settings.__dict__[k] or 0
            for k in ("n_iters_g_only", "n_iters_joint", "n_iters_joint_expansion_only")
        ),
        "n_examples": dec.n_examples,
        "n_components": dec.n_components,
        "n_parameters": dec.n_parameters,
        "n_columns_kept": int(np.size(dec.new_to_old_col_indices)),
        "world_size": world,
        "num_nodes": int(trainer_cfg.get("num_nodes", 1) or 1) if trainer_cfg else 1,
        "decomposition": str(output_dir / "decomposition.h5"),
    }
    if dec.kind == "diag" and comps is not None and hasattr(comps, "nnz"):
        metrics["H_density"] = comps.nnz / max(np.prod(comps.shape), 1)
    if rank == 0:
        common.write_metrics(output_dir, metrics)
    return metrics


main = common.stage_main("decompose", run)


if __name__ == "__main__":
    main()
