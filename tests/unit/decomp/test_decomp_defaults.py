"""One source of defaults per decomposition kind: the Python API takes them from the kind's
config file, so ``DecompSettings(kind=...)`` equals what Hydra's ``decomp=<file>`` composes."""

import pytest
from omegaconf import OmegaConf

from npeff.decomp.module import KIND_CONFIGS, DecompSettings
from tests.helpers.compose import compose_config


def composed(group_file: str) -> dict:
    cfg = compose_config("decompose", [f"decomp={group_file}", "inputs.pefs=x.h5"])
    return OmegaConf.to_container(cfg.decomp, resolve=True)


@pytest.mark.parametrize("kind,group_file", sorted(KIND_CONFIGS.items()))
def test_python_defaults_equal_the_kinds_config(kind, group_file):
    from_hydra = composed(group_file)
    assert from_hydra["kind"] == kind
    settings = DecompSettings.from_dict(from_hydra)
    assert settings.extra == {}, "every key of the config file is a DecompSettings field"
    assert DecompSettings(kind=kind) == settings


def test_diag_gets_the_d_npeff_seed_and_eps_not_lrms():
    d, lrm = DecompSettings(kind="diag"), DecompSettings()
    assert (d.seed, d.mu_eps, d.n_iters_g_only) == (43190432042, 1e-8, 0)
    assert (lrm.seed, lrm.mu_eps) == (32497, 1e-9)
    # explicit values still win, and only the kind's defaults fill the rest
    s = DecompSettings(kind="diag", seed=3, n_components=4)
    assert (s.seed, s.n_components, s.mu_eps) == (3, 4, 1e-8)


def test_unknown_kind_is_a_clear_error():
    with pytest.raises(ValueError, match="decomp.kind must be one of"):
        DecompSettings(kind="lvrm")
