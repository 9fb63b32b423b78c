"""Tolerances as data. fp32/fp64 compare with allclose against the reference in the same dtype. Low precision
follows flash-attention's rule: |kernel - ref64| <= FACTOR * |torch_same_dtype - ref64| + FLOOR (max over the
tensor), the reference being computed in float64 from the same (rounded) inputs."""
import torch

ALLCLOSE = {  # dtype -> (atol, rtol)
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1e-5),
}
FACTOR = 2.0
FLOOR = {torch.float16: 1e-3, torch.bfloat16: 1e-2}


def assert_close_to_reference(name, got, ref_same_dtype, ref64):
    """got and ref_same_dtype in the tested dtype, ref64 in float64."""
    assert got.shape == ref64.shape, f"{name}: shape {tuple(got.shape)} != {tuple(ref64.shape)}"
    dtype = got.dtype
    if dtype in ALLCLOSE:
        atol, rtol = ALLCLOSE[dtype]
        torch.testing.assert_close(got, ref_same_dtype, atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}")
        return
    err = (got.double() - ref64).abs().max().item()
    ref_err = (ref_same_dtype.double() - ref64).abs().max().item()
    bound = FACTOR * ref_err + FLOOR[dtype] * max(1.0, ref64.abs().max().item())
    assert err <= bound, f"{name} ({dtype}): max error {err:.3g} > {bound:.3g} (torch in {dtype}: {ref_err:.3g})"


def assert_max_abs(name, got, ref, tol=1e-5):
    """max |got - ref| <= tol, relative to the tensor's scale where it exceeds 1 (fp32 sums of many terms,
    accumulated in another order, differ by a few ulps of their magnitude: mmseg against itself in another
    summation order does too)."""
    scale = max(1.0, ref.abs().max().item())
    err = (got - ref).abs().max().item()
    assert err <= tol * scale, f"{name}: max abs diff {err:.3g} > {tol:g} * {scale:.3g}"
