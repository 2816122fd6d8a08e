"""Finite groups built in code: S_n, A_n, Z_n, dihedral D_n and direct products.

A :class:`Group` is its Cayley table: elements are indices ``0..N-1`` (index 0 the identity) and
``table[a, b]`` is the index of ``a·b``. Permutation groups compose right to left,
``(x·y)(i) = x(y(i))``; S_n lists the permutations of ``range(n)`` in lexicographic order, A_n the
even ones in the same order. D_n (order 2n, the symmetries of a regular n-gon) lists
``r^k`` then ``s r^k``, as permutations of the n vertices. A product ``G1xG2`` lists pairs
lexicographically (index ``i1 * |G2| + i2``).
"""

from __future__ import annotations

import itertools
import re
from functools import cached_property

import numpy as np

from npeff.errors import NpeffUserError

MAX_ORDER = 1000  # |G|² tables and |G|² inputs: beyond this the task and analyses are too large
MAX_SYM_N = 6  # |S_7| = 5040
MAX_LATTICE_ORDER = 200  # subgroup enumeration by joins: ~6 s for S5 (154 subgroups)
_LATTICE_CACHE: dict[str, list[np.ndarray]] = {}


class Group:
    """A finite group given by its Cayley table.

    Attributes:
      name: e.g. ``"S5"``. table: int64 ``[N, N]``, ``table[a, b]`` = index of ``a·b``.
      element_names: ``N`` display names. perms: int ``[N, m]`` (a faithful permutation action,
      used for parities and the irreps of S_n) or None. factors: the direct factors of a product.
    """

    def __init__(
        self,
        name: str,
        table: np.ndarray,
        element_names: list[str],
        perms: np.ndarray | None = None,
        factors: tuple[Group, ...] = (),
        kind: str = "table",
    ):
        table = np.asarray(table, dtype=np.int64)
        n = table.shape[0]
        if table.shape != (n, n):
            raise NpeffUserError(f"a Cayley table must be square, got {table.shape}")
        if not (
            np.array_equal(table[0], np.arange(n)) and np.array_equal(table[:, 0], np.arange(n))
        ):
            raise NpeffUserError("index 0 must be the identity of the group")
        self.name = name
        self.table = table
        self.element_names = list(element_names)
        self.perms = perms
        self.factors = tuple(factors)
        self.kind = kind
        self._subgroups: list[np.ndarray] | None = None

    # --- basics ---------------------------------------------------------------------------------
    @property
    def order(self) -> int:
        return int(self.table.shape[0])

    def __len__(self) -> int:
        return self.order

    def __repr__(self) -> str:
        return f"Group({self.name}, order={self.order})"

    @cached_property
    def inverses(self) -> np.ndarray:
        """int64 ``[N]``: ``inverses[a]`` = index of ``a⁻¹``."""
        rows, cols = np.nonzero(self.table == 0)
        inv = np.empty(self.order, dtype=np.int64)
        inv[rows] = cols
        return inv

    def mul(self, a, b):
        return self.table[a, b]

    @cached_property
    def parity(self) -> np.ndarray:
        """bool ``[N]``: True for even elements (even permutation of the faithful action; for Z_n
        an even residue; for products, all factors' parities summed)."""
        if self.factors:
            odd = np.zeros(self.order, dtype=np.int64)
            sizes = [f.order for f in self.factors]
            idx = np.unravel_index(np.arange(self.order), sizes)
            for f, i in zip(self.factors, idx):
                odd += ~f.parity[i]
            return odd % 2 == 0
        if self.kind == "cyclic":
            return np.arange(self.order) % 2 == 0
        if self.perms is None:
            return np.ones(self.order, dtype=bool)
        return np.array([_perm_parity(p) == 0 for p in self.perms])

    @cached_property
    def element_orders(self) -> np.ndarray:
        """int64 ``[N]``: the order of each element."""
        out = np.zeros(self.order, dtype=np.int64)
        cur, k = np.arange(self.order), 1
        while (out == 0).any():
            out[(cur == 0) & (out == 0)] = k
            cur, k = self.table[cur, np.arange(self.order)], k + 1
        return out

    # --- representations (npeff.groups.irreps) -------------------------------------------------
    def irreps(self) -> list[np.ndarray]:
        """The real orthogonal irreps as float64 arrays ``[N, d, d]`` (trivial first)."""
        return [ir.matrices for ir in self.irrep_info()]

    def irrep_info(self) -> list:
        """The :class:`npeff.groups.irreps.Irrep` objects (name, matrices, character, kind)."""
        from npeff.groups.irreps import irreps

        return irreps(self)

    def character_table(self) -> np.ndarray:
        """float64 ``[n_irreps, n_classes]`` (classes as in ``conjugacy_classes``)."""
        from npeff.groups.irreps import character_table

        return character_table(self)

    # --- groups built from this one (for npeff.groups.irreps, which cannot import this module) ---
    def times(self, *others: Group) -> Group:
        """The direct product ``self × others[0] × ...`` (:func:`direct_product`)."""
        return direct_product(self, *others)

    def symmetric_overgroup(self) -> Group:
        """The symmetric group on the points this permutation group acts on."""
        if self.perms is None:
            raise NpeffUserError(
                f"{self.name} is not a permutation group; it has no symmetric overgroup"
            )
        return symmetric_group(self.perms.shape[1])

    # --- conjugacy classes ----------------------------------------------------------------------
    @cached_property
    def conjugacy_classes(self) -> list[np.ndarray]:
        """The conjugacy classes as sorted index arrays, the identity's class first."""
        conj = self.table[
            self.table[np.arange(self.order)[:, None], np.arange(self.order)[None]],
            self.inverses[:, None],
        ]  # conj[g, a] = g a g⁻¹
        seen = np.full(self.order, -1)
        classes = []
        for a in range(self.order):
            if seen[a] >= 0:
                continue
            cls = np.unique(conj[:, a])
            seen[cls] = len(classes)
            classes.append(cls)
        return classes

    @cached_property
    def class_of(self) -> np.ndarray:
        """int64 ``[N]``: index of each element's conjugacy class."""
        out = np.empty(self.order, dtype=np.int64)
        for i, c in enumerate(self.conjugacy_classes):
            out[c] = i
        return out

    # --- subgroups and cosets -------------------------------------------------------------------
    def subgroup(self, generators) -> np.ndarray:
        """The subgroup generated by ``generators`` (element indices), as a sorted index array."""
        gens = np.atleast_1d(np.asarray(generators, dtype=np.int64))
        mask = np.zeros(self.order, dtype=bool)
        mask[0] = True
        frontier = np.array([0])
        while frontier.size and gens.size:
            fresh = np.zeros(self.order, dtype=bool)
            fresh[self.table[frontier][:, gens].ravel()] = True
            fresh &= ~mask
            mask |= fresh
            frontier = np.flatnonzero(fresh)
        return np.nonzero(mask)[0]

    def is_subgroup(self, elements) -> bool:
        h = np.asarray(elements)
        mask = np.zeros(self.order, dtype=bool)
        mask[h] = True
        return bool(
            mask[0] and mask[self.table[np.ix_(h, h)]].all() and mask[self.inverses[h]].all()
        )

    def left_cosets(self, subgroup) -> np.ndarray:
        """int64 ``[N]``: label of the left coset ``gH`` of every element g (labels 0..[G:H]-1,
        in order of first appearance)."""
        return _coset_labels(self.table[:, np.asarray(subgroup)])

    def right_cosets(self, subgroup) -> np.ndarray:
        """int64 ``[N]``: label of the right coset ``Hg`` of every element g."""
        return _coset_labels(self.table[np.asarray(subgroup), :].T)

    def conjugate_subgroup(self, subgroup, g: int) -> np.ndarray:
        """``g H g⁻¹`` as a sorted index array."""
        h = np.asarray(subgroup)
        return np.unique(self.table[self.table[g, h], self.inverses[g]])

    @cached_property
    def cyclic_subgroups(self) -> list[np.ndarray]:
        seen, out = set(), []
        for a in range(self.order):
            h = self.subgroup([a])
            key = h.tobytes()
            if key not in seen:
                seen.add(key)
                out.append(h)
        return out

    def subgroups(self, max_index: int | None = None, proper: bool = True) -> list[np.ndarray]:
        """All subgroups (as sorted index arrays), by joining cyclic subgroups until closed.

        ``max_index`` keeps those of index ≤ max_index (the trivial group and, with ``proper``,
        G itself are left out). Cost grows with the number of subgroups: fine up to |G| ≈ 200.
        """
        if self._subgroups is None:
            self._subgroups = _LATTICE_CACHE.get(self.name) if self.kind != "table" else None
        if self._subgroups is None:
            if self.order > MAX_LATTICE_ORDER:
                raise NpeffUserError(
                    f"the subgroup lattice of {self.name} (order {self.order}) is too large to "
                    f"enumerate here (limit |G| <= {MAX_LATTICE_ORDER}); use a smaller group"
                )
            found: dict[bytes, tuple[np.ndarray, list[int]]] = {}
            cyclic = []
            for h in self.cyclic_subgroups:
                gen = int(h[np.argmax(self.element_orders[h])]) if len(h) > 1 else 0
                found[h.tobytes()] = (h, [gen])
                cyclic.append((h, gen))
            frontier = list(found.values())
            while frontier:
                nxt = []
                for h, gens in frontier:
                    mask = np.zeros(self.order, dtype=bool)
                    mask[h] = True
                    for _c, gen in cyclic:
                        if mask[gen]:
                            continue
                        j = self.subgroup([*gens, gen])
                        k = j.tobytes()
                        if k not in found:
                            found[k] = (j, [*gens, gen])
                            nxt.append(found[k])
                frontier = nxt
            self._subgroups = [h for h, _ in found.values()]
            if self.kind != "table":
                _LATTICE_CACHE[self.name] = self._subgroups
        found = {h.tobytes(): h for h in self._subgroups}
        out = [h for h in found.values() if len(h) > 1 and not (proper and len(h) == self.order)]
        if max_index is not None:
            out = [h for h in out if self.order // len(h) <= max_index]
        out.sort(key=lambda h: (-len(h), h.tolist()))
        return out

    def subgroup_classes(self, max_index: int | None = None) -> list[list[np.ndarray]]:
        """Proper nontrivial subgroups grouped into conjugacy classes (largest subgroups first)."""
        subs = self.subgroups(max_index=max_index)
        keys = {h.tobytes(): i for i, h in enumerate(subs)}
        cls = [-1] * len(subs)
        out: list[list[np.ndarray]] = []
        for i, h in enumerate(subs):
            if cls[i] >= 0:
                continue
            members = {}
            for g in range(self.order):
                c = self.conjugate_subgroup(h, g)
                members[c.tobytes()] = c
            for k in members:
                if k in keys:
                    cls[keys[k]] = len(out)
            out.append(sorted(members.values(), key=lambda s: s.tolist()))
        return out

    def subgroup_name(self, subgroup) -> str:
        """A short description: order, index and (when recognisable) isomorphism type hints."""
        h = np.asarray(subgroup)
        orders = self.element_orders[h]
        abelian = bool(np.array_equal(self.table[np.ix_(h, h)], self.table[np.ix_(h, h)].T))
        cyc = bool((orders == len(h)).any())
        kind = "cyclic" if cyc else ("abelian" if abelian else "nonabelian")
        return f"order {len(h)} (index {self.order // len(h)}, {kind})"


def _coset_labels(member_rows: np.ndarray) -> np.ndarray:
    """Row g of ``member_rows`` lists the coset of g; returns a label per g."""
    key = np.sort(member_rows, axis=1)[:, 0]  # the smallest element names the coset
    _, first, labels = np.unique(key, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))  # relabel by first appearance
    return order[labels].astype(np.int64)


