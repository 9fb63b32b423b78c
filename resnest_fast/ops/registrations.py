"""Every torch.library registration of resnest_fast's ops, in one place; imported once, by resnest_fast/ops/__init__.

C++ ops (schemas: csrc/ops/splat.cpp, winograd.cpp and depthwise.cpp; CPU/CUDA kernels registered in C++): fake
kernels for all of them, so torch.compile and torch.export trace them, and autograd for splat_pool and
splat_combine, whose backward ops do the work. The module's two-pass training backward (splat_backward_*) and
splat_bn_stats are called from an autograd.Function instead, so they only need fakes (C++ and Triton alike).
Triton ops (launchers: resnest_fast/kernels/splat.py): torch.library.custom_op around each launcher, with the same
fakes and autograd as the C++ ops. resnest_fast::triton_splat_conv_pool (resnest_fast/kernels/splat_conv.py) is
inference-only: its autograd registration only says so when a backward reaches it. Not triton_op/wrap_triton: under
TRITON_INTERPRET=1 the interpreter touches the data pointers of fake tensors, and both opcheck and
torch.compile(fullgraph=True) fail.
"""
import warnings

import torch

from resnest_fast import _extension as ext
from resnest_fast.op_rules import accumulation_dtype, kernel_layout
from resnest_fast.ops.depthwise import HAS_DEPTHWISE_KERNEL
from resnest_fast.ops.splat_combine import splat_combine_reference
from resnest_fast.ops.splat_pool import splat_pool_reference
from resnest_fast.ops.winograd import HAS_WINOGRAD_KERNELS

__all__ = ["register_triton_ops"]

# ----------------------------------------------------------------------------------------------- fake kernels


def _param_grad_like(t, x):
    return x.new_empty((0,)) if t is None else t.new_empty(t.shape)


