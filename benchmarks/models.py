"""Model-level benchmark with mmseg's method: the eight segmenters of mmseg's ResNeSt table (FCN, PSPNet, DeepLabV3,
DeepLabV3+ on ResNeSt-101-D8, Cityscapes and ADE20k), mmseg's model against ours, same weights (mmseg's random
init copied into ours with strict=True), same input.

Providers (eval forward, batch 1, no grad; mmseg's `forward(mode='tensor')`, i.e. the decode logits, and our
`decode`, the same computation: mmseg's benchmark.py times `mode='predict'`, which adds a resize and an argmax that
are the same code for both):
  mmseg                mmseg 1.2.2's model (the reference; our `reference` backend stands in if mmseg is absent,
                       and the rows then say "reference-backend")
  ours                 ours in eager mode, fused split attention
  ours-optimized       resnest_fast.optimize_for_inference(ours): BN folded, post-ops, prepacked convs, the
                       big 3x3 convs as Winograd F(2x2, 3x3) on CPU
  mmseg-compiled       (--compile) torch.compile of mmseg's model with torch._inductor.config.freezing = True
  ours-compiled        (--compile) the same compile of ours
  ours-optimized-compiled
                       (--compile) the same compile of ours-optimized (Inductor packs and fuses the convs that
                       are not Winograd, which stays our op): the fastest path for a user who compiles
  onnxruntime          ours exported by resnest_fast.export.export_onnx (split attention as its reference
                       decomposition), on ONNX Runtime's CPU provider, all graph optimisations, intra-op threads =
                       torch's threads (benchmarks/onnx_runtime.py holds the session code)
  openvino             the same ONNX file on OpenVINO's CPU plugin: latency hint, f32 inference precision, as many
                       threads as torch
--providers picks which run (default: the reference, ours, ours-optimized, and the compiled ones with --compile;
"mmseg" names the reference either way). The runtimes are optional extras (pip install 'resnest_fast[deploy]'):
one whose package is missing is skipped with one line saying how to install it.
Every provider's logits are checked against mmseg's before anything is timed or measured (the reference's logits
are computed even when it is not timed); the max abs difference goes to the CSV.

Timing (mmseg's tools/analysis_tools/benchmark.py: batch 1, 5 warm-up iterations, then N timed ones, synchronised,
fps = timed iterations / their total time): --warmup 5, --rounds N (default 5 on CPU, 200 on CUDA as mmseg),
perf_counter on CPU, CUDA events on a GPU. The providers share one process and take turns round by round, so
that a change in the machine's load hits all of them alike; speedups are ratios of medians, fps is mmseg's mean.
Input size: the config's crop size (512x1024 Cityscapes, 512x512 ADE20k) unless --size H W.

Peak memory (default on; --no-peak-memory to skip): each (model, provider) runs in its own process, which loads
the weights the timing process saved, runs --memory-calls inference calls on the same input and returns its logits
for the check. Measured there:
  CPU   after_build_mib = RSS (VmRSS) once the model is built, its weights loaded, the input made;
        build_peak_mib  = peak RSS (VmHWM) up to then (loading a state_dict holds two copies of the weights);
        peak_mib        = peak RSS (VmHWM) over the inference calls, the peak first reset to the current RSS
                          (/proc/self/clear_refs; if the kernel refuses, the lifetime peak, said in the row);
        growth_mib      = peak_mib - after_build_mib: what inference adds (activations, oneDNN caches,
                          ours-optimized's weight prepacking at its first call, memory the allocator keeps).
  CUDA  the same with torch.cuda.memory_allocated / max_memory_allocated (peak stats reset after building).
RSS is per process, hence one process per measurement; it includes the Python interpreter and the imported
libraries (mmseg imports more than ours), so compare growth_mib across providers, peak_mib within one. Compiled
providers are timed only. A runtime's process loads the ONNX file the timing process exported (torch imported,
no torch model built): after_build_mib is its RSS once the session is created. Train mode (--memory): the bytes autograd keeps for backward (each storage once) for the
loss of a batch of 2, ours / mmseg.
Rows go to benchmarks/results/models.csv (--results-dir to change; machine, versions and git revision added); an
existing file is refused before anything runs unless --overwrite. Ctrl-C writes the rows measured so far (the
summary line says they are partial) and exits 130.

    python -m benchmarks.models --models deeplabv3 --size 256 512 --compile --memory   # run.sh's figure
    python -m benchmarks.models --models all                                           # eight models, crop sizes
    python -m benchmarks.models --models all --size 128 256 --rounds 2                 # a quick check
    python -m benchmarks.models --models deeplabv3 --size 256 512 --rounds 3 \
        --providers mmseg ours ours-optimized onnxruntime openvino                      # the deployment table
    python -m benchmarks.plot_models benchmarks/results/models*.csv -o benchmarks/results/models.png
"""
import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from benchmarks import report
from benchmarks.memory import saved_storage_bytes
from benchmarks.onnx_runtime import RUNTIMES, missing_runtime, runtime_session
from resnest_fast.export import export_onnx
from resnest_fast.testing.mmseg_reference import MmsegUnavailable, build_mmseg_segmentor

