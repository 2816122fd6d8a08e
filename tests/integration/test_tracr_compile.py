"""Compile step (needs the `tracr` extra: jax, dm-haiku, tracr-pypi; skipped without it)."""

from __future__ import annotations

import importlib.util
import sys
import types

import pytest
from omegaconf import OmegaConf

from npeff.run.common import CONFIG_PATH

HAVE_TRACR = all(importlib.util.find_spec(m) is not None for m in ("jax", "haiku", "tracr"))
pytestmark = pytest.mark.skipif(
    not HAVE_TRACR, reason='needs the optional `tracr` extra: pip install -e ".[tracr]"'
)


def _cfg(**over):
    cfg = OmegaConf.load(f"{CONFIG_PATH}/tracr_compile.yaml")
    cfg.pop("defaults")
    return OmegaConf.merge(cfg, OmegaConf.create(over))


@pytest.mark.parametrize(
    "program,vocab,max_len",
    [
        ("hist", ["a", "b", "c"], 3),
        ("sort_unique", [1, 2, 3, 4], 4),
        ("frac_prevs", ["x", "y"], 4),
        ("length", ["a", "b"], 3),
    ],
)
def test_library_programs_pass_both_checks(tmp_path, program, vocab, max_len):
    from npeff.artifacts.tracr_model import load_tracr_model
    from npeff.tracr.compile import compile_and_export

    m = compile_and_export(
        _cfg(program=program, vocab=vocab, max_seq_len=max_len, fidelity={"n_random": 64}),
        tmp_path / f"{program}.h5",
    )
    assert m["port_max_abs_err"] <= 1e-5
    assert m["rasp_agreement"] == 1.0 and m["rasp_exhaustive"]
    export = load_tracr_model(tmp_path / f"{program}.h5")
    assert export.meta["fidelity"]["rasp_n_inputs"] == m["rasp_n_inputs"] > 0


def test_packaged_toy_nli_is_what_the_compile_step_exports(tmp_path):
    """The packaged file is regenerated bit for bit (same weights uid), and its checks pass."""
    from npeff.artifacts.tracr_model import load_tracr_model
    from npeff.models.tracr import PACKAGED_TOY_NLI
    from npeff.tracr.compile import compile_and_export

    packaged = load_tracr_model(PACKAGED_TOY_NLI)
    m = compile_and_export(
        _cfg(program="toy_nli", n_dataset=60, fidelity={"n_random": 64, "n_sample": 500}),
        tmp_path / "nli.h5",
    )
    assert m["uid"] == packaged.uid
    assert m["port_max_abs_err"] <= 1e-5 and m["rasp_agreement"] == 1.0
    assert m["dataset_accuracy"] == 1.0
    fresh = load_tracr_model(tmp_path / "nli.h5")
    assert fresh.meta["residual_labels"] == packaged.meta["residual_labels"]  # no tracr ids
    assert fresh.meta["variables"] == packaged.meta["variables"]
    # the exported RASP variables equal the program's Python oracle
    from npeff.tracr import nli_program as P

    tokens = fresh.meta["input_encoding"]
    for row, var in zip(fresh.dataset["inputs"], fresh.dataset["variables"]):
        ref = P.reference_variables([tokens[t] for t in row[1:]])
        assert [ref[n] for n in fresh.variable_names] == var.tolist()


def _module(tmp_path, name, body):
    mod = types.ModuleType(name)
    exec(body, mod.__dict__)
    sys.modules[name] = mod
    return mod


def test_disagreeing_program_is_refused(tmp_path):
    from npeff.tracr.compile import ProgramRefused, compile_and_export

    # sort_unique on inputs with repeated tokens: outside its precondition, the compiled model
    # and RASP differ (google-deepmind/tracr#9)
    _module(
        tmp_path,
        "npeff_test_sortdup",
        "from tracr.compiler import lib\nfrom tracr.rasp import rasp\n"
        "def make():\n    return lib.make_sort_unique(rasp.tokens, rasp.tokens)\n",
    )
    with pytest.raises(ProgramRefused, match="differs from rasp.evaluate"):
        compile_and_export(
            _cfg(program="npeff_test_sortdup:make", vocab=[1, 2, 3], max_seq_len=3),
            tmp_path / "x.h5",
        )
    assert not (tmp_path / "x.h5").exists()


def test_uncompilable_program(tmp_path):
    from npeff.tracr.compile import compile_and_export

    _module(
        None,
        "npeff_test_bad",
        "from tracr.rasp import rasp\n"
        "def make():\n    return rasp.Map(lambda i: i + 1, rasp.indices)\n",
    )
    with pytest.raises(ValueError, match="does not compile with tracr"):
        compile_and_export(
            _cfg(program="npeff_test_bad:make", vocab=["a"], max_seq_len=3), tmp_path / "x.h5"
        )
