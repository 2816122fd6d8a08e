"""Coset concepts for the group task, and NPEFF components read against the mechanism.

Concepts: a neuron of a ρ-set circuit is constant on the left cosets ``xH`` of its left
stabiliser, the right cosets ``Hy`` of its right one, and so on for ``z = x·y``
(seed-systems.md §2.3). Per input (x, y) and subgroup H of small index the concepts are
``x ∈ gH`` (left coset of x), ``y ∈ Hg`` (right coset of y), ``x·y ∈ gH`` and ``x·y ∈ Hg``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from npeff.groups.core import Group


@dataclass
class CosetFamily:
    """One subgroup H (``elements``, sorted indices), named ``label``; ``cls`` its conjugacy class."""

    label: str
    elements: np.ndarray
    cls: int


def coset_families(group: Group, max_index: int) -> list[CosetFamily]:
    """Every proper nontrivial subgroup of index <= ``max_index``, named ``H<class>.<member>``."""
    out = []
    for c, members in enumerate(group.subgroup_classes(max_index=max_index)):
        for j, h in enumerate(members):
            out.append(CosetFamily(f"H{c}.{j}[{len(h)}]", h, c))
    return out


def coset_concepts(
    group: Group, x: np.ndarray, y: np.ndarray, families: list[CosetFamily]
) -> tuple[list[str], np.ndarray]:
    """Concept names and bool ``[n, c]`` for inputs (x, y) (int ``[n]``): for every family H and
    coset k, ``x in gH`` (``xL``), ``y in Hg`` (``yR``), ``x·y in gH`` (``zL``), ``x·y in Hg`` (``zR``)."""
    x, y = np.asarray(x), np.asarray(y)
    z = group.table[x, y]
    names, cols = [], []
    for fam in families:
        left, right = group.left_cosets(fam.elements), group.right_cosets(fam.elements)
        k = group.order // len(fam.elements)
        for role, labels, v in (
            ("xL", left, x),
            ("yR", right, y),
            ("zL", left, z),
            ("zR", right, z),
        ):
            lab = labels[v]
            for c in range(k):
                names.append(f"{role}:{fam.label}#{c}")
                cols.append(lab == c)
    if not cols:
        return [], np.zeros((len(x), 0), dtype=bool)
    return names, np.stack(cols, axis=1)
