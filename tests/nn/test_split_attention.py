"""resnest_fast.nn.SplitAttentionConv2d against mmsegmentation's real SplitAttentionConv2d: same state_dict
(strict=True), same outputs, running statistics and gradients, in eval and train mode."""
import copy

import pytest
import torch

from resnest_fast import _extension as ext
from resnest_fast.backend import available_backends
from resnest_fast.nn import SplitAttentionConv2d
from tests.mmseg_reference import import_mmseg_resnest
from tests.parity import randomize
from resnest_fast.testing.tolerances import assert_max_abs

BACKENDS = available_backends("cpu")
FAST_BACKENDS = [b for b in BACKENDS if b != "triton"]  # the interpreter is slow: Triton gets the small sweep
CONFIGS = [  # (in_channels, channels, radix, groups, stride, dilation)
    (16, 16, 1, 1, 1, 1),
    (16, 16, 2, 1, 1, 1),
    (32, 16, 4, 2, 1, 1),
    (16, 32, 2, 2, 2, 1),
    (16, 16, 2, 1, 1, 2),
]


def pair(in_ch, ch, radix, groups, stride, dilation, backend=None):
    mmseg = import_mmseg_resnest()
    ref = mmseg.SplitAttentionConv2d(in_ch, ch, 3, stride=stride, padding=dilation, dilation=dilation,
                                     groups=groups, radix=radix, reduction_factor=4, norm_cfg=dict(type="BN"))
    randomize(ref)
    ours = SplitAttentionConv2d(in_ch, ch, 3, stride=stride, padding=dilation, dilation=dilation, groups=groups,
                                radix=radix, reduction_factor=4, norm_cfg=dict(type="BN"), backend=backend)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("channels_last", [False, True])
def test_eval_matches_mmseg(backend, config, channels_last):
    """Output within 1e-5 of mmseg's (the parity criterion). Gradients are sums over the batch and the image
    (bn1.weight's over B x H x W products), whose fp32 rounding depends on the summation order, which for ATen
    changes with the thread count: they are judged against mmseg in float64, within twice mmseg's own fp32 error
    plus 1e-5 of the tensor's scale (the parity tolerance)."""
    ref, ours = pair(*config, backend=backend)
    ref.eval()
    ours.eval()
    ref64 = copy.deepcopy(ref).double()
    x = torch.randn(2, config[0], 9, 7)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x_ref, x_ours, x64 = x.clone().requires_grad_(), x.clone().requires_grad_(), x.double().requires_grad_()
    out_ref, out, out64 = ref(x_ref), ours(x_ours), ref64(x64)
    assert_max_abs("out", out, out_ref)
    if channels_last:
        assert out.is_contiguous(memory_format=torch.channels_last)
    g = torch.randn_like(out_ref)
    for o in (out_ref, out, out64):
        o.backward(g.to(o.dtype))
    grads = [("grad x", x_ours.grad, x_ref.grad, x64.grad)] + [
        (f"grad {name}", p.grad, p_ref.grad, p64.grad)
        for (name, p_ref), (_, p), (_, p64) in zip(ref.named_parameters(), ours.named_parameters(),
                                                    ref64.named_parameters())
    ]
    for name, got, mm32, mm64 in grads:
        err = (got.double() - mm64).abs().max().item()
        bound = 2 * (mm32.double() - mm64).abs().max().item() + 1e-5 * max(1.0, mm64.abs().max().item())
        assert err <= bound, f"{name}: error {err:.3g} > {bound:.3g}"


def run_with_grads(module, x, grad_seed=1):
    x = x.clone().requires_grad_(True)
    out = module(x)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed), dtype=torch.float64)
    out.backward(g.to(out.dtype))
    return [out, x.grad] + [p.grad for p in module.parameters()]


def assert_train_parity(ref, ours, x, steps=2):
    """Train mode normalises over the batch (bn0 and bn1), which amplifies rounding: the oracle is mmseg's module
    in float64, and ours (fp32) must be within twice mmseg's own fp32 error of it, plus 1e-5 of the module's
    largest gradient. Running statistics and num_batches_tracked must follow BatchNorm exactly."""
    ref64 = copy.deepcopy(ref).double()
    for step in range(steps):
        for m in (ref, ours, ref64):
            m.zero_grad()
        got = run_with_grads(ours, x)
        mm32 = run_with_grads(ref, x)
        mm64 = run_with_grads(ref64, x.double())
        scale = max(1.0, max(t.abs().max().item() for t in mm64))
        names = ["out", "grad x"] + [f"grad {n}" for n, _ in ref.named_parameters()]
        for name, a, b, c in zip(names, got, mm32, mm64):
            err = (a.double() - c).abs().max().item()
            bound = 2 * (b.double() - c).abs().max().item() + 1e-5 * scale
            assert err <= bound, f"step {step}, {name}: error {err:.3g} > {bound:.3g}"
    for (name, b_ref), (_, b) in zip(ref.named_buffers(), ours.named_buffers()):
        assert_max_abs(f"buffer {name}", b.double(), b_ref.double(), tol=1e-5)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("config", CONFIGS)
