"""A baseline's components as an examples × components score matrix (``baseline.h5``).

Layout (n_fit / n_eval examples, r components):
  ``baseline/scores_fit`` float32 [n_fit, r] and ``baseline/scores_eval`` float32 [n_eval, r]:
    non-negative scores, larger = closer to the component (what ``top_indices`` ranks; the "W"
    every analysis reads). ``baseline/membership_eval`` float32 [n_eval, r] (clusterings only):
    0/1 cluster membership, the paper's "coefficients" of a cluster for cross-run matching.
  ``baseline/example_indices_eval`` int64 [n_eval]: positions of the eval examples in their split.
  attributes on ``npeff``: ``artifact`` = "baseline", ``kind`` (kmeans | gradient_kmeans | sae),
  ``metadata`` (JSON). Written atomically (one file, complete or absent).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from npeff.artifacts import keys
from npeff.artifacts.atomic import atomic_path
from npeff.errors import NpeffFileNotFoundError, NpeffUserError

ARTIFACT_BASELINE = "baseline"


@dataclass
class BaselineResult:
    """A fitted baseline applied to the fit and eval splits (fields: see the module docstring)."""

    kind: str
    scores_fit: np.ndarray
    scores_eval: np.ndarray
    example_indices_eval: np.ndarray
    membership_eval: np.ndarray | None = None
    metadata: dict = field(default_factory=dict)

    @property
    def n_components(self) -> int:
        return int(self.scores_eval.shape[1])

    @property
    def matching_coefficients(self) -> np.ndarray:
        """[n_eval, r]: 0/1 membership for clusterings (paper §3.4), the scores otherwise."""
        return self.membership_eval if self.membership_eval is not None else self.scores_eval


def save_baseline(res: BaselineResult, path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("baseline/scores_fit", data=np.asarray(res.scores_fit, np.float32))
            f.create_dataset("baseline/scores_eval", data=np.asarray(res.scores_eval, np.float32))
            f.create_dataset(
                "baseline/example_indices_eval", data=np.asarray(res.example_indices_eval, np.int64)
            )
            if res.membership_eval is not None:
                f.create_dataset(
                    "baseline/membership_eval", data=np.asarray(res.membership_eval, np.float32)
                )
            g = f.create_group(keys.NPEFF_GROUP)
            g.attrs[keys.ATTR_SCHEMA_VERSION] = keys.SCHEMA_VERSION
            g.attrs[keys.ATTR_ARTIFACT] = ARTIFACT_BASELINE
            g.attrs[keys.ATTR_KIND] = res.kind
            g.attrs[keys.ATTR_COMPLETE] = True
            g.attrs[keys.ATTR_METADATA] = json.dumps(res.metadata, sort_keys=True, default=str)
    return path


def load_baseline(path: str | os.PathLike) -> BaselineResult:
    path = Path(path)
    if not path.is_file():
        raise NpeffFileNotFoundError(f"baseline file not found: {path} (written by npeff-baseline)")
    with h5py.File(path, "r") as f:
        attrs = dict(f[keys.NPEFF_GROUP].attrs) if keys.NPEFF_GROUP in f else {}
        if attrs.get(keys.ATTR_ARTIFACT) != ARTIFACT_BASELINE:
            raise NpeffUserError(f"{path} is not a baseline file (written by npeff-baseline)")
        mem = f["baseline/membership_eval"][...] if "baseline/membership_eval" in f else None
        return BaselineResult(
            kind=str(attrs[keys.ATTR_KIND]),
            scores_fit=f["baseline/scores_fit"][...],
            scores_eval=f["baseline/scores_eval"][...],
            example_indices_eval=f["baseline/example_indices_eval"][...],
            membership_eval=mem,
            metadata=json.loads(attrs.get(keys.ATTR_METADATA, "{}")),
        )
