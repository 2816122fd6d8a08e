"""The Coar-Edit step of the shortcut flow, written against :mod:`npeff.coar` (optional).

It runs only where ``npeff.coar`` imports (:func:`available`).
"""

from __future__ import annotations

import importlib.util


def available() -> bool:
    """Whether :mod:`npeff.coar` is installed."""
    try:
        return importlib.util.find_spec("npeff.coar") is not None
    except (ImportError, ValueError):
        return False


def run_coar_edit(model, task, perturber, scorer, cfg, output_dir, *, select_on, max_other_drop):
    raise NotImplementedError  # written against npeff.coar's API once it exists
