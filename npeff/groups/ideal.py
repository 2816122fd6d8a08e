"""The idealised (exactly bi-equivariant) model of a group network, fitted to its weights.

The explanation of Wu et al. (seed-systems.md §2.3–2.4): every ρ-set circuit
(:mod:`npeff.groups.circuits`) is replaced by the whole G×G orbit of one prototype neuron
(l̂, r̂, û), each orbit element with the same coefficient α = (members)/(orbit size):

    ideal(z | x, y) = Σ_C α_C Σ_{(a, b) ∈ O_C} û_C(g_a⁻¹ z h_b⁻¹) · ReLU(l̂_C(g_a⁻¹ x) + r̂_C(y h_b⁻¹))

which depends on x⁻¹ z y⁻¹ only. The prototype is the least-squares fit to the circuit's
members: member j, aligned by its translation (g_j, h_j), is l̃_j(x) = l_j(g_j x),
r̃_j(y) = r_j(y h_j), ũ_j(z) = u_j(g_j z h_j); each member may be rescaled by a gauge λ_j > 0
(l, r ← λ l, λ r; u ← u/λ: ReLU is positively homogeneous, the real network's function does not
change), and (l̂, r̂, û, λ) minimise

    Σ_j ‖λ_j l̃_j − l̂‖² + ‖λ_j r̃_j − r̂‖² + ‖ũ_j / λ_j − û‖²

over prototypes invariant under the circuit's stabilisers S_L, S_R (the projection on that
subspace is the average over S_L, S_R), by alternating the two closed-form steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from npeff.groups.circuits import Circuit
from npeff.groups.core import Group


@dataclass
class IdealCircuit:
    """One circuit of the ideal model (O_L = |left reps|, O_R = |right reps|, m members).

    lh: ``[N, O_L]`` l̂(g_a⁻¹ x). rh: ``[N, O_R]`` r̂(y h_b⁻¹). uh: ``[N, O_L, O_R]``
    û(g_a⁻¹ z h_b⁻¹). mult: ``[O_L, O_R]`` members per orbit element. alpha: the orbit's
    coefficient. members, slot_l, slot_r: int ``[m]`` (from the circuit)."""

    circuit: Circuit
    lh: np.ndarray
    rh: np.ndarray
    uh: np.ndarray
    mult: np.ndarray
    alpha: float

    @property
    def members(self) -> np.ndarray:
        return self.circuit.members

    @property
    def orbit_size(self) -> int:
        return int(self.mult.size)


@dataclass
class IdealModel:
    """The ideal model and the gauge it was fitted in.

    circuits: the used circuits. gauge: float ``[H]`` (1 outside the circuits): the real network
    written as (λ L, λ R, U/λ) has the same function. F: float ``[N]``, the ideal logits at
    (e, e) without a bias (ideal(z | x, y) = F(x⁻¹ z y⁻¹))."""

    circuits: list[IdealCircuit]
    gauge: np.ndarray
    F: np.ndarray

    def margins(self) -> np.ndarray:
        """float ``[N]``: m(w) = F(e) − F(w), +inf at w = e."""
        m = self.F[0] - self.F
        m[0] = np.inf
        return m


def _aligned(group: Group, L, R, U, c: Circuit):
    """Members' aligned functions l̃, r̃, ũ, each ``[m, N]``."""
    t = group.table
    x = np.arange(group.order)
    gx = t[c.g[:, None], x[None, :]]  # [m, N]: g_j x
    yh = t[x[None, :], c.h[:, None]]  # y h_j
    gzh = t[gx, c.h[:, None]]  # g_j z h_j
    j = c.members[:, None]
    return L[gx, j], R[yh, j], U[gzh, j]


def _project(group: Group, c: Circuit, lv, r, u):
    """Averages over S_L (left), S_R (right) and both (u): the orthogonal projection on the
    prototypes invariant under the stabilisers."""
    t, inv = group.table, group.inverses
    x = np.arange(group.order)
    il = t[inv[c.left_stab][:, None], x[None, :]]  # [|S_L|, N]: s⁻¹ x
    ir = t[x[None, :], inv[c.right_stab][:, None]]  # [|S_R|, N]: y q⁻¹
    # u(s⁻¹ z q⁻¹) averaged over S_L × S_R: over S_R first, then over S_L
    return lv[il].mean(0), r[ir].mean(0), u[ir].mean(0)[il].mean(0)


