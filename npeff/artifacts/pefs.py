"""The per-example Fisher (PEF) set: in-memory type, HDF5 load/save (names in ``keys``).

Also the streaming, resumable ``PefsWriter``, subsets, and the dataset-level diagonal Fisher file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import h5py
import numpy as np

from npeff.artifacts import keys
from npeff.artifacts.atomic import atomic_path
from npeff.artifacts.layout import ParameterLayout
from npeff.errors import NpeffUserError

PefKind = Literal["lrm", "lvrm", "diag"]


@dataclass
class Pefs:
    """A set of n sparse per-example Fishers.

    Fields (n examples, K stored values per example, C class rows, C_model logits):
      kind: "lrm" (fixed C rows), "lvrm" (variable rank R_i rows) or "diag" (D-PEF).
      values: float32 [n, K]. LRM/LVRM: signed entries of A_i, grouped by class row, ascending
        parameter index within each row. D: non-negative f_i entries, descending.
      indices: int32 [n, K] parameter indices in [0, n_parameters) (``row_indices`` / D ``indices``).
      norms: float32 [n] dense norms: ‖F_i‖_F (LRM/LVRM) or ‖f_i‖_2 (D).
      labels: int64 [n] true labels. logits: float32 [n, C_model] original logits.
      n_parameters: m.
      col_offsets: int32 [n, C+1] cumulative per-row offsets (LRM only).
      ranks: int32 [n] and col_sizes: int32 [Σ ranks] per-row counts (LVRM only).
      min_prob_class: LVRM threshold, else None.
      layout: the parameter layout (None for reference files without npeff metadata).
      metadata: free-form npeff metadata (config, model identity, split, ...).
      example_indices: int64 [n] position of each example in the data split it came from
        (None: 0..n-1, e.g. a reference file); kept through subsets so a filtered file still
        points at the right examples.
    """

    kind: PefKind
    values: np.ndarray
    indices: np.ndarray
    norms: np.ndarray
    labels: np.ndarray
    logits: np.ndarray
    n_parameters: int
    col_offsets: np.ndarray | None = None
    ranks: np.ndarray | None = None
    col_sizes: np.ndarray | None = None
    min_prob_class: float | None = None
    layout: ParameterLayout | None = None
    metadata: dict = field(default_factory=dict)
    example_indices: np.ndarray | None = None

    @property
    def source_indices(self) -> np.ndarray:
        """int64 [n] positions of the examples in their split (``example_indices`` or 0..n-1)."""
        if self.example_indices is None:
            return np.arange(self.n_examples, dtype=np.int64)
        return np.asarray(self.example_indices, dtype=np.int64)

    @property
    def n_examples(self) -> int:
        return int(self.values.shape[0])

    @property
    def n_values_per_example(self) -> int:
        return int(self.values.shape[1])

    @property
    def n_classes(self) -> int:
        """C for LRM, −1 for LVRM (reference convention), 1 for D."""
        if self.kind == "lrm":
            return int(self.col_offsets.shape[1] - 1)
        if self.kind == "lvrm":
            return -1
        return 1

    @property
    def predictions(self) -> np.ndarray:
        return np.asarray(self.logits).argmax(-1)


# ----------------------------------------------------------------------------------------------
# HDF5 IO (names in ``keys``; layouts of algorithm.md §1.6)
# ----------------------------------------------------------------------------------------------


ARTIFACT_PEFS = "pefs"
ARTIFACT_DSF = "dataset_fisher"

# Per kind: field name in ``Pefs`` / writer chunk → HDF5 dataset path.
_FIELDS: dict[str, dict[str, str]] = {
    "lrm": {
        "labels": keys.LABELS,
        "logits": keys.LOGITS,
        "values": keys.VALUES,
        "indices": keys.ROW_INDICES,
        "col_offsets": keys.COL_OFFSETS,
        "norms": keys.PEF_FROBENIUS_NORMS,
    },
    "lvrm": {
        "labels": keys.LABELS,
        "logits": keys.LOGITS,
        "values": keys.VALUES,
        "indices": keys.ROW_INDICES,
        "norms": keys.PEF_FROBENIUS_NORMS,
        "ranks": keys.RANKS,
    },
    "diag": {
        "labels": keys.LABELS,
        "logits": keys.D_PREDICTED_LOGITS,
        "values": keys.D_VALUES,
        "indices": keys.D_INDICES,
        "norms": keys.D_DENSE_FISHER_NORMS,
    },
}
_DTYPES = {
    "labels": np.int32,
    "logits": np.float32,
    "values": np.float32,
    "indices": np.int32,
    "col_offsets": np.int32,
    "norms": np.float32,
    "ranks": np.int32,
    "col_sizes": np.int32,
}


class PefsFileError(NpeffUserError):
    """A PEF file that is missing, foreign, truncated or incomplete."""


def detect_pefs_kind(f: h5py.File) -> PefKind:
    """PEF kind from the datasets present (reference rule, algorithm.md §1.6)."""
    if keys.D_VALUES in f:
        return "diag"
    if keys.RANKS in f:
        return "lvrm"
    if keys.COL_OFFSETS in f:
        return "lrm"
    raise PefsFileError(
        f"{f.filename} is not a PEF file: none of {keys.D_VALUES}, {keys.RANKS}, "
        f"{keys.COL_OFFSETS} is present"
    )


def _json_attr(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _check_npeff_group(f: h5py.File, artifact: str, allow_incomplete: bool = False) -> dict:
    """Validate the optional ``npeff`` group; returns its attributes (empty for reference files)."""
    if keys.NPEFF_GROUP not in f:
        return {}
    attrs = dict(f[keys.NPEFF_GROUP].attrs)
    found = attrs.get(keys.ATTR_ARTIFACT)
    if found != artifact:
        raise PefsFileError(f"{f.filename} holds a {found!r} artifact, not {artifact!r}")
    version = int(attrs.get(keys.ATTR_SCHEMA_VERSION, -1))
    if version > keys.SCHEMA_VERSION:
        raise PefsFileError(
            f"{f.filename} has schema version {version}, newer than this npeff "
            f"({keys.SCHEMA_VERSION}); upgrade npeff"
        )
    if not allow_incomplete and not bool(attrs.get(keys.ATTR_COMPLETE, False)):
        n = int(attrs.get(keys.ATTR_N_WRITTEN, 0))
        raise PefsFileError(
            f"{f.filename} is incomplete (the run stopped after {n} examples); rerun the same "
            "command to resume it, or delete the file"
        )
    return attrs


class PefsWriter:
    """Streams PEFs into an HDF5 file chunk by chunk; resumable after a crash.

    Every dataset is resizable along the example axis. After each ``append`` the datasets, the
    ``npeff.n_written`` counter and (optionally) the running dataset-Fisher sum are flushed; a
    reopened incomplete file is truncated back to ``n_written`` examples, so a killed run loses at
    most the chunk in flight and never duplicates one. ``finalize`` sets ``npeff.complete``.

    Opening an existing file requires the same ``fingerprint`` (the options that determine the
    content) and takes everything else from the file; a complete file opens with ``done`` True.
    Creating a file needs ``kind``, ``n_values``, ``n_parameters``, ``n_rows`` (C; LVRM: max
    rank) and ``n_logits`` (C_model).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        fingerprint: dict | None = None,
        kind: PefKind | None = None,
        n_values: int | None = None,
        n_parameters: int | None = None,
        n_rows: int | None = None,
        n_logits: int | None = None,
        min_prob_class: float | None = None,
        layout: ParameterLayout | None = None,
        metadata: dict | None = None,
        dataset_fisher_mode: str | None = None,
        chunk_rows: int = 64,
    ):
        self.path = Path(path)
        fp = _json_attr(fingerprint or {})
        self.done = False
        if self.path.exists():
            self.f = h5py.File(self.path, "a")
            attrs = _check_npeff_group(self.f, ARTIFACT_PEFS, allow_incomplete=True)
            if attrs.get(keys.ATTR_FINGERPRINT) != fp:
                self.f.close()
                raise PefsFileError(
                    f"{self.path} exists but was written with other options "
                    f"({attrs.get(keys.ATTR_FINGERPRINT)} ≠ {fp}); delete it or choose another "
                    "output path"
                )
            self.kind = str(attrs[keys.ATTR_KIND])
            self.done = bool(attrs.get(keys.ATTR_COMPLETE, False))
            if not self.done:
                self._truncate(int(attrs.get(keys.ATTR_N_WRITTEN, 0)))
            return
        needed = dict(
            kind=kind,
            n_values=n_values,
            n_parameters=n_parameters,
            n_rows=n_rows,
            n_logits=n_logits,
        )
        missing = [k for k, v in needed.items() if v is None]
        if missing:
            raise NpeffUserError(f"creating {self.path} needs {missing}")
        self.kind = kind
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.f = h5py.File(self.path, "w")
        f = self.f
        data = f.create_group(keys.DATA_GROUP)
        widths = {
            "labels": (),
            "logits": (n_logits,),
            "values": (n_values,),
            "indices": (n_values,),
            "col_offsets": (n_rows + 1,),
            "norms": (),
            "ranks": (),
        }
        for field_name, name in _FIELDS[kind].items():
            w = widths[field_name]
            f.create_dataset(
                name,
                shape=(0, *w),
                maxshape=(None, *w),
                dtype=_DTYPES[field_name],
                chunks=(chunk_rows, *w),
            )
        if kind == "lrm":
            data.attrs[keys.ATTR_N_CLASSES] = int(n_rows)
            data.attrs[keys.ATTR_N_PARAMETERS] = int(n_parameters)
        elif kind == "lvrm":
            f.create_dataset(
                keys.COL_SIZES, shape=(0,), maxshape=(None,), dtype=np.int32, chunks=(1024,)
            )
            data.attrs[keys.ATTR_MIN_PROB_CLASS] = float(min_prob_class)
            data.attrs[keys.ATTR_N_PARAMETERS] = int(n_parameters)
        else:
            f[keys.D_FISHER_GROUP].attrs[keys.ATTR_DENSE_FISHER_SIZE] = np.int32(n_parameters)
        g = f.create_group(keys.NPEFF_GROUP)
        g.attrs[keys.ATTR_SCHEMA_VERSION] = keys.SCHEMA_VERSION
        g.attrs[keys.ATTR_ARTIFACT] = ARTIFACT_PEFS
        f.create_dataset(
            keys.EXAMPLE_INDICES, shape=(0,), maxshape=(None,), dtype=np.int64, chunks=(1024,)
        )
        g.attrs[keys.ATTR_KIND] = kind
        g.attrs[keys.ATTR_COMPLETE] = False
        g.attrs[keys.ATTR_N_WRITTEN] = 0
        g.attrs[keys.ATTR_FINGERPRINT] = fp
        if layout is not None:
            g.attrs[keys.ATTR_LAYOUT] = layout.to_json()
        _write_metadata(g, metadata or {})
        if dataset_fisher_mode is not None:
            g.attrs[keys.ATTR_DSF_MODE] = dataset_fisher_mode
            f.create_dataset(keys.DSF_PARTIAL_SUM, data=np.zeros(n_parameters, dtype=np.float64))
        f.flush()

    @property
    def n_written(self) -> int:
        return int(self.f[keys.NPEFF_GROUP].attrs[keys.ATTR_N_WRITTEN])

    def dataset_fisher_sum(self) -> np.ndarray | None:
        """The running Σᵢ fᵢ (float64 [m]) over the committed examples, when tracked."""
        return self.f[keys.DSF_PARTIAL_SUM][...] if keys.DSF_PARTIAL_SUM in self.f else None

    def _truncate(self, n: int) -> None:
        for name in _FIELDS[self.kind].values():
            self.f[name].resize(n, axis=0)
        if self.kind == "lvrm":
            self.f[keys.COL_SIZES].resize(int(self.f[keys.RANKS][:n].sum()), axis=0)
        self.f[keys.EXAMPLE_INDICES].resize(n, axis=0)
        self.f.flush()

    def append(self, chunk: dict[str, np.ndarray], dataset_fisher_sum: np.ndarray | None = None):
        """Append b examples: ``chunk`` maps field names (``_FIELDS``; ``col_sizes`` for LVRM)
        to arrays with b rows; optional ``example_indices`` (default: continue 0, 1, ...).
        ``dataset_fisher_sum`` replaces the running sum (same commit)."""
        if self.done:
            raise PefsFileError(f"{self.path} is already complete")
        n0 = self.n_written
        b = None
        for field_name, name in _FIELDS[self.kind].items():
            arr = np.asarray(chunk[field_name], dtype=_DTYPES[field_name])
            b = arr.shape[0] if b is None else b
            if arr.shape[0] != b:
                raise NpeffUserError(
                    f"chunk field {field_name} has {arr.shape[0]} rows, expected {b}"
                )
            ds = self.f[name]
            ds.resize(n0 + b, axis=0)
            ds[n0 : n0 + b] = arr
        if self.kind == "lvrm":
            cs = np.asarray(chunk["col_sizes"], dtype=np.int32)
            ds = self.f[keys.COL_SIZES]
            c0 = ds.shape[0]
            ds.resize(c0 + cs.shape[0], axis=0)
            ds[c0:] = cs
        ex = chunk.get("example_indices")
        ex = np.arange(n0, n0 + b) if ex is None else np.asarray(ex, dtype=np.int64)
        if ex.shape != (b,):
            raise NpeffUserError(f"example_indices has shape {ex.shape}, expected ({b},)")
        ds = self.f[keys.EXAMPLE_INDICES]
        ds.resize(n0 + b, axis=0)
        ds[n0:] = ex
        if dataset_fisher_sum is not None:
            self.f[keys.DSF_PARTIAL_SUM][...] = dataset_fisher_sum
        self.f[keys.NPEFF_GROUP].attrs[keys.ATTR_N_WRITTEN] = n0 + b
        self.f.flush()

    def finalize(self, metadata: dict | None = None) -> None:
        """Mark the file complete (drops the running dataset-Fisher sum) and close it."""
        g = self.f[keys.NPEFF_GROUP]
        if metadata:
            _write_metadata(g, metadata)
        if keys.DSF_PARTIAL_SUM in self.f:
            del self.f[keys.DSF_PARTIAL_SUM]
        g.attrs[keys.ATTR_COMPLETE] = True
        self.done = True
        self.close()

    def close(self) -> None:
        if self.f.id.valid:
            self.f.close()

    def __enter__(self) -> PefsWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _write_metadata(g: h5py.Group, metadata: dict) -> None:
    rest = dict(metadata)
    for key, attr in (
        ("config", keys.ATTR_CONFIG),
        ("model_identity", keys.ATTR_MODEL_IDENTITY),
        ("source", keys.ATTR_SOURCE),
    ):
        if key in rest:
            g.attrs[attr] = _json_attr(rest.pop(key))
    old = json.loads(g.attrs.get(keys.ATTR_METADATA, "{}"))
    old.update(rest)
    g.attrs[keys.ATTR_METADATA] = _json_attr(old)


