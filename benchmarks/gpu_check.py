"""The GPU check: what `scripts/gpu_check.sh` runs on a machine with one NVIDIA GPU, and, with --dry-run, on the
CPU at tiny shapes (CI runs that, so the script cannot rot).

Steps (`python -m benchmarks.gpu_check STEP [--dry-run] [--out DIR]`; `all` runs ops, bench-ops, memory, models:
the cheap training-memory step before the four heads and their torch.compile, so a time budget cuts the latter):
  sanitize   every op once per GPU backend (CUDA kernels, then Triton's) at small odd shapes, forward and backward,
             fp32/bf16/fp16, NCHW and channels_last, and the module's training step, nothing checked: the step
             compute-sanitizer (memcheck, racecheck) runs under
  ops        correctness: splat_pool and splat_combine forward and backward (autograd) on each GPU backend (cuda,
             compiled Triton) against the reference evaluated in float64 on the CPU, fp32/bf16/fp16, NCHW,
             channels_last and truly strided inputs, small odd shapes and the stage shapes below; the module's
             training step (bn_stats and both fused backward ops) against the float64 reference backend; the Triton
             splat_conv_pool (conv + bn0 + relu + pool partials in one kernel) at the conv shapes below against its
             reference in float64 (cuDNN without tf32 for the fp32 reference's own error), and run-to-run bits.
             Rule (flash-attention's): |ours - ref64| <= 2 |torch in the same dtype - ref64| + floor * max(1, |ref64|)
  bench-ops  CUDA-event timings at the stage shapes (ResNeSt-101-D8: Cityscapes layer3 at the training batch, layer1
             of a 1024x2048 image at batch 1), fp32 and bf16: mmseg's eager code, torch.compile of it, ours per
             backend; effective GB/s and % of the device-to-device copy bandwidth measured in the same run; the
             training-only ops (bn_stats, the two backward passes) the same way against their eager references. Then
             splat_conv_pool at Cityscapes layer3 (batch 2 at 512x1024, batch 1 at 1024x2048), fp32 and bf16, NCHW
             and channels_last: the Triton kernel against cuDNN's conv alone, cuDNN + bn0/relu (writing y) + our
             splat_pool, and cuDNN + our splat_pool with bn0/relu inside (the modules' path, y never written); fp32
             cuDNN without tf32 (like the kernel's ieee fp32) and, for the conv alone, with it (PyTorch's default)
  models     whole-model fps by mmseg's method (batch 1, Cityscapes 1024x2048 whole, warm-up, timed iterations,
             synchronised) for the four heads: the reference backend, ours, ours under torch.compile; fp32 and
             bf16 autocast
  memory     one training iteration at 512x1024, batch 2: peak torch.cuda.max_memory_allocated, ours vs the
             reference backend (on the CPU, --dry-run: bytes autograd saves for backward instead)
  sweep      (not in `all`) the Triton launchers' geometry (elements per tile, programs per SM, warps) over a small
             grid at the bench-ops stage shapes, fp32 and bf16: whether the heuristic of kernels/splat.py is within
             5 % of the best time measured for each op, and which geometry beat it where not
Every row goes to CSV under --out (default $OUT, else gpu_results/) with machine, versions and git revision, and a
one-screen summary to <out>/summary.txt and stdout, ending with the goals met and missed (`goals`). Exit 1 when a
correctness check failed.
"""
import argparse
import contextlib
import functools
import os
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch

from benchmarks import report
from benchmarks.memory import saved_storage_bytes
from benchmarks.models import HEAD_CONFIGS, MEAN, STD, timed_call
from benchmarks.providers import eager_combine_op, eager_pool_op, eager_post_conv, make_block
from benchmarks.stage_shapes import Block, resnest101_d8_blocks
from resnest_fast import _extension as ext
from resnest_fast.backend import available_backends
from resnest_fast.ops import (
    splat_backward_input,
    splat_backward_input_reference,
    splat_backward_reduce,
    splat_backward_reduce_reference,
    splat_bn_stats,
    splat_bn_stats_reference,
    splat_combine,
    splat_combine_reference,
    splat_conv_pool,
    splat_conv_pool_reference,
    splat_pool,
    splat_pool_reference,
)
from resnest_fast.testing.tolerances import FACTOR, FLOOR

PROG = "python -m benchmarks.gpu_check"
STEPS = ("sanitize", "ops", "bench-ops", "memory", "models", "sweep")
ALL_STEPS = ("ops", "bench-ops", "memory", "models")  # `all`: sanitize runs under compute-sanitizer, sweep on request
HEADS = ("deeplabv3", "fcn", "pspnet", "deeplabv3plus")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# floor of the rule per dtype, relative to max(1, |ref64|): fp32 sums of up to ~10^5 terms in another order
ERROR_FLOOR = {torch.float32: 1e-5, torch.bfloat16: FLOOR[torch.bfloat16], torch.float16: FLOOR[torch.float16]}


