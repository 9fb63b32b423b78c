"""`optimize_for_inference(model)`: what a frozen torch.compile does to a ResNeSt segmenter on CPU, without the
compile wait.

A ResNeSt-101-D8 segmenter spends ~85 % of its CPU time in convolutions. In eval mode:
- every BatchNorm that follows a conv is folded into that conv's weight and bias (exact up to rounding: the BN
  is an affine map per output channel), and the ReLU after it, the residual add of a bottleneck and its ReLU
  become post-ops of the conv (one pass over the output instead of four), which writes into the shortcut tensor
  itself wherever nothing else can hold it (FrozenBottleneck);
- on CPU the conv weights are reordered once into oneDNN's blocked layout (`mkldnn._reorder_convolution_weight`,
  what Inductor's freezing does), and activations are kept channels_last, so no convolution reorders its weight
  or its input on every call;
- the split-attention blocks keep their fused ops (channels_last in, channels_last out), with the big grouped
  conv prepacked too; the auxiliary head, which inference never runs, is dropped;
- on CPU in fp32, every 3x3 stride-1 conv with enough input channels per group (the split-attention convs of
  stages 2-4, the heads' 3x3 convs) runs as Winograd F(2x2, 3x3) (resnest_fast.ops.winograd): 2.25x fewer
  multiply-adds than oneDNN's direct conv, which is what an AVX2 CPU spends its time on here; at input sizes where
  the tiling would waste too much (big dilations on small maps) it stays on oneDNN. `winograd=False` turns it off.
The result is for inference only (no gradients, eval mode: train() raises, its state_dict is not the
checkpoint's). On CUDA, or where oneDNN cannot pack a weight (e.g. bfloat16 on a CPU without AVX-512), the folded
convs run through F.conv2d instead.
"""
import collections
import copy
import functools
import weakref
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules import module as torch_module
from torch.nn.modules.batchnorm import _BatchNorm

from resnest_fast.models.resnest import Bottleneck
from resnest_fast.nn.split_attention import SplitAttentionConv2d
from resnest_fast.ops import depthwise as depthwise_ops
from resnest_fast.ops import winograd as winograd_ops
from resnest_fast.segmentation.decode_heads import ConvModule

__all__ = ["FrozenBlocks", "FrozenBottleneck", "FrozenConv2d", "InferenceOnlyTrain", "optimize_for_inference",
           "unpack_weights"]


@functools.lru_cache(maxsize=None)
def _eagerly(fn):
    """fn, run outside the graph when torch.compile traces its caller (torch.compiler.disable). Made at the first
    use, not at import: torch.compiler.disable imports torch._dynamo, which would make `import resnest_fast` take
    about a second more and 100+ MiB more resident memory in every process, compiling or not."""
    return torch.compiler.disable(fn)


def _fold(conv: nn.Conv2d, bn: _BatchNorm | None, in_place: bool = False):
    """(weight, bias) of conv followed by bn in eval mode. `in_place` writes the folded weight into conv's own
    weight storage (conv is then spent) instead of a new tensor: the memory the original weight held is what the
    folded one holds, and is released with it."""
    w = conv.weight.detach()
    b = conv.bias.detach() if conv.bias is not None else None
    if bn is None:
        return (w, b) if in_place else (w.clone(), None if b is None else b.clone())
    if bn.running_mean is None:
        raise ValueError(f"cannot fold {bn}: it has no running statistics (track_running_stats=False)")
    invstd = torch.rsqrt(bn.running_var.double() + bn.eps)
    scale = invstd * (bn.weight.double() if bn.weight is not None else 1.0)
    shift = -bn.running_mean.double() * scale + (bn.bias.double() if bn.bias is not None else 0.0)
    if b is not None:
        shift = shift + b.double() * scale
    out = w if in_place else torch.empty_like(w)
    scale = scale.view(-1, 1, 1, 1)
    step = winograd_ops.float64_chunk(w[0].numel())  # float64 copies of a few output channels at a time
    for k0 in range(0, w.shape[0], step):
        out[k0: k0 + step] = w[k0: k0 + step].to(torch.float64, copy=True).mul_(scale[k0: k0 + step])
    return out, shift.to(conv.weight.dtype)


