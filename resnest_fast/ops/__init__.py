"""Fused split-attention ops (functional API). See splat_pool.py and splat_combine.py for the maths."""
from resnest_fast.ops import registrations  # noqa: F401  (fake kernels, autograd and the Triton ops, once)
from resnest_fast.ops.splat_backward import (
    splat_backward_input,
    splat_backward_input_reference,
    splat_backward_reduce,
    splat_backward_reduce_reference,
)
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
    "splat_backward_reduce",
    "splat_backward_reduce_reference",
    "splat_backward_input",
    "splat_backward_input_reference",
]
