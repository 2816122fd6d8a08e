"""ρ-set circuits: neurons that are (approximately) group translates of one prototype.

The group G×G acts on neurons by ``(g, h)·(l, r, u) = (l(g⁻¹·), r(·h⁻¹), u(g⁻¹·h⁻¹))``; the sum of
a neuron's whole orbit is exactly bi-equivariant (logit(z|x,y) depends on x⁻¹zy⁻¹ only), which is
the ρ-set circuit of Wu et al. (seed-systems.md §2.3) written without coordinates: the orbit of
the ρ-set vectors (a, b, c) is the orbit of the neuron, the stabiliser of a the left stabiliser
of l, and the neuron is constant on the cosets of its stabilisers.

:func:`find_circuits` groups the live neurons of each irrep greedily: the largest unassigned
neuron is a prototype; every other neuron j of that irrep is aligned to it by the translation
(g_j, h_j) minimising ‖l_j − l_p(g⁻¹·)‖² and ‖r_j − r_p(·h⁻¹)‖², and joins when the relative
residual (with u) is below ``tol``. The prototype is the average of the aligned members,
symmetrised over its (approximate) left and right stabilisers S_L, S_R so that it is exactly
invariant; its orbit is indexed by the left cosets gS_L and the right cosets S_R h.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from npeff.groups.core import Group


@dataclass
class Circuit:
    """One circuit: member neurons, their translations, and the symmetrised prototype.

    members: int ``[m]`` neuron indices. g, h: int ``[m]`` aligning translations (neuron j ≈
    (g_j, h_j)·prototype). irrep: index. proto_l/r/u: float ``[N]``, exactly invariant under
    S_L / S_R. left_stab, right_stab: sorted subgroup elements. left_reps / right_reps: one
    representative per left coset gS_L / right coset S_R h. slot_l / slot_r: int ``[m]``, each
    member's orbit element (coset index of g_j / h_j). residual: float ``[m]`` relative error.
    """

    irrep: int
    members: np.ndarray
    g: np.ndarray
    h: np.ndarray
    residual: np.ndarray
    proto_l: np.ndarray
    proto_r: np.ndarray
    proto_u: np.ndarray
    left_stab: np.ndarray
    right_stab: np.ndarray
    left_reps: np.ndarray
    right_reps: np.ndarray
    slot_l: np.ndarray
    slot_r: np.ndarray
    extra: dict = field(default_factory=dict)

    @property
    def orbit_size(self) -> int:
        return len(self.left_reps) * len(self.right_reps)

    @property
    def coverage(self) -> float:
        """Share of the orbit's elements that some member neuron sits on."""
        slots = set(zip(self.slot_l.tolist(), self.slot_r.tolist()))
        return len(slots) / self.orbit_size

    def summary(self) -> dict:
        return {
            "irrep": int(self.irrep),
            "n_neurons": int(len(self.members)),
            "orbit_size": self.orbit_size,
            "coverage": self.coverage,
            "left_stabiliser_order": int(len(self.left_stab)),
            "right_stabiliser_order": int(len(self.right_stab)),
            "median_residual": float(np.median(self.residual)),
        }


def left_translates(group: Group, v: np.ndarray) -> np.ndarray:
    """``[N(g), N(x)]``: v(g⁻¹ x) for every g."""
    return v[group.table[group.inverses[:, None], np.arange(group.order)[None, :]]]


def right_translates(group: Group, v: np.ndarray) -> np.ndarray:
    """``[N(h), N(y)]``: v(y h⁻¹) for every h."""
    return v[group.table[np.arange(group.order)[None, :], group.inverses[:, None]]]


def two_sided(group: Group, v: np.ndarray, g: int, h: int) -> np.ndarray:
    """``[N]``: z ↦ v(g⁻¹ z h⁻¹)."""
    t = group.table
    return v[t[t[group.inverses[g], np.arange(group.order)], group.inverses[h]]]


def two_sided_many(group: Group, v: np.ndarray, g: np.ndarray, h: np.ndarray) -> np.ndarray:
    """``[m, N]``: row k is z ↦ v(g_k⁻¹ z h_k⁻¹)."""
    t, inv = group.table, group.inverses
    z = np.arange(group.order)
    return v[t[t[inv[g][:, None], z[None, :]], inv[h][:, None]]]


