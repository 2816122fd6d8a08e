"""The npeff-perturb stage end to end on a real checkpoint, PEF file and coefficient file."""

import json
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


import npeff.tasks.checkpoint as checkpoint_mod  # noqa: E402
from npeff.artifacts.decomposition import Decomposition, save_decomposition  # noqa: E402
from npeff.artifacts.pefs import load_pefs  # noqa: E402
from npeff.artifacts.perturbation import load_perturbation  # noqa: E402
from npeff.perturb.components import perturb_lrm  # noqa: E402
from npeff.perturb.evaluation import EvalSettings, PerturbationEvaluator  # noqa: E402
from npeff.perturb.examples import ExampleCache  # noqa: E402
from npeff.perturb.flawed import select_flawed_components  # noqa: E402
from npeff.run.perturb import run  # noqa: E402
from tests.helpers.compose import compose_config  # noqa: E402

N_EVAL = 96
TASK = {"name": "digits", "n_fit": 64, "n_eval": N_EVAL, "seed": 0}
MODEL = {"name": "mlp", "hidden_sizes": [16]}


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    from npeff.fisher import compute_pefs
    from npeff.models import build_model, save_checkpoint
    from npeff.tasks import build_task

    d = tmp_path_factory.mktemp("perturb_inputs")
    torch.manual_seed(0)
    task = build_task(TASK)
    model = build_model(MODEL, task.model_hints()).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        for b in task.dataloader("train", 64, shuffle=True):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x=b["x"]), b["labels"]).backward()
            opt.step()
    model.eval()
    ckpt = save_checkpoint(d / "model.ckpt", model, {"model": MODEL, "task": TASK})
    pefs_path = compute_pefs(
        model,
        task.dataloader("eval", 32),
        d / "pefs.h5",
        kind="lrm",
        n_values=64,
        top_k_classes=3,
        metadata={"split": "eval"},
        progress=False,
    )
    dpefs_path = compute_pefs(
        model,
        task.dataloader("eval", 32),
        d / "dpefs.h5",
        kind="diag",
        n_values=64,
        dataset_fisher="expectation",
        dataset_fisher_path=d / "dsf.h5",
        metadata={"split": "eval"},
        progress=False,
    )
    pefs = load_pefs(pefs_path)
    m = pefs.n_parameters
    rng = np.random.default_rng(0)
    cols = np.unique(pefs.indices)
    r = 5
    # coefficients: a stand-in for a fitted W (the stage only needs W rows = the examples)
    W = rng.random((N_EVAL, r)).astype(np.float32)
    G = rng.normal(size=(r, len(cols))).astype(np.float32)
    lrm = Decomposition(
        kind="lrm",
        W=W,
        new_to_old_col_indices=cols,
        n_parameters=m,
        n_classes=3,
        G=G,
        layout=pefs.layout,
        metadata={"n_frozen_components": 2},
    )
    save_decomposition(lrm, d / "coeffs.h5")
    H = np.abs(G) * (rng.random(G.shape) < 0.5)
    diag = Decomposition(
        kind="diag",
        W=W,
        new_to_old_col_indices=cols,
        n_parameters=m,
        n_classes=1,
        H=H.astype(np.float32),
        layout=pefs.layout,
    )
    save_decomposition(diag, d / "dcoeffs.h5")
    return {
        "dir": d,
        "ckpt": ckpt,
        "pefs": pefs_path,
        "dpefs": dpefs_path,
        "dsf": d / "dsf.h5",
        "coeffs": d / "coeffs.h5",
        "dcoeffs": d / "dcoeffs.h5",
        "lrm": lrm,
        "pefs_obj": pefs,
    }


@pytest.fixture
def counted_loads(monkeypatch):
    """Wrap load_checkpoint: count loads and forward rows of every model it returns."""
    stats = {"loads": 0, "rows": 0}
    orig = checkpoint_mod.load_checkpoint

    def wrapped(path):
        stats["loads"] += 1
        loaded = orig(path)
        loaded.model.register_forward_hook(
            lambda mod, args, kwargs, out: stats.__setitem__(
                "rows", stats["rows"] + kwargs["x"].shape[0]
            ),
            with_kwargs=True,
        )
        return loaded

    monkeypatch.setattr(checkpoint_mod, "load_checkpoint", wrapped)
    return stats


