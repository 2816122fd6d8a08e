"""W&B helpers: log histograms and the top-example table to a run; no-op without one."""

import sys

import numpy as np

from npeff.report import prepare_report, wandb_log
from npeff.report.synthetic import synthetic_inputs


class FakeRun:
    def __init__(self):
        self.logged = []

    def log(self, payload):
        self.logged.append(payload)


def _content():
    inp = synthetic_inputs(n=40, r=3)
    inp.pop("concept_names")
    return prepare_report(**inp, n_display=4, top_k=4)


def test_no_active_run_is_a_noop(monkeypatch):
    content = _content()
    monkeypatch.delitem(sys.modules, "wandb", raising=False)
    assert wandb_log.active_run() is None
    assert wandb_log.log_report(content) is False


def test_logs_histograms_summary_and_table():
    import wandb

    content = _content()
    run = FakeRun()
    assert wandb_log.log_report(content, run=run) is True
    (payload,) = run.logged
    assert isinstance(payload["report/log2_kl_ratio"], wandb.Histogram)
    assert isinstance(payload["report/log2_pef_norm_ratio"], wandb.Histogram)
    table = payload["report/top_examples"]
    assert isinstance(table, wandb.Table)
    assert table.columns == wandb_log.TABLE_COLUMNS
    assert len(table.data) == 3 * 4
    rows = wandb_log.top_example_rows(content)
    W = synthetic_inputs(n=40, r=3)["decomposition"].W
    for comp, _rank, idx, coeff, *_ in rows:
        assert coeff == float(W[idx, comp])
    assert payload["report/n_components"] == 3
    hist_counts = np.asarray(payload["report/log2_kl_ratio"].histogram).sum()
    assert hist_counts == 3


def test_real_offline_run_gets_the_table(tmp_path, monkeypatch):
    """An offline W&B run (no network) accepts the payload; the table lands in its files."""
    import json

    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    content = _content()
    run = wandb.init(project="npeff-test", dir=str(tmp_path), mode="offline")
    try:
        assert wandb_log.active_run() is run
        assert wandb_log.log_report(content) is True
    finally:
        run.finish()
    (table_file,) = list(
        tmp_path.glob("wandb/offline-run-*/files/media/table/report/top_examples_*.table.json")
    )
    table = json.loads(table_file.read_text())
    assert table["columns"] == wandb_log.TABLE_COLUMNS
    assert len(table["data"]) == 3 * 4
    assert wandb_log.active_run() is None
