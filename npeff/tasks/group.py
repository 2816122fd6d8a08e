"""group: the multiplication table of a finite group (npeff.groups.get_group), seed-systems.md §2.

Inputs are element indices ``x``, ``y`` (int64 ``[B]``); the label is the index of ``x·y``.
Elements of S_n are the permutations of ``range(n)`` in lexicographic order (index 0 = identity);
``(x·y)(i) = x(y(i))``. Elements of Z_n are ``0..n-1`` with addition mod n.

Splits: a seeded ``train_fraction`` of all |G|² pairs is ``train``; the held-out rest is split
into ``fit`` (a ``fit_fraction`` of it) and ``eval``, all disjoint.

Groups: any name ``npeff.groups.get_group`` takes (S<n>, A<n>, Z<n>, D<n>, products as S3xZ3).

Concepts (``concepts=basic``, recomputable from (x, y)): x_is_identity, y_is_identity, same_element (x = y),
inverse_pair (x·y = e), commuting (x·y = y·x), x_even, y_even (even permutation for S_n,
even residue for Z_n). ``concepts=cosets`` records instead the left coset of x, right coset of
y and both cosets of x·y for every subgroup of index <= ``coset_max_index``
(:mod:`npeff.groups.concepts`), the structure the network's neurons are constant on; ``both``
records both sets. ``n_seeds`` (> 1: ``npeff-train`` trains a zoo, :mod:`npeff.run.zoo`)
``recipe`` (wu | chughtai) and ``zoo_trainer`` (train even one seed with the stacked trainer,
~5x fewer FLOPs than the Lightning path for S5) are read by the zoo trainer only.
"""

from __future__ import annotations

import numpy as np
import torch

from npeff.errors import NpeffUserError
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
    """The task's view of a :class:`npeff.groups.Group`: name, element names, table, parity."""

    def __init__(self, group):
        self.base = group
        self.name = group.name
        self.element_names = list(group.element_names)
        self.table = group.table
        self.even = group.parity

    @property
    def order(self) -> int:
        return len(self.element_names)

    @classmethod
    def parse(cls, spec: str) -> FiniteGroup:
        from npeff.groups import get_group

        return cls(get_group(spec))


CONCEPT_SETS = ("basic", "cosets", "both")


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
        concepts: str = "basic",
        coset_max_index: int = 10,
        n_seeds: int = 1,
        recipe: str | None = None,
        zoo_trainer: bool = False,
    ):
        super().__init__(seed=seed, batch_size=batch_size)
        if str(concepts) not in CONCEPT_SETS:
            raise NpeffUserError(f"unknown concepts {concepts!r}; available: {list(CONCEPT_SETS)}")
        if int(n_seeds) < 1:
            raise NpeffUserError(f"n_seeds must be >= 1, got {n_seeds}")
        self.concept_set = str(concepts)
        self.coset_max_index = int(coset_max_index)
        self.n_seeds = int(n_seeds)
        self.recipe = recipe
        self.zoo_trainer = bool(zoo_trainer)
        if not 0.0 < float(train_fraction) < 1.0:
            raise NpeffUserError(f"train_fraction must be in (0, 1), got {train_fraction}")
        if not 0.0 < float(fit_fraction) < 1.0:
            raise NpeffUserError(f"fit_fraction must be in (0, 1), got {fit_fraction}")
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
        coset_names: list[str] = []
        families = []
        if self.concept_set != "basic":
            from npeff.groups.concepts import coset_concepts, coset_families

            families = coset_families(g.base, self.coset_max_index)
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
            if self.concept_set == "cosets":
                coset_names, concepts = coset_concepts(g.base, x, y, families)
            elif self.concept_set == "both":
                coset_names, cc = coset_concepts(g.base, x, y, families)
                concepts = np.concatenate([concepts, cc], axis=1)
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
            concept_names=(list(CONCEPT_NAMES) if self.concept_set != "cosets" else [])
            + coset_names,
            hints={"group_order": n},
        )
        return info, splits
