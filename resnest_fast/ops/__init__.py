"""Fused split-attention ops (functional API). See splat_pool.py, splat_combine.py and splat_conv_pool.py for the
maths."""
from resnest_fast.ops import registrations  # noqa: F401  (fake kernels, autograd and the Triton ops, once)
from resnest_fast.ops.splat_backward import (
    splat_backward_input,
    splat_backward_input_reference,
    splat_backward_reduce,
    splat_backward_reduce_reference,
)
from resnest_fast.ops.splat_bn_stats import splat_bn_stats, splat_bn_stats_reference
from resnest_fast.ops.splat_conv_pool import splat_conv_pool, splat_conv_pool_reference
from resnest_fast.ops.splat_combine import attention_weights_reference, splat_combine, splat_combine_reference
from resnest_fast.ops.splat_pool import activate_reference, splat_pool, splat_pool_reference

__all__ = [
    "splat_pool",
    "splat_pool_reference",
    "splat_combine",
    "splat_combine_reference",
    "splat_conv_pool",
    "splat_conv_pool_reference",
    "attention_weights_reference",
    "activate_reference",
    "splat_bn_stats",
    "splat_bn_stats_reference",
    "splat_backward_reduce",
    "splat_backward_reduce_reference",
    "splat_backward_input",
    "splat_backward_input_reference",
]
