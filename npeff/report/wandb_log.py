"""Log a report's histograms and top-example tables to the active W&B run (a no-op without one).

``wandb`` is imported only when it is already loaded: a process that never imported it cannot
have an active run, so the report stays fast and offline by default.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from npeff.report.content import ReportContent

TABLE_COLUMNS = [
    "component",
    "rank",
    "example",
    "coefficient",
    "label",
    "prediction",
    "text",
    "concepts",
]


def active_run() -> Any | None:
    """The active ``wandb.run``, or None when wandb is not imported or no run is active."""
    wandb = sys.modules.get("wandb")
    if wandb is None:
        return None
    run = getattr(wandb, "run", None)
    return run if run is not None else None


def top_example_rows(content: ReportContent) -> list[list[Any]]:
    """One row per displayed top example, columns ``TABLE_COLUMNS``."""
    rows = []
    for card in content.cards:
        for ex in card.examples:
            text = " || ".join(t for t in (ex.text, ex.text_pair, ex.inputs) if t)
            rows.append(
                [
                    card.component,
                    ex.rank,
                    ex.index,
                    ex.coefficient,
                    ex.label or "",
                    ex.prediction or "",
                    text,
                    ", ".join(ex.concepts),
                ]
            )
    return rows


def _log2(x: np.ndarray | None) -> np.ndarray:
    if x is None:
        return np.zeros(0)
    x = np.asarray(x, dtype=np.float64)
    return np.log2(x[np.isfinite(x) & (x > 0)])


def log_report(content: ReportContent, run: Any = None, prefix: str = "report") -> bool:
    """Log KL/norm ratio histograms, summary scalars and the top-example table.

    Args:
      run: a wandb run (anything with ``.log(dict)``); defaults to the active run.
    Returns:
      True when something was logged, False when there was no run (nothing done).
    """
    run = run if run is not None else active_run()
    if run is None:
        return False
    import wandb

    payload: dict[str, Any] = {}
    for name, values in (
        ("log2_kl_ratio", _log2(content.kl_ratio)),
        ("log2_pef_norm_ratio", _log2(content.norm_ratio)),
    ):
        if values.size:
            payload[f"{prefix}/{name}"] = wandb.Histogram(values)
    for key, val in content.summary.items():
        if isinstance(val, (int, float)) and not isinstance(val, bool) and val is not None:
            payload[f"{prefix}/{key}"] = val
    payload[f"{prefix}/top_examples"] = wandb.Table(
        columns=TABLE_COLUMNS, data=top_example_rows(content)
    )
    run.log(payload)
    return True
