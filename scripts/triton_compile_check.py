"""Compiles the Triton kernels of splat.py and splat_conv.py for real GPU targets without a GPU: Triton's own compiler
down to PTX and ptxas, for sm_80 (A100) and sm_90 (H100), with the very specialisations the launchers make.

How the specialisations are found: the launchers run on meta tensors inside splat.record_launches(), which lists
every (kernel, args, constexprs, num_warps) they would launch; Triton's JIT binder (the code a real launch runs)
turns each into a signature, constexprs and divisibility attributes, deduplicated by that key. So a new launch, a
changed block size or an int that becomes 1 at some shape shows up here as it would on a GPU.

Checks: a compile error fails; every float64 specialisation must have no f32 anywhere in its Triton IR (a Python
float argument is typed fp32 by the compiler while the interpreter keeps a double: the bug of the old `inv_p`).
Printed per specialisation: registers, spill stores/loads and shared memory, from `ptxas -v` on the PTX. The launch
options (num_warps, and num_stages where a launcher sets it) are compiled as the launch would.

Usage: python scripts/triton_compile_check.py [--quick | --core] [--arch 80 --arch 90] [--jobs N]
    (default)  every specialisation tests/kernels use plus the stage shapes (~4,200 compiles: ~30 min on 2 cores)
    --quick    the CI subset (~2-3 minutes on 2 cores)
    --core     the handful tests/kernels/test_triton_compiles.py compiles
Exit status 1 on any compile error (or f32 in a float64 kernel). TRITON_INTERPRET must not be 1 (the kernels
must be JIT functions, not interpreted ones); nothing here needs a GPU.
"""
import argparse
import concurrent.futures
import itertools
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/, from a checkout

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402

from benchmarks import report  # noqa: E402
from benchmarks.stage_shapes import distinct_blocks, resnest101_d8_blocks  # noqa: E402
from resnest_fast.kernels import splat, splat_conv  # noqa: E402

ARCHS = (80, 90)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}


@dataclass(frozen=True)
class Case:
    """One call of the four ops and the three training-only ones (those two that take bn0 only with affine):
    x (B, radix*C, H, W)."""

    B: int
    C: int
    H: int
    W: int
    radix: int
    groups: int
    dtype: str
    channels_last: bool
    affine: bool
    relu: bool
    params_fp32: bool = False  # scale/shift in float32 for a low-precision x (bn0 folded)


@dataclass(frozen=True)
class ConvCase:
    """One call of splat_conv_pool: x (B, Cin, H, W) -> y (B, radix*C, H, W)."""

    B: int
    Cin: int
    C: int
    H: int
    W: int
    radix: int
    groups: int
    dtype: str
    channels_last: bool
    params_fp32: bool = False
    dilation: int = 1  # 1 is a specialisation of its own (Triton makes an int argument equal to 1 a constant)


SMS = {80: 108, 90: 132}  # A100, H100: the block sizes of small shapes depend on the SM count


def _record(case, num_sms: int):
    """The launches the ops make for `case` (a Case: the four splat ops; a ConvCase: splat_conv_pool) on a GPU with
    num_sms SMs, from the launchers themselves, on meta tensors."""
    if isinstance(case, ConvCase):
        return _record_conv(case, num_sms)
    dt = DTYPES[case.dtype]
    m = dict(device="meta")
    x = torch.empty(case.B, case.radix * case.C, case.H, case.W, dtype=dt, **m)
    if case.channels_last:
        x = x.to(memory_format=torch.channels_last)
    pdt = torch.float32 if case.params_fp32 else dt
    scale = torch.empty(case.radix * case.C, dtype=pdt, **m) if case.affine else None
    shift = torch.empty(case.radix * case.C, dtype=pdt, **m) if case.affine else None
    logits = torch.empty(case.B, case.radix * case.C, dtype=dt, **m)
    go = torch.empty(case.B, case.C, case.H, case.W, dtype=dt, **m)
    default, splat.DEFAULT_NUM_SMS = splat.DEFAULT_NUM_SMS, num_sms  # what meta tensors get, like CPU ones
    try:
        with splat.record_launches() as launches:
            splat.splat_pool(x, scale, shift, case.radix, case.relu)
            gg = torch.empty(case.B, case.C, dtype=dt, **m)
            splat.splat_pool_backward(gg, x, scale, shift, case.radix, case.relu)
            splat.splat_combine(x, logits, scale, shift, case.radix, case.groups, case.relu)
            splat.splat_combine_backward(go, x, logits, scale, shift, case.radix, case.groups, case.relu)
            splat.splat_bn_stats(x)
            if case.affine:  # the module's fused backward: bn0 (as scale, shift) and relu always on
                splat.splat_backward_reduce(go, x, logits, scale, shift, case.radix, case.groups)
                splat.splat_backward_input(go, gg, x, logits, scale, shift, torch.empty_like(scale),
                                           torch.empty_like(shift), case.radix, case.groups)
    finally:
        splat.DEFAULT_NUM_SMS = default
    return launches


