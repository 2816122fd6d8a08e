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

Every neuron j (circuit member or not) and every circuit is given a set of irreps S: for a
neuron outside the circuits its largest irrep and each other one holding ≥ ``fourier_share`` of
its unembedding's energy; for a circuit's members and orbit (one shared set) every irrep holding
≥ ``member_share`` (default 0: all of them; ``None``: as the other neurons). Δ splits exactly into

* a **Fourier part**: per irrep i, y_i = Q_iᵀ Δ (Q_i ``[N, d_i²]`` an orthonormal basis of the
  irrep's matrix-entry functions), computed exactly per input from the a and â of the neurons and
  orbits whose set holds i (one matmul for the members, one per circuit for its orbit, one per
  irrep for the other neurons); Δ_i(z) = Q_i(z)·y_i;
* an **out-of-irrep part** U⊥ = U − Σ_{i∈S} Q_i Q_iᵀ U (small), in blocks k of columns V_k and
  coefficients c_k: per circuit, members j on orbit elements o_j, ``act`` U⊥_j (a_j − â_{o_j}),
  ``unembed`` (U⊥_j − Û⊥_{o_j}) â_{o_j}, ``mult`` (m_o − α) Û⊥_o â_o for orbit elements holding
  m_o ≠ α members; and ``exact`` U⊥_j a_j for the other neurons that can fire. A piece whose
  largest possible contribution, max_{z*, z} D_k · max over inputs ‖c_k‖ (ReLU bounds from the
  weight tables), is ≤ 10⁻⁴ × the ideal margin is left out of the per-input work and that static
  bound charged to every input instead (with ``member_share`` 0 the members' U⊥ is their
  constant part, so ``act`` and ``unembed`` go).

With w = x⁻¹ z y⁻¹ and m(w) = F(e) − F(w) the ideal margin against w (computed once, at (e, e)),

    real(z*) − real(z) ≥ m(w) − (b(z) − b(z*)) − Σ_i (Δ_i(z) − Δ_i(z*)) − Σ_k D_k(z*, z) ‖c_k‖

with D_k(z*, z) = ‖V_k(z) − V_k(z*)‖₂ (Cauchy–Schwarz per block, once per class pair). An input
is certified when this is > 0 for every z ≠ z*. A first pass decides inputs in O(Σd² + K) each
from min_w m(w), max_z b(z) − b(z*) and, per block, the smaller of two bounds on max_{z≠z*} of
its term: Cauchy–Schwarz against max_z D(z*, z), or (its maximum over z) − (its exact value at
z*), the maximum being √(d/N) ‖C_i‖_* for a real-type irrep (C_i = y_i as a d×d matrix;
‖ρ(z)‖_op = 1; ‖C‖_* ≤ the smaller of its column-norm and row-norm sums) and ‖·‖ · max_z ‖V(z)‖
otherwise. When it certifies under half of the first step's inputs, its own terms are skipped
for the remaining inputs (a model it does not suit). The inputs it leaves get the per-class pass
above (:func:`class_pass`, O(N (Σd² + K)) each, against O(N H) for the real logits): one matmul
per step over the failing x of each z*, in **float32** with a proven bound on its rounding
error subtracted (the standard model of floating-point arithmetic, any summation order), so
that the float32 value never exceeds the exact one. Inputs are processed grouped by z*, so every
per-class table is a contiguous slice.

Cost (S5, width 128, one core, ``bench/group_bound.py``): the verifier is ~4-5× brute force
(one float32 matmul over all |G|² inputs), down from ~11× before this layout; what is left is
mostly the per-input Fourier coefficients and first-pass terms in float64. The paper's ~0.3 is
not reached.

Every certified input has its correct logit strictly above every other (float64 with a slack of
10⁻⁶ × the logit scale, and the float32 rounding bound), so the bound never exceeds the real
accuracy; ``npeff-groups``, ``bench/group_bound.py`` and the tests check it against brute force
input by input.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from npeff.errors import NpeffUserError
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
    median_error: float = float("nan")  # first-pass gap bound, median over the inputs it ran on
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
    ``first_pass`` bool ``[N²]``; ``error`` float ``[N²]`` the first pass's gap bound (NaN where
    its terms were skipped, see the module doc); ``breakdown`` over the inputs it ran on."""

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


def irrep_spread(group: Group, i: int) -> torch.Tensor:
    """``[N(z*)]``: max_{z ≠ z*} ‖Q_i(z) − Q_i(z*)‖₂ for irrep i's basis (:func:`fourier_bases`).
    A property of the group, built once per irrep (cached on it)."""
    cache = group.__dict__.setdefault("_irrep_spread", {})
    if i not in cache:
        q = fourier_bases(group)[i][0]
        eye = torch.eye(group.order, dtype=torch.bool)
        cache[i] = _pair_norms(q).masked_fill(eye, 0.0).amax(1)
    return cache[i]


def class_pairs(group: Group) -> torch.Tensor:
    """int ``[N(z*), N(x), N(z)]``: w = x⁻¹ z y⁻¹ with y = x⁻¹ z*, the ideal model's argument
    for class z on the input (x, y) with correct class z*. A property of the group, built once
    (cached on it)."""
    cached = getattr(group, "_class_pairs", None)
    if cached is not None:
        return cached
    n = group.order
    tab = torch.as_tensor(group.table, dtype=torch.long)
    inv = torch.as_tensor(group.inverses, dtype=torch.long)
    xinv_z = tab[inv[:, None], torch.arange(n)[None, :]]  # [x, z]: x⁻¹ z
    ys = tab[inv[None, :], torch.arange(n)[:, None]]  # [z*, x]: y = x⁻¹ z*
    out = tab[xinv_z[None, :, :], inv[ys][:, :, None]].contiguous()
    group._class_pairs = out
    return out


def group_tables(group: Group) -> None:
    """Build (and cache on ``group``) the verifier's tables that depend only on the group: the
    Fourier bases, the class pairs, each irrep's spread. Like the irreps, they are facts about
    the group shared by every model of a zoo, so ``npeff-groups`` builds them before it times
    any one model's proof."""
    for i in range(len(fourier_bases(group))):
        irrep_spread(group, i)
    class_pairs(group)


