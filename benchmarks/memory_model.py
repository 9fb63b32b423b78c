"""Memory-traffic model of split attention after the conv: mmseg's eager op sequence vs the fused path.

A MODEL, NOT A MEASUREMENT: no GPU was measured. For every split-attention block of ResNeSt-101-D8 at an input
size (benchmarks/stage_shapes.resnest101_d8_blocks), it counts the bytes each op of the post-conv part reads and
writes, op by op, as ATen runs it:

- eager (mmseg's SplitAttentionConv2d after self.conv): bn0 -> relu -> view/sum -> adaptive_avg_pool -> fc1 ->
  bn1 -> relu -> fc2 -> rSoftMax -> mul -> sum; in training also the backward ops autograd runs (each re-reads
  the tensors it saved: relu's output, bn0's input, the splits).
- fused (resnest_fast.nn.SplitAttentionConv2d): inference = bn0 folded to (scale, shift) on K-sized vectors,
  splat_pool (reads y once), the attention MLP, splat_combine (reads y once, writes the half-size output);
  training = splat_bn_stats (one read of y) + the same forward, then the module's two-pass backward:
  splat_backward_reduce (reads grad_out and y) and splat_backward_input (reads grad_out and y, writes grad_y
  once), the small MLP / scale-shift gradients in between.

Conventions (the same as the test's independent counter, tests/benchmarks/test_memory_model.py, which sums the
input and output bytes of every aten / resnest_fast op under a TorchDispatchMode):
- an op reads each input tensor once and writes each output once (a view moves nothing; a broadcast operand
  counts its distinct elements). Real kernels can do more: BatchNorm's training forward and backward read their
  input twice (statistics, then the apply pass), which this model does not charge to eager.
- training = forward + torch.autograd.grad of y and the block's parameters (no .grad accumulation).
- all tensors are `dtype_bytes` wide, except int64 step counters and the fused kernels' float32 statistics.
"map" bytes are those of (.., H, W) tensors; "small" bytes the per-channel / per-sample rest (the MLP and
BatchNorm vectors: negligible, but counted).

Time implied = bytes / bandwidth (default 3.35e12 B/s, an H100 SXM's HBM3 peak): a floor set by memory traffic
alone, assuming every op streams at peak and nothing stays in cache.

    python -m benchmarks.memory_model [--bandwidth 3.35e12] [--size 512 1024 --size 1024 2048] [--batch 1]
                                      [--dtype-bytes 4] [--output benchmarks/results/memory-model.csv]
                                      [--overwrite]   (an existing --output is refused without it)
"""
import argparse
import os
import sys
from dataclasses import dataclass
from typing import List

from benchmarks import report
from benchmarks.stage_shapes import Block, distinct_blocks, resnest101_d8_blocks

LABEL = "model, not a measurement; no GPU was measured"

# ------------------------------------------------------------------------------------------------ op counting


@dataclass
class Op:
    name: str
    map_read: int = 0
    map_write: int = 0
    small_read: int = 0
    small_write: int = 0

    @property
    def total(self) -> int:
        return self.map_read + self.map_write + self.small_read + self.small_write


class _Counter:
    """Builds the op list of one block: sizes in elements, converted to bytes with the block's dtype."""

    def __init__(self, block: Block, dtype_bytes: int):
        b, k, h, w = block.y_shape
        self.d = dtype_bytes
        self.stats = max(4, dtype_bytes)  # the fused kernels' float32 (float64 for double) statistics
        self.B, self.K, self.C, self.I, self.P = b, k, block.channels, block.inter_channels, h * w
        self.R, self.G = block.radix, block.groups
        self.Y = b * k * h * w  # y, its activation, its gradient
        self.O = b * block.channels * h * w  # the output (half of Y at radix 2)
        self.ops: List[Op] = []

    def op(self, name, map_read=(), map_write=(), small_read=(), small_write=(), small_bytes=None):
        sb = self.d if small_bytes is None else small_bytes
        self.ops.append(Op(name, sum(map_read) * self.d, sum(map_write) * self.d, sum(small_read) * sb,
                           sum(small_write) * sb))

    def counter_step(self):  # num_batches_tracked += 1 (int64)
        self.op("add_ (num_batches_tracked)", small_read=[1], small_write=[1], small_bytes=8)