# The eight configs of resnest_fast/segmentation/configs/resnest/ (mmseg's file names), by "<head>-<dataset>".
MODEL_CONFIGS = {
    "fcn-cityscapes": "resnest_s101-d8_fcn_4xb2-80k_cityscapes-512x1024",
    "pspnet-cityscapes": "resnest_s101-d8_pspnet_4xb2-80k_cityscapes512x1024",
    "deeplabv3-cityscapes": "resnest_s101-d8_deeplabv3_4xb2-80k_cityscapes-512x1024",
    "deeplabv3plus-cityscapes": "resnest_s101-d8_deeplabv3plus_4xb2-80k_cityscapes-512x1024",
    "fcn-ade20k": "resnest_s101-d8_fcn_4xb4-160k_ade20k-512x512",
    "pspnet-ade20k": "resnest_s101-d8_pspnet_4xb4-160k_ade20k-512x512",
    "deeplabv3-ade20k": "resnest_s101-d8_deeplabv3_4xb4-160k_ade20k-512x512",
    "deeplabv3plus-ade20k": "resnest_s101-d8_deeplabv3plus_4xb4-160k_ade20k-512x512",
}
# A bare head name means its Cityscapes config, as before the ADE20k ones were added.
HEAD_CONFIGS = {head: MODEL_CONFIGS[f"{head}-cityscapes"] for head in ("fcn", "pspnet", "deeplabv3", "deeplabv3plus")}
MEAN = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
STD = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)
CHECK_TOL = 1e-3
MEMORY_PROVIDERS = ("ours", "ours-optimized") + tuple(RUNTIMES)  # after the reference
REFERENCE = "mmseg"  # --providers' name for the reference, whichever kind this environment builds
COMPILED = ("mmseg-compiled", "ours-compiled", "ours-optimized-compiled")
PROVIDERS = (REFERENCE, "ours", "ours-optimized") + COMPILED + tuple(RUNTIMES)


def default_providers(compile=False):
    return [REFERENCE, "ours", "ours-optimized"] + (list(COMPILED) if compile else [])


def resolve_models(names, flag="--models"):
    """Config names for --models: "all", "<head>-<dataset>" (e.g. deeplabv3-ade20k), a bare head (its Cityscapes
    config) or any shipped config name. ValueError naming `flag` (the option that took them) otherwise."""
    from resnest_fast.segmentation import list_configs

    out = []
    for name in names:
        if name == "all":
            found = list(MODEL_CONFIGS.values())
        elif name in MODEL_CONFIGS:
            found = [MODEL_CONFIGS[name]]
        elif name in HEAD_CONFIGS:
            found = [HEAD_CONFIGS[name]]
        elif name in list_configs():
            found = [name]
        else:
            raise ValueError(f"{flag}: unknown model {name!r}; expected 'all', one of "
                             f"{', '.join(list(HEAD_CONFIGS) + list(MODEL_CONFIGS))}, or a config name of "
                             "resnest_fast.segmentation.list_configs()")
        out += [c for c in found if c not in out]
    return out


def short_name(config):
    """"deeplabv3-ade20k" for a config of MODEL_CONFIGS, the config name otherwise."""
    return next((k for k, v in MODEL_CONFIGS.items() if v == config), config)


def crop_size(config):
    from resnest_fast.segmentation import load_config

    size = load_config(config).get("crop_size")
    if size is None:
        raise ValueError(f"config {config!r} has no crop_size: pass --size H W")
    return tuple(size)


