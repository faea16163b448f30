"""The pilot report for people: one self-contained HTML file (`ehealthlab evaluate --format
html`), see docs/report.md."""

from ehealthlab.evaluation.report.builder import build_report

__all__ = ["build_report"]
