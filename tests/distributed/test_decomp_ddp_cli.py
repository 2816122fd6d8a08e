"""`npeff-decompose ... trainer.devices=2 trainer.strategy=ddp` (Lightning's subprocess launcher,
run as a script, never inside pytest) equals the one-process stage run."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from npeff.artifacts.decomposition import load_decomposition
from npeff.artifacts.pefs import save_pefs
from npeff.decomp.synthetic import planted_lrm_pefs
from npeff.run import decompose as stage
from tests.helpers.compose import compose_config
from tests.helpers.problems import DDP_DECOMP_OVERRIDES

pytestmark = pytest.mark.slow  # 2 processes

OVERRIDES = DDP_DECOMP_OVERRIDES


def test_cli_ddp_equals_one_process(tmp_path):
    pefs, _ = planted_lrm_pefs(n=20, m=29, C=2, r=3, K=30, seed=2)
    path = save_pefs(pefs, tmp_path / "pefs.h5")
    overrides = [f"inputs.pefs={path}", *OVERRIDES]
    cfg = compose_config("decompose", overrides)
    stage.run(cfg, tmp_path / "one")
    env = {**os.environ, "WANDB_MODE": "disabled"}
    cmd = [
        sys.executable,
        "-m",
        "npeff.run.decompose",
        *overrides,
        "trainer.devices=2",
        "trainer.strategy=ddp",
        f"hydra.run.dir={tmp_path / 'two'}",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = load_decomposition(tmp_path / "one" / "decomposition.h5")
    two = load_decomposition(tmp_path / "two" / "decomposition.h5")
    np.testing.assert_allclose(two.W, one.W, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(two.G, one.G, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(two.losses["joint"], one.losses["joint"], rtol=1e-6)
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["n_steps"] == 16
