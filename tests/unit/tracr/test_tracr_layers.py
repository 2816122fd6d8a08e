"""Layer check on planted pseudo-Fisher vectors (no jax: the packaged export's structure)."""

from __future__ import annotations

import numpy as np
import pytest

from npeff.artifacts.tracr_model import load_tracr_model
from npeff.models.core import parameter_layout
from npeff.models.tracr import PACKAGED_TOY_NLI, TracrTransformer
from npeff.tracr.layers import layer_check, variable_masks


def test_planted_mass_is_found_on_the_writing_units():
    export = load_tracr_model(PACKAGED_TOY_NLI)
    layout = parameter_layout(TracrTransformer(export))
    masks = variable_masks(export, layout)
    names = export.variable_names
    # units are a subset of the block, and each variable's units lie in one of its blocks
    for v in names:
        assert masks.unit[v].any() and not (masks.unit[v] & ~masks.block[v]).any()
    # two variables computed in parallel in one MLP have disjoint hidden units
    a, b = "subj_conflict", "colour_added"
    assert (masks.block[a] == masks.block[b]).all() and not (masks.unit[a] & masks.unit[b]).any()

    rng = np.random.default_rng(0)
    m = layout.n_parameters
    cols = np.sort(rng.choice(m, size=m // 2, replace=False))
    G = np.zeros((3, cols.size))
    G[0, masks.unit[a][cols]] = rng.normal(size=int(masks.unit[a][cols].sum()))  # all on a's units
    G[1] = rng.normal(size=cols.size)  # spread over everything
    G[2, masks.unit[b][cols]] = 1.0
    G[2, ~masks.block[b][cols]] = 0.001
    base = {n: 0.1 for n in names} | {f"{a}&{b}": 0.05}
    out = layer_check(G, cols, masks, [[a], [a], [f"{a}&{b}", a]], base)
    rows = {r["component"]: r for r in out["components"]}
    assert rows[0]["unit_share"] == pytest.approx(1.0) and rows[0]["block_share"] == pytest.approx(
        1.0
    )
    assert rows[0]["unit_share_other_variables"] < 0.01
    # the spread component's share is about the concept's parameter fraction
    assert abs(rows[1]["block_share"] - rows[1]["block_param_fraction"]) < 0.02
    # the most specific shared concept (an AND) uses both variables' units
    assert rows[2]["concept"] == f"{a}&{b}" and rows[2]["unit_share"] > 0.99
    assert out["n_components_checked"] == 3
