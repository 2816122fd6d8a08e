"""Every stage's entry point prints a refusal of npeff's (``NpeffUserError``) as one line on stderr
and exits with status 2: no traceback, no Hydra hint. A real bug keeps its traceback, and
``HYDRA_FULL_ERROR=1`` brings the traceback back for a refusal too.

Each case runs the installed console script in a fresh process, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
NOPE = "/nonexistent-npeff-input"

# (console script, arguments, a phrase the one line must hold)
CASES = [
    ("npeff", ["task.name=nosuch", "logger=none"], "unknown task 'nosuch'"),
    ("npeff-train", ["task.name=nosuch"], "unknown task 'nosuch'"),
    ("npeff-pefs", [f"inputs.checkpoint={NOPE}/model.ckpt"], "checkpoint not found"),
    ("npeff-decompose", [f"inputs.pefs={NOPE}/pefs.h5"], "no PEF file at"),
    (
        "npeff-fit",
        [f"inputs.pefs={NOPE}/p.h5", f"inputs.decomposition={NOPE}/d.h5"],
        "no PEF file at",
    ),
    (
        "npeff-perturb",
        [
            f"inputs.checkpoint={NOPE}/m.ckpt",
            f"inputs.coeffs={NOPE}/c.h5",
            f"inputs.pefs={NOPE}/p.h5",
        ],
        "not found",
    ),
    ("npeff-report", [f"inputs.decomposition={NOPE}/d.h5"], "decomposition file not found"),
    ("npeff-compare", [f"runs=[{NOPE}/run]"], "neither a file nor a directory"),
    ("npeff-filter", [f"inputs.pefs={NOPE}/p.h5"], "no PEF file at"),
    ("npeff-baseline", [f"inputs.checkpoint={NOPE}/m.ckpt"], "checkpoint not found"),
    ("npeff-coar", [f"inputs.checkpoint={NOPE}/m.ckpt"], "checkpoint not found"),
    ("npeff-coar-edit", [f"inputs.checkpoint={NOPE}/m.ckpt"], "checkpoint not found"),
    ("npeff-groups", [f"inputs.zoo={NOPE}/zoo.pt"], "no group zoo or checkpoint"),
    (
        "npeff-shortcut",
        [
            f"inputs.{k}={NOPE}/{k}"
            for k in ("checkpoint", "decomposition", "coeffs", "pefs", "select_coeffs")
        ],
        "checkpoint not found",
    ),
    ("npeff-tracr-compile", ["program=nosuch"], "unknown tracr program 'nosuch'"),
    (
        "npeff-compare-coar",
        [f"inputs.checkpoint={NOPE}/m.ckpt", f"inputs.coeffs={NOPE}/c.h5", f"inputs.pefs={NOPE}/p"],
        "needs inputs.attributions",
    ),
]


def _env(**extra: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", **extra}
    env.pop("HYDRA_FULL_ERROR", None)
    env.update(extra)
    return env


def _run(argv: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*argv, f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True,
        text=True,
        env=_env(**env),
        cwd=tmp_path,
        timeout=300,
    )


def _assert_one_line(p: subprocess.CompletedProcess, script: str, phrase: str) -> None:
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    assert "Traceback" not in p.stderr + p.stdout, p.stderr[-2000:]
    assert "HYDRA_FULL_ERROR" not in p.stderr, p.stderr[-2000:]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{script}: error: ") and phrase in lines[0], lines[0]


FAST = {"npeff", "npeff-decompose"}


@pytest.mark.parametrize(
    "script,args,phrase",
    [pytest.param(*c, id=c[0], marks=() if c[0] in FAST else pytest.mark.slow) for c in CASES],
)
def test_a_refusal_is_one_line_and_exit_2(tmp_path, script, args, phrase):
    _assert_one_line(_run([str(BIN / script), *args], tmp_path), script, phrase)


def test_every_stage_has_a_case():
    import tomllib

    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert set(pyproject["project"]["scripts"]) == {c[0] for c in CASES}


@pytest.mark.slow
def test_causal_lm_that_cannot_classify_the_task_is_one_line(tmp_path):
    """The refusal of issue 27: a causal LM folder for a 3-class task (``build_hf_causal_lm``)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path / "lm"
    cfg = GPT2Config(
        vocab_size=50, n_positions=32, n_embd=8, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0
    )
    GPT2LMHeadModel(cfg).save_pretrained(folder)
    p = _run([str(BIN / "npeff-train"), "model=hf_causal_lm", f"model.path={folder}"], tmp_path)
    _assert_one_line(p, "npeff-train", "classes but the causal LM predicts 50 tokens")


def test_hydra_full_error_keeps_the_traceback(tmp_path):
    p = _run(
        [str(BIN / "npeff-decompose"), f"inputs.pefs={NOPE}/pefs.h5"],
        tmp_path,
        HYDRA_FULL_ERROR="1",
    )
    assert p.returncode != 0 and "Traceback" in p.stderr and "no PEF file at" in p.stderr


def test_a_bug_keeps_its_traceback(tmp_path):
    """An exception that is not a refusal (here a ZeroDivisionError in the stage) is a bug: the
    traceback stays."""
    script = textwrap.dedent(
        """
        from npeff.run.common import stage_main

        def run(cfg, out):
            return 1 / 0

        stage_main("decompose", run)()
        """
    )
    p = _run([sys.executable, "-c", script, "inputs.pefs=x"], tmp_path)
    assert p.returncode != 0 and p.returncode != 2
    assert "ZeroDivisionError" in p.stderr and "Traceback" in p.stderr