def _perm_parity(p) -> int:
    p = list(p)
    inv = sum(1 for i in range(len(p)) for j in range(i + 1, len(p)) if p[i] > p[j])
    return inv % 2


def _perm_table(perms: np.ndarray) -> np.ndarray:
    """Cayley table of a list of permutations (rows of ``perms``), closed under composition."""
    m = perms.shape[1]
    base = m + 1
    codes = (perms * base ** np.arange(m)).sum(axis=1)
    lookup = {int(c): i for i, c in enumerate(codes)}
    comp = perms[:, perms]  # comp[a, b, i] = perms[a][perms[b][i]]
    comp_codes = (comp * base ** np.arange(m)).sum(axis=-1)
    table = np.vectorize(lookup.__getitem__)(comp_codes)
    return table.astype(np.int64)


def _perm_names(perms: np.ndarray) -> list[str]:
    return ["(" + " ".join(str(v) for v in p) + ")" for p in perms]


def symmetric_group(n: int) -> Group:
    if not 1 <= n <= MAX_SYM_N:
        raise NpeffUserError(
            f"S_{n} is not supported: n must be in 1..{MAX_SYM_N} (|S_7| = 5040 would make a "
            f"{5040}² Cayley table and as many inputs); use a smaller n"
        )
    perms = np.array(list(itertools.permutations(range(n))), dtype=np.int64).reshape(-1, n)
    return Group(f"S{n}", _perm_table(perms), _perm_names(perms), perms=perms, kind="symmetric")