def _read_metadata(attrs: dict) -> dict:
    meta = json.loads(attrs.get(keys.ATTR_METADATA, "{}"))
    for key, attr in (
        ("config", keys.ATTR_CONFIG),
        ("model_identity", keys.ATTR_MODEL_IDENTITY),
        ("source", keys.ATTR_SOURCE),
        ("fingerprint", keys.ATTR_FINGERPRINT),
    ):
        if attr in attrs:
            meta[key] = json.loads(attrs[attr])
    if keys.ATTR_SCHEMA_VERSION in attrs:
        meta["schema_version"] = int(attrs[keys.ATTR_SCHEMA_VERSION])
    return meta


def _pefs_header(f: h5py.File) -> dict:
    """Kind, sizes and metadata of an open, complete PEF file, with consistency checks."""
    attrs = _check_npeff_group(f, ARTIFACT_PEFS)
    kind = detect_pefs_kind(f)
    fields = _FIELDS[kind]
    missing = [name for name in fields.values() if name not in f]
    if kind == "lvrm" and keys.COL_SIZES not in f:
        missing.append(keys.COL_SIZES)
    if missing:
        raise PefsFileError(f"{f.filename} ({kind} PEFs) lacks datasets {missing}")
    n = f[fields["values"]].shape[0]
    for name in fields.values():
        if f[name].shape[0] != n:
            raise PefsFileError(
                f"{f.filename} is truncated: {name} has {f[name].shape[0]} rows, "
                f"{fields['values']} has {n}"
            )
    if f[fields["indices"]].shape != f[fields["values"]].shape:
        raise PefsFileError(f"{f.filename}: values and indices differ in shape")
    if kind == "diag":
        m = int(np.asarray(f[keys.D_FISHER_GROUP].attrs[keys.ATTR_DENSE_FISHER_SIZE]).reshape(()))
        min_prob = None
    else:
        m = int(f[keys.DATA_GROUP].attrs[keys.ATTR_N_PARAMETERS])
        min_prob = (
            float(f[keys.DATA_GROUP].attrs[keys.ATTR_MIN_PROB_CLASS]) if kind == "lvrm" else None
        )
    layout = (
        ParameterLayout.from_json(attrs[keys.ATTR_LAYOUT]) if keys.ATTR_LAYOUT in attrs else None
    )
    if layout is not None and layout.n_parameters != m:
        raise PefsFileError(f"{f.filename}: layout has {layout.n_parameters} parameters, file {m}")
    meta = _read_metadata(attrs)
    if keys.ATTR_DSF_MODE in attrs:
        meta["dataset_fisher_mode"] = str(attrs[keys.ATTR_DSF_MODE])
    return {
        "kind": kind,
        "n": n,
        "m": m,
        "min_prob_class": min_prob,
        "layout": layout,
        "meta": meta,
    }


