"""Units and the batched ablation engine vs zeroing weights in place, one mask at a time."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from npeff.coar.ablation import AblationEngine, loop_margins, margin
from npeff.coar.masks import sample_masks
from npeff.models import build_model, parameter_layout
from npeff.models.units import UnitMap, build_unit_map


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc1 = nn.Linear(4 * 16, 6)
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x))).flatten(1)
        return self.fc2(torch.relu(self.fc1(h)))


def _net():
    torch.manual_seed(0)
    m = Net().eval()
    with torch.no_grad():
        m.bn.running_mean.uniform_(-0.5, 0.5)
        m.bn.running_var.uniform_(0.5, 2.0)
    return m


def _data(n=10):
    g = torch.Generator().manual_seed(1)
    return [
        {
            "x": torch.randn(n, 1, 4, 4, generator=g),
            "labels": torch.randint(0, 3, (n,), generator=g),
        }
    ]


def test_unit_map_slices_layout_and_json():
    m = _net()
    um = build_unit_map(m, [{"pattern": "conv.weight", "granularity": "channel"}, "fc1.weight"])
    assert um.n_units == 4 + 6
    assert um.granularity[:4] == ("channel",) * 4 and um.granularity[4:] == ("neuron",) * 6
    layout = parameter_layout(m)
    flat = torch.cat([p.detach().reshape(-1) for p in m.parameters()])
    idx = um.flat_indices(layout, 5)  # fc1 row 1
    assert torch.equal(flat[idx], m.fc1.weight[1].detach())
    idx = um.flat_indices(layout, 2)  # conv channel 2
    assert torch.equal(flat[idx], m.conv.weight[2].detach().reshape(-1))
    owner = um.unit_of_flat(layout)
    assert int((owner >= 0).sum()) == m.conv.weight.numel() + m.fc1.weight.numel()
    assert UnitMap.from_json(um.to_json()) == um


def test_unit_errors_are_clear():
    m = _net()
    with pytest.raises(ValueError, match="unknown unit pattern 'conv'"):
        build_unit_map(m, "conv")
    with pytest.raises(ValueError, match="matches no weight"):
        build_unit_map(m, "decoder.*.weight")
    with pytest.raises(ValueError, match="no weight with rows"):
        build_unit_map(m, "bn.*")
    with pytest.raises(ValueError, match="unknown unit granularity"):
        build_unit_map(m, [{"pattern": "fc1.weight", "granularity": "filter"}])
    with pytest.raises(ValueError, match="needs a conv weight"):
        build_unit_map(m, [{"pattern": "fc1.weight", "granularity": "channel"}])
    with pytest.raises(ValueError, match="more than one unit spec"):
        build_unit_map(m, ["fc1.weight", "fc*.weight"])
    with pytest.raises(ValueError, match="head pattern"):
        build_unit_map(m, [{"pattern": "encoder.*", "granularity": "head"}])


def test_margin_is_correct_minus_best_other():
    logits = torch.tensor([[2.0, 5.0, 1.0], [0.0, -1.0, 3.0]])
    assert torch.allclose(margin(logits, torch.tensor([1, 0])), torch.tensor([3.0, -3.0]))


def test_masks_depend_only_on_index():
    a = sample_masks(50, 0.2, 3, 0, 10)
    b = torch.cat([sample_masks(50, 0.2, 3, 0, 4), sample_masks(50, 0.2, 3, 4, 10)])
    assert torch.equal(a, b)
    big = sample_masks(200, 0.2, 0, 0, 200)
    assert abs(1 - float(big.float().mean()) - 0.2) < 0.02
    with pytest.raises(ValueError, match=r"outside \(0, 1\)"):
        sample_masks(5, 1.0, 0, 0, 1)


@pytest.mark.parametrize("method", ["activation", "vmap"])
def test_engine_matches_loop_cnn(method):
    m = _net()
    um = build_unit_map(m, ["conv.weight", "fc1.weight"])
    data = _data()
    keep = sample_masks(um.n_units, 0.3, 0, 0, 7)
    eng = AblationEngine(m, um, method=method, masks_per_forward=3)
    got = eng.margins(keep, data)
    ref = loop_margins(m, um, keep, data)
    assert torch.allclose(got, ref, atol=1e-5)
    # weights untouched
    assert torch.equal(m.conv.weight, _net().conv.weight)


def test_engine_matches_loop_bert_heads():
    from npeff.tasks import build_task

    task = build_task(
        {"name": "toy_nli", "n_train": 16, "n_fit": 8, "n_eval": 12, "max_length": 16}
    )
    torch.manual_seed(0)
    model = build_model(
        {
            "name": "tiny_bert",
            "hidden_size": 16,
            "num_layers": 2,
            "num_heads": 4,
            "intermediate_size": 32,
        },
        task.model_hints(),
    )
    um = build_unit_map(model, "heads")
    assert um.n_units == 8 and um.names[0].endswith("layer.0.attention:head0")
    q = "hf.bert.encoder.layer.1.attention.self.query.weight"
    o = "hf.bert.encoder.layer.1.attention.output.dense.weight"
    sl = {s.param: s for s in um.slices[5]}  # layer 1, head 1
    assert (sl[q].dim, sl[q].start, sl[q].stop) == (0, 4, 8)
    assert (sl[o].dim, sl[o].start, sl[o].stop) == (1, 4, 8)
    data = [next(iter(task.dataloader("eval", 12)))]
    keep = sample_masks(um.n_units, 0.3, 1, 0, 5)
    ref = loop_margins(model, um, keep, data)
    for method in ("activation", "vmap"):
        got = AblationEngine(model, um, method=method, masks_per_forward=2).margins(keep, data)
        assert torch.allclose(got, ref, atol=1e-4), method


def test_carry_mode_on_the_digits_cnn_equals_the_loop():
    """Conv-2 channels + hidden neurons of the digits CNN: the keep-mask is carried through eval
    BatchNorm (non-trivial statistics and shift, so an ablated channel is BN's shift, not 0),
    ReLU and max-pool, and the margins equal the one-mask-at-a-time loop."""
    torch.manual_seed(0)
    m = build_model({"name": "cnn", "channels": [4, 6], "hidden": 8}, {"num_classes": 5}).eval()
    with torch.no_grad():
        for bn in (m.features[1], m.features[4]):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    um = build_unit_map(m, ["features.3.weight", "head.1.weight"])
    g = torch.Generator().manual_seed(2)
    data = [
        {
            "x": torch.randn(9, 1, 8, 8, generator=g),
            "labels": torch.randint(0, 5, (9,), generator=g),
        }
        for _ in range(2)
    ]
    keep = sample_masks(um.n_units, 0.3, 0, 0, 11)
    eng = AblationEngine(m, um, masks_per_forward=4)
    got = eng.margins(keep, data)
    assert eng._expand == "carry"
    ref = loop_margins(m, um, keep, data)
    assert torch.allclose(got, ref, rtol=0, atol=1e-6)
    # all of conv 2 ablated: every channel is BN's shift pushed through ReLU and the pool
    none = torch.zeros(1, um.n_units, dtype=torch.bool)
    none[0, 6:] = True
    assert torch.allclose(eng.margins(none, data), loop_margins(m, um, none, data), atol=1e-6)


class Scaled(nn.Module):
    """A functional op between the masked conv and the next module: carry cannot follow it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3 * 16, 2)

    def forward(self, x):
        return self.fc((2 * self.bn(self.conv(x))).flatten(1))


def test_carry_falls_back_when_the_mask_cannot_be_carried():
    torch.manual_seed(0)
    m = Scaled().eval()
    with torch.no_grad():
        m.bn.running_mean.uniform_(-0.5, 0.5)
    um = build_unit_map(m, "conv.weight")
    data = [{"x": torch.randn(6, 1, 4, 4), "labels": torch.randint(0, 2, (6,))}]
    keep = sample_masks(um.n_units, 0.4, 0, 0, 5)
    eng = AblationEngine(m, um, masks_per_forward=5)
    got = eng.margins(keep, data)
    assert eng._expand == "lazy"
    assert torch.allclose(got, loop_margins(m, um, keep, data), atol=1e-6)
