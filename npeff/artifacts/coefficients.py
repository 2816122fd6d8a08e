"""A coefficient file (``fit/coeffs.h5``: W of new examples) joined to its components (G / H).

A coefficient file may store no components (``fit.write_components=false``); its metadata's
``source.decomposition`` then names the decomposition file they are in.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from npeff.artifacts.decomposition import Decomposition, load_decomposition
from npeff.errors import NpeffUserError


def source_decomposition(dec):
    """The decomposition a coefficient file was fitted with (its metadata's source), or None."""
    src = (dec.metadata or {}).get("source")
    path = src.get("decomposition") if isinstance(src, dict) else None
    if path and Path(path).is_file():
        return load_decomposition(path)
    return None


def with_components(
    dec: Decomposition,
    decomposition: str | Path | None = None,
    coeffs_name: str = "the coefficient file",
):
    """``dec`` (a coefficient file's content) with its G/H: its own, those of ``decomposition``
    (a decomposition file) when given, else those of the decomposition it was fitted with.

    Returns (the decomposition with W ``[n, r]`` from the coefficient file and G ``[r, m']`` / H
    of the component file, the component file's content or None when ``dec`` had its own).
    """
    comp = None
    if decomposition:
        comp = load_decomposition(decomposition)
    elif (dec.kind == "lrm" and dec.G is None) or (dec.kind == "diag" and dec.H is None):
        comp = source_decomposition(dec)
        if comp is None:
            raise NpeffUserError(
                f"{coeffs_name} stores no components (fit.write_components=false) and its "
                "source decomposition is not found; pass inputs.decomposition=<decomposition.h5>"
            )
    if comp is None:
        return dec, None
    if comp.kind != dec.kind or comp.n_components != dec.n_components:
        raise NpeffUserError(
            f"the decomposition ({comp.kind}, r={comp.n_components}) does not match the "
            f"coefficients ({dec.kind}, r={dec.n_components})"
        )
    if comp.n_parameters != dec.n_parameters:
        raise NpeffUserError("the decomposition and the coefficients come from different models")
    merged = dataclasses.replace(
        dec,
        G=comp.G,
        H=comp.H,
        new_to_old_col_indices=comp.new_to_old_col_indices,
        layout=dec.layout or comp.layout,
    )
    return merged, comp
