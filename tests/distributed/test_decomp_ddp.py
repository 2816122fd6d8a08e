"""Two CPU processes (ddp_spawn, gloo) by parameter-column blocks give the same W, G/H and losses
as one process, for both kinds and for LVRM PEFs; a checkpoint written by 2 processes resumes on 1.

Each ddp_spawn start costs several seconds on a loaded 2-core machine, hence one spawn per kind.
"""

import os

import numpy as np
import pytest

from npeff.decomp.module import DecompSettings
from npeff.decomp.runner import decompose
from npeff.decomp.synthetic import planted_diag_pefs, planted_lrm_pefs
from npeff.fisher.synthetic import planted_lvrm_pefs

pytestmark = pytest.mark.slow  # 2 processes

os.environ.setdefault("WANDB_MODE", "disabled")

DDP = {"devices": 2, "strategy": "ddp_spawn", "accelerator": "cpu"}
COMMON = dict(log_every=4, dtype="float64", block_cols=8, num_threads=1, n_components=3)


def _run(pefs, s, out, trainer_cfg=None, **kw):
    return decompose(pefs, s, out, trainer_cfg=trainer_cfg, progress=False, **kw)


def _assert_same(a, b, kind):
    np.testing.assert_allclose(a.W, b.W, rtol=1e-6, atol=1e-9)
    ca, cb = (a.H, b.H) if kind == "diag" else (a.G, b.G)
    assert ca.shape == cb.shape
    np.testing.assert_allclose(ca, cb, rtol=1e-6, atol=1e-9)
    assert a.losses.keys() == b.losses.keys()
    for k in b.losses:
        np.testing.assert_allclose(a.losses[k], b.losses[k], rtol=1e-6)


@pytest.mark.parametrize("kind", ["lrm", "lvrm", "diag"])
def test_two_processes_equal_one_and_resume_on_one(tmp_path, kind):
    # m = 37 parameters: uneven column blocks (18 + 19), several sub-blocks each.
    if kind == "lrm":
        pefs, _ = planted_lrm_pefs(n=24, m=37, C=2, r=3, K=40, seed=5)
        s = DecompSettings(kind="lrm", n_iters_g_only=4, n_iters_joint=16, lr_g=3e-3, **COMMON)
    elif kind == "lvrm":  # variable ranks 0..3: per-example row counts, DDP by columns
        pefs, _ = planted_lvrm_pefs(n=24, m=37, max_rank=3, r=3, K=40, p_rank0=0.2, seed=5)
        assert (pefs.ranks == 0).any() and len(set(pefs.ranks.tolist())) == 4
        s = DecompSettings(kind="lrm", n_iters_g_only=4, n_iters_joint=16, lr_g=3e-3, **COMMON)
    else:
        pefs, _, _ = planted_diag_pefs(n=24, m=37, r=3, K=20, seed=5)
        s = DecompSettings(kind="diag", n_iters_joint=20, **COMMON)
    one = _run(pefs, s, tmp_path / "one", convergence_every=10)
    two = _run(pefs, s, tmp_path / "two", DDP, convergence_every=10, checkpoint_every=4)
    _assert_same(two, one, kind)
    np.testing.assert_allclose(two.convergence["cosine"], one.convergence["cosine"], rtol=1e-6)

    longer = DecompSettings(**{**s.__dict__, "n_iters_joint": s.n_iters_joint + 8})
    ref = _run(pefs, longer, tmp_path / "ref")
    resumed = _run(
        pefs, longer, tmp_path / "b", resume=tmp_path / "two" / "checkpoints" / "last.ckpt"
    )
    _assert_same(resumed, ref, kind)


@pytest.mark.parametrize(
    "dtype,tol,must_agree",
    [("float64", 1e-12, True), ("float32", 1e-7, False)],
    ids=["float64_agrees", "float32_drifts"],
)
def test_default_schedule_two_processes_equal_one(tmp_path, dtype, tol, must_agree):
    """The default schedule (50 G-only + 500 joint steps, conf/decomp/lrm_npeff.yaml) where float32
    drifts between process counts (issue 27): in float64 two processes equal one to 1e-12, so the
    processes hold the same state and the float32 gap is rounding of the all-reduced sums
    (amplified by the iterations), not a bug. The float32 case checks that the drift is really
    there at this size, i.e. that the float64 check is not vacuous."""
    pefs, _ = planted_lrm_pefs(n=48, m=61, C=3, r=4, K=60, seed=11)
    s = DecompSettings(
        kind="lrm",
        n_components=4,
        n_iters_g_only=50,
        n_iters_joint=500,
        lr_g=1e-3,
        log_every=50,
        dtype=dtype,
        block_cols=16,
        num_threads=1,
    )
    one = _run(pefs, s, tmp_path / "one")
    two = _run(pefs, s, tmp_path / "two", DDP)
    w_gap = np.abs(two.W - one.W).max() / np.abs(one.W).max()
    g_gap = np.abs(two.G - one.G).max() / np.abs(one.G).max()
    if must_agree:
        assert w_gap <= tol and g_gap <= tol, (w_gap, g_gap)
    else:
        assert w_gap > tol, f"float32 agreed to {w_gap:.1e}: the float64 check proves nothing here"