class FrozenConv2d(nn.Module):
    """An eval-only conv with BN folded in and optional post-ops: `relu(conv(x) [+ other])`.

    On CPU the weight is prepacked for oneDNN and the output is channels_last; elsewhere it is F.conv2d. With
    `winograd` (the default), a float32 3x3 stride-1 conv with enough channels per group (`use_winograd`) runs as
    Winograd F(2x2, 3x3) on CPU (resnest_fast.ops.winograd: 2.25x fewer multiply-adds) for the input sizes where
    that pays (`winograd_worthwhile`).

    Memory: the module keeps one copy of its weight, in the form the last call ran: the folded weight
    (`weight`, until the first call and wherever F.conv2d runs), oneDNN's packed copy (`_packed`) or the
    Winograd transform (`winograd_weight`, 16/9 of the weight's bytes). A call that needs another form builds it
    from the one kept (the packed copy gives the weight back exactly, the Winograd transform up to its rounding)
    and drops the old one, so inputs that alternate between sizes where Winograd pays and sizes where it does
    not rebuild the weight at each switch.

    torch.compile: a module traced before its first eager call keeps its folded weight (the graph reads it) and
    then only adds forms. Traced after an eager call, each converted conv brings its folded weight back at a graph
    break; compile before the first call (torch 2.13's Inductor then failed a later recompile of those graphs).

    torch.export and torch.jit.trace record F.conv2d on the folded weight (plus the add and ReLU), which any runtime
    runs; the folded weight must be there (`unpack_weights`, which resnest_fast.export's functions call).
    """

    def __init__(self, conv: nn.Conv2d, bn: _BatchNorm | None = None, relu: bool = False, winograd: bool = True,
                 fold_in_place: bool = False):
        super().__init__()
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(f"FrozenConv2d needs zero padding given as ints, got {conv.padding!r}")
        weight, bias = _fold(conv, bn, in_place=fold_in_place)
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size = conv.kernel_size
        self.stride, self.padding, self.dilation = list(conv.stride), list(conv.padding), list(conv.dilation)
        self.groups = conv.groups
        self.relu = relu
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        self._packed = None  # (input shape it was packed for, oneDNN weight), made at the first call
        # Dilated depthwise convs (DeepLabV3+'s separable ASPP) stay off oneDNN, which at large dilations computes
        # the taps that fall in the padding (benchmarks/test_bench_depthwise.py), while it wins on undilated
        # depthwise and every other conv. The 3x3 stride-1 ones run on resnest_fast.ops.depthwise's channels_last
        # kernel on CPU (no layout copies around them), the others on ATen's NCHW kernel.
        self.native_depthwise = (conv.groups > 1 and conv.groups == conv.in_channels
                                 and max(conv.dilation) > 1)
        self.packable = torch.backends.mkldnn.is_available() and not self.native_depthwise
        # what both the depthwise kernel and Winograd take: 3x3, stride 1, the same size out ("same" padding)
        d = self.dilation[0]
        same_3x3 = (tuple(self.kernel_size) == (3, 3) and self.stride == [1, 1] and self.dilation == [d, d]
                    and self.padding == [d, d])
        self.depthwise3x3 = (self.native_depthwise and depthwise_ops.HAS_DEPTHWISE_KERNEL
                             and self.out_channels == self.in_channels and same_3x3)
        use_winograd = (winograd and winograd_ops.HAS_WINOGRAD_KERNELS and weight.dtype == torch.float32 and same_3x3
                        and self.in_channels // self.groups >= winograd_ops.WINOGRAD_MIN_CHANNELS)
        self.use_winograd = bool(use_winograd)
        # set when torch.compile traces the module: its graph reads the folded weight, which must then stay
        self.keep_folded_weight = False
        self.register_buffer("winograd_weight", None)  # U = G w G^T, made at the first call that runs Winograd

    def dense_weight(self) -> Tensor:
        """The folded weight (K, C/groups, kh, kw), from whichever form the module keeps (a new tensor unless it
        keeps the weight itself)."""
        if self.weight is not None:
            return self.weight
        if self._packed is not None:
            return self._packed[1].to_dense()
        return winograd_ops.winograd_weight_inverse(self.winograd_weight, self.groups)

    def weight_dtype(self) -> torch.dtype:
        """The dtype of the weight, whichever form the module keeps."""
        kept = self.weight if self.weight is not None else self.winograd_weight
        return kept.dtype if kept is not None else self._packed[1].dtype

    def _keep_only(self, **form):
        """Keeps the one weight form given (weight=, winograd_weight= or packed=) and releases the others; once
        torch.compile has traced the module it only adds (a compiled graph may read any of them)."""
        if self.keep_folded_weight:
            for name, value in form.items():
                setattr(self, "_packed" if name == "packed" else name, value)
            return
        self.weight = form.get("weight")
        self.winograd_weight = form.get("winograd_weight")
        self._packed = form.get("packed")

    def _restore_folded_weight(self) -> None:
        """Brings the folded weight back and keeps it from now on (run through `_eagerly`: a graph break when
        torch.compile traces a module that an eager call had already converted)."""
        self.keep_folded_weight = True
        if self.weight is None:
            self._keep_only(weight=self.dense_weight())

    def _winograd_u(self) -> Tensor:
        if self.winograd_weight is None and torch.compiler.is_compiling():
            # traced on the folded weight (freezing folds it into a constant); the module is left as it is
            return winograd_ops.winograd_weight_transform(self.weight, self.groups)
        if self.winograd_weight is None:
            self._keep_only(winograd_weight=winograd_ops.winograd_weight_transform(self.dense_weight(),
                                                                                   self.groups))
        return self.winograd_weight

    def _pack(self, x: Tensor):
        """The weight in oneDNN's blocked layout for inputs of x's shape (oneDNN picks the layout by the input
        size: packed without it, a 1x1 conv on 1024 channels ran 2.4x slower here). Repacked when the shape
        changes; None where oneDNN cannot pack it (e.g. bfloat16 without the CPU support it needs)."""
        shape = tuple(x.shape)
        if self._packed is not None and self._packed[0] == shape:
            return self._packed[1]
        dense = self.dense_weight()
        try:
            packed = torch.ops.mkldnn._reorder_convolution_weight(
                dense, self.padding, self.stride, self.dilation, self.groups, list(shape))
        except RuntimeError:
            self.packable = False
            self._keep_only(weight=dense)
            return None
        self._keep_only(packed=(shape, packed))
        return packed

    def _unpacked_weight(self) -> Tensor:
        """The folded weight for F.conv2d, kept from now on (the other forms are released)."""
        if self.weight is None:
            self._keep_only(weight=self.dense_weight())
        return self.weight

    def _apply(self, fn, recurse=True):
        # the packed copy is no buffer (.to()/.double() would not convert it): back to the folded weight, repacked
        # or transformed again from the converted weight at the next call
        if self.weight is None:
            self._keep_only(weight=self.dense_weight())
        return super()._apply(fn, recurse)

    def __getstate__(self):
        # oneDNN's packed copy is an opaque tensor, which torch can neither deep-copy nor pickle: copies and pickles
        # (torch.save of the module, optimize_for_inference of an optimized model) carry the folded weight instead,
        # packed again at their first call
        state = super().__getstate__()
        if self._packed is not None:
            state["_packed"] = None
            if self.weight is None:
                state["_buffers"] = collections.OrderedDict(state["_buffers"], weight=self.dense_weight())
        return state

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, relu={self.relu}, "
                f"prepack={self.packable}" + (", native_depthwise=True" if self.native_depthwise else "")
                + (", depthwise3x3=True" if self.depthwise3x3 else "")
                + (", winograd=True" if self.use_winograd else ""))

    def _output_shape(self, x: Tensor) -> tuple[int, ...]:
        size = [(n + 2 * p - d * (k - 1) - 1) // s + 1 for n, p, d, k, s in
                zip(x.shape[-2:], self.padding, self.dilation, self.kernel_size, self.stride)]
        return (x.shape[0], self.out_channels, *size)

    def _winograd_applies(self, x: Tensor) -> bool:
        return (self.use_winograd and x.device.type == "cpu" and x.dtype == torch.float32
                and self.weight_dtype() == torch.float32 and not x.requires_grad
                and winograd_ops.winograd_worthwhile(self.in_channels // self.groups, x.shape[-2], x.shape[-1],
                                                     self.dilation[0]))

    def forward(self, x: Tensor, other: Tensor | None = None, into_other: bool = False) -> Tensor:
        """relu(conv(x) [+ other]). `into_other=True` lets the packed oneDNN path write the result into `other`
        itself (an in-place add post-op) and return it: for callers that own `other` and have no further use for
        it. The other paths ignore it and return a new tensor."""
        if _capturing_a_graph():
            # torch.export / torch.jit.trace record a graph for other runtimes: the folded conv as ATen ops (conv,
            # add, relu), which every one of them knows. oneDNN's packed weight is an opaque tensor neither tracer
            # can record, and the Winograd and depthwise kernels are this library's ops.
            if self.weight is None:
                raise RuntimeError(
                    "this optimized model has run, and its convs keep their weights packed for oneDNN or Winograd, "
                    "which a trace cannot record: export it with resnest_fast.export.export_program or "
                    "trace_torchscript, or call resnest_fast.optimize.unpack_weights(model) before tracing it")
            return self._aten_forward(x, other)
        if torch.compiler.is_compiling():
            self.keep_folded_weight = True
            if self.weight is None:  # an eager call came first and dropped it
                _eagerly(FrozenConv2d._restore_folded_weight)(self)
        if self._winograd_applies(x):
            return winograd_ops.conv3x3_winograd(x, self._winograd_u(), self.bias, other, self.dilation[0],
                                                 self.groups, self.relu)
        packed = None
        # Under torch.compile the conv is left to Inductor (with freezing it packs the weight and fuses the
        # post-ops itself): packing here is a side effect that would break the graph at every conv.
        if (self.packable and x.device.type == "cpu" and x.dtype == self.weight_dtype() and not x.requires_grad
                and not torch.compiler.is_compiling()):
            x = x.contiguous(memory_format=torch.channels_last)
            packed = self._pack(x)
        if packed is not None:
            unary = "relu" if self.relu else "none"
            if other is None:
                return torch.ops.mkldnn._convolution_pointwise(
                    x, packed, self.bias, self.padding, self.stride, self.dilation, self.groups, unary, [],
                    "")
            if (into_other and other.dtype == x.dtype and not other.requires_grad
                    and other.is_contiguous(memory_format=torch.channels_last)
                    and other.shape == self._output_shape(x)):
                return torch.ops.mkldnn._convolution_pointwise_.binary(
                    other, x, packed, self.bias, self.padding, self.stride, self.dilation, self.groups, "add", None,
                    unary if self.relu else None, [], "")
            return torch.ops.mkldnn._convolution_pointwise.binary(
                x, other.contiguous(memory_format=torch.channels_last), packed, self.bias, self.padding,
                self.stride, self.dilation, self.groups, "add", None, unary if self.relu else None, [], "")
        if (self.depthwise3x3 and other is None and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
                and x.dtype == self.weight_dtype() and not x.requires_grad):
            return depthwise_ops.depthwise_conv3x3(x, self._unpacked_weight(), self.bias, self.dilation[0], self.relu)
        return self._aten_forward(x, other)

    def _aten_forward(self, x: Tensor, other: Tensor | None) -> Tensor:
        if self.native_depthwise and x.device.type == "cpu":
            x = x.contiguous()
        out = F.conv2d(x, self._unpacked_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)
        if other is not None:
            out = out + other
        return torch.relu_(out) if self.relu else out