def _best_gauge(A, B, C, D) -> np.ndarray:
    """Per member, λ > 0 minimising λ²A − 2λB + C/λ² − 2D/λ (A, C > 0): the positive real
    root of A λ⁴ − B λ³ + D λ − C with the smallest objective."""
    out = np.ones(len(A))
    k = np.nonzero((A > 0) & (C > 0))[0]
    if not len(k):
        return out
    a, b, c, d = A[k], B[k], C[k], D[k]
    # the roots of λ⁴ − (B/A) λ³ + (D/A) λ − C/A: eigenvalues of the companion matrices, batched
    comp = np.zeros((len(k), 4, 4))
    comp[:, 0, :] = -np.stack([-b / a, np.zeros_like(a), d / a, -c / a], 1)
    comp[:, 1, 0] = comp[:, 2, 1] = comp[:, 3, 2] = 1.0
    roots = np.linalg.eigvals(comp)  # [k, 4]
    ok = (np.abs(roots.imag) < 1e-9 * np.abs(roots).max(1, keepdims=True)) & (roots.real > 0)
    lam = np.where(ok, roots.real, 1.0)
    f = lam**2 * a[:, None] - 2 * lam * b[:, None] + c[:, None] / lam**2 - 2 * d[:, None] / lam
    f = np.where(ok, f, np.inf)
    best = lam[np.arange(len(k)), f.argmin(1)]
    out[k] = np.where(ok.any(1), best, 1.0)
    return out


def fit_ideal(
    group: Group, L: np.ndarray, R: np.ndarray, U: np.ndarray, circuits: list[Circuit], n_iter=4
) -> IdealModel:
    """The ideal model of the used ``circuits`` fitted to L, R, U (float ``[N, H]``, balanced:
    :func:`npeff.groups.circuits.balance`); see the module doc."""
    t, inv = group.table, group.inverses
    n, H = L.shape
    gauge = np.ones(H)
    out: list[IdealCircuit] = []
    F = np.zeros(n)
    w = np.arange(n)
    for c in circuits:
        lt, rt, ut = _aligned(group, L, R, U, c)
        lam = np.ones(len(c.members))
        for _ in range(n_iter):
            pl, pr, pu = _project(
                group,
                c,
                (lam[:, None] * lt).mean(0),
                (lam[:, None] * rt).mean(0),
                (ut / lam[:, None]).mean(0),
            )
            lam = _best_gauge(
                (lt**2).sum(1) + (rt**2).sum(1), lt @ pl + rt @ pr, (ut**2).sum(1), ut @ pu
            )
        pl, pr, pu = _project(
            group,
            c,
            (lam[:, None] * lt).mean(0),
            (lam[:, None] * rt).mean(0),
            (ut / lam[:, None]).mean(0),
        )
        gauge[c.members] = lam
        lh = pl[t[inv[c.left_reps][None, :], w[:, None]]]  # [N, O_L]
        rh = pr[t[w[:, None], inv[c.right_reps][None, :]]]  # [N, O_R]
        left = t[inv[c.left_reps][None, :], w[:, None]]  # [N, O_L]: g_a⁻¹ z
        uh = pu[t[left[:, :, None], inv[c.right_reps][None, None, :]]]  # [N, O_L, O_R]
        mult = np.zeros((len(c.left_reps), len(c.right_reps)))
        np.add.at(mult, (c.slot_l, c.slot_r), 1.0)
        alpha = len(c.members) / mult.size
        act0 = np.maximum(lh[0][:, None] + rh[0][None, :], 0.0)
        F += alpha * np.einsum("zab,ab->z", uh, act0)
        out.append(IdealCircuit(c, lh, rh, uh, mult, alpha))
    return IdealModel(out, gauge, F)