class Settings:
    """Sizes of one run: the real ones on a GPU, tiny ones on the CPU for --dry-run."""

    def __init__(self, dry_run: bool, deadline: Optional[float] = None):
        self.dry_run = dry_run
        self.deadline = deadline  # time.time() after which no further step or model starts
        self.skipped: List[str] = []  # what the deadline left out, for the summary
        self.interrupted: Optional[str] = None  # the step Ctrl-C stopped, for the summary
        self.device = torch.device("cpu" if dry_run else "cuda")
        if dry_run:
            self.small_shapes = [(2, 8, 7, 9, 2, 1), (1, 16, 5, 3, 4, 2)]  # (B, C, H, W, radix, groups)
            self.stage_shapes = {"tiny-stage": Block("tiny", 2, 16, 24, 40)}
            self.image, self.train_image, self.train_batch = (64, 128), (64, 128), 2
            self.warmup, self.iters, self.op_iters = 1, 2, 3
            self.conv_shapes = {"tiny-conv": Block("tiny-conv", 1, 8, 5, 9, dilation=2)}
        else:
            self.small_shapes = [(2, 8, 7, 9, 2, 1), (1, 16, 5, 3, 4, 2), (2, 32, 33, 65, 2, 1), (1, 8, 1, 1, 1, 1)]
            city = resnest101_d8_blocks(2, 512, 1024)
            big = resnest101_d8_blocks(1, 1024, 2048)
            self.stage_shapes = {"city-layer3": next(b for b in city if b.stage == "layer3"),
                                 "2048-layer1": next(b for b in big if b.stage == "layer1")}
            self.image, self.train_image, self.train_batch = (1024, 2048), (512, 1024), 2
            self.warmup, self.iters, self.op_iters = 5, 50, 20
            # layer3's repeated blocks (dilation 2): x (B, 256, H, W) -> y (B, 512, H, W), conv groups 2
            self.conv_shapes = {"city-layer3": next(b for b in city if b.stage == "layer3" and b.index > 0),
                                "2048-layer3": next(b for b in big if b.stage == "layer3" and b.index > 0)}

    def out_of_time(self, what: str) -> bool:
        """Whether the deadline has passed; if so `what` is recorded as skipped."""
        if self.deadline is None or time.time() < self.deadline:
            return False
        self.skipped.append(what)
        return True

    def backends(self) -> List[str]:
        """The fused backends under test: on a GPU cuda and Triton (compiled, never the interpreter); on the CPU the
        C++ kernels, and Triton only where TRITON_INTERPRET=1 was set before resnest_fast was imported."""
        return [b for b in available_backends(self.device.type) if b != "reference"]


# ------------------------------------------------------------------------------------------------ helpers


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _layouts(x: torch.Tensor, layout: str) -> torch.Tensor:
    """x in `layout`: NCHW, channels_last, or a strided view (every other column of a tensor twice as wide)."""
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "strided":
        b, c, h, w = x.shape
        wide = torch.empty_strided((b, c, h, 2 * w), (c * h * 2 * w, h * 2 * w, 2 * w, 1), dtype=x.dtype,
                                   device=x.device)
        view = wide[..., ::2]
        view.copy_(x)
        return view
    return x.contiguous()


def _inputs(shape, dtype, device, seed=0):
    b, c, h, w, radix, groups = shape
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, radix * c, h, w, generator=gen)
    logits = torch.randn(b, radix * c, generator=gen)
    scale = torch.rand(radix * c, generator=gen) + 0.5
    shift = torch.randn(radix * c, generator=gen) * 0.5
    grad_gap = torch.randn(b, c, generator=gen)
    grad_out = torch.randn(b, c, h, w, generator=gen)
    return {k: v.to(device, dtype) for k, v in dict(x=x, logits=logits, scale=scale, shift=shift,
                                                    grad_gap=grad_gap, grad_out=grad_out).items()}


def _pool_and_combine(t, radix, groups, backend, layout=None):
    """Outputs and input gradients of splat_pool and splat_combine (backend None: the references)."""
    x = (_layouts(t["x"], layout) if layout else t["x"]).detach().requires_grad_(True)
    logits = t["logits"].detach().requires_grad_(True)
    scale = t["scale"].detach().requires_grad_(True)
    shift = t["shift"].detach().requires_grad_(True)
    if backend is None:
        gap = splat_pool_reference(x, scale, shift, radix=radix, relu=True)
        out = splat_combine_reference(x, logits, scale, shift, radix=radix, groups=groups, relu=True)
    else:
        gap = splat_pool(x, scale, shift, radix=radix, relu=True, backend=backend)
        out = splat_combine(x, logits, scale, shift, radix=radix, groups=groups, relu=True, backend=backend)
    loss = (gap * t["grad_gap"]).sum() + (out * t["grad_out"]).sum()
    grads = torch.autograd.grad(loss, (x, logits, scale, shift))
    return {"gap": gap, "out": out, "grad_x": grads[0], "grad_logits": grads[1], "grad_scale": grads[2],
            "grad_shift": grads[3]}


def _error(got: torch.Tensor, same: torch.Tensor, ref64: torch.Tensor, dtype) -> Tuple[float, float]:
    """(max |got - ref64|, the rule's bound), everything compared on the CPU in float64."""
    ref64 = ref64.detach().cpu().double()
    err = (got.detach().cpu().double() - ref64).abs().max().item()
    ref_err = (same.detach().cpu().double() - ref64).abs().max().item()
    return err, FACTOR * ref_err + ERROR_FLOOR[dtype] * max(1.0, ref64.abs().max().item())


# -------------------------------------------------------------------------------------------- correctness


def check_ops(s: Settings) -> List[dict]:
    """Rows of the correctness sweep; each has ok True/False."""
    rows = []
    shapes = [(f"{b}x{r * c}x{h}x{w}-r{r}g{g}", (b, c, h, w, r, g)) for b, c, h, w, r, g in s.small_shapes]
    shapes += [(name, (blk.batch, blk.channels, blk.height, blk.width, blk.radix, blk.groups))
               for name, blk in s.stage_shapes.items()]
    for backend in s.backends():
        for label, shape in shapes:
            stage = label in s.stage_shapes
            for dname, dtype in DTYPES.items():
                if stage and dname == "fp16":
                    continue
                t = _inputs(shape, dtype, s.device)
                ref64 = _pool_and_combine({k: v.cpu().double() for k, v in t.items()}, shape[4], shape[5], None)
                same = _pool_and_combine(t, shape[4], shape[5], None)
                for layout in ("nchw", "channels_last", "strided"):
                    got = _pool_and_combine(t, shape[4], shape[5], backend, layout)
                    for name in got:
                        err, bound = _error(got[name], same[name], ref64[name], dtype)
                        rows.append({"check": "op", "backend": backend, "shape": label, "dtype": dname,
                                     "layout": layout, "tensor": name, "max_err": f"{err:.3g}",
                                     "bound": f"{bound:.3g}", "ok": err <= bound})
    rows += check_module_training(s)
    rows += check_conv_pool(s)
    return rows


@contextlib.contextmanager
def _cudnn_tf32(allow: bool):
    previous = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = allow
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = previous


