"""COAR end to end on a model whose margin is exactly linear in its keep-mask, the
attributions file (round trip, resume after kill -9) and the clear errors before any work."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
import torch

from npeff.artifacts import keys
from npeff.artifacts.coar import read_ablations, read_progress
from npeff.coar import compute_attributions, edit, fit_attributions, load_attributions
from tests.helpers.problems import TwoClass, two_class_problem
from tests.helpers.scripts import script_env


def test_exactly_linear_margin_gives_analytic_attributions(tmp_path):
    m, x, y, loader = two_class_problem()
    att = compute_attributions(
        m, loader, tmp_path / "a.h5", units="l2.weight", alpha=0.2, n_masks=150, progress=False
    )
    with torch.no_grad():
        a = torch.relu(m.l2(torch.relu(m.l1(x))))
        u = m.out.weight
        w = ((u[y] - u[1 - y]) * a).numpy()  # [n, |C|]: margin gained by keeping neuron c
        b = (m.out.bias[y] - m.out.bias[1 - y]).numpy()
    scale = np.abs(w).max()
    assert np.abs(att.weights - w).max() <= 1e-4 * scale
    assert np.abs(att.bias - b).max() <= 1e-4 * scale
    assert att.eval["corr_heldout_mean"] >= 0.999
    assert set(att.eval["corr_by_alpha"]) == {"0.1", "0.2", "0.4", "0.8"}
    again = load_attributions(tmp_path / "a.h5")
    assert np.array_equal(again.weights, att.weights) and again.units == att.units
    assert again.settings["alpha"] == 0.2 and again.n_masks == 150
    assert again.top_units(0, 3)[0][0].startswith("l2.weight[")


def test_bad_input_fails_before_any_work(tmp_path):
    m, _, _, loader = two_class_problem()
    p = tmp_path / "bad.h5"
    with pytest.raises(ValueError, match="unknown unit pattern"):
        compute_attributions(m, loader, p, units="layer2", n_masks=20)
    with pytest.raises(ValueError, match="matches no weight"):
        compute_attributions(m, loader, p, units="encoder.*.weight", n_masks=20)
    for alpha in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"outside \(0, 1\)"):
            compute_attributions(m, loader, p, units="l2.weight", alpha=alpha, n_masks=20)
    with pytest.raises(ValueError, match="least squares on 10 units needs at least 11"):
        compute_attributions(m, loader, p, units="l2.weight", n_masks=5)
    assert not p.exists()
    compute_attributions(
        m, loader, p, units="l2.weight", n_masks=30, evaluate=False, progress=False
    )
    with pytest.raises(ValueError, match="40 masks requested but .* holds 30"):
        fit_attributions(p, n_masks=40)
    with pytest.raises(ValueError, match="holds 30"):
        read_ablations(p, 0, 31)
    other = TwoClass().eval()  # same architecture, other weights
    att = load_attributions(p)
    with pytest.raises(ValueError, match="weights differ"):
        edit(other, att, loader, targets=[0], references=[1, 2])
    with pytest.raises(ValueError, match="not a COAR attributions file"):
        h5py.File(tmp_path / "foreign.h5", "w").close()
        load_attributions(tmp_path / "foreign.h5")


SCRIPT = textwrap.dedent(
    """
    import sys, time, torch
    from tests.helpers.problems import two_class_problem
    import npeff.artifacts.coar as store
    orig = store.AttributionsWriter.append
    def append(self, masks, margins):
        orig(self, masks, margins)
        print("committed", self.n_written, flush=True)
        time.sleep(0.05)  # slow enough to be killed mid-run whatever the machine
    store.AttributionsWriter.append = append
    from npeff.coar import compute_attributions
    m, _, _, loader = two_class_problem()
    compute_attributions(m, loader, sys.argv[1], units="l2.weight", alpha=0.2, n_masks=640,
                         chunk_masks=16, masks_per_forward=16, evaluate=False, progress=False)
    """
)


def test_kill9_and_rerun_equals_uninterrupted(tmp_path):
    m, _, _, loader = two_class_problem()
    killed = tmp_path / "killed.h5"
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(killed)],
        stdout=subprocess.PIPE,
        text=True,
        env=script_env(),
    )
    try:
        for line in proc.stdout:
            if line.startswith("committed") and int(line.split()[1]) >= 48:
                break
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    n_done, complete = read_progress(killed)
    assert 48 <= n_done < 640 and not complete
    kw = dict(units="l2.weight", alpha=0.2, n_masks=640, chunk_masks=16, masks_per_forward=16)
    compute_attributions(m, loader, killed, evaluate=False, progress=False, **kw)
    fresh = tmp_path / "fresh.h5"
    compute_attributions(m, loader, fresh, evaluate=False, progress=False, **kw)
    with h5py.File(killed) as a, h5py.File(fresh) as b:
        for name in (keys.COAR_MASKS, keys.COAR_MARGINS, keys.COAR_WEIGHTS, keys.COAR_BIAS):
            assert np.array_equal(a[name][...], b[name][...]), name
