"""``comparison.json``: the NPEFF-vs-baselines table of ``npeff-baseline``'s comparison step."""

from __future__ import annotations

import os
from pathlib import Path

from npeff.artifacts.json_file import load_json_file, save_json_file

COMPARISON_JSON = "comparison.json"


def save_comparison(output_dir: str | os.PathLike, methods: dict, info: dict) -> Path:
    """Write ``{"methods": {method: {score: value}}, "info": {...}}`` to output_dir/comparison.json."""
    return save_json_file(Path(output_dir) / COMPARISON_JSON, {"methods": methods, "info": info})


def load_comparison(path: str | os.PathLike) -> dict:
    """A comparison.json (``methods`` and ``info``)."""
    how = "run the pipeline with baselines (or npeff-baseline's comparison) to write one"
    return load_json_file(path, "comparison.json", ("methods", "info"), how)
