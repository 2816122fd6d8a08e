"""group: the multiplication table of a finite group (Z_n or S_n), as in seed-systems.md §2.

Inputs are element indices ``x``, ``y`` (int64 ``[B]``); the label is the index of ``x·y``.
Elements of S_n are the permutations of ``range(n)`` in lexicographic order (index 0 = identity);
``(x·y)(i) = x(y(i))``. Elements of Z_n are ``0..n-1`` with addition mod n.

Splits: a seeded ``train_fraction`` of all |G|² pairs is ``train``; the held-out rest is split
into ``fit`` (a ``fit_fraction`` of it) and ``eval``, all disjoint.

Concepts (recomputable from (x, y)): x_is_identity, y_is_identity, same_element (x = y),
inverse_pair (x·y = e), commuting (x·y = y·x), x_even, y_even (even permutation for S_n,
even residue for Z_n).
"""

from __future__ import annotations

import itertools
import re

import numpy as np
import torch

from npeff.tasks.base import NpeffTask, SplitData, TaskInfo, split_indices

CONCEPT_NAMES = [
    "x_is_identity",
    "y_is_identity",
    "same_element",
    "inverse_pair",
    "commuting",
    "x_even",
    "y_even",
]


def permutation_parity(p: tuple[int, ...]) -> int:
    """0 for even, 1 for odd (count of inversions mod 2)."""
    inv = sum(1 for i in range(len(p)) for j in range(i + 1, len(p)) if p[i] > p[j])
    return inv % 2


class FiniteGroup:
    """A finite group given by its elements' names, Cayley table ``[N, N]`` and parity ``[N]``."""

    def __init__(self, name: str, element_names: list[str], table: np.ndarray, even: np.ndarray):
        self.name = name
        self.element_names = element_names
        self.table = table
        self.even = even

    @property
    def order(self) -> int:
        return len(self.element_names)

    @classmethod
    def parse(cls, spec: str) -> FiniteGroup:
        m = re.fullmatch(r"\s*([SZ])_?(\d+)\s*", str(spec), flags=re.IGNORECASE)
        if not m:
            raise ValueError(f"unknown group {spec!r}; available: 'S<n>' (n=2..6) or 'Z<n>' (n>=2)")
        kind, n = m.group(1).upper(), int(m.group(2))
        if kind == "Z":
            if n < 2:
                raise ValueError("Z_n needs n >= 2")
            idx = np.arange(n)
            table = (idx[:, None] + idx[None, :]) % n
            return cls(f"Z{n}", [str(i) for i in range(n)], table, idx % 2 == 0)
        if not 2 <= n <= 6:
            raise ValueError(f"S_n supported for n = 2..6 (S_{n} would be too large)")
        perms = list(itertools.permutations(range(n)))
        index = {p: i for i, p in enumerate(perms)}
        table = np.empty((len(perms), len(perms)), dtype=np.int64)
        for i, a in enumerate(perms):
            for j, b in enumerate(perms):
                table[i, j] = index[tuple(a[b[k]] for k in range(n))]
        even = np.array([permutation_parity(p) == 0 for p in perms])
        names = ["(" + " ".join(str(v) for v in p) + ")" for p in perms]
        return cls(f"S{n}", names, table, even)


class GroupTask(NpeffTask):
    """The Cayley table of ``group`` as a classification task with |G| classes."""

    name = "group"

    def __init__(
        self,
        group: str = "S4",
        train_fraction: float = 0.5,
        fit_fraction: float = 0.5,
        seed: int = 0,
        batch_size: int | None = None,
    ):
        super().__init__(seed=seed, batch_size=batch_size)
        if not 0.0 < float(train_fraction) < 1.0:
            raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
        if not 0.0 < float(fit_fraction) < 1.0:
            raise ValueError(f"fit_fraction must be in (0, 1), got {fit_fraction}")
        self.group = FiniteGroup.parse(group)
        self.train_fraction = float(train_fraction)
        self.fit_fraction = float(fit_fraction)

    def _build(self) -> tuple[TaskInfo, dict[str, SplitData]]:
        g = self.group
        n = g.order
        xs, ys = np.divmod(np.arange(n * n), n)
        n_train = int(round(self.train_fraction * n * n))
        n_fit = int(round(self.fit_fraction * (n * n - n_train)))
        idx = split_indices(
            n * n,
            {"train": n_train, "fit": n_fit, "eval": n * n - n_train - n_fit},
            self.seed,
        )
        splits = {}
        for split, rows in idx.items():
            x, y = xs[rows], ys[rows]
            z = g.table[x, y]
            concepts = np.stack(
                [
                    x == 0,
                    y == 0,
                    x == y,
                    z == 0,
                    z == g.table[y, x],
                    g.even[x],
                    g.even[y],
                ],
                axis=1,
            )
            records = [
                {
                    "inputs": f"({g.element_names[a]}, {g.element_names[b]})",
                    "text": f"{g.element_names[a]} · {g.element_names[b]}",
                    "label": int(c),
                }
                for a, b, c in zip(x, y, z)
            ]
            tensors = {
                "x": torch.as_tensor(x, dtype=torch.long),
                "y": torch.as_tensor(y, dtype=torch.long),
                "labels": torch.as_tensor(z, dtype=torch.long),
            }
            splits[split] = SplitData(tensors, records, concepts.astype(bool))
        info = TaskInfo(
            num_classes=n,
            label_names=list(g.element_names),
            concept_names=list(CONCEPT_NAMES),
            hints={"group_order": n},
        )
        return info, splits
