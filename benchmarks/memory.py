"""Bytes autograd keeps for backward, each storage counted once (torch.autograd.graph.saved_tensors_hooks)."""
import torch

from benchmarks.providers import eager_post_conv, make_block


def saved_storage_bytes(fn, *args):
    storages = {}

    def pack(t):
        s = t.untyped_storage()
        storages[(s.data_ptr(), s.nbytes())] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*args)
    del out
    return sum(storages.values())


def saved_bytes_ratio(b, c, h, w, radix=2):
    """(ours, mmseg-style) bytes saved by one whole SplitAttentionConv2d (conv included) in train mode."""
    block = make_block(channels=c, radix=radix, train=True)
    x = torch.randn(b, c, h, w, requires_grad=True)
    ours = saved_storage_bytes(block, x)
    ref = saved_storage_bytes(lambda t: eager_post_conv(block, block.conv(t)), x)
    return ours, ref
