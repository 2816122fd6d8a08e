"""Behaviour pins: the content digests of every file the pipeline writes, at a fixed seed.

The digests (``tests/helpers/digests.py``: h5 datasets and attributes, JSON values, checkpoint
tensors, figures, HTML; paths and timings left out) were recorded on this project's machine kind
(2-core x86 CPU, torch 2.13.0+cpu). A refactor that changes no behaviour keeps every one of them;
a change that does must say so and re-record them with ``NPEFF_UPDATE_DIGESTS=1 pytest <this file>``.
Floats differ between machine kinds, so on another kind the test skips unless
``NPEFF_CHECK_DIGESTS=1`` is set.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import pytest

from tests.helpers.compose import run_pipeline
from tests.helpers.digests import run_digests
from tests.helpers.problems import TINY_PIPELINE

PINS = Path(__file__).parent / "data" / "pipeline_digests.json"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown-cpu"


def _machine() -> str:
    import torch

    return f"{platform.machine()}-{_cpu_model()}-{os.cpu_count()}cpu-torch{torch.__version__}"


def _run(overrides: list[str], tmp_path: Path) -> dict[str, str]:
    out = tmp_path / "run"
    run_pipeline(overrides + [f"paths.output_dir={tmp_path / 'o'}"], out)
    return run_digests(out, extra_roots=[str(tmp_path)])


def _check(name: str, digests: dict[str, str]) -> None:
    pins = json.loads(PINS.read_text()) if PINS.is_file() else {}
    if os.environ.get("NPEFF_UPDATE_DIGESTS") == "1":
        pins[name] = {"machine": _machine(), "files": digests}
        PINS.write_text(json.dumps(pins, indent=1, sort_keys=True) + "\n")
        return
    if name not in pins:
        pytest.fail(f"no pinned digests for {name!r}: record them with NPEFF_UPDATE_DIGESTS=1")
    pinned = pins[name]
    if pinned["machine"] != _machine() and os.environ.get("NPEFF_CHECK_DIGESTS") != "1":
        pytest.skip(f"digests pinned on {pinned['machine']}, this is {_machine()}")
    want = pinned["files"]
    missing = sorted(set(want) - set(digests))
    extra = sorted(set(digests) - set(want))
    changed = sorted(k for k in set(want) & set(digests) if want[k] != digests[k])
    assert not (missing or extra or changed), (
        f"behaviour changed: missing {missing}, new {extra}, different {changed}"
    )


def test_tiny_pipeline_files_are_pinned(tmp_path):
    _check("tiny", _run(TINY_PIPELINE, tmp_path))


@pytest.mark.slow
def test_default_pipeline_files_are_pinned(tmp_path):
    """The default ``npeff`` (toy_nli, tiny BERT, 32 LRM components), no tracking."""
    _check("default", _run(["logger=none", "progress=false"], tmp_path))
