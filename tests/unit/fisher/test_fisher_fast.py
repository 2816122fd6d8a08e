"""The per-layer fast path (npeff/fisher/fast.py) against a float64 autograd loop and torch.func,
on every layer type it covers: Linear (with and without positions), HF Conv1D, Conv1d, Conv2d,
Embedding (padding_idx, ids shared by the batch, tied to an output layer), LayerNorm (with and
without positions), padded BERT sequences; plus the automatic choice and its metadata."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from npeff.artifacts.pefs import load_pefs
from npeff.fisher import compute_pefs
from npeff.fisher.fast import FisherEngine
from npeff.fisher.grads import PerExampleGrads, select_named_parameters
from tests.helpers.problems import DictDataset, problem
from tests.helpers.references import dense_class_grads


class Mixed(nn.Module):
    """Embedding (padding_idx) → LayerNorm over tokens → Conv1d over the sequence → mean →
    LayerNorm (no positions) → HF Conv1D → Linear (no positions), with a shared position table
    looked up with ids [1, L] (as BERT does)."""

    def __init__(self, vocab=7, dim=4, seq=5, n_classes=3):
        from transformers.pytorch_utils import Conv1D

        super().__init__()
        self.emb = nn.Embedding(vocab, dim, padding_idx=0)
        self.pos = nn.Embedding(seq, dim)
        self.register_buffer("pos_ids", torch.arange(seq)[None])
        self.ln1 = nn.LayerNorm(dim)
        self.conv = nn.Conv1d(dim, 3, 2, padding=1, stride=1, dilation=2)
        self.ln2 = nn.LayerNorm(3)
        self.c1d = Conv1D(5, 3)
        self.head = nn.Linear(5, n_classes)

    def forward(self, tokens):
        h = self.ln1(self.emb(tokens) + self.pos(self.pos_ids))
        h = torch.tanh(self.conv(h.transpose(1, 2))).mean(-1)
        return self.head(torch.tanh(self.c1d(self.ln2(h))))


class Conv2dNet(nn.Module):
    """Strided, padded, dilated Conv2d (non-square kernel) + max-pool + linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, (3, 2), stride=(1, 2), padding=(1, 0), dilation=(2, 1))
        self.head = nn.Linear(3, 4)

    def forward(self, image):
        return self.head(torch.nn.functional.max_pool2d(torch.relu(self.conv(image)), 2).flatten(1))


def make(name, n=5):
    g = torch.Generator().manual_seed(3)
    torch.manual_seed(3)
    if name == "mixed":
        model = Mixed()
        tokens = torch.randint(1, 7, (n, 5), generator=g)
        tokens[:, 3:] = 0  # padding
        ds = DictDataset({"tokens": tokens, "labels": torch.zeros(n, dtype=torch.long)})
    elif name == "conv2d":
        model = Conv2dNet()
        ds = DictDataset(
            {"image": torch.randn(n, 2, 5, 6, generator=g), "labels": torch.zeros(n).long()}
        )
    else:
        return problem(name, n=n)
    model = model.double().eval()
    ds.tensors = {k: v.double() if v.is_floating_point() else v for k, v in ds.tensors.items()}
    return model, ds


def batch_of(ds):
    return torch.utils.data.default_collate([ds[i] for i in range(len(ds))])