def test_train_matches_mmseg(backend, config):
    ref, ours = pair(*config, backend=backend)
    ref.train()
    ours.train()
    assert_train_parity(ref, ours, torch.randn(8, config[0], 8, 11))


@pytest.mark.parametrize("momentum", [None, 0.3])
def test_batchnorm_momentum_variants(momentum):
    ref, ours = pair(16, 16, 2, 1, 1, 1)
    for m in (ref, ours):
        m.bn0.momentum = momentum
        m.train()
    assert_train_parity(ref, ours, torch.randn(8, 16, 6, 6), steps=3)
    assert int(ours.bn0.num_batches_tracked) == int(ref.bn0.num_batches_tracked)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("module_mode,norm_mode", [(True, False), (False, True)],
                         ids=["module-trains-norms-frozen", "module-eval-norms-train"])
def test_the_norms_own_training_flags_decide_as_in_mmseg(backend, module_mode, norm_mode):
    """bn0 and bn1 in another mode than the module (a backbone's norm_eval=True freezes them in a training model;
    test-time adaptation trains them in an eval model): batch or running statistics, and their updates, follow
    each norm's own flag, as mmseg's nn.BatchNorm2d do."""
    ref, ours = pair(32, 16, 4, 2, 1, 1, backend=backend)
    for m in (ref, ours):
        m.train(module_mode)
        m.bn0.train(norm_mode)
        m.bn1.train(norm_mode)
    start = int(ref.bn0.num_batches_tracked)
    assert_train_parity(ref, ours, torch.randn(8, 32, 6, 7))  # buffers included
    assert int(ours.bn0.num_batches_tracked) - start == (2 if norm_mode else 0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("train", [False, True])
def test_second_derivatives_match_mmseg(backend, train):
    """Double backward (create_graph=True, as a gradient penalty needs) through the module, fused training backward
    included, against mmseg's module in float64: d/dx and d/dparams of |d out/dx|^2. Before, the fused backward
    (no autograd of its own) gave a second derivative of 0 through the split attention."""
    ref, ours = pair(32, 16, 4, 2, 1, 1, backend=backend)
    ref.double().train(train)
    ours.double().train(train)
    x = torch.randn(4, 32, 5, 6, dtype=torch.float64)

    def second(m):
        xx = x.clone().requires_grad_(True)
        out = m(xx)
        weight = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
        first, = torch.autograd.grad((out * weight).sum(), xx, create_graph=True)
        return torch.autograd.grad((first * first).sum(), [xx] + list(m.parameters()), allow_unused=True)

    for (name, _), got, want in zip([("x", None)] + list(ref.named_parameters()), second(ours), second(ref)):
        if want is None:
            assert got is None or not got.any(), name
            continue
        assert_max_abs(f"d2/d{name}", got, want, tol=1e-9 * max(1.0, want.abs().max().item()))


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_func_transforms_take_the_module(backend):
    """torch.func.vmap and torch.func.grad over an eval-mode module with grad mode on: the results of a loop over
    the samples. Before, the fused backward's autograd.Function (no setup_context) made torch raise."""
    ref, ours = pair(16, 16, 2, 2, 1, 1, backend=backend)
    ref.eval()
    ours.eval()
    xs = torch.randn(3, 2, 16, 5, 6)
    got = torch.func.vmap(ours)(xs)
    want = torch.stack([ref(x) for x in xs])
    assert_max_abs("vmap", got, want, tol=1e-5)
    grad = torch.func.grad(lambda x: ours(x).square().sum())(xs[0])
    x = xs[0].clone().requires_grad_(True)
    ref(x).square().sum().backward()
    assert_max_abs("torch.func.grad", grad, x.grad, tol=1e-4)


@pytest.mark.skipif("triton" not in BACKENDS, reason="triton is not installed")
@pytest.mark.parametrize("train", [False, True])
def test_triton_backend_matches_mmseg(train):
    ref, ours = pair(32, 16, 4, 2, 1, 1, backend="triton")
    ref.train(train)
    ours.train(train)
    x = torch.randn(8, 32, 5, 7)
    if train:
        assert_train_parity(ref, ours, x, steps=1)
        return
    for name, a, b in zip(["out", "grad x"], run_with_grads(ours, x), run_with_grads(ref, x)):
        assert_max_abs(name, a, b)


def test_state_dict_keys_match_mmseg():
    ref, ours = pair(32, 16, 4, 2, 1, 1)
    assert list(ours.state_dict()) == list(ref.state_dict())
    for k, v in ref.state_dict().items():
        assert ours.state_dict()[k].shape == v.shape, k


def test_batch_of_one_eval_works_and_train_says_why():
    ref, ours = pair(16, 16, 2, 1, 1, 1)
    ref.eval()
    ours.eval()
    x = torch.randn(1, 16, 5, 5)
    torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)
    ours.train()
    with pytest.raises(ValueError, match="batch size 1 in training mode"):
        ours(x)
    ours.bn1.eval()  # norm layers frozen (norm_eval): batch 1 is fine
    ours.bn0.eval()
    ours(x)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(radix=0), "radix"),
        (dict(radix=9), "radix"),
        (dict(groups=3), "divisible"),
        (dict(dcn=dict(type="DCN")), "dcn"),
        (dict(norm_cfg=dict(type="GN")), "norm_cfg"),
        (dict(conv_cfg=dict(type="DCNv2")), "conv_cfg"),
        (dict(backend="gpu"), "backend"),
    ],
)
def test_bad_constructor_arguments(kwargs, match):
    args = dict(in_channels=16, channels=16, kernel_size=3)
    args.update(kwargs)
    with pytest.raises((ValueError, NotImplementedError), match=match):
        SplitAttentionConv2d(**args)


