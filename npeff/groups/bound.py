"""A compact, sound lower bound on a group network's accuracy (seed-systems.md §2.4).

The proof has two parts, timed separately:

* **Explanation** (proof search, :func:`explain`): the neurons' irreps, the ρ-set circuits
  (:mod:`npeff.groups.circuits`) and the ideal model fitted to them (:mod:`npeff.groups.ideal`),
  exactly bi-equivariant: ideal(z | x, y) = F(x⁻¹ z y⁻¹).
* **Verifier** (the proof's checking part, :func:`verify`): given the explanation and the
  weights, which inputs are certified correct. Nothing it concludes depends on the explanation
  being good: any ideal model gives a sound bound, a bad one a weak bound.

The verifier. In the ideal model's gauge (the same function), per input (x, y) with correct
class z* = x·y, with a_j = ReLU(l_j(x) + r_j(y)) the real and â_o the ideal activations,

    real(z) = ideal(z) + b(z) + Δ(z),   Δ(z) = Σ_j U_j(z) a_j − Σ_C α_C Σ_o Û_o(z) â_o.

Every neuron j (circuit member or not) and every circuit is given a set of irreps S (its
largest, and each other one holding ≥ ``fourier_share`` of its unembedding's energy; a circuit's
members and orbit share one set). Δ splits exactly into

* a **Fourier part**: per irrep i, y_i = Q_iᵀ Δ (Q_i ``[N, d_i²]`` an orthonormal basis of the
  irrep's matrix-entry functions), computed exactly per input from the a and â of the neurons and
  orbits whose set holds i (d_i² (|J_i| + |O_i|) per input); Δ_i(z) = Q_i(z)·y_i;
* an **out-of-irrep part** U⊥ = U − Σ_{i∈S} Q_i Q_iᵀ U (small), in blocks k of columns V_k and
  coefficients c_k: per circuit, members j on orbit elements o_j, ``act`` U⊥_j (a_j − â_{o_j}),
  ``unembed`` (U⊥_j − Û⊥_{o_j}) â_{o_j}, ``mult`` (m_o − α) Û⊥_o â_o for orbit elements holding
  m_o ≠ α members; and ``exact`` U⊥_j a_j for the other neurons that can fire.

With w = x⁻¹ z y⁻¹ and m(w) = F(e) − F(w) the ideal margin against w (computed once, at (e, e)),

    real(z*) − real(z) ≥ m(w) − (b(z) − b(z*)) − Σ_i (Δ_i(z) − Δ_i(z*)) − Σ_k D_k(z*, z) ‖c_k‖

with D_k(z*, z) = ‖V_k(z) − V_k(z*)‖₂ (Cauchy–Schwarz per block, once per class pair). An input
is certified when this is > 0 for every z ≠ z*. A first pass decides most inputs in O(Σd² + K)
each from min_w m(w), max_z b(z) − b(z*) and, per block, the smaller of two bounds on
max_{z≠z*} of its term: Cauchy–Schwarz against max_z D(z*, z), or (its maximum over z) − (its
exact value at z*), the maximum being √(d/N) ‖C_i‖_* for a real-type irrep (C_i = y_i as a d×d
matrix; ‖ρ(z)‖_op = 1) and ‖·‖ · max_z ‖V(z)‖ otherwise. The rest get the per-class pass above
(O(N (Σd² + K)) each, against O(N H) for the real logits). Inputs are processed grouped by z*, so
every per-class table is a contiguous slice.

Every certified input has its correct logit strictly above every other (float64, with a slack),
so the bound never exceeds the real accuracy; ``npeff-groups`` and the tests check it against
brute force input by input.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from npeff.groups.circuits import Circuit, balance, find_circuits
from npeff.groups.core import Group
from npeff.groups.ideal import IdealModel, fit_ideal
from npeff.groups.network import FoldedNetwork, all_logits


@dataclass
class BoundResult:
    bound: float  # share of the N² inputs certified correct
    ideal_margin: float  # min_w m(w)
    n_circuits_used: int
    n_neurons_explained: int
    n_neurons_live: int
    seconds: float  # explanation + verifier
    seconds_circuits: float  # circuit search
    seconds_explanation: float = float("nan")  # circuits + ideal model fit
    seconds_verifier: float = float("nan")  # the proof's checking part (see verify)
    n_blocks: int = 0
    n_exact_neurons: int = 0  # neurons outside the circuits, added exactly
    frac_first_pass: float = float("nan")  # share of inputs certified by the O(K) pass
    median_error: float = float("nan")  # per input: Σ_k max_z D_k ‖c_k‖ + exact part (O(K))
    median_error_over_margin: float = float("nan")
    median_slack_over_margin: float = float("nan")  # per input min_z (margin − gap) / margin
    error_breakdown: dict | None = None  # Certificate.breakdown
    brute_force_accuracy: float | None = None
    brute_force_seconds: float | None = None
    n_certified_wrong: int | None = None  # certified inputs the real model gets wrong (0)

    @property
    def sound(self) -> bool | None:
        if self.brute_force_accuracy is None:
            return None
        return self.bound <= self.brute_force_accuracy + 1e-12 and not self.n_certified_wrong

    def summary(self) -> dict:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["sound"] = self.sound
        if self.brute_force_seconds:
            out["time_ratio"] = self.seconds / self.brute_force_seconds
            out["time_ratio_verifier"] = self.seconds_verifier / self.brute_force_seconds
        return out


@dataclass
class Certificate:
    """Per input (row x·N + y): ``certified`` bool ``[N²]``; ``slack`` float ``[N²]``, the
    certified lower bound on (real margin) − 0 divided by the ideal margin (−inf where the first
    pass failed and the second was not needed to decide, never above the true value);
    ``first_pass`` bool ``[N²]``; ``error`` float ``[N²]`` the first pass's gap bound."""

    certified: np.ndarray
    first_pass: np.ndarray
    error: np.ndarray
    slack: np.ndarray
    margin: float
    n_blocks: int
    n_exact: int
    breakdown: dict  # per term kind: the median over inputs of its first-pass bound / margin


