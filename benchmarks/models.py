"""Model-level benchmark: the segmenters of mmseg's ResNeSt table, mmseg's model against ours, side by side in one
process, with the same weights (mmseg's random init copied into ours with strict=True) and the same input.

Providers (eval forward, batch 1, no grad):
  mmseg                mmseg 1.2.2's model (the reference; our `reference` backend stands in if mmseg is absent)
  ours                 ours in eager mode, fused split attention
  ours-optimized       resnest_fast.optimize_for_inference(ours): BN folded, post-ops, prepacked convs
  mmseg-compiled       torch.compile of mmseg's model with torch._inductor.config.freezing = True
  ours-compiled        the same compile of ours
Timing follows mmseg's method scaled to a CPU (a few seconds per forward): warm-up calls, then timed calls with
perf_counter (torch.cuda.synchronize on GPU); the providers take turns round by round so that a change in the
machine's load hits all of them alike, and medians are compared. Every provider's logits are checked against
mmseg's before any timing. Train mode: the bytes autograd keeps for backward (each storage once) for the loss of
a batch, ours / mmseg.

    python -m benchmarks.models --models deeplabv3 --size 256 512 --compile      # the issue's figure
    python -m benchmarks.models --models fcn pspnet deeplabv3 deeplabv3plus      # eager + optimized, all heads
"""
import argparse
import copy
import gc
import statistics
import time
import warnings

import torch

from benchmarks import report
from benchmarks.memory import saved_storage_bytes

HEAD_CONFIGS = {
    "fcn": "resnest_s101-d8_fcn_4xb2-80k_cityscapes-512x1024",
    "pspnet": "resnest_s101-d8_pspnet_4xb2-80k_cityscapes512x1024",
    "deeplabv3": "resnest_s101-d8_deeplabv3_4xb2-80k_cityscapes-512x1024",
    "deeplabv3plus": "resnest_s101-d8_deeplabv3plus_4xb2-80k_cityscapes-512x1024",
}
MEAN = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
STD = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)


def reference_model(name):
    """(model, kind, forward): mmseg's model for config `name` if mmseg is installed, else ours on the pure-PyTorch
    reference backend. `forward(x)` takes the normalised input and returns the decode logits."""
    from resnest_fast.training import build_segmentor, load_config

    cfg = load_config(name)["model"]
    try:
        from tests.mmseg_reference import _install_mmcv_ops_standin, mmseg_available

        if not mmseg_available():
            raise ImportError
        _install_mmcv_ops_standin()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from mmseg.registry import MODELS
            from mmseg.utils import register_all_modules

            register_all_modules()
            ref_cfg = copy.deepcopy(cfg)
            ref_cfg["backbone"]["norm_cfg"] = dict(type="BN", requires_grad=True)
            for head in ("decode_head", "auxiliary_head"):
                ref_cfg[head]["norm_cfg"] = dict(type="BN", requires_grad=True)
            ref_cfg["data_preprocessor"]["bgr_to_rgb"] = True
            model = MODELS.build(ref_cfg)
        model.eval()
        return model, "mmseg", lambda x: model(x, mode="tensor")
    except ImportError:
        model = build_segmentor(cfg, backend="reference").eval()
        return model, "reference-backend", model.decode


def build_pair(name):
    from resnest_fast.training import build_segmentor, load_config

    ref, kind, ref_forward = reference_model(name)
    ours = build_segmentor(load_config(name)["model"])
    ours.load_state_dict(ref.state_dict(), strict=True)
    ours.eval()
    return ref, kind, ref_forward, ours


def _compiled(fn):
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    return torch.compile(fn)


def time_providers(providers, x, warmup=2, rounds=5):
    """{name: [seconds per call]}: each provider warmed up, then one call each per round, round-robin."""
    times = {name: [] for name in providers}
    with torch.no_grad():
        for name, fn in providers.items():
            for _ in range(warmup):
                fn(x)
        for _ in range(rounds):
            for name, fn in providers.items():
                if x.is_cuda:
                    torch.cuda.synchronize()
                t = time.perf_counter()
                fn(x)
                if x.is_cuda:
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - t)
    return times