def _conv_inputs(blk: Block, dtype, device, layout: str, seed=0):
    """x (B, C, H, W), weight (radix*C, C/(radix*groups), 3, 3) at He scale, bn0 folded (scale, shift) in float32."""
    gen = torch.Generator().manual_seed(seed)
    k, conv_groups = blk.radix * blk.channels, blk.radix * blk.groups
    fan_in = 9 * blk.channels // conv_groups
    x = torch.randn(blk.x_shape, generator=gen)
    weight = torch.randn(k, blk.channels // conv_groups, 3, 3, generator=gen) * (2 / fan_in) ** 0.5
    scale = torch.rand(k, generator=gen) + 0.5
    shift = torch.randn(k, generator=gen) * 0.5
    x = _layouts(x.to(device, dtype), layout)
    return x, weight.to(device, dtype), scale.to(device), shift.to(device)


def check_conv_pool(s: Settings) -> List[dict]:
    """The Triton splat_conv_pool (y and gap) against its reference: float64 on the device (no tf32 in float64), and
    the same-dtype reference with cuDNN's tf32 off, so the bound is the error of a true fp32 conv."""
    if "triton" not in s.backends():
        return []
    rows = []
    for label, blk in s.conv_shapes.items():
        for dname in ("fp32", "bf16"):
            dtype = DTYPES[dname]
            for layout in ("nchw", "channels_last"):
                x, weight, scale, shift = _conv_inputs(blk, dtype, s.device, layout)
                args = (blk.radix, blk.groups, blk.dilation)
                with torch.no_grad(), _cudnn_tf32(False):
                    got = splat_conv_pool(x, weight, scale, shift, *args, backend="triton")
                    again = splat_conv_pool(x, weight, scale, shift, *args, backend="triton")
                    same = splat_conv_pool_reference(x, weight, scale, shift, *args)
                    ref64 = splat_conv_pool_reference(x.double(), weight.double(), scale.double(), shift.double(),
                                                      *args)
                base = {"check": "conv-pool", "backend": "triton", "shape": label, "dtype": dname, "layout": layout}
                for name, g, sm, r in zip(("y", "gap"), got, same, ref64):
                    err, bound = _error(g, sm, r, dtype)
                    rows.append({**base, "tensor": name, "max_err": f"{err:.3g}", "bound": f"{bound:.3g}",
                                 "ok": err <= bound})
                same_bits = all(torch.equal(a, b) for a, b in zip(got, again))
                rows.append({**base, "tensor": "y,gap run to run", "max_err": "equal" if same_bits else "differ",
                             "bound": "equal", "ok": same_bits})
                del x, got, again, same, ref64
    return rows


def check_module_training(s: Settings, backends: Optional[List[str]] = None) -> List[dict]:
    """SplitAttentionConv2d's training step (splat_bn_stats, splat_pool, splat_combine and the two fused backward
    ops, on each backend: the CUDA kernels and the Triton ones) against the reference backend in float64 on the CPU:
    output, grad of the input and of every parameter, and the updated running statistics."""
    from resnest_fast.nn import SplitAttentionConv2d

    rows = []
    for backend in backends or s.backends():
        for dname, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            for layout in ("nchw", "channels_last"):
                torch.manual_seed(0)
                ref = SplitAttentionConv2d(32, 16, 3, padding=1, radix=4, groups=2, backend="reference").double()
                ours = SplitAttentionConv2d(32, 16, 3, padding=1, radix=4, groups=2, backend=backend)
                ours.load_state_dict(ref.state_dict())
                ours = ours.to(s.device, dtype)
                same = SplitAttentionConv2d(32, 16, 3, padding=1, radix=4, groups=2, backend="reference")
                same.load_state_dict(ref.state_dict())
                same = same.to(s.device, dtype)
                gen = torch.Generator().manual_seed(1)
                x = torch.randn(2, 32, 13, 11, generator=gen)
                grad = torch.randn(2, 16, 13, 11, generator=gen)
                results = []
                for model, xd, gd in ((ref, x.double(), grad.double()),
                                      (ours, _layouts(x.to(s.device, dtype), layout), grad.to(s.device, dtype)),
                                      (same, x.to(s.device, dtype), grad.to(s.device, dtype))):
                    model.train()
                    xd = xd.detach().requires_grad_(True)
                    out = model(xd)
                    params = [p for _, p in model.named_parameters()]
                    grads = torch.autograd.grad((out * gd).sum(), [xd] + params)
                    named = {"out": out, "grad_x": grads[0]}
                    named.update({f"grad_{n}": g for (n, _), g in zip(model.named_parameters(), grads[1:])})
                    named.update({"bn0.running_mean": model.bn0.running_mean, "bn0.running_var": model.bn0.running_var})
                    results.append(named)
                for name in results[0]:
                    err, bound = _error(results[1][name], results[2][name], results[0][name], dtype)
                    rows.append({"check": "module-train", "backend": backend, "shape": "2x32x13x11-r4g2",
                                 "dtype": dname, "layout": layout, "tensor": name, "max_err": f"{err:.3g}",
                                 "bound": f"{bound:.3g}", "ok": err <= bound})
    return rows


def sanitize(s: Settings) -> None:
    """Every fused op once per GPU backend, the CUDA kernels first, then Triton's (compiled), nothing checked: the
    workload compute-sanitizer watches (memcheck: the masked tails of tiles; racecheck: shared-memory reductions).
    The module's training step brings in bn_stats and the two fused backward passes."""
    backends = [b for b in ("cuda", "triton") if b in s.backends()]
    if not backends:
        raise SystemExit("sanitize: no GPU backend here (build with FORCE_CUDA=1, or install triton)")
    for backend in backends:
        for shape in s.small_shapes[:3]:
            for dtype in DTYPES.values():
                t = _inputs(shape, dtype, s.device)
                for layout in ("nchw", "channels_last"):
                    _pool_and_combine(t, shape[4], shape[5], backend, layout)
        check_module_training(s, backends=[backend])
        _sync(s.device)


# ------------------------------------------------------------------------------------------------ timing


def _time(fn: Callable[[], object], device: torch.device, warmup: int, iters: int) -> float:
    """Median seconds of fn() over `iters` calls after `warmup` (benchmarks.models.timed_call)."""
    for _ in range(warmup):
        fn()
    return statistics.median(timed_call(fn, device) for _ in range(iters))


def _training_ops(s: Settings, blk: Block, y, logits, block, gen, backends: List[str],
                  references: bool = True) -> Dict[str, Tuple[int, Dict[str, Callable]]]:
    """The training-only ops at one stage shape: op -> (the bytes it must move at least, {provider: fn}). eager is
    the reference (what a backend without the kernels runs; left out unless `references`), ours-<backend> the
    kernels of each of `backends`; no torch.compile provider: its compiles (each shape and dtype) would take a
    budgeted run's time from the memory and model steps. bn0's scale/shift are the block's folded ones and the
    statistics' gradient terms zero: the kernels' work does not depend on their values."""
    radix, groups = blk.radix, blk.groups
    y_bytes = y.numel() * y.element_size()
    g_bytes = y_bytes // radix  # grad_out, (B, C, H, W)
    grad_out = torch.randn(blk.batch, blk.channels, blk.height, blk.width, generator=gen).to(s.device, y.dtype)
    grad_gap = torch.randn(blk.batch, blk.channels, generator=gen).to(s.device, y.dtype)
    scale, shift, _ = block.bn0_scale_shift(y)
    coef = torch.zeros_like(scale)
    ops = {  # op -> (bytes, the op, its reference, their arguments)
        "bn-stats": (y_bytes, splat_bn_stats, splat_bn_stats_reference, (y,)),
        "backward-reduce": (y_bytes + g_bytes, splat_backward_reduce, splat_backward_reduce_reference,
                            (grad_out, y, logits, scale, shift, radix, groups)),
        "backward-input": (2 * y_bytes + g_bytes, splat_backward_input, splat_backward_input_reference,
                           (grad_out, grad_gap, y, logits, scale, shift, coef, coef, radix, groups)),
    }
    out = {}
    for op, (nbytes, ours, reference, args) in ops.items():
        providers = {"eager": functools.partial(reference, *args)} if references else {}
        for backend in backends:
            providers[f"ours-{backend}"] = functools.partial(ours, *args, backend=backend)
        out[op] = (nbytes, providers)
    return out


def stage_ops(s: Settings, blk: Block, block, y, logits, gen, backends: List[str],
               references: bool = True) -> Dict[str, Tuple[int, Dict[str, Callable]]]:
    """Every op timed at one stage shape: op -> (the bytes it must move at least, {provider: fn}). splat_pool and
    splat_combine in eval (with `references`: mmseg's eager code and torch.compile of it), then the training-only
    ops (_training_ops); ours-<backend> for each of `backends`."""
    y_bytes = y.numel() * y.element_size()
    ops = {"pool-eval": (y_bytes, {}), "combine-eval": (y_bytes + y_bytes // blk.radix, {})}
    if references:
        for op, eager in (("pool-eval", lambda: eager_pool_op(block, y)),
                          ("combine-eval", lambda: eager_combine_op(block, y, logits))):
            ops[op][1].update(eager=eager, compiled=torch.compile(eager))
    for backend in backends:
        block_b = make_block(channels=blk.channels, radix=blk.radix, groups=blk.groups, dtype=y.dtype).to(s.device)
        block_b.backend = backend
        ops["pool-eval"][1][f"ours-{backend}"] = (lambda bb: lambda: splat_pool(
            y, *bb.bn0_scale_shift(y)[:2], radix=bb.radix, relu=True, backend=bb.backend))(block_b)
        ops["combine-eval"][1][f"ours-{backend}"] = (lambda bb: lambda: splat_combine(
            y, logits, *bb.bn0_scale_shift(y)[:2], radix=bb.radix, groups=bb.groups, relu=True,
            backend=bb.backend))(block_b)
    with torch.no_grad():
        ops.update(_training_ops(s, blk, y, logits, block, gen, backends, references))
    return ops


def _stage_inputs(s: Settings, blk: Block, dtype):
    """(block, y, logits, generator, copy seconds) at one stage shape: the split-attention block in `dtype`, its
    conv output and attention logits (random, seeded), and the median time of a device-to-device copy of y now."""
    block = make_block(channels=blk.channels, radix=blk.radix, groups=blk.groups, dtype=dtype).to(s.device)
    gen = torch.Generator().manual_seed(0)
    y = torch.randn(blk.y_shape, generator=gen).to(s.device, dtype)
    logits = torch.randn(blk.y_shape[:2], generator=gen).to(s.device, dtype)
    dst = torch.empty_like(y)
    copy_s = _time(lambda: dst.copy_(y), s.device, s.warmup, s.op_iters)
    return block, y, logits, gen, copy_s


def bench_ops(s: Settings) -> List[dict]:
    """Per stage shape and dtype: the copy bandwidth, then each op per provider as ms, GB/s and % of the copy (the
    eval ops, then the training-only ones); the post-conv training step (forward + backward) where the batch allows
    training."""
    import torch._dynamo

    rows = []
    for label, blk in s.stage_shapes.items():
        for dname in ("fp32", "bf16"):
            dtype = DTYPES[dname]
            block, y, logits, gen, copy_s = _stage_inputs(s, blk, dtype)
            copy_gbs = 2 * y.numel() * y.element_size() / copy_s / 1e9
            rows.append({"shape": label, "y": "x".join(map(str, blk.y_shape)), "dtype": dname, "op": "copy",
                         "provider": "torch", "ms": round(copy_s * 1e3, 4), "gb_s": round(copy_gbs, 1),
                         "pct_of_copy": 100.0})
            ops = stage_ops(s, blk, block, y, logits, gen, s.backends())
            for op, (nbytes, providers) in ops.items():
                with torch.no_grad():
                    for provider, fn in providers.items():
                        sec = _time(fn, s.device, s.warmup, s.op_iters)
                        gbs = nbytes / sec / 1e9
                        rows.append({"shape": label, "y": "x".join(map(str, blk.y_shape)), "dtype": dname, "op": op,
                                     "provider": provider, "ms": round(sec * 1e3, 4), "gb_s": round(gbs, 1),
                                     "pct_of_copy": round(100 * gbs / copy_gbs, 1)})
            if blk.batch < 2:  # bn1 sees one value per channel: a training step needs a batch
                torch._dynamo.reset()
                continue
            train_block = make_block(channels=blk.channels, radix=blk.radix, groups=blk.groups, dtype=dtype,
                                     train=True).to(s.device)
            yg = y.detach().requires_grad_(True)
            grad = torch.randn(blk.batch, blk.channels, blk.height, blk.width, generator=gen).to(s.device, dtype)
            train_providers = {"eager": lambda: torch.autograd.grad(eager_post_conv(train_block, yg), yg, grad)}
            compiled_post = torch.compile(eager_post_conv)
            train_providers["compiled"] = lambda: torch.autograd.grad(compiled_post(train_block, yg), yg, grad)
            for backend in s.backends():
                train_providers[f"ours-{backend}"] = (lambda b: lambda: torch.autograd.grad(
                    _attend_with(train_block, b, yg), yg, grad))(backend)
            for provider, fn in train_providers.items():
                sec = _time(fn, s.device, s.warmup, s.op_iters)
                rows.append({"shape": label, "y": "x".join(map(str, blk.y_shape)), "dtype": dname,
                             "op": "post-conv-train-fwd-bwd", "provider": provider, "ms": round(sec * 1e3, 4),
                             "gb_s": "", "pct_of_copy": ""})
            torch._dynamo.reset()
    return rows + bench_conv_pool(s)


# The Triton launchers' geometry constants a sweep varies (kernels/splat.py): elements per tile, the programs per
# SM the chunking aims at, warps per program
SWEEP_GRID = {"tile_elements": (1024, 2048, 4096), "programs_per_sm": (4, 8, 16), "num_warps": (4, 8)}
DRY_SWEEP_GRID = {"tile_elements": (1024, 2048), "programs_per_sm": (8,), "num_warps": (4,)}
_SWEPT_KERNELS = {"pool-eval": "pool", "combine-eval": "combine", "bn-stats": "bn_stats",
                  "backward-reduce": "backward_reduce", "backward-input": "backward_input"}
SWEEP_NEAR = 1.05  # the heuristic counts as near the best when within this factor of the best time


@contextlib.contextmanager
def triton_geometry(tile_elements: int, programs_per_sm: int, num_warps: int):
    """The Triton launchers run with these geometry constants inside the block (module globals that launch_params
    reads at each call), and with their own again after it."""
    from resnest_fast.kernels import splat as tk

    saved = tk.TILE_ELEMENTS, tk.TARGET_PROGRAMS_PER_SM, tk.NUM_WARPS
    tk.TILE_ELEMENTS, tk.TARGET_PROGRAMS_PER_SM, tk.NUM_WARPS = tile_elements, programs_per_sm, num_warps
    try:
        yield tk
    finally:
        tk.TILE_ELEMENTS, tk.TARGET_PROGRAMS_PER_SM, tk.NUM_WARPS = saved


def sweep_triton(s: Settings, progress: Optional[Callable[[List[dict]], object]] = None) -> List[dict]:
    """The Triton kernels' launch geometry against the alternatives of SWEEP_GRID (a small grid in a dry run), at the
    stage shapes, fp32 and bf16, NCHW as bench-ops: each op timed for every (tile elements, programs per SM, warps),
    with the block sizes, warps and programs the launcher then used; `default` marks the launchers' own heuristic.
    Not part of `all`: a run with time left over (or a later one) says whether the heuristic is near the best.
    `progress(rows)` is called after each shape and dtype with every row so far (main writes them out)."""
    if "triton" not in s.backends():
        return []
    from resnest_fast.kernels import splat as tk

    grid = DRY_SWEEP_GRID if s.dry_run else SWEEP_GRID
    default = (tk.TILE_ELEMENTS, tk.TARGET_PROGRAMS_PER_SM, tk.NUM_WARPS)
    configs = [(t, p, w) for t in grid["tile_elements"] for p in grid["programs_per_sm"] for w in grid["num_warps"]]
    configs = [default] + [c for c in configs if c != default]
    rows = []
    for label, blk in s.stage_shapes.items():
        for dname in ("fp32", "bf16"):
            if s.out_of_time(f"sweep {label} {dname}"):
                continue
            dtype = DTYPES[dname]
            block, y, logits, gen, copy_s = _stage_inputs(s, blk, dtype)
            copy_gbs = 2 * y.numel() * y.element_size() / copy_s / 1e9
            ops = stage_ops(s, blk, block, y, logits, gen, ["triton"], references=False)
            for config in configs:
                with triton_geometry(*config), torch.no_grad():
                    for op, (nbytes, providers) in ops.items():
                        sec = _time(providers["ours-triton"], s.device, s.warmup, s.op_iters)
                        p = tk.launch_params(_SWEPT_KERNELS[op], blk.batch, blk.channels, blk.height, blk.width,
                                             blk.radix, dtype, False, tk.num_sms(y))
                        gbs = nbytes / sec / 1e9
                        rows.append({"shape": label, "y": "x".join(map(str, blk.y_shape)), "dtype": dname,
                                     "op": op, "tile_elements": config[0], "programs_per_sm": config[1],
                                     "num_warps": config[2], "default": config == default, "block_c": p.block_c,
                                     "block_p": p.block_p, "warps_run": p.num_warps, "programs": p.programs,
                                     "ms": round(sec * 1e3, 4), "gb_s": round(gbs, 1),
                                     "pct_of_copy": round(100 * gbs / copy_gbs, 1)})
            if progress is not None:
                progress(rows)
    return rows


def sweep_summary(rows: List[dict]) -> List[str]:
    """Per (shape, dtype, op): the heuristic's time against the best of the sweep; the ops where another geometry
    was more than SWEEP_NEAR faster are named with it (at most MISSES_SHOWN)."""
    groups: Dict[Tuple[str, str, str], List[dict]] = {}
    for r in rows:
        groups.setdefault((r["shape"], r["dtype"], r["op"]), []).append(r)
    far = []
    for key, mine in groups.items():
        default = next((r for r in mine if r["default"]), None)
        best = min(mine, key=lambda r: float(r["ms"]))
        if default is not None and float(default["ms"]) > SWEEP_NEAR * float(best["ms"]):
            far.append(f"{' '.join(key)} {float(default['ms']) / float(best['ms']):.2f}x faster at tile "
                       f"{best['tile_elements']}, {best['programs_per_sm']}/SM, {best['num_warps']} warps")
    if not groups:
        return []
    return [f"sweep of the Triton launch geometry: the heuristic within {SWEEP_NEAR:g}x of the best for "
            f"{len(groups) - len(far)}/{len(groups)} ops" + (f"; better: {_first_few(far)}" if far else "")]


def _first_few(items: List[str]) -> str:
    """The first MISSES_SHOWN of `items`, comma-separated, and how many more there are."""
    more = len(items) - MISSES_SHOWN
    return ", ".join(items[:MISSES_SHOWN]) + (f" and {more} more" if more > 0 else "")


def bench_conv_pool(s: Settings) -> List[dict]:
    """splat_conv_pool against cuDNN-based pipelines producing the same tensors: ms, and TFLOP/s of the conv's
    useful multiply-adds; every provider in the same process, on the same inputs."""
    if "triton" not in s.backends():
        return []
    import torch.nn.functional as F

    pool_backend = next(b for b in ("cuda", "triton") if b in s.backends())  # our best separate splat_pool
    rows = []
    for label, blk in s.conv_shapes.items():
        conv_groups = blk.radix * blk.groups
        flops = 2 * blk.batch * blk.height * blk.width * blk.radix * blk.channels * 9 * blk.channels // conv_groups
        for dname in ("fp32", "bf16"):
            dtype = DTYPES[dname]
            for layout in ("nchw", "channels_last"):
                x, weight, scale, shift = _conv_inputs(blk, dtype, s.device, layout)
                r, g, d = blk.radix, blk.groups, blk.dilation
                sc, sh = scale[:, None, None], shift[:, None, None]

                def conv():
                    return F.conv2d(x, weight, None, 1, d, d, conv_groups)

                def unfused():  # y written by bn0 + relu, then read again by the pool
                    y = torch.relu(conv() * sc + sh).to(dtype)
                    return y, splat_pool(y, None, None, r, False, backend=pool_backend)

                def module_path():  # what the modules run: bn0 + relu inside the pool, y never written
                    c = conv()
                    return c, splat_pool(c, scale, shift, r, True, backend=pool_backend)

                def ours():
                    return splat_conv_pool(x, weight, scale, shift, r, g, d, backend="triton")

                providers = {"cudnn-conv": (conv, False), "cudnn+bn-relu+splat_pool": (unfused, False),
                             f"cudnn+splat_pool-{pool_backend}-bn-relu-inside": (module_path, False),
                             "ours-triton-conv-pool": (ours, False)}
                if dname == "fp32":
                    providers["cudnn-conv-tf32"] = (conv, True)
                for provider, (fn, tf32) in providers.items():
                    with torch.no_grad(), _cudnn_tf32(tf32):
                        sec = _time(fn, s.device, s.warmup, s.op_iters)
                    rows.append({"shape": label, "y": "x".join(map(str, blk.y_shape)), "dtype": dname,
                                 "op": f"conv-pool-eval-{layout}", "provider": provider, "ms": round(sec * 1e3, 4),
                                 "gb_s": "", "pct_of_copy": "", "tflop_s": round(flops / sec / 1e12, 3)})
    return rows


def _attend_with(block, backend, y):
    previous, block.backend = block.backend, backend
    try:
        return block.attend(y)
    finally:
        block.backend = previous


# -------------------------------------------------------------------------------------------------- models


def _model_cfg(head: str, dry_run: bool) -> dict:
    from resnest_fast.segmentation import load_config
    from resnest_fast.testing.small_models import small_model_cfg

    return small_model_cfg(head) if dry_run else load_config(HEAD_CONFIGS[head])["model"]


def _pair_of_models(head: str, s: Settings):
    """(reference-backend model, ours) with the same random weights and BN statistics, eval mode, on the device."""
    from resnest_fast.segmentation import build_segmentor

    cfg = _model_cfg(head, s.dry_run)
    torch.manual_seed(0)
    ref = build_segmentor(cfg, backend="reference")
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    ours = build_segmentor(cfg)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref.eval().to(s.device), ours.eval().to(s.device)


def bench_models(s: Settings, heads, compile_heads,
                 progress: Optional[Callable[[List[dict]], object]] = None) -> List[dict]:
    """mmseg's benchmark method (tools/analysis_tools/benchmark.py): batch 1, warm-up, timed iterations with a
    synchronize around each, fps = iterations / time; logits checked against the reference backend first.
    `progress(rows)` is called after each head and precision with every row so far (main writes them out)."""
    import torch._dynamo

    rows = []
    h, w = s.image
    img = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0)) * 255
    x = ((img - MEAN) / STD).to(s.device)
    for head in heads:
        if s.out_of_time(f"models {head}"):
            continue
        ref, ours = _pair_of_models(head, s)
        for dname, autocast in (("fp32", False), ("bf16-autocast", True)):
            if s.out_of_time(f"models {head} {dname}"):
                continue
            providers = {"reference-backend": ref.decode, "ours": ours.decode}
            if head in compile_heads:
                # On the CPU, Inductor's bf16 conv layout optimisation hands opaque ops NaNs with torch 2.13
                # (tests/models/test_compile_layouts.py); the dry run takes docs/deployment.md's workaround. On a
                # GPU the default stays, so the logits check says whether the same happens there.
                options = {"layout_optimization": False} if s.device.type == "cpu" else None
                providers["ours-compiled"] = torch.compile(ours.decode, options=options)
            ctx = (lambda: torch.autocast(s.device.type, dtype=torch.bfloat16)) if autocast else None
            with torch.no_grad():
                with (ctx() if ctx else contextlib.nullcontext()):
                    want = ref.decode(x).float()
                    for provider, fn in providers.items():
                        got = fn(x).float()
                        err = (got - want).abs().max().item()
                        tol = (0.05 if autocast else 1e-3) * max(1.0, want.abs().max().item())
                        ok = err <= tol
                        fps = _fps(fn, x, s) if ok else float("nan")
                        rows.append({"model": head, "input": f"1x3x{h}x{w}", "precision": dname,
                                     "provider": provider, "fps": round(fps, 3),
                                     "ms_per_image": round(1e3 / fps, 2) if ok else "", "logits_max_diff":
                                     f"{err:.3g}", "ok": ok})
            torch._dynamo.reset()
            if progress is not None:
                progress(rows)
        del ref, ours
        if s.device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def _fps(fn, x, s: Settings) -> float:
    for _ in range(s.warmup):
        fn(x)
    _sync(s.device)
    start = time.perf_counter()
    for _ in range(s.iters):
        fn(x)
        _sync(s.device)
    return s.iters / (time.perf_counter() - start)


def train_memory(s: Settings, head: str = "deeplabv3") -> List[dict]:
    """Peak memory of one training iteration (forward, losses, backward) at the training crop, ours vs the
    reference backend with the same weights; on the CPU the bytes autograd saves for backward instead."""
    from resnest_fast.segmentation import build_segmentor

    rows = []
    cfg = _model_cfg(head, s.dry_run)
    h, w = s.train_image
    gen = torch.Generator().manual_seed(0)
    img = (torch.rand(s.train_batch, 3, h, w, generator=gen) * 255).to(s.device)
    labels = torch.randint(0, cfg["decode_head"]["num_classes"], (s.train_batch, h, w), generator=gen).to(s.device)
    for provider, backend in (("reference-backend", "reference"), ("ours", None)):
        torch.manual_seed(0)
        model = build_segmentor(cfg, backend=backend).to(s.device).train()

        def step():
            loss = model.sum_losses(model.loss(img, labels))
            loss.backward()
            return loss

        if s.device.type == "cuda":
            step()  # cuDNN's workspaces and the allocator's pools settle on the first iteration
            model.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            step()
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() - base
            measure = "max_memory_allocated over one iteration, above the model and its gradients"
        else:
            peak = saved_storage_bytes(lambda: model.sum_losses(model.loss(img, labels)))
            measure = "bytes saved for backward (CPU dry run)"
        rows.append({"model": head, "input": f"{s.train_batch}x3x{h}x{w}", "provider": provider,
                     "peak_mib": round(peak / 2 ** 20, 1), "measure": measure})
        model = None  # freed before the next provider builds its own (step() closes over the name)
    ref_mib = rows[0]["peak_mib"]
    for row in rows:
        row["vs_reference"] = round(row["peak_mib"] / ref_mib, 3) if ref_mib else ""
    return rows


# ------------------------------------------------------------------------------------------------- summary


# What the fused ops and the models should reach on a GPU (docs/benchmarks.md states them with the figures)
GOAL_PCT_OF_COPY = 80.0
GOAL_VS_EAGER = 3.0
GOAL_VS_COMPILE = 1.3
GOAL_MODEL = ("deeplabv3", "bf16-autocast", 1.2)  # head, precision, ours / reference-backend fps
GOAL_TRAIN_MEMORY = 0.85  # ours / reference-backend peak
MISSES_SHOWN = 6  # per goal in the summary; the CSVs hold every row


def _verdict(lines: List[str], what: str, checked: List[Tuple[str, float, bool]], unit: str) -> None:
    """One line: how many of `checked` (label, value, met) met the goal `what`, and the misses with their values."""
    if not checked:
        return
    missed = [f"{label} {value:g}{unit}" for label, value, met in checked if not met]
    lines.append(f"  {what}: {len(checked) - len(missed)}/{len(checked)} met"
                 + (f"; missed: {_first_few(missed)}" if missed else ""))


def goals(results: Dict[str, List[dict]]) -> List[str]:
    """The goals against the rows measured: per op row of ours (shape, dtype, op, backend) its % of the copy
    bandwidth, its speed-up over eager and over torch.compile of eager where those were timed; the model's bf16 fps
    against the reference backend's; training memory against the reference backend's."""
    lines: List[str] = []
    ops = [r for r in results.get("bench-ops", []) if r.get("pct_of_copy", "") != "" or
           r["op"] == "post-conv-train-fwd-bwd"]
    ms = {(r["shape"], r["dtype"], r["op"], r["provider"]): float(r["ms"]) for r in ops}
    ours = [r for r in ops if r["provider"].startswith("ours-")]
    pct, eager, compiled = [], [], []
    for r in ours:
        key = (r["shape"], r["dtype"], r["op"])
        label = f"{r['shape']} {r['dtype']} {r['op']} {r['provider']}"
        if r["pct_of_copy"] != "":
            pct.append((label, float(r["pct_of_copy"]), float(r["pct_of_copy"]) >= GOAL_PCT_OF_COPY))
        for provider, goal, out in (("eager", GOAL_VS_EAGER, eager), ("compiled", GOAL_VS_COMPILE, compiled)):
            if key + (provider,) in ms:
                ratio = ms[key + (provider,)] / float(r["ms"])
                out.append((label, round(ratio, 2), ratio >= goal))
    _verdict(lines, f">= {GOAL_PCT_OF_COPY:g} % of the copy bandwidth", pct, " %")
    _verdict(lines, f">= {GOAL_VS_EAGER:g}x eager", eager, "x")
    _verdict(lines, f">= {GOAL_VS_COMPILE:g}x torch.compile of eager", compiled, "x")
    head, precision, goal = GOAL_MODEL
    fps = {r["provider"]: float(r["fps"]) for r in results.get("models", [])
           if r["model"] == head and r["precision"] == precision and r["ok"]}
    if "reference-backend" in fps:
        _verdict(lines, f"{head} {precision} fps >= {goal:g}x the reference backend's",
                 [(p, round(f / fps["reference-backend"], 2), f / fps["reference-backend"] >= goal)
                  for p, f in fps.items() if p != "reference-backend"], "x")
    memory = [(f"{r['model']} {r['input']}", float(r["vs_reference"]), float(r["vs_reference"]) <= GOAL_TRAIN_MEMORY)
              for r in results.get("memory", []) if r["provider"] == "ours" and r["vs_reference"] != ""]
    _verdict(lines, f"training peak memory <= {GOAL_TRAIN_MEMORY:g}x the reference backend's", memory, "x")
    return ["goals:"] + lines if lines else []


def summarize(results: Dict[str, List[dict]], s: Settings) -> List[str]:
    lines = [f"resnest_fast GPU check ({'dry run on the CPU' if s.dry_run else report.machine()}; "
             f"git {report.git_revision()}; torch {torch.__version__}; backends {', '.join(s.backends())})"]
    if "ops" in results:
        rows = results["ops"]
        bad = [r for r in rows if not r["ok"]]
        lines.append(f"correctness: {len(rows) - len(bad)}/{len(rows)} checks within the rule")
        lines += [f"  FAIL {r['check']} {r['backend']} {r['shape']} {r['dtype']} {r['layout']} {r['tensor']}: "
                  f"{r['max_err']} > {r['bound']}" for r in bad[:20]]
    if "bench-ops" in results:
        lines.append("ops (ms; % of copy bandwidth):")
        for r in results["bench-ops"]:
            if r["provider"] != "torch":
                pct = f" ({r['pct_of_copy']} %)" if r["pct_of_copy"] != "" else ""
                tflops = f" ({r['tflop_s']} TFLOP/s)" if r.get("tflop_s", "") != "" else ""
                lines.append(f"  {r['shape']} {r['dtype']} {r['op']} {r['provider']}: {r['ms']} ms{pct}{tflops}")
    if "models" in results:
        lines.append("models (fps, batch 1):")
        for r in results["models"]:
            lines.append(f"  {r['model']} {r['input']} {r['precision']} {r['provider']}: {r['fps']} fps"
                         + ("" if r["ok"] else f"  LOGITS DIFFER {r['logits_max_diff']}"))
    if "memory" in results:
        lines += [f"train memory {r['model']} {r['input']} {r['provider']}: {r['peak_mib']} MiB ({r['vs_reference']}x)"
                  for r in results["memory"]]
    if "sweep" in results:
        lines += sweep_summary(results["sweep"])
    met = goals(results)
    if met and s.dry_run:
        met[0] = "goals (of a GPU; a dry run's tiny CPU shapes only exercise the arithmetic):"
    lines += met
    if s.skipped:
        lines.append(f"skipped at the deadline: {', '.join(s.skipped)}")
    if s.interrupted:
        lines.append(f"interrupted (Ctrl-C) during {s.interrupted}: partial results, the rows above are those "
                     "measured before it")
    return lines


def write_results(results: Dict[str, List[dict]], s: Settings, out: str, summary: str = "summary.txt") -> List[str]:
    """CSVs of every step so far and the summary (`summary` under `out`), rewritten whole after each step: a run cut
    short keeps the figures of the steps it finished."""
    report.RESULTS.clear()
    for step, rows in results.items():
        for row in rows:
            report.add(f"gpu-{step}", row)
    report.flush(out)
    lines = summarize(results, s)
    report.write_text(os.path.join(out, summary), "\n".join(lines) + "\n")
    return lines


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=STEPS + ("all",))
    parser.add_argument("--dry-run", action="store_true", help="on the CPU at tiny shapes (what CI runs)")
    parser.add_argument("--out", default=os.environ.get("OUT") or "gpu_results", help="where CSVs and summary go")
    parser.add_argument("--models", nargs="+", choices=HEADS, default=list(HEADS), help="heads of the model step")
    parser.add_argument("--compile-models", nargs="*", choices=HEADS, default=["deeplabv3"],
                        help="heads also timed under torch.compile (compiling takes a minute or more each)")
    parser.add_argument("--deadline", type=report.positive_float, default=None, metavar="UNIX_TIME",
                        help="start no step or model after this time (seconds since the epoch); what is left out "
                             "is listed in the summary (scripts/gpu_check.sh --budget sets it)")
    report.add_overwrite_argument(parser)
    args = parser.parse_args(argv)
    if args.step != "sanitize":  # the sanitizers' workload writes nothing
        report.check_output_folder(parser, args.out, "--out", output_files(args.step), args.overwrite)
    return args


