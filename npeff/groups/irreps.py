"""Real orthogonal irreducible representations of a :class:`~npeff.groups.core.Group`.

* S_n: Young's orthogonal form on the standard tableaux of each partition of n.
* Z_n: the trivial character, the sign character (n even) and one 2-D rotation representation per
  complex-conjugate pair of characters (the "clock": ``k ↦ rotation by 2πjk/n``).
* A_n: the restrictions of the S_n irreps, split into real irreducibles.
* products: tensor products of the factors' real irreps, split into real irreducibles.
* anything else (D_n, …): the regular representation split into real irreducibles.

Splitting (:func:`split_real`): for a real orthogonal representation ρ, the group average
``P = (1/|G|) Σ_g ρ(g) M ρ(g)ᵀ`` of a random symmetric M commutes with ρ; P is a scalar iff ρ is
irreducible over the reals (for each of the real, complex and quaternionic types the symmetric
part of the commutant is the scalars), otherwise its eigenspaces are invariant and the split
recurses on them. Equivalent irreps are merged by character.

Each irrep's type is ``κ = ⟨χ, χ⟩`` = 1 (real), 2 (complex: the real form of a pair χ, χ̄) or 4
(quaternionic). Orthogonality: ``Σ_ρ d_ρ² / κ_ρ = |G|``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from npeff.errors import NpeffUserError

if TYPE_CHECKING:  # core.Group calls into this module (Group.irrep_info), so no runtime import
    from npeff.groups.core import Group

KINDS = {1: "real", 2: "complex", 4: "quaternionic"}


@dataclass
class Irrep:
    """One real irreducible representation.

    matrices: float64 ``[N, d, d]`` orthogonal, ``matrices[a] @ matrices[b] = matrices[table[a, b]]``.
    character: float64 ``[N]`` (the real trace). kappa: ⟨χ, χ⟩ in {1, 2, 4}. kind: real/complex/…
    """

    name: str
    matrices: np.ndarray
    character: np.ndarray
    kappa: int

    @property
    def dim(self) -> int:
        return int(self.matrices.shape[1])

    @property
    def kind(self) -> str:
        return KINDS[self.kappa]


# --- S_n: Young's orthogonal form -------------------------------------------------------------
def partitions(n: int) -> list[tuple[int, ...]]:
    """Partitions of n in reverse lexicographic order: (n), (n-1, 1), …, (1, …, 1)."""

    def rec(n: int, cap: int):
        if n == 0:
            yield ()
            return
        for k in range(min(n, cap), 0, -1):
            for rest in rec(n - k, k):
                yield (k, *rest)

    return list(rec(n, n))


def standard_tableaux(shape: tuple[int, ...]) -> list[np.ndarray]:
    """Standard Young tableaux of ``shape``; each as int ``[n, 2]``: (row, col) of entries 0..n-1."""
    n = sum(shape)
    out: list[np.ndarray] = []

    def rec(k: int, rows: list[int], pos: list[tuple[int, int]]):
        if k == n:
            out.append(np.array(pos, dtype=np.int64))
            return
        for r in range(len(shape)):
            c = rows[r]
            if c < shape[r] and (r == 0 or rows[r - 1] > c):
                rows[r] += 1
                rec(k + 1, rows, [*pos, (r, c)])
                rows[r] -= 1

    rec(0, [0] * len(shape), [])
    return out


def young_generators(shape: tuple[int, ...]) -> list[np.ndarray]:
    """``ρ(s_i)`` for the adjacent transpositions s_i = (i i+1), i = 0..n-2 (Young's orthogonal
    form: ``ρ(s_i) e_T = e_T / r + sqrt(1 - 1/r²) e_{s_i T}``, r = content(i+1) - content(i))."""
    tabs = standard_tableaux(shape)
    n = sum(shape)
    index = {t.tobytes(): j for j, t in enumerate(tabs)}
    d = len(tabs)
    gens = []
    for i in range(n - 1):
        m = np.zeros((d, d))
        for j, t in enumerate(tabs):
            (ri, ci), (rk, ck) = t[i], t[i + 1]
            r = (ck - rk) - (ci - ri)
            m[j, j] = 1.0 / r
            if abs(r) > 1:
                s = t.copy()
                s[[i, i + 1]] = s[[i + 1, i]]
                m[index[s.tobytes()], j] = np.sqrt(1.0 - 1.0 / r**2)
        gens.append(m)
    return gens


def _extend_from_generators(group: Group, gens: list[int], mats: list[np.ndarray]) -> np.ndarray:
    """``ρ`` on every element by breadth-first search, ``ρ(g·s) = ρ(g) ρ(s)`` for generators s."""
    d = mats[0].shape[0]
    out = np.full((group.order, d, d), np.nan)
    out[0] = np.eye(d)
    done = np.zeros(group.order, dtype=bool)
    done[0] = True
    frontier = [0]
    while frontier:
        nxt = []
        for g in frontier:
            for s, m in zip(gens, mats):
                h = int(group.table[g, s])
                if not done[h]:
                    out[h] = out[g] @ m
                    done[h] = True
                    nxt.append(h)
        frontier = nxt
    if not done.all():
        raise NpeffUserError("the generators do not generate the group")
    return out


def _symmetric_irreps(group: Group) -> list[Irrep]:
    n = group.perms.shape[1]
    if n == 1:
        return [Irrep("(1)", np.ones((1, 1, 1)), np.ones(1), 1)]
    lookup = {tuple(p): i for i, p in enumerate(group.perms.tolist())}
    gens = []
    for i in range(n - 1):
        p = list(range(n))
        p[i], p[i + 1] = p[i + 1], p[i]
        gens.append(lookup[tuple(p)])
    out = []
    for shape in partitions(n):
        mats = _extend_from_generators(group, gens, young_generators(shape))
        name = "(" + ",".join(str(k) for k in shape) + ")"
        out.append(Irrep(name, mats, np.trace(mats, axis1=1, axis2=2), 1))
    return out


# --- Z_n: clock representations ---------------------------------------------------------------
def _cyclic_irreps(group: Group) -> list[Irrep]:
    n = group.order
    k = np.arange(n)
    out = [Irrep("trivial", np.ones((n, 1, 1)), np.ones(n), 1)]
    if n % 2 == 0:
        s = np.where(k % 2 == 0, 1.0, -1.0)
        out.append(Irrep("sign", s[:, None, None], s, 1))
    for j in range(1, (n + 1) // 2):
        t = 2 * np.pi * j * k / n
        c, s = np.cos(t), np.sin(t)
        mats = np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)
        out.append(Irrep(f"rot{j}", mats, 2 * c, 2))
    return out


# --- splitting any real orthogonal representation ---------------------------------------------
def _kappa(chi: np.ndarray) -> float:
    return float(np.dot(chi, chi) / len(chi))


def split_real(mats: np.ndarray, rng: np.random.Generator, tol: float = 1e-7) -> list[np.ndarray]:
    """Split a real orthogonal representation ``[N, D, D]`` into real irreducibles (each
    ``[N, d, d]``, in an orthonormal basis of its invariant subspace)."""
    d = mats.shape[1]
    if d == 1:
        return [mats]
    m = rng.standard_normal((d, d))
    m = m + m.T
    p = np.einsum("gij,jk,glk->il", mats, m, mats) / len(mats)
    p = (p + p.T) / 2
    w, v = np.linalg.eigh(p)
    scale = max(1.0, float(np.abs(w).max()))
    if w[-1] - w[0] <= tol * scale * 1e3:
        return [mats]
    # cluster eigenvalues separated by gaps
    gaps = np.nonzero(np.diff(w) > 1e-5 * scale)[0]
    bounds = [0, *(gaps + 1).tolist(), d]
    out = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        q = v[:, a:b]
        sub = np.einsum("ji,gjk,kl->gil", q, mats, q)
        out.extend(split_real(sub, rng, tol))
    return out


def _dedupe(reps: list[np.ndarray], names: list[str] | None = None) -> list[Irrep]:
    out: list[Irrep] = []
    for i, r in enumerate(reps):
        chi = np.trace(r, axis1=1, axis2=2)
        if any(np.allclose(chi, o.character, atol=1e-6) for o in out):
            continue
        k = _kappa(chi)
        kappa = int(round(k))
        if kappa not in KINDS or abs(k - kappa) > 1e-6:
            raise RuntimeError(f"representation split failed: <chi, chi> = {k:.6f}")
        out.append(Irrep(names[i] if names else "", r, chi, kappa))
    return out


def _restricted_irreps(group: Group, parent: Group, rng: np.random.Generator) -> list[Irrep]:
    """Irreps of a subgroup given as ``group.perms`` ⊂ ``parent.perms``, by restriction."""
    lookup = {tuple(p): i for i, p in enumerate(parent.perms.tolist())}
    rows = np.array([lookup[tuple(p)] for p in group.perms.tolist()])
    pieces, names = [], []
    for ir in irreps(parent):
        parts = split_real(ir.matrices[rows], rng)
        pieces.extend(parts)
        names.extend(
            [ir.name + ("" if len(parts) == 1 else f"{chr(97 + j)}") for j in range(len(parts))]
        )
    return _dedupe(pieces, names)


def _product_irreps(group: Group, rng: np.random.Generator) -> list[Irrep]:
    factors = group.factors
    a, b = factors[0], (factors[1] if len(factors) == 2 else _rest_product(factors[1:]))
    ia, ib = np.divmod(np.arange(group.order), b.order)
    pieces, names = [], []
    for ra in irreps(a):
        for rb in irreps(b):
            t = np.einsum("gij,gkl->gikjl", ra.matrices[ia], rb.matrices[ib])
            da, db = ra.dim, rb.dim
            t = t.reshape(group.order, da * db, da * db)
            parts = split_real(t, rng)
            pieces.extend(parts)
            nm = f"{ra.name}⊗{rb.name}"
            names.extend(
                [nm + ("" if len(parts) == 1 else f"{chr(97 + j)}") for j in range(len(parts))]
            )
    return _dedupe(pieces, names)


def _rest_product(factors):
    return factors[0] if len(factors) == 1 else factors[0].times(*factors[1:])


def _regular_irreps(group: Group, rng: np.random.Generator) -> list[Irrep]:
    n = group.order
    if n > 400:
        raise NpeffUserError(
            f"irreps of {group.name} via the regular representation need |G| <= 400"
        )
    mats = np.zeros((n, n, n))
    mats[np.arange(n)[:, None], group.table, np.arange(n)[None, :]] = 1.0  # ρ(g) e_h = e_{gh}
    return _dedupe(split_real(mats, rng))


def irreps(group: Group) -> list[Irrep]:
    """The real irreps of ``group`` (cached on the group object), trivial first, by dimension."""
    cached = getattr(group, "_irreps", None)
    if cached is not None:
        return cached
    rng = np.random.default_rng(0)
    if group.kind == "symmetric":
        out = _symmetric_irreps(group)
    elif group.kind == "cyclic":
        out = _cyclic_irreps(group)
    elif group.kind == "alternating":
        out = _restricted_irreps(group, group.symmetric_overgroup(), rng)
    elif group.kind == "product":
        out = _product_irreps(group, rng)
    else:
        out = _regular_irreps(group, rng)
    out = _canonical_order(out)
    for i, ir in enumerate(out):
        if not ir.name:
            ir.name = f"{ir.kind[0]}{ir.dim}_{i}"
    group._irreps = out
    return out


def _canonical_order(reps: list[Irrep]) -> list[Irrep]:
    def key(ir: Irrep):
        trivial = bool(np.allclose(ir.character, ir.dim)) and ir.dim == 1
        return (not trivial, ir.dim, -float(ir.character.sum()), ir.name)

    return sorted(reps, key=key)


# --- character table and projections ----------------------------------------------------------
def character_table(group: Group) -> np.ndarray:
    """float64 ``[n_irreps, n_classes]``: real characters on the conjugacy classes (in the order
    of ``group.conjugacy_classes``)."""
    reps = irreps(group)
    reps_idx = [c[0] for c in group.conjugacy_classes]
    return np.array([[ir.character[i] for i in reps_idx] for ir in reps])


def irrep_bases(group: Group) -> list[np.ndarray]:
    """Per irrep, an orthonormal basis ``[N, d²/κ]`` of the span of its matrix-entry functions
    ``g ↦ ρ(g)_{ab}`` in R^N. The spans are mutually orthogonal and together span R^N."""
    cached = getattr(group, "_irrep_bases", None)
    if cached is not None:
        return cached
    out = []
    for ir in irreps(group):
        f = ir.matrices.reshape(group.order, -1)
        u, s, _ = np.linalg.svd(f, full_matrices=False)
        rank = int(round(ir.dim**2 / ir.kappa))
        out.append(u[:, :rank])
    group._irrep_bases = out
    return out