def _pair_norms(v: torch.Tensor) -> torch.Tensor:
    """``[N, N]``: ‖v[z] − v[z*]‖₂ at [z*, z] for v ``[N, n]``."""
    sq = (v**2).sum(1)
    d = sq[:, None] + sq[None, :] - 2.0 * v @ v.T
    return d.clamp_min_(0.0).sqrt_()


def fourier_bases(group: Group) -> list[tuple[torch.Tensor, bool]]:
    """Per irrep: (orthonormal basis ``[N, d²/κ]`` of its matrix-entry functions, whether it is
    the scaled matrix entries √(d/N) ρ(z)_ab themselves, so that a coefficient vector reshaped
    to d×d is C with Q(z)·y = √(d/N) tr(Cᵀ ρ(z))). Real-type irreps get the latter (Schur
    orthogonality), the others :func:`npeff.groups.irreps.irrep_bases`. A property of the group,
    built once (cached on it)."""
    cached = getattr(group, "_fourier_bases", None)
    if cached is not None:
        return cached
    from npeff.groups.irreps import irrep_bases, irreps

    out = []
    n = group.order
    for ir, q in zip(irreps(group), irrep_bases(group)):
        if ir.kappa == 1:
            m = torch.as_tensor(ir.matrices.reshape(n, -1) * np.sqrt(ir.dim / n))
            if torch.allclose(m.T @ m, torch.eye(m.shape[1], dtype=m.dtype), atol=1e-9):
                out.append((m, True))
                continue
        out.append((torch.as_tensor(q, dtype=torch.float64), False))
    group._fourier_bases = out
    return out


