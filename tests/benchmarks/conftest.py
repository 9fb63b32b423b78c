import pytest

from benchmarks import report


@pytest.fixture
def fresh_report(monkeypatch):
    """benchmarks.report's rows and summary lines empty for this test, as in a fresh process."""
    monkeypatch.setattr(report, "RESULTS", {})
    monkeypatch.setattr(report, "SUMMARY", [])
