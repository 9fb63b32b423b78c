"""scripts/cuda_sass_check.py, the reader of nvcc's ptxas -v log and cuobjdump -sass that CI's CUDA compile check
runs, on hand-written machine code whose verdicts are known: a kernel passes or fails on its loads in flight, its
spills and, where it writes an output per element, on storing as wide as its vector loads.
"""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "cuda_sass_check.py"

needs_cxxfilt = pytest.mark.skipif(shutil.which("c++filt") is None, reason="needs c++filt (binutils) to demangle")


def mangled(family, dtype):
    """A kernel name as nvcc mangles it: void resnest_fast::(anonymous namespace)::family<dtype>(dtype const*)."""
    t = {"float": "f", "double": "d", "Half": "N3c104HalfE"}[dtype]
    return f"_ZN12resnest_fast12_GLOBAL__N_1{len(family)}{family}I{t}EEvPKT_"


def ptxas_log(names, spill=0):
    lines = []
    for name in names:
        lines += [f"ptxas info    : Compiling entry function '{name}' for 'sm_90'",
                  f"ptxas info    : Function properties for {name}",
                  f"    0 bytes stack frame, {spill} bytes spill stores, {spill} bytes spill loads",
                  "ptxas info    : Used 40 registers, used 1 barriers"]
    return "\n".join(lines) + "\n"


def sass(functions):
    """cuobjdump -sass text: {name: [instruction, ...]}, one 16-byte slot per instruction."""
    out = ["\tcode for sm_90"]
    for name, code in functions.items():
        out.append(f"\t\tFunction : {name}")
        out += [f"        /*{16 * i:04x}*/                   {ins} ;  /* 0x000 */" for i, ins in enumerate(code)]
    return "\n".join(out) + "\n"


# A main loop step: per-channel parameters (scalar 32-bit loads), then four loads of the row issued before any use
PARAMS = ["LDG.E.CONSTANT R2, desc[UR6][R6.64]", "LDG.E.CONSTANT R3, desc[UR6][R8.64]"]


def row_loads(opcode):
    return [f"{opcode} R{12 + 4 * k}, desc[UR6][R26.64+0x{k * 0x200:x}]" for k in range(4)]


USE = ["FFMA R40, R12, R2, R3", "FFMA R41, R16, R2, R3"]


def run_check(tmp_path, functions, spill=0):
    (tmp_path / "k.ptxas.log").write_text(ptxas_log(functions, spill))
    (tmp_path / "k.sass").write_text(sass(functions))
    proc = subprocess.run([sys.executable, str(SCRIPT), "--ptxas", str(tmp_path / "k.ptxas.log"),
                           "--sass", str(tmp_path / "k.sass")], capture_output=True, text=True, timeout=60)
    return proc.returncode, [line for line in proc.stdout.splitlines() if line.startswith("FAIL")]


@needs_cxxfilt
def test_vector_loads_with_scalar_stores_fail_and_matching_vector_stores_pass(tmp_path):
    scattered = mangled("combine_nchw_kernel", "float")
    packed = mangled("pool_backward_nchw_kernel", "float")
    scalar_rows = mangled("backward_input_nchw_kernel", "Half")
    functions = {
        # 128-bit loads of the rows, then the four values stored one by one: four times the sectors per warp store
        scattered: PARAMS + row_loads("LDG.E.128.CONSTANT") + USE
        + [f"STG.E desc[UR6][R30.64+0x{4 * k:x}], R4{k}" for k in range(4)] + ["EXIT"],
        # the same loads, stored with one 128-bit store per vector
        packed: PARAMS + row_loads("LDG.E.128.CONSTANT") + USE + ["STG.E.128 desc[UR6][R30.64], R40", "EXIT"],
        # scalar 16-bit rows stored as 16-bit values: the 32-bit parameter loads are not vectors of the row
        scalar_rows: PARAMS + row_loads("LDG.E.U16.CONSTANT") + USE + ["STG.E.U16 desc[UR6][R30.64], R40", "EXIT"],
    }
    code, failures = run_check(tmp_path, functions)
    assert code == 1
    assert len(failures) == 1 and "combine_nchw_kernel<float>" in failures[0], failures
    assert "stores 4 bytes per thread, loads 16" in failures[0]


@needs_cxxfilt
def test_a_loop_that_uses_each_load_before_the_next_fails(tmp_path):
    serial = mangled("pool_nchw_kernel", "float")
    batched = mangled("pool_nchw_kernel", "Half")
    one_at_a_time = []
    for k in range(4):
        one_at_a_time += [f"LDG.E.CONSTANT R{12 + k}, desc[UR6][R26.64+0x{k * 0x200:x}]", f"FADD R40, R40, R{12 + k}"]
    functions = {serial: one_at_a_time + ["EXIT"],
                 batched: PARAMS + row_loads("LDG.E.128.CONSTANT") + USE + ["EXIT"]}
    code, failures = run_check(tmp_path, functions)
    assert code == 1
    assert len(failures) == 1 and "pool_nchw_kernel<float>" in failures[0], failures
    assert "at most 1 loads issued before a use" in failures[0]


@needs_cxxfilt
@pytest.mark.parametrize("dtype, fails", [("float", True), ("double", False)])
def test_spills_fail_except_in_double(tmp_path, dtype, fails):
    name = mangled("pool_nchw_kernel", dtype)
    code, failures = run_check(tmp_path, {name: PARAMS + row_loads("LDG.E.128.CONSTANT") + USE + ["EXIT"]}, spill=8)
    assert (code == 1) == fails and (len(failures) == 1) == fails, failures


@pytest.mark.parametrize("which", ["--ptxas", "--sass"])
@pytest.mark.parametrize("what", ["missing", "folder"])
def test_a_log_it_cannot_read_is_one_line_and_exit_2(tmp_path, which, what):
    """A missing log or a folder was a FileNotFoundError / IsADirectoryError traceback."""
    (tmp_path / "k.ptxas.log").write_text(ptxas_log([mangled("pool_nchw_kernel", "float")]))
    (tmp_path / "k.sass").write_text(sass({}))
    bad = tmp_path / "missing.log" if what == "missing" else tmp_path
    paths = {"--ptxas": tmp_path / "k.ptxas.log", "--sass": tmp_path / "k.sass", which: bad}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--ptxas", str(paths["--ptxas"]), "--sass",
                           str(paths["--sass"])], capture_output=True, text=True, timeout=60)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[-1].startswith("python scripts/cuda_sass_check.py: error: ") and which in lines[-1], proc.stderr
    assert str(bad) in lines[-1] and proc.stdout == ""
