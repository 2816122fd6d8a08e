"""NPEFF components against the mechanism of a group network.

* :func:`neuron_owner`: which hidden neuron owns each flat parameter of a ``GroupMLP`` (its row
  of ``hidden.weight``, ``hidden.bias`` entry and column of ``unembed.weight``; the shared
  embeddings and the unembedding bias belong to none).
* :func:`component_neuron_mass`: per component, its pseudo-Fisher mass per neuron (LRM: the
  squared entries of g_j; D-NPEFF: the entries of h_j) summed over the neuron's parameters
  (:func:`npeff.models.units.mass_on_units`, as the NPEFF↔COAR comparison's unit shares).
* :func:`irrep_purity`: the share of each row's mass on the neurons of its dominant irrep, next
  to the same with the neurons' irrep labels shuffled. Any ``[rows, neurons]`` mass works here, so
  COAR's top units per example can be read the same way.
* :func:`coset_purity`: for each component's top-k examples, the largest share that lies in one
  left coset of x or one right coset of y of a circuit's stabiliser, next to the same for the
  top-k of shuffled coefficients.
"""

from __future__ import annotations

import numpy as np

from npeff.analysis.controls import shuffled_control
from npeff.analysis.top_examples import top_indices
from npeff.errors import NpeffUserError
from npeff.groups.core import Group
from npeff.groups.neurons import irrep_mass
from npeff.models.simple import GROUP_HIDDEN_BIAS, GROUP_HIDDEN_WEIGHT, GROUP_UNEMBED_WEIGHT
from npeff.models.units import mass_on_units, unit_membership


def neuron_owner(layout, n_neurons: int) -> np.ndarray:
    """int ``[n_parameters]``: owning neuron of each flat parameter (-1: shared)."""
    owner = np.full(int(layout.n_parameters), -1, dtype=np.int64)
    for name, shape, off in zip(layout.names, layout.shapes, layout.offsets):
        size = int(np.prod(shape)) if shape else 1
        if name == GROUP_HIDDEN_WEIGHT:  # [H, 2D] row-major: row i = neuron i
            owner[off : off + size] = np.repeat(np.arange(shape[0]), shape[1])
        elif name == GROUP_HIDDEN_BIAS:
            owner[off : off + size] = np.arange(shape[0])
        elif name == GROUP_UNEMBED_WEIGHT:  # [N, H]: column i = neuron i
            owner[off : off + size] = np.tile(np.arange(shape[1]), shape[0])
    if (owner >= n_neurons).any():
        raise NpeffUserError("the parameter layout does not match the network's hidden width")
    return owner


def component_neuron_mass(decomposition, n_neurons: int) -> np.ndarray:
    """float ``[r, H]``: per component, pseudo-Fisher mass per neuron (‖g_j‖² or h_j entries)."""
    if decomposition.layout is None:
        raise NpeffUserError("the decomposition has no parameter layout: cannot map it to neurons")
    owner_all = neuron_owner(decomposition.layout, n_neurons)
    cols = np.asarray(decomposition.new_to_old_col_indices)
    owner = owner_all[cols]
    if decomposition.kind == "lrm" and decomposition.G is None:
        raise NpeffUserError("the LRM decomposition stores no G: cannot map it to neurons")
    vectors = decomposition.G if decomposition.kind == "lrm" else decomposition.H
    member = unit_membership(owner, n_neurons)
    return mass_on_units(vectors, member, decomposition.kind, share=False)


def irrep_purity(
    neuron_mass: np.ndarray,
    neuron_irrep: np.ndarray,
    n_irreps: int,
    live: np.ndarray | None = None,
    n_shuffles: int = 20,
    seed: int = 0,
) -> dict:
    """Per row of ``neuron_mass`` ``[r, H]``: dominant irrep and the share of mass on it; the mean
    next to ``n_shuffles`` controls with the live neurons' irrep labels permuted."""
    labels = np.asarray(neuron_irrep).copy()
    if live is not None:
        labels[~np.asarray(live)] = -1
    shares = irrep_mass(neuron_mass, labels, n_irreps)
    purity = shares.max(axis=1)
    # the live neurons' irrep labels permuted among themselves (dead neurons keep -1)
    control = shuffled_control(
        lambda perm: float(irrep_mass(neuron_mass, labels[perm], n_irreps).max(axis=1).mean()),
        labels.size,
        n_shuffles,
        seed,
        observed=float(purity.mean()) if len(purity) else float("nan"),
        movable=labels >= 0,
    )
    return {
        "per_row_irrep": shares.argmax(axis=1).tolist(),
        "per_row_purity": purity.tolist(),
        "mean_purity": control.observed,
        "shuffled_mean_purity": _or_nan(control.mean()),
        "shuffled_mean_purity_max": _or_nan(control.max()),
        "n_shuffles": n_shuffles,
    }


def _or_nan(x: float | None) -> float:
    return float("nan") if x is None else float(x)


def _top_purity(group: Group, x, y, top: np.ndarray, stabilisers) -> np.ndarray:
    """float ``[r]``: per row of ``top`` (example indices ``[r, k]``), the largest share of its
    examples in one left coset of x or one right coset of y, over the given subgroup pairs."""
    out = np.zeros(top.shape[0])
    for sl, sr in stabilisers:
        for labels, v in ((group.left_cosets(sl), x), (group.right_cosets(sr), y)):
            if len(labels) and labels.max() == 0:
                continue  # the whole group: one coset, says nothing
            lab = labels[v[top]]  # [r, k]
            for r in range(top.shape[0]):
                out[r] = max(out[r], np.bincount(lab[r]).max() / top.shape[1])
    return out


def coset_purity(
    group: Group,
    x: np.ndarray,
    y: np.ndarray,
    W: np.ndarray,
    stabilisers: list[tuple[np.ndarray, np.ndarray]],
    top_k: int = 16,
    n_shuffles: int = 20,
    seed: int = 0,
) -> dict:
    """Coset purity of each component's top-k examples (W ``[n, r]``, inputs x, y ``[n]``) for
    the circuits' (left, right) stabiliser pairs, with shuffled-coefficient controls."""
    W = np.asarray(W)
    k = min(int(top_k), W.shape[0])
    top = top_indices(W, k)  # [r, k]
    pur = _top_purity(group, x, y, top, stabilisers)
    # example i gets the coefficients of example perm[i]: top examples of random content
    control = shuffled_control(
        lambda perm: float(_top_purity(group, x, y, top_indices(W[perm], k), stabilisers).mean()),
        W.shape[0],
        n_shuffles,
        seed,
        observed=float(pur.mean()) if len(pur) else float("nan"),
    )
    chance = 0.0
    for sl, sr in stabilisers:
        chance = max(chance, len(sl) / group.order, len(sr) / group.order)
    return {
        "top_k": k,
        "per_component": pur.tolist(),
        "mean_purity": control.observed,
        "shuffled_mean_purity": _or_nan(control.mean()),
        "n_shuffles": n_shuffles,
        "largest_coset_share": chance,
    }