def fake_pool(x, scale, shift, radix, relu):
    return x.new_empty((x.shape[0], x.shape[1] // radix))


def fake_pool_backward(grad_gap, x, scale, shift, radix, relu):
    return (
        torch.empty_like(x, memory_format=kernel_layout(x)),
        _param_grad_like(scale, x),
        _param_grad_like(shift, x),
    )


def fake_combine(x, logits, scale, shift, radix, groups, relu):
    size = (x.shape[0], x.shape[1] // radix, x.shape[2], x.shape[3])
    return torch.empty(size, dtype=x.dtype, device=x.device, memory_format=kernel_layout(x))


def fake_combine_backward(grad_out, x, logits, scale, shift, radix, groups, relu):
    return (
        torch.empty_like(x, memory_format=kernel_layout(x)),
        torch.empty(logits.shape, dtype=logits.dtype, device=logits.device),
        _param_grad_like(scale, x),
        _param_grad_like(shift, x),
    )


def fake_conv_pool(x, weight, scale, shift, radix, groups, dilation):
    size = (x.shape[0], weight.shape[0], x.shape[2], x.shape[3])
    y = torch.empty(size, dtype=x.dtype, device=x.device, memory_format=kernel_layout(x))
    return y, x.new_empty((x.shape[0], weight.shape[0] // radix))


def fake_bn_stats(x):
    acc = accumulation_dtype(x.dtype)
    return x.new_empty((x.shape[1],), dtype=acc), x.new_empty((x.shape[1],), dtype=acc)


def fake_backward_reduce(grad_out, x, logits, scale, shift, radix, groups):
    sums = x.new_empty((x.shape[0], x.shape[1]), dtype=accumulation_dtype(x.dtype))
    return (logits.new_empty(logits.shape), scale.new_empty(scale.shape), shift.new_empty(shift.shape), sums,
            sums.new_empty(sums.shape))


def fake_backward_input(grad_out, grad_gap, x, logits, scale, shift, coef_a, coef_b, radix, groups):
    return torch.empty_like(x, memory_format=kernel_layout(x))


def fake_winograd_conv3x3(x, u, bias, other, dilation, groups, relu):
    out = x.new_empty((x.shape[0], groups * u.shape[2], x.shape[2], x.shape[3]))
    return out.contiguous(memory_format=torch.channels_last)


def fake_depthwise_conv3x3(x, weight, bias, dilation, relu):
    return torch.empty_like(x, memory_format=torch.channels_last)


# ---------------------------------------------------------------------------------------------------- autograd
# Only x (the conv output, which BatchNorm keeps anyway), the small logits and scale/shift are saved: the
# activated splits are recomputed by the backward kernels.


def _pool_setup_context(ctx, inputs, output):
    x, scale, shift, radix, relu = inputs
    ctx.save_for_backward(x, scale, shift)
    ctx.radix, ctx.relu = radix, relu


def _combine_setup_context(ctx, inputs, output):
    x, logits, scale, shift, radix, groups, relu = inputs
    ctx.save_for_backward(x, logits, scale, shift)
    ctx.radix, ctx.groups, ctx.relu = radix, groups, relu


def _grads_through_reference(reference, inputs, grad):
    """The gradients of reference(*inputs) for `grad`, by autograd on the pure-PyTorch reference, which autograd can
    differentiate again. For a backward run with create_graph=True (double backward, gradient penalties): the
    backward kernels have no autograd of their own, so autograd would take their outputs for constants and the
    second derivative would silently come out wrong. None for an input that is not a tensor requiring grad.

    The reference runs on aliases of the inputs: the gradient for each is then its partial derivative only, while
    staying a function of the inputs themselves (an input computed from another, the logits from x, would
    otherwise add its own path to the other's gradient)."""
    needs = [isinstance(t, torch.Tensor) and t.requires_grad for t in inputs]
    aliases = [t.view_as(t) if need else t for t, need in zip(inputs, needs)]
    wanted = [a for a, need in zip(aliases, needs) if need]
    found = iter(torch.autograd.grad(reference(*aliases), wanted, grad, create_graph=True, allow_unused=True))
    return tuple(next(found) if need else None for need in needs)


def _op(qualname: str):
    ns, name = qualname.split("::")
    return getattr(getattr(torch.ops, ns), name).default


def _register_training_fakes(prefix: str) -> None:
    """Fakes for the training-only ops `resnest_fast::{prefix}splat_{bn_stats,backward_reduce,backward_input}`:
    called from autograd.Functions, they need no autograd of their own."""
    for name, fake in (("bn_stats", fake_bn_stats), ("backward_reduce", fake_backward_reduce),
                       ("backward_input", fake_backward_input)):
        torch.library.register_fake(f"resnest_fast::{prefix}splat_{name}")(fake)


def _register_pool_and_combine(prefix: str) -> None:
    """Fakes for the four ops `resnest_fast::{prefix}splat_{pool,combine}[_backward]`, autograd for the two
    forward ones through their backward ops."""
    names = {k: f"resnest_fast::{prefix}splat_{k}" for k in ("pool", "pool_backward", "combine", "combine_backward")}
    torch.library.register_fake(names["pool"])(fake_pool)
    torch.library.register_fake(names["pool_backward"])(fake_pool_backward)
    torch.library.register_fake(names["combine"])(fake_combine)
    torch.library.register_fake(names["combine_backward"])(fake_combine_backward)
    pool_bwd = _op(names["pool_backward"])
    combine_bwd = _op(names["combine_backward"])

    def pool_backward(ctx, grad_gap):
        x, scale, shift = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: a backward that is itself differentiable
            return _grads_through_reference(splat_pool_reference, (x, scale, shift, ctx.radix, ctx.relu), grad_gap)
        dx, dscale, dshift = pool_bwd(grad_gap, x, scale, shift, ctx.radix, ctx.relu)
        affine = scale is not None
        return dx, dscale if affine else None, dshift if affine else None, None, None

    def combine_backward(ctx, grad_out):
        x, logits, scale, shift = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: a backward that is itself differentiable
            return _grads_through_reference(
                splat_combine_reference, (x, logits, scale, shift, ctx.radix, ctx.groups, ctx.relu), grad_out)
        dx, dlogits, dscale, dshift = combine_bwd(
            grad_out, x, logits, scale, shift, ctx.radix, ctx.groups, ctx.relu
        )
        affine = scale is not None
        return dx, dlogits, dscale if affine else None, dshift if affine else None, None, None, None

    torch.library.register_autograd(names["pool"], pool_backward, setup_context=_pool_setup_context)
    torch.library.register_autograd(names["combine"], combine_backward, setup_context=_combine_setup_context)


# --------------------------------------------------------------------------------------------------- C++ ops


def _register_cpp_ops() -> None:
    if not ext.HAS_C:
        return
    _register_pool_and_combine("")
    _register_training_fakes("")
    if HAS_WINOGRAD_KERNELS:
        torch.library.register_fake("resnest_fast::winograd_conv3x3")(fake_winograd_conv3x3)
    if HAS_DEPTHWISE_KERNEL:
        torch.library.register_fake("resnest_fast::depthwise_conv3x3")(fake_depthwise_conv3x3)


# ------------------------------------------------------------------------------------------------ Triton ops

_TRITON_SCHEMAS = {
    "splat_pool": "(Tensor x, Tensor? scale, Tensor? shift, int radix, bool relu) -> Tensor",
    "splat_pool_backward": "(Tensor grad_gap, Tensor x, Tensor? scale, Tensor? shift, int radix, bool relu) "
    "-> (Tensor, Tensor, Tensor)",
    "splat_combine": "(Tensor x, Tensor logits, Tensor? scale, Tensor? shift, int radix, int groups, bool relu) "
    "-> Tensor",
    "splat_combine_backward": "(Tensor grad_out, Tensor x, Tensor logits, Tensor? scale, Tensor? shift, int radix, "
    "int groups, bool relu) -> (Tensor, Tensor, Tensor, Tensor)",
    # the C++ schemas of csrc/ops/splat.cpp
    "splat_bn_stats": "(Tensor x) -> (Tensor, Tensor)",
    "splat_backward_reduce": "(Tensor grad_out, Tensor x, Tensor logits, Tensor scale, Tensor shift, int radix, "
    "int groups) -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
    "splat_backward_input": "(Tensor grad_out, Tensor grad_gap, Tensor x, Tensor logits, Tensor scale, Tensor shift, "
    "Tensor coef_a, Tensor coef_b, int radix, int groups) -> Tensor",
}
_CONV_POOL_SCHEMA = ("(Tensor x, Tensor weight, Tensor scale, Tensor shift, int radix, int groups, int dilation) "
                     "-> (Tensor, Tensor)")
_triton_registered = False


def _conv_pool_backward(ctx, grad_y, grad_gap):
    raise RuntimeError("resnest_fast::triton_splat_conv_pool is inference-only: it has no backward (train with "
                       "the module's conv + splat_pool path)")


def _register_conv_pool(launcher) -> None:
    name = "resnest_fast::triton_splat_conv_pool"
    torch.library.custom_op(name, launcher, mutates_args=(), schema=_CONV_POOL_SCHEMA)
    torch.library.register_fake(name)(fake_conv_pool)
    torch.library.register_autograd(name, _conv_pool_backward, setup_context=lambda ctx, inputs, output: None)


def register_triton_ops() -> bool:
    """Defines resnest_fast::triton_splat_* around the Triton launchers where they can run (CUDA present, or
    TRITON_INTERPRET=1 for CPU tensors); returns whether they are registered. Runs at import; call it again after
    setting TRITON_INTERPRET=1 late (later calls do nothing once the ops exist)."""
    global _triton_registered
    if _triton_registered:
        return True
    if not ext.HAS_TRITON or not (torch.cuda.is_available() or ext.triton_interpreting()):
        return False
    try:
        from resnest_fast.kernels import splat as launchers
        from resnest_fast.kernels import splat_conv

        for name, schema in _TRITON_SCHEMAS.items():
            torch.library.custom_op(f"resnest_fast::triton_{name}", getattr(launchers, name), mutates_args=(),
                                    schema=schema)
        _register_pool_and_combine("triton_")
        _register_training_fakes("triton_")
        _register_conv_pool(splat_conv.splat_conv_pool)
    except Exception as exc:  # a broken triton install must not break `import resnest_fast`
        ext.HAS_TRITON = False
        warnings.warn(f"resnest_fast: triton is installed but its kernels failed to load ({exc})", RuntimeWarning)
        return False
    _triton_registered = True
    return True


_register_cpp_ops()
register_triton_ops()