def bench_model(head, size=(256, 512), compile=False, rounds=5, warmup=2, check_tol=1e-3):
    """Times the providers for one model; returns {provider: median seconds} and adds CSV rows."""
    from resnest_fast import optimize_for_inference

    name = HEAD_CONFIGS[head]
    torch.manual_seed(0)
    ref, kind, ref_forward, ours = build_pair(name)
    img = torch.rand(1, 3, *size) * 255
    x = (img - MEAN) / STD
    providers = {kind: ref_forward, "ours": ours.decode}
    fast = optimize_for_inference(ours)
    providers["ours-optimized"] = fast.decode
    compile_s = {}
    if compile:
        for label, fn in ((f"{kind}-compiled", ref_forward), ("ours-compiled", ours.decode)):
            t = time.perf_counter()
            compiled = _compiled(fn)
            with torch.no_grad():
                compiled(x)
            compile_s[label] = time.perf_counter() - t
            providers[label] = compiled
    with torch.no_grad():
        want = ref_forward(x)
        for label, fn in providers.items():
            err = (fn(x) - want).abs().max().item()
            if err > check_tol * max(1.0, want.abs().max().item()):
                raise AssertionError(f"{head} {label}: logits differ from {kind}'s by {err:.3g}; not timing")
    times = time_providers(providers, x, warmup=warmup, rounds=rounds)
    medians = {k: statistics.median(v) for k, v in times.items()}
    for label, ts in times.items():
        report.add("models", {"bench": "eval_forward", "model": name, "input": f"1x3x{size[0]}x{size[1]}",
                              "provider": label, "median_s": round(medians[label], 4), "min_s": round(min(ts), 4),
                              "rounds": len(ts), "fps": round(1 / medians[label], 3),
                              "speedup_vs_reference": round(medians[kind] / medians[label], 3),
                              "compile_s": round(compile_s.get(label, 0.0), 1)})
    parts = [f"{k} {v:.3f}s ({medians[kind] / v:.2f}x)" for k, v in medians.items()]
    if compile:
        parts.append(f"ours-compiled vs {kind}-compiled {medians[f'{kind}-compiled'] / medians['ours-compiled']:.2f}x")
    report.note(f"{head} eval 1x3x{size[0]}x{size[1]}: " + ", ".join(parts))
    del providers, fast, ours, ref
    torch._dynamo.reset()  # the compiled graphs hold frozen copies of every weight
    gc.collect()
    return medians


def saved_bytes(head, batch=2, size=(256, 512)):
    """(ours, reference) bytes autograd keeps for backward of the training loss, each storage counted once."""
    name = HEAD_CONFIGS[head]
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
    report.note(f"{head} train {batch}x3x{size[0]}x{size[1]}: bytes saved for backward ours {ours_b / 2**20:.0f} MiB, "
                f"{kind} {ref_b / 2**20:.0f} MiB, ratio {ours_b / ref_b:.3f}")
    del ours, ref
    gc.collect()
    return ours_b, ref_b


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["deeplabv3"], choices=sorted(HEAD_CONFIGS))
    parser.add_argument("--size", nargs=2, type=int, default=[256, 512], metavar=("H", "W"))
    parser.add_argument("--compile", action="store_true", help="also torch.compile (freezing) both models")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--memory", action="store_true", help="also count bytes saved for backward in training")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    for head in args.models:
        bench_model(head, tuple(args.size), compile=args.compile, rounds=args.rounds, warmup=args.warmup)
        if args.memory:
            saved_bytes(head)
    report.flush()
    for line in report.summary_lines():
        print(line)


if __name__ == "__main__":
    main()