def _capturing_a_graph() -> bool:
    """Whether torch.export or torch.jit.trace is recording the forward (torch.compile, which runs its graph in
    this process, is not: it may keep the library's kernels)."""
    return torch.jit.is_tracing() or torch.compiler.is_exporting()


def unpack_weights(model: nn.Module) -> nn.Module:
    """Gives every FrozenConv2d of `model` its folded weight back as its `weight` buffer (from the oneDNN-packed or
    Winograd form that a call leaves), for tracers that read module buffers; returns model.
    resnest_fast.export.export_program and trace_torchscript call it. The next eager call converts the weights
    again, so the model still keeps one form of each."""
    for m in model.modules():
        if isinstance(m, FrozenConv2d):
            m._unpacked_weight()
    return model


def _hooked(module: nn.Module) -> bool:
    """Whether a forward hook (on module, inside it or global) could see, and keep, a tensor of its forward."""
    if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())


class FrozenBottleneck(nn.Module):
    """A ResNeSt bottleneck for inference: relu(conv1+bn1) -> split attention (prepacked conv) -> [avg-pool] ->
    relu(conv3+bn3 + shortcut) with the add and the ReLU as post-ops of conv3.

    conv3 writes its output into the shortcut tensor where nothing else can hold that tensor: the downsample's
    output, and the block's input when `input_is_private` (FrozenBlocks passes it for every block after the first).
    The block then allocates no output of its own; where that output is large (32 MiB and more at 512x1024), a new
    one is a fresh mapping from the allocator that the conv faults in page by page. Any forward hook in the block
    (or a global one) turns this off, since a hook may keep the tensor it sees."""

    def __init__(self, block: Bottleneck, winograd: bool = True, fold_in_place: bool = False):
        super().__init__()
        opts = _Options(winograd, fold_in_place)
        self.conv1 = FrozenConv2d(block.conv1, block.bn1, relu=True, winograd=winograd, fold_in_place=fold_in_place)
        self.conv2 = _freeze(block.conv2, opts)
        self.avd_layer = block.avd_layer if block.avg_down_stride else None
        self.conv3 = FrozenConv2d(block.conv3, block.bn3, relu=True, winograd=winograd, fold_in_place=fold_in_place)
        self.downsample = None if block.downsample is None else _freeze(block.downsample, opts)

    def forward(self, x: Tensor, input_is_private: bool = False) -> Tensor:
        out = self.conv2(self.conv1(x))
        if self.avd_layer is not None:
            out = self.avd_layer(out)
        identity = x if self.downsample is None else self.downsample(x)
        private = False
        if not torch.compiler.is_compiling() and not x.requires_grad:
            if identity is x:
                private = input_is_private
            else:  # the downsample's output, unless it is a view of x
                private = identity.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()
            private = private and not _hooked(self)
        return self.conv3(out, identity, into_other=private)


