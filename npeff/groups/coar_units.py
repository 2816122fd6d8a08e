"""COAR's top units per example read against the irreps (issue 13, "the same for COAR").

For fitted COAR attributions over a group network's hidden neurons (``npeff-coar
experiment=coar_group``: units ``hidden.weight`` at neuron granularity), each example's top-k
units by |attribution| carry mass |w| on their neurons; the example's irrep purity is the share of
that mass on one irrep (:func:`npeff.groups.components.irrep_purity`), next to the same with the
live neurons' irrep labels shuffled. Only the public ``npeff.coar`` API is used.
"""

from __future__ import annotations

import numpy as np

from npeff.analysis.top_examples import top_indices
from npeff.errors import NpeffUserError
from npeff.models.simple import GROUP_HIDDEN_WEIGHT


def unit_neurons(attributions, n_neurons: int) -> np.ndarray:
    """int ``[|C|]``: the hidden neuron of each COAR unit. Fails clearly unless the units are the
    group network's ``hidden.weight`` neurons."""
    try:
        dim, index = attributions.units.param_units(GROUP_HIDDEN_WEIGHT)
    except KeyError as e:
        raise NpeffUserError(
            f"the COAR attributions in {attributions.path} have no units on hidden.weight: compute "
            "them on the group network's neurons (npeff-coar experiment=coar_group)"
        ) from e
    index = np.asarray(index)
    if dim != 0 or len(index) != n_neurons:
        raise NpeffUserError(
            f"the COAR units in {attributions.path} are not the {n_neurons} hidden neurons "
            f"(hidden.weight dim {dim}, {len(index)} rows)"
        )
    out = np.full(attributions.n_units, -1, dtype=np.int64)
    rows = np.nonzero(index >= 0)[0]
    out[index[rows]] = rows
    if (out < 0).any():
        raise NpeffUserError(
            f"{int((out < 0).sum())} COAR units in {attributions.path} are not single hidden "
            "neurons: use units [{pattern: hidden.weight, granularity: neuron}]"
        )
    return out


def top_unit_mass(attributions, n_neurons: int, top_k: int) -> np.ndarray:
    """float ``[n_examples, H]``: |attribution| of each example's top-k units, on their neurons."""
    w = np.abs(np.asarray(attributions.weights, dtype=np.float64))  # [n, |C|]
    neuron = unit_neurons(attributions, n_neurons)
    k = max(1, min(int(top_k), w.shape[1]))
    top = top_indices(w.T, k)  # [n, k]: ties at the k-th value resolved by the lower unit
    rows = np.arange(w.shape[0])[:, None]
    mass = np.zeros((w.shape[0], n_neurons))
    np.add.at(mass, (np.broadcast_to(rows, top.shape), neuron[top]), w[rows, top])
    return mass


def coar_irrep_purity(
    attributions,
    neuron_irrep: np.ndarray,
    n_irreps: int,
    live: np.ndarray,
    top_k: int = 5,
    n_shuffles: int = 20,
    seed: int = 0,
) -> dict:
    """Per example, the irrep purity of its top-k COAR units (with the shuffled control)."""
    from npeff.groups.components import irrep_purity

    mass = top_unit_mass(attributions, len(neuron_irrep), top_k)
    out = irrep_purity(mass, neuron_irrep, n_irreps, live, n_shuffles, seed)
    out["top_k"] = int(top_k)
    out["n_examples"] = int(mass.shape[0])
    return out
