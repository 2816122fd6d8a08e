"""``attributions.h5``: COAR's ablation dataset, attributions and evaluation arrays.

Layout (names in ``keys``): ``coar/masks`` uint8 ``[m, |C|]`` and ``coar/margins`` float32
``[m, n]`` grow by chunks (resizable, chunked datasets); ``coar/labels``, ``coar/base_margins``,
``coar/example_indices`` ``[n]``; after the regression ``coar/weights`` ``[n, |C|]`` and
``coar/bias`` ``[n]``; after the evaluation the ``coar/eval/*`` arrays. The ``npeff`` group holds
the schema version, ``artifact = "coar_attributions"``, ``n_written`` (masks committed), the
``fingerprint`` (what a resume must match), the unit map and settings (JSON), the model identity.

:class:`AttributionsWriter` commits masks and margins chunk by chunk: data first, then the
``n_written`` counter, then a flush. Reopening an unfinished file truncates it to ``n_written``,
so a run killed at any point and rerun ends with the same file as an uninterrupted run.
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

ARTIFACT_COAR = "coar_attributions"


class AttributionsFileError(NpeffUserError):
    """A missing, foreign, truncated or mismatched attributions file."""


def _js(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _open_checked(path: Path, mode: str = "r") -> h5py.File:
    if not path.is_file():
        raise AttributionsFileError(f"no attributions file at {path}; run npeff-coar first")
    try:
        f = h5py.File(path, mode)
    except OSError as e:
        raise AttributionsFileError(f"{path} is not a readable HDF5 file: {e}") from e
    g = f.get(keys.NPEFF_GROUP)
    found = None if g is None else g.attrs.get(keys.ATTR_ARTIFACT)
    if found != ARTIFACT_COAR:
        f.close()
        raise AttributionsFileError(
            f"{path} is not a COAR attributions file (artifact {found!r}); it was not written by npeff-coar"
        )
    version = int(g.attrs.get(keys.ATTR_SCHEMA_VERSION, -1))
    if version > keys.SCHEMA_VERSION:
        f.close()
        raise AttributionsFileError(f"{path} has schema version {version}; upgrade npeff")
    return f


class AttributionsWriter:
    """Streams keep-masks ``[b, |C|]`` and margins ``[b, n]`` into ``attributions.h5``.

    A new file needs ``n_units``, ``labels`` int ``[n]``, ``base_margins`` ``[n]``; an existing
    one must have the same ``fingerprint`` and is truncated to its committed rows.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        fingerprint: dict,
        n_units: int,
        labels: np.ndarray,
        base_margins: np.ndarray,
        example_indices: np.ndarray | None = None,
        unit_map_json: str = "{}",
        settings: dict | None = None,
        metadata: dict | None = None,
        chunk_rows: int = 64,
    ):
        self.path = Path(path)
        fp = _js(fingerprint)
        n = int(len(labels))
        if self.path.exists():
            self.f = _open_checked(self.path, "a")
            g = self.f[keys.NPEFF_GROUP]
            if g.attrs.get(keys.ATTR_FINGERPRINT) != fp:
                old = g.attrs.get(keys.ATTR_FINGERPRINT)
                self.f.close()
                raise AttributionsFileError(
                    f"{self.path} exists but was written with other settings ({old} ≠ {fp}); "
                    "delete it or choose another output directory"
                )
            self._truncate(int(g.attrs[keys.ATTR_N_WRITTEN]))
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.f = h5py.File(self.path, "w")
        f = self.f
        f.create_dataset(
            keys.COAR_MASKS,
            shape=(0, n_units),
            maxshape=(None, n_units),
            dtype=np.uint8,
            chunks=(chunk_rows, n_units),
            compression="gzip",
            compression_opts=1,
        )
        f.create_dataset(
            keys.COAR_MARGINS,
            shape=(0, n),
            maxshape=(None, n),
            dtype=np.float32,
            chunks=(chunk_rows, n),
        )
        f.create_dataset(keys.COAR_LABELS, data=np.asarray(labels, dtype=np.int64))
        f.create_dataset(keys.COAR_BASE_MARGINS, data=np.asarray(base_margins, dtype=np.float32))
        ex = np.arange(n) if example_indices is None else np.asarray(example_indices)
        f.create_dataset(keys.COAR_EXAMPLE_INDICES, data=ex.astype(np.int64))
        g = f.create_group(keys.NPEFF_GROUP)
        g.attrs[keys.ATTR_SCHEMA_VERSION] = keys.SCHEMA_VERSION
        g.attrs[keys.ATTR_ARTIFACT] = ARTIFACT_COAR
        g.attrs[keys.ATTR_FINGERPRINT] = fp
        g.attrs[keys.ATTR_N_WRITTEN] = 0
        g.attrs[keys.ATTR_COMPLETE] = False
        g.attrs[keys.ATTR_COAR_FITTED] = False
        g.attrs[keys.ATTR_COAR_UNITS] = unit_map_json
        g.attrs[keys.ATTR_COAR_SETTINGS] = _js(settings or {})
        for k, v in (metadata or {}).items():
            attr = {"config": keys.ATTR_CONFIG, "model_identity": keys.ATTR_MODEL_IDENTITY}.get(k)
            if attr is None:
                raise KeyError(f"unknown metadata key {k!r}")
            g.attrs[attr] = _js(v)
        f.flush()

    @property
    def n_written(self) -> int:
        return int(self.f[keys.NPEFF_GROUP].attrs[keys.ATTR_N_WRITTEN])

    def _truncate(self, n: int) -> None:
        self.f[keys.COAR_MASKS].resize(n, axis=0)
        self.f[keys.COAR_MARGINS].resize(n, axis=0)
        g = self.f[keys.NPEFF_GROUP]
        g.attrs[keys.ATTR_COMPLETE] = False
        self.f.flush()

    def append(self, masks: np.ndarray, margins: np.ndarray) -> None:
        """Commit ``b`` masks (bool ``[b, |C|]``) and their margins (``[b, n]``)."""
        masks, margins = np.asarray(masks), np.asarray(margins, dtype=np.float32)
        b = masks.shape[0]
        if margins.shape[0] != b:
            raise NpeffUserError(f"{b} masks but {margins.shape[0]} margin rows")
        n0 = self.n_written
        for name, arr in ((keys.COAR_MASKS, masks.astype(np.uint8)), (keys.COAR_MARGINS, margins)):
            ds = self.f[name]
            ds.resize(n0 + b, axis=0)
            ds[n0 : n0 + b] = arr
        self.f.flush()  # data reaches the file before the counter that makes it count
        self.f[keys.NPEFF_GROUP].attrs[keys.ATTR_N_WRITTEN] = n0 + b
        self.f.flush()

    def finalize(self) -> None:
        """Mark the ablation dataset complete (more masks may be appended by a later run)."""
        self.f[keys.NPEFF_GROUP].attrs[keys.ATTR_COMPLETE] = True
        self.close()

    def close(self) -> None:
        if self.f.id.valid:
            self.f.flush()
            self.f.close()

    def __enter__(self) -> AttributionsWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_progress(path: str | os.PathLike) -> tuple[int, bool]:
    """``(masks committed, complete)`` of an attributions file; ``(0, False)`` if absent."""
    path = Path(path)
    if not path.exists():
        return 0, False
    with _open_checked(path) as f:
        g = f[keys.NPEFF_GROUP]
        return int(g.attrs[keys.ATTR_N_WRITTEN]), bool(g.attrs[keys.ATTR_COMPLETE])