def reference_model(name):
    """(model, kind, forward): mmseg's model for config `name` if mmseg is installed, else ours on the pure-PyTorch
    reference backend. `forward(x)` takes the normalised input and returns the decode logits."""
    from resnest_fast.segmentation import build_segmentor, load_config

    cfg = load_config(name)["model"]
    try:
        model = build_mmseg_segmentor(cfg)
    except MmsegUnavailable:
        model = build_segmentor(cfg, backend="reference").eval()
        return model, "reference-backend", model.decode
    model.eval()
    return model, "mmseg", lambda x: model(x, mode="tensor")


def build_pair(name):
    from resnest_fast.segmentation import build_segmentor, load_config

    ref, kind, ref_forward = reference_model(name)
    ours = build_segmentor(load_config(name)["model"])
    ours.load_state_dict(ref.state_dict(), strict=True)
    ours.eval()
    return ref, kind, ref_forward, ours


def _compiled(fn):
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    return torch.compile(fn)


def timed_call(fn, device):
    """Seconds of one call fn(), synchronised: CUDA events on a GPU (mmseg synchronises around perf_counter; events
    measure the same span without the host's share of the sync), perf_counter on CPU."""
    if torch.device(device).type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def time_providers(providers, x, warmup=5, rounds=5):
    """{name: [seconds per call]}: each provider warmed up, then one call each per round, round-robin."""
    times = {name: [] for name in providers}
    with torch.no_grad():
        for name, fn in providers.items():
            for _ in range(warmup):
                fn(x)
        for _ in range(rounds):
            for name, fn in providers.items():
                times[name].append(timed_call(lambda: fn(x), x.device))
    return times


def _check_logits(label, got, want, kind):
    """Max abs difference of `got` from the reference's logits; AssertionError naming `label` beyond CHECK_TOL."""
    err = (got.float() - want.float()).abs().max().item()
    if not err <= CHECK_TOL * max(1.0, want.abs().max().item()):
        raise AssertionError(f"{label}: logits differ from {kind}'s by {err:.3g}; not timing")
    return err


def _progress(line):
    """A summary line, printed now (a full run takes long) and again in the summary at the end."""
    report.note(line)
    print(line, file=sys.stderr, flush=True)


