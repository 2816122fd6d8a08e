"""npeff.report: the HTML report and its figures, built from artifacts only (never recomputes)."""

from npeff.report.build import build_report, write_report
from npeff.report.content import ReportContent, prepare_report

__all__ = ["ReportContent", "build_report", "prepare_report", "write_report"]
