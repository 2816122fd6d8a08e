"""``tracr_check.json``: the tracr concept check of a fitted decomposition (npeff/tracr/check.py)."""

from __future__ import annotations

import os
from pathlib import Path

from npeff.artifacts.json_file import load_json_file, save_json_file

TRACR_CHECK_JSON = "tracr_check.json"


def save_tracr_check(output_dir: str | os.PathLike, result: dict) -> Path:
    """Write the check's result (with its ``report_tables``) to output_dir/tracr_check.json."""
    return save_json_file(Path(output_dir) / TRACR_CHECK_JSON, result)


def load_tracr_check(path: str | os.PathLike) -> dict:
    """A tracr_check.json (``concept_table`` and ``report_tables``)."""
    how = "run the pipeline with model=tracr to write one"
    return load_json_file(path, "tracr_check.json", ("concept_table", "report_tables"), how)
