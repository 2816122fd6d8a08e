"""``coar.json``: the figures of an ``npeff-coar`` run (next to its ``attributions.h5``)."""

from __future__ import annotations

import os
from pathlib import Path

from npeff.artifacts.json_file import load_json_file, save_json_file

COAR_JSON = "coar.json"
_HOW = "run npeff-coar, which writes coar.json next to attributions.h5"


def coar_summary_path(run_dir: str | os.PathLike) -> Path:
    """Where an ``npeff-coar`` run dir keeps its ``coar.json``."""
    return Path(run_dir) / COAR_JSON


def save_coar_summary(run_dir: str | os.PathLike, summary: dict) -> Path:
    """Write ``summary`` (``corr_heldout_mean``, ``attributions``, ...) as the run's coar.json."""
    return save_json_file(coar_summary_path(run_dir), summary)


def load_coar_summary(run_dir: str | os.PathLike) -> dict:
    """The coar.json of an ``npeff-coar`` run dir (must name its ``attributions``)."""
    return load_json_file(coar_summary_path(run_dir), "coar.json", ("attributions",), _HOW)
