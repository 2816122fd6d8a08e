"""The npeff-coar and npeff-coar-edit stages on a small digits CNN checkpoint; the configs of
the COAR experiments compose."""

from __future__ import annotations

import json
import os

import pytest
import torch

from npeff.coar import load_attributions
from npeff.models import build_model, forward_logits, save_checkpoint
from npeff.run import coar, coar_edit
from npeff.tasks import build_task
from tests.helpers.compose import compose_config

os.environ.setdefault("WANDB_MODE", "disabled")

TASK = {"name": "digits", "n_fit": 40, "n_eval": 60, "seed": 0}
MODEL = {"name": "cnn", "channels": [4, 8], "hidden": 16}


def _train(path, seed, epochs=3):
    task = build_task(TASK)
    torch.manual_seed(seed)
    model = build_model(MODEL, task.model_hints()).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(epochs):
        for b in task.dataloader("train", 128, shuffle=True):
            loss = torch.nn.functional.cross_entropy(forward_logits(model, b), b["labels"])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return save_checkpoint(path, model.eval(), {"model": MODEL, "task": TASK})


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("coar_ckpt")
    return _train(d / "a" / "model.ckpt", 0), _train(d / "b" / "model.ckpt", 1, epochs=1)


def _cfg(name, *overrides):
    return compose_config(name, ["logger=none", "progress=false", *overrides])


COAR = [
    "coar.units=[{pattern: head.1.weight, granularity: neuron}]",
    "coar.n_masks=80",
    "coar.eval_masks=20",
    "coar.chunk_masks=32",
]


def test_coar_and_edit_stages(ckpts, tmp_path):
    good, other = ckpts
    m = coar.run(_cfg("coar", f"inputs.checkpoint={good}", *COAR), tmp_path / "coar")
    saved = json.loads((tmp_path / "coar" / "coar.json").read_text())
    for key in (
        "corr_heldout_mean",
        "corr_loo_mean",
        "corr_gp_mean",
        "corr_by_alpha",
        "n_masks",
        "n_units",
        "n_examples",
        "seconds",
    ):
        assert key in saved and saved[key] is not None, key
    assert (m["n_masks"], m["n_units"], m["n_examples"]) == (80, 16, 60)
    assert set(m["corr_by_alpha"]) == {"0.05", "0.1", "0.2", "0.4"}
    assert m["corr_heldout_mean"] > 0.5
    att = load_attributions(m["attributions"])
    assert att.weights.shape == (60, 16) and att.model_identity["checkpoint"] == str(good)

    e = coar_edit.run(
        _cfg(
            "coar_edit",
            f"inputs.attributions={m['attributions']}",
            "edit.targets={indices: [0, 1]}",
            "edit.k_max=3",
        ),
        tmp_path / "edit",
    )
    out = json.loads((tmp_path / "edit" / "edit.json").read_text())
    assert [r["k"] for r in out["table"]] == [0, 1, 2, 3]
    assert out["table"][0]["acc_all"] == pytest.approx(
        float((att.base_margins > 0).mean()), abs=0.02
    )
    assert (tmp_path / "edit" / "edit_sweep.png").stat().st_size > 1000
    assert "acc_all_before" in e and "acc_all_after" in e and e["best_k"] in (0, 1, 2, 3)
    html = (tmp_path / "edit" / "coar_report.html").read_text()
    assert (
        "COAR: component attribution" in html and "Coar-Edit" in html and "data:image/png" in html
    )
    assert (tmp_path / "coar" / "coar_report.html").is_file()

    with pytest.raises(ValueError, match="is not the model the attributions"):
        coar_edit.run(
            _cfg(
                "coar_edit",
                f"inputs.attributions={m['attributions']}",
                f"inputs.checkpoint={other}",
            ),
            tmp_path / "bad",
        )


def test_bad_settings_fail_before_training(tmp_path):
    with pytest.raises(ValueError, match=r"outside \(0, 1\)"):
        coar.run(_cfg("coar", "experiment=coar_group", "coar.alpha=1.5"), tmp_path)
    with pytest.raises(ValueError, match="matches no weight"):
        coar.run(_cfg("coar", "experiment=coar_digits", "coar.units=[conv9.weight]"), tmp_path)
    assert not (tmp_path / "train").exists()


@pytest.mark.parametrize("exp", ["coar_group", "coar_digits", "coar_backdoor"])
def test_experiment_configs_compose(exp):
    cfg = _cfg("coar_edit" if exp == "coar_backdoor" else "coar", f"experiment={exp}")
    assert cfg.coar.n_masks >= 600 and cfg.coar.units
