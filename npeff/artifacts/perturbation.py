"""Perturbation results: in-memory type, HDF5 load/save (names in ``keys``)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import h5py
import numpy as np

from npeff.artifacts import keys
from npeff.artifacts.atomic import atomic_path, json_default
from npeff.errors import NpeffFileNotFoundError, NpeffUserError


@dataclass
class PerturbationResult:
    """Per-component results of guided perturbations (algorithm.md §8).

    c = number of evaluated components, n_top = examples in each top set, n_base = baseline size.
    Sign axis (size 2): 0 = θ + δ, 1 = θ − δ.

      component_indices: int64 [c] component index j in the decomposition.
      magnitude: float L2 norm of δ (LRM); NaN for D-NPEFF (δ is set by KL targeting, see metadata).
      kl_top, kl_baseline: float64 [c, 2] mean KL(p_θ ‖ p_θ+δ) over the top / baseline examples.
      kl_top_reverse, kl_baseline_reverse: float64 [c, 2] the same for KL(p_θ+δ ‖ p_θ).
      kl_ratio: float64 [c] kl_top / kl_baseline for the reported sign (best_sign).
      best_sign: int8 [c] +1 or −1: the sign with the larger KL ratio (LRM), or the KL-targeted
        sign +1 (D-NPEFF; metadata["kl_ratio_untargeted"] holds the other sign's ratio).
      pef_norm_ratio: float64 [c] mean PEF norm over top / mean over baseline.
      acc_top_before, acc_baseline_before: float64 [c]; acc_*_after: float64 [c, 2].
      acc_all_before: float; acc_all_after: float64 [c, 2] (NaN when not evaluated).
      top_indices: int64 [c, n_top] example rows (rows of W and of the PEF file; map them to
        split positions with ``Pefs.source_indices``), by descending coefficient.
      baseline_indices: int64 [n_base] rows of the seeded random baseline, ascending.
      metadata: JSON-serializable dict (kind, settings, per-component extras, sources).
    """

    component_indices: np.ndarray
    magnitude: float
    kl_top: np.ndarray
    kl_baseline: np.ndarray
    kl_top_reverse: np.ndarray
    kl_baseline_reverse: np.ndarray
    kl_ratio: np.ndarray
    best_sign: np.ndarray
    pef_norm_ratio: np.ndarray
    acc_top_before: np.ndarray
    acc_top_after: np.ndarray
    acc_baseline_before: np.ndarray
    acc_baseline_after: np.ndarray
    acc_all_before: float
    acc_all_after: np.ndarray
    top_indices: np.ndarray
    baseline_indices: np.ndarray
    metadata: dict = field(default_factory=dict)

    @property
    def n_components(self) -> int:
        return int(len(self.component_indices))

    def validate(self) -> None:
        """Check shapes against each other; raise ValueError naming the first mismatch."""
        c = self.n_components
        expect = {
            "kl_top": (c, 2),
            "kl_baseline": (c, 2),
            "kl_top_reverse": (c, 2),
            "kl_baseline_reverse": (c, 2),
            "kl_ratio": (c,),
            "best_sign": (c,),
            "pef_norm_ratio": (c,),
            "acc_top_before": (c,),
            "acc_top_after": (c, 2),
            "acc_baseline_before": (c,),
            "acc_baseline_after": (c, 2),
            "acc_all_after": (c, 2),
        }
        for name, shape in expect.items():
            got = tuple(np.shape(getattr(self, name)))
            if got != shape:
                raise NpeffUserError(f"PerturbationResult.{name} has shape {got}, expected {shape}")
        if np.ndim(self.top_indices) != 2 or np.shape(self.top_indices)[0] != c:
            raise NpeffUserError(
                f"PerturbationResult.top_indices has shape {np.shape(self.top_indices)}, "
                f"expected ({c}, n_top)"
            )
        if np.ndim(self.baseline_indices) != 1:
            raise NpeffUserError("PerturbationResult.baseline_indices must be 1-D")


_ARRAYS = {
    "component_indices": (keys.PERT_COMPONENT_INDICES, np.int64),
    "kl_top": (keys.PERT_KL_TOP, np.float64),
    "kl_baseline": (keys.PERT_KL_BASELINE, np.float64),
    "kl_top_reverse": (keys.PERT_KL_TOP_REVERSE, np.float64),
    "kl_baseline_reverse": (keys.PERT_KL_BASELINE_REVERSE, np.float64),
    "kl_ratio": (keys.PERT_KL_RATIO, np.float64),
    "best_sign": (keys.PERT_BEST_SIGN, np.int8),
    "pef_norm_ratio": (keys.PERT_PEF_NORM_RATIO, np.float64),
    "acc_top_before": (keys.PERT_ACC_TOP_BEFORE, np.float64),
    "acc_top_after": (keys.PERT_ACC_TOP_AFTER, np.float64),
    "acc_baseline_before": (keys.PERT_ACC_BASELINE_BEFORE, np.float64),
    "acc_baseline_after": (keys.PERT_ACC_BASELINE_AFTER, np.float64),
    "acc_all_after": (keys.PERT_ACC_ALL_AFTER, np.float64),
    "top_indices": (keys.PERT_TOP_INDICES, np.int64),
    "baseline_indices": (keys.PERT_BASELINE_INDICES, np.int64),
}
assert set(_ARRAYS) | {"magnitude", "acc_all_before", "metadata"} == {
    f.name for f in fields(PerturbationResult)
}


def save_perturbation(res: PerturbationResult, path: str | os.PathLike) -> Path:
    """Write ``res`` to ``path`` (HDF5) atomically and return the path."""
    res.validate()
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            meta = f.create_group(keys.NPEFF_GROUP)
            meta.attrs[keys.ATTR_SCHEMA_VERSION] = keys.SCHEMA_VERSION
            meta.attrs[keys.ATTR_ARTIFACT] = "perturbation"
            meta.attrs[keys.ATTR_KIND] = str(res.metadata.get("kind", ""))
            grp = f.create_group(keys.PERTURBATION_GROUP)
            grp.attrs[keys.ATTR_PERT_MAGNITUDE] = float(res.magnitude)
            grp.attrs[keys.ATTR_PERT_ACC_ALL_BEFORE] = float(res.acc_all_before)
            grp.attrs[keys.ATTR_PERT_METADATA] = json.dumps(res.metadata, default=json_default)
            for name, (key, dtype) in _ARRAYS.items():
                f.create_dataset(key, data=np.asarray(getattr(res, name), dtype=dtype))
            meta.attrs[keys.ATTR_COMPLETE] = True
    return Path(path)


def load_perturbation(path: str | os.PathLike) -> PerturbationResult:
    """Read a file written by :func:`save_perturbation`; clear errors on a wrong or partial file."""
    path = Path(path)
    if not path.exists():
        raise NpeffFileNotFoundError(f"perturbation file {path} does not exist")
    with h5py.File(path, "r") as f:
        meta = f.get(keys.NPEFF_GROUP)
        artifact = meta.attrs.get(keys.ATTR_ARTIFACT) if meta is not None else None
        if artifact != "perturbation":
            raise NpeffUserError(
                f"{path} is not a perturbation file (npeff artifact={artifact!r}); "
                "pass the perturbation.h5 written by npeff-perturb"
            )
        if not bool(meta.attrs.get(keys.ATTR_COMPLETE, False)):
            raise NpeffUserError(
                f"{path} is incomplete (the writer did not finish); re-run npeff-perturb"
            )
        grp = f[keys.PERTURBATION_GROUP]
        arrays = {}
        for name, (key, dtype) in _ARRAYS.items():
            if key not in f:
                raise NpeffUserError(f"{path} lacks dataset {key!r}")
            arrays[name] = np.asarray(f[key][()], dtype=dtype)
        res = PerturbationResult(
            magnitude=float(grp.attrs[keys.ATTR_PERT_MAGNITUDE]),
            acc_all_before=float(grp.attrs[keys.ATTR_PERT_ACC_ALL_BEFORE]),
            metadata=json.loads(grp.attrs[keys.ATTR_PERT_METADATA]),
            **arrays,
        )
    res.validate()
    return res
