"""npeff.groups: finite groups, their real irreps, and the group-operation network analyses.

``get_group(name)`` builds ``S<n>``, ``A<n>``, ``Z<n>``, ``D<n>`` (order 2n) or products such as
``S3xZ3``; the returned :class:`Group` has ``table`` (int ``[N, N]``, ``table[a, b]`` = index of
``a·b``, index 0 the identity) and ``irreps()`` (a list of float arrays ``[N, d, d]``).
"""

from __future__ import annotations

from npeff.groups.core import Group, direct_product, get_group

__all__ = ["Group", "direct_product", "get_group"]