def test_lrm_stage_matches_library_and_loads_model_once(artifacts, tmp_path, counted_loads):
    a = artifacts
    cfg = compose_config(
        "perturb",
        [
            f"inputs.checkpoint={a['ckpt']}",
            f"inputs.coeffs={a['coeffs']}",
            f"inputs.pefs={a['pefs']}",
            "perturb.n_top=8",
            "perturb.n_baseline=40",
            "perturb.components=[0,3,4]",
            "perturb.batch_size=16",
            "progress=false",
        ],
    )
    metrics = run(cfg, tmp_path)
    assert counted_loads["loads"] == 1
    # unperturbed logits once, then 3 components × 2 signs over all examples (+ the prefix
    # cache's 4-row probe; all parameters are perturbed, so nothing is cached)
    assert counted_loads["rows"] == N_EVAL + 3 * 2 * N_EVAL + 4
    res = load_perturbation(tmp_path / "perturbation.h5")
    assert res.component_indices.tolist() == [0, 3, 4]
    assert res.metadata["split"] == "eval" and res.metadata["kind"] == "lrm"
    assert res.metadata["max_abs_logit_diff_vs_pefs"] < 1e-4

    # the same computation through the library on a separately loaded model
    loaded = checkpoint_mod.load_checkpoint(a["ckpt"])
    cache = ExampleCache(loaded.task.dataloader("eval", 16), n_examples=N_EVAL)
    ev = PerturbationEvaluator(
        loaded.model,
        cache,
        a["pefs_obj"].layout,
        a["lrm"].W,
        a["pefs_obj"].norms,
        EvalSettings(n_top=8, n_baseline=40, batch_size=16),
        progress=False,
    )
    ref = perturb_lrm(ev, a["lrm"], [0, 3, 4], magnitude=0.1, tau=0.35, progress=False)
    for name in (
        "kl_top",
        "kl_baseline",
        "kl_top_reverse",
        "kl_ratio",
        "pef_norm_ratio",
        "acc_all_after",
        "acc_top_after",
        "top_indices",
        "baseline_indices",
    ):
        np.testing.assert_allclose(getattr(res, name), getattr(ref, name), rtol=1e-6)
    assert np.array_equal(res.best_sign, ref.best_sign)
    assert len(res.baseline_indices) == 40

    summary = json.loads((tmp_path / "perturbation.json").read_text())
    assert summary["kl_ratio_median"] == pytest.approx(float(np.median(res.kl_ratio)))
    assert summary["pef_norm_ratio_median"] == pytest.approx(float(np.median(res.pef_norm_ratio)))
    assert summary["frac_kl_ratio_above_norm_ratio"] == pytest.approx(
        float(np.mean(res.kl_ratio > res.pef_norm_ratio))
    )
    assert [c["component"] for c in summary["components"]] == [0, 3, 4]
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["kl_ratio_median"] == pytest.approx(metrics["kl_ratio_median"])
    assert on_disk["n_components"] == 3 and on_disk["n_examples"] == N_EVAL


def test_diag_stage_hits_kl_target(artifacts, tmp_path, counted_loads):
    a = artifacts
    cfg = compose_config(
        "perturb",
        [
            "perturb=diag",
            f"inputs.checkpoint={a['ckpt']}",
            f"inputs.coeffs={a['dcoeffs']}",
            f"inputs.pefs={a['dpefs']}",
            f"inputs.dataset_fisher={a['dsf']}",
            "perturb.n_top=8",
            "perturb.n_baseline=40",
            "perturb.components=[1,2]",
            "perturb.eval_all=false",
            "perturb.kl_target.min_kl=0.01",
            "perturb.kl_target.max_kl=0.02",
            "perturb.kl_target.delta_range=[1e-3,10.0]",
            "perturb.fisher_floor=1e-4",
            "progress=false",
        ],
    )
    run(cfg, tmp_path)
    assert counted_loads["loads"] == 1
    res = load_perturbation(tmp_path / "perturbation.h5")
    assert res.metadata["kind"] == "diag"
    assert res.component_indices.tolist() == [1, 2]
    assert np.all((res.kl_top[:, 0] >= 0.01 - 1e-9) & (res.kl_top[:, 0] <= 0.02 + 1e-9))
    assert np.all(np.isnan(res.acc_all_after))


def test_flawed_selection_in_stage(artifacts, tmp_path):
    a = artifacts
    cfg = compose_config(
        "perturb",
        [
            "perturb=flawed",
            f"inputs.checkpoint={a['ckpt']}",
            f"inputs.coeffs={a['coeffs']}",
            f"inputs.pefs={a['pefs']}",
            "perturb.n_top=8",
            "perturb.n_baseline=40",
            "perturb.flawed.n_top=16",
            "perturb.flawed.min_incorrect=1",
            "progress=false",
        ],
    )
    metrics = run(cfg, tmp_path)
    pefs = a["pefs_obj"]
    # expansion components = the first r − n_frozen = 3 (decomposition metadata n_frozen=2)
    expect = select_flawed_components(
        a["lrm"].W, [0, 1, 2], pefs.labels, pefs.logits.argmax(-1), n_top=16, min_incorrect=1
    )
    summary = json.loads((tmp_path / "perturbation.json").read_text())
    assert summary["flawed"]["candidates"] == [0, 1, 2]
    assert summary["flawed"]["selected"] == expect.tolist()
    res = load_perturbation(tmp_path / "perturbation.h5")
    assert res.magnitude == pytest.approx(0.3)
    assert res.component_indices.tolist() == expect.tolist()
    change = np.nanmax(res.acc_all_after - res.acc_all_before, axis=1)
    assert metrics["n_components_raising_accuracy"] == int(np.sum(change >= 0.005))
    assert metrics["n_flawed_selected"] == len(expect)