def output_files(step: str) -> List[str]:
    """The names `python -m benchmarks.gpu_check STEP` may write under --out."""
    steps = ALL_STEPS if step == "all" else (step,)
    return [report.csv_name(f"gpu-{name}") for name in steps] + [summary_name(step)]


def summary_name(step: str) -> str:
    # the sweep runs after the check, in a call of its own: its summary must not replace the check's
    return "summary-sweep.txt" if step == "sweep" else "summary.txt"


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.dry_run:
        if not torch.cuda.is_available():
            print("gpu_check: no CUDA GPU is visible (run with --dry-run on a CPU machine)", file=sys.stderr)
            return 2
        if ext.triton_interpreting():
            print("gpu_check: TRITON_INTERPRET=1 is set: unset it, the GPU check runs Triton compiled", file=sys.stderr)
            return 2
    s = Settings(args.dry_run, args.deadline)
    if args.step == "sanitize":
        sanitize(s)
        return 0
    steps = ALL_STEPS if args.step == "all" else (args.step,)
    summary = summary_name(args.step)
    results = {}

    def progress(step):  # the longest steps write their rows out after each head (precision) or shape
        def write(rows):
            results[step] = rows
            write_results(results, s, args.out, summary)
        return write

    for step in steps:
        if s.out_of_time(step):
            continue
        t0 = time.perf_counter()
        try:
            if step == "ops":
                results[step] = check_ops(s)
            elif step == "bench-ops":
                results[step] = bench_ops(s)
            elif step == "models":
                results[step] = bench_models(s, args.models, args.compile_models, progress(step))
            elif step == "memory":
                results[step] = train_memory(s)
            elif step == "sweep":
                results[step] = sweep_triton(s, progress(step))
        except KeyboardInterrupt:
            s.interrupted = step

            def write_partial():
                write_results(results, s, args.out, summary)
                return [os.path.join(args.out, name) for name in
                        [report.csv_name(f"gpu-{k}") for k, v in results.items() if v] + [summary]]

            return report.stopped(PROG, sum(len(r) for r in results.values()), write_partial)
        print(f"gpu_check: {step} done in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        write_results(results, s, args.out, summary)
    lines = write_results(results, s, args.out, summary)  # once more: the steps the deadline left out
    print("\n".join(lines))
    failed = any(not r["ok"] for step in ("ops", "models") for r in results.get(step, []))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