def eager_inference_ops(block: Block, dtype_bytes: int = 4) -> List[Op]:
    """mmseg's post-conv forward in eval mode, no grad (benchmarks.providers.eager_post_conv)."""
    c = _Counter(block, dtype_bytes)
    B, K, C, Y, O = c.B, c.K, c.C, c.Y, c.O
    c.op("bn0 (native_batch_norm, running stats)", [Y], [Y], [K] * 4)
    c.op("relu", [Y], [Y])
    if c.R > 1:
        c.op("sum over splits", [Y], [O])
    c.op("adaptive_avg_pool (mean)", [O], small_write=[B * C])
    _eager_mlp_forward(c, train=False)
    c.op("rsoftmax (softmax)" if c.R > 1 else "rsoftmax (sigmoid)", small_read=[B * K], small_write=[B * K])
    c.op("mul attention * splits", [Y], [Y], [B * K])
    if c.R > 1:
        c.op("sum over splits", [Y], [O])
    return c.ops


def _eager_mlp_forward(c: _Counter, train: bool):
    B, K, C, I, G = c.B, c.K, c.C, c.I, c.G
    c.op("fc1 (1x1 conv)", small_read=[B * C, I * C // G, I], small_write=[B * I])
    if train:
        c.counter_step()
        c.op("bn1 (native_batch_norm, batch stats)", small_read=[B * I] + [I] * 4, small_write=[B * I, I, I])
    else:
        c.op("bn1 (native_batch_norm, running stats)", small_read=[B * I] + [I] * 4, small_write=[B * I])
    c.op("relu", small_read=[B * I], small_write=[B * I])
    c.op("fc2 (1x1 conv)", small_read=[B * I, K * I // G, K], small_write=[B * K])


def _fused_linear(c: _Counter, name: str, n_in: int, n_out: int):
    """_grouped_linear: addmm for groups == 1; bmm, the copy of its transposed result, and the bias add else."""
    B, G = c.B, c.G
    if G == 1:
        c.op(f"{name} (addmm)", small_read=[n_out, B * n_in, n_out * n_in], small_write=[B * n_out])
    else:
        c.op(f"{name} (bmm)", small_read=[B * n_in, n_out * n_in // G], small_write=[B * n_out])
        c.op(f"{name} (reshape copy)", small_read=[B * n_out], small_write=[B * n_out])
        c.op(f"{name} (bias add)", small_read=[B * n_out, n_out], small_write=[B * n_out])


def fused_inference_ops(block: Block, dtype_bytes: int = 4) -> List[Op]:
    """SplitAttentionConv2d.attend in eval mode, no grad: bn0 folded per call, then the two fused ops."""
    c = _Counter(block, dtype_bytes)
    B, K, C, I, Y, O = c.B, c.K, c.C, c.I, c.Y, c.O
    c.op("bn0 fold: var + eps", small_read=[K], small_write=[K])
    c.op("bn0 fold: rsqrt", small_read=[K], small_write=[K])
    c.op("bn0 fold: scale = weight * invstd", small_read=[K, K], small_write=[K])
    c.op("bn0 fold: mean * scale", small_read=[K, K], small_write=[K])
    c.op("bn0 fold: shift = bias - mean * scale", small_read=[K, K], small_write=[K])
    c.op("splat_pool", [Y], [], [K, K], [B * C])
    _fused_linear(c, "fc1", C, I)
    c.op("bn1 (native_batch_norm, running stats)", small_read=[B * I] + [I] * 4, small_write=[B * I])
    c.op("relu", small_read=[B * I], small_write=[B * I])
    _fused_linear(c, "fc2", I, K)
    c.op("splat_combine", [Y], [O], [B * K, K, K])
    return c.ops


def _check_training(block: Block):
    # The network this model is for has radix 2, groups 1; radix 1 (sigmoid) and grouped MLPs take other
    # backward op sequences, which are not modelled.
    if block.radix < 2 or block.groups != 1:
        raise ValueError(f"the training model covers radix >= 2 and groups == 1, got radix {block.radix}, groups "
                         f"{block.groups}")


def eager_training_ops(block: Block, dtype_bytes: int = 4) -> List[Op]:
    """mmseg's post-conv forward in training mode, then autograd's backward for y and the parameters."""
    _check_training(block)
    c = _Counter(block, dtype_bytes)
    B, K, C, I, Y, O = c.B, c.K, c.C, c.I, c.Y, c.O
    # forward
    c.counter_step()
    c.op("bn0 (native_batch_norm, batch stats)", [Y], [Y], [K] * 4, [K, K])
    c.op("relu", [Y], [Y])
    c.op("sum over splits", [Y], [O])
    c.op("adaptive_avg_pool (mean)", [O], small_write=[B * C])
    _eager_mlp_forward(c, train=True)
    c.op("rsoftmax (softmax)", small_read=[B * K], small_write=[B * K])
    c.op("mul attention * splits", [Y], [Y], [B * K])
    c.op("sum over splits", [Y], [O])
    # backward (grad_out is broadcast over the splits: O distinct elements)
    c.op("bwd sum+mul: grad_splits = grad * attention", [O], [Y], [B * K])
    c.op("bwd mul: grad * splits (for the attention)", [O, Y], [Y])
    c.op("bwd mul: reduce to the attention's shape", [Y], [], [], [B * K])
    c.op("bwd softmax", small_read=[B * K, B * K], small_write=[B * K])
    c.op("bwd fc2 (convolution_backward)", small_read=[B * K, B * I, K * I], small_write=[B * I, K * I, K])
    c.op("bwd relu (threshold_backward)", small_read=[B * I, B * I], small_write=[B * I])
    c.op("bwd bn1 (native_batch_norm_backward)", small_read=[B * I, B * I] + [I] * 5, small_write=[B * I, I, I])
    c.op("bwd fc1 (convolution_backward)", small_read=[B * I, B * C, I * C], small_write=[B * C, I * C, I])
    c.op("bwd mean (expand / (H*W))", [], [O], [B * C])
    c.op("bwd sum over splits: accumulate both paths", [Y, O], [Y])
    c.op("bwd relu (threshold_backward)", [Y, Y], [Y])
    c.op("bwd bn0 (native_batch_norm_backward)", [Y, Y], [Y], [K] * 5, [K, K])
    return c.ops


def fused_training_ops(block: Block, dtype_bytes: int = 4) -> List[Op]:
    """SplitAttentionConv2d.attend in training mode (_FusedSplitAttention), then its two-pass backward."""
    _check_training(block)
    c = _Counter(block, dtype_bytes)
    B, K, C, I, Y, O, S = c.B, c.K, c.C, c.I, c.Y, c.O, c.stats
    def vec(name, inputs=1, n=K):
        c.op(name, small_read=[n] * inputs, small_write=[n])

    # forward: bn0's batch statistics in one read of y, running statistics updated as BatchNorm does
    c.ops.append(Op("splat_bn_stats", map_read=Y * c.d, small_write=2 * K * S))
    vec("var + eps"), vec("rsqrt")
    c.counter_step()
    vec("running_mean.lerp_", 2), vec("var * n/(n-1)"), vec("running_var.lerp_", 2)
    vec("scale = weight * invstd", 2), vec("mean * scale", 2), vec("shift = bias - mean * scale", 2)
    c.op("splat_pool", [Y], [], [K, K], [B * C])
    _fused_linear(c, "fc1", C, I)
    c.counter_step()
    c.op("bn1 (native_batch_norm, batch stats)", small_read=[B * I] + [I] * 4, small_write=[B * I, I, I])
    c.op("relu", small_read=[B * I], small_write=[B * I])
    _fused_linear(c, "fc2", I, K)
    c.op("splat_combine", [Y], [O], [B * K, K, K])
    # backward pass 1: grad_logits, the combine's scale/shift gradients, per-channel sums for the pool's
    c.ops.append(Op("splat_backward_reduce", map_read=(O + Y) * c.d, small_read=(B * K + 2 * K) * c.d,
                    small_write=(B * K + 2 * K) * c.d + 2 * B * K * S))
    # the attention MLP recomputed from gap, and its gradients
    _fused_linear(c, "fc1 (recomputed)", C, I)
    c.op("bn1 (recomputed, batch stats)", small_read=[B * I, I, I], small_write=[B * I, I, I])
    c.op("relu (recomputed)", small_read=[B * I], small_write=[B * I])
    _fused_linear(c, "fc2 (recomputed)", I, K)
    c.op("bwd fc2: grad input (mm)", small_read=[B * K, K * I], small_write=[B * I])
    c.op("bwd fc2: grad weight (mm)", small_read=[B * K, B * I], small_write=[K * I])
    c.op("bwd fc2: grad bias (sum)", small_read=[B * K], small_write=[K])
    c.op("bwd relu (threshold_backward)", small_read=[B * I, B * I], small_write=[B * I])
    c.op("bwd bn1 (native_batch_norm_backward)", small_read=[B * I, B * I, I, I, I], small_write=[B * I, I, I])
    c.op("bwd fc1: grad input (mm)", small_read=[B * I, I * C], small_write=[B * C])
    c.op("bwd fc1: grad weight (mm)", small_read=[B * I, B * C], small_write=[I * C])
    c.op("bwd fc1: grad bias (sum)", small_read=[B * I], small_write=[I])
    # the pool's part of the scale/shift gradients
    vec("grad_gap / (H*W)", 1, B * C)
    c.op("repeat over splits", small_read=[B * C], small_write=[B * K])
    for which in ("scale", "shift"):
        c.ops.append(Op(f"grad_gap * m (for {which})", small_read=B * K * c.d + B * K * S, small_write=B * K * c.d))
        c.op(f"sum over batch (for {which})", small_read=[B * K], small_write=[K])
        vec(f"d{which} += pool's part", 2)
    # bn0's (scale, shift) recomputed from (weight, bias, var, mean), and its gradient
    vec("var + eps"), vec("rsqrt"), vec("scale", 2), vec("mean * scale", 2), vec("shift", 2)
    for name, n_in in (("neg", 1), ("mul", 2), ("mul", 2), ("add", 2), ("mul", 2), ("mul", 2), ("pow", 1),
                       ("mul (scalar)", 1), ("mul", 2)):
        vec(f"bwd bn0 (scale, shift): {name}", n_in)
    vec("coef_a = 2/n * d var"), vec("d mean / n"), vec("coef_a * mean", 2), vec("coef_b", 2)
    # backward pass 2: grad_y written once
    c.op("splat_backward_input", [O, Y], [Y], [B * C, B * K, K, K, K, K])
    return c.ops


MODES = {
    "inference": (eager_inference_ops, fused_inference_ops),
    "training": (eager_training_ops, fused_training_ops),
}


def total_bytes(ops: List[Op]) -> int:
    return sum(op.total for op in ops)


def map_bytes(ops: List[Op]) -> int:
    return sum(op.map_read + op.map_write for op in ops)


# ------------------------------------------------------------------------------------------------------- CLI


def model_rows(sizes, batch=1, dtype_bytes=4, bandwidth=3.35e12):
    """Per size: one block of each distinct shape, each stage, and the total; bytes and implied time of eager and
    fused, inference and training."""
    rows = []
    for height, width in sizes:
        blocks = resnest101_d8_blocks(batch, height, width)
        groups = {f"one {label} block": [b] for label, b, _count in distinct_blocks(blocks)}
        for blk in blocks:
            groups.setdefault(blk.stage, []).append(blk)
        groups["total"] = blocks
        for stage, members in groups.items():
            row = {"kind": LABEL, "input": f"{batch}x3x{height}x{width}", "dtype_bytes": dtype_bytes,
                   "bandwidth_Bps": f"{bandwidth:.4g}", "stage": stage, "blocks": len(members),
                   "y_shapes": " ".join(sorted({"x".join(map(str, b.y_shape)) for b in members}))}
            for mode, (eager_fn, fused_fn) in MODES.items():
                e = sum(total_bytes(eager_fn(b, dtype_bytes)) for b in members)
                f = sum(total_bytes(fused_fn(b, dtype_bytes)) for b in members)
                row[f"{mode}_eager_bytes"] = e
                row[f"{mode}_fused_bytes"] = f
                row[f"{mode}_eager_us"] = round(e / bandwidth * 1e6, 2)
                row[f"{mode}_fused_us"] = round(f / bandwidth * 1e6, 2)
                row[f"{mode}_ratio"] = round(e / f, 3)
            rows.append(row)
    return rows


def format_table(rows) -> List[str]:
    lines = [f"Split attention after the conv, ResNeSt-101-D8: bytes moved (MiB) and the time they imply (ms) at "
             f"{float(rows[0]['bandwidth_Bps']) / 1e12:.2f} TB/s. {LABEL.upper()}.",
             f"{'input':>13} {'':>20} {'blocks':>6} | {'inference: eager':>22} {'fused':>20} {'ratio':>6} | "
             f"{'training: eager':>22} {'fused':>20} {'ratio':>6}"]

    def cell(nbytes, us):
        return f"{nbytes / 2**20:9.1f} MiB {us / 1e3:6.3f} ms"

    for r in rows:
        lines.append(
            f"{r['input']:>13} {r['stage']:>20} {r['blocks']:>6} | "
            f"{cell(r['inference_eager_bytes'], r['inference_eager_us']):>22} "
            f"{cell(r['inference_fused_bytes'], r['inference_fused_us']):>20} {r['inference_ratio']:>5.2f}x | "
            f"{cell(r['training_eager_bytes'], r['training_eager_us']):>22} "
            f"{cell(r['training_fused_bytes'], r['training_fused_us']):>20} {r['training_ratio']:>5.2f}x")
    return lines


def write_csv(rows, path):
    from benchmarks.report import git_revision, write_csv as write_rows

    rev = git_revision()
    write_rows(path, ["git"] + list(rows[0]), ({"git": rev, **row} for row in rows))


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.memory_model",
        description="Memory-traffic model of ResNeSt-101-D8's split attention (eager mmseg vs fused). " + LABEL,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bandwidth", type=report.positive_float, default=3.35e12,
                        help="memory bandwidth in bytes/s for the implied time (default 3.35e12, H100 SXM HBM3)")
    parser.add_argument("--size", nargs=2, type=report.positive_int, action="append", metavar=("H", "W"),
                        help="input height and width (repeatable; default 512 1024 and 1024 2048)")
    parser.add_argument("--batch", type=report.positive_int, default=1, help="batch size (default 1)")
    parser.add_argument("--dtype-bytes", type=int, choices=(2, 4, 8), default=4,
                        help="bytes per element of activations and parameters (default 4: fp32)")
    parser.add_argument("--output", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                         "memory-model.csv"),
                        help="CSV to write (written to a temporary file, then renamed)")
    report.add_overwrite_argument(parser)
    args = parser.parse_args(argv)
    report.check_output_file(parser, args.output, "--output", args.overwrite)
    sizes = [tuple(s) for s in args.size] if args.size else [(512, 1024), (1024, 2048)]
    rows = model_rows(sizes, args.batch, args.dtype_bytes, args.bandwidth)
    for line in format_table(rows):
        print(line)
    write_csv(rows, args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
