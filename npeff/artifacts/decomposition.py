"""NPEFF decompositions and coefficient files: in-memory type, HDF5 load/save (names in ``keys``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import scipy.sparse as sp

from npeff.artifacts import keys
from npeff.artifacts.atomic import atomic_path, json_default
from npeff.artifacts.layout import ParameterLayout
from npeff.errors import NpeffFileNotFoundError, NpeffUserError

DecompositionKind = Literal["lrm", "diag"]


@dataclass
class Decomposition:
    """An NPEFF decomposition (or a coefficient file: same format, W fitted with G/H frozen).

    Fields (n examples, r components, m' kept parameter columns, m parameters):
      kind: "lrm" (rank-1 PSD components g_k g_kᵀ) or "diag" (D-NPEFF, non-negative h_k).
      W: float32 [n, r] non-negative coefficients.
      G: float32 [r, m'] pseudo-Fisher vectors (LRM), or None when not stored.
      H: float32 [r, m'] dense D-NPEFF components, or a scipy CSR matrix [r, m'] once sparsified.
      new_to_old_col_indices: int [m'] reduced column → parameter index, ascending.
      n_parameters: m. n_classes: C (−1 for LVRM, 1 for D).
      losses: {"G_only": float32 [..], "joint": float32 [..]} logged every log_loss_frequency steps.
      convergence: {"steps": int [s], "cosine": float32 [s, r]} per-component cosine similarity of
        W[:, k] to the previous snapshot, recorded every N steps (paper Fig. 5); may be empty.
      layout: parameter layout of the PEFs it was made from.
      metadata: source PEF file, resolved config, seed, ...
    """

    kind: DecompositionKind
    W: np.ndarray
    new_to_old_col_indices: np.ndarray
    n_parameters: int
    n_classes: int = 1
    G: np.ndarray | None = None
    H: np.ndarray | sp.csr_matrix | None = None
    losses: dict[str, np.ndarray] = field(default_factory=dict)
    log_loss_frequency: int = 10
    convergence: dict[str, np.ndarray] = field(default_factory=dict)
    layout: ParameterLayout | None = None
    metadata: dict = field(default_factory=dict)

    @property
    def n_examples(self) -> int:
        return int(self.W.shape[0])

    @property
    def n_components(self) -> int:
        return int(self.W.shape[1])


# --- HDF5 IO (reference names from ``keys``; npeff metadata under ``npeff/``) -----------------

ARTIFACT_NAME = "decomposition"


class DecompositionFileError(NpeffUserError):
    """A file that is not a (complete, well-formed) npeff/reference decomposition."""


def save_decomposition(dec: Decomposition, path) -> Path:
    """Write ``dec`` atomically to ``path`` (HDF5) and return the path.

    LRM: ``data/W``, ``data/G``, ``data/new_to_old_col_indices``, attrs ``data.n_parameters`` /
    ``data.n_classes``, ``losses/*`` + attr ``losses.log_loss_frequency`` (algorithm.md §1.6).
    D: ``data/W``, ``data/H`` (dense dataset, or a CSR group with attr ``shape``, ``values``,
    ``row_indices`` int64 [r+1], ``column_indices`` int32), ``data/reduce_kept_indices`` with attr
    ``full_dense_size`` (1-element array). npeff metadata: ``npeff`` attrs and
    ``npeff/convergence/*``.
    """
    import h5py

    _validate(dec, where="save_decomposition")
    path = Path(path)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        data = f.create_group(keys.DATA_GROUP)
        data.attrs[keys.ATTR_N_PARAMETERS] = np.int64(dec.n_parameters)
        data.attrs[keys.ATTR_N_CLASSES] = np.int64(dec.n_classes)
        f.create_dataset(keys.W, data=np.asarray(dec.W, dtype=np.float32))
        cols = np.asarray(dec.new_to_old_col_indices)
        idx_dtype = np.int32 if (cols.size == 0 or cols.max() < 2**31 - 1) else np.int64
        if dec.kind == "lrm":
            if dec.G is not None:
                f.create_dataset(keys.G, data=np.asarray(dec.G, dtype=np.float32))
            f.create_dataset(keys.NEW_TO_OLD_COL_INDICES, data=cols.astype(idx_dtype))
        else:
            if sp.issparse(dec.H):
                H = sp.csr_matrix(dec.H)
                H.sort_indices()
                grp = f.create_group(keys.H)
                grp.attrs[keys.H_ATTR_SHAPE] = np.asarray(H.shape, dtype=np.int64)
                f.create_dataset(keys.H_VALUES, data=H.data.astype(np.float32))
                f.create_dataset(keys.H_ROW_INDICES, data=H.indptr.astype(np.int64))
                f.create_dataset(keys.H_COLUMN_INDICES, data=H.indices.astype(np.int32))
            elif dec.H is not None:
                f.create_dataset(keys.H, data=np.asarray(dec.H, dtype=np.float32))
            ds = f.create_dataset(keys.REDUCE_KEPT_INDICES, data=cols.astype(idx_dtype))
            ds.attrs[keys.ATTR_FULL_DENSE_SIZE] = np.asarray([dec.n_parameters], dtype=idx_dtype)
        losses = f.create_group(keys.LOSSES_GROUP)
        losses.attrs[keys.ATTR_LOG_LOSS_FREQUENCY] = np.int64(dec.log_loss_frequency)
        for name, values in dec.losses.items():
            losses.create_dataset(name, data=np.asarray(values, dtype=np.float32))
        meta = f.create_group(keys.NPEFF_GROUP)
        meta.attrs[keys.ATTR_SCHEMA_VERSION] = keys.SCHEMA_VERSION
        meta.attrs[keys.ATTR_ARTIFACT] = ARTIFACT_NAME
        meta.attrs[keys.ATTR_KIND] = dec.kind
        if dec.layout is not None:
            meta.attrs[keys.ATTR_LAYOUT] = dec.layout.to_json()
        other = dict(dec.metadata)
        if "config" in other:
            cfg = other.pop("config")
            meta.attrs[keys.ATTR_CONFIG] = cfg if isinstance(cfg, str) else json.dumps(cfg)
        if "source" in other:
            meta.attrs[keys.ATTR_SOURCE] = json.dumps(other.pop("source"), default=str)
        meta.attrs[keys.ATTR_METADATA] = json.dumps(other, default=json_default)
        if dec.convergence:
            conv = f.create_group(keys.CONVERGENCE_GROUP)
            for name, values in dec.convergence.items():
                conv.create_dataset(name, data=np.asarray(values))
        meta.attrs[keys.ATTR_COMPLETE] = True
    return path


def load_decomposition(path) -> Decomposition:
    """Read a decomposition or coefficient file written by npeff or by the reference code.

    Raises ``FileNotFoundError`` for a missing file and ``DecompositionFileError`` for a file
    that is not a complete decomposition (a PEF file, a truncated write, inconsistent shapes).
    """
    import h5py

    path = Path(path)
    if not path.exists():
        raise NpeffFileNotFoundError(f"decomposition file not found: {path}")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DecompositionFileError(f"{path} is not a readable HDF5 file ({e})") from e
    with f:
        meta = f.get(keys.NPEFF_GROUP)
        if meta is not None:
            artifact = _attr_str(meta.attrs.get(keys.ATTR_ARTIFACT, ""))
            if artifact and artifact != ARTIFACT_NAME:
                raise DecompositionFileError(
                    f"{path} is an npeff {artifact!r} file, not a decomposition; pass a "
                    "decomposition.h5 or coeffs.h5 written by npeff-decompose / npeff-fit."
                )
            if artifact and not bool(meta.attrs.get(keys.ATTR_COMPLETE, False)):
                raise DecompositionFileError(
                    f"{path} is incomplete (its writer did not finish); rerun the stage."
                )
        if keys.W not in f:
            hint = ""
            if keys.VALUES in f or keys.D_VALUES in f:
                hint = " It looks like a PEF file; pass it as inputs.pefs instead."
            raise DecompositionFileError(f"{path} has no '{keys.W}': not a decomposition.{hint}")
        kind = _attr_str(meta.attrs.get(keys.ATTR_KIND, "")) if meta is not None else ""
        if not kind:
            kind = "diag" if (keys.H in f or keys.REDUCE_KEPT_INDICES in f) else "lrm"
        W = np.asarray(f[keys.W][()], dtype=np.float32)
        G = H = None
        data_attrs = f[keys.DATA_GROUP].attrs
        if kind == "lrm":
            if keys.NEW_TO_OLD_COL_INDICES not in f:
                raise DecompositionFileError(f"{path} lacks '{keys.NEW_TO_OLD_COL_INDICES}'.")
            cols = np.asarray(f[keys.NEW_TO_OLD_COL_INDICES][()], dtype=np.int64)
            if keys.G in f:
                G = np.asarray(f[keys.G][()], dtype=np.float32)
            if keys.ATTR_N_PARAMETERS not in data_attrs:
                raise DecompositionFileError(f"{path} lacks attribute data.n_parameters.")
            n_parameters = int(data_attrs[keys.ATTR_N_PARAMETERS])
            n_classes = int(data_attrs.get(keys.ATTR_N_CLASSES, -1))
        else:
            if keys.REDUCE_KEPT_INDICES not in f:
                raise DecompositionFileError(f"{path} lacks '{keys.REDUCE_KEPT_INDICES}'.")
            ds = f[keys.REDUCE_KEPT_INDICES]
            cols = np.asarray(ds[()], dtype=np.int64)
            size = ds.attrs.get(keys.ATTR_FULL_DENSE_SIZE)
            if size is None:
                size = data_attrs.get(keys.ATTR_N_PARAMETERS)
            if size is None:
                raise DecompositionFileError(f"{path} lacks attribute full_dense_size.")
            n_parameters = int(np.asarray(size).reshape(-1)[0])  # reference: a 1-element array
            n_classes = 1
            if keys.H in f:
                h = f[keys.H]
                if isinstance(h, h5py.Group):
                    shape = tuple(int(s) for s in np.asarray(h.attrs[keys.H_ATTR_SHAPE]))
                    H = sp.csr_matrix(
                        (
                            np.asarray(f[keys.H_VALUES][()], dtype=np.float32),
                            np.asarray(f[keys.H_COLUMN_INDICES][()], dtype=np.int64),
                            np.asarray(f[keys.H_ROW_INDICES][()], dtype=np.int64),
                        ),
                        shape=shape,
                    )
                else:
                    H = np.asarray(h[()], dtype=np.float32)
        losses, freq = {}, 10
        if keys.LOSSES_GROUP in f:
            grp = f[keys.LOSSES_GROUP]
            freq = int(grp.attrs.get(keys.ATTR_LOG_LOSS_FREQUENCY, 10))
            losses = {name: np.asarray(grp[name][()], dtype=np.float32) for name in grp}
        convergence = {}
        if keys.CONVERGENCE_GROUP in f:
            grp = f[keys.CONVERGENCE_GROUP]
            convergence = {name: np.asarray(grp[name][()]) for name in grp}
        layout, metadata = None, {}
        if meta is not None:
            if keys.ATTR_LAYOUT in meta.attrs:
                layout = ParameterLayout.from_json(_attr_str(meta.attrs[keys.ATTR_LAYOUT]))
            if keys.ATTR_METADATA in meta.attrs:
                metadata = json.loads(_attr_str(meta.attrs[keys.ATTR_METADATA]))
            if keys.ATTR_CONFIG in meta.attrs:
                metadata["config"] = _attr_str(meta.attrs[keys.ATTR_CONFIG])
            if keys.ATTR_SOURCE in meta.attrs:
                metadata["source"] = json.loads(_attr_str(meta.attrs[keys.ATTR_SOURCE]))
    dec = Decomposition(
        kind=kind,
        W=W,
        new_to_old_col_indices=cols,
        n_parameters=n_parameters,
        n_classes=n_classes,
        G=G,
        H=H,
        losses=losses,
        log_loss_frequency=freq,
        convergence=convergence,
        layout=layout,
        metadata=metadata,
    )
    try:
        _validate(dec, where=str(path))
    except ValueError as e:
        raise DecompositionFileError(str(e)) from e
    return dec


def _validate(dec: Decomposition, where: str) -> None:
    if dec.kind not in ("lrm", "diag"):
        raise NpeffUserError(f"{where}: unknown decomposition kind {dec.kind!r}")
    if np.ndim(dec.W) != 2:
        raise NpeffUserError(f"{where}: W must be 2-D [n, r], got shape {np.shape(dec.W)}")
    r = dec.W.shape[1]
    m_red = int(np.size(dec.new_to_old_col_indices))
    comps = dec.G if dec.kind == "lrm" else dec.H
    if comps is not None and tuple(comps.shape) != (r, m_red):
        name = "G" if dec.kind == "lrm" else "H"
        raise NpeffUserError(
            f"{where}: {name} has shape {tuple(comps.shape)} but W has {r} components and the "
            f"column map has {m_red} columns"
        )
    cols = np.asarray(dec.new_to_old_col_indices)
    if m_red and (cols.min() < 0 or cols.max() >= dec.n_parameters):
        raise NpeffUserError(f"{where}: column map outside [0, n_parameters={dec.n_parameters})")


def _attr_str(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