class FrozenBlocks(nn.Sequential):
    """A stage of FrozenBottlenecks (a ResNeSt layer): runs them in turn, and tells each block after the first that
    its input is private (the previous block's output, which nothing outside the stage has seen), so that its conv3
    may write into it. Not with a forward hook anywhere in the stage (or a global one)."""

    def forward(self, x: Tensor) -> Tensor:
        private = False
        hooked = _hooked(self)
        for block in self:
            x = block(x, input_is_private=private and not hooked)
            private = True
        return x


class _Options(NamedTuple):
    winograd: bool
    fold_in_place: bool


def _is_conv_module(m: nn.Module) -> bool:
    """Our decode heads' ConvModule, or mmcv's (a converted mmseg model keeps its heads): conv -> norm ->
    activation, with those attribute names."""
    is_mmcv = type(m).__name__ == "ConvModule" and type(m).__module__.startswith("mmcv.")
    if not (isinstance(m, ConvModule) or is_mmcv) or type(getattr(m, "conv", None)) is not nn.Conv2d:
        return False
    order = getattr(m, "order", ("conv", "norm", "act"))
    norm = getattr(m, "bn", None)
    act = getattr(m, "activate", None)
    norm_ok = norm is None or isinstance(norm, _BatchNorm)
    act_ok = act is None or isinstance(act, nn.ReLU)
    return tuple(order) == ("conv", "norm", "act") and norm_ok and act_ok and not getattr(m, "with_spectral_norm",
                                                                                          False)


