"""A stage's JSON hand-off file: written atomically, read back with a clear error on a wrong file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from npeff.artifacts.atomic import write_json_atomic
from npeff.errors import NpeffFileNotFoundError, NpeffUserError


def save_json_file(path: str | os.PathLike, obj: dict[str, Any]) -> Path:
    """Write ``obj`` to ``path`` atomically (a reader never sees a half-written file)."""
    return write_json_atomic(path, obj)


def load_json_file(path: str | os.PathLike, what: str, keys: tuple[str, ...], how: str) -> dict:
    """The dict in ``path``, checked to be a ``what`` file (a JSON object with every key of
    ``keys``); ``how`` (e.g. "run npeff-coar") says where a right one comes from."""
    path = Path(path)
    if not path.is_file():
        raise NpeffFileNotFoundError(f"{path} does not exist: pass the {what} file ({how})")
    try:
        obj = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise NpeffUserError(f"{path} is not a {what} file (not JSON: {e}); {how}") from None
    missing = [k for k in keys if not isinstance(obj, dict) or k not in obj]
    if missing:
        raise NpeffUserError(f"{path} is not a {what} file (no {missing[0]!r}); {how}")
    return obj
