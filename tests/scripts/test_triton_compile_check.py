"""scripts/triton_compile_check.py's command line: a number of compiling processes below 1 is refused in one line
before anything is compiled. (What it compiles: tests/kernels/test_triton_compiles.py.)"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "triton_compile_check.py"


@pytest.mark.parametrize("jobs", ["-3", "0", "two"])
def test_jobs_below_one_is_one_line_and_exit_2(jobs):
    """--jobs -3 was a ValueError traceback from the process pool and --jobs 0 silently meant one per CPU."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--core", "--jobs", jobs], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "error: argument --jobs: expected a whole number >= 1" in lines[-1] and repr(jobs) in lines[-1]
    assert "compiles (" not in proc.stdout  # nothing was compiled