def test_stage_on_a_filtered_pef_subset(artifacts, tmp_path):
    """A PEF file holding a subset of the split (example_indices) is matched row by row."""
    from npeff.artifacts.pefs import save_pefs, subset_pefs

    a = artifacts
    pefs = a["pefs_obj"]
    keep = np.flatnonzero(np.arange(N_EVAL) % 3 != 1)
    sub = subset_pefs(pefs, keep)
    save_pefs(sub, tmp_path / "sub_pefs.h5")
    dec = a["lrm"]
    sub_dec = Decomposition(
        kind="lrm",
        W=dec.W[keep],
        new_to_old_col_indices=dec.new_to_old_col_indices,
        n_parameters=dec.n_parameters,
        n_classes=3,
        G=dec.G,
        layout=dec.layout,
    )
    save_decomposition(sub_dec, tmp_path / "sub_coeffs.h5")
    out = tmp_path / "out"
    run(
        compose_config(
            "perturb",
            [
                f"inputs.checkpoint={a['ckpt']}",
                f"inputs.coeffs={tmp_path / 'sub_coeffs.h5'}",
                f"inputs.pefs={tmp_path / 'sub_pefs.h5'}",
                "perturb.n_top=8",
                "perturb.n_baseline=20",
                "perturb.components=[1]",
                "progress=false",
            ],
        ),
        out,
    )
    res = load_perturbation(out / "perturbation.h5")
    full = load_perturbation(_full_run(a, tmp_path / "full", [1], 8, 20))
    # rows were matched to the right examples: the model's logits equal the PEF file's
    assert res.metadata["max_abs_logit_diff_vs_pefs"] < 1e-4
    assert res.top_indices.max() < len(keep)
    assert np.all(np.isin(keep[res.top_indices[0]], np.arange(N_EVAL)))
    assert res.acc_all_before == pytest.approx(
        float((sub.logits.argmax(-1) == sub.labels).mean()), abs=1e-12
    )
    assert full.acc_all_before == pytest.approx(
        float((pefs.logits.argmax(-1) == pefs.labels).mean()), abs=1e-12
    )


def _full_run(a, out, comps, n_top, n_base):
    run(
        compose_config(
            "perturb",
            [
                f"inputs.checkpoint={a['ckpt']}",
                f"inputs.coeffs={a['coeffs']}",
                f"inputs.pefs={a['pefs']}",
                f"perturb.n_top={n_top}",
                f"perturb.n_baseline={n_base}",
                f"perturb.components=[{','.join(map(str, comps))}]",
                "progress=false",
            ],
        ),
        out,
    )
    return out / "perturbation.h5"


def test_coeffs_without_components_use_the_decomposition(artifacts, tmp_path):
    import dataclasses

    a = artifacts
    bare = dataclasses.replace(
        a["lrm"], G=None, metadata={"source": {"decomposition": "/nonexistent.h5"}}
    )
    save_decomposition(bare, tmp_path / "bare.h5")
    common = [
        f"inputs.checkpoint={a['ckpt']}",
        f"inputs.coeffs={tmp_path / 'bare.h5'}",
        f"inputs.pefs={a['pefs']}",
        "perturb.n_top=8",
        "perturb.n_baseline=20",
        "perturb.components=[2]",
        "progress=false",
    ]
    with pytest.raises(ValueError, match="inputs.decomposition"):
        run(compose_config("perturb", common), tmp_path / "x")
    run(compose_config("perturb", common + [f"inputs.decomposition={a['coeffs']}"]), tmp_path / "y")
    res = load_perturbation(tmp_path / "y" / "perturbation.h5")
    ref = load_perturbation(_full_run(a, tmp_path / "z", [2], 8, 20))
    np.testing.assert_allclose(res.kl_top, ref.kl_top, rtol=1e-6)
    np.testing.assert_allclose(res.kl_ratio, ref.kl_ratio, rtol=1e-6)


def test_stage_errors_are_clear(artifacts, tmp_path):
    a = artifacts
    base = [f"inputs.checkpoint={a['ckpt']}", f"inputs.pefs={a['pefs']}", "progress=false"]
    with pytest.raises(ValueError, match="perturb=diag"):
        run(compose_config("perturb", base + [f"inputs.coeffs={a['dcoeffs']}"]), tmp_path)
    with pytest.raises(ValueError, match="dataset_fisher"):
        run(
            compose_config("perturb", base + ["perturb=diag", f"inputs.coeffs={a['dcoeffs']}"]),
            tmp_path,
        )
    with pytest.raises(ValueError, match="split"):
        run(
            compose_config("perturb", base + [f"inputs.coeffs={a['coeffs']}", "split=fit"]),
            tmp_path,
        )
