"""benchmarks/peak_rss.py against allocations of known size, each in a fresh process (peak RSS is per process)."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MIB = 2**20
pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="peak RSS is read from Linux's /proc")

# 96 MiB: above glibc's largest dynamic mmap threshold (32 MiB), so the block is mmapped, and returned on free.
SCRIPT = """
import json
from benchmarks.peak_rss import current_rss_bytes, peak_rss_bytes, reset_peak
n = 96 * 2**20
out = {"reset": reset_peak()}
before = current_rss_bytes()
block = b"\\x01" * n  # every byte written, so every page is resident
out["growth"] = peak_rss_bytes() - before
out["rss_holding"] = current_rss_bytes() - before
del block
out["peak_after_free"] = peak_rss_bytes() - before
out["reset_after_free"] = reset_peak()
out["peak_after_reset"] = peak_rss_bytes() - before
print(json.dumps(out))
"""


def _run(script):
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=ROOT), timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_peak_sees_a_known_allocation_and_reset_forgets_a_freed_one():
    out = _run(SCRIPT)
    # The kernel batches its RSS counters (up to 64 pages per thread), so the figures lag by a few hundred kB.
    slack = MIB
    assert out["growth"] >= 96 * MIB - slack
    assert out["growth"] < 96 * MIB + 16 * MIB  # nothing else of that size happened
    assert out["rss_holding"] >= 96 * MIB - slack
    assert out["peak_after_free"] >= 96 * MIB - slack  # a peak survives the free
    if not (out["reset"] and out["reset_after_free"]):
        pytest.skip("this kernel refuses to reset the peak RSS (/proc/self/clear_refs)")
    assert out["peak_after_reset"] < 32 * MIB  # the freed block is no longer part of the peak
