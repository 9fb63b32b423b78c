"""Where the bytes of an inference process go: mmseg eager, ours eager and ours optimized (optimize_for_inference),
each in its own process, same weights, same input, batch 1, fp32, CPU.

Columns (MiB, one row per provider and allocator setting):
  libs         RSS once torch (and mmseg, for mmseg's model) is imported, before any model is built
  weights      bytes of the tensors the model holds after the calls, each storage once (benchmarks.memory
               .held_bytes_by_form), split into dense / onednn-packed / winograd
  after_build  RSS with the model built, its weights loaded, the input made
  build_peak   peak RSS up to then (VmHWM: loading a state_dict holds two copies of the weights for a moment)
  peak         peak RSS over the calls (VmHWM reset after building, benchmarks.peak_rss)
  activations  peak of the bytes of the live tensors that ops returned during one more call (the output and
               every intermediate, each storage once; oneDNN's scratch pads not seen)
  heap_free    bytes glibc keeps on its heaps after the calls, free but not returned to the system
               (mallinfo2().fordblks: "large blocks kept on the heap")
  slack        peak - after_build - activations: what the calls cost beyond the live tensors (first-call weight
               packing, oneDNN scratch pads, allocator slack)
Allocator settings (glibc reads them at process start, hence one process each):
  default          glibc's: its mmap threshold grows up to 32 MiB as large blocks are freed, after which blocks
                   of that size come from the heap and stay there when freed
  tuned            GLIBC_TUNABLES mmap_threshold=32 MiB, trim_threshold=1 GiB: blocks under 32 MiB stay on the heap
                   when freed; blocks of 32 MiB and more (glibc's cap on the threshold) are still fresh mappings
  heap-only        docs/deployment.md's recommendation for speed (GLIBC_TUNABLES mmap_max=0, trim_threshold=4 GiB):
                   no block is a mapping of its own, freed blocks stay on the heap, none is page-faulted in again
  mmap-64k         MALLOC_MMAP_THRESHOLD_=65536: every block over 64 KiB is its own mapping, returned when freed
  arena-max-1      MALLOC_ARENA_MAX=1: one heap for all threads

    python -m benchmarks.inference_memory --size 256 512 --threads 2
Rows go to benchmarks/results/inference_memory.csv (--results-dir to change; an existing file is refused unless
--overwrite); Ctrl-C writes the rows measured so far and exits 130.
"""
import argparse
import ctypes
import gc
import json
import os
import subprocess
import sys
import tempfile

import torch

from benchmarks import report

PROVIDERS = ("mmseg", "ours", "ours-optimized")
TUNED = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824"
HEAP_ONLY = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967296"
ALLOCATORS = {"default": {}, "tuned": {"GLIBC_TUNABLES": TUNED}, "heap-only": {"GLIBC_TUNABLES": HEAP_ONLY},
              "mmap-64k": {"MALLOC_MMAP_THRESHOLD_": "65536"}, "arena-max-1": {"MALLOC_ARENA_MAX": "1"}}
