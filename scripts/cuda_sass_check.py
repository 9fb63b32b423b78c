"""Reads what nvcc made of the CUDA kernels (called by scripts/cuda_compile_check.sh): ptxas -v's registers and
spills, and the SASS of cuobjdump -sass for load batching. Exit status 1 when a float/half/bfloat16 kernel spills,
or when a main-pass kernel has no basic block that issues >= 4 independent global loads.

Load batching heuristic: SASS is cut into basic blocks at labels and after branches (BRA, EXIT, RET, ...). In each
block, the LDG instructions are counted until the first instruction that reads a register one of them wrote (a
use of a loaded value); a kernel's score is its best block. The compiler's unrolled main loop, whose loads are
all issued before the first add, scores its number of loads per step; a loop that consumes each load before the
next scores 1. 128-bit loads (LDG.E.128) carry 4 fp32 or 8 16-bit values each; they are reported ("vec") but
counted as one load. A kernel instance with at most one LDG in all loads nothing per element (pool_backward
without scale and relu writes the constant grad_gap/(H*W)) and is not scored.

Store width: the kernels that write an output per element (pool_backward, combine, combine_backward,
backward_input) must store as wide as their vector loads (widest STG >= widest LDG, in bytes, where the widest
LDG is wider than any scalar the kernel reads: 4 bytes, 8 for double). A thread that loads V
neighbouring values with one vector load and stores them one by one makes each warp store touch V times the
sectors, the same bytes reaching L2 in V times the transactions.
"""
import argparse
import collections
import re
import subprocess
import sys

MAIN_KERNELS = [f"{op}_{layout}_kernel" for op in ("pool", "pool_backward", "combine", "combine_backward",
                                                   "bn_stats", "backward_reduce", "backward_input")
                for layout in ("nchw", "cl")]
STORING_KERNELS = [f"{op}_{layout}_kernel" for op in ("pool_backward", "combine", "combine_backward",
                                                      "backward_input") for layout in ("nchw", "cl")]
# The widest scalar a kernel loads: the element, or the float (double for double) per-channel parameters.
SCALAR_BYTES = {"double": 8}
MIN_LOADS = 4
BRANCHES = ("BRA", "EXIT", "RET", "BRX", "JMP", "JMX", "CALL")


def demangle(names):
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True).stdout
    return dict(zip(names, out.splitlines()))


def describe(demangled):
    """(family, template arguments) of 'void ns::(anonymous namespace)::family<args>(params)'."""
    m = re.match(r"void (?:[\w:]+::)?(?:\(anonymous namespace\)::)?(\w+)<(.*?)>\(", demangled)
    if not m:
        return demangled, []
    args = [a.strip().replace("c10::", "") for a in m.group(2).split(",")]
    return m.group(1), args


def parse_ptxas(text):
    """{(mangled, arch): dict(registers, spill_stores, spill_loads, stack)}"""
    out, entry, props = {}, None, None
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '(\S+)' for '(sm_\d+)'", line)
        if m:
            entry = (m.group(1), m.group(2))
            out.setdefault(entry, {})
            continue
        m = re.search(r"Function properties for (\S+)", line)
        if m:
            props = m.group(1)
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and entry and props == entry[0]:
            out[entry].update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
            continue
        m = re.search(r"Used (\d+) registers", line)
        if m and entry:
            out[entry]["registers"] = int(m.group(1))
    return out


def regs_of(operand, width=1):
    m = re.match(r"R(\d+)(\.64)?", operand.strip())
    if not m or operand.strip().startswith("RZ"):
        return set()
    n = int(m.group(1))
    return set(range(n, n + (2 if m.group(2) else width)))


def unpredicated(instruction):
    """The instruction without its guard predicate (`@P0 `, `@!UP1 `)."""
    return re.sub(r"^@!?U?P\w+\s+", "", instruction)


def access_bytes(opcode):
    """Bytes one thread moves with an LDG/STG opcode such as LDG.E.128, STG.E.U16 or STG.E (32-bit)."""
    m = re.search(r"\.[US]?(128|64|16|8)\b", opcode)
    return int(m.group(1)) // 8 if m else 4