def _freeze_sequential(seq: nn.Sequential, opts: _Options) -> nn.Sequential:
    """conv [-> BN] [-> ReLU] runs inside a Sequential become FrozenConv2d; other children are frozen in turn."""
    out, items, i = [], list(seq), 0
    while i < len(items):
        m = items[i]
        if type(m) is nn.Conv2d:
            bn = items[i + 1] if i + 1 < len(items) and isinstance(items[i + 1], _BatchNorm) else None
            j = i + 1 + (bn is not None)
            relu = j < len(items) and isinstance(items[j], nn.ReLU)
            out.append(FrozenConv2d(m, bn, relu=relu, **opts._asdict()))
            i = j + relu
        else:
            out.append(_freeze(m, opts))
            i += 1
    return nn.Sequential(*out)


def _freeze(m: nn.Module, opts: _Options) -> nn.Module:
    if isinstance(m, (FrozenConv2d, FrozenBottleneck, FrozenBlocks)):  # optimize_for_inference of its own result
        return m
    if isinstance(m, Bottleneck):
        return FrozenBottleneck(m, **opts._asdict())
    if isinstance(m, SplitAttentionConv2d):
        if not isinstance(m.conv, FrozenConv2d):
            m.conv = FrozenConv2d(m.conv, **opts._asdict())  # bn0 stays: the fused ops apply it (and the ReLU)
        return m
    if _is_conv_module(m):
        return FrozenConv2d(m.conv, getattr(m, "bn", None), relu=getattr(m, "activate", None) is not None,
                            **opts._asdict())
    if (isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward and len(m)
            and all(isinstance(b, Bottleneck) for b in m)):  # a stage (ResLayer), or a Sequential of blocks
        return FrozenBlocks(*(FrozenBottleneck(b, **opts._asdict()) for b in m))
    if type(m) is nn.Sequential:
        return _freeze_sequential(m, opts)
    if type(m) is nn.Conv2d:
        return FrozenConv2d(m, **opts._asdict())
    for name, child in list(m.named_children()):
        new = _freeze(child, opts)
        if new is not child:
            setattr(m, name, new)
    return m


