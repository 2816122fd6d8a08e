"""compute_pefs against a dense float64 per-example Fisher from an autograd loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from npeff.artifacts.pefs import load_dataset_fisher, load_pefs
from npeff.fisher import compute_pefs
from npeff.fisher.compute import sample_classes
from tests.helpers.problems import problem
from tests.helpers.references import dense_class_grads

ATOL = 1e-6


def run(tmp_path, name, kind, n_values, n=6, batch_size=4, chunk_size=3, **kw):
    model, ds = problem(name, n=n)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size)
    path = compute_pefs(
        model,
        loader,
        tmp_path / "pefs.h5",
        kind=kind,
        n_values=n_values,
        chunk_size=chunk_size,
        progress=False,
        **kw,
    )
    return model, ds, load_pefs(path)


def reference_rows(model, example, kind, top_k_classes=None, min_prob_class=None, max_classes=None):
    """Dense rows A [R, m] (R = kept classes, in stored order) and the dense D-PEF f [m]."""
    logp, g = dense_class_grads(model, example)
    p = logp.exp()
    order = torch.sort(logp, descending=True, stable=True).indices
    if kind == "lrm":
        classes = order[:top_k_classes] if top_k_classes else torch.arange(len(p))
    elif kind == "lvrm":
        top = order[:max_classes]
        classes = top[p[top] >= min_prob_class]  # may be empty: rank 0 (algorithm.md §1.4)
    else:
        classes = (
            torch.arange(len(p))
            if min_prob_class is None
            else torch.nonzero(p >= min_prob_class)[:, 0]
        )
    a = p[classes].sqrt()[:, None] * g[classes]
    return a, (a**2).sum(0)


def check_topk(dense_abs: np.ndarray, stored_flat: np.ndarray, k: int):
    """The stored flat indices are the k largest |entries| (up to ties)."""
    assert len(np.unique(stored_flat)) == k
    mask = np.zeros(dense_abs.size, bool)
    mask[stored_flat] = True
    if (~mask).any():
        assert dense_abs[mask].min() >= dense_abs[~mask].max() - 1e-12


CASES = [
    ("mlp", "lrm", {}),
    ("cnn", "lrm", {}),
    ("bert", "lrm", {}),
    ("embedding", "lrm", {}),
    ("mlp", "lrm", {"top_k_classes": 2}),
    ("bert", "lrm", {"top_k_classes": 2}),
    ("embedding", "lrm", {"top_k_classes": 3}),
    ("mlp", "lvrm", {"min_prob_class": 0.2, "max_classes": 3}),
    ("embedding", "lvrm", {"min_prob_class": 0.15, "max_classes": 4}),
    # a high threshold leaves some examples with rank 0; K > m pads low-rank examples with zeros
    ("mlp", "lvrm", {"min_prob_class": 0.3, "max_classes": 3, "n_values": 100, "n": 12}),
]


@pytest.mark.parametrize("name,kind,sel", CASES)
def test_row_pefs_match_dense(tmp_path, name, kind, sel):
    sel = dict(sel)
    k, n = sel.pop("n_values", 17), sel.pop("n", 6)
    model, ds, pefs = run(tmp_path, name, kind, k, n=n, **sel)
    m = pefs.n_parameters
    assert m == sum(p.numel() for p in model.parameters())
    assert pefs.kind == kind and pefs.values.shape == (len(ds), k)
    assert pefs.layout.n_parameters == m
    cs_start = 0
    for i in range(len(ds)):
        ex = ds[i]
        a, _ = reference_rows(model, ex, kind, **sel)
        r = a.shape[0]
        if kind == "lrm":
            co = pefs.col_offsets[i]
            assert co[0] == 0 and co[-1] == k and pefs.n_classes == r
            counts = np.diff(co)
        else:
            assert pefs.ranks[i] == r
            counts = pefs.col_sizes[cs_start : cs_start + r]
            cs_start += r
            assert counts.sum() == min(k, r * m)
        kept = int(counts.sum())
        rows = np.repeat(np.arange(r), counts)
        idx = pefs.indices[i][:kept]
        flat = rows * m + idx
        assert (np.diff(flat) > 0).all(), "flat indices must be sorted ascending"
        dense = a.numpy()
        np.testing.assert_allclose(pefs.values[i][:kept], dense[rows, idx], rtol=1e-5, atol=ATOL)
        if kept:
            check_topk(np.abs(dense).reshape(-1), flat, kept)
        # fewer than K entries in the kept rows: explicit zeros after them (no row of their own)
        assert (pefs.values[i][kept:] == 0).all() and (pefs.indices[i][kept:] == 0).all()
        dense_norm = torch.linalg.norm(a.T @ a).item() if r else 0.0
        np.testing.assert_allclose(pefs.norms[i], dense_norm, rtol=1e-5)
        # labels and logits stored alongside
        assert pefs.labels[i] == int(ex["labels"])
        out = model(**{kk: v[None] for kk, v in ex.items() if kk != "labels"})
        logits = out.logits if hasattr(out, "logits") else out
        np.testing.assert_allclose(pefs.logits[i], logits[0].detach().numpy(), rtol=1e-5, atol=1e-6)
    if k > m:  # the padded case must really hold rank-0 and padded low-rank examples
        assert (pefs.ranks == 0).any() and ((pefs.ranks > 0) & (pefs.ranks * m < k)).any()


DIAG_CASES = [
    ("mlp", {}),
    ("cnn", {}),
    ("bert", {}),
    ("embedding", {}),
    ("mlp", {"min_prob_class": 0.2}),
    ("embedding", {"min_prob_class": 0.15}),
]


@pytest.mark.parametrize("name,sel", DIAG_CASES)
def test_diag_pefs_match_dense(tmp_path, name, sel):
    k = 11
    model, ds, pefs = run(tmp_path, name, "diag", k, **sel)
    assert pefs.kind == "diag"
    for i in range(len(ds)):
        _, f = reference_rows(model, ds[i], "diag", **sel)
        f = f.numpy()
        vals, idx = pefs.values[i], pefs.indices[i]
        assert (np.diff(vals) <= 0).all(), "D values are stored in descending order"
        np.testing.assert_allclose(vals, f[idx], rtol=1e-5, atol=1e-9)
        check_topk(f, idx, k)
        np.testing.assert_allclose(pefs.norms[i], np.linalg.norm(f), rtol=1e-5)


def test_parameter_selection(tmp_path):
    model, ds = problem("mlp", n=3)
    loader = torch.utils.data.DataLoader(ds, batch_size=2)
    path = compute_pefs(
        model, loader, tmp_path / "p.h5", kind="lrm", n_values=5, params=["net.2.*"], progress=False
    )
    pefs = load_pefs(path)
    assert pefs.layout.names == ("net.2.weight", "net.2.bias")
    assert pefs.n_parameters == 7 * 4 + 4
    logp, g = dense_class_grads(model, ds[1], params={"net.2.weight", "net.2.bias"})
    a = (logp.exp().sqrt()[:, None] * g).numpy()
    rows = np.repeat(np.arange(4), np.diff(pefs.col_offsets[1]))
    np.testing.assert_allclose(pefs.values[1], a[rows, pefs.indices[1]], rtol=1e-5, atol=ATOL)


@pytest.mark.parametrize("mode", ["expectation", "sampling"])
@pytest.mark.parametrize("kind,sel", [("lrm", {}), ("lrm", {"top_k_classes": 1}), ("diag", {})])
def test_dataset_fisher(tmp_path, mode, kind, sel):
    model, ds, _ = run(tmp_path, "mlp", kind, 5, dataset_fisher=mode, seed=3, **sel)
    dsf = load_dataset_fisher(tmp_path / "dsf.h5")
    expected = np.zeros_like(dsf, dtype=np.float64)
    for i in range(len(ds)):
        logp, g = dense_class_grads(model, ds[i])
        if mode == "expectation":
            expected += (logp.exp()[:, None] * g**2).sum(0).numpy()
        else:
            y = int(sample_classes(logp[None], seed=3, first_index=i)[0])
            expected += (g[y] ** 2).numpy()
    np.testing.assert_allclose(dsf, expected / len(ds), rtol=1e-5, atol=1e-10)


def test_sample_classes_follows_probabilities():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1]])).expand(1, 3)
    draws = [int(sample_classes(logits, seed=0, first_index=i)[0]) for i in range(3000)]
    freq = np.bincount(draws, minlength=3) / len(draws)
    np.testing.assert_allclose(freq, [0.7, 0.2, 0.1], atol=0.03)


@pytest.mark.parametrize(
    "kw,msg",
    [
        ({"kind": "lrm", "min_prob_class": 0.1}, "LRM PEFs take neither"),
        ({"kind": "lrm", "max_classes": 2}, "LRM PEFs take neither"),
        ({"kind": "lvrm", "min_prob_class": 0.1}, "need both"),
        ({"kind": "diag", "max_classes": 2}, "max_classes"),
        ({"kind": "diag", "top_k_classes": 2}, "top_k_classes applies"),
        ({"kind": "lrm", "top_k_classes": 9}, "exceeds the model"),
        ({"kind": "lrm", "n_values": 10_000}, "exceeds"),
        ({"kind": "nope"}, "unknown PEF kind"),
    ],
)
def test_validation(tmp_path, kw, msg):
    model, ds = problem("mlp", n=2)
    kw.setdefault("n_values", 3)
    with pytest.raises(ValueError, match=msg):
        compute_pefs(
            model, torch.utils.data.DataLoader(ds), tmp_path / "x.h5", progress=False, **kw
        )


def test_train_mode_is_refused(tmp_path):
    model, ds = problem("mlp", n=2)
    model.train()
    with pytest.raises(ValueError, match="eval"):
        compute_pefs(
            model, torch.utils.data.DataLoader(ds), tmp_path / "x.h5", n_values=3, progress=False
        )


@pytest.mark.parametrize(
    "kind,sel", [("lrm", {}), ("lvrm", {"min_prob_class": 0.2, "max_classes": 3}), ("diag", {})]
)
def test_captured_fraction(tmp_path, kind, sel):
    from npeff.fisher.quality import captured_fraction

    model, ds, pefs = run(tmp_path, "mlp", kind, 13, **sel)
    frac = captured_fraction(pefs)
    m = pefs.n_parameters
    for i in range(len(ds)):
        a, f = reference_rows(model, ds[i], kind, **sel)
        if kind == "diag":
            kept = np.zeros(m)
            kept[pefs.indices[i]] = f.numpy()[pefs.indices[i]]
            expected = (kept**2).sum() / (f.numpy() ** 2).sum()
        else:
            r = a.shape[0]
            counts = np.diff(pefs.col_offsets[i]) if kind == "lrm" else None
            if counts is None:
                starts = np.concatenate([[0], np.cumsum(pefs.ranks)])
                counts = pefs.col_sizes[starts[i] : starts[i + 1]]
            rows = np.repeat(np.arange(r), counts)
            masked = np.zeros_like(a.numpy())
            masked[rows, pefs.indices[i]] = a.numpy()[rows, pefs.indices[i]]
            expected = (
                np.linalg.norm(masked.T @ masked) ** 2
                / np.linalg.norm(a.numpy().T @ a.numpy()) ** 2
            )
        np.testing.assert_allclose(frac[i], expected, rtol=1e-4)
    assert (frac > 0).all() and (frac <= 1 + 1e-6).all()
