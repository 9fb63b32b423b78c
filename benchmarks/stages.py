"""Where the forward's time goes, stage by stage: mmseg eager, ours eager and ours optimized (optimize_for_inference)
with the same weights, side by side in one process, CPU.

Each provider's eval forward (normalised input -> decode logits, batch 1) is timed as a whole and, in the same
calls, per part (perf_counter at each part's entry and exit, around the part's forward; microseconds against parts
of milliseconds). Parts, by mmseg's module names (ours keeps them):
  backbone   stem (+ maxpool), layer1 .. layer4; inside the layers, summed over their blocks: conv1 (1x1 conv, BN,
             ReLU), conv2 (the split-attention conv: grouped 3x3 conv, BN, ReLU, pool, fc, combine), avd_layer
             (the stride's avg-pool), downsample (the shortcut), conv3 (1x1 conv, BN, residual add, ReLU), where the
             block calls them as modules (ours eager runs conv2's conv and split attention from the block, bn1 and
             its ReLU fused into the conv's input: no conv2 part there)
  head       each child of the decode head (e.g. ASPP's image_pool, aspp_modules.0 .. 3, bottleneck, conv_seg)
The auxiliary head is not run (inference). The providers take turns round by round, so that a change of the
machine's load hits them alike; a part's time is the median over the rounds of its time in that round's call.

    python -m benchmarks.stages --model deeplabv3 --size 256 512 --threads 2 --rounds 5
Rows go to benchmarks/results/stages.csv (--results-dir to change; an existing file is refused unless --overwrite);
Ctrl-C writes the models finished so far and exits 130.
"""
import argparse
import collections
import statistics
import sys
import time

import torch

from benchmarks import report

PROVIDERS = ("reference", "ours", "ours-optimized")
BLOCK_PARTS = ("conv1", "conv2", "avd_layer", "downsample", "conv3")


def _parts(model):
    """[(label, module)] of the parts timed, in forward order."""
    backbone, head = model.backbone, model.decode_head
    parts = []
    for name, child in backbone.named_children():
        if name.startswith("layer"):
            parts.append((name, child))
            for block in child:
                parts += [(f"{name}.{p}", getattr(block, p)) for p in BLOCK_PARTS
                          if getattr(block, p, None) is not None]
        else:
            parts.append(("stem" if name in ("stem", "maxpool") else f"backbone.{name}", child))
    for name, child in head.named_children():
        if isinstance(child, (torch.nn.ModuleList, torch.nn.Sequential)) and name.endswith("modules"):
            parts.append((f"head.{name}", child))  # called as a whole? its children are timed as well
            parts += [(f"head.{name}.{i}", c) for i, c in enumerate(child)]
        elif any(True for _ in child.parameters()) or any(True for _ in child.buffers()):
            parts.append((f"head.{name}", child))
    return parts


class StageTimer:
    """Adds each part's wall time to `times[label]` (parts of one label, such as the blocks' conv1, add up);
    `reset()` between calls. It wraps each part's `forward` on the instance rather than registering forward hooks:
    a hook changes what the optimized model runs (its blocks then stop writing into their inputs, since a hook
    could keep the tensor it sees)."""

    def __init__(self, model):
        self.times = collections.defaultdict(float)
        self.wrapped = []
        for label, module in _parts(model):
            if "forward" in vars(module):  # a part listed twice (a module under two labels) is timed once
                continue
            module.forward = self._timed(module.forward, label)
            self.wrapped.append(module)

    def _timed(self, forward, label):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            out = forward(*args, **kwargs)
            self.times[label] += time.perf_counter() - start
            return out
        return timed

    def reset(self):
        self.times.clear()

    def remove(self):
        for module in self.wrapped:
            del module.forward


def build(name, providers):
    """{provider label: (model, forward)} with the same weights (ours loads the reference's state_dict)."""
    from benchmarks.models import build_pair
    from resnest_fast import optimize_for_inference

    ref, kind, ref_forward, ours = build_pair(name)
    out = {}
    if "reference" in providers:
        out[kind] = (ref, ref_forward)
    if "ours" in providers:
        out["ours"] = (ours, ours.decode)
    if "ours-optimized" in providers:
        fast = optimize_for_inference(ours)
        out["ours-optimized"] = (fast, fast.decode)
    return out


def measure(models, x, rounds, warmup):
    """{provider: (median total s, {part: median s})}."""
    timers = {k: StageTimer(m) for k, (m, _) in models.items()}
    totals = collections.defaultdict(list)
    parts = collections.defaultdict(lambda: collections.defaultdict(list))
    with torch.no_grad():
        for _ in range(warmup):
            for k, (_, fwd) in models.items():
                fwd(x)
        for _ in range(rounds):
            for k, (_, fwd) in models.items():
                timers[k].reset()
                t = time.perf_counter()
                fwd(x)
                totals[k].append(time.perf_counter() - t)
                for label, s in timers[k].times.items():
                    parts[k][label].append(s)
    for t in timers.values():
        t.remove()
    return {k: (statistics.median(totals[k]), {p: statistics.median(v) for p, v in parts[k].items()})
            for k in models}


PROG = "python -m benchmarks.stages"


def parse_args(argv=None):
    from benchmarks.models import resolve_models

    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    report.add_model_and_size(parser)
    parser.add_argument("--threads", type=report.positive_int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--rounds", type=report.positive_int, default=5)
    parser.add_argument("--warmup", type=report.non_negative_int, default=2)
    parser.add_argument("--providers", nargs="+", choices=PROVIDERS, default=list(PROVIDERS))
    parser.add_argument("--results-dir", default=None, help="where stages.csv goes (default benchmarks/results)")
    report.add_overwrite_argument(parser)
    args = parser.parse_args(argv)
    try:
        args.models = resolve_models([args.model], flag="--model")
    except ValueError as exc:
        parser.error(str(exc))
    args.results_dir = report.check_output_folder(parser, args.results_dir, "--results-dir",
                                                  [report.csv_name("stages")], args.overwrite)
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        for name in args.models:
            bench_model(name, args)
    except KeyboardInterrupt:
        return report.interrupted(PROG, args.results_dir)
    report.flush(args.results_dir)
    return 0


def bench_model(name, args):
    """Times config `name`'s providers stage by stage, prints the table and adds its rows."""
    from benchmarks.models import MEAN, STD

    torch.manual_seed(0)
    models = build(name, args.providers)
    x = (torch.rand(1, 3, *args.size) * 255 - MEAN) / STD
    results = measure(models, x, args.rounds, args.warmup)
    labels = list(dict.fromkeys(p for _, parts in results.values() for p in parts))
    shape = f"1x3x{args.size[0]}x{args.size[1]}"
    print(f"{name} {shape}, {torch.get_num_threads()} threads, median of {args.rounds} rounds (ms)")
    print(f"{'part':28s}" + "".join(f"{k:>18s}" for k in results))
    for label in ["total"] + labels:
        cells = []
        for k, (total, parts) in results.items():
            s = total if label == "total" else parts.get(label)
            cells.append(f"{'-':>18s}" if s is None else f"{s * 1e3:12.1f} {s / total:4.0%}")
            if s is not None:
                report.add("stages", {"bench": "stages", "model": name, "input": shape, "provider": k,
                                      "threads": torch.get_num_threads(), "rounds": args.rounds, "part": label,
                                      "median_ms": round(s * 1e3, 2), "share": round(s / total, 4)})
        print(f"{label:28s}" + "".join(cells))


if __name__ == "__main__":
    sys.exit(main())
