"""The stage hand-off files (artifacts/): round trips, one-line errors on a wrong file, and the
helpers moved out of npeff/run/ (file digest, expansion components, Spearman of the comparison)."""

from __future__ import annotations

import hashlib
import json
from types import SimpleNamespace

import numpy as np
import pytest

from npeff.artifacts.coar_summary import load_coar_summary, save_coar_summary
from npeff.artifacts.comparison import load_comparison, save_comparison
from npeff.artifacts.digest import file_sha256
from npeff.artifacts.neurons import KEYS, load_neurons, save_neurons
from npeff.artifacts.tracr_check import load_tracr_check, save_tracr_check
from npeff.coar.npeff_compare import pearson, spearman
from npeff.perturb.flawed import expansion_components


def test_json_files_round_trip(tmp_path):
    save_coar_summary(tmp_path, {"attributions": "a.h5", "corr_heldout_mean": 0.5})
    assert load_coar_summary(tmp_path)["corr_heldout_mean"] == 0.5
    path = save_comparison(tmp_path, {"npeff": {"tcav": 1.0}}, {"n_examples": 3})
    assert load_comparison(path) == {"methods": {"npeff": {"tcav": 1.0}}, "info": {"n_examples": 3}}
    path = save_tracr_check(tmp_path, {"concept_table": [], "report_tables": []})
    assert json.loads(path.read_text()) == load_tracr_check(path)
    assert not list(tmp_path.glob("*.tmp*"))  # atomic: no leftovers


def test_json_files_refuse_wrong_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="npeff-coar"):
        load_coar_summary(tmp_path)
    (tmp_path / "coar.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a coar.json file"):
        load_coar_summary(tmp_path)
    bad = tmp_path / "c.json"
    bad.write_text(json.dumps({"methods": {}}))  # no "info"
    with pytest.raises(ValueError, match="no 'info'"):
        load_comparison(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a tracr_check.json file"):
        load_tracr_check(bad)


def test_neurons_round_trip_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {k: rng.normal(size=(5, 3)) for k in KEYS[:4]}
    arrays |= {
        "irrep": np.arange(5),
        "purity": rng.random(5),
        "live": np.array([1, 0, 1, 1, 0], bool),
    }
    got = load_neurons(save_neurons(tmp_path / "neurons.npz", arrays))
    assert set(got) == set(KEYS)
    for k in KEYS:
        assert got[k].dtype == arrays[k].dtype and np.array_equal(got[k], arrays[k])
    with pytest.raises(ValueError, match="missing"):
        save_neurons(tmp_path / "x.npz", {"irrep": np.arange(3)})
    np.savez(tmp_path / "other.npz", irrep=np.arange(3))
    with pytest.raises(ValueError, match="no 'shares_left'"):
        load_neurons(tmp_path / "other.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(ValueError, match="not a neurons.npz file"):
        load_neurons(tmp_path / "text.npz")


def test_file_sha256_is_the_sha256_of_the_bytes(tmp_path):
    data = np.random.default_rng(1).bytes(3 * (1 << 20) + 17)
    p = tmp_path / "blob"
    p.write_bytes(data)
    assert file_sha256(p) == hashlib.sha256(data).hexdigest()
    # the limit stops after the block that reaches it (whole 1 MiB blocks)
    assert file_sha256(p, limit=1 << 20) == hashlib.sha256(data[: 1 << 20]).hexdigest()
    assert file_sha256(p, limit=(1 << 20) + 1) == hashlib.sha256(data[: 2 << 20]).hexdigest()


def test_expansion_components_sources():
    dec = SimpleNamespace(n_components=5, metadata={"n_frozen_components": 2})
    assert expansion_components(dec) == [0, 1, 2]  # new components first, frozen last
    assert expansion_components(dec, None, [4, 1]) == [4, 1]  # explicit wins
    comp = SimpleNamespace(n_components=5, metadata={"expansion_component_indices": [3]})
    plain = SimpleNamespace(n_components=5, metadata={})
    assert expansion_components(plain, comp) == [3]
    with pytest.raises(ValueError, match="expansion_components"):
        expansion_components(plain)


def test_spearman_and_pearson_match_rank_formulas():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=40), rng.normal(size=40) + 0.3 * np.arange(40)

    def ranks(x):  # no ties in continuous data
        r = np.empty(len(x))
        r[np.argsort(x)] = np.arange(len(x))
        return r

    ra, rb = ranks(a) - ranks(a).mean(), ranks(b) - ranks(b).mean()
    assert spearman(a, b) == pytest.approx((ra @ rb) / np.sqrt((ra @ ra) * (rb @ rb)), abs=1e-12)
    ca, cb = a - a.mean(), b - b.mean()
    assert pearson(a, b) == pytest.approx((ca @ cb) / np.sqrt((ca @ ca) * (cb @ cb)), abs=1e-12)
    assert np.isnan(spearman(np.ones(40), b)) and np.isnan(pearson(a, np.zeros(40)))
