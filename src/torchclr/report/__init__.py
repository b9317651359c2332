"""`torchclr report`: one offline HTML page (and its PNGs) showing what a run learned."""

from torchclr.report.build import build_report

__all__ = ["build_report"]
