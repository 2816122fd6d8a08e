"""The HTML report opens in headless Chromium (offline) with no console errors and a real screenshot.

Negative controls prove the check catches console.error, uncaught exceptions, missing resources
and external URLs. Chromium comes from Debian (`apt-get install -y chromium`, done in .ci/run).
"""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from npeff.report import build_report
from npeff.report.browser_check import DEFAULT_CHROMIUM, check_html
from npeff.report.synthetic import synthetic_inputs

pytestmark = pytest.mark.skipif(
    not Path(DEFAULT_CHROMIUM).exists(),
    reason=f"{DEFAULT_CHROMIUM} missing: install Debian's chromium (`apt-get install -y chromium`)",
)


def _page(tmp_path, body, name="page.html"):
    path = tmp_path / name
    path.write_text(
        f"<!DOCTYPE html><html><head><title>t</title></head><body><h1>page</h1>{body}</body></html>"
    )
    return path


def _screenshot_ok(png: bytes, size=(1200, 2000)) -> bool:
    img = Image.open(io.BytesIO(png)).convert("RGB")
    arr = np.asarray(img)
    return img.size == size and arr.std() > 1.0  # not blank


@pytest.mark.parametrize("kind", ["text", "image"])
def test_report_renders_without_errors(tmp_path, kind):
    inp = synthetic_inputs(kind=kind)
    names = inp.pop("concept_names")
    path = build_report(**inp, output_dir=tmp_path / "out", concept_names=names)
    shot = tmp_path / "shot.png"
    res = check_html(path, shot)
    assert res.errors == []
    assert res.title == "NPEFF report"
    assert shot.stat().st_size > 10_000 and _screenshot_ok(shot.read_bytes())


def test_clean_page_passes(tmp_path):
    res = check_html(_page(tmp_path, "<p>fine</p>"))
    assert res.errors == [] and _screenshot_ok(res.screenshot)


def test_check_catches_console_error(tmp_path):
    res = check_html(_page(tmp_path, '<script>console.error("deliberate failure")</script>'))
    assert res.console_errors == ["deliberate failure"]


def test_check_catches_uncaught_exception(tmp_path):
    res = check_html(_page(tmp_path, '<script>throw new Error("kaboom")</script>'))
    assert len(res.exceptions) == 1 and "kaboom" in res.exceptions[0]


def test_check_catches_missing_resource_and_external_url(tmp_path):
    res = check_html(
        _page(tmp_path, '<img src="missing.png"><img src="https://example.invalid/x.png">')
    )
    assert any("missing.png" in e for e in res.log_errors)
    assert res.external_requests == ["https://example.invalid/x.png"]
