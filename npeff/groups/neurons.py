"""Per-neuron analysis of a group network: irrep spectra and coset concentration.

Irrep spectrum: a neuron's left, right and unembedding functions (columns of L, R, U, each a
vector over the N group elements) are centred and projected on the span of each nontrivial
irrep's matrix entries (:func:`npeff.groups.irreps.irrep_bases`); the share of the squared norm in
irrep ρ is its variance share. The three functions' shares are pooled by norm.

Coset concentration: the share of a neuron's left (right) function's variance explained by its
means over the left cosets xH (right cosets Hy) of a subgroup H; the neuron is concentrated on the
largest H whose share is >= a threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from npeff.groups.core import Group
from npeff.groups.irreps import irrep_bases, irreps
from npeff.groups.network import FoldedNetwork


def variance_shares(group: Group, vectors: np.ndarray) -> np.ndarray:
    """float ``[k, n_irreps]``: share of each centred column of ``vectors`` ``[N, k]`` in each
    irrep's matrix-entry subspace (the trivial irrep's share is 0 after centring; rows sum to 1
    for nonconstant columns, to 0 for constant ones)."""
    v = np.asarray(vectors, dtype=np.float64)
    v = v - v.mean(axis=0, keepdims=True)
    total = (v**2).sum(axis=0)
    shares = np.stack([((q.T @ v) ** 2).sum(axis=0) for q in irrep_bases(group)], axis=1)
    return np.where(total[:, None] > 0, shares / np.maximum(total[:, None], 1e-300), 0.0)


def _energy(group: Group, v: np.ndarray) -> np.ndarray:
    v = v - v.mean(axis=0, keepdims=True)
    return np.stack([((q.T @ v) ** 2).sum(axis=0) for q in irrep_bases(group)], axis=1)


@dataclass
class NeuronAnalysis:
    """Per-neuron results (H neurons, r irreps).

    shares_left/right/unembed/combined: float ``[H, r]``. irrep: int ``[H]`` (argmax combined
    share). purity: float ``[H]`` (that share). live: bool ``[H]`` (fires on some input and has a
    nonzero output). left_subgroup / right_subgroup: per neuron the order of the largest subgroup
    whose cosets it is concentrated on (1 = none), with its index in ``subgroups`` (-1 = none)
    and the explained share.
    """

    irrep_names: list[str]
    irrep_dims: list[int]
    shares_left: np.ndarray
    shares_right: np.ndarray
    shares_unembed: np.ndarray
    shares_combined: np.ndarray
    irrep: np.ndarray
    purity: np.ndarray
    live: np.ndarray
    left_subgroup: np.ndarray
    right_subgroup: np.ndarray
    left_subgroup_order: np.ndarray
    right_subgroup_order: np.ndarray
    left_coset_share: np.ndarray
    right_coset_share: np.ndarray

    def summary(self, threshold: float = 0.95) -> dict:
        live = self.live
        n_live = int(live.sum())
        counts = {
            name: int(((self.irrep == i) & live).sum()) for i, name in enumerate(self.irrep_names)
        }
        conc = live & ((self.left_subgroup_order > 1) | (self.right_subgroup_order > 1))
        return {
            "n_neurons": len(live),
            "n_live": n_live,
            "frac_live_ge_threshold_one_irrep": float((self.purity[live] >= threshold).mean())
            if n_live
            else float("nan"),
            "threshold": threshold,
            "median_purity": float(np.median(self.purity[live])) if n_live else float("nan"),
            "neurons_per_irrep": counts,
            "frac_live_coset_concentrated": float(conc.sum() / max(n_live, 1)),
        }


def coset_share(labels: np.ndarray, v: np.ndarray) -> np.ndarray:
    """float ``[k]``: share of each centred column of v ``[N, k]`` explained by the means over
    the classes in ``labels`` (int ``[N]``)."""
    v = v - v.mean(axis=0, keepdims=True)
    total = (v**2).sum(axis=0)
    n_cls = int(labels.max()) + 1
    onehot = np.zeros((len(labels), n_cls))
    onehot[np.arange(len(labels)), labels] = 1.0
    counts = onehot.sum(axis=0)
    means = (onehot.T @ v) / counts[:, None]
    explained = (counts[:, None] * means**2).sum(axis=0)
    return np.where(total > 0, explained / np.maximum(total, 1e-300), 1.0)


def concentration(
    group: Group, v: np.ndarray, subgroups: list[np.ndarray], side: str, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each column of v ``[N, k]``: (index into ``subgroups`` of the largest subgroup with
    coset share >= threshold or -1, its order (1 when none), its share)."""
    k = v.shape[1]
    best = np.full(k, -1)
    order = np.ones(k, dtype=np.int64)
    share = np.zeros(k)
    for i, h in enumerate(subgroups):  # subgroups are sorted by decreasing order
        labels = group.left_cosets(h) if side == "left" else group.right_cosets(h)
        s = coset_share(labels, v)
        take = (best < 0) & (s >= threshold)
        best[take], order[take], share[take] = i, len(h), s[take]
    return best, order, share


def analyze_neurons(
    group: Group,
    net: FoldedNetwork,
    threshold: float = 0.95,
    subgroups: list[np.ndarray] | None = None,
) -> NeuronAnalysis:
    """Irrep spectra and coset concentration of every hidden neuron of ``net``."""
    L, R, U = (t.numpy() for t in (net.left, net.right, net.unembed))
    el, er, eu = _energy(group, L), _energy(group, R), _energy(group, U)

    def norm(e):
        t = e.sum(axis=1, keepdims=True)
        return np.where(t > 0, e / np.maximum(t, 1e-300), 0.0)

    comb = norm(el + er + eu)
    fires = (L.max(axis=0) + R.max(axis=0)) > 0
    live = fires & (np.abs(U).max(axis=0) > 1e-6 * max(np.abs(U).max(), 1e-300))
    if subgroups is None:
        subgroups = group.subgroups() if group.order <= 200 else []
    lb, lo, ls = concentration(group, L, subgroups, "left", threshold)
    rb, ro, rs = concentration(group, R, subgroups, "right", threshold)
    reps = irreps(group)
    return NeuronAnalysis(
        irrep_names=[ir.name for ir in reps],
        irrep_dims=[ir.dim for ir in reps],
        shares_left=norm(el),
        shares_right=norm(er),
        shares_unembed=norm(eu),
        shares_combined=comb,
        irrep=comb.argmax(axis=1),
        purity=comb.max(axis=1),
        live=live,
        left_subgroup=lb,
        right_subgroup=rb,
        left_subgroup_order=lo,
        right_subgroup_order=ro,
        left_coset_share=ls,
        right_coset_share=rs,
    )


def irrep_mass(neuron_mass: np.ndarray, neuron_irrep: np.ndarray, n_irreps: int) -> np.ndarray:
    """float ``[r, n_irreps]``: per row (a component, an example set, …) of ``neuron_mass``
    ``[r, H]`` (nonnegative mass per neuron: NPEFF ‖g_j‖² per neuron, COAR top-unit weights, …)
    the share on the neurons of each irrep (``neuron_irrep`` int ``[H]``, -1 = no irrep/dead)."""
    m = np.asarray(neuron_mass, dtype=np.float64)
    out = np.zeros((m.shape[0], n_irreps))
    for i in range(n_irreps):
        out[:, i] = m[:, neuron_irrep == i].sum(axis=1)
    total = m.sum(axis=1, keepdims=True)
    return np.where(total > 0, out / np.maximum(total, 1e-300), 0.0)
