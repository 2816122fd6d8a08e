"""Stage ``npeff-report``: a self-contained HTML report of a decomposition and its checks.

A thin loader around :func:`npeff.report.build_report`: it reads the decomposition (and optionally
fitted coefficients, the PEFs of the same examples and a perturbation result) and, when a
checkpoint is given, the task's display examples, label names and concepts
(``load_checkpoint(...).task.examples(split)`` / ``.concepts(split)``). Nothing is recomputed.
Writes ``report.html``, ``figures/*.png``, ``report_summary.json`` and ``metrics.json``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from npeff.report import build_report, wandb_log
from npeff.report.build import write_report
from npeff.report.content import prepare_report
from npeff.run.common import stage_main, write_metrics

log = logging.getLogger(__name__)


def _task_inputs(cfg: DictConfig, pefs: Any) -> dict[str, Any]:
    """Display examples, label and concept names, concepts of the report's split (or nothing)."""
    if not cfg.inputs.get("checkpoint"):
        log.info("no inputs.checkpoint: the report shows coefficients without example contents")
        return {}
    from npeff.artifacts.pefs import pefs_split
    from npeff.tasks.checkpoint import load_checkpoint

    split = pefs_split(pefs, cfg.get("split"))
    task = load_checkpoint(cfg.inputs.checkpoint).task
    out: dict[str, Any] = {"examples": task.examples(split), "label_names": list(task.label_names)}
    concepts = task.concepts(split)
    if concepts is not None and concepts.shape[1] > 0:
        out["concepts"] = concepts
        out["concept_names"] = list(task.concept_names)
    out["split"] = split
    return out


def _wandb_run(cfg: DictConfig, output_dir: Path) -> tuple[Any, bool]:
    """(run, started_here): the active W&B run, or one started from ``cfg.logger`` when configured."""
    if not cfg.report.get("wandb", True):
        return None, False
    active = wandb_log.active_run()
    if active is not None:
        return active, False
    if cfg.get("logger") is None:
        return None, False
    from npeff.run import common

    build_logger = getattr(common, "build_logger", None)
    if build_logger is None:
        return None, False
    logger = build_logger(cfg, output_dir)
    if logger is None or type(logger).__name__ != "WandbLogger":
        return None, False
    return logger.experiment, True


def run(cfg: DictConfig, output_dir: Path) -> dict:
    from npeff.artifacts.decomposition import load_decomposition

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    inputs = cfg.inputs
    decomposition = load_decomposition(inputs.decomposition)
    coeffs = load_decomposition(inputs.coeffs) if inputs.get("coeffs") else None
    pefs = None
    if inputs.get("pefs"):
        from npeff.artifacts.pefs import load_pefs

        pefs = load_pefs(inputs.pefs)
    perturbation = None
    if inputs.get("perturbation"):
        from npeff.artifacts.perturbation import load_perturbation

        perturbation = load_perturbation(inputs.perturbation)
    task = _task_inputs(cfg, pefs)
    split = task.pop("split", None)
    comparison = None
    if inputs.get("comparison"):
        import json

        comparison = json.loads(Path(str(inputs.comparison)).read_text())["methods"]

    rc = cfg.report
    tables = None
    if inputs.get("tables"):  # a stage's JSON with "report_tables" (e.g. tracr_check.json)
        import json

        tables = json.loads(Path(str(inputs.tables)).read_text()).get("report_tables")
    content = prepare_report(
        decomposition,
        pefs,
        coeffs=coeffs,
        perturbation=perturbation,
        title=str(rc.title),
        top_k=int(rc.top_k),
        concept_top_k=int(rc.get("concept_top_k") or rc.top_k),
        tables=tables,
        n_display=int(rc.n_display),
        max_cards=int(rc.max_cards),
        n_shuffles=int(rc.n_shuffles),
        seed=int(rc.seed),
        n_top_ratio=int(rc.n_top_ratio),
        n_baseline=int(rc.n_baseline),
        sources={
            k: inputs.get(k)
            for k in ("checkpoint", "decomposition", "coeffs", "pefs", "perturbation", "comparison")
        }
        | ({"split": split} if split else {}),
        comparison=comparison,
        **task,
    )
    for section in inputs.get("sections") or []:  # HTML fragments of other stages (npeff-groups)
        content.sections.append(Path(str(section)).read_text(encoding="utf-8"))
    path = write_report(content, output_dir)
    run_, started = _wandb_run(cfg, output_dir)
    logged = wandb_log.log_report(content, run=run_) if run_ is not None else False
    if started:
        from npeff.run.common import finish_tracking

        finish_tracking()
    log.info("report written to %s", path)

    s = content.summary
    metrics = {
        k: s[k]
        for k in (
            "n_examples",
            "n_components",
            "accuracy",
            "median_kl_ratio",
            "median_pef_norm_ratio",
            "frac_kl_ratio_above_norm_ratio",
        )
        if s.get(k) is not None
    }
    if "concepts" in s:
        c = s["concepts"]
        metrics.update(
            concept_top_k=c["top_k"],
            concept_n_all_share=c["n_all_share"],
            concept_shuffled_n_all_share_mean=c["shuffled_n_all_share_mean"],
            concept_mean_purity=c["mean_purity"],
            concept_shuffled_mean_purity=c["shuffled_mean_purity"],
            concept_p_value=c["p_value"],
        )
        if "small_top_k" in c:
            metrics.update(
                concept_small_top_k=c["small_top_k"],
                concept_small_n_all_share=c["small_n_all_share"],
                concept_small_shuffled_n_all_share_mean=c["small_shuffled_n_all_share_mean"],
            )
        if "within_label_p_value" in c:
            metrics.update(
                concept_within_label_shuffled_n_all_share_mean=c[
                    "within_label_shuffled_n_all_share_mean"
                ],
                concept_within_label_p_value=c["within_label_p_value"],
            )
    metrics.update(report=str(path), figures=sorted(content.figures), wandb_logged=bool(logged))
    write_metrics(output_dir, metrics)
    return metrics


main = stage_main("report", run, single_process=True)


# Keep ``build_report`` importable from the stage module for callers chaining stages in Python.
__all__ = ["build_report", "main", "run"]
