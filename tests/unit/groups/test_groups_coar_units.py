"""COAR's top units per example against the irreps, on planted attributions."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from npeff.groups.coar_units import coar_irrep_purity, top_unit_mass
from npeff.models.simple import GroupMLP
from npeff.models.units import build_unit_map


def _attr(weights, pattern="hidden.weight"):
    m = GroupMLP(6, 6, 4, 8)
    units = build_unit_map(m, [{"pattern": pattern, "granularity": "neuron"}])
    return SimpleNamespace(weights=weights, units=units, n_units=len(units), path="planted.h5")


def test_top_units_carry_their_attribution_on_their_neurons():
    w = np.zeros((3, 8))
    w[0, [1, 4]] = [2.0, -3.0]
    w[1] = np.arange(8)
    w[2, 7] = 1.0
    mass = top_unit_mass(_attr(w), 8, top_k=2)
    assert np.allclose(mass[0], np.abs(w[0]))
    assert np.allclose(mass[1], [0, 0, 0, 0, 0, 0, 6, 7])
    assert mass[2, 7] == 1.0 and mass[2].sum() == 1.0


def test_planted_irrep_pure_examples_beat_the_shuffled_control():
    irrep = np.array([1, 1, 1, 1, 2, 2, 2, 2])
    rng = np.random.default_rng(0)
    w = rng.random((40, 8)) * 0.01
    w[:20, :4] += 1.0  # these examples' top units are all irrep 1
    w[20:, 4:] += 1.0  # and these irrep 2
    out = coar_irrep_purity(_attr(w), irrep, 3, np.ones(8, bool), top_k=3, n_shuffles=30)
    assert out["mean_purity"] == pytest.approx(1.0)
    assert out["shuffled_mean_purity"] < 0.9


def test_units_must_be_the_hidden_neurons():
    with pytest.raises(ValueError, match="no units on hidden.weight"):
        top_unit_mass(_attr(np.zeros((1, 6)), pattern="unembed.weight"), 8, 2)
