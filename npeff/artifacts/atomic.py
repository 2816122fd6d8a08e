"""Atomic file writes: write to a temporary sibling, then ``os.replace`` it into place."""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically.

    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically and return the path.

    Through :func:`json_ready`: NaN and ±inf become ``null`` (strict JSON, no bare ``NaN``)."""
    text = json.dumps(
        json_ready(obj), indent=2, sort_keys=True, default=json_default, allow_nan=False
    )
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n")
    return Path(path)


def json_ready(x: Any) -> Any:
    """``x`` with numpy arrays and scalars as Python lists and numbers, tuples as lists, and
    every non-finite float (NaN, ±inf) as ``None``, recursively through dicts (keys kept as
    they are: ``json.dumps`` turns them into strings), lists and tuples. Anything else is kept."""
    if isinstance(x, dict):
        return {k: json_ready(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [json_ready(v) for v in x]
    if type(x).__module__ == "numpy":
        import numpy as np

        if isinstance(x, np.ndarray):
            return json_ready(x.tolist())
        if isinstance(x, np.generic):
            x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def json_default(obj: Any) -> Any:
    """``default=`` for ``json.dumps``: numpy scalars and arrays, paths; else a clear TypeError."""
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"a value of type {type(obj).__name__} is not JSON serializable")