def read_header(path: str | os.PathLike) -> dict:
    """Sizes and metadata without the big arrays: ``n_masks``, ``n_units``, ``n_examples``,
    ``fingerprint``, ``settings``, ``unit_map_json``, ``model_identity``, ``config``, flags."""
    path = Path(path)
    with _open_checked(path) as f:
        g = f[keys.NPEFF_GROUP]
        n_written = int(g.attrs[keys.ATTR_N_WRITTEN])
        if f[keys.COAR_MASKS].shape[0] < n_written or f[keys.COAR_MARGINS].shape[0] < n_written:
            raise AttributionsFileError(
                f"{path} is truncated below its {n_written} committed masks"
            )
        return {
            "n_masks": n_written,
            "n_units": int(f[keys.COAR_MASKS].shape[1]),
            "n_examples": int(f[keys.COAR_MARGINS].shape[1]),
            "complete": bool(g.attrs[keys.ATTR_COMPLETE]),
            "fitted": bool(g.attrs.get(keys.ATTR_COAR_FITTED, False)),
            "fingerprint": json.loads(g.attrs[keys.ATTR_FINGERPRINT]),
            "settings": json.loads(g.attrs[keys.ATTR_COAR_SETTINGS]),
            "unit_map_json": str(g.attrs[keys.ATTR_COAR_UNITS]),
            "model_identity": json.loads(g.attrs.get(keys.ATTR_MODEL_IDENTITY, "{}")),
            "config": json.loads(g.attrs.get(keys.ATTR_CONFIG, "{}")),
        }


