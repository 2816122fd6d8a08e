"""Per-example activations of one model module (``activations.h5``), streamed and resumable.

Layout (n examples, d features, C_model logits):
  ``activations/features`` float32 [n, d], ``activations/labels`` int64 [n],
  ``activations/logits`` float32 [n, C_model], ``activations/example_indices`` int64 [n];
  attributes on ``npeff``: ``artifact`` = "activations", ``complete``, ``n_written``,
  ``fingerprint`` (options a resume must match), ``metadata`` (JSON: module, reduction, split ...).

Like ``PefsWriter``: every dataset grows along the example axis; after each ``append`` the data
and ``n_written`` are flushed, a reopened unfinished file is cut back to ``n_written`` (a killed
run loses at most the chunk in flight), and ``finalize`` sets ``complete``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from npeff.artifacts import keys
from npeff.errors import NpeffUserError

ARTIFACT_ACTIVATIONS = "activations"
GROUP = "activations"
FIELDS = {
    "features": (f"{GROUP}/features", np.float32),
    "labels": (f"{GROUP}/labels", np.int64),
    "logits": (f"{GROUP}/logits", np.float32),
    "example_indices": (f"{GROUP}/example_indices", np.int64),
}


class ActivationsFileError(NpeffUserError):
    """An activation file that is missing, foreign, incomplete or written with other options."""


@dataclass
class Activations:
    """Activations of n examples: features [n, d], labels [n], logits [n, C], example_indices [n]."""

    features: np.ndarray
    labels: np.ndarray
    logits: np.ndarray
    example_indices: np.ndarray
    metadata: dict = field(default_factory=dict)

    @property
    def n_examples(self) -> int:
        return int(self.features.shape[0])

    @property
    def source_indices(self) -> np.ndarray:
        return np.asarray(self.example_indices, dtype=np.int64)

    @property
    def predictions(self) -> np.ndarray:
        return np.asarray(self.logits).argmax(-1)


def _dumps(v) -> str:
    return json.dumps(v, sort_keys=True, default=str)


class ActivationsWriter:
    """Append-only, resumable writer of an ``activations.h5`` file.

    Opening an existing file requires the same ``fingerprint``; a complete one opens with ``done``
    True. Creating one needs ``n_features`` and ``n_logits``.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        fingerprint: dict,
        n_features: int | None = None,
        n_logits: int | None = None,
        metadata: dict | None = None,
        chunk_rows: int = 256,
    ):
        self.path = Path(path)
        fp = _dumps(fingerprint)
        if self.path.exists():
            self.f = h5py.File(self.path, "a")
            attrs = _check_group(self.f, allow_incomplete=True)
            if attrs.get(keys.ATTR_FINGERPRINT) != fp:
                self.f.close()
                raise ActivationsFileError(
                    f"{self.path} exists but was written with other options "
                    f"({attrs.get(keys.ATTR_FINGERPRINT)} ≠ {fp}); delete it or use another run dir"
                )
            self.done = bool(attrs.get(keys.ATTR_COMPLETE, False))
            if not self.done:
                n = self.n_written
                for name, _ in FIELDS.values():
                    self.f[name].resize(n, axis=0)
                self.f.flush()
            return
        if n_features is None or n_logits is None:
            raise NpeffUserError(f"creating {self.path} needs n_features and n_logits")
        self.done = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.f = h5py.File(self.path, "w")
        widths = {"features": (n_features,), "logits": (n_logits,)}
        for name, (path_, dtype) in FIELDS.items():
            w = widths.get(name, ())
            self.f.create_dataset(
                path_, shape=(0, *w), maxshape=(None, *w), dtype=dtype, chunks=(chunk_rows, *w)
            )
        g = self.f.create_group(keys.NPEFF_GROUP)
        g.attrs[keys.ATTR_SCHEMA_VERSION] = keys.SCHEMA_VERSION
        g.attrs[keys.ATTR_ARTIFACT] = ARTIFACT_ACTIVATIONS
        g.attrs[keys.ATTR_COMPLETE] = False
        g.attrs[keys.ATTR_N_WRITTEN] = 0
        g.attrs[keys.ATTR_FINGERPRINT] = fp
        g.attrs[keys.ATTR_METADATA] = _dumps(metadata or {})
        self.f.flush()

    @property
    def n_written(self) -> int:
        return int(self.f[keys.NPEFF_GROUP].attrs[keys.ATTR_N_WRITTEN])

    def append(self, chunk: dict[str, np.ndarray]) -> None:
        """Commit b examples; ``chunk`` holds every field of ``FIELDS`` with b rows."""
        if self.done:
            raise ActivationsFileError(f"{self.path} is already complete")
        n0 = self.n_written
        b = int(np.shape(chunk["features"])[0])
        for name, (path_, dtype) in FIELDS.items():
            arr = np.asarray(chunk[name], dtype=dtype)
            if arr.shape[0] != b:
                raise NpeffUserError(f"chunk field {name} has {arr.shape[0]} rows, expected {b}")
            ds = self.f[path_]
            ds.resize(n0 + b, axis=0)
            ds[n0:] = arr
        self.f[keys.NPEFF_GROUP].attrs[keys.ATTR_N_WRITTEN] = n0 + b
        self.f.flush()

    def finalize(self) -> None:
        self.f[keys.NPEFF_GROUP].attrs[keys.ATTR_COMPLETE] = True
        self.done = True
        self.close()

    def close(self) -> None:
        if self.f.id.valid:
            self.f.close()


def _check_group(f: h5py.File, allow_incomplete: bool = False) -> dict:
    if keys.NPEFF_GROUP not in f:
        raise ActivationsFileError(f"{f.filename} is not an npeff activation file")
    attrs = dict(f[keys.NPEFF_GROUP].attrs)
    if attrs.get(keys.ATTR_ARTIFACT) != ARTIFACT_ACTIVATIONS:
        raise ActivationsFileError(
            f"{f.filename} holds a {attrs.get(keys.ATTR_ARTIFACT)!r} artifact, not activations"
        )
    if not allow_incomplete and not bool(attrs.get(keys.ATTR_COMPLETE, False)):
        raise ActivationsFileError(
            f"{f.filename} is incomplete ({int(attrs.get(keys.ATTR_N_WRITTEN, 0))} examples "
            "written); rerun the same command to resume it"
        )
    return attrs


def load_activations(path: str | os.PathLike) -> Activations:
    """Read a complete ``activations.h5``."""
    path = Path(path)
    if not path.is_file():
        raise ActivationsFileError(
            f"activation file not found: {path} (npeff-baseline writes activations_<split>.h5)"
        )
    with h5py.File(path, "r") as f:
        attrs = _check_group(f)
        data = {name: f[p][...] for name, (p, _) in FIELDS.items()}
        meta = json.loads(attrs.get(keys.ATTR_METADATA, "{}"))
    return Activations(metadata=meta, **data)


def activations_progress(path: str | os.PathLike) -> tuple[int, bool]:
    """(examples committed, complete) of a possibly unfinished file; (0, False) if absent."""
    path = Path(path)
    if not path.exists():
        return 0, False
    with h5py.File(path, "r") as f:
        attrs = _check_group(f, allow_incomplete=True)
        return int(attrs.get(keys.ATTR_N_WRITTEN, 0)), bool(attrs.get(keys.ATTR_COMPLETE, False))
