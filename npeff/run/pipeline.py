"""Stage ``npeff``: the whole pipeline in one run directory.

train (cached by config) → PEFs on the ``fit`` split → NPEFF decomposition → PEFs on the ``eval``
split → coefficients on ``eval`` (G frozen) → perturbations → report, with the optional steps
(``steps.<name>.enabled``: true | false | auto) in between: ``recover`` (projected PEFs),
``expand`` (paper §3.5), ``baselines``, ``groups``, ``coar_compare``, ``shortcut`` and the TRACR
steps. The steps are :mod:`npeff.run.steps`; this module runs them and writes the job's
``metrics.json`` and printed summary.

Each stage is the stage module's own ``run(cfg, output_dir)`` on its own primary config
(``conf/<stage>.yaml``), composed and overlaid with the pipeline's config groups (``model``,
``task``, ``trainer``, ``logger``, ``fisher``, ``decomp``, ``perturb``) and with the pipeline's
per-stage settings ``stages.<stage>`` (:mod:`npeff.run.configs`); each writes into
``<run dir>/<stage>/``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from npeff.run import common
from npeff.run.common import write_metrics
from npeff.run.steps import Context, Step, check_config, fmt, registry, run_steps

log = logging.getLogger(__name__)


def run(cfg: DictConfig, output_dir: Path) -> dict:
    """Run the whole pipeline into ``output_dir``; returns the headline metrics (also written to
    ``output_dir/metrics.json``)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    steps = check_config(cfg, registry())  # every setting checked before any work
    ctx = Context(cfg, output_dir)
    # one W&B run per job: stages attach to it, their finish_tracking waits for the job's end
    with common.pipeline_tracking(cfg, output_dir):
        run_steps(ctx, steps)

    if not common.is_global_zero():
        return {}  # rank 0 writes the job's metrics.json and summary
    metrics = headline_metrics(ctx, steps)
    metrics["seconds"]["total"] = round(time.perf_counter() - t_start, 3)
    metrics["report"] = str(ctx.artifacts["report"])
    write_metrics(output_dir, metrics)
    print_summary(metrics, output_dir, steps)
    return metrics


def headline_metrics(ctx: Context, steps: list[Step]) -> dict:
    """The job's ``metrics.json``: the core steps' figures, then each optional step's."""
    m = ctx.metrics
    train = m.get("train", {})
    dec, rep, pert = m.get("decompose", {}), m.get("report", {}), m.get("perturb", {})
    out = {
        "model_accuracy": train.get("eval_accuracy"),
        "n_components": _first((rep, "n_components"), (dec, "n_components")),
        "final_loss": dec.get("final_loss"),
        "kl_ratio_median": _first((pert, "kl_ratio_median"), (rep, "median_kl_ratio")),
        "pef_norm_ratio_median": _first(
            (pert, "pef_norm_ratio_median"), (rep, "median_pef_norm_ratio")
        ),
        "frac_kl_ratio_above_norm_ratio": _first(
            (pert, "frac_kl_ratio_above_norm_ratio"), (rep, "frac_kl_ratio_above_norm_ratio")
        ),
        "concept_top_k": rep.get("concept_top_k"),
        "concept_components": rep.get("concept_n_all_share"),
        "concept_components_shuffled": rep.get("concept_shuffled_n_all_share_mean"),
        "concept_components_within_label_shuffled": rep.get(
            "concept_within_label_shuffled_n_all_share_mean"
        ),
        "concept_small_top_k": rep.get("concept_small_top_k"),
        "concept_components_small_k": rep.get("concept_small_n_all_share"),
        "concept_components_small_k_shuffled": rep.get("concept_small_shuffled_n_all_share_mean"),
        "train_cached": bool(train.get("cached", False)),
        "seconds": dict(ctx.seconds),
    }
    for key in ("n_flawed_selected", "n_components_raising_accuracy"):
        if key in pert:
            out[key] = pert[key]
    for s in steps:
        if s.headline is not None:
            out.update(s.headline(ctx))
    return out


def _first(*sources: tuple[dict, str]) -> Any:
    """The first value that is not None among ``(metrics, key)`` pairs (0 counts as a value)."""
    for d, key in sources:
        if d.get(key) is not None:
            return d[key]
    return None


def print_summary(metrics: dict, output_dir: Path, steps: list[Step]) -> None:
    lines = [
        "",
        "npeff: done",
        f"  report:            {metrics['report']}",
        f"  metrics:           {output_dir / 'metrics.json'}",
        f"  model accuracy:    {fmt(metrics['model_accuracy'])}",
        f"  components:        {fmt(metrics['n_components'])}   final loss {fmt(metrics['final_loss'])}",
        f"  KL ratio (median): {fmt(metrics['kl_ratio_median'])}   "
        f"PEF-norm ratio (median): {fmt(metrics['pef_norm_ratio_median'])}",
        f"  KL ratio > norm ratio for {fmt(metrics['frac_kl_ratio_above_norm_ratio'])} of components",
    ]
    if metrics.get("concept_components") is not None:
        lines.append(
            f"  components whose top examples share a concept: {fmt(metrics['concept_components'])}"
            f" (top {fmt(metrics.get('concept_top_k'))}; shuffled control "
            f"{fmt(metrics['concept_components_shuffled'])})"
        )
    if metrics.get("concept_components_small_k") is not None:
        lines.append(
            f"  ... with the top {fmt(metrics['concept_small_top_k'])}:"
            f" {fmt(metrics['concept_components_small_k'])}"
            f" (shuffled control {fmt(metrics['concept_components_small_k_shuffled'])})"
        )
    for s in steps:
        if s.summary is not None:
            lines += s.summary(metrics)
    lines.append(f"  seconds:           {fmt(metrics['seconds'].get('total'))}")
    print("\n".join(lines), flush=True)


main = common.stage_main("pipeline", run)


if __name__ == "__main__":
    main()
