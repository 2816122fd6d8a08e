"""The step registry: every step found once and in order, the one switch per optional step,
flat stage settings, and the one-line errors for renamed or unknown keys (before any work)."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from npeff.run import pipeline
from npeff.run.configs import stage_config
from npeff.run.steps import Context, Step, check_config, registry, run_steps
from tests.helpers.compose import compose_config

CORE = ["train", "pefs_fit", "decompose", "pefs_eval", "fit", "perturb", "report"]


def _on(overrides: list[str]) -> list[str]:
    return [s.name for s in check_config(compose_config("pipeline", overrides), registry())]


def test_registry_orders_core_and_optional_steps():
    names = [s.name for s in registry()]
    assert [n for n in names if n in CORE] == CORE
    assert names.index("tracr_compile") < names.index("train")
    assert names.index("decompose") < names.index("recover") < names.index("expand")
    assert names.index("expand") < names.index("pefs_eval")
    assert names.index("perturb") < names.index("baselines") < names.index("report")
    optional = {s.name for s in registry() if s.optional}
    assert optional == set(
        compose_config("pipeline", []).steps
    )  # every optional step has its switch in the config


def test_default_runs_the_core_steps_only():
    assert _on([]) == CORE


@pytest.mark.parametrize(
    "overrides, step",
    [
        (["experiment=flawed_heuristics"], "expand"),
        (["experiment=group_s5"], "groups"),
        (["experiment=coar_compare_s4"], "coar_compare"),
        (["experiment=shortcut_fix"], "shortcut"),
        (["baselines=[kmeans]"], "baselines"),
        (["fisher=lm", "fisher.compression=projection"], "recover"),
    ],
)
def test_each_optional_step_is_switched_by_its_experiment_or_auto(overrides, step):
    on = _on(overrides)
    assert step in on and set(CORE) <= set(on)
    assert step not in _on([])


def test_auto_can_be_switched_off_and_on_needs_its_condition():
    assert "baselines" not in _on(["baselines=[kmeans]", "steps.baselines.enabled=false"])
    with pytest.raises(ValueError, match="no baseline is listed"):
        _on(["steps.baselines.enabled=true"])
    with pytest.raises(ValueError, match="fisher.compression=projection"):
        _on(["steps.recover.enabled=true"])
    with pytest.raises(ValueError, match="model=tracr"):
        _on(["steps.tracr_check.enabled=true"])
    with pytest.raises(ValueError, match="true, false or auto"):
        _on(["steps.groups.enabled=maybe"])


@pytest.mark.parametrize(
    "old, new",
    [
        ("+flawed.enabled=true", "steps.expand"),
        ("+group_analysis.enabled=true", "steps.groups"),
        ("+coar_compare.enabled=true", "steps.coar_compare"),
        ("+shortcut_fix.enabled=true", "steps.shortcut"),
        ("+recovery.n_iters=3", "steps.recover"),
        ("+tracr_check.n_shuffles=3", "steps.tracr_check"),
    ],
)
def test_renamed_keys_say_where_they_went(old, new, tmp_path):
    cfg = compose_config("pipeline", [old, "logger=none"])
    with pytest.raises(ValueError, match=new.replace(".", r"\.")) as err:
        pipeline.run(cfg, tmp_path)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "train").exists()  # nothing ran


def test_unknown_step_is_named():
    with pytest.raises(ValueError, match=r"unknown steps \['expnd'\]"):
        _on(["+steps.expnd.enabled=true"])


@pytest.mark.parametrize(
    "stage, flat, doubled, path",
    [
        ("fit", "+stages.fit.n_iters=7", "+stages.fit.fit.n_iters=7", "fit.n_iters"),
        (
            "report",
            "+stages.report.n_shuffles=3",
            "+stages.report.report.n_shuffles=3",
            "report.n_shuffles",
        ),
        ("coar", "+stages.coar.n_masks=9", "+stages.coar.coar.n_masks=9", "coar.n_masks"),
        (
            "shortcut",
            "+stages.shortcut.n_top=5",
            "+stages.shortcut.shortcut_fix.n_top=5",
            "shortcut_fix.n_top",
        ),
        ("pefs", "+stages.pefs.n_examples=11", "+stages.pefs.n_examples=11", "n_examples"),
    ],
)
def test_flat_and_doubled_stage_settings_agree(stage, flat, doubled, path):
    a = stage_config(compose_config("pipeline", [flat]), stage)
    b = stage_config(compose_config("pipeline", [doubled]), stage)
    base = stage_config(compose_config("pipeline", []), stage)
    assert OmegaConf.select(a, path) == OmegaConf.select(b, path) != OmegaConf.select(base, path)
    assert OmegaConf.to_container(a) == OmegaConf.to_container(b)


def test_root_keys_stay_at_the_root():
    cfg = stage_config(compose_config("pipeline", ["+stages.report.split=fit"]), "report")
    assert cfg.split == "fit" and "split" not in cfg.report


def test_a_new_step_needs_only_its_module(tmp_path):
    """A step list run on a context: artifacts flow by name, sections are collected, a step
    whose input no earlier step made fails with its name."""
    made = []

    def first(ctx):
        made.append("first")
        return {"thing": tmp_path / "a.h5", "section": tmp_path / "s.html"}

    def second(ctx):
        made.append(str(ctx.artifacts["thing"]))
        return {}

    ctx = Context(compose_config("pipeline", []), tmp_path)
    run_steps(ctx, [Step("first", 1, first), Step("second", 2, second, needs=("thing",))])
    assert made == ["first", str(tmp_path / "a.h5")]
    assert ctx.sections == [str(tmp_path / "s.html")]
    with pytest.raises(RuntimeError, match=r"step second needs \['thing'\]"):
        run_steps(
            Context(compose_config("pipeline", []), tmp_path),
            [Step("second", 2, second, needs=("thing",))],
        )
