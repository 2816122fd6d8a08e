"""``pefs_split``: the one answer to "which split is this PEF file" (stages report, perturb,
compare_coar, groups)."""

from __future__ import annotations

import numpy as np
import pytest

from npeff.artifacts.pefs import SPLIT_UNKNOWN, Pefs, load_pefs, pefs_split, save_pefs


def _pefs(metadata: dict) -> Pefs:
    rng = np.random.default_rng(0)
    return Pefs(
        kind="diag",
        values=rng.random((3, 2)).astype(np.float32),
        indices=np.array([[0, 2], [1, 3], [0, 3]], dtype=np.int32),
        norms=np.ones(3, dtype=np.float32),
        labels=np.zeros(3, dtype=np.int64),
        logits=np.zeros((3, 2), dtype=np.float32),
        n_parameters=4,
        metadata=metadata,
    )


@pytest.mark.parametrize(
    ("meta", "given", "want"),
    [
        ({"split": "fit"}, None, "fit"),
        ({"split": "fit"}, "eval", "eval"),  # the override wins
        ({"config": {"split": "train"}}, None, "train"),  # the stored run config
        ({"split": "eval", "config": {"split": "fit"}}, None, "eval"),  # metadata first
        ({"config": "split: fit\nseed: 0\n"}, None, "fit"),  # config stored as YAML text
        ({"config": '{"split": "eval"}'}, None, "eval"),  # ... or JSON text
    ],
)
def test_the_split_is_read_in_order(meta, given, want):
    assert pefs_split(meta, given) == want
    assert pefs_split(_pefs(meta), given) == want


def test_the_split_survives_a_file_round_trip(tmp_path):
    path = save_pefs(_pefs({"split": "fit", "config": {"split": "fit"}}), tmp_path / "p.h5")
    assert pefs_split(load_pefs(path)) == "fit"


@pytest.mark.parametrize("meta", [None, {}, {"config": "not: [yaml"}, {"config": {"seed": 1}}])
def test_no_split_is_one_clear_error_or_the_default(meta):
    with pytest.raises(ValueError, match="pass split=fit or split=eval") as e:
        pefs_split(meta)
    assert str(e.value) == SPLIT_UNKNOWN and "\n" not in SPLIT_UNKNOWN
    assert pefs_split(meta, default="eval") == "eval"
