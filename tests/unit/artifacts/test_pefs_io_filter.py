"""Filtering PEF files (algorithm.md §9): subsets keep every field and the source positions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from npeff.artifacts.pefs import load_pefs
from npeff.fisher import compute_pefs
from npeff.fisher.filter import filter_pefs
from tests.helpers.problems import problem


@pytest.fixture(scope="module")
def pefs(tmp_path_factory):
    model, ds = problem("mlp", n=12)
    path = tmp_path_factory.mktemp("f") / "pefs.h5"
    compute_pefs(
        model, torch.utils.data.DataLoader(ds, batch_size=5), path, n_values=6, progress=False
    )
    return load_pefs(path)


def test_incorrect_only(pefs):
    sub, order = filter_pefs(pefs, incorrect_only=True)
    expected = [i for i in range(pefs.n_examples) if pefs.logits[i].argmax() != pefs.labels[i]]
    assert 0 < len(expected) < pefs.n_examples
    np.testing.assert_array_equal(order, expected)
    np.testing.assert_array_equal(sub.source_indices, expected)
    np.testing.assert_array_equal(sub.values, pefs.values[expected])
    np.testing.assert_array_equal(sub.col_offsets, pefs.col_offsets[expected])
    assert (sub.predictions != sub.labels).all()


def test_label_indices_and_relabel(pefs):
    sub, order = filter_pefs(pefs, label=1)
    assert (sub.labels == 1).all() and len(order) == (pefs.labels == 1).sum()
    sub, order = filter_pefs(pefs, indices=[7, 2, 9])
    np.testing.assert_array_equal(order, [7, 2, 9])
    np.testing.assert_array_equal(sub.norms, pefs.norms[[7, 2, 9]])
    sub, _ = filter_pefs(pefs, relabel=True)
    np.testing.assert_array_equal(sub.labels, (pefs.labels + 1) % 3)
    with pytest.raises(ValueError, match="exclude each other"):
        filter_pefs(pefs, incorrect_only=True, correct_only=True)
    with pytest.raises(IndexError):
        filter_pefs(pefs, indices=[99])