def load_pefs(path: str | os.PathLike) -> Pefs:
    """Read a complete PEF file (npeff's or the reference's layout) into a ``Pefs``.

    Raises ``PefsFileError`` for a missing, foreign, truncated or incomplete file.
    """
    path = Path(path)
    if not path.is_file():
        raise PefsFileError(f"no PEF file at {path}")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise PefsFileError(f"{path} is not a readable HDF5 file: {e}") from e
    with f:
        h = _pefs_header(f)
        kind = h["kind"]
        arrays = {fn: f[name][...] for fn, name in _FIELDS[kind].items()}
        col_sizes = f[keys.COL_SIZES][...].astype(np.int32) if kind == "lvrm" else None
        example_indices = f[keys.EXAMPLE_INDICES][...] if keys.EXAMPLE_INDICES in f else None
    if example_indices is not None and example_indices.shape != (h["n"],):
        raise PefsFileError(f"{path}: {keys.EXAMPLE_INDICES} has {example_indices.shape[0]} rows")
    pefs = Pefs(
        kind=kind,
        values=arrays["values"].astype(np.float32, copy=False),
        indices=arrays["indices"].astype(np.int32, copy=False),
        norms=arrays["norms"].astype(np.float32, copy=False),
        labels=arrays["labels"].astype(np.int64),
        logits=arrays["logits"].astype(np.float32, copy=False),
        n_parameters=h["m"],
        col_offsets=arrays.get("col_offsets"),
        ranks=arrays.get("ranks"),
        col_sizes=col_sizes,
        min_prob_class=h["min_prob_class"],
        layout=h["layout"],
        metadata=h["meta"],
        example_indices=example_indices,
    )
    _check_sparse_structure(pefs, path)
    return pefs