def alternating_group(n: int) -> Group:
    if not 1 <= n <= MAX_SYM_N:
        raise NpeffUserError(
            f"A_{n} is not supported: n must be in 1..{MAX_SYM_N}; use a smaller n"
        )
    perms = np.array(list(itertools.permutations(range(n))), dtype=np.int64).reshape(-1, n)
    perms = perms[[_perm_parity(p) == 0 for p in perms]]
    return Group(f"A{n}", _perm_table(perms), _perm_names(perms), perms=perms, kind="alternating")


def cyclic_group(n: int) -> Group:
    if not 1 <= n <= MAX_ORDER:
        raise NpeffUserError(f"Z_{n} is not supported: n must be in 1..{MAX_ORDER}")
    idx = np.arange(n)
    perms = (idx[:, None] + idx[None, :]) % n
    return Group(f"Z{n}", perms.copy(), [str(i) for i in range(n)], perms=perms, kind="cyclic")


def dihedral_group(n: int) -> Group:
    """D_n of order 2n: ``r^k`` (index k) and ``s r^k`` (index n + k) acting on n vertices."""
    if not 3 <= n <= MAX_ORDER // 2:
        raise NpeffUserError(
            f"D_{n} (order 2n) is not supported: n must be in 3..{MAX_ORDER // 2} (D_2 is Z2xZ2)"
        )
    v = np.arange(n)
    rot = [(v + k) % n for k in range(n)]
    refl = [(-(v + k)) % n for k in range(n)]  # s∘r^k with s: i -> -i
    perms = np.array(rot + refl, dtype=np.int64)
    names = [f"r{k}" for k in range(n)] + [f"sr{k}" for k in range(n)]
    return Group(f"D{n}", _perm_table(perms), names, perms=perms, kind="dihedral")


