"""``npeff-coar``: COAR attributions of a trained model → ``attributions.h5`` + ``coar.json``.

    npeff-coar                                        # tiny BERT heads on toy NLI (trains it first, cached)
    npeff-coar experiment=coar_group                  # S4 group MLP, hidden neurons
    npeff-coar experiment=coar_digits trainer=ddp     # digits CNN, masks over 2 processes
    npeff-coar inputs.checkpoint=<run>/model.ckpt coar.units=neurons coar.n_masks=5000

``coar.json`` (also ``metrics.json``): ``corr_heldout_mean`` (COAR at α_train), ``corr_loo_mean``,
``corr_gp_mean``, ``corr_by_alpha``, ``best_alpha``, ``n_masks``, ``n_units``, ``n_examples``,
``seconds``, ``masks_per_second``. An interrupted run resumes: rerun with
``hydra.run.dir=<its run dir>`` (or the same command: the newest unfinished file of an identical
earlier run is moved into the new run dir).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from npeff.artifacts.coar_summary import save_coar_summary
from npeff.errors import NpeffUserError
from npeff.run.common import log_stage_metrics, stage_main, write_metrics

log = logging.getLogger(__name__)
ATTRIBUTIONS_NAME = "attributions.h5"
# Settings that decide the ablation dataset: an unfinished file is continued only if they match.
RESUME_KEYS = ("units", "split", "n_examples", "alpha", "seed")


def _plain(x: Any) -> Any:
    return OmegaConf.to_container(x, resolve=True) if OmegaConf.is_config(x) else x


def trainer_processes(cfg: DictConfig) -> tuple[int, int, str, str]:
    """(devices, num_nodes, strategy, accelerator) from ``cfg.trainer``."""
    t = cfg.get("trainer") or {}
    devices = t.get("devices", 1)
    devices = int(devices) if isinstance(devices, int) or str(devices).isdigit() else 1
    strategy = str(t.get("strategy", "ddp_spawn"))
    if strategy not in ("ddp", "ddp_spawn"):
        strategy = "ddp_spawn"
    return devices, int(t.get("num_nodes", 1) or 1), strategy, str(t.get("accelerator", "cpu"))


def check_inputs(model, c: DictConfig) -> None:
    """Every COAR setting checked on the model before any work (clear errors)."""
    from npeff.coar.attributions import check_settings as _check_settings
    from npeff.models.units import build_unit_map

    unit_map = build_unit_map(model, _plain(c.units))
    factors = list(c.eval_factors) if c.get("evaluate", True) else None
    _check_settings(unit_map, c.alpha, c.n_masks, str(c.solver), c.val_fraction, factors)
    if c.split not in ("train", "fit", "eval"):
        raise NpeffUserError(f"coar.split must be one of train, fit, eval; got {c.split!r}")


def resolve_model(cfg: DictConfig, output_dir: Path):
    """The model to attribute: ``inputs.checkpoint``, or ``model``/``task`` trained here (cached
    like the pipeline's). Settings are checked on an untrained copy before any training."""
    from npeff.models import build_model
    from npeff.tasks import build_task
    from npeff.tasks.checkpoint import load_checkpoint

    ckpt = (cfg.get("inputs") or {}).get("checkpoint")
    if ckpt not in (None, "", "???"):
        loaded = load_checkpoint(ckpt)
        check_inputs(loaded.model, cfg.coar)
        return loaded, None
    task = build_task(cfg.task)
    check_inputs(build_model(cfg.model, task.model_hints()), cfg.coar)
    from npeff.run.configs import stage_config
    from npeff.run.train_cache import cached_train

    train_cfg = stage_config(cfg, "train")
    ckpt, metrics = cached_train(train_cfg, output_dir / "train", Path(str(cfg.cache_dir)))
    return load_checkpoint(ckpt), metrics


def _find_unfinished(output_dir: Path, cfg: DictConfig, sha256: str) -> Path | None:
    """Newest unfinished attributions.h5 of an earlier run of this stage with our settings and
    checkpoint (file hash ``sha256``)."""
    from npeff.artifacts.coar import read_header

    want = json.dumps({k: _plain(cfg.coar.get(k)) for k in RESUME_KEYS}, sort_keys=True)
    cands = sorted(
        output_dir.parent.parent.glob(f"*/*/{ATTRIBUTIONS_NAME}"), key=lambda p: p.stat().st_mtime
    )
    for path in reversed(cands):
        if path.parent == output_dir:
            continue
        try:
            h = read_header(path)
            c = (h["config"] or {}).get("coar", {})
            if h["fitted"] or h["model_identity"].get("sha256") != sha256:
                continue
        except (ValueError, OSError, KeyError):
            continue
        if json.dumps({k: c.get(k) for k in RESUME_KEYS}, sort_keys=True) == want:
            return path
    return None


def run(cfg: DictConfig, output_dir: Path) -> dict:
    """COAR on ``cfg``'s model into ``output_dir``; returns (and writes) ``coar.json``."""
    from npeff.artifacts.digest import file_sha256
    from npeff.coar import compute_attributions
    from npeff.run.pefs import build_loader

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    loaded, train_metrics = resolve_model(cfg, output_dir)
    c = cfg.coar
    loader = build_loader(loaded.task, str(c.split), int(c.batch_size), c.get("n_examples"))
    devices, nodes, strategy, accel = trainer_processes(cfg)
    path = output_dir / ATTRIBUTIONS_NAME
    ckpt_sha = file_sha256(loaded.path)
    if not path.exists():
        old = _find_unfinished(output_dir, cfg, ckpt_sha)
        if old is not None:
            old.replace(path)
            log.info("npeff-coar: resuming the unfinished %s in %s", old, path)
    identity = {
        "checkpoint": str(loaded.path),
        "sha256": ckpt_sha,
        "model": OmegaConf.to_container(loaded.cfg.model, resolve=True),
        "task": OmegaConf.to_container(loaded.cfg.task, resolve=True),
    }
    att = compute_attributions(
        loaded.model,
        loader,
        path,
        units=_plain(c.units),
        alpha=float(c.alpha),
        n_masks=int(c.n_masks),
        seed=int(c.seed),
        solver=str(c.solver),
        ridge=float(c.ridge),
        val_fraction=float(c.val_fraction),
        lasso=_plain(c.get("lasso")),
        method=str(c.method),
        masks_per_forward=int(c.masks_per_forward),
        chunk_masks=int(c.chunk_masks),
        devices=devices,
        num_nodes=nodes,
        strategy=strategy,
        accelerator=accel,
        evaluate=bool(c.evaluate),
        eval_masks=int(c.eval_masks),
        eval_factors=list(c.eval_factors),
        baselines=bool(c.baselines),
        metadata={"config": OmegaConf.to_container(cfg, resolve=True), "model_identity": identity},
        progress=bool(cfg.get("progress", True)),
    )
    if int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) != 0:
        return {}
    ev = att.eval
    alphas = ev.get("alphas", [])
    table = ev.get("corr_by_alpha", {})
    best = None
    if table:
        from npeff.coar.evaluation import best_alpha_index

        best = alphas[best_alpha_index(table)]
    sec = ev.get("seconds", {})
    metrics = {
        "attributions": str(path),
        "checkpoint": str(loaded.path),
        "units": _plain(c.units),
        "alpha": float(c.alpha),
        "solver": str(c.solver),
        "n_masks": att.n_masks,
        "n_units": att.n_units,
        "n_examples": att.n_examples,
        "devices": devices * nodes,
        "corr_heldout_mean": ev.get("corr_heldout_mean"),
        "corr_heldout_median": ev.get("corr_heldout_median"),
        "corr_loo_mean": ev.get("corr_loo_mean"),
        "corr_gp_mean": ev.get("corr_gp_mean"),
        "corr_by_alpha": table,
        "best_alpha": best,
        "eval_masks": ev.get("eval_masks"),
        "model_accuracy": float((att.base_margins > 0).mean()),
        "seconds": time.perf_counter() - t0,
        "seconds_ablations": sec.get("ablations"),
        "seconds_regression": sec.get("regression"),
        "masks_per_second": (att.n_masks / sec["ablations"]) if sec.get("ablations") else None,
        "train_cached": None if train_metrics is None else bool(train_metrics.get("cached")),
    }
    save_coar_summary(output_dir, metrics)
    from npeff.report.coar import coar_report

    metrics["report"] = str(coar_report(output_dir))
    save_coar_summary(output_dir, metrics)
    write_metrics(output_dir, metrics)
    log_stage_metrics(cfg, output_dir, metrics, "coar")
    log.info(
        "COAR: %d masks × %d units × %d examples; held-out corr %.3f (LOO %.3f, GP %s) in %.1f s",
        att.n_masks,
        att.n_units,
        att.n_examples,
        metrics["corr_heldout_mean"] or float("nan"),
        metrics["corr_loo_mean"] or float("nan"),
        metrics["corr_gp_mean"],
        metrics["seconds"],
    )
    return metrics


main = stage_main("coar", run)


if __name__ == "__main__":
    main()