def _check_sparse_structure(p: Pefs, path) -> None:
    k = p.n_values_per_example
    if p.n_examples and (p.indices.min() < 0 or p.indices.max() >= p.n_parameters):
        raise PefsFileError(f"{path}: parameter indices outside [0, {p.n_parameters})")
    if p.kind == "lrm" and p.n_examples:
        co = p.col_offsets
        if (co[:, 0] != 0).any() or (co[:, -1] != k).any() or (np.diff(co, axis=1) < 0).any():
            raise PefsFileError(
                f"{path}: data/col_offsets must be cumulative from 0 to {k} (legacy per-class "
                "counts are not supported)"
            )
    if p.kind == "lvrm":
        if (p.ranks < 0).any() or (p.col_sizes < 0).any():
            raise PefsFileError(f"{path}: LVRM ranks and col_sizes must be ≥ 0")
        if int(p.ranks.sum()) != p.col_sizes.shape[0]:
            raise PefsFileError(
                f"{path}: col_sizes has {p.col_sizes.shape[0]} rows, Σ ranks "
                f"is {int(p.ranks.sum())}"
            )
        row_example, _ = lvrm_row_layout(p.ranks, p.col_sizes)
        per_example = np.bincount(row_example, weights=p.col_sizes, minlength=p.n_examples)
        if (per_example > k).any():
            i = int(np.argmax(per_example > k))
            raise PefsFileError(
                f"{path}: the col_sizes of example {i} sum to {int(per_example[i])}, more than "
                f"the {k} values stored per example"
            )


