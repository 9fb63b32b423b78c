"""The post-conv part of one split-attention block, written by each provider, for the benchmarks.

Inputs are the conv output y (B, R*C, H, W) and the block's bn0 / attention-MLP modules; every provider computes
the same (B, C, H, W) output. "eager" is mmseg's forward after the conv, verbatim in structure (bn0 -> relu ->
view/sum -> adaptive_avg_pool -> fc1 -> bn1 -> relu -> fc2 -> rSoftMax -> mul -> sum); "compiled" is
torch.compile of that same function; "ours-<backend>" is SplitAttentionConv2d's fused path.
The op-level pieces (eager_pool_op / fused_pool_op, eager_combine_op / fused_combine_op) are the parts of that
forward each fused op replaces, bn0 -> relu included on both sides.
"""
import copy

import torch
import torch.nn.functional as F

from resnest_fast.nn import SplitAttentionConv2d
from resnest_fast.ops import splat_combine, splat_pool


def make_block(channels=256, radix=2, groups=1, dtype=torch.float32, train=False, channels_last=False, seed=0):
    torch.manual_seed(seed)
    block = SplitAttentionConv2d(channels, channels, 3, padding=1, radix=radix, groups=groups)
    with torch.no_grad():
        for m in (block.bn0, block.bn1):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(-0.5, 0.5)
    block = block.to(dtype).train(train)
    if channels_last:
        block = block.to(memory_format=torch.channels_last)
    return block


def eager_post_conv(block, y):
    """mmseg's SplitAttentionConv2d.forward after self.conv."""
    x = F.relu(block.bn0(y))
    gap, splits = eager_split_pool(x, block.radix)
    gap = F.relu(block.bn1(block.fc1(gap)))
    atten = eager_rsoftmax(block.fc2(gap), block.radix, block.groups)
    return eager_weighted_sum(atten, splits if block.radix > 1 else x, block.radix)


# mmseg's forward in the pieces that the fused ops replace (the op-level benchmarks time them separately):
# split_pool is what splat_pool fuses, rsoftmax + weighted_sum what splat_combine fuses, both after bn0 -> relu.


def eager_split_pool(x, radix):
    """mmseg: view/sum over the radix splits, then adaptive_avg_pool2d. x (B, R*C, H, W) activated ->
    (gap (B, C, 1, 1), splits (B, R, C, H, W) or None when radix == 1)."""
    batch = x.size(0)
    if radix > 1:
        splits = x.view(batch, radix, -1, *x.shape[2:])
        gap = splits.sum(dim=1)
    else:
        splits, gap = None, x
    return F.adaptive_avg_pool2d(gap, 1), splits


def eager_rsoftmax(logits, radix, groups):
    """mmseg's rSoftMax on fc2's output (B, R*C, 1, 1) -> attention (B, R*C, 1, 1)."""
    batch = logits.size(0)
    if radix > 1:
        atten = logits.view(batch, groups, radix, -1).transpose(1, 2)
        atten = F.softmax(atten, dim=1).reshape(batch, -1)
    else:
        atten = torch.sigmoid(logits)
    return atten.view(batch, -1, 1, 1)


def eager_weighted_sum(atten, splits, radix):
    """mmseg: sum over r of attention * split r; splits is (B, R, C, H, W) (radix > 1) or x (radix == 1)."""
    batch = atten.size(0)
    if radix > 1:
        attens = atten.view(batch, radix, -1, *atten.shape[2:])
        out = torch.sum(attens * splits, dim=1)
    else:
        out = atten * splits
    return out.contiguous()


def eager_pool_op(block, y):
    """What splat_pool computes, the mmseg way: bn0 -> relu -> view/sum -> adaptive_avg_pool. -> (B, C)."""
    return eager_split_pool(F.relu(block.bn0(y)), block.radix)[0].flatten(1)


def eager_combine_op(block, y, logits):
    """What splat_combine computes, the mmseg way: bn0 -> relu, rSoftMax(logits (B, R*C)) -> mul -> sum."""
    x = F.relu(block.bn0(y))
    splits = x.view(x.size(0), block.radix, -1, *x.shape[2:]) if block.radix > 1 else x
    atten = eager_rsoftmax(logits[:, :, None, None], block.radix, block.groups)
    return eager_weighted_sum(atten, splits, block.radix)


def fused_pool_op(block, y):
    """splat_pool with bn0 as the module computes it per call: (scale, shift) from the running statistics
    (eval) or from splat_bn_stats' batch statistics, running statistics updated (train)."""
    scale, shift, _ = block.bn0_scale_shift(y)
    return splat_pool(y, scale, shift, radix=block.radix, relu=True, backend=block.backend)


def fused_combine_op(block, y, logits):
    """splat_combine with bn0's (scale, shift) as the module computes it per call."""
    scale, shift, _ = block.bn0_scale_shift(y)
    return splat_combine(y, logits, scale, shift, radix=block.radix, groups=block.groups, relu=True,
                         backend=block.backend)


def fused_post_conv(block, y):
    """SplitAttentionConv2d.attend: the module's own code path after self.conv, with its backend."""
    return block.attend(y)


@torch.no_grad()
def away_from_the_kink(block, y, gap):
    """y with every bn0 pre-activation at least gap/2 away from 0 (the few closer are moved to +-gap).

    At ReLU's kink the gradient depends on how the pre-activation was rounded: eager computes
    (y - mean) * invstd * weight + bias, the fused ops y * scale + shift, and among millions of elements a few
    land on opposite sides of 0, each moving one entry of grad y by a whole term. That is tie-breaking, not
    accuracy; with the inputs kept off the kink, the gate compares gradients element by element.
    """
    bn = copy.deepcopy(block.bn0).double()
    for attempt in range(4):
        y64 = y.double()
        if bn.training:
            var, mean = torch.var_mean(y64, dim=(0, 2, 3), correction=0)
        else:
            var, mean = bn.running_var, bn.running_mean
        slope = bn.weight / torch.sqrt(var + bn.eps)
        pre = (y64 - mean[:, None, None]) * slope[:, None, None] + bn.bias[:, None, None]
        near = pre.abs() < (gap / 2 if attempt else gap)
        if not near.any():
            return y
        target = torch.where(pre < 0, -gap, gap)
        moved = y64 + torch.where(near, (target - pre) / slope[:, None, None], torch.zeros_like(pre))
        y = moved.to(y.dtype)
    raise RuntimeError("could not move the benchmark input off ReLU's kink")
