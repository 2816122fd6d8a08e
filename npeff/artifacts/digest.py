"""A file's identity: the SHA-256 of its bytes (of the first ``limit`` bytes for huge files)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: str | Path, limit: int = 1 << 30) -> str:
    """Hex SHA-256 of the file's first ``limit`` bytes (read in whole 1 MiB blocks, so up to one
    block past ``limit``); the identity stages store for checkpoints and compare on load."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
            limit -= len(block)
            if limit <= 0:
                break
    return h.hexdigest()