def lvrm_row_layout(ranks: np.ndarray, col_sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where the Σ R_i stored rows of an LVRM set live (algorithm.md §1.4, §5.2).

    ranks: int [n] rows per example (R_i ≥ 0); col_sizes: int [Σ R_i] entries per row (not
    cumulative). Returns (row_example int64 [Σ R_i]: the example of each row, row_start int64
    [Σ R_i]: the position of the row's first value among its example's K values). An example's
    rows hold its first Σ col_sizes values; any values after them are explicit-zero padding.
    """
    ranks = np.asarray(ranks, dtype=np.int64)
    sizes = np.asarray(col_sizes, dtype=np.int64)
    row_example = np.repeat(np.arange(ranks.shape[0], dtype=np.int64), ranks)
    before = np.cumsum(sizes) - sizes  # entries in all earlier rows
    first_row = (np.cumsum(ranks) - ranks)[row_example]
    return row_example, before - before[first_row]


def _chunk_of(p: Pefs, lo: int, hi: int) -> dict[str, np.ndarray]:
    chunk = {
        "labels": p.labels[lo:hi],
        "logits": p.logits[lo:hi],
        "values": p.values[lo:hi],
        "indices": p.indices[lo:hi],
        "norms": p.norms[lo:hi],
        "example_indices": p.source_indices[lo:hi],
    }
    if p.kind == "lrm":
        chunk["col_offsets"] = p.col_offsets[lo:hi]
    if p.kind == "lvrm":
        starts = np.concatenate([[0], np.cumsum(p.ranks)])
        chunk["ranks"] = p.ranks[lo:hi]
        chunk["col_sizes"] = p.col_sizes[starts[lo] : starts[hi]]
    return chunk


def _writer_args(p: Pefs) -> dict:
    n_rows = (
        p.n_classes
        if p.kind == "lrm"
        else (int(p.ranks.max()) if p.kind == "lvrm" and p.n_examples else 1)
    )
    meta = dict(p.metadata)
    fingerprint = meta.pop("fingerprint", None)
    meta.pop("schema_version", None)
    dsf_mode = meta.pop("dataset_fisher_mode", None)
    return dict(
        kind=p.kind,
        n_values=p.n_values_per_example,
        n_parameters=p.n_parameters,
        n_rows=n_rows,
        n_logits=p.logits.shape[1],
        min_prob_class=p.min_prob_class,
        layout=p.layout,
        metadata=meta,
        fingerprint=fingerprint,
        dataset_fisher_mode=dsf_mode,
    )


def save_pefs(pefs: Pefs, path: str | os.PathLike) -> Path:
    """Write ``pefs`` to ``path`` atomically (reference names + npeff metadata, marked complete)."""
    args = _writer_args(pefs)
    args["dataset_fisher_mode"] = None
    with atomic_path(path) as tmp:
        tmp.unlink()
        w = PefsWriter(tmp, **args)
        try:
            if pefs.n_examples:
                w.append(_chunk_of(pefs, 0, pefs.n_examples))
            w.finalize()
        finally:
            w.close()
    return Path(path)


def subset_pefs(pefs: Pefs, index: np.ndarray) -> Pefs:
    """The PEFs at ``index`` (int positions or a bool mask [n]), in that order, every field kept."""
    idx = np.asarray(index)
    if idx.dtype == bool:
        if idx.shape != (pefs.n_examples,):
            raise NpeffUserError(f"mask has shape {idx.shape}, expected ({pefs.n_examples},)")
        idx = np.flatnonzero(idx)
    idx = idx.astype(np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= pefs.n_examples):
        raise IndexError(f"example indices outside [0, {pefs.n_examples})")
    col_sizes = None
    if pefs.kind == "lvrm":
        starts = np.concatenate([[0], np.cumsum(pefs.ranks)])
        pieces = [pefs.col_sizes[starts[i] : starts[i + 1]] for i in idx]
        col_sizes = np.concatenate(pieces) if pieces else np.zeros(0, np.int32)
    meta = dict(pefs.metadata)
    meta.pop("fingerprint", None)
    meta["subset_of"] = meta.get("subset_of", {}) or {"n_examples": pefs.n_examples}
    return Pefs(
        kind=pefs.kind,
        values=pefs.values[idx],
        indices=pefs.indices[idx],
        norms=pefs.norms[idx],
        labels=pefs.labels[idx],
        logits=pefs.logits[idx],
        n_parameters=pefs.n_parameters,
        col_offsets=None if pefs.col_offsets is None else pefs.col_offsets[idx],
        ranks=None if pefs.ranks is None else pefs.ranks[idx],
        col_sizes=col_sizes,
        min_prob_class=pefs.min_prob_class,
        layout=pefs.layout,
        metadata=meta,
        example_indices=pefs.source_indices[idx],
    )


def iter_pefs_chunks(path: str | os.PathLike, chunk: int = 1024) -> Iterator[dict[str, np.ndarray]]:
    """Stream a complete PEF file as writer chunks of at most ``chunk`` examples."""
    with h5py.File(path, "r") as f:
        h = _pefs_header(f)
        kind = h["kind"]
        c0 = 0
        for lo in range(0, h["n"], chunk):
            hi = min(lo + chunk, h["n"])
            out = {fn: f[name][lo:hi] for fn, name in _FIELDS[kind].items()}
            if keys.EXAMPLE_INDICES in f:
                out["example_indices"] = f[keys.EXAMPLE_INDICES][lo:hi]
            if kind == "lvrm":
                c1 = c0 + int(out["ranks"].sum())
                out["col_sizes"] = f[keys.COL_SIZES][c0:c1]
                c0 = c1
            yield out


def read_pefs_header(path: str | os.PathLike) -> dict:
    """Kind, n, m, layout and metadata of a complete PEF file, without reading the arrays."""
    with h5py.File(path, "r") as f:
        h = _pefs_header(f)
        if h["kind"] == "lrm":
            h["n_rows"] = int(f[keys.COL_OFFSETS].shape[1] - 1)
        elif h["kind"] == "lvrm":
            h["n_rows"] = int(f[keys.RANKS][...].max()) if h["n"] else 1
        else:
            h["n_rows"] = 1
        h["n_values"] = int(f[_FIELDS[h["kind"]]["values"]].shape[1])
        h["n_logits"] = int(f[_FIELDS[h["kind"]]["logits"]].shape[1])
        return h


def save_dataset_fisher(
    fisher: np.ndarray, path: str | os.PathLike, metadata: dict | None = None
) -> Path:
    """Write a dense dataset-level diagonal Fisher float32 [m] to ``data/fisher`` atomically."""
    fisher = np.asarray(fisher, dtype=np.float32)
    if fisher.ndim != 1:
        raise NpeffUserError(f"a dataset Fisher is a vector [m], got shape {fisher.shape}")
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset(keys.DSF_FISHER, data=fisher)
        g = f.create_group(keys.NPEFF_GROUP)
        g.attrs[keys.ATTR_SCHEMA_VERSION] = keys.SCHEMA_VERSION
        g.attrs[keys.ATTR_ARTIFACT] = ARTIFACT_DSF
        g.attrs[keys.ATTR_COMPLETE] = True
        _write_metadata(g, metadata or {})
    return Path(path)


def load_dataset_fisher(path: str | os.PathLike) -> np.ndarray:
    """Read a dataset-level diagonal Fisher float32 [m] (npeff's or the reference's file)."""
    path = Path(path)
    if not path.is_file():
        raise PefsFileError(f"no dataset Fisher file at {path}")
    with h5py.File(path, "r") as f:
        _check_npeff_group(f, ARTIFACT_DSF)
        if keys.DSF_FISHER not in f or not isinstance(f[keys.DSF_FISHER], h5py.Dataset):
            raise PefsFileError(f"{path} has no dataset {keys.DSF_FISHER}: not a dataset Fisher")
        fisher = f[keys.DSF_FISHER][...]
    if fisher.ndim != 1:
        raise PefsFileError(f"{path}: {keys.DSF_FISHER} has shape {fisher.shape}, expected [m]")
    return fisher.astype(np.float32, copy=False)


def read_pefs_progress(path: str | os.PathLike) -> tuple[int, bool]:
    """(examples committed, complete) of an npeff PEF file being written; (0, False) if absent."""
    path = Path(path)
    if not path.exists():
        return 0, False
    with h5py.File(path, "r") as f:
        attrs = _check_npeff_group(f, ARTIFACT_PEFS, allow_incomplete=True)
        return int(attrs.get(keys.ATTR_N_WRITTEN, 0)), bool(attrs.get(keys.ATTR_COMPLETE, False))


SPLIT_UNKNOWN = (
    "cannot tell which data split the PEFs were computed on (no 'split' in the PEF file's "
    "metadata, or no PEF file); pass split=fit or split=eval"
)


def pefs_split(pefs, given: str | None = None, default: str | None = None) -> str:
    """The data split a PEF file was computed on.

    ``given`` (a ``split=`` override) when set; else the file's metadata ``split``, else the
    ``split`` of the run config stored with it (a dict, or YAML/JSON text). ``pefs``: a
    :class:`Pefs`, its ``metadata`` dict, or None. Without one: ``default``, or a ValueError.
    """
    if given:
        return str(given)
    meta = pefs if isinstance(pefs, dict) or pefs is None else getattr(pefs, "metadata", None)
    meta = meta or {}
    if meta.get("split"):
        return str(meta["split"])
    conf = meta.get("config")
    if isinstance(conf, str):
        import yaml

        try:
            conf = yaml.safe_load(conf)
        except yaml.YAMLError:  # free-form metadata: no split there
            conf = None
    if isinstance(conf, dict) and conf.get("split"):
        return str(conf["split"])
    if default is not None:
        return str(default)
    raise NpeffUserError(SPLIT_UNKNOWN)
