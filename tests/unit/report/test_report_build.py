"""build_report on in-memory artifacts: files, self-containment, cards vs brute force, bad input."""

import base64
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from npeff.analysis import pef_norm_ratio
from npeff.report import build_report, prepare_report
from npeff.report.synthetic import synthetic_inputs


def _build(tmp_path, kind="text", **kw):
    inp = synthetic_inputs(kind=kind)
    names = inp.pop("concept_names")
    inp.update(kw)
    path = build_report(**inp, output_dir=tmp_path, concept_names=names, n_display=5, top_k=16)
    return path, inp


def _brute_top(W, j, k):
    return sorted(range(W.shape[0]), key=lambda i: (-float(W[i, j]), i))[:k]


def test_report_files_and_self_contained(tmp_path):
    path, inp = _build(tmp_path)
    html = path.read_text()
    assert path.name == "report.html"
    for name in (
        "ratio_histograms",
        "losses",
        "convergence",
        "component_similarity",
        "concept_purity",
    ):
        png = (tmp_path / "figures" / f"{name}.png").read_bytes()
        assert Image.open(io.BytesIO(png)).size[0] > 100
    # No external resources: every src is an inline PNG and no http(s) URL appears at all.
    assert not re.search(r"https?://", html)
    srcs = re.findall(r'src="([^"]*)"', html)
    assert len(srcs) >= 5 and all(s.startswith("data:image/png;base64,") for s in srcs)
    for s in srcs:
        Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1]))).verify()
    assert "<script" not in html and "<link" not in html
    # Text is escaped (the synthetic hypothesis contains markup).
    assert "<b>&amp;</b>" not in html and "&lt;b&gt;&amp;amp;&lt;/b&gt;" in html


def test_cards_show_brute_force_top_examples(tmp_path):
    path, inp = _build(tmp_path)
    html = path.read_text()
    W = inp["decomposition"].W
    labels, preds = inp["pefs"].labels, inp["pefs"].logits.argmax(1)
    names = inp["label_names"]
    cards = re.split(r'<section class="card" id="component-', html)[1:]
    assert len(cards) == W.shape[1]
    for j, card in enumerate(cards):
        assert card.startswith(f'{j}"')
        shown = [int(x) for x in re.findall(r"· ex (\d+)", card)]
        assert shown == _brute_top(W, j, 5)
        coeffs = [float(x) for x in re.findall(r"\[COEFF\] <b>([0-9.]+)</b>", card)]
        assert np.allclose(coeffs, [W[i, j] for i in shown], atol=1e-4)
        labs = re.findall(r'\[LABEL\] <span class="lab">(\w+)</span>', card)
        assert labs == [names[labels[i]] for i in shown]
        prs = re.findall(r'\[PRED\] <span class="pred (?:ok|bad)">(\w+)</span>', card)
        assert prs == [names[preds[i]] for i in shown]
        kl = float(re.search(r"KL ratio ([0-9.]+)", card).group(1))
        assert kl == pytest.approx(inp["perturbation"].kl_ratio[j], rel=1e-2)


def test_summary_numbers_match_brute_force(tmp_path):
    _, inp = _build(tmp_path)
    summary = json.loads((tmp_path / "report_summary.json").read_text())
    W, concepts = inp["decomposition"].W, inp["concepts"]
    n_all = sum(
        any(all(concepts[i, c] for i in _brute_top(W, j, 16)) for c in range(concepts.shape[1]))
        for j in range(W.shape[1])
    )
    assert summary["concepts"]["n_all_share"] == n_all == 4  # four planted components
    assert summary["concepts"]["shuffled_n_all_share_mean"] < 1
    assert summary["median_kl_ratio"] == pytest.approx(np.median(inp["perturbation"].kl_ratio))
    assert summary["accuracy"] == pytest.approx(
        np.mean(inp["pefs"].labels == inp["pefs"].logits.argmax(1))
    )
    assert summary["final_loss_joint"] == pytest.approx(
        float(inp["decomposition"].losses["joint"][-1])
    )


