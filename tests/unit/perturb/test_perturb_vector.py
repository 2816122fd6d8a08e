"""ParameterVector scatter/split, apply/restore identity, and the perturbation artifact round trip."""

import numpy as np
import pytest
import torch
from torch import nn

from npeff.artifacts.layout import ParameterLayout
from npeff.artifacts.perturbation import PerturbationResult, load_perturbation, save_perturbation
from npeff.perturb.vector import ModelPerturber, ParameterVector


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))


def _layout(model, skip=()):
    return ParameterLayout.from_named_tensors(
        (n, p) for n, p in model.named_parameters() if n not in skip
    )


def test_from_reduced_scatters_and_splits_to_named_tensors():
    model = _model()
    layout = _layout(model)
    m = layout.n_parameters
    rng = np.random.default_rng(0)
    cols = np.sort(rng.choice(m, size=17, replace=False))
    vals = rng.normal(size=17).astype(np.float32)
    v = ParameterVector.from_reduced(layout, vals, cols)
    dense = np.zeros(m, dtype=np.float32)
    dense[cols] = vals
    assert np.array_equal(v.flat.numpy(), dense)
    # named tensors follow named_parameters() order, row-major
    named = v.named()
    off = 0
    for name, p in model.named_parameters():
        k = p.numel()
        assert named[name].shape == p.shape
        assert np.array_equal(named[name].numpy().reshape(-1), dense[off : off + k])
        off += k
    assert v.norm() == pytest.approx(float(np.linalg.norm(vals.astype(np.float64))), rel=1e-6)


def test_from_reduced_rejects_bad_indices():
    layout = _layout(_model())
    with pytest.raises(ValueError, match="outside"):
        ParameterVector.from_reduced(layout, np.ones(2), np.array([0, layout.n_parameters]))
    with pytest.raises(ValueError, match="same length"):
        ParameterVector.from_reduced(layout, np.ones(3), np.array([0, 1]))


def test_apply_then_restore_is_bitwise_identity():
    model = _model()
    # perturb only some parameters; the others must never change
    layout = _layout(model, skip=("0.bias",))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    perturber = ModelPerturber(model, layout)
    g = torch.Generator().manual_seed(1)
    v = ParameterVector(layout, torch.randn(layout.n_parameters, generator=g) * 0.37)
    eps = 0.1
    perturber.apply(v, eps)
    named = v.named()
    for name, p in model.named_parameters():
        if name in named:
            expect = before[name] + eps * named[name]
            assert torch.equal(p.detach(), expect)
            assert not torch.equal(p.detach(), before[name])
        else:
            assert torch.equal(p.detach(), before[name])
    perturber.apply(v, -eps)  # starts from θ, not from θ + εv
    for name, p in model.named_parameters():
        if name in named:
            assert torch.equal(p.detach(), before[name] - eps * named[name])
    perturber.restore()
    for k, t in model.state_dict().items():
        assert torch.equal(t, before[k]), k  # bitwise
    # context manager restores even on error
    with pytest.raises(RuntimeError):
        with perturber.perturbed(v, 3.0):
            raise RuntimeError("boom")
    for k, t in model.state_dict().items():
        assert torch.equal(t, before[k]), k


def test_layout_mismatch_is_a_clear_error():
    model = _model()
    bad = ParameterLayout(("0.weight", "nope"), ((5, 4), (2,)), (0, 20), 22)
    with pytest.raises(KeyError, match="nope"):
        ModelPerturber(model, bad)
    bad2 = ParameterLayout(("0.weight",), ((4, 5),), (0,), 20)
    with pytest.raises(ValueError, match="shape"):
        ModelPerturber(model, bad2)


def _result(c=3, n_top=4, n_base=6):
    rng = np.random.default_rng(0)
    return PerturbationResult(
        component_indices=np.arange(c) * 2,
        magnitude=0.1,
        kl_top=rng.random((c, 2)),
        kl_baseline=rng.random((c, 2)),
        kl_top_reverse=rng.random((c, 2)),
        kl_baseline_reverse=rng.random((c, 2)),
        kl_ratio=rng.random(c),
        best_sign=np.array([1, -1, 1][:c], dtype=np.int8),
        pef_norm_ratio=rng.random(c),
        acc_top_before=rng.random(c),
        acc_top_after=rng.random((c, 2)),
        acc_baseline_before=rng.random(c),
        acc_baseline_after=rng.random((c, 2)),
        acc_all_before=0.75,
        acc_all_after=np.full((c, 2), np.nan),
        top_indices=rng.integers(0, 100, (c, n_top)),
        baseline_indices=np.arange(n_base),
        metadata={"kind": "lrm", "tau": 0.35, "nested": {"a": [1, 2]}},
    )


def test_perturbation_artifact_round_trip(tmp_path):
    res = _result()
    path = save_perturbation(res, tmp_path / "p.h5")
    back = load_perturbation(path)
    for name in res.__dataclass_fields__:
        a, b = getattr(res, name), getattr(back, name)
        if isinstance(a, np.ndarray):
            assert a.shape == b.shape and np.array_equal(a, b, equal_nan=True), name
        else:
            assert a == b, name
    assert back.best_sign.dtype == np.int8


def test_perturbation_artifact_rejects_foreign_and_bad_shapes(tmp_path):
    import h5py

    with h5py.File(tmp_path / "x.h5", "w") as f:
        f.create_dataset("data/W", data=np.zeros(3))
    with pytest.raises(ValueError, match="not a perturbation file"):
        load_perturbation(tmp_path / "x.h5")
    res = _result()
    res.kl_top = res.kl_top[:, :1]
    with pytest.raises(ValueError, match="kl_top"):
        save_perturbation(res, tmp_path / "bad.h5")
    assert not (tmp_path / "bad.h5").exists()