def _copy_sharing_folded_tensors(model: nn.Module):
    """(deep copy of model, {id: tensor} of the original's tensors the copy shares): the parameters and buffers
    of every Conv2d and BatchNorm are shared instead of copied, since freezing folds them into new tensors and
    drops them. The copy then costs the small modules only, not a second set of weights."""
    shared = {id(t): t for m in model.modules() if isinstance(m, (nn.Conv2d, _BatchNorm))
              for t in (*m.parameters(recurse=False), *m.buffers(recurse=False))}
    return copy.deepcopy(model, memo=dict(shared)), shared


def _unshare(model: nn.Module, shared: dict) -> None:
    """Gives the modules that freezing kept as they are (e.g. the split-attention's fc1/bn0) their own copy of
    any tensor still shared with the original, so that the original is never changed through them."""
    for m in model.modules():
        for table in (m._parameters, m._buffers):
            for name, t in table.items():
                if t is not None and id(t) in shared:
                    table[name] = nn.Parameter(t.detach().clone(), False) if isinstance(t, nn.Parameter) \
                        else t.detach().clone()


class InferenceOnlyTrain:
    """`train` of every module of an optimized model: train(False) / eval() as usual, train(True) refused before any
    flag changes. In train mode the split-attention norms the model keeps (bn0, bn1) would run on batch statistics
    and overwrite their running ones, while the folded convs cannot learn: the outputs would silently change for
    good. Refusing (as torch does for `ExportedProgram.module()`) rather than ignoring the call: a training loop
    around the model should fail, not run without effect.

    Set as an instance attribute of each module, so that the refusal holds wherever the call starts (a submodule's
    train() flips its own flag before it reaches any child). The module is held by a weak reference: a strong one
    would make every module a reference cycle, freed only by the garbage collector."""

    def __init__(self, module: nn.Module):
        self._module = weakref.ref(module)

    def __call__(self, mode: bool = True) -> nn.Module:
        module = self._module()
        if mode is True:
            raise RuntimeError(
                f"{type(module).__name__}.train(): this model was made by resnest_fast.optimize_for_inference and "
                "is for inference only (BatchNorm folded into the convs, no gradients); train the original model, "
                "then optimize it again")
        return type(module).train(module, mode)

    def __reduce__(self):  # copies and pickles of the module refuse too, bound to the copy
        return type(self), (self._module(),)


@torch.no_grad()
def optimize_for_inference(model: nn.Module, inplace: bool = False, keep_auxiliary_head: bool = False,
                           winograd: bool = True) -> nn.Module:
    """An inference-only version of `model` (a segmentor, a ResNeSt backbone, or any module built from them and
    mmcv-style ConvModules): eval mode (train(True) raises, see InferenceOnlyTrain), BN folded into the convs,
    ReLU/residual adds as conv post-ops, conv weights prepacked for oneDNN on CPU, activations channels_last. Its
    outputs equal the model's within fp32 rounding. `winograd=False` keeps every conv on oneDNN / F.conv2d (no
    Winograd F(2x2, 3x3) for the big 3x3 convs on CPU, see FrozenConv2d).

    Memory: the result keeps one copy of each conv weight, in the form that runs (see FrozenConv2d).
    `inplace=False` (default) leaves `model` untouched: the result shares nothing with it, and building it copies
    only the modules that are kept as they are (the convs and BNs are read, folded into new tensors, not
    copied), but while the caller holds `model` its weights stay alive next to the result's. `inplace=True`
    converts `model` itself (it is then the inference-only module) and drops its convs' and BNs' tensors as it
    folds them: the way to hold a single set of weights, e.g. `model = optimize_for_inference(model,
    inplace=True)`."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    shared = {}
    if not inplace:
        model, shared = _copy_sharing_folded_tensors(model)
    model.eval()
    if not keep_auxiliary_head and getattr(model, "auxiliary_head", None) is not None:
        model.auxiliary_head = None  # never run at inference; its prepacked weights would only take memory
    # inplace: the folded weights overwrite the originals' storage, which `model` gives up
    frozen = _freeze(model, _Options(winograd, fold_in_place=inplace))
    _unshare(frozen, shared)
    for p in frozen.parameters():
        p.requires_grad_(False)
    frozen.eval()
    for m in frozen.modules():
        m.train = InferenceOnlyTrain(m)
    return frozen
