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


def held_storages(module):
    """{storage key: (bytes, form)} of every tensor the module's tree holds (parameters, buffers and plain
    attributes such as oneDNN's packed weights), each storage once. form: "onednn-packed" (an opaque oneDNN
    tensor, counted at its logical size: its blocked layout may pad a few channels), "winograd" (a
    `winograd_weight`) or "dense"."""
    found = {}

    def visit(obj, form):
        if isinstance(obj, torch.Tensor):
            if obj.is_mkldnn:
                found[("mkldnn", id(obj))] = (obj.numel() * obj.element_size(), "onednn-packed")
            else:
                s = obj.untyped_storage()
                found.setdefault((s.data_ptr(), s.nbytes()), (s.nbytes(), form))
        elif isinstance(obj, (tuple, list)):
            for item in obj:
                visit(item, form)
        elif isinstance(obj, dict):
            for name, item in obj.items():
                visit(item, "winograd" if name == "winograd_weight" else form)

    for m in module.modules():
        visit({k: v for k, v in vars(m).items() if k != "_modules"}, "dense")
    return found


def held_bytes_by_form(module):
    """{form: bytes} over `held_storages(module)`."""
    out = {}
    for nbytes, form in held_storages(module).values():
        out[form] = out.get(form, 0) + nbytes
    return out
