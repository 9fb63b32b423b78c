"""The post-conv part of one split-attention block, written by each provider, for the benchmarks.

Inputs are the conv output y (B, R*C, H, W) and the block's bn0 / attention-MLP modules; every provider computes
the same (B, C, H, W) output. "eager" is mmseg's forward after the conv, verbatim in structure (bn0 -> relu ->
view/sum -> adaptive_avg_pool -> fc1 -> bn1 -> relu -> fc2 -> rSoftMax -> mul -> sum); "compiled" is
torch.compile of that same function; "ours-<backend>" is SplitAttentionConv2d's fused path.
"""
import torch
import torch.nn.functional as F

from resnest_fast.nn import SplitAttentionConv2d


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
    batch = x.size(0)
    radix = block.radix
    if radix > 1:
        splits = x.view(batch, radix, -1, *x.shape[2:])
        gap = splits.sum(dim=1)
    else:
        gap = x
    gap = F.adaptive_avg_pool2d(gap, 1)
    gap = F.relu(block.bn1(block.fc1(gap)))
    atten = block.fc2(gap)
    if radix > 1:
        atten = atten.view(batch, block.groups, radix, -1).transpose(1, 2)
        atten = F.softmax(atten, dim=1).reshape(batch, -1)
    else:
        atten = torch.sigmoid(atten)
    atten = atten.view(batch, -1, 1, 1)
    if radix > 1:
        attens = atten.view(batch, radix, -1, *atten.shape[2:])
        out = torch.sum(attens * splits, dim=1)
    else:
        out = atten * x
    return out.contiguous()


def fused_post_conv(block, y):
    """SplitAttentionConv2d.attend: the module's own code path after self.conv, with its backend."""
    return block.attend(y)
