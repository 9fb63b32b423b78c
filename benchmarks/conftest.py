"""Benchmarks run only with `pytest --benchmark-only` (plain `pytest` lists them as skipped). Each module adds
rows to RESULTS; at the end of the session they are written, with the machine, versions and git revision, to
benchmarks/results/<name>.csv (written to a temporary file first, then renamed) and summarised on screen."""
import pathlib

import pytest

from benchmarks import report
from benchmarks.stage_shapes import SHAPE_SETS

HERE = pathlib.Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    if config.getoption("benchmark_only", False):
        return
    skip = pytest.mark.skip(reason="benchmark: run with `pytest benchmarks --benchmark-only`")
    for item in items:
        # This directory only: tests/benchmarks/ holds ordinary tests of the benchmark helpers.
        if HERE in pathlib.Path(str(item.fspath)).resolve().parents:
            item.add_marker(skip)


def pytest_sessionfinish(session, exitstatus):
    if session.config.getoption("benchmark_only", False):
        report.flush()


def pytest_terminal_summary(terminalreporter):
    for line in report.summary_lines():
        terminalreporter.write_line(line)


def pytest_addoption(parser):
    # One choice for both suites (test_bench_ops.py, test_bench_module.py), read by their pytest_generate_tests:
    # the shape sets are parametrised at collection, before any fixture exists.
    parser.addoption(
        "--bench-shapes", default="quick", choices=SHAPE_SETS,
        help="shapes of the op and module benchmarks (benchmarks/stage_shapes.py): quick (small; the default), "
             "stages (ResNeSt-101-D8's split-attention shapes at the seed's crops) or all")
