"""``build_report``: in-memory artifacts → ``report.html`` + ``figures/*.png`` + ``report_summary.json``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from npeff.artifacts.atomic import atomic_path, write_json_atomic
from npeff.report import wandb_log
from npeff.report.content import ReportContent, prepare_report
from npeff.report.html import render

REPORT_FILE = "report.html"
SUMMARY_FILE = "report_summary.json"
FIGURES_DIR = "figures"


def write_report(content: ReportContent, output_dir: str | os.PathLike) -> Path:
    """Write the HTML file, the figures as PNG and the summary (with concept details) as JSON."""
    out = Path(output_dir)
    fig_dir = out / FIGURES_DIR
    fig_dir.mkdir(parents=True, exist_ok=True)
    for name, png in content.figures.items():
        with atomic_path(fig_dir / f"{name}.png") as tmp:
            tmp.write_bytes(png)
            tmp.chmod(0o644)
    summary = dict(content.summary)
    summary["figures"] = sorted(f"{FIGURES_DIR}/{name}.png" for name in content.figures)
    if content.concept_analysis is not None:
        summary["concept_components"] = content.concept_analysis.to_dict()["components"]
    if content.comparison is not None:
        summary["comparison"] = content.comparison
    if content.kl_ratio is not None:
        summary["kl_ratio"] = np.asarray(content.kl_ratio).tolist()
    if content.norm_ratio is not None:
        summary["pef_norm_ratio"] = np.asarray(content.norm_ratio).tolist()
    write_json_atomic(out / SUMMARY_FILE, summary)
    path = out / REPORT_FILE
    with atomic_path(path) as tmp:
        tmp.write_text(render(content), encoding="utf-8")
        tmp.chmod(0o644)
    return path


def build_report(
    decomposition: Any = None,
    pefs: Any = None,
    examples: list[dict] | None = None,
    concepts: np.ndarray | None = None,
    perturbation: Any = None,
    label_names: list[str] | None = None,
    output_dir: str | os.PathLike = ".",
    *,
    coeffs: Any = None,
    log_to_wandb: bool = True,
    **options: Any,
) -> Path:
    """Build the self-contained HTML report and its PNG figures in ``output_dir``.

    Args:
      decomposition: ``Decomposition`` (component vectors, losses, convergence; its W when
        ``coeffs`` is None). pefs: ``Pefs`` of the same examples (labels, logits, norms) or None.
      examples: ``task.examples(split)`` records in PEF order, or None. concepts: bool [n, c] or None.
      perturbation: ``PerturbationResult`` (or a mapping with its fields) or None.
      label_names: class names for labels and predictions. coeffs: fitted coefficients (``Decomposition``
        or W [n, r]) used for the top examples instead of the decomposition's W.
      log_to_wandb: also log histograms and the top-example table to the active W&B run, if any.
      options: forwarded to ``prepare_report`` (top_k, n_display, max_cards, n_shuffles, seed,
        n_top_ratio, n_baseline, concept_names, title, sources).
    Returns:
      The path of ``report.html``.
    """
    content = prepare_report(
        decomposition, pefs, examples, concepts, perturbation, label_names, coeffs=coeffs, **options
    )
    path = write_report(content, output_dir)
    if log_to_wandb:
        wandb_log.log_report(content)
    return path