def read_ablations(
    path: str | os.PathLike, start: int = 0, stop: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Committed masks bool ``[s, |C|]`` and margins float32 ``[s, n]`` for rows ``start:stop``.

    Asking for more rows than the file holds is an error (not a silent cut).
    """
    path = Path(path)
    with _open_checked(path) as f:
        n = int(f[keys.NPEFF_GROUP].attrs[keys.ATTR_N_WRITTEN])
        stop = n if stop is None else int(stop)
        if stop > n or start < 0 or start > stop:
            raise AttributionsFileError(
                f"requested masks {start}:{stop} but {path} holds {n}; run npeff-coar with "
                f"coar.n_masks>={stop} to add masks, or ask for fewer"
            )
        return f[keys.COAR_MASKS][start:stop].astype(bool), f[keys.COAR_MARGINS][start:stop]


def read_examples(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """``labels``, ``base_margins``, ``example_indices`` (each ``[n]``)."""
    with _open_checked(Path(path)) as f:
        return {
            "labels": f[keys.COAR_LABELS][...],
            "base_margins": f[keys.COAR_BASE_MARGINS][...],
            "example_indices": f[keys.COAR_EXAMPLE_INDICES][...],
        }


def _replace(f: h5py.File, name: str, data: np.ndarray) -> None:
    if name in f:
        del f[name]
    f.create_dataset(name, data=data)


def write_fit(
    path: str | os.PathLike, weights: np.ndarray, bias: np.ndarray, settings: dict
) -> None:
    """Store the regression's ``weights`` ``[n, |C|]`` and ``bias`` ``[n]``; merge ``settings``;
    the ``fitted`` flag is set last (after a flush), so a half-written fit never counts."""
    with _open_checked(Path(path), "a") as f:
        g = f[keys.NPEFF_GROUP]
        g.attrs[keys.ATTR_COAR_FITTED] = False
        f.flush()
        _replace(f, keys.COAR_WEIGHTS, np.asarray(weights, dtype=np.float32))
        _replace(f, keys.COAR_BIAS, np.asarray(bias, dtype=np.float32))
        merged = json.loads(g.attrs[keys.ATTR_COAR_SETTINGS]) | dict(settings)
        g.attrs[keys.ATTR_COAR_SETTINGS] = _js(merged)
        f.flush()
        g.attrs[keys.ATTR_COAR_FITTED] = True


def write_eval(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """Store evaluation arrays: ``alphas``, ``masks``, ``margins``, ``loo_margins``,
    ``gp_weights`` (any subset)."""
    names = {
        "alphas": keys.COAR_EVAL_ALPHAS,
        "masks": keys.COAR_EVAL_MASKS,
        "margins": keys.COAR_EVAL_MARGINS,
        "loo_margins": keys.COAR_LOO_MARGINS,
        "gp_weights": keys.COAR_GP_WEIGHTS,
    }
    with _open_checked(Path(path), "a") as f:
        for k, v in arrays.items():
            if k not in names:
                raise KeyError(f"unknown evaluation array {k!r}; known: {sorted(names)}")
            v = np.asarray(v)
            _replace(f, names[k], v.astype(np.uint8) if v.dtype == bool else v)


@dataclass
class AttributionsData:
    """Plain arrays of a fitted attributions file (see :func:`read_attributions`)."""

    weights: np.ndarray  # float32 [n, |C|]
    bias: np.ndarray  # float32 [n]
    labels: np.ndarray  # int64 [n]
    base_margins: np.ndarray  # float32 [n]
    example_indices: np.ndarray  # int64 [n]
    unit_map_json: str
    settings: dict
    model_identity: dict
    config: dict
    n_masks: int
    eval: dict = field(default_factory=dict)


def read_attributions(path: str | os.PathLike) -> AttributionsData:
    """The fitted attributions and metadata; fails clearly on an unfitted or foreign file."""
    path = Path(path)
    h = read_header(path)
    if not h["fitted"]:
        raise AttributionsFileError(
            f"{path} holds {h['n_masks']} ablations but no fitted attributions (the run stopped "
            "before the regression); rerun the same npeff-coar command to finish it"
        )
    with _open_checked(path) as f:
        ev = {}
        for k, name in (
            ("alphas", keys.COAR_EVAL_ALPHAS),
            ("masks", keys.COAR_EVAL_MASKS),
            ("margins", keys.COAR_EVAL_MARGINS),
            ("loo_margins", keys.COAR_LOO_MARGINS),
            ("gp_weights", keys.COAR_GP_WEIGHTS),
        ):
            if name in f:
                ev[k] = f[name][...]
        return AttributionsData(
            weights=f[keys.COAR_WEIGHTS][...],
            bias=f[keys.COAR_BIAS][...],
            labels=f[keys.COAR_LABELS][...],
            base_margins=f[keys.COAR_BASE_MARGINS][...],
            example_indices=f[keys.COAR_EXAMPLE_INDICES][...],
            unit_map_json=h["unit_map_json"],
            settings=h["settings"],
            model_identity=h["model_identity"],
            config=h["config"],
            n_masks=h["n_masks"],
            eval=ev,
        )
