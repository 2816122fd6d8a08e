"""Running a test's helper script in a fresh interpreter that can import ``tests.helpers``."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository root (holds npeff/ and tests/)


def script_env(**extra: str) -> dict[str, str]:
    """``os.environ`` with the repository root first on ``PYTHONPATH``, plus ``extra``."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}