def _record_conv(case: ConvCase, num_sms: int):
    dt = DTYPES[case.dtype]
    x = torch.empty(case.B, case.Cin, case.H, case.W, dtype=dt, device="meta")
    if case.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    k = case.radix * case.C
    weight = torch.empty(k, case.Cin // (case.radix * case.groups), 3, 3, dtype=dt, device="meta")
    pdt = torch.float32 if case.params_fp32 else dt
    scale, shift = torch.empty(k, dtype=pdt, device="meta"), torch.empty(k, dtype=pdt, device="meta")
    default, splat.DEFAULT_NUM_SMS = splat.DEFAULT_NUM_SMS, num_sms
    try:
        with splat.record_launches() as launches:
            splat_conv.splat_conv_pool(x, weight, scale, shift, case.radix, case.groups, case.dilation)
    finally:
        splat.DEFAULT_NUM_SMS = default
    return launches


def conv_crop_cases(dtypes, layouts, crops=None) -> List[ConvCase]:
    """splat_conv_pool at ResNeSt-101-D8's distinct conv input shapes at the launch-model crops."""
    out = []
    for (b, h, w), dt, cl in itertools.product(crops or STAGE_CROPS, dtypes, layouts):
        seen = set()
        for blk in resnest101_d8_blocks(b, h, w):
            if blk.x_shape not in seen:
                seen.add(blk.x_shape)
                out.append(ConvCase(b, blk.channels, blk.channels, blk.height, blk.width, blk.radix, blk.groups, dt, cl,
                                    dilation=blk.dilation))
    return out


def conv_test_cases() -> List[ConvCase]:
    """What tests/kernels/test_splat_conv_triton.py runs: (radix, groups, Cin) of its STRUCTURE, C = 6, every dtype
    in both layouts, scale/shift in x's dtype or float32, dilation 1 and 2."""
    out = []
    for (radix, groups, cin), dt, cl, p32, d in itertools.product(
        [(2, 1, 12), (2, 2, 12), (1, 2, 12), (4, 2, 16)], ("fp32", "bf16", "fp16"), (False, True), (False, True),
        (1, 2),
    ):
        if not (p32 and dt == "fp32"):
            out.append(ConvCase(2, cin, 6, 7, 9, radix, groups, dt, cl, p32, d))
    return out


# Cityscapes layer3: the training crop at batch 2 and a whole 1024x2048 image at batch 1 (benchmarks/gpu_check.py).
CITY_LAYER3 = (ConvCase(2, 256, 256, 64, 128, 2, 1, "fp32", True, dilation=2),
               ConvCase(1, 256, 256, 128, 256, 2, 1, "fp32", True, dilation=2))


def _crop_cases(dtypes, layouts) -> List[Case]:
    """ResNeSt-101-D8's distinct stage shapes (benchmarks/stage_shapes.py's derivation) at the launch-model crops."""
    out = []
    for (b, h, w), dt, cl in itertools.product(STAGE_CROPS, dtypes, layouts):
        for _, blk, _ in distinct_blocks(resnest101_d8_blocks(b, h, w)):
            out.append(Case(b, blk.channels, blk.height, blk.width, blk.radix, blk.groups, dt, cl, True, True))
    return out


# (batch, height, width) of the launch-model test: inference at batch 1, training at 2 (Cityscapes), 4 (ADE20k).
STAGE_CROPS = ((1, 512, 1024), (1, 1024, 2048), (2, 512, 1024), (4, 512, 1024), (1, 512, 512), (4, 512, 512))


def test_cases() -> List[Case]:
    """What tests/kernels/test_splat_triton.py runs: C = 6 per split (10 in the chunked float64 test), radix and
    groups (1..4, 1..2), the two kernel layouts, four dtypes, affine with x's or float32 parameters, relu or not,
    the small spatial sizes (single tile, 1x1, several chunks)."""
    out = []
    for (radix, groups), dt, cl, (affine, p32), relu, (b, h, w) in itertools.product(
        [(1, 1), (1, 2), (2, 1), (2, 2), (3, 2), (4, 1), (4, 2)], DTYPES, (False, True),
        [(True, False), (True, True), (False, False)], (True, False), [(2, 7, 9), (1, 1, 1), (2, 3, 5)],
    ):
        if p32 and dt in ("fp32", "fp64"):
            continue
        out.append(Case(b, 6, h, w, radix, groups, dt, cl, affine, relu, p32))
    return out


def quick_cases() -> List[Case]:
    """A CI subset: every dtype and layout at radix 2 with affine + relu, the structural flags at fp32, and the
    stage shapes' block sizes (fp32 and bf16) at the Cityscapes crop."""
    out = [Case(2, 6, 7, 9, 2, 2, dt, cl, True, True) for dt in DTYPES for cl in (False, True)]
    out += [Case(2, 6, 7, 9, r, 2, "fp32", False, a, rl) for r, a, rl in [(1, False, False), (4, True, False)]]
    out += [Case(2, 6, 7, 9, 2, 2, "bf16", True, True, True, params_fp32=True)]
    out += [Case(2, 128, 64, 128, 2, 1, dt, cl, True, True) for dt in ("fp32", "bf16") for cl in (False, True)]
    # splat_conv_pool: Cityscapes layer3 at both gpu_check shapes, fp32 and bf16, channels_last (NCHW bf16 once),
    # and a batch-1 ADE20k shape whose tile has shrunk to 64 x 64
    out += [replace(c, dtype=dt) for c in CITY_LAYER3 for dt in ("fp32", "bf16")]
    out += [replace(CITY_LAYER3[0], dtype="bf16", channels_last=False),
            ConvCase(1, 256, 256, 64, 64, 2, 1, "bf16", True, dilation=2)]
    return out


def core_cases() -> List[Case]:
    """The handful the default pytest suite compiles: a stage shape in fp32 and float64 (the mean divided in
    float64)."""
    return [Case(2, 128, 64, 128, 2, 1, "fp32", False, True, True), Case(2, 6, 7, 9, 2, 2, "fp64", False, True, True),
            replace(CITY_LAYER3[0], dtype="bf16")]


# ------------------------------------------------------------------------------------------ specialisations


@dataclass
class Spec:
    kernel: str
    fn: object  # the JITFunction (workers are forked: they inherit it)
    signature: Dict
    constexprs: Dict
    attrs: Dict
    num_warps: int
    num_stages: int
    fp64: bool
    label: str


def _specs(cases: List, arch: int) -> List[Spec]:
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    backend = make_backend(GPUTarget("cuda", arch, 32))
    binders = {}
    seen, out = set(), []
    for case in cases:
        for kernel, _programs, num_warps, args, constexprs in _record(case, SMS.get(arch, 132)):
            if kernel not in binders:
                binders[kernel] = create_function_from_signature(kernel.signature, kernel.params, backend)
            kwargs = dict(constexprs, num_warps=num_warps)
            bound, specialization, options = binders[kernel](*args, **kwargs)
            parsed, signature, consts, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
            key = (kernel.__name__, repr(sorted(signature.items())), repr(sorted(consts.items(), key=str)),
                   repr(sorted(attrs.items())), num_warps, parsed.num_stages)
            if key in seen:
                continue
            seen.add(key)
            named = {kernel.arg_names[p[0]]: v for p, v in consts.items()}
            fp64 = named.get("ACC") == tl.float64
            flags = ",".join(f"{k}={_short(v)}" for k, v in named.items() if k.isupper())
            stages = f", stages={parsed.num_stages}" if "num_stages" in constexprs else ""
            out.append(Spec(kernel.__name__, kernel, signature, consts, attrs, num_warps, parsed.num_stages, fp64,
                            f"{kernel.__name__}[{flags}; warps={num_warps}{stages}; x={_x_type(signature)}]"))
    return out


def _short(v):
    return str(v).replace("triton.language.", "")


def _x_type(signature):
    return next(t for t in signature.values() if t.startswith("*"))[1:]


_SPECS: List[Spec] = []  # per worker process (fork): the list the indices refer to


def _compile(index: int, arch: int):
    spec = _SPECS[index]
    t0 = time.perf_counter()
    try:
        src = triton.compiler.ASTSource(fn=spec.fn, signature=spec.signature, constexprs=spec.constexprs,
                                        attrs=spec.attrs)
        compiled = triton.compiler.compile(src, target=GPUTarget("cuda", arch, 32),
                                           options={"num_warps": spec.num_warps, "num_stages": spec.num_stages})
    except Exception as exc:  # noqa: BLE001  (reported, and the run fails)
        return dict(index=index, arch=arch, error=f"{type(exc).__name__}: {exc}".splitlines()[0][:400])
    ttir, ptx = compiled.asm["ttir"], compiled.asm["ptx"]
    res = dict(index=index, arch=arch, seconds=time.perf_counter() - t0, shared=compiled.metadata.shared)
    res.update(_ptxas_stats(ptx, arch))
    res["machine"] = _machine_summary(ptx)
    if spec.fp64:
        res["fp64_f32"] = sorted(set(re.findall(r"[^\n]*\bf32\b[^\n]*", ttir)))[:3]
        res["fp64_divf"] = bool(re.search(r"arith\.divf[^\n]*f64", ttir))
    return res


def _machine_summary(ptx: str) -> str:
    """What a tl.dot became and how loads are batched, read from the PTX: wgmma (sm_90 tensor cores, asynchronous),
    mma.sync (sm_80 tensor cores) or neither (FMA units); cp.async copies (global -> shared, the software pipeline's
    loads in flight) and vector loads. Empty for kernels with none of these."""
    counts = [("wgmma", len(re.findall(r"\bwgmma\.mma_async", ptx))), ("mma.sync", len(re.findall(r"\bmma\.sync", ptx))),
              ("cp.async", len(re.findall(r"\bcp\.async\.(?:ca|cg)", ptx))),
              ("ld.v4", len(re.findall(r"\bld\.global(?:\.\w+)*\.v4", ptx))),
              ("ld.v2", len(re.findall(r"\bld\.global(?:\.\w+)*\.v2", ptx)))]
    return " ".join(f"{name}={n}" for name, n in counts if n)


def _ptxas_stats(ptx: str, arch: int) -> Dict:
    """Registers, spills and shared memory as ptxas reports them (the compiled kernel's metadata has no register
    count before it is loaded on a device)."""
    from triton.backends.nvidia.compiler import get_ptxas

    gpu = re.search(r"^\.target\s+(\S+)", ptx, re.M).group(1).rstrip(",")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        proc = subprocess.run([get_ptxas(arch).path, "-v", f"--gpu-name={gpu}", path, "-o", os.path.join(tmp, "k.o")],
                              capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    if proc.returncode:
        return dict(error=f"ptxas: {log.strip()[:400]}")

    def num(pattern):
        m = re.search(pattern, log)
        return int(m.group(1)) if m else 0

    return dict(regs=num(r"Used (\d+) registers"), spill_stores=num(r"(\d+) bytes spill stores"),
                spill_loads=num(r"(\d+) bytes spill loads"), stack=num(r"(\d+) bytes stack frame"))


def run(cases: List, archs=ARCHS, jobs: Optional[int] = None, out=sys.stdout) -> Tuple[int, List[Dict]]:
    """Compiles every specialisation `cases` launch for each arch; prints one line per (specialisation, arch) and a
    summary; returns (number of failures, results)."""
    global _SPECS
    t0 = time.perf_counter()
    specs_by_arch = {arch: _specs(cases, arch) for arch in archs}
    work, all_specs = [], []
    for arch, specs in specs_by_arch.items():
        for spec in specs:
            work.append((len(all_specs), arch))
            all_specs.append(spec)
    _SPECS = all_specs
    jobs = max(1, min(len(work), os.cpu_count() or 1)) if jobs is None else jobs
    results = []
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")) as pool:
        for res in pool.map(_compile, *zip(*work)):
            results.append(res)
            spec = all_specs[res["index"]]
            if "error" in res:
                print(f"FAIL sm_{res['arch']} {spec.label}: {res['error']}", file=out)
                continue
            line = (f"ok   sm_{res['arch']} regs={res['regs']:3d} spill_st={res['spill_stores']} "
                    f"spill_ld={res['spill_loads']} smem={res['shared']} {spec.label}"
                    + (f" [{res['machine']}]" if res["machine"] else ""))
            if spec.fp64:
                if res["fp64_f32"]:
                    res["error"] = f"float64 kernel has f32 in its IR: {res['fp64_f32']}"
                    line = f"FAIL sm_{res['arch']} {spec.label}: {res['error']}"
                else:
                    line += " fp64-clean" + (" (f64 divide)" if res["fp64_divf"] else "")
            print(line, file=out)
    failures = sum("error" in r for r in results)
    ok = [r for r in results if "error" not in r]
    print(f"\n{len(results)} compiles ({len(ok)} ok, {failures} failed) of {len(cases)} cases in "
          f"{time.perf_counter() - t0:.0f} s by Triton {triton.__version__}", file=out)
    for arch in archs:
        rows = [r for r in ok if r["arch"] == arch]
        for name in sorted({all_specs[r["index"]].kernel for r in rows}):
            mine = [r for r in rows if all_specs[r["index"]].kernel == name]
            print(f"sm_{arch} {name:28s} specialisations={len(mine):3d} regs={min(r['regs'] for r in mine)}.."
                  f"{max(r['regs'] for r in mine)} max_spill_stores={max(r['spill_stores'] for r in mine)} "
                  f"max_spill_loads={max(r['spill_loads'] for r in mine)}", file=out)
    fp64 = [r for r in ok if all_specs[r["index"]].fp64]
    print(f"float64 specialisations free of f32: {len(fp64)}/{sum(s.fp64 for s in all_specs)}", file=out)
    return failures, results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--quick", action="store_true", help="the CI subset (a few minutes on 2 cores)")
    which.add_argument("--core", action="store_true", help="the handful the pytest suite compiles")
    parser.add_argument("--arch", type=int, action="append", help="80 and/or 90 (default both)")
    parser.add_argument("--jobs", type=report.positive_int, default=None,
                        help="compiling processes (default: one per CPU, at most one per compile)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("TRITON_INTERPRET=1: the kernels are interpreted functions; unset it to compile", file=sys.stderr)
        return 2
    if args.core:
        cases = core_cases()
    elif args.quick:
        cases = quick_cases()
    else:
        cases = (test_cases() + _crop_cases(("fp32", "bf16", "fp16"), (False, True)) + conv_test_cases()
                 + conv_crop_cases(("fp32", "bf16", "fp16"), (False, True)))
    failures, _ = run(cases, tuple(args.arch or ARCHS), args.jobs)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