MIB = 2.0 ** 20


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def heap_free_bytes():
    """Free bytes glibc's heaps hold (mallinfo2().fordblks, all arenas); None where glibc >= 2.33 is absent."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        fn = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = _Mallinfo2
    return fn().fordblks


def live_bytes_peak(fn, *args, exclude=()):
    """Peak of the bytes held by the tensors that the ops run by fn(*args) returned and that are still alive, each
    storage once (a TorchDispatchMode sees every op, ours included; memory a kernel uses inside itself, such as
    oneDNN's scratch pads, is not seen). Storages whose data pointers are in `exclude` (the weights, the input)
    are not counted when an op returns a view of them."""
    from torch.multiprocessing.reductions import StorageWeakRef
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class LivePeak(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.live, self.peak = {}, 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor) and not t.is_mkldnn:
                    s = t.untyped_storage()
                    if s.data_ptr() not in exclude:
                        self.live.setdefault(s._cdata, (StorageWeakRef(s), s.nbytes()))
            self.live = {k: v for k, v in self.live.items() if not v[0].expired()}
            self.peak = max(self.peak, sum(n for _, n in self.live.values()))
            return out

    with LivePeak() as mode:
        fn(*args)
    return mode.peak


def _worker(spec_path):
    from benchmarks.peak_rss import current_rss_bytes, peak_rss_bytes, reset_peak

    with open(spec_path) as f:
        spec = json.load(f)
    torch.set_num_threads(spec["threads"])
    if spec["provider"] == "mmseg":
        from resnest_fast.testing.mmseg_reference import import_mmseg

        import_mmseg("mmseg.models")
    import resnest_fast  # noqa: F401  (the libraries, before the model)

    libs = current_rss_bytes()
    from benchmarks.models import _build_for_memory

    model, forward = _build_for_memory(spec["model"], spec["provider"], spec["weights"])
    x = torch.load(spec["input"], weights_only=True)
    gc.collect()
    after_build = current_rss_bytes()
    build_peak = peak_rss_bytes()
    exact = reset_peak()
    with torch.no_grad():
        for _ in range(spec["calls"]):
            out = forward(x)
        peak_calls = peak_rss_bytes()
        # one more call under the dispatch mode, after the peak was read (its bookkeeping costs memory)
        from benchmarks.memory import held_storages

        known = {key[0] for key in held_storages(model)} | {x.untyped_storage().data_ptr()}
        activations = live_bytes_peak(forward, x, exclude=known)
    from benchmarks.memory import held_bytes_by_form

    forms = held_bytes_by_form(model)
    torch.save(out, spec["output"])
    result = {"exact_peak": exact, "libs": libs, "after_build": after_build, "build_peak": build_peak,
              "peak": peak_calls,
              "activations": activations, "heap_free": heap_free_bytes(), "forms": forms}
    with open(spec["result"], "w") as f:
        json.dump(result, f)


def measure(name, provider, allocator, weights, inp, tmp, threads, calls):
    spec_path = os.path.join(tmp, f"{provider}-{allocator}.json")
    output = spec_path + ".out.pt"
    with open(spec_path, "w") as f:
        json.dump({"model": name, "provider": provider, "weights": weights, "input": inp, "output": output,
                   "threads": threads, "calls": calls, "result": spec_path + ".result"}, f)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items()
           if k != "GLIBC_TUNABLES" and not k.startswith("MALLOC_")}  # only the setting asked for
    env.update(ALLOCATORS[allocator])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-m", "benchmarks.inference_memory", "--worker", spec_path], cwd=root,
                          env=env, capture_output=True, text=True, timeout=3600, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{provider} ({allocator}) failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    with open(spec_path + ".result") as f:
        res = json.load(f)
    res["output"] = torch.load(output, weights_only=True)
    return res


PROG = "python -m benchmarks.inference_memory"


def main(argv=None):
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    report.add_model_and_size(parser)
    parser.add_argument("--threads", type=report.positive_int, default=2)
    parser.add_argument("--calls", type=report.positive_int, default=2,
                        help="inference calls whose peak is measured (default 2)")
    parser.add_argument("--providers", nargs="+", choices=PROVIDERS, default=list(PROVIDERS))
    parser.add_argument("--allocators", nargs="+", choices=tuple(ALLOCATORS), default=list(ALLOCATORS))
    parser.add_argument("--results-dir", default=None,
                        help="where inference_memory.csv goes (default benchmarks/results)")
    report.add_overwrite_argument(parser)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args.worker)
        return 0
    from benchmarks.models import resolve_models

    try:
        names = resolve_models([args.model], flag="--model")
    except ValueError as exc:
        parser.error(str(exc))
    results_dir = report.check_output_folder(parser, args.results_dir, "--results-dir",
                                             [report.csv_name("inference_memory")], args.overwrite)
    try:
        for name in names:
            measure_model(name, args)
    except KeyboardInterrupt:
        return report.interrupted(PROG, results_dir)
    report.flush(results_dir)
    return 0


def measure_model(name, args):
    """Every (allocator, provider) of config `name` in its own process; prints and adds a row for each."""
    from benchmarks.models import MEAN, STD, reference_model

    torch.manual_seed(0)
    ref = reference_model(name)[0]
    with tempfile.TemporaryDirectory(prefix="resnest_fast_inference_memory_") as tmp:
        weights, inp = os.path.join(tmp, "weights.pt"), os.path.join(tmp, "input.pt")
        torch.save(ref.state_dict(), weights)
        torch.save((torch.rand(1, 3, *args.size) * 255 - MEAN) / STD, inp)
        del ref
        want = None
        for allocator in args.allocators:
            for provider in args.providers:
                res = measure(name, provider, allocator, weights, inp, tmp, args.threads, args.calls)
                out = res.pop("output")
                want = out if want is None else want
                err = (out - want).abs().max().item()
                if err > 1e-3:
                    raise RuntimeError(f"{provider} ({allocator}): logits differ from the first provider's by {err}")
                forms = res.pop("forms")
                row = {"bench": "inference_memory", "model": name, "input": f"1x3x{args.size[0]}x{args.size[1]}",
                       "threads": args.threads, "provider": provider, "allocator": allocator,
                       "peak_measure": "since build" if res.pop("exact_peak") else "lifetime"}
                row.update({f"{k}_mib": round(v / MIB, 1) for k, v in res.items() if v is not None})
                row["weights_mib"] = round(sum(forms.values()) / MIB, 1)
                row.update({f"weights_{k}_mib": round(v / MIB, 1) for k, v in sorted(forms.items())})
                row["slack_mib"] = round((res["peak"] - res["after_build"] - res["activations"]) / MIB, 1)
                report.add("inference_memory", row)
                print(" ".join(f"{k}={v}" for k, v in row.items() if k not in ("bench", "model")), flush=True)


if __name__ == "__main__":
    sys.exit(main())