U32 = 2.0**-24  # unit roundoff of float32


def class_pass(
    base: torch.Tensor,
    fstar: torch.Tensor,
    coefs: list[torch.Tensor],
    tables: list[torch.Tensor],
    base_max: float,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``[Z', n]``: per input, a lower bound on min over z of

        G(z) = base[s, x, z] + fstar[s, x] − Σ_t coefs[t][s, x, :] · tables[t][s, :, z]

    for Z' groups s of n inputs x and N classes z. base float64 ``[Z', n, N]`` (+inf where a
    class is excluded), |base| ≤ ``base_max`` elsewhere; fstar float64 ``[Z', n]``; coefs[t]
    float64 ``[Z', n, c_t]``; tables[t] float64 ``[Z' or 1, c_t, N]``.

    In float64 it is min_z G(z) as computed. In float32 (half the memory traffic of the
    matmuls) the value computed is G's float32 evaluation g, and what is returned is
    min_z g(z) − E with, per input (a = all coefs side by side, β = max_z ‖all tables' column
    z‖₂, n_t = Σ_t c_t, T = len(tables), u = 2⁻²⁴, γ_k = k u / (1 − k u)),

        E = 1.01 · (γ_{n_t+2} + (T + 6) u) · (base_max + |fstar| + ‖a‖₂ β) + 1e-30 (n_t + 1),

    which bounds |g(z) − G(z)| under the standard model of floating-point arithmetic for any
    summation order (Higham, Accuracy and Stability, §3.1): each inner product over c_t terms of
    float32-rounded factors errs by ≤ γ_{c_t+2} Σ |a||b| ≤ γ_{c_t+2} ‖a_t‖ ‖b_t(z)‖ (and
    Σ_t of those ≤ γ_{n_t+2} ‖a‖ β by Cauchy–Schwarz); casting base and fstar and every one of
    the T + 2 additions into the accumulator errs by ≤ u · (a bound on the accumulator,
    base_max + |fstar| + ‖a‖ β); 1.01 covers the second-order terms and the last summand
    underflow. So the result is never above min_z G(z)."""
    if dtype == torch.float64:
        g = base + fstar[:, :, None]
        for a, t in zip(coefs, tables):
            g.baddbmm_(a, t.expand(len(a), -1, -1), alpha=-1.0)
        return g.min(2).values
    if dtype != torch.float32 or torch.get_float32_matmul_precision() != "highest":
        raise NpeffUserError(
            "class_pass: dtype must be float32 or float64, and float32 matmuls at the "
            "'highest' precision (torch.set_float32_matmul_precision('highest'))"
        )
    g = base.to(dtype)
    g += fstar.to(dtype)[:, :, None]
    for a, t in zip(coefs, tables):
        g.baddbmm_(a.to(dtype), t.to(dtype).expand(len(a), -1, -1), alpha=-1.0)
    gmin = g.min(2).values.double()
    nt = sum(t.shape[1] for t in tables)
    a_norm = torch.zeros_like(fstar)
    for a in coefs:
        a_norm += (a * a).sum(2)
    a_norm.sqrt_()
    col = torch.zeros(max([t.shape[0] for t in tables] + [1]), base.shape[2], dtype=base.dtype)
    for t in tables:
        col = col + (t * t).sum(1)
    beta = col.amax(1).sqrt_()[:, None]  # [Z' or 1, 1]
    k = nt + 2
    gam = k * U32 / (1 - k * U32)
    E = 1.01 * (gam + (len(tables) + 6) * U32) * (base_max + fstar.abs() + a_norm * beta)
    return gmin - E - 1e-30 * (nt + 1)


def _block_sums(t: torch.Tensor, bs: int) -> torch.Tensor:
    """``[M, ⌈C / bs⌉]``: sums of t ``[M, C]`` over consecutive blocks of bs columns."""
    M, C = t.shape
    full = C // bs
    out = [t[:, : full * bs].reshape(M, full, bs).sum(2)] if full else []
    if C > full * bs:
        out.append(t[:, full * bs :].sum(1, keepdim=True))
    return torch.cat(out, 1) if len(out) > 1 else out[0]


@dataclass
class _Plan:
    """What the verifier computes once per model (amortised over the N² inputs).

    Neurons used: the circuits' members (circuit by circuit, each in orbit-slot order), then the
    ``exact`` ones (outside the circuits, can fire), m + e in all; every table below is indexed
    in that order. ``Le``/``Re`` ``[N, m + e + m]``: left / right pre-activations of those
    neurons and, after them, of each member's ideal orbit element (l̂(g_a⁻¹ x), r̂(y h_b⁻¹)), so
    that one gather and one ReLU give a, â side by side.

    Fourier part, the used irreps' coefficients side by side (irrep i at columns
    qoff[i] … qoff[i+1] − 1, basis ``Qs[i]`` ``[N, d_i²]``): ``AM`` ``[m, Σd²]`` = (Q_iᵀ U_j)ᵀ
    of each member j in the irreps of its set (zero elsewhere); per irrep, the exact neurons in
    its set: pre-activations ``LJx[i]``/``RJx[i]`` ``[N, |J_i|]`` and ``ATx[i]``
    ``[|J_i|, d_i²]``; per circuit ``BC[c]`` ``[|O_C|, Σd²]`` = α (Q_iᵀ Û_C)ᵀ in its set's irreps.

    Out-of-irrep blocks, bs columns each (zero-padded): ``pieces`` (kind, source, start, count)
    with source ``diff`` (a − â of members), ``ideal`` (â of members), ``exact`` (a of the exact
    neurons) or the circuit index (``mult``: (m_o − α) â_o at its orbit elements ``mult_idx``,
    coefficients ``mult_coef``); V ``[N, K·bs]`` the matching out-of-irrep columns;
    D ``[N(z*), K, N(z)]`` = ‖V_k(z) − V_k(z*)‖."""

    irreps: list[int]
    real_type: list[bool]
    dims: list[int]
    Qs: list[torch.Tensor]
    qoff: list[int]
    AM: torch.Tensor
    LJx: list[torch.Tensor]
    RJx: list[torch.Tensor]
    ATx: list[torch.Tensor]
    BC: list[torch.Tensor]
    n_members: int
    Le: torch.Tensor
    Re: torch.Tensor
    pieces: list[tuple[str, object, int, int]]
    mult_idx: list[torch.Tensor]
    mult_coef: list[torch.Tensor]
    bs: int
    V: torch.Tensor
    D: torch.Tensor
    kinds: list[str]
    exact: np.ndarray
    dropped: float  # static bound on the pieces left out (added to every input's error)


def _plan(
    group: Group,
    L: torch.Tensor,
    R: torch.Tensor,
    U: torch.Tensor,
    ideal: IdealModel,
    block_size: int,
    live,
    share: float,
    member_share: float | None = None,
    drop_tol: float = 0.0,
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
    explained = np.zeros(H, dtype=bool)
    circ_sets = []
    for ic in ideal.circuits:
        explained[ic.members] = True
        cs = sets[ic.members].any(0) | (member_share is not None and False)
        if member_share is not None:
            cs = (frac[ic.members] >= member_share).any(0) | cs
            cs[0] = False
        sets[ic.members] = cs
        circ_sets.append(cs)
    exact = np.nonzero(~explained & live)[0]
    active = explained | np.isin(np.arange(H), exact)
    used = [i for i in range(1, r) if bool(sets[active, i].any())]
    uh = [torch.from_numpy(ic.uh).reshape(n, -1) for ic in ideal.circuits]  # [N, |O_C|]
    U_perp = U.clone()
    uh_perp = [u.clone() for u in uh]
    # members circuit by circuit, each in orbit-slot order (the blocks' order too)
    orders = [np.lexsort((ic.circuit.slot_r, ic.circuit.slot_l)) for ic in ideal.circuits]
    members = np.concatenate(
        [ic.members[o] for ic, o in zip(ideal.circuits, orders)] + [np.zeros(0, dtype=np.int64)]
    ).astype(np.int64)
    m = len(members)
    d2 = [bases[i].shape[1] for i in used]
    qoff = [int(v) for v in np.cumsum([0] + d2)]
    AM = torch.zeros(m, qoff[-1], dtype=f64)
    BC = [torch.zeros(u.shape[1], qoff[-1], dtype=f64) for u in uh]
    LJx, RJx, ATx = [], [], []
    is_member = np.zeros(H, dtype=bool)
    is_member[members] = True
    for k, i in enumerate(used):
        q = bases[i]
        sl = slice(qoff[k], qoff[k + 1])
        inset = sets[:, i].numpy()
        jm = np.nonzero(inset[members])[0]  # member positions
        jmt = torch.as_tensor(members[jm])
        a = q.T @ U[:, jmt]
        AM[torch.as_tensor(jm), sl] = a.T
        U_perp[:, jmt] -= q @ a
        jx = torch.as_tensor(np.nonzero(active & inset & ~is_member)[0])
        a = q.T @ U[:, jx]
        LJx.append(L[:, jx].contiguous())
        RJx.append(R[:, jx].contiguous())
        ATx.append(a.T.contiguous())
        U_perp[:, jx] -= q @ a
        for ci, ic in enumerate(ideal.circuits):
            if circ_sets[ci][i]:
                proj = q.T @ uh[ci]
                uh_perp[ci] -= q @ proj
                BC[ci][:, sl] = (proj * ic.alpha).T
    bs = int(block_size)
    pieces, cols, kinds, mult_idx, mult_coef = [], [], [], [], []

    def add_piece(kind, source, start, v):  # v [N, count]: blocks of bs columns, zero-padded
        count = v.shape[1]
        pieces.append((kind, source, start, count))
        kb = -(-count // bs)
        cols.append(torch.cat([v, torch.zeros(n, kb * bs - count, dtype=f64)], 1))
        kinds.extend([kind] * kb)

    order_all, lh_cols, rh_cols = [], [], []
    s = 0
    for ci, ic in enumerate(ideal.circuits):
        c = ic.circuit
        order = orders[ci]
        mem = c.members[order]
        sl = c.slot_l[order] * ic.mult.shape[1] + c.slot_r[order]  # into the orbit
        order_all.append(mem)
        lh_cols.append(torch.from_numpy(ic.lh[:, c.slot_l[order]]))
        rh_cols.append(torch.from_numpy(ic.rh[:, c.slot_r[order]]))
        up, hp = U_perp[:, mem], uh_perp[ci][:, sl]
        add_piece("act", "diff", s, up)
        add_piece("unembed", "ideal", s, up - hp)
        off = np.nonzero(np.abs(ic.mult - ic.alpha).reshape(-1) > 1e-12)[0]
        coef = (ic.mult - ic.alpha).reshape(-1)[off]
        mult_idx.append(torch.as_tensor(off, dtype=torch.long))
        mult_coef.append(torch.as_tensor(coef, dtype=f64))
        if len(off):
            add_piece("mult", ci, 0, uh_perp[ci][:, off])
        s += len(mem)
    if len(exact):
        add_piece("exact", "exact", 0, U_perp[:, exact])
    e = len(exact)
    perm = torch.as_tensor(np.concatenate(order_all + [exact]).astype(np.int64))
    Le = torch.cat([L[:, perm]] + lh_cols, 1).contiguous()
    Re = torch.cat([R[:, perm]] + rh_cols, 1).contiguous()

    # a piece whose largest possible contribution to any logit difference is ≤ drop_tol (its
    # columns nearly class-independent, e.g. members' U⊥ when every irrep is exact) is left out
    # of the per-input work and its static bound added to every input's error (``dropped``)
    def col_bound(lt, rt):  # [count]: max over inputs of |ReLU(l + r)| ≤ max ReLU(l) + max ReLU(r)
        return lt.clamp_min(0.0).amax(0) + rt.clamp_min(0.0).amax(0)

    keep, dropped = [], 0.0
    for pi, (_kind, source, start, count) in enumerate(pieces):
        if source == "diff":  # |a − â| ≤ |l − l̂| + |r − r̂| (ReLU is 1-Lipschitz)
            cb = (Le[:, start : start + count] - Le[:, m + e + start : m + e + start + count]).abs()
            cb = cb.amax(0) + (
                (Re[:, start : start + count] - Re[:, m + e + start : m + e + start + count])
                .abs()
                .amax(0)
            )
        elif source == "ideal":
            sl = slice(m + e + start, m + e + start + count)
            cb = col_bound(Le[:, sl], Re[:, sl])
        elif source == "exact":
            cb = col_bound(Le[:, m : m + e], Re[:, m : m + e])
        else:
            ic = ideal.circuits[source]
            o_r = ic.mult.shape[1]
            lb = torch.from_numpy(ic.lh).clamp_min(0.0).amax(0)[mult_idx[source] // o_r]
            rb = torch.from_numpy(ic.rh).clamp_min(0.0).amax(0)[mult_idx[source] % o_r]
            cb = mult_coef[source].abs() * (lb + rb)
        v = cols[pi]
        kb = v.shape[1] // bs
        cb = torch.cat([cb, torch.zeros(kb * bs - count, dtype=f64)])
        static = sum(
            float(_pair_norms(v[:, k * bs : (k + 1) * bs]).max())
            * float(cb[k * bs : (k + 1) * bs].norm())
            for k in range(kb)
        )
        if static <= drop_tol:
            dropped += static
        else:
            keep.append(pi)
    kinds = [kd for pi in keep for kd in [pieces[pi][0]] * (cols[pi].shape[1] // bs)]
    pieces = [pieces[pi] for pi in keep]
    cols = [cols[pi] for pi in keep]
    K = len(kinds)
    V = torch.cat(cols, 1) if cols else torch.zeros(n, 0, dtype=f64)
    D = (
        torch.stack([_pair_norms(V[:, k * bs : (k + 1) * bs]) for k in range(K)], 1)
        if K
        else torch.zeros(n, 0, n, dtype=f64)
    )  # [z*, K, z]
    return _Plan(
        used,
        [fb[i][1] for i in used],
        [int(round(np.sqrt(bases[i].shape[1]))) for i in used],
        [bases[i] for i in used],
        qoff,
        AM,
        LJx,
        RJx,
        ATx,
        BC,
        m,
        Le,
        Re,
        pieces,
        mult_idx,
        mult_coef,
        bs,
        V,
        D,
        kinds,
        exact,
        dropped,
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
    class_dtype: torch.dtype = torch.float32,
    member_share: float | None = 0.0,
) -> Certificate:
    """Which inputs are certified correct (see the module doc). left/right/unembed: float
    ``[N, H]`` in the ideal model's gauge; bias float ``[N]``; ``chunk``: inputs per step;
    ``class_dtype``: the per-class pass's matmuls (float32 with a proven rounding bound, see
    :func:`class_pass`, or float64)."""
    f64 = torch.float64
    n = group.order
    L, R, U = (torch.as_tensor(np.ascontiguousarray(a), dtype=f64) for a in (left, right, unembed))
    b = torch.as_tensor(bias, dtype=f64)
    tab = torch.as_tensor(group.table, dtype=torch.long)
    inv = torch.as_tensor(group.inverses, dtype=torch.long)
    m_w = torch.as_tensor(ideal.margins(), dtype=f64)  # [N], +inf at e
    margin = float(m_w.min())
    live = (((L.max(0).values + R.max(0).values) > 0) & (U.abs().max(0).values > 0)).numpy()
    drop_tol = 1e-4 * margin if margin > 0 else 0.0
    p = _plan(group, L, R, U, ideal, block_size, live, fourier_share, member_share, drop_tol)
    K, n_f, bs, m = len(p.kinds), len(p.irreps), p.bs, p.n_members
    e = len(p.exact)
    need_members = any(src in ("diff", "ideal") for _, src, _, _ in p.pieces)
    Le_x, Re_x = p.Le[:, m : m + e].contiguous(), p.Re[:, m : m + e].contiguous()
    eye = torch.eye(n, dtype=torch.bool)
    Dmax = p.D.masked_fill(eye[:, None, :], 0.0).amax(2)  # [z*, K]
    Vmax = (p.V**2).view(n, K, bs).sum(2).amax(0).sqrt()  # [K]: max_z ‖V_k(z)‖
    # per irrep k: DQ[:, k] = max_z ‖Q_k(z) − Q_k(z*)‖, Qrow_t[k] = max_z ‖Q_k(z)‖; indicator
    # matrices Sel [Σd², n_f] (irrep of each coefficient), Ccol / Crow [Σd², Σd] (column b /
    # row a of C_k for the coefficient C_k[a, b]), Sd [Σd, n_f]
    DQ = (
        torch.stack([irrep_spread(group, i) for i in p.irreps], 1)
        if n_f
        else torch.zeros(n, 0, dtype=f64)
    )
    Qrow_t = torch.as_tensor([float(q.norm(dim=1).max()) for q in p.Qs], dtype=f64)
    dsum = np.cumsum([0] + p.dims)
    Sel = torch.zeros(p.qoff[-1], n_f, dtype=f64)
    Ccol = torch.zeros(p.qoff[-1], int(dsum[-1]), dtype=f64)
    Crow = torch.zeros_like(Ccol)
    Sd = torch.zeros(int(dsum[-1]), n_f, dtype=f64)
    for k, d in enumerate(p.dims):
        Sel[p.qoff[k] : p.qoff[k + 1], k] = 1.0
        if not p.real_type[k]:  # its coefficients are not the d×d matrix entries
            continue
        ab = np.arange(d * d)
        Ccol[torch.as_tensor(p.qoff[k] + ab), torch.as_tensor(int(dsum[k]) + ab % d)] = 1.0
        Crow[torch.as_tensor(p.qoff[k] + ab), torch.as_tensor(int(dsum[k]) + ab // d)] = 1.0
        Sd[int(dsum[k]) : int(dsum[k + 1]), k] = 1.0
    real_mask = torch.as_tensor(p.real_type, dtype=torch.bool)
    top_scale = torch.as_tensor([np.sqrt(d / n) for d in p.dims], dtype=f64)
    Qcat = torch.cat(p.Qs, 1) if n_f else torch.zeros(n, 0, dtype=f64)  # [N, Σd²]
    QTcat = Qcat.T.contiguous()[None]  # [1, Σd², N]
    Lm, Rm = p.Le[:, :m].contiguous(), p.Re[:, :m].contiguous()
    dbias = b[None, :] - b[:, None]  # [z*, z]: b(z) − b(z*)
    dbias_d = dbias + p.dropped  # the pieces left out, in every per-class bound
    bmax = dbias.masked_fill(eye, -torch.inf).amax(1)  # [z*]
    scale = float(np.abs(ideal.F).max() + b.abs().max() + 1.0)
    slack = 1e-6 * scale
    lhs = [torch.from_numpy(ic.lh)[None, :, :, None] for ic in ideal.circuits]  # [1, x, O_L, 1]
    rhs = [torch.from_numpy(ic.rh) for ic in ideal.circuits]  # [y, O_R]
    wtab = class_pairs(group)  # [z*, x, z]
    base_max = float(m_w[1:].abs().max() + dbias_d.abs().max()) if n > 1 else 0.0
    names = ("fourier", "act", "unembed", "mult", "exact")
    kind_ix = {
        kd: torch.as_tensor([k for k, s in enumerate(p.kinds) if s == kd], dtype=torch.long)
        for kd in names[1:]
    }
    parts: dict[str, list] = {kd: [] for kd in (*names, "bias")}

    certified = torch.zeros(n, n, dtype=torch.bool)  # [z*, x] first, rows later
    first = torch.zeros(n, n, dtype=torch.bool)
    error = torch.full((n, n), torch.nan, dtype=f64)
    run_first = True
    lower_out = torch.empty(n, n, dtype=f64)
    xs_all = torch.arange(n)
    zc = max(1, chunk // n)  # z* values per step
    for z0 in range(0, n, zc):
        zb = torch.arange(z0, min(n, z0 + zc))  # [Z]
        Z = len(zb)
        M = Z * n
        ys = tab[inv[xs_all][None, :], zb[:, None]]  # [Z, x]: y = x⁻¹ z*
        yf = ys.reshape(-1)
        # ideal activations of every orbit: [M, |O_C|] per circuit
        iact = [
            (lh + rh.index_select(0, yf).view(Z, n, 1, -1)).clamp_min_(0.0).view(M, -1)
            for lh, rh in zip(lhs, rhs)
        ]
        # the first pass's own terms are skipped once it has certified under half of the
        # first chunk's inputs: the per-class pass then decides every input on its own
        fp = z0 == 0 or run_first
        # Fourier part: y_i [M, d²] side by side, its value at z* and first-pass bound per irrep
        if m:
            am = (Lm + Rm.index_select(0, yf).view(Z, n, -1)).clamp_min_(0.0).view(M, m)
            ycat = am @ p.AM  # [M, Σd²]
        else:
            ycat = torch.zeros(M, p.qoff[-1], dtype=f64)
        for ci, bc in enumerate(p.BC):
            ycat.addmm_(iact[ci], bc, alpha=-1.0)
        for k in range(n_f):
            if p.ATx[k].shape[0]:
                ax = (p.LJx[k] + p.RJx[k].index_select(0, yf).view(Z, n, -1)).clamp_min_(0.0)
                ycat[:, p.qoff[k] : p.qoff[k + 1]] += ax.view(M, -1) @ p.ATx[k]
        prod = (ycat.view(Z, n, -1) * Qcat[zb][:, None, :]).view(M, -1)
        fstar = prod.sum(1)  # Σ_i Q_i(z*)·y_i
        if fp and n_f:  # per irrep sums as matmuls with indicator matrices
            at_star = prod @ Sel  # [M, n_f]
            sq = ycat * ycat
            nrm = (sq @ Sel).sqrt_()
            # real type: ‖C‖_* ≤ min(Σ column norms, Σ row norms); else ‖y‖ max_z ‖Q(z)‖
            nuc = torch.minimum((sq @ Ccol).sqrt_() @ Sd, (sq @ Crow).sqrt_() @ Sd)
            top = torch.where(real_mask, nuc * top_scale, nrm * Qrow_t)
            spread = (nrm.view(Z, n, -1) * DQ[zb][:, None, :]).view(M, -1)
            bfs = torch.minimum(spread, top - at_star).sum(1)
        else:
            bfs = torch.zeros(M, dtype=f64)
        # out-of-irrep blocks: c [M, K·bs] from a, â side by side
        if K:
            if need_members:
                ae = (p.Le + p.Re.index_select(0, yf).view(Z, n, -1)).clamp_min_(0.0).view(M, -1)
                src = {
                    "diff": ae[:, :m] - ae[:, m + e :],
                    "ideal": ae[:, m + e :],
                    "exact": ae[:, m : m + e],
                }
            else:  # only the exact neurons' pieces are left
                ae = (Le_x + Re_x.index_select(0, yf).view(Z, n, -1)).clamp_min_(0.0).view(M, -1)
                src = {"exact": ae}
            sqs, vss, col = [], [], 0  # per piece: Σ c² and V(z*)·c per block
            for _kind, source, start, count in p.pieces:
                if isinstance(source, str):
                    c = src[source][:, start : start + count]
                else:
                    c = iact[source].index_select(1, p.mult_idx[source]) * p.mult_coef[source]
                sqs.append(_block_sums(c * c, bs))
                if fp:
                    v = p.V[z0 : z0 + Z, col : col + count]
                    vss.append(_block_sums((c.view(Z, n, -1) * v[:, None, :]).view(M, -1), bs))
                col += -(-count // bs) * bs
            nrm_k = torch.cat(sqs, 1).sqrt_()  # [M, K]
            if fp:
                vstar = torch.cat(vss, 1)  # V_k(z*)·c_k
                dm = (nrm_k.view(Z, n, K) * Dmax[zb][:, None, :]).view(M, K)
                bk = torch.minimum(dm, nrm_k * Vmax - vstar)  # [M, K]
                bks = bk.sum(1)
        else:
            bks = torch.zeros(M, dtype=f64)
        if fp:
            parts["fourier"].append(bfs)
            for kd, ix in kind_ix.items():
                parts[kd].append(bk.index_select(1, ix).sum(1) if len(ix) else bfs * 0.0)
            bz = bmax[zb].repeat_interleave(n)  # [M]
            parts["bias"].append(bz)
            err = bfs + bks + p.dropped
            lower = margin - bz - err
            ok = lower > slack
            error[zb] = err.view(Z, n)
            if z0 == 0:
                run_first = bool(ok.double().mean() >= 0.5)
        else:
            lower = torch.full((M,), -torch.inf, dtype=f64)
            ok = torch.zeros(M, dtype=torch.bool)
        first[zb] = ok.view(Z, n)
        lower_out[zb] = lower.view(Z, n)
        if bool(ok.all()):
            certified[zb] = True
            continue
        # per-class pass for the inputs the first pass left: per z* with a failure, its
        # failing x, padded to the largest count with some of its other x
        fm = ~ok.view(Z, n)
        cnt = fm.sum(1)
        zsel = torch.nonzero(cnt > 0)[:, 0]
        zs = zb[zsel]
        Zs, c_max = len(zs), int(cnt.max())
        if c_max == n:  # every x of these z*: no gathers
            xi = xs_all.expand(Zs, n)
        else:
            xi = torch.argsort((~fm[zsel]).to(torch.int8), dim=1, stable=True)[:, :c_max]
        rows = (zsel[:, None] * n + xi).reshape(-1)  # [Z'·c] rows of this step
        every = Zs == Z and c_max == n
        pick = (lambda t: t) if every else (lambda t, r=rows: t[r])  # noqa: E731
        zsl = slice(z0, z0 + Z) if Zs == Z else zs
        if c_max == n:
            base = m_w[wtab[zsl]] - dbias_d[zsl][:, None, :]  # [Z', c, z], +inf at z*
        else:
            base = m_w[wtab[zs[:, None], xi]] - dbias_d[zs][:, None, :]
        coefs = [pick(ycat).view(Zs, c_max, -1)]
        tables = [QTcat]
        if K:
            coefs.append(pick(nrm_k).view(Zs, c_max, K))
            tables.append(p.D[zsl])
        fs = pick(fstar).view(Zs, c_max)
        gmin = class_pass(base, fs, coefs, tables, base_max, class_dtype).reshape(-1)
        okr, lowr = ok.clone(), lower.clone()
        okr[rows] = ok[rows] | (gmin > slack)  # padding rows: certified by either pass
        lowr[rows] = torch.maximum(lower[rows], gmin)
        certified[zb] = okr.view(Z, n)
        lower_out[zb] = lowr.view(Z, n)

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
    chunk: int = 2048,
    circuits: list[Circuit] | None = None,
    block_size: int = 8,
    fourier_share: float = 0.01,
    member_share: float | None = 0.0,
    class_dtype: torch.dtype = torch.float32,
) -> tuple[BoundResult, list[Circuit], Certificate]:
    """The accuracy lower bound of ``net`` (see the module doc), the circuits and the
    per-input certificate."""
    t0 = time.perf_counter()
    circuits, ideal, (L, R, U), t_circ = explain(
        group, net, neuron_irrep, live, tol, max_orbit, min_coverage, circuits
    )
    t1 = time.perf_counter()
    cert = verify(
        group,
        L,
        R,
        U,
        net.bias.numpy(),
        ideal,
        block_size,
        chunk,
        fourier_share,
        class_dtype=class_dtype,
        member_share=member_share,
    )
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
        median_error=float(np.nanmedian(cert.error)),
        median_error_over_margin=float(np.nanmedian(cert.error) / margin) if margin > 0 else np.inf,
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
