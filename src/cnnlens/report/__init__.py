"""Self-contained HTML reports."""

from cnnlens.report.html import demo_report, image_data_uri

__all__ = ["demo_report", "image_data_uri"]
