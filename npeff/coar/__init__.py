"""npeff.coar: COAR component attribution (Shah, Ilyas, Madry 2024) and Coar-Edit.

- ``compute_attributions(model, loader, path, *, units, alpha, n_masks, ...)``: batched unit
  ablations (``ablation``), the streamed ablation dataset (``dataset``, ``attributions.h5``), the
  per-example regression (``regression``) and the held-out evaluation (``evaluation``) with the
  LOO and gradient×parameter baselines (``baselines``).
- ``load_attributions(path) -> Attributions`` (``weights [n, |C|]``, ``bias [n]``, ``units``,
  ``settings``).
- ``edit(model, attributions, loader, targets=..., references=...)``: Coar-Edit (``editing``).

Units (neurons, conv channels, attention heads) are defined in :mod:`npeff.models.units`.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Attributions": "npeff.coar.attributions",
    "compute_attributions": "npeff.coar.attributions",
    "fit_attributions": "npeff.coar.attributions",
    "load_attributions": "npeff.coar.attributions",
    "AblationEngine": "npeff.coar.ablation",
    "edit": "npeff.coar.editing",
    "EditResult": "npeff.coar.editing",
    "welch_t": "npeff.coar.editing",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'npeff.coar' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