class _Decode(torch.nn.Module):
    """`model.decode` as a module's forward, for export: normalised input -> decode logits."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.decode(x)


def available_providers(providers, device):
    """The providers of `providers` that can run here, in order; a runtime whose package is missing (or asked for on
    a GPU) is left out with one printed line saying why."""
    out = []
    for provider in providers:
        if provider in RUNTIMES:
            line = missing_runtime(provider) if device == "cpu" else f"{provider}: skipped, CPU only (--device cpu)"
            if line:
                print(line, file=sys.stderr, flush=True)
                continue
        if provider not in out:
            out.append(provider)
    return out


def bench_model(name, size=None, compile=False, rounds=None, warmup=5, device="cpu", peak_memory=True,
                memory_calls=2, providers=None):
    """Times `providers` (names of PROVIDERS; default: default_providers(compile)) for config `name` (or a key of
    MODEL_CONFIGS / HEAD_CONFIGS) and, with `peak_memory`, measures each one's memory in its own process; returns
    {provider: median seconds} (the reference under its kind: "mmseg" or "reference-backend") and adds CSV rows."""
    # the weights, the input and the ONNX file for the measuring processes
    with tempfile.TemporaryDirectory(prefix="resnest_fast_models_") as tmp:
        return _bench_model(name, size, compile, rounds, warmup, device, peak_memory, memory_calls, providers, tmp)


def _bench_model(name, size, compile, rounds, warmup, device, peak_memory, memory_calls, providers, tmp):
    from resnest_fast import optimize_for_inference

    name = resolve_models([name])[0]
    size = tuple(size) if size else crop_size(name)
    rounds = rounds or (200 if device == "cuda" else 5)
    selected = available_providers(providers or default_providers(compile), device)
    model = short_name(name)
    torch.manual_seed(0)
    ref, kind, ref_forward, ours = build_pair(name)
    ref.to(device)
    ours.to(device)
    img = torch.rand(1, 3, *size) * 255
    x = ((img - MEAN) / STD).to(device)
    shape = f"1x3x{size[0]}x{size[1]}"

    def label(provider):
        return provider.replace(REFERENCE, kind, 1) if provider.startswith(REFERENCE) else provider

    fast = optimize_for_inference(ours) if any(p.startswith("ours-optimized") for p in selected) else None
    plain = {REFERENCE: ref_forward, "ours": ours.decode, "ours-optimized": fast.decode if fast else None}
    fns, compile_s, export_s, onnx_path = {}, {}, None, None
    for provider in selected:
        if provider in plain:
            fns[label(provider)] = plain[provider]
        elif provider in COMPILED:
            t = time.perf_counter()
            compiled = _compiled(plain[provider[:-len("-compiled")]])
            with torch.no_grad():
                compiled(x)
            compile_s[label(provider)] = time.perf_counter() - t
            fns[label(provider)] = compiled
        elif provider in RUNTIMES:
            if onnx_path is None:
                onnx_path = os.path.join(tmp, "decode.onnx")
                t = time.perf_counter()
                # checked below against the reference, like every provider
                export_onnx(_Decode(ours), x, onnx_path, validate=False)
                export_s = time.perf_counter() - t
            fns[provider] = runtime_session(provider, onnx_path, torch.get_num_threads())
        else:
            raise ValueError(f"unknown provider {provider!r}; expected one of {', '.join(PROVIDERS)}")
    errors = {}
    with torch.no_grad():
        want = ref_forward(x)
        for lab, fn in fns.items():
            errors[lab] = _check_logits(f"{model} {lab}", fn(x), want, kind)
    times = time_providers(fns, x, warmup=warmup, rounds=rounds)
    medians = {k: statistics.median(v) for k, v in times.items()}
    for lab, ts in times.items():
        report.add("models", {"bench": "eval_forward", "model": name, "input": shape, "device": device,
                              "provider": lab, "warmup": warmup, "rounds": len(ts),
                              "median_s": round(medians[lab], 4), "mean_s": round(statistics.mean(ts), 4),
                              "min_s": round(min(ts), 4), "fps": round(len(ts) / sum(ts), 3),
                              "speedup_vs_reference": round(medians[kind] / medians[lab], 3) if kind in medians
                              else "",
                              "max_abs_diff_vs_reference": f"{errors[lab]:.2e}",
                              "compile_s": round(compile_s.get(lab, 0.0), 1),
                              "onnx_export_s": round(export_s, 1) if lab in RUNTIMES else ""})
    parts = [f"{k} {v:.3f}s" + (f" ({medians[kind] / v:.2f}x)" if kind in medians else "")
             for k, v in medians.items()]
    for lab in ("ours-compiled", "ours-optimized-compiled"):
        if lab in medians and f"{kind}-compiled" in medians:
            parts.append(f"{lab} vs {kind}-compiled {medians[f'{kind}-compiled'] / medians[lab]:.2f}x")
    _progress(f"{model} eval {shape} on {device}, median of {rounds}: " + ", ".join(parts))
    _progress(f"{model} max |logits - {kind}'s|: " + ", ".join(f"{k} {e:.1e}" for k, e in errors.items()))

    memory_providers = [label(p) for p in selected if p == REFERENCE or p in MEMORY_PROVIDERS]
    if peak_memory and memory_providers:
        weights, inp = os.path.join(tmp, "weights.pt"), os.path.join(tmp, "input.pt")
        torch.save({k: v.cpu() for k, v in ref.state_dict().items()}, weights)
        torch.save(x.cpu(), inp)
        want = want.cpu()
    # The compiled graphs hold frozen copies of every weight: free them before the measuring processes start.
    del fns, plain, fast, ours, ref, ref_forward
    torch._dynamo.reset()
    gc.collect()
    if peak_memory and memory_providers:
        measured = {}
        for provider in memory_providers:
            res = measure_in_subprocess(name, provider, weights, inp, os.path.join(tmp, f"{provider}.pt"),
                                        device=device, calls=memory_calls, onnx=onnx_path)
            _check_logits(f"{model} {provider} (memory process)", torch.load(res.pop("output")), want, kind)
            measured[provider] = res
        base = measured.get(kind)
        for provider, res in measured.items():
            report.add("models", {"bench": "eval_peak_memory", "model": name, "input": shape, "device": device,
                                  "provider": provider, "calls": memory_calls, "measure": res["measure"],
                                  "after_build_mib": res["after_build_mib"], "peak_mib": res["peak_mib"],
                                  "growth_mib": res["growth_mib"], "build_peak_mib": res.get("build_peak_mib"),
                                  "growth_vs_reference": round(res["growth_mib"] / max(base["growth_mib"], 1e-9),
                                                               3) if base else ""})
        _progress(f"{model} eval {shape} memory ({res['measure']}): " + ", ".join(
            f"{p} peak {r['peak_mib']:.0f} MiB, growth {r['growth_mib']:.0f} MiB" for p, r in measured.items()))
    return medians


def measure_in_subprocess(name, provider, weights, inp, output, device="cpu", calls=2, timeout=3600, onnx=None):
    """Runs `_memory_worker` in a fresh Python process (killed after `timeout` seconds); returns its result dict
    (output: the logits file). A runtime provider (a key of RUNTIMES) runs the ONNX file `onnx`."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False, dir=os.path.dirname(output)) as f:
        spec_path = f.name
        json.dump({"model": name, "provider": provider, "weights": weights, "input": inp, "output": output,
                   "device": device, "calls": calls, "threads": torch.get_num_threads(), "onnx": onnx,
                   "result": spec_path + ".result"}, f)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-m", "benchmarks.models", "--memory-worker", spec_path], cwd=root,
                          env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"memory process for {name} {provider} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    with open(spec_path + ".result") as f:
        return json.load(f)


