"""npeff-compare: positional runs, sweep directories, matching numbers, JSON and heatmaps."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from npeff.artifacts.decomposition import Decomposition, save_decomposition
from npeff.run.compare import resolve_runs, translate_argv
from tests.helpers.compose import compose_config

os.environ.setdefault("WANDB_MODE", "disabled")


def _save(path: Path, W: np.ndarray, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    m = 12
    dec = Decomposition(
        kind="lrm",
        W=W.astype(np.float32),
        new_to_old_col_indices=np.arange(m, dtype=np.int64),
        n_parameters=m,
        n_classes=3,
        G=rng.normal(size=(W.shape[1], m)).astype(np.float32),
        losses={"G_only": np.ones(2, np.float32), "joint": np.ones(3, np.float32)},
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    save_decomposition(dec, path)
    return path


def _planted(n=300, r_large=8, seed=0):
    """A larger run with near-disjoint components and a smaller run merging planted pairs."""
    rng = np.random.default_rng(seed)
    owner = rng.integers(0, r_large, size=n)
    W_large = 0.02 * rng.random((n, r_large))
    W_large[np.arange(n), owner] += rng.uniform(0.5, 1.5, size=n)
    pairs = rng.permutation(r_large).reshape(-1, 2)
    W_small = np.stack([W_large[:, a] + W_large[:, b] for a, b in pairs], axis=1)
    return W_large, W_small, pairs


def test_translate_argv_positional_paths(tmp_path):
    a, b = tmp_path / "a", tmp_path / "job=3"
    a.mkdir(), b.mkdir()
    argv = ["-m", str(a), "--config-name", "compare", "prefer=coeffs", str(b), "hydra.run.dir=x"]
    out = translate_argv(argv)
    assert out[:4] == ["-m", "--config-name", "compare", "prefer=coeffs"]
    assert out[4] == "hydra.run.dir=x"
    assert out[5] == f"runs=['{a}','{b}']"
    assert translate_argv(["runs=[x,y]"]) == ["runs=[x,y]"]
    with pytest.raises(SystemExit):
        translate_argv([str(a), "runs=[x]"])


def test_resolve_runs_files_dirs_and_sweeps(tmp_path):
    W = np.random.default_rng(0).random((20, 3))
    f1 = _save(tmp_path / "r1" / "decomposition.h5", W)
    _save(tmp_path / "r1" / "coeffs.h5", W)
    for j in (10, 2):
        _save(tmp_path / "sweep" / str(j) / "decomposition.h5", W)
    (tmp_path / "sweep" / "2" / ".hydra").mkdir()
    (tmp_path / "sweep" / "2" / ".hydra" / "overrides.yaml").write_text("- decomp.n_components=3\n")
    runs = resolve_runs([str(tmp_path / "r1"), str(tmp_path / "sweep"), str(f1)])
    assert [p.name for _, p in runs] == ["decomposition.h5"] * 4
    assert [p.parent.name for _, p in runs] == ["r1", "2", "10", "r1"]  # natural order of jobs
    assert runs[1][0] == "decomp.n_components=3"
    assert resolve_runs([str(tmp_path / "r1")], prefer="coeffs")[0][1].name == "coeffs.h5"
    with pytest.raises(FileNotFoundError, match="no decomposition.h5 or coeffs.h5"):
        resolve_runs([str(tmp_path / "sweep" / "2" / ".hydra")])


def test_stage_identical_permuted_and_split(tmp_path):
    rng = np.random.default_rng(1)
    W_large, W_small, pairs = _planted()
    perm = rng.permutation(W_large.shape[1])
    runs = [
        _save(tmp_path / "large" / "decomposition.h5", W_large),
        _save(tmp_path / "permuted" / "decomposition.h5", W_large[:, perm] * 2.5),
        _save(tmp_path / "small" / "decomposition.h5", W_small),
    ]
    from npeff.run.compare import run

    cfg = compose_config("compare", [f"runs=[{','.join(str(p.parent) for p in runs)}]"])
    metrics = run(cfg, tmp_path / "out")
    res = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert metrics["n_runs"] == 3 and len(res["pairs"]) == 3
    p01, p02, p12 = res["pairs"]
    assert p01["avg_max_cos_a_to_b"] == pytest.approx(1.0) and p01[
        "avg_max_cos_b_to_a"
    ] == pytest.approx(1.0)
    assert p01["best_a_for_b"] == perm.tolist()
    assert "splits" not in p01
    assert p01["null_avg_max_cos_a_to_b"] < 0.6  # the real match (1.0) is far above the null
    for pair, cols in ((p02, np.arange(8)), (p12, np.argsort(perm))):
        assert pair["smaller_run"] == "b" and pair["n_smaller_with_split"] == 4
        got = {int(i): sorted(v) for i, v in pair["splits"].items()}
        assert got == {i: sorted(int(cols[x]) for x in p) for i, p in enumerate(pairs)}
    for name in ("heatmap_0_1.png", "heatmap_0_2.png", "heatmap_1_2.png", "avg_max_cosine.png"):
        assert Image.open(io.BytesIO((tmp_path / "out" / name).read_bytes())).size[0] > 100
    m = np.asarray(res["avg_max_cosine_matrix"])
    assert m[0, 1] == pytest.approx(1.0) and m[0, 2] == pytest.approx(p02["avg_max_cos_a_to_b"])
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["n_runs"] == 3


def test_stage_rejects_runs_over_different_examples(tmp_path):
    from npeff.run.compare import run

    a = _save(tmp_path / "a" / "decomposition.h5", np.ones((10, 2)))
    b = _save(tmp_path / "b" / "decomposition.h5", np.ones((12, 2)))
    with pytest.raises(ValueError, match="different numbers of examples"):
        run(compose_config("compare", [f"runs=[{a},{b}]"]), tmp_path / "out")
    with pytest.raises(ValueError, match="at least two runs"):
        run(compose_config("compare", [f"runs=[{a}]"]), tmp_path / "out")


@pytest.mark.slow
def test_console_script_with_positional_sweep_dir(tmp_path):
    W_large, W_small, _ = _planted(n=120)
    _save(tmp_path / "sweep" / "0" / "decomposition.h5", W_small)
    _save(tmp_path / "sweep" / "1" / "decomposition.h5", W_large)
    out = tmp_path / "out"
    code = "import sys; from npeff.run.compare import main; sys.argv[0] = 'npeff-compare'; main()"
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "sweep"), f"hydra.run.dir={out}"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "WANDB_MODE": "disabled"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "compare.json").read_text())
    assert [r["n_components"] for r in res["runs"]] == [4, 8]
    assert res["pairs"][0]["n_smaller_with_split"] == 4
    assert (out / "heatmap_0_1.png").exists()