@dataclass
class _Plan:
    """What the verifier computes once per model (amortised over the N² inputs).

    Fourier part, per used irrep i: J[i] the neurons, A[i] = Q_iᵀ U[:, J_i] ``[d², |J_i|]``,
    orbit_cols[i] the orbit columns (into the circuits' orbits side by side), B[i] = α Q_iᵀ Û[:, O_i];
    Q ``[N, Σd²]`` the bases side by side. Blocks: columns p into ``[act | ideal act]`` with
    coefficients (c = sa·a[pa] + sb·â[pb]); S ``[P, K]`` column → block; V ``[N, P]`` the
    out-of-irrep columns; D ``[N(z*), K, N(z)]``."""

    irreps: list[int]
    real_type: list[bool]
    dims: list[int]
    J: list[torch.Tensor]
    A: list[torch.Tensor]
    orbit_cols: list[torch.Tensor]
    B: list[torch.Tensor]
    Q: torch.Tensor
    pa: torch.Tensor
    sa: torch.Tensor
    pb: torch.Tensor
    sb: torch.Tensor
    S: torch.Tensor
    V: torch.Tensor
    D: torch.Tensor
    kinds: list[str]
    exact: np.ndarray


def _plan(
    group: Group, U: torch.Tensor, ideal: IdealModel, block_size: int, live, share: float
) -> _Plan:
    f64 = torch.float64
    n, H = U.shape
    fb = fourier_bases(group)
    bases = [q for q, _ in fb]
    r = len(bases)
    energy = torch.stack([((q.T @ U) ** 2).sum(0) for q in bases], 1)  # [H, r]
    energy[:, 0] = 0.0  # the constant part cancels in every logit difference
    frac = energy / energy.sum(1, keepdim=True).clamp_min(1e-300)
    sets = (frac >= share) | (frac == frac.max(1, keepdim=True).values)  # [H, r]
    sets[:, 0] = False
    uh = [torch.from_numpy(ic.uh).reshape(n, -1) for ic in ideal.circuits]  # [N, |O_C|]
    offs = np.cumsum([0] + [u.shape[1] for u in uh])
    explained = np.zeros(H, dtype=bool)
    circ_sets = []
    for ic in ideal.circuits:
        explained[ic.members] = True
        cs = sets[ic.members].any(0)
        sets[ic.members] = cs
        circ_sets.append(cs)
    exact = np.nonzero(~explained & live)[0]
    active = explained | np.isin(np.arange(H), exact)
    used = [i for i in range(1, r) if bool(sets[active, i].any())]
    U_perp = U.clone()
    uh_all = torch.cat(uh, 1) if uh else torch.zeros(n, 0, dtype=f64)
    uh_perp = uh_all.clone()
    alpha_cols = (
        torch.cat(
            [torch.full((u.shape[1],), ic.alpha, dtype=f64) for u, ic in zip(uh, ideal.circuits)]
        )
        if uh
        else torch.zeros(0, dtype=f64)
    )
    J, A, orb, B = [], [], [], []
    for i in used:
        q = bases[i]
        j = torch.as_tensor(np.nonzero(active & sets[:, i].numpy())[0])
        J.append(j)
        A.append(q.T @ U[:, j])
        U_perp[:, j] -= q @ A[-1]
        o = torch.as_tensor(
            np.concatenate(
                [np.arange(offs[c], offs[c + 1]) for c in range(len(uh)) if circ_sets[c][i]]
                or [np.zeros(0, dtype=np.int64)]
            )
        )
        orb.append(o)
        proj = q.T @ uh_all[:, o]
        uh_perp[:, o] -= q @ proj
        B.append(proj * alpha_cols[o])
    Q = torch.cat([bases[i] for i in used], 1) if used else torch.zeros(n, 0, dtype=f64)
    # out-of-irrep blocks: column specs (pa, sa, pb, sb) and V columns
    pa, sa, pb, sb, cols, blk, kinds = [], [], [], [], [], [], []

    def add_block(kind, a_idx, a_s, b_idx, b_s, v):
        k = len(kinds)
        kinds.append(kind)
        pa.append(a_idx)
        sa.append(a_s)
        pb.append(b_idx)
        sb.append(b_s)
        cols.append(v)
        blk.append(np.full(len(a_idx), k))

    for ci, ic in enumerate(ideal.circuits):
        c = ic.circuit
        slot = offs[ci] + c.slot_l * ic.mult.shape[1] + c.slot_r  # into uh_all
        order = np.lexsort((c.slot_r, c.slot_l))
        for a in range(0, len(order), block_size):
            idx = order[a : a + block_size]
            mem, sl = c.members[idx], slot[idx]
            one, zero = np.ones(len(idx)), np.zeros(len(idx))
            add_block("act", mem, one, sl, -one, U_perp[:, mem])
            add_block("unembed", mem, zero, sl, one, U_perp[:, mem] - uh_perp[:, sl])
        off = np.nonzero(np.abs(ic.mult - ic.alpha).reshape(-1) > 1e-12)[0]
        coef = (ic.mult - ic.alpha).reshape(-1)
        for a in range(0, len(off), block_size):
            idx = off[a : a + block_size]
            z0 = np.zeros(len(idx), dtype=np.int64)
            add_block("mult", z0, z0 * 0.0, offs[ci] + idx, coef[idx], uh_perp[:, offs[ci] + idx])
    for a in range(0, len(exact), block_size):
        idx = exact[a : a + block_size]
        dummy = np.full(len(idx), offs[-1])  # the zero column after the orbits
        add_block("exact", idx, np.ones(len(idx)), dummy, np.zeros(len(idx)), U_perp[:, idx])
    K = len(kinds)
    cat = lambda xs, dt: torch.as_tensor(np.concatenate(xs) if xs else np.zeros(0), dtype=dt)  # noqa: E731
    V = torch.cat(cols, 1) if cols else torch.zeros(n, 0, dtype=f64)
    blk_all = cat(blk, torch.long)
    S = torch.zeros(len(blk_all), K, dtype=f64)
    S[torch.arange(len(blk_all)), blk_all] = 1.0
    D = (
        torch.stack([_pair_norms(v) for v in cols], 1)  # [z*, K, z]
        if cols
        else torch.zeros(n, 0, n, dtype=f64)
    )
    return _Plan(
        used,
        [fb[i][1] for i in used],
        [int(round(np.sqrt(bases[i].shape[1]))) for i in used],
        J,
        A,
        orb,
        B,
        Q,
        cat(pa, torch.long),
        cat(sa, f64),
        cat(pb, torch.long),
        cat(sb, f64),
        S,
        V,
        D,
        kinds,
        exact,
    )