def _build_for_memory(name, provider, weights, onnx=None):
    """(module, forward) of `provider` for config `name`, with the saved weights, as the timing process has it; a
    runtime's module is None and its forward the session on the ONNX file `onnx`."""
    from resnest_fast import optimize_for_inference
    from resnest_fast.segmentation import build_segmentor, load_config

    if provider in RUNTIMES:
        if not onnx:
            raise ValueError(f"memory process: {provider} needs the ONNX file")
        return None, runtime_session(provider, onnx, torch.get_num_threads())
    state = torch.load(weights, map_location="cpu", weights_only=True)
    if provider in ("mmseg", "reference-backend"):
        model, kind, forward = reference_model(name)
        if kind != provider:
            raise RuntimeError(f"memory process: asked for {provider} but this environment builds {kind}")
    elif provider in MEMORY_PROVIDERS:
        model = build_segmentor(load_config(name)["model"])
        forward = None
    else:
        raise ValueError(f"provider {provider!r} has no memory measurement")
    model.load_state_dict(state, strict=True)
    del state  # as `model.load_state_dict(torch.load(path))` drops it: not alive while the model is optimised
    model.eval()
    if provider == "ours-optimized":
        model = optimize_for_inference(model, inplace=True)
    if forward is None:
        forward = model.decode
    return model, forward


def _memory_worker(spec_path):
    """One (model, provider) in this fresh process: build, reset the peak, run the calls, record."""
    from benchmarks.peak_rss import current_rss_bytes, peak_rss_bytes, reset_peak

    with open(spec_path) as f:
        spec = json.load(f)
    torch.set_num_threads(spec["threads"])
    device = spec["device"]
    model, forward = _build_for_memory(spec["model"], spec["provider"], spec["weights"], spec.get("onnx"))
    if model is not None:
        model.to(device)
    x = torch.load(spec["input"], weights_only=True).to(device)
    gc.collect()  # the loaded state_dict is gone; what remains is the model, the input and the libraries
    mib = 2.0 ** 20
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        after_build = torch.cuda.memory_allocated()
        measure = "cuda max_memory_allocated over the calls, reset after building"
    else:
        after_build = current_rss_bytes()
        build_peak = peak_rss_bytes()
        exact = reset_peak()
        measure = ("peak RSS over the calls (VmHWM reset after building)" if exact else
                   "lifetime peak RSS (VmHWM; clear_refs refused, the build is included)")
    with torch.no_grad():
        for _ in range(spec["calls"]):
            out = forward(x)
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = peak_rss_bytes()
    torch.save(out.cpu(), spec["output"])
    result = {"measure": measure, "after_build_mib": round(after_build / mib, 1), "peak_mib": round(peak / mib, 1),
              "build_peak_mib": None if device == "cuda" else round(build_peak / mib, 1),
              "growth_mib": round((peak - after_build) / mib, 1), "output": spec["output"]}
    tmp = spec["result"] + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, spec["result"])


