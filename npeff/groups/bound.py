"""A compact, sound lower bound on a group network's accuracy (seed-systems.md §2.4).

1. Idealised model: every circuit (:mod:`npeff.groups.circuits`) becomes its prototype's whole
   orbit, each orbit element with the same coefficient α_C = (members)/(orbit size); circuits
   with an orbit larger than ``max_orbit`` or coverage below ``min_coverage`` are dropped (their
   neurons stay "unexplained"). Its bias is the constant mean of the real bias. The ideal model
   is exactly bi-equivariant: ideal(z | x, y) = F(x⁻¹ z y⁻¹), F = ideal(· | e, e).
2. Its margin M = F(e) − max_{w≠e} F(w) is computed once.
3. Per input, the gap real − ideal is a sum of terms c_k(x, y) · v_k(z); the margin of the real
   model is at least M − Σ_k |c_k| osc(v_k) (osc = max − min over z), or, per group of terms,
   M − 2 max_z ‖v(z)‖₂ ‖c‖₂ (Cauchy–Schwarz), whichever is smaller:
     * member j on orbit element o: osc(u_j − û_o) ReLU(pre_o) + osc(u_j) |ReLU(pre_j) − ReLU(pre_o)|
       (both activations are one lookup and one add per input: O(1) per neuron);
     * orbit element o of circuit C holding m_o members: |m_o − α_C| osc(û) ReLU(pre_o);
     * unexplained neuron j: osc(u_j) ReLU(pre_j(x, y));
     * the bias: osc(b).
4. The bound is the share of inputs with M − E(x, y) > slack. Each certified input has its correct
   logit strictly above every other, so the bound never exceeds the real accuracy.

Cost: O(N (H + Σ orbit)) once, then O(H + Σ orbit) per input, against O(N H) per input for the
brute-force logits of all N² inputs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from npeff.groups.circuits import Circuit, balance, find_circuits, two_sided_many
from npeff.groups.core import Group
from npeff.groups.network import FoldedNetwork, brute_force_accuracy


@dataclass
class BoundResult:
    bound: float  # share of the N² inputs certified correct
    ideal_margin: float
    n_circuits_used: int
    n_neurons_explained: int
    n_neurons_live: int
    seconds: float
    seconds_circuits: float
    median_error: float = float("nan")  # per-input gap bound E(x, y), vs ideal_margin
    min_error: float = float("nan")
    brute_force_accuracy: float | None = None
    brute_force_seconds: float | None = None

    @property
    def sound(self) -> bool | None:
        if self.brute_force_accuracy is None:
            return None
        return self.bound <= self.brute_force_accuracy + 1e-12

    def summary(self) -> dict:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["sound"] = self.sound
        if self.brute_force_seconds:
            out["time_ratio"] = self.seconds / self.brute_force_seconds
        return out


def _osc(v: np.ndarray, axis: int = 0) -> np.ndarray:
    return v.max(axis=axis) - v.min(axis=axis)


class _Terms:
    """Vectors v_j = ``vectors[:, j]`` ``[N, m]``; :meth:`bound` gives, per input b, a bound on
    max_z Σ_j c_bj (v_j(z) − v_j(z*)) for |c_bj| = ``coef[b, j]``: the smaller of
    Σ_j |c_bj| osc(v_j) and 2 max_z ‖v(z)‖₂ ‖c_b‖₂ (Cauchy–Schwarz on each logit)."""

    def __init__(self, vectors: np.ndarray):
        self.osc = _osc(vectors) if vectors.shape[1] else np.zeros(0)
        self.row = 2.0 * float(np.sqrt((vectors**2).sum(axis=1)).max()) if vectors.size else 0.0

    def bound(self, coef: np.ndarray) -> np.ndarray:
        if coef.shape[1] == 0:
            return np.zeros(coef.shape[0])
        return np.minimum(coef @ self.osc, self.row * np.sqrt((coef**2).sum(axis=1)))


def ideal_parts(group: Group, circuits: list[Circuit]):
    """Per used circuit: (Lhat [N, |O_L|], Rhat [N, |O_R|], Uhat_grid, α) with
    Lhat[x, a] = l̂(g_a⁻¹ x), Rhat[y, b] = r̂(y h_b⁻¹)."""
    t, inv = group.table, group.inverses
    x = np.arange(group.order)
    parts = []
    for c in circuits:
        lh = np.stack([c.proto_l[t[inv[g], x]] for g in c.left_reps], axis=1)
        rh = np.stack([c.proto_r[t[x, inv[h]]] for h in c.right_reps], axis=1)
        alpha = len(c.members) / c.orbit_size
        parts.append((lh, rh, alpha))
    return parts


def ideal_logits_at_identity(group: Group, circuits: list[Circuit], parts, bias_mean: float):
    """F(w) = ideal(w | e, e), float ``[N]``."""
    t, inv = group.table, group.inverses
    w = np.arange(group.order)
    f = np.full(group.order, bias_mean, dtype=np.float64)
    for c, (lh, rh, alpha) in zip(circuits, parts):
        act = np.maximum(lh[0][:, None] + rh[0][None, :], 0.0)  # [|O_L|, |O_R|] at x = y = e
        for a, g in enumerate(c.left_reps):
            left = t[inv[g], w]
            for b, h in enumerate(c.right_reps):
                if act[a, b] > 0:
                    f += alpha * act[a, b] * c.proto_u[t[left, inv[h]]]
    return f


def compact_bound(
    group: Group,
    net: FoldedNetwork,
    neuron_irrep: np.ndarray,
    live: np.ndarray,
    tol: float = 0.3,
    max_orbit: int | None = None,
    min_coverage: float = 0.5,
    chunk: int = 2048,
    circuits: list[Circuit] | None = None,
) -> tuple[BoundResult, list[Circuit]]:
    """The accuracy lower bound of ``net`` (see the module doc) and the circuits it used."""
    t0 = time.perf_counter()
    n = group.order
    L, R, U = balance(net.left.numpy(), net.right.numpy(), net.unembed.numpy())
    b = net.bias.numpy()
    if circuits is None:
        circuits = find_circuits(group, L, R, U, neuron_irrep, live, tol=tol)
    t_circ = time.perf_counter() - t0
    max_orbit = max_orbit or 4 * net.n_neurons
    used = [c for c in circuits if c.orbit_size <= max_orbit and c.coverage >= min_coverage]
    explained = np.zeros(net.n_neurons, dtype=bool)
    for c in used:
        explained[c.members] = True
    parts = ideal_parts(group, used)
    F = ideal_logits_at_identity(group, used, parts, float(b.mean()))
    others = np.delete(F, 0)
    margin = float(F[0] - others.max()) if len(others) else float("inf")
    scale = float(np.abs(F).max()) + 1.0
    slack = 1e-9 * scale

    # per-input error terms, vectorised over inputs
    x_all = np.arange(n * n) // n
    y_all = np.arange(n * n) % n
    err_const = float(_osc(b - b.mean()))
    # unexplained live neurons
    dead = ~live
    unexp = np.nonzero(~explained & ~dead)[0]
    certified = 0
    errs: list[np.ndarray] = []
    if margin > slack:
        # per circuit, once: |m_o − α| weights, û on each member's orbit element, Δu
        pre = []
        for c, (_lh, _rh, alpha) in zip(used, parts):
            mult = np.zeros((len(c.left_reps), len(c.right_reps)))
            np.add.at(mult, (c.slot_l, c.slot_r), 1.0)
            uo = two_sided_many(group, c.proto_u, c.left_reps[c.slot_l], c.right_reps[c.slot_r])
            dU = U[:, c.members] - uo.T  # [N, m]
            pre.append(
                (np.abs(mult - alpha) * _osc(c.proto_u), _Terms(dU), _Terms(U[:, c.members]))
            )
        terms_unexp = _Terms(U[:, unexp])
        for a in range(0, n * n, chunk):
            xs, ys = x_all[a : a + chunk], y_all[a : a + chunk]
            err = np.full(len(xs), err_const)
            if len(unexp):
                err += terms_unexp.bound(np.maximum(L[xs][:, unexp] + R[ys][:, unexp], 0.0))
            for c, (lh, rh, _alpha), (w_mult, t_du, t_u) in zip(used, parts, pre):
                pre_o = np.maximum(lh[xs][:, :, None] + rh[ys][:, None, :], 0.0)  # [B, OL, OR]
                err += np.einsum("bij,ij->b", pre_o, w_mult)
                act = pre_o[:, c.slot_l, c.slot_r]  # [B, m] ideal activations of the members
                real = np.maximum(L[xs][:, c.members] + R[ys][:, c.members], 0.0)
                err += t_du.bound(act) + t_u.bound(np.abs(real - act))
            certified += int((margin - err > slack).sum())
            errs.append(err)
    seconds = time.perf_counter() - t0
    err_all = np.concatenate(errs) if errs else np.array([np.nan])
    res = BoundResult(
        bound=certified / (n * n),
        ideal_margin=margin,
        n_circuits_used=len(used),
        n_neurons_explained=int(explained.sum()),
        n_neurons_live=int(live.sum()),
        seconds=seconds,
        seconds_circuits=t_circ,
        median_error=float(np.median(err_all)),
        min_error=float(np.min(err_all)),
    )
    return res, circuits


def bound_vs_brute_force(
    group: Group, net: FoldedNetwork, neuron_irrep: np.ndarray, live: np.ndarray, **kw
) -> tuple[BoundResult, list[Circuit]]:
    """:func:`compact_bound`, then the brute-force accuracy over all N² inputs and its time."""
    res, circuits = compact_bound(group, net, neuron_irrep, live, **kw)
    t0 = time.perf_counter()
    with torch.no_grad():
        acc = brute_force_accuracy(net, group.table)
    res.brute_force_seconds = time.perf_counter() - t0
    res.brute_force_accuracy = acc
    return res, circuits