def direct_product(*factors: Group) -> Group:
    sizes = [f.order for f in factors]
    order = int(np.prod(sizes))
    if order > MAX_ORDER:
        raise NpeffUserError(f"the product has order {order} > {MAX_ORDER}; use smaller factors")
    idx = np.unravel_index(np.arange(order), sizes)
    table = np.zeros((order, order), dtype=np.int64)
    for f, i in zip(factors, idx):
        table = table * f.order + f.table[np.ix_(i, i)]
    names = [
        "(" + ", ".join(f.element_names[i[k]] for f, i in zip(factors, idx)) + ")"
        for k in range(order)
    ]
    name = "x".join(f.name for f in factors)
    return Group(name, table, names, factors=tuple(factors), kind="product")


_BUILDERS = {
    "S": symmetric_group,
    "A": alternating_group,
    "Z": cyclic_group,
    "C": cyclic_group,
    "D": dihedral_group,
}


def get_group(name: str | Group) -> Group:
    """The group named ``name``: ``S<n>``, ``A<n>`` (n ≤ 6), ``Z<n>``, ``D<n>`` (order 2n), or a
    direct product such as ``S3xZ3`` or ``Z2xZ2xZ2``. Fails with what is available."""
    if isinstance(name, Group):
        return name
    spec = str(name).strip().replace(" ", "")
    parts = re.split(r"[x×*]", spec)
    factors = []
    for part in parts:
        m = re.fullmatch(r"([SAZCD])_?(\d+)", part, flags=re.IGNORECASE)
        if not m:
            raise NpeffUserError(
                f"unknown group {name!r}: use S<n> or A<n> (n <= {MAX_SYM_N}), Z<n>, D<n> "
                "(dihedral of order 2n), or products like S3xZ3"
            )
        factors.append(_BUILDERS[m.group(1).upper()](int(m.group(2))))
    if len(factors) == 1:
        return factors[0]
    return direct_product(*factors)