def test_repr_names_the_configuration():
    text = repr(SplitAttentionConv2d(16, 16, 3, radix=4, groups=2, backend="reference"))
    assert "radix=4, groups=2, backend=reference" in text
    assert "(bn0): BatchNorm2d(64" in text and "(fc2): Conv2d(32, 64" in text


def outputs_and_grads(module, x, autocast=False):
    """[out, grad x, grad of every parameter] of module(x) under autocast-bf16 or not, upstream gradient fixed."""
    module.zero_grad()
    x = x.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = module(x)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out.backward(g.to(out.dtype))
    return [out.detach(), x.grad] + [p.grad for p in module.parameters()]


def test_deepcopy_and_half_precision_eval():
    """A deep copy cast to bfloat16 (eval): output and every gradient against mmseg's module in float64 from the
    same rounded weights and input, within twice mmseg's own bfloat16 error plus bfloat16's floor (not against
    our own fp32 output, which would only bound our rounding by itself)."""
    from tests.ops.test_splat_kernel_paths import assert_twice_torch_error

    ref, ours = pair(16, 16, 2, 1, 1, 1)
    ref.eval()
    ours.eval()
    half, ref16 = copy.deepcopy(ours).to(torch.bfloat16), copy.deepcopy(ref).to(torch.bfloat16)
    ref64 = copy.deepcopy(ref16).double()
    x = torch.randn(2, 16, 6, 6).to(torch.bfloat16)
    got, mm16, mm64 = outputs_and_grads(half, x), outputs_and_grads(ref16, x), outputs_and_grads(ref64, x.double())
    assert got[0].dtype == torch.bfloat16
    names = ["out", "grad x"] + [f"grad {n}" for n, _ in ref.named_parameters()]
    for name, a, b, c in zip(names, got, mm16, mm64):
        assert_twice_torch_error(name, a, b, c)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_bfloat16_eval_keeps_mmseg_relu_masks(backend):
    """A model cast to bfloat16 (parameters and running statistics bfloat16), eval mode: mmseg's bn0 computes in
    float32 internally, so the fused path must fold bn0 in float32 too, or pre-activations near zero change sign
    and the gradient of y differs by whole entries there (found by benchmarks/test_bench_ops.py's gate)."""
    ref, ours = pair(16, 16, 2, 1, 1, 1, backend=backend)
    ref, ours = ref.eval().to(torch.bfloat16), ours.eval().to(torch.bfloat16)
    torch.manual_seed(1)
    y = torch.randn(4, 32, 24, 24, dtype=torch.bfloat16, requires_grad=True)
    ours.attend(y).backward(torch.randn(4, 16, 24, 24, dtype=torch.bfloat16))
    with torch.no_grad():
        active = ref.bn0(y) > 0  # mmseg's bn0 -> relu: where the gradient of y can be nonzero
    # (a zero gradient at an active unit can be an exact bfloat16 cancellation; a gradient at an inactive one not)
    leaks = (y.grad != 0) & ~active
    assert not leaks.any(), f"{leaks.sum().item()} of {y.numel()} units mmseg's bn0 -> relu turns off get a gradient"