def load_width(opcode):
    """Registers a load writes: one per 32 bits, at least one."""
    return max(1, access_bytes(opcode) // 4)


def widest(instructions, base):
    """Widest access, in bytes, of the instructions whose opcode starts with `base` (0 when there is none)."""
    ops = [unpredicated(i).partition(" ")[0] for i in instructions]
    return max((access_bytes(op) for op in ops if op.split(".")[0] == base), default=0)


def block_scores(instructions):
    """Best (loads before first use, 128-bit loads present) over the basic blocks of one function."""
    best, vec, loaded, count, open_block = 0, False, set(), 0, True
    for ins in instructions + [None]:
        if ins is None or ins == ":label":
            best, loaded, count, open_block = max(best, count), set(), 0, True
            continue
        text = unpredicated(ins)
        opcode, _, rest = text.partition(" ")
        operands = [o for o in rest.split(",")] if rest else []
        base = opcode.split(".")[0]
        if base == "LDG":
            vec |= ".128" in opcode
            if open_block:
                count += 1
                loaded |= regs_of(operands[0], load_width(opcode))
        elif open_block:
            sources = operands if base.startswith(("ST", "RED", "ATOM")) else operands[1:]
            if any(regs_of(reg) & loaded for o in sources for reg in re.findall(r"R\d+(?:\.64)?", o)):
                open_block = False
        if base in BRANCHES:
            best, loaded, count, open_block = max(best, count), set(), 0, True
    return best, vec


def parse_sass(text):
    """{(mangled, arch): [instruction text or ':label']}"""
    out, current, arch = {}, None, None
    for line in text.splitlines():
        m = re.match(r"\s*code for (sm_\d+)", line)
        if m:
            arch = m.group(1)
            continue
        m = re.match(r"\s*Function : (\S+)", line)
        if m:
            current = out.setdefault((m.group(1), arch), [])
            continue
        if current is None:
            continue
        if re.match(r"\s*\.L_x_\d+:", line):
            current.append(":label")
            continue
        m = re.search(r"/\*[0-9a-f]{4,}\*/\s+(.*?)\s*;", line)
        if m:
            current.append(m.group(1))
    return out


def read_text(ap, flag, path):
    """The text of the file `path` given to `flag`; ap.error (one line, exit 2) when it cannot be read."""
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError as exc:
        ap.error(f"{flag} {path!r} cannot be read: {exc.strerror or exc} (expected the file nvcc / cuobjdump wrote)")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python scripts/cuda_sass_check.py")
    ap.add_argument("--ptxas", required=True, help="the log of nvcc -Xptxas -v")
    ap.add_argument("--sass", nargs="+", required=True, help="cuobjdump -sass output, one file per arch")
    opts = ap.parse_args(argv)
    ptxas = parse_ptxas(read_text(ap, "--ptxas", opts.ptxas))
    sass = {}
    for path in opts.sass:
        sass.update(parse_sass(read_text(ap, "--sass", path)))
    names = demangle(sorted({k[0] for k in ptxas} | {k[0] for k in sass}))
    failures = []
    table = collections.defaultdict(lambda: dict(regs=0, spill=0, loads=None, vec=False, store=None, n=0))
    for (mangled, arch), info in sorted(ptxas.items()):
        family, args = describe(names[mangled])
        dtype = args[0] if args else "-"
        spill = info.get("spill_stores", 0) + info.get("spill_loads", 0)
        row = table[(family, dtype)]
        row["regs"] = max(row["regs"], info.get("registers", 0))
        row["spill"] = max(row["spill"], spill)
        row["n"] += 1
        if spill and dtype != "double":
            failures.append(f"{names[mangled]} on {arch}: spills {spill} bytes")
        if family in MAIN_KERNELS:
            code = sass.get((mangled, arch), [])
            if sum(unpredicated(i).startswith("LDG") for i in code) <= 1:
                continue  # nothing loaded per element
            loads, vec = block_scores(code)
            row["loads"] = loads if row["loads"] is None else min(row["loads"], loads)
            row["vec"] |= vec
            if loads < MIN_LOADS and dtype != "double":
                failures.append(f"{names[mangled]} on {arch}: at most {loads} loads issued before a use")
            if family in STORING_KERNELS:
                ld, st = widest(code, "LDG"), widest(code, "STG")
                row["store"] = st if row["store"] is None else min(row["store"], st)
                if ld > SCALAR_BYTES.get(dtype, 4) and st < ld:  # vector loads of the rows, narrower stores
                    failures.append(f"{names[mangled]} on {arch}: stores {st} bytes per thread, loads {ld}")
    print(f"   {'kernel':32s} {'dtype':9s} {'inst':>4s} {'max regs':>8s} {'spill B':>7s} {'min loads/batch':>15s} "
          f"{'store B':>7s} vec")
    for (family, dtype), row in sorted(table.items()):
        loads = "-" if row["loads"] is None else str(row["loads"])
        store = "-" if row["store"] is None else str(row["store"])
        print(f"   {family:32s} {dtype:9s} {row['n']:4d} {row['regs']:8d} {row['spill']:7d} {loads:>15s} "
              f"{store:>7s} {'yes' if row['vec'] else ''}")
    if not ptxas:
        failures.append("no ptxas -v output found")
    for f in failures:
        print("FAIL:", f)
    print(f"   {len(ptxas)} kernel instances; {len(failures)} failures "
          f"(spills allowed for double; >= {MIN_LOADS} independent loads per batch required in main-pass kernels; "
          f"elementwise outputs stored as wide as the loads)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
