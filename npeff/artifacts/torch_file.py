"""A ``torch.save`` dict file with a ``format`` tag and a ``version`` (a model checkpoint, a
group zoo): read with ``weights_only=True`` and checked, with one-line errors naming the file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from npeff.errors import NpeffUserError


def load_torch_file(
    path: str | os.PathLike, fmt: str, version: int, what: str, how: str
) -> dict[str, Any]:
    """The dict in ``path``, checked to carry ``format == fmt`` and ``version <= version``.

    ``what`` names the file kind (e.g. ``"npeff model checkpoint"``), ``how`` says where a right
    one comes from (e.g. ``"written by npeff-train"``)."""
    path = Path(path)
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a foreign file
        first = (str(e).splitlines() or [""])[0]
        raise NpeffUserError(
            f"{path} is not a readable {what} ({type(e).__name__}: {first})"
        ) from None
    if not isinstance(raw, dict) or raw.get("format") != fmt:
        raise NpeffUserError(f"{path} is not an {what} ({how}); got a foreign file")
    if int(raw.get("version", 0)) > version:
        raise NpeffUserError(
            f"{path} has {what} version {raw.get('version')}; this npeff reads <= {version}"
        )
    return raw
