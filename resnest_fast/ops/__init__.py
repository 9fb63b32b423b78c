"""Fused split-attention ops (functional API). See splat_pool.py and splat_combine.py for the maths."""
from resnest_fast.ops.splat_backward import splat_backward_input_reference, splat_backward_reduce_reference
from resnest_fast.ops.splat_bn_stats import splat_bn_stats, splat_bn_stats_reference
from resnest_fast.ops.splat_combine import attention_weights_reference, splat_combine, splat_combine_reference
from resnest_fast.ops.splat_pool import activate_reference, splat_pool, splat_pool_reference

__all__ = [
    "splat_pool",
    "splat_pool_reference",
    "splat_combine",
    "splat_combine_reference",
    "attention_weights_reference",
    "activate_reference",
    "splat_bn_stats",
    "splat_bn_stats_reference",
    "splat_backward_reduce_reference",
    "splat_backward_input_reference",
]


def _load_triton_ops():
    """Registers the Triton ops where they can run (CUDA present, or the interpreter on CPU tensors)."""
    import torch

    from resnest_fast import _extension as ext

    if not ext.HAS_TRITON or not (torch.cuda.is_available() or ext.triton_interpreting()):
        return
    try:
        import resnest_fast.kernels.splat  # noqa: F401
    except Exception as exc:  # a broken triton install must not break `import resnest_fast`
        import warnings

        ext.HAS_TRITON = False
        warnings.warn(f"resnest_fast: triton is installed but its kernels failed to load ({exc})", RuntimeWarning)


_load_triton_ops()