def test_concept_statistic_at_paper_k_and_at_the_cards_k():
    inp = synthetic_inputs(kind="text")
    names = inp.pop("concept_names")
    content = prepare_report(**inp, concept_names=names, top_k=4, concept_top_k=16)
    W, concepts = inp["decomposition"].W, inp["concepts"]

    def n_all(k):
        return sum(
            any(all(concepts[i, c] for i in _brute_top(W, j, k)) for c in range(concepts.shape[1]))
            for j in range(W.shape[1])
        )

    c = content.summary["concepts"]
    assert (c["top_k"], c["n_all_share"]) == (16, n_all(16))
    assert (c["small_top_k"], c["small_n_all_share"]) == (4, n_all(4))
    assert n_all(4) >= n_all(16)


def test_image_task_gets_thumbnails_and_norm_ratio_without_perturbation(tmp_path):
    path, inp = _build(tmp_path, kind="image", perturbation=None)
    html = path.read_text()
    assert len(re.findall(r'<img class="thumb"', html)) == 6 * 5
    summary = json.loads((tmp_path / "report_summary.json").read_text())
    expected = pef_norm_ratio(
        inp["decomposition"].W, inp["pefs"].norms, n_top=128, n_baseline=10_000, seed=0
    )
    assert np.allclose(summary["pef_norm_ratio"], expected)
    assert "kl_ratio" not in summary


def test_coeffs_override_decomposition_W(tmp_path):
    inp = synthetic_inputs()
    W2 = inp["decomposition"].W[:, ::-1].copy()
    content = prepare_report(
        inp["decomposition"], inp["pefs"], inp["examples"], coeffs=W2, n_display=3
    )
    assert [e.index for e in content.cards[0].examples] == _brute_top(W2, 0, 3)
    assert content.summary["coefficients_from"] == "coeffs"


def test_bad_inputs_raise_clear_errors(tmp_path):
    inp = synthetic_inputs(n=60)
    with pytest.raises(ValueError, match="the task gives 10 display examples"):
        prepare_report(inp["decomposition"], inp["pefs"], inp["examples"][:10])
    other = synthetic_inputs(n=50)["pefs"]
    with pytest.raises(ValueError, match="the PEF file has 50 examples"):
        prepare_report(inp["decomposition"], other)
    with pytest.raises(ValueError, match="needs a decomposition or a coefficient file"):
        prepare_report(None)


def test_examples_from_another_split_are_rejected():
    inp = synthetic_inputs(n=60)
    shifted = inp["examples"][1:] + inp["examples"][:1]
    with pytest.raises(ValueError, match="labels that differ from the PEF"):
        prepare_report(inp["decomposition"], inp["pefs"], shifted)


def test_d_npeff_decomposition_with_sparse_H(tmp_path):
    import scipy.sparse as sp

    from npeff.analysis import component_similarity

    inp = synthetic_inputs(n=50, r=4)
    dec = inp["decomposition"]
    H = sp.random(4, 50, density=0.3, random_state=0, format="csr", dtype=np.float32)
    dec.kind, dec.G, dec.H = "diag", None, H
    content = prepare_report(dec, inp["pefs"], inp["examples"], perturbation=inp["perturbation"])
    assert content.summary["kind"] == "diag"
    assert "component_similarity" in content.figures
    assert np.allclose(component_similarity(H), component_similarity(H.toarray()))


def test_filtered_pefs_map_rows_to_split_examples():
    """A PEF subset (e.g. incorrect predictions only) shows the split examples it came from."""
    from npeff.artifacts.pefs import subset_pefs

    inp = synthetic_inputs(n=60)
    keep = np.arange(3, 60, 3)  # rows of the subset = these split positions
    pefs = subset_pefs(inp["pefs"], keep)
    assert pefs.source_indices.tolist() == keep.tolist()
    W = np.random.default_rng(0).random((keep.size, 3)).astype(np.float32)
    content = prepare_report(
        None, pefs, inp["examples"], inp["concepts"], coeffs=W, n_display=4, top_k=4, n_shuffles=2
    )
    for j, card in enumerate(content.cards):
        rows = _brute_top(W, j, 4)
        assert [e.index for e in card.examples] == rows
        assert [e.source_index for e in card.examples] == [int(keep[i]) for i in rows]
        assert [e.text for e in card.examples] == [inp["examples"][keep[i]]["text"] for i in rows]
        names = content.concept_analysis.concept_names
        for e, i in zip(card.examples, rows):
            assert e.concepts == [names[c] for c in np.flatnonzero(inp["concepts"][keep[i]])]