def _best_translation(trans: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For translates ``[N, N]`` and targets ``[N, k]``: (argmin_g ‖trans[g] − t‖², min)."""
    d = (trans**2).sum(1)[:, None] + (targets**2).sum(0)[None, :] - 2 * trans @ targets
    idx = d.argmin(axis=0)
    return idx, d[idx, np.arange(targets.shape[1])]


def _stabiliser(group: Group, v: np.ndarray, side: str, tol: float) -> np.ndarray:
    trans = left_translates(group, v) if side == "left" else right_translates(group, v)
    c = v - v.mean()
    scale = max(float((c**2).sum()), 1e-300)
    cand = np.nonzero(((trans - v[None]) ** 2).sum(1) <= tol * scale)[0]
    h = group.subgroup(cand)
    if len(h) > len(cand):  # the near-invariances are not closed: keep none
        return np.array([0])
    return h


def _symmetrise(group: Group, lv, r, u, sl: np.ndarray, sr: np.ndarray):
    t, inv = group.table, group.inverses
    x = np.arange(group.order)
    il = t[inv[sl][:, None], x[None, :]]  # [|S_L|, N]: s⁻¹ x
    ir = t[x[None, :], inv[sr][:, None]]  # [|S_R|, N]: y q⁻¹
    lh = lv[il].mean(0)
    rh = r[ir].mean(0)
    # the mean of u(s⁻¹ z q⁻¹) over S_L × S_R, as the mean over S_L of the mean over S_R
    uh = u[ir].mean(0)[il].mean(0)
    return lh, rh, uh


def find_circuits(
    group: Group,
    left: np.ndarray,
    right: np.ndarray,
    unembed: np.ndarray,
    neuron_irrep: np.ndarray,
    live: np.ndarray,
    tol: float = 0.3,
    stab_tol: float = 0.02,
) -> list[Circuit]:
    """Greedy circuits over the live neurons of each irrep (see the module doc).

    left/right/unembed: float ``[N, H]`` (balanced: see :func:`balance`). neuron_irrep: int
    ``[H]``. live: bool ``[H]``. Returns the circuits, largest first."""
    norms = (left**2).sum(0) + (right**2).sum(0) + (unembed**2).sum(0)
    assigned = ~live.copy()
    out: list[Circuit] = []
    for p in np.argsort(-norms):
        if assigned[p]:
            continue
        cand = np.nonzero(~assigned & (neuron_irrep == neuron_irrep[p]))[0]
        gl, dl = _best_translation(left_translates(group, left[:, p]), left[:, cand])
        hr, dr = _best_translation(right_translates(group, right[:, p]), right[:, cand])
        du = ((unembed[:, cand].T - two_sided_many(group, unembed[:, p], gl, hr)) ** 2).sum(1)
        rel = (dl + dr + du) / np.maximum(norms[cand], 1e-300)
        ok = rel <= tol
        ok[cand == p] = True
        members, g, h, res = cand[ok], gl[ok], hr[ok], rel[ok]
        assigned[members] = True
        # aligned average: l_j(g_j x), r_j(y h_j), u_j(g_j z h_j) ≈ the prototype's
        t = group.table
        x = np.arange(group.order)
        gx = t[g[:, None], x[None, :]]  # [m, N]: g_j x
        pl = left[gx, members[:, None]].mean(0)
        pr = right[t[x[None, :], h[:, None]], members[:, None]].mean(0)
        pu = unembed[t[gx, h[:, None]], members[:, None]].mean(0)
        sl = _stabiliser(group, pl, "left", stab_tol)
        sr = _stabiliser(group, pr, "right", stab_tol)
        pl, pr, pu = _symmetrise(group, pl, pr, pu, sl, sr)
        lc, rc = group.left_cosets(sl), group.right_cosets(sr)
        lreps = np.unique(lc, return_index=True)[1]  # first element of each coset 0, 1, …
        rreps = np.unique(rc, return_index=True)[1]
        out.append(
            Circuit(
                int(neuron_irrep[p]),
                members,
                g,
                h,
                res,
                pl,
                pr,
                pu,
                sl,
                sr,
                lreps,
                rreps,
                lc[g],
                rc[h],
            )
        )
    out.sort(key=lambda c: -len(c.members))
    return out


def balance(left: np.ndarray, right: np.ndarray, unembed: np.ndarray):
    """Rescale each neuron by λ (l, r ← λ l, λ r; u ← u/λ; ReLU is positively homogeneous, so the
    network's function is unchanged) to equal input and output norms. Returns new arrays."""
    a = np.sqrt((left**2).sum(0) + (right**2).sum(0))
    b = np.sqrt((unembed**2).sum(0))
    lam = np.where((a > 0) & (b > 0), np.sqrt(b / np.maximum(a, 1e-300)), 1.0)
    return left * lam, right * lam, unembed / lam