def test_autocast_bfloat16_train_matches_mmseg():
    """Train mode under autocast-bf16 (the fused backward with bn0's batch statistics): output and every gradient
    against mmseg's module in float64, within twice mmseg's own autocast error plus bfloat16's floor. bn1 keeps
    running statistics: over a small batch it would amplify the rounding of the logits' gradient into noise above
    the differences under test (test_train_matches_mmseg covers it in fp32)."""
    from tests.ops.test_splat_kernel_paths import assert_twice_torch_error

    ref, ours = pair(16, 16, 2, 1, 1, 1, backend="cpu")
    for m in (ref, ours):
        m.train()
        m.bn1.eval()
    ref64 = copy.deepcopy(ref).double()
    x = torch.randn(4, 16, 12, 10)
    got = outputs_and_grads(ours, x, autocast=True)
    mm16 = outputs_and_grads(ref, x, autocast=True)
    mm64 = outputs_and_grads(ref64, x.double())
    assert got[0].dtype == torch.bfloat16 and got[1].dtype == torch.float32
    names = ["out", "grad x"] + [f"grad {n}" for n, _ in ref.named_parameters()]
    for name, a, b, c in zip(names, got, mm16, mm64):
        assert_twice_torch_error(name, a, b, c, floor_dtype=torch.bfloat16)


@pytest.mark.skipif(not ext.HAS_CPU_KERNELS, reason="resnest_fast._C was not built")
@pytest.mark.parametrize("train", [False, True])
def test_torch_compile_fullgraph_module(train):
    """torch.compile of the module (the op-level autograd of the fused ops), output and every gradient against
    mmseg's module in float64: within twice mmseg's own fp32 error plus 1e-5 of the largest value (train mode
    normalises over the batch, which amplifies rounding in any summation order)."""
    torch._dynamo.reset()
    ref, ours = pair(32, 16, 4, 2, 1, 1)
    ref.train(train)
    ours.train(train)
    ref64 = copy.deepcopy(ref).double()
    compiled = torch.compile(ours, fullgraph=True)
    x = torch.randn(4, 32, 6, 5)
    got = outputs_and_grads(compiled, x)
    mm32 = outputs_and_grads(ref, x)
    mm64 = outputs_and_grads(ref64, x.double())
    scale = max(1.0, max(t.abs().max().item() for t in mm64))
    names = ["out", "grad x"] + [f"grad {n}" for n, _ in ref.named_parameters()]
    for name, a, b, c in zip(names, got, mm32, mm64):
        err = (a.double() - c).abs().max().item()
        bound = 2 * (b.double() - c).abs().max().item() + 1e-5 * scale
        assert err <= bound, f"{name}: error {err:.3g} > {bound:.3g}"


def test_train_mode_saves_only_conv_input_and_output():
    """A stage-3 block's shape: B=2, radix 2, C=256, 64x128 (conv weights are counted too: both keep them)."""
    ref, ours = pair(256, 256, 2, 1, 1, 1)
    ref.train()
    ours.train()
    x = torch.randn(2, 256, 64, 128, requires_grad=True)
    from benchmarks.memory import saved_storage_bytes

    ours_bytes = saved_storage_bytes(ours, x)
    ref_bytes = saved_storage_bytes(ref, x)
    conv_in, conv_out = x.numel() * 4, 2 * x.numel() * 2 * 4
    assert ours_bytes <= 0.62 * ref_bytes, (ours_bytes, ref_bytes)
    weights = sum(p.numel() * 4 for p in ours.parameters())
    assert ours_bytes <= conv_in + conv_out + weights + 64 * 1024, (ours_bytes, conv_in + conv_out + weights)


@pytest.mark.skipif(not ext.HAS_CPU_KERNELS, reason="resnest_fast._C was not built")
def test_cpu_backend_takes_the_two_pass_backward():
    """The parity tests above check the fused backward's numbers: make sure it is the path they ran."""
    _, ours = pair(16, 16, 2, 1, 1, 1, backend="cpu")
    for train in (True, False):
        ours.train(train)
        out = ours(torch.randn(2, 16, 5, 5, requires_grad=True))
        assert type(out.grad_fn).__name__ == "_FusedSplitAttentionBackward", type(out.grad_fn).__name__
    _, ref_path = pair(16, 16, 2, 1, 1, 1, backend="reference")
    out = ref_path.train()(torch.randn(2, 16, 5, 5, requires_grad=True))
    assert "Fused" not in type(out.grad_fn).__name__