def saved_bytes(name, batch=2, size=(256, 512)):
    """(ours, reference) bytes autograd keeps for backward of the training loss, each storage counted once."""
    name = resolve_models([name])[0]
    model = short_name(name)
    torch.manual_seed(0)
    ref, kind, _, ours = build_pair(name)
    ref.train()
    ours.train()
    img = torch.rand(batch, 3, *size) * 255
    labels = torch.randint(0, ours.num_classes, (batch, *size))
    ours_b = saved_storage_bytes(lambda: ours.sum_losses(ours.loss(img, labels)))
    if kind == "mmseg":
        from mmengine.structures import PixelData
        from mmseg.structures import SegDataSample

        samples = []
        for lab in labels:
            s = SegDataSample(metainfo=dict(img_shape=size))
            s.gt_sem_seg = PixelData(data=lab[None])
            samples.append(s)
        x = (img - MEAN) / STD
        ref_b = saved_storage_bytes(lambda: sum(v for k, v in ref.loss(x, samples).items() if "loss" in k))
    else:
        ref_b = saved_storage_bytes(lambda: ref.sum_losses(ref.loss(img, labels)))
    report.add("models", {"bench": "train_saved_bytes", "model": name, "input": f"{batch}x3x{size[0]}x{size[1]}",
                          "provider": f"ours/{kind}", "ours_bytes": ours_b, "reference_bytes": ref_b,
                          "ratio": round(ours_b / ref_b, 4)})
    _progress(f"{model} train {batch}x3x{size[0]}x{size[1]}: bytes saved for backward ours {ours_b / 2**20:.0f} "
              f"MiB, {kind} {ref_b / 2**20:.0f} MiB, ratio {ours_b / ref_b:.3f}")
    del ours, ref
    gc.collect()
    return ours_b, ref_b


PROG = "python -m benchmarks.models"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["deeplabv3"],
                        help="'all', <head>-<dataset> (fcn|pspnet|deeplabv3|deeplabv3plus - cityscapes|ade20k), a "
                             "bare head (its Cityscapes config) or a config name (default: deeplabv3)")
    parser.add_argument("--size", nargs=2, type=report.positive_int, default=None, metavar=("H", "W"),
                        help="input size (default: each config's crop size)")
    parser.add_argument("--compile", action="store_true", help="also torch.compile (freezing) both models")
    parser.add_argument("--providers", nargs="+", choices=PROVIDERS, default=None, metavar="PROVIDER",
                        help=f"which providers run, of {', '.join(PROVIDERS)} (default: mmseg ours ours-optimized, "
                             "and the -compiled ones with --compile)")
    parser.add_argument("--rounds", type=report.positive_int, default=None,
                        help="timed iterations (default 5 on CPU, 200 on CUDA)")
    parser.add_argument("--warmup", type=report.non_negative_int, default=5,
                        help="warm-up iterations per provider (mmseg: 5)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--peak-memory", action=argparse.BooleanOptionalAction, default=True,
                        help="peak memory of inference, one process per model and provider (default on)")
    parser.add_argument("--memory-calls", type=report.positive_int, default=2,
                        help="inference calls in each memory process")
    parser.add_argument("--memory", action="store_true", help="also count bytes saved for backward in training")
    parser.add_argument("--threads", type=report.positive_int, default=None)
    parser.add_argument("--results-dir", default=None, help="where models.csv goes (default benchmarks/results)")
    report.add_overwrite_argument(parser)
    parser.add_argument("--memory-worker", metavar="SPEC", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_worker:
        return args
    try:
        args.models = resolve_models(args.models)
    except ValueError as exc:
        parser.error(str(exc))
    args.results_dir = report.check_output_folder(parser, args.results_dir, "--results-dir",
                                                  [report.csv_name("models")], args.overwrite)
    if args.providers is None:
        args.providers = default_providers(args.compile)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    elif args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available here")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.memory_worker:
        _memory_worker(args.memory_worker)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        for name in args.models:
            bench_model(name, args.size, compile=args.compile, rounds=args.rounds, warmup=args.warmup,
                        device=args.device, peak_memory=args.peak_memory, memory_calls=args.memory_calls,
                        providers=args.providers)
            if args.memory:
                saved_bytes(name, size=tuple(args.size) if args.size else crop_size(name))
    except KeyboardInterrupt:
        return report.interrupted(PROG, args.results_dir)
    report.flush(args.results_dir)
    for line in report.summary_lines():
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
