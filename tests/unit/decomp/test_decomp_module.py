"""The LightningModule shell: resume == uninterrupted, expansion, early stop, callbacks, logging."""

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.loggers import Logger

from npeff.artifacts.decomposition import load_decomposition
from npeff.decomp.module import DecompSettings
from npeff.decomp.runner import decompose
from npeff.decomp.synthetic import planted_diag_pefs, planted_lrm_pefs


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Killed(RuntimeError):
    pass


class KillAt(Callback):
    def __init__(self, step):
        self.step = step

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch + 1 == self.step:
            raise Killed(f"simulated kill at step {self.step}")


class Capture(Logger):
    def __init__(self):
        super().__init__()
        self.rows = []

    @property
    def name(self):
        return "capture"

    @property
    def version(self):
        return 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.rows.append((step, dict(metrics)))


LRM = dict(
    kind="lrm",
    n_components=3,
    n_iters_g_only=6,
    n_iters_joint=24,
    lr_g=3e-3,
    log_every=3,
    dtype="float64",
)
DIAG = dict(
    kind="diag", n_components=3, n_iters_joint=30, mu_eps=1e-8, log_every=3, dtype="float64", seed=7
)


@pytest.mark.parametrize("kind", ["lrm", "diag"])
def test_resume_equals_uninterrupted(tmp_path, kind):
    if kind == "lrm":
        pefs, _ = planted_lrm_pefs(n=30, m=25, C=2, r=3, K=40, seed=1)
        s = DecompSettings(**LRM)
    else:
        pefs, _, _ = planted_diag_pefs(n=30, m=25, r=3, K=20, seed=1)
        s = DecompSettings(**DIAG)
    common = dict(checkpoint_every=5, convergence_every=5, progress=False)
    full = decompose(pefs, s, tmp_path / "full", **common)
    with pytest.raises(Killed):
        decompose(pefs, s, tmp_path / "killed", extra_callbacks=[KillAt(13)], **common)
    assert (tmp_path / "killed" / "checkpoints" / "last.ckpt").is_file()
    assert not (tmp_path / "killed" / "decomposition.h5").exists()
    resumed = decompose(pefs, s, tmp_path / "killed", **common)  # the same call resumes
    np.testing.assert_array_equal(resumed.W, full.W)
    comps = (resumed.G, full.G) if kind == "lrm" else (resumed.H, full.H)
    np.testing.assert_array_equal(*comps)
    assert resumed.losses.keys() == full.losses.keys()
    for k in full.losses:
        np.testing.assert_array_equal(resumed.losses[k], full.losses[k])
    np.testing.assert_array_equal(resumed.convergence["cosine"], full.convergence["cosine"])


def test_losses_and_convergence_are_logged_and_stored(tmp_path):
    pefs, _ = planted_lrm_pefs(n=30, m=25, C=2, r=3, K=40, seed=1)
    logger = Capture()
    dec = decompose(
        pefs, DecompSettings(**LRM), tmp_path, logger=logger, convergence_every=6, progress=False
    )
    assert len(dec.losses["G_only"]) == 2 and len(dec.losses["joint"]) == 8
    logged = [(s, m["loss/joint"]) for s, m in logger.rows if "loss/joint" in m]
    np.testing.assert_allclose([v for _, v in logged], dec.losses["joint"], rtol=1e-6)
    assert [s for s, _ in logged] == list(range(9, 31, 3))
    assert any("seconds_per_step" in m for _, m in logger.rows)
    assert any("convergence/mean_cos_prev" in m for _, m in logger.rows)
    np.testing.assert_array_equal(dec.convergence["steps"], [6, 12, 18, 24, 30])
    snaps = dec.convergence["snapshots"]
    assert snaps.shape == (6, 30, 3)
    np.testing.assert_allclose(snaps[-1], dec.W, rtol=1e-6)
    a, b = snaps[-2].astype(np.float64), snaps[-1].astype(np.float64)
    cos = (a * b).sum(0) / np.linalg.norm(a, axis=0) / np.linalg.norm(b, axis=0)
    np.testing.assert_allclose(dec.convergence["cosine"][-1], cos, rtol=1e-5)


def test_relative_loss_change_stops_early(tmp_path):
    pefs, _, _ = planted_diag_pefs(n=30, m=25, r=3, K=20, seed=1)
    s = DecompSettings(**{**DIAG, "n_iters_joint": 3000, "tol": 2e-2})
    dec = decompose(pefs, s, tmp_path, progress=False)
    n = dec.metadata["n_steps"]
    assert n < 3000 and len(dec.losses["joint"]) == n // 3
    last = dec.losses["joint"].astype(np.float64)
    assert abs(last[-2] - last[-1]) <= 2e-2 * last[-2] * 1.01


def test_expansion_freezes_base_components_and_puts_new_ones_first(tmp_path):
    pefs, _ = planted_lrm_pefs(n=40, m=30, C=2, r=4, K=50, seed=2)
    base = decompose(
        pefs, DecompSettings(**{**LRM, "n_components": 2}), tmp_path / "base", progress=False
    )
    s = DecompSettings(
        **{**LRM, "n_components": 2, "n_iters_joint_expansion_only": 6},
        expand_from=str(tmp_path / "base" / "decomposition.h5"),
        use_W_from_decomposition=True,
    )
    dec = decompose(pefs, s, tmp_path / "exp", progress=False)
    assert dec.G.shape == (4, base.G.shape[1])
    np.testing.assert_array_equal(dec.G[2:], base.G)
    np.testing.assert_array_equal(dec.new_to_old_col_indices, base.new_to_old_col_indices)
    assert set(dec.losses) == {"G_only", "expansion_only", "joint"}
    assert (
        dec.losses["joint"][-1] <= base.losses["joint"][-1] * 1.0001
    )  # more components fit better
    assert dec.metadata["n_frozen_components"] == 2


def test_bad_inputs_fail_before_work(tmp_path):
    pefs, _ = planted_lrm_pefs(n=5, m=10, C=2, r=3, K=10, seed=0)
    with pytest.raises(ValueError, match="larger than the number of examples"):
        decompose(pefs, DecompSettings(**{**LRM, "n_components": 6}), tmp_path, progress=False)
    with pytest.raises(ValueError, match="decomp=lrm_npeff"):
        decompose(pefs, DecompSettings(**DIAG), tmp_path, progress=False)
    other, _ = planted_lrm_pefs(n=10, m=12, C=2, r=3, K=10, seed=0)
    decompose(other, DecompSettings(**{**LRM, "n_components": 2}), tmp_path / "b", progress=False)
    s = DecompSettings(**LRM, expand_from=str(tmp_path / "b" / "decomposition.h5"))
    with pytest.raises(ValueError, match="12 parameters but the PEFs have 10"):
        decompose(pefs, s, tmp_path / "c", progress=False)
    assert load_decomposition(tmp_path / "b" / "decomposition.h5").n_parameters == 12
