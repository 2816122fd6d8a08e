"""COAR's activation engine runs the layers before the first masked module once per forward of
M masks (``lazy`` expansion), not once per mask, and still equals the one-mask loop."""

from __future__ import annotations

import torch
from torch import nn

from npeff.coar.ablation import AblationEngine, loop_logits
from npeff.models.units import build_unit_map


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(5, 16)
        self.fc2 = nn.Linear(16, 12)
        self.head = nn.Linear(12, 3)

    def forward(self, x):
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def test_prefix_before_the_masked_layer_runs_once_per_forward():
    torch.manual_seed(0)
    model = Net().double().eval()
    units = build_unit_map(model, [{"pattern": "fc2.weight", "granularity": "neuron"}])
    engine = AblationEngine(model, units, method="activation", masks_per_forward=8)
    b, m = 6, 8
    batch = {"x": torch.randn(b, 5, dtype=torch.float64), "labels": torch.randint(0, 3, (b,))}
    keep = torch.rand(m, units.n_units, generator=torch.Generator().manual_seed(1)) > 0.3
    engine.logits(keep, batch)  # the one-time self-check (runs the loop reference)
    rows = {"fc1": [], "fc2": [], "head": []}
    hooks = [
        getattr(model, n).register_forward_hook(
            lambda mod, a, out, _n=n: rows[_n].append(a[0].shape[0])
        )
        for n in rows
    ]
    try:
        got = engine.logits(keep, batch)
    finally:
        for h in hooks:
            h.remove()
    assert engine._expand == "lazy"
    assert rows["fc1"] == [b]  # the unmasked prefix: one call, B rows, for all M masks
    assert rows["fc2"] == [b]  # the masked layer's input is still shared; its output expands
    assert rows["head"] == [m * b]  # the suffix runs per mask
    ref = loop_logits(model, units, keep, batch)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