def verify(
    group: Group,
    left: np.ndarray,
    right: np.ndarray,
    unembed: np.ndarray,
    bias: np.ndarray,
    ideal: IdealModel,
    block_size: int = 8,
    chunk: int = 2048,
    fourier_share: float = 0.01,
) -> Certificate:
    """Which inputs are certified correct (see the module doc). left/right/unembed: float
    ``[N, H]`` in the ideal model's gauge; bias float ``[N]``; ``chunk``: inputs per step."""
    f64 = torch.float64
    n = group.order
    L, R, U = (torch.as_tensor(np.ascontiguousarray(a), dtype=f64) for a in (left, right, unembed))
    b = torch.as_tensor(bias, dtype=f64)
    tab = torch.as_tensor(group.table, dtype=torch.long)
    inv = torch.as_tensor(group.inverses, dtype=torch.long)
    m_w = torch.as_tensor(ideal.margins(), dtype=f64)  # [N], +inf at e
    margin = float(m_w.min())
    live = (((L.max(0).values + R.max(0).values) > 0) & (U.abs().max(0).values > 0)).numpy()
    p = _plan(group, U, ideal, block_size, live, fourier_share)
    K, n_f = len(p.kinds), len(p.irreps)
    eye = torch.eye(n, dtype=torch.bool)
    Dmax = p.D.masked_fill(eye[:, None, :], 0.0).amax(2)  # [z*, K]
    Vmax = (p.V**2) @ p.S  # [z, K]: ‖V_k(z)‖²
    Vmax = Vmax.amax(0).sqrt()  # [K]
    DQ = [
        _pair_norms(p.Q[:, s : s + d * d])
        for s, d in zip(np.cumsum([0] + [d * d for d in p.dims]), p.dims)
    ]
    DQmax = (
        torch.stack([d.masked_fill(eye, 0.0).amax(1) for d in DQ], 1)
        if n_f
        else torch.zeros(n, 0, dtype=f64)
    )  # [z*, n_f]
    Qrow = [
        p.Q[:, s : s + d * d].norm(dim=1).max()
        for s, d in zip(np.cumsum([0] + [d * d for d in p.dims]), p.dims)
    ]
    dbias = b[None, :] - b[:, None]  # [z*, z]: b(z) − b(z*)
    bmax = dbias.masked_fill(eye, -torch.inf).amax(1)  # [z*]
    scale = float(np.abs(ideal.F).max() + b.abs().max() + 1.0)
    slack = 1e-6 * scale
    lhs = [torch.from_numpy(ic.lh) for ic in ideal.circuits]
    rhs = [torch.from_numpy(ic.rh) for ic in ideal.circuits]
    xinv_z = tab[inv[:, None], torch.arange(n)[None, :]]  # [x, z]: x⁻¹ z
    qoff = np.cumsum([0] + [d * d for d in p.dims])
    # y = Q_iᵀ (U a − ideal) for every irrep at once: [H, Σd²] and [Σ|O| + 1, Σd²] (zero rows
    # for the neurons and orbit columns outside an irrep's set)
    n_orb = sum(ic.orbit_size for ic in ideal.circuits)
    A_cat = torch.zeros(L.shape[1], int(qoff[-1]), dtype=f64)
    B_cat = torch.zeros(n_orb + 1, int(qoff[-1]), dtype=f64)
    for k in range(n_f):
        A_cat[p.J[k], qoff[k] : qoff[k + 1]] = p.A[k].T
        if len(p.orbit_cols[k]):
            B_cat[p.orbit_cols[k], qoff[k] : qoff[k + 1]] = p.B[k].T
    names = ("fourier", "act", "unembed", "mult", "exact")
    kind_ix = {kd: [k for k, s in enumerate(p.kinds) if s == kd] for kd in names[1:]}
    parts: dict[str, list] = {kd: [] for kd in (*names, "bias")}

    certified = torch.zeros(n, n, dtype=torch.bool)  # [z*, x] first, rows later
    first = torch.zeros(n, n, dtype=torch.bool)
    error = torch.empty(n, n, dtype=f64)
    lower_out = torch.empty(n, n, dtype=f64)
    xs_all = torch.arange(n)
    zc = max(1, chunk // n)  # z* values per step
    for z0 in range(0, n, zc):
        zb = torch.arange(z0, min(n, z0 + zc))  # [Z]
        Z = len(zb)
        ys = tab[inv[xs_all][None, :], zb[:, None]]  # [Z, x]: y = x⁻¹ z*
        xf, yf = xs_all.repeat(Z), ys.reshape(-1)  # [Z·N]
        act = (L.index_select(0, xf) + R.index_select(0, yf)).clamp_min_(0.0)  # [M, H]
        iact = torch.cat(
            [
                (lh.index_select(0, xf)[:, :, None] + rh.index_select(0, yf)[:, None, :])
                .clamp_min_(0.0)
                .flatten(1)
                for lh, rh in zip(lhs, rhs)
            ]
            + [act[:, :1] * 0.0],
            1,
        )  # [M, Σ|O| + 1]: the ideal activations and a zero column
        M = len(xf)
        # Fourier part: y_i [M, d²]; its first-pass bound per irrep
        bf = []
        zrep = zb.repeat_interleave(n)  # [M] z* of each row
        ycat = act @ A_cat - iact @ B_cat  # [M, Σd²]: every y_i side by side
        for k in range(n_f):
            y = ycat[:, qoff[k] : qoff[k + 1]]
            at_star = (y.view(Z, n, -1) * p.Q[zb, None, qoff[k] : qoff[k + 1]]).sum(2).view(-1)
            nrm = (y * y).sum(1).sqrt()
            if p.real_type[k]:  # ‖C‖_* ≤ min(Σ column norms, Σ row norms)
                d = p.dims[k]
                sq = (y * y).view(M, d, d)
                nuc = torch.minimum(sq.sum(1).sqrt().sum(1), sq.sum(2).sqrt().sum(1))
                top = nuc * np.sqrt(d / n)
            else:
                top = nrm * Qrow[k]
            bf.append(torch.minimum(nrm * DQmax[zrep, k], top - at_star))
        bfs = torch.stack(bf, 1).sum(1) if n_f else torch.zeros(M, dtype=f64)
        # out-of-irrep blocks
        c = (
            act.index_select(1, p.pa) * p.sa + iact.index_select(1, p.pb) * p.sb
            if len(p.pa)
            else act[:, :0]
        )  # [M, P]
        nrm_k = ((c * c) @ p.S).sqrt_()  # [M, K]
        at_star = (c.view(Z, n, -1) * p.V[zb][:, None, :]).view(M, -1) @ p.S  # V_k(z*)·c_k
        bk = torch.minimum(nrm_k * Dmax[zrep], nrm_k * Vmax - at_star)
        parts["fourier"].append(bfs)
        for kd, ix in kind_ix.items():
            parts[kd].append(bk[:, ix].sum(1))
        parts["bias"].append(bmax[zrep])
        err = bfs + bk.sum(1)
        lower = margin - bmax[zrep] - err
        ok = lower > slack
        error[zb] = err.view(Z, n)
        first[zb] = ok.view(Z, n)
        lower_out[zb] = lower.view(Z, n)
        if bool(ok.all()):
            certified[zb] = True
            continue
        # per-class pass for the z* with a failure: [Z', x, z]
        zsel = torch.nonzero(~ok.view(Z, n).all(1))[:, 0]
        rows = (zsel[:, None] * n + xs_all[None, :]).reshape(-1)  # rows of this step
        zs = zb[zsel]
        w = tab[xinv_z[None, :, :], inv[ys[zsel]][:, :, None]]  # [Z', x, z]: x⁻¹ z y⁻¹
        g = m_w[w] - dbias[zs][:, None, :]
        yc = ycat[rows].view(len(zs), n, -1)
        g -= torch.bmm(yc, p.Q.T.expand(len(zs), -1, -1)) - (yc * p.Q[zs][:, None, :]).sum(
            2, keepdim=True
        )
        if K:
            g -= torch.bmm(nrm_k[rows].view(len(zs), n, K), p.D[zs])
        g[torch.arange(len(zs))[:, None], xs_all[None, :], zs[:, None]] = torch.inf
        gmin = g.min(2).values  # [Z', x]
        cz = ok.view(Z, n).clone()
        cz[zsel] |= gmin > slack
        certified[zb] = cz
        lz = lower.view(Z, n).clone()
        lz[zsel] = torch.maximum(lz[zsel], gmin)
        lower_out[zb] = lz
    denom = margin if margin > 0 else 1.0  # ratios to the ideal margin (1 if it is ≤ 0)
    # [z*, x] → rows x·N + y, y = x⁻¹ z*
    ys_full = tab[inv[xs_all][None, :], xs_all[:, None]]  # [z*, x]
    rows = (xs_all[None, :] * n + ys_full).reshape(-1)
    out = {}
    for name, t in (("c", certified), ("f", first), ("e", error), ("l", lower_out)):
        flat = torch.empty(n * n, dtype=t.dtype)
        flat[rows] = t.reshape(-1)
        out[name] = flat.numpy()
    return Certificate(
        out["c"],
        out["f"],
        out["e"],
        out["l"] / denom,
        margin,
        K + n_f,
        len(p.exact),
        {kd: float(torch.cat(v).median()) / denom for kd, v in parts.items()},
    )


def explain(
    group: Group,
    net: FoldedNetwork,
    neuron_irrep: np.ndarray,
    live: np.ndarray,
    tol: float = 0.3,
    max_orbit: int | None = None,
    min_coverage: float = 0.5,
    circuits: list[Circuit] | None = None,
):
    """The explanation: (circuits found, ideal model of the used ones, gauged L, R, U, circuit
    search seconds)."""
    t0 = time.perf_counter()
    L, R, U = balance(net.left.numpy(), net.right.numpy(), net.unembed.numpy())
    if circuits is None:
        circuits = find_circuits(group, L, R, U, neuron_irrep, live, tol=tol)
    t_circ = time.perf_counter() - t0
    max_orbit = max_orbit or 4 * net.n_neurons
    used = [c for c in circuits if c.orbit_size <= max_orbit and c.coverage >= min_coverage]
    ideal = fit_ideal(group, L, R, U, used)
    lam = ideal.gauge
    return circuits, ideal, (L * lam, R * lam, U / lam), t_circ


def compact_bound(
    group: Group,
    net: FoldedNetwork,
    neuron_irrep: np.ndarray,
    live: np.ndarray,
    tol: float = 0.3,
    max_orbit: int | None = None,
    min_coverage: float = 0.5,
    chunk: int = 4096,
    circuits: list[Circuit] | None = None,
    block_size: int = 8,
    fourier_share: float = 0.01,
) -> tuple[BoundResult, list[Circuit], Certificate]:
    """The accuracy lower bound of ``net`` (see the module doc), the circuits and the
    per-input certificate."""
    t0 = time.perf_counter()
    circuits, ideal, (L, R, U), t_circ = explain(
        group, net, neuron_irrep, live, tol, max_orbit, min_coverage, circuits
    )
    t1 = time.perf_counter()
    cert = verify(group, L, R, U, net.bias.numpy(), ideal, block_size, chunk, fourier_share)
    t2 = time.perf_counter()
    margin = cert.margin
    n_expl = int(sum(len(ic.members) for ic in ideal.circuits))
    res = BoundResult(
        bound=float(cert.certified.mean()),
        ideal_margin=margin,
        n_circuits_used=len(ideal.circuits),
        n_neurons_explained=n_expl,
        n_neurons_live=int(live.sum()),
        seconds=t2 - t0,
        seconds_circuits=t_circ,
        seconds_explanation=t1 - t0,
        seconds_verifier=t2 - t1,
        n_blocks=cert.n_blocks,
        n_exact_neurons=cert.n_exact,
        frac_first_pass=float(cert.first_pass.mean()),
        median_error=float(np.median(cert.error)),
        median_error_over_margin=float(np.median(cert.error) / margin) if margin > 0 else np.inf,
        median_slack_over_margin=float(np.median(cert.slack)),
        error_breakdown=cert.breakdown,
    )
    return res, circuits, cert


@torch.no_grad()
def correct_mask(net: FoldedNetwork, table) -> np.ndarray:
    """bool ``[N²]``: the real model's argmax is x·y (ties count as wrong), float32 logits."""
    logits = all_logits(net)
    t = torch.as_tensor(table).reshape(-1)
    right = logits.gather(1, t[:, None])[:, 0]
    logits.scatter_(1, t[:, None], -float("inf"))
    return (right > logits.max(1).values).numpy()


def bound_vs_brute_force(
    group: Group, net: FoldedNetwork, neuron_irrep: np.ndarray, live: np.ndarray, **kw
) -> tuple[BoundResult, list[Circuit]]:
    """:func:`compact_bound`, then the brute-force accuracy over all N² inputs (timed: every
    logit, the argmax) and, input by input, that no certified input is wrong."""
    from npeff.groups.network import brute_force_accuracy

    res, circuits, cert = compact_bound(group, net, neuron_irrep, live, **kw)
    t0 = time.perf_counter()
    acc = brute_force_accuracy(net, group.table)
    res.brute_force_seconds = time.perf_counter() - t0
    res.brute_force_accuracy = acc
    res.n_certified_wrong = int((cert.certified & ~correct_mask(net, group.table)).sum())
    return res, circuits
