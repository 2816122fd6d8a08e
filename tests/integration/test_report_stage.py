"""npeff-report stage: real artifact files + a toy-NLI checkpoint → report.html, figures, metrics."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from npeff.artifacts.decomposition import save_decomposition
from npeff.artifacts.layout import ParameterLayout
from npeff.artifacts.pefs import Pefs, save_pefs
from npeff.artifacts.perturbation import save_perturbation
from npeff.report.browser_check import DEFAULT_CHROMIUM, check_html
from npeff.report.synthetic import synthetic_inputs
from tests.helpers.compose import compose_config

os.environ.setdefault("WANDB_MODE", "disabled")

TASK = {"name": "toy_nli", "n_train": 20, "n_fit": 90, "n_eval": 20, "seed": 3}
MODEL = {
    "name": "tiny_bert",
    "hidden_size": 16,
    "num_layers": 1,
    "num_heads": 2,
    "intermediate_size": 16,
}


def _brute_top(W, j, k):
    return sorted(range(W.shape[0]), key=lambda i: (-float(W[i, j]), i))[:k]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """A checkpoint of an untrained tiny BERT on toy NLI plus decomposition/PEF/perturbation files."""
    from npeff.models import build_model, save_checkpoint
    from npeff.tasks import build_task

    root = tmp_path_factory.mktemp("report_stage")
    task = build_task(TASK)
    model = build_model(MODEL, task.model_hints())
    ckpt = save_checkpoint(root / "train" / "model.ckpt", model, {"model": MODEL, "task": TASK})
    concepts = task.concepts("fit")
    labels = np.asarray([e["label"] for e in task.examples("fit")])
    n, r, m, K = len(labels), 8, 40, 12
    rng = np.random.default_rng(0)
    W = (0.3 * rng.random((n, r))).astype(np.float32)
    planted = []
    common = np.argsort(-concepts.sum(axis=0), kind="stable")  # most frequent concepts first
    for j in range(0, r, 2):  # plant half of the components on one concept's holders
        holders = np.flatnonzero(concepts[:, common[(j // 2) % common.size]])
        if holders.size >= 16:
            W[rng.choice(holders, 16, replace=False), j] += 2.0
            planted.append(j)
    syn = synthetic_inputs(n=n, r=r)
    dec = syn["decomposition"]
    dec.W, dec.G = W, rng.normal(size=(r, m)).astype(np.float32)
    dec.new_to_old_col_indices, dec.n_parameters = np.arange(m, dtype=np.int64), m
    dec.layout = ParameterLayout(names=("w",), shapes=((m,),), offsets=(0,), n_parameters=m)
    save_decomposition(dec, root / "decompose" / "decomposition.h5")
    logits = rng.normal(size=(n, 3)).astype(np.float32)
    logits[np.arange(n), labels] += 2.0
    pefs = Pefs(
        kind="lrm",
        values=rng.normal(size=(n, K)).astype(np.float32),
        indices=np.sort(
            np.stack([rng.choice(m, K, replace=False) for _ in range(n)]), axis=1
        ).astype(np.int32),
        norms=rng.uniform(0.5, 2.0, size=n).astype(np.float32),
        labels=labels.astype(np.int64),
        logits=logits,
        n_parameters=m,
        col_offsets=np.tile(np.array([0, 4, 8, K], dtype=np.int32), (n, 1)),
        layout=dec.layout,
        metadata={"split": "fit"},
    )
    save_pefs(pefs, root / "pefs" / "pefs.h5")
    pert = syn["perturbation"]
    save_perturbation(pert, root / "perturb" / "perturbation.h5")
    return {
        "root": root,
        "ckpt": ckpt,
        "W": W,
        "concepts": concepts,
        "planted": planted,
        "task": task,
        "pert": pert,
        "overrides": [
            f"inputs.checkpoint={ckpt}",
            f"inputs.decomposition={root / 'decompose' / 'decomposition.h5'}",
            f"inputs.pefs={root / 'pefs' / 'pefs.h5'}",
            f"inputs.perturbation={root / 'perturb' / 'perturbation.h5'}",
            "report.n_shuffles=10",
            "report.concept_top_k=16",  # a small example set: the smaller k (default 128)
        ],
    }


def test_report_stage_end_to_end(artifacts, tmp_path):
    from npeff.run.report import run

    out = tmp_path / "out"
    metrics = run(compose_config("report", artifacts["overrides"]), out)
    html = (out / "report.html").read_text()
    W, concepts, task = artifacts["W"], artifacts["concepts"], artifacts["task"]
    # The concept statistic against brute force and the planted components.
    n_all = sum(
        any(all(concepts[i, c] for i in _brute_top(W, j, 16)) for c in range(concepts.shape[1]))
        for j in range(W.shape[1])
    )
    assert len(artifacts["planted"]) == 4
    assert metrics["concept_n_all_share"] == n_all >= 4
    assert metrics["concept_shuffled_n_all_share_mean"] < n_all
    assert metrics["median_kl_ratio"] == pytest.approx(float(np.median(artifacts["pert"].kl_ratio)))
    # Example texts come from the task's fit split, in PEF order.
    examples = task.examples("fit")
    for i in _brute_top(W, 0, 8):
        assert examples[i]["text"].replace("'", "&#x27;") in html
    assert all(name in html for name in task.concept_names[:1])
    for fig in (
        "ratio_histograms",
        "losses",
        "convergence",
        "component_similarity",
        "concept_purity",
    ):
        assert (out / "figures" / f"{fig}.png").stat().st_size > 1000
    assert json.loads((out / "metrics.json").read_text())["report"] == str(out / "report.html")
    if Path(DEFAULT_CHROMIUM).exists():
        res = check_html(out / "report.html", tmp_path / "shot.png")
        assert res.errors == [] and (tmp_path / "shot.png").stat().st_size > 10_000


def test_report_stage_minimal_inputs(artifacts, tmp_path):
    """Only a decomposition: no examples, no perturbation; still a complete page."""
    from npeff.run.report import run

    dec_override = [o for o in artifacts["overrides"] if o.startswith("inputs.decomposition=")]
    metrics = run(compose_config("report", dec_override), tmp_path / "out")
    assert metrics["n_components"] == 8 and "median_kl_ratio" not in metrics
    assert (tmp_path / "out" / "report.html").exists()


def test_report_stage_wrong_split_fails_clearly(artifacts, tmp_path):
    from npeff.run.report import run

    with pytest.raises(ValueError, match="display examples|labels that differ"):
        run(compose_config("report", artifacts["overrides"] + ["split=eval"]), tmp_path / "out")
