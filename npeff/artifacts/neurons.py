"""``neurons.npz``: the first seed's per-neuron irrep analysis of ``npeff-groups``.

Arrays (H hidden neurons, I irreps): ``shares_left`` / ``shares_right`` / ``shares_unembed`` /
``shares_combined`` float ``[H, I]``, ``irrep`` int ``[H]``, ``purity`` float ``[H]``, ``live``
bool ``[H]``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from npeff.artifacts.atomic import atomic_path
from npeff.errors import NpeffUserError

NEURONS_NAME = "neurons.npz"
KEYS = (
    "shares_left",
    "shares_right",
    "shares_unembed",
    "shares_combined",
    "irrep",
    "purity",
    "live",
)


def save_neurons(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> Path:
    """Write the arrays of :data:`KEYS` (from ``arrays``) to ``path`` atomically."""
    missing = [k for k in KEYS if k not in arrays]
    if missing:
        raise NpeffUserError(f"neurons.npz needs the arrays {list(KEYS)}; {missing} are missing")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **{k: arrays[k] for k in KEYS})
    return Path(path)


def load_neurons(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays of a neurons.npz, checked to hold every key of :data:`KEYS`."""
    path = Path(path)
    how = "pass the neurons.npz an npeff-groups run wrote"
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise NpeffUserError(f"{path} is not a neurons.npz file ({e}); {how}") from None
    missing = [k for k in KEYS if k not in out]
    if missing:
        raise NpeffUserError(f"{path} is not a neurons.npz file (no {missing[0]!r}); {how}")
    return out
