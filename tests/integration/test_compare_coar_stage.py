"""npeff-compare-coar on a real checkpoint, PEF file, perturbation result and COAR attributions.

The decomposition is planted: component j's mass lies on known hidden neurons S_j, and its
coefficients are the size of the margin change of ablating S_j measured by an independent loop
(weights zeroed in place), plus noise. The stage must find S_j, rank the examples like the loop,
beat random unit sets, recompute the perturbation's KL exactly (its mean over the top examples
equals the perturbation stage's), and refuse another checkpoint before any work."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from npeff.artifacts.decomposition import Decomposition, save_decomposition
from npeff.artifacts.digest import file_sha256
from npeff.artifacts.perturbation import load_perturbation
from npeff.coar.ablation import loop_margins
from npeff.coar.npeff_compare import perturbation_vectors
from npeff.models import build_model, forward_logits, save_checkpoint
from npeff.models.units import build_unit_map
from npeff.run import coar, compare_coar, perturb
from npeff.tasks import build_task
from npeff.tasks.checkpoint import load_checkpoint
from tests.helpers.compose import compose_config

os.environ.setdefault("WANDB_MODE", "disabled")

N_EVAL = 96
TASK = {"name": "digits", "n_fit": 32, "n_eval": N_EVAL, "seed": 0}
MODEL = {"name": "mlp", "hidden_sizes": [16]}
N_SETS = 4  # planted S_j: pairs of the hidden neurons of net.0 whose ablation matters most


def _train(path, seed, epochs):
    task = build_task(TASK)
    torch.manual_seed(seed)
    model = build_model(MODEL, task.model_hints()).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(epochs):
        for b in task.dataloader("train", 64, shuffle=True):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(forward_logits(model, b), b["labels"]).backward()
            opt.step()
    return save_checkpoint(path, model.eval(), {"model": MODEL, "task": TASK})


def _cfg(name, *overrides):
    return compose_config(name, ["logger=none", "progress=false", *overrides])


@pytest.fixture(scope="module")
def run_files(tmp_path_factory):
    from npeff.fisher import compute_pefs

    d = tmp_path_factory.mktemp("compare_coar")
    ckpt = _train(d / "a" / "model.ckpt", 0, 3)
    other = _train(d / "b" / "model.ckpt", 1, 1)
    loaded = load_checkpoint(ckpt)
    model, task = loaded.model, loaded.task
    pefs_path = compute_pefs(
        model,
        task.dataloader("eval", 32),
        d / "pefs.h5",
        kind="lrm",
        n_values=64,
        top_k_classes=2,
        metadata={
            "split": "eval",
            "model_identity": {"checkpoint": str(ckpt), "sha256": file_sha256(ckpt)},
        },
        progress=False,
    )
    from npeff.artifacts.pefs import load_pefs

    pefs = load_pefs(pefs_path)
    layout = pefs.layout
    units = build_unit_map(model, "net.0.weight")
    # independent reference: each S_j ablated by zeroing the weights in place, one at a time
    loader = list(task.dataloader("eval", 32))
    base = loop_margins(model, units, torch.ones(1, units.n_units, dtype=torch.bool), loader)[0]
    loo = loop_margins(model, units, ~torch.eye(units.n_units, dtype=torch.bool), loader) - base
    live = torch.argsort(loo.std(1), descending=True)[: 2 * N_SETS].tolist()
    sets = [sorted(live[2 * j : 2 * j + 2]) for j in range(N_SETS)]
    keep = torch.ones(N_SETS, units.n_units, dtype=torch.bool)
    for j, s in enumerate(sets):
        keep[j, s] = False
    true = (loop_margins(model, units, keep, loader) - base).numpy()  # [r, n]
    rng = np.random.default_rng(0)
    W = (np.abs(true.T) + 0.02 * rng.random(true.T.shape)).astype(np.float32)
    G = 0.01 * rng.normal(size=(N_SETS, layout.n_parameters))
    for j, s in enumerate(sets):
        for c in s:
            G[j, units.flat_indices(layout, c).numpy()] += rng.normal(size=64)
    dec = Decomposition(
        kind="lrm",
        W=W,
        new_to_old_col_indices=np.arange(layout.n_parameters),
        n_parameters=layout.n_parameters,
        n_classes=2,
        G=G.astype(np.float32),
        layout=layout,
    )
    save_decomposition(dec, d / "coeffs.h5")
    perturb.run(
        _cfg(
            "perturb",
            f"inputs.checkpoint={ckpt}",
            f"inputs.coeffs={d / 'coeffs.h5'}",
            f"inputs.pefs={pefs_path}",
            "perturb.n_top=16",
            "perturb.n_baseline=32",
        ),
        d / "perturb",
    )
    m = coar.run(
        _cfg(
            "coar",
            f"inputs.checkpoint={ckpt}",
            "coar.units=[net.0.weight]",
            "coar.n_masks=60",
            "coar.eval_masks=10",
            "coar.baselines=false",
        ),
        d / "coar",
    )
    return {
        "dir": d,
        "ckpt": ckpt,
        "other": other,
        "pefs": pefs_path,
        "coeffs": d / "coeffs.h5",
        "perturbation": d / "perturb" / "perturbation.h5",
        "attributions": m["attributions"],
        "true": true,
        "W": W,
        "sets": sets,
    }


def _inputs(f, ckpt=None):
    return [
        f"inputs.checkpoint={ckpt or f['ckpt']}",
        f"inputs.coeffs={f['coeffs']}",
        f"inputs.pefs={f['pefs']}",
        f"inputs.perturbation={f['perturbation']}",
        f"inputs.attributions={f['attributions']}",
    ]


def test_compare_coar_stage(run_files, tmp_path):
    f = run_files
    metrics = compare_coar.run(
        _cfg(
            "compare_coar",
            *_inputs(f),
            "compare_coar.top_units=2",
            "compare_coar.top_examples=32",
            "compare_coar.n_random=3",
        ),
        tmp_path,
    )
    out = json.loads((tmp_path / "compare_coar.json").read_text())
    assert out["n_examples"] == N_EVAL and out["n_components"] == N_SETS
    assert out["max_abs_base_margin_diff_vs_attributions"] < 1e-4
    rows = out["components"]
    for j, (row, s) in enumerate(zip(rows, f["sets"])):
        assert sorted(row["top_units"]) == sorted(f"net.0.weight[{c}]" for c in s)
        ref = spearmanr(f["W"][:, j], np.abs(f["true"][j])).statistic
        assert row["spearman_true"] == pytest.approx(ref, abs=1e-6)
        assert row["spearman_true"] > 0.9 and row["spearman_true"] > row["spearman_random"]
        assert row["jaccard_true"] >= row["jaccard_random"]
        assert np.isfinite(row["kl_spearman_true"]) and row["kl_mean"] > 0
    assert metrics["frac_spearman_true_above_random"] == 1.0
    # the per-example KL recomputed here: its mean over the perturbation's top examples is the
    # perturbation stage's kl_top at the reported sign
    res = load_perturbation(f["perturbation"])
    assert out["n_components_with_kl"] == res.n_components
    assert out["kl_top_max_rel_diff_vs_perturbation"] < 1e-5
    from npeff.artifacts.decomposition import load_decomposition
    from npeff.artifacts.pefs import load_pefs
    from npeff.perturb.evaluation import EvalSettings, PerturbationEvaluator
    from npeff.perturb.examples import ExampleCache

    loaded = load_checkpoint(f["ckpt"])
    pefs, dec = load_pefs(f["pefs"]), load_decomposition(f["coeffs"])
    ev = PerturbationEvaluator(
        loaded.model,
        ExampleCache(loaded.task.dataloader("eval", 32), N_EVAL),
        pefs.layout,
        dec.W,
        pefs.norms,
        EvalSettings(n_top=16, n_baseline=1),
        progress=False,
    )
    vecs = perturbation_vectors(ev, dec, res, list(range(N_SETS)), None)
    for c, j in enumerate(res.component_indices):
        v, scale = vecs[int(j)]
        kl = ev.example_kls(v, scale)
        sign_i = 0 if res.best_sign[c] > 0 else 1
        assert kl[res.top_indices[c]].mean() == pytest.approx(res.kl_top[c, sign_i], rel=1e-5)
    html = (tmp_path / "section.html").read_text()
    assert "NPEFF vs COAR on one model" in html and "COAR: component attribution" in html


def test_compare_coar_refuses_another_checkpoint(run_files, tmp_path):
    f = run_files
    with pytest.raises(ValueError, match="not the model the attributions"):
        compare_coar.run(_cfg("compare_coar", *_inputs(f, f["other"])), tmp_path)
    with pytest.raises(ValueError, match="inputs.run=.* is not a directory"):
        compare_coar.run(_cfg("compare_coar", f"inputs.run={tmp_path / 'nope'}"), tmp_path)
    with pytest.raises(ValueError, match="top_units=99"):
        compare_coar.run(_cfg("compare_coar", *_inputs(f), "compare_coar.top_units=99"), tmp_path)
    assert not (tmp_path / "compare_coar.json").exists()


SHRUNK = {  # experiment → (overrides, units, examples)
    "coar_compare_s4": (
        [
            "task.group=S3",
            "model.embed_dim=16",
            "model.hidden=12",
            "trainer.max_epochs=60",
            "decomp.n_iters_g_only=5",
        ],
        12,
        9,
    ),
    "coar_compare_digits": (
        [
            "task.n_fit=40",
            "task.n_eval=40",
            "model.channels=[4,8]",
            "model.hidden=16",
            "trainer.max_epochs=3",
            "decomp.n_iters_g_only=0",
        ],
        24,
        40,
    ),
}


@pytest.mark.parametrize("experiment", sorted(SHRUNK))
def test_pipeline_step_runs_coar_and_the_comparison(experiment, tmp_path):
    """``npeff experiment=coar_compare_{s4,digits}`` shrunk (LRM and D-NPEFF): COAR on the
    trained model's eval examples, the comparison and both report sections, in one command."""
    from npeff.run import pipeline

    overrides, n_units, n_examples = SHRUNK[experiment]
    cfg = compose_config(
        "pipeline",
        [
            f"experiment={experiment}",
            *overrides,
            "logger=none",
            "progress=false",
            "trainer.enable_model_summary=false",
            "fisher.n_values=100",
            "decomp.n_components=3",
            "decomp.n_iters_joint=20",
            "perturb.n_top=4",
            "+stages.fit.n_iters=20",
            "+stages.report.n_shuffles=2",
            "stages.coar.n_masks=40",
            "stages.coar.eval_masks=5",
            "+stages.coar.baselines=false",
            "stages.compare_coar.top_units=3",
            f"cache_dir={tmp_path / 'cache'}",
        ],
    )
    metrics = pipeline.run(cfg, tmp_path / "run")
    cc = metrics["coar_compare"]
    assert cc["corr_heldout_mean"] is not None and cc["spearman_true_mean"] is not None
    out = json.loads((tmp_path / "run" / "compare_coar" / "compare_coar.json").read_text())
    assert out["n_components"] == 3 and out["n_units"] == n_units
    assert out["n_examples"] == n_examples
    if out["n_components_with_kl"]:  # D-NPEFF: components whose KL targeting failed have none
        assert out["kl_top_max_rel_diff_vs_perturbation"] < 1e-5
    html = (tmp_path / "run" / "report" / "report.html").read_text()
    assert "NPEFF vs COAR on one model" in html and "COAR: component attribution" in html