@pytest.mark.parametrize("name", ["mlp", "cnn", "embedding", "bert", "mixed", "conv2d"])
def test_fast_rows_and_diag_match_autograd_loop_and_func(name):
    model, ds = make(name)
    named = select_named_parameters(model)
    engine = FisherEngine(model, named, "auto")
    batch = batch_of(ds)
    logits = engine.logits(batch)
    b, c = logits.shape
    classes = torch.arange(c).expand(b, c)
    w = torch.softmax(logits, -1).sqrt()
    rows = engine.class_grads(batch, classes, c, w)
    diag = engine.diag_fisher(batch, classes, c, w)
    ref = []
    for i in range(b):
        logp, g = dense_class_grads(model, ds[i])
        ref.append(logp.exp().sqrt()[:, None] * g)
    ref = torch.stack(ref)
    torch.testing.assert_close(rows, ref, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(diag, ref.square().sum(1), rtol=1e-9, atol=1e-12)
    func = PerExampleGrads(model, named).class_grads(batch, classes, c, w)
    torch.testing.assert_close(rows, func, rtol=1e-9, atol=1e-12)
    # only BatchNorm (the CNN's) is left to torch.func; every covered layer took the fast path
    expected_func = ["bn.weight", "bn.bias"] if name == "cnn" else []
    assert engine.func_names == expected_func


def test_selected_classes_subsets_and_a_subset_of_parameters():
    """Rows for a few classes with weights (the LVRM/top-k case), some parameters only, and the
    per-class rows of a tied embedding summed over both of its uses."""
    model, ds = make("embedding")
    named = [(n, p) for n, p in model.named_parameters() if n in ("emb.weight", "mix.bias")]
    engine = FisherEngine(model, named, "fast")
    batch = batch_of(ds)
    classes = torch.tensor([[2, 0], [1, 5], [3, 3], [0, 1], [4, 2]])
    w = torch.rand(5, 2, dtype=torch.float64)
    rows = engine.class_grads(batch, classes, 6, w)
    for i in range(5):
        _, g = dense_class_grads(model, ds[i], params={"emb.weight", "mix.bias"})
        torch.testing.assert_close(rows[i], w[i, :, None] * g[classes[i]], rtol=1e-9, atol=1e-12)


def test_forced_fast_refuses_uncovered_layers():
    model, _ = make("cnn")
    with pytest.raises(ValueError, match="fisher.engine=auto"):
        FisherEngine(model, select_named_parameters(model), "fast")
    with pytest.raises(ValueError, match="engine must be one of"):
        FisherEngine(model, select_named_parameters(model), "jit")


def test_misused_layer_falls_back_to_func():
    """A Linear whose weight is also used directly (F.linear outside its forward) is caught by
    the check against the autograd loop and moved to torch.func; results stay exact."""

    class Sneaky(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 3)
            self.b = nn.Linear(3, 2)

        def forward(self, x):
            h = torch.tanh(self.a(x))
            return self.b(h + nn.functional.linear(h, self.a.weight))[:, :2]

    torch.manual_seed(0)
    model = Sneaky().double().eval()
    x = torch.randn(4, 3, dtype=torch.float64)
    named = select_named_parameters(model)
    engine = FisherEngine(model, named, "auto")
    batch = {"x": x}
    classes = torch.arange(2).expand(4, 2)
    rows = engine.class_grads(batch, classes, 2)
    assert engine.func_names == ["a.weight"]
    ds = DictDataset({"x": x, "labels": torch.zeros(4).long()})
    for i in range(4):
        torch.testing.assert_close(
            rows[i], dense_class_grads(model, ds[i])[1], rtol=1e-9, atol=1e-12
        )
    with pytest.raises(ValueError, match="differ"):
        FisherEngine(model, named, "fast").class_grads(batch, classes, 2)


@pytest.mark.parametrize("kind", ["diag", "lrm"])
def test_compute_pefs_same_file_with_either_engine(tmp_path, kind):
    model, ds = problem("bert", n=5)
    loader = torch.utils.data.DataLoader(ds, batch_size=4)
    kw = dict(kind=kind, n_values=30, chunk_size=4, progress=False)
    fast = load_pefs(compute_pefs(model, loader, tmp_path / "f.h5", engine="auto", **kw))
    func = load_pefs(compute_pefs(model, loader, tmp_path / "g.h5", engine="func", **kw))
    assert fast.metadata["fisher_engine"]["func"] == []
    assert func.metadata["fisher_engine"]["fast"] == []
    assert fast.metadata["fisher_engine"]["requested"] == "auto"
    for key in ("norms", "values"):
        torch.testing.assert_close(
            torch.as_tensor(getattr(fast, key)),
            torch.as_tensor(getattr(func, key)),
            rtol=1e-9,
            atol=1e-12,
        )
    assert (fast.indices == func.indices).all()
    if kind == "lrm":
        assert (fast.col_offsets == func.col_offsets).all()


def test_stage_device_follows_trainer_accelerator():
    from npeff.run.pefs import stage_device

    assert stage_device("cpu").type == "cpu"
    assert stage_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.cuda.is_available():
        assert stage_device("gpu").type == "cuda"
    else:
        with pytest.raises(ValueError, match="no CUDA device"):
            stage_device("gpu")


def test_unfold_equals_torch_unfold():
    """The strided-view unfold against F.unfold: kernels, strides, padding, dilation, and a
    non-contiguous input."""
    import itertools

    from npeff.fisher.layers import unfold

    g = torch.Generator().manual_seed(0)
    a = torch.randn(2, 3, 9, 8, generator=g)
    permuted = torch.randn(2, 8, 9, 3, generator=g).permute(0, 3, 2, 1)
    for k, s, p, d in itertools.product(
        [(3, 2), (1, 1)], [(1, 1), (2, 1)], [(0, 0), (1, 2)], [(1, 1), (2, 1)]
    ):
        for x in (a, permuted):
            ref = torch.nn.functional.unfold(x, k, dilation=d, padding=p, stride=s)
            assert torch.equal(unfold(x, k, s, p, d), ref), (k, s, p, d)


def test_conv_diag_rule_in_both_gradient_layouts():
    """The convolution's D-PEF rule equals its per-objective rule squared and summed, for output
    gradients stored class-major [k, B, ...] and batch-first (a [k, B, ...] view of [B, k, ...])."""
    from npeff.fisher.layers import DIAG_RULES, FRESH, RULES

    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, (3, 2), stride=(1, 2), padding=(1, 0), dilation=(2, 1)).double()
    a = torch.randn(4, 2, 7, 6, dtype=torch.float64)
    out_shape = conv(a).shape
    g = torch.randn(5, *out_shape, dtype=torch.float64)
    full = {
        "weight": torch.empty(4, 5, *conv.weight.shape, dtype=torch.float64),
        "bias": torch.empty(4, 5, 3, dtype=torch.float64),
        FRESH: {"weight", "bias"},
    }
    RULES["conv"](conv, a, g, full)
    for grads in (g, g.transpose(0, 1).contiguous().transpose(0, 1)):
        diag = {
            "weight": torch.empty(4, *conv.weight.shape, dtype=torch.float64),
            "bias": torch.empty(4, 3, dtype=torch.float64),
            FRESH: {"weight", "bias"},
        }
        DIAG_RULES["conv"](conv, a, grads, diag)
        for attr in ("weight", "bias"):
            torch.testing.assert_close(diag[attr], full[attr].square().sum(1))
