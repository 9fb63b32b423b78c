"""benchmarks.memory_model against what really runs: the real eager_post_conv and the real fused path are run
under a TorchDispatchMode that sums, for every aten / resnest_fast op, the distinct bytes of its input and output
tensors (views move nothing); the model's per-block counts must equal those sums. (The per-block shapes come from
benchmarks/stage_shapes.py, checked against forward hooks on the real backbones by test_stage_shapes.py.)"""
import math
import os

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from benchmarks import memory_model as mm
from benchmarks.providers import eager_post_conv, fused_post_conv, make_block
from benchmarks.stage_shapes import Block, resnest101_d8_blocks
from resnest_fast.backend import available_backends
from tests.benchmarks.refusals import refused

needs_cpu_kernels = pytest.mark.skipif("cpu" not in available_backends("cpu"),
                                       reason="the fused path's counts are those of the C++ ops (not built)")


def _distinct_bytes(t):
    """Bytes of the distinct elements a tensor addresses (a broadcast dimension, stride 0, counts once)."""
    n = 1
    for size, stride in zip(t.shape, t.stride()):
        if stride != 0:
            n *= size
    return n * t.element_size()


class ByteCounter(TorchDispatchMode):
    """Sums input + output bytes of every op, split into (.., H, W) maps and the rest."""

    def __init__(self, hw):
        super().__init__()
        self.hw = hw
        self.map = self.small = 0
        self.ops = []

    def _is_map(self, t):
        return t.dim() >= 2 and tuple(t.shape[-2:]) == self.hw and all(s != 0 for s in t.stride()[-2:])

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.is_view or func is torch.ops.aten._unsafe_view.default:
            return out  # aliases its input: no data moves
        tensors = [t for t in tree_flatten((args, kwargs))[0] + tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        m = sum(_distinct_bytes(t) for t in tensors if self._is_map(t))
        s = sum(_distinct_bytes(t) for t in tensors if not self._is_map(t))
        self.map += m
        self.small += s
        self.ops.append((str(func), m, s))
        return out


def _count(block, y, fused, train):
    fn = fused_post_conv if fused else eager_post_conv
    counter = ByteCounter(tuple(y.shape[-2:]))
    params = [p for name, p in block.named_parameters() if not name.startswith("conv.")]
    b, k, h, w = y.shape
    grad_out = torch.randn(b, k // block.radix, h, w)  # made outside the counter: not part of the block's traffic
    with counter:
        if train:
            out = fn(block, y)
            torch.autograd.grad(out, [y] + params, grad_out)
        else:
            with torch.no_grad():
                fn(block, y)
    return counter


def _block(b, c, h, w, radix, groups):
    return Block("layer", b, c, h, w, radix=radix, groups=groups)


# H, W chosen so that no per-channel tensor ends in (H, W): the map / small split is unambiguous
@pytest.mark.parametrize("radix,groups", [(2, 1), (4, 2), (1, 1)])
@pytest.mark.parametrize("fused", [False, True], ids=["eager", "fused"])
def test_inference_counts_equal_the_ops_that_run(fused, radix, groups):
    if fused and "cpu" not in available_backends("cpu"):
        pytest.skip("the fused path's counts are those of the C++ ops (not built)")
    b, c, h, w = 2, 16, 5, 7
    block = make_block(channels=c, radix=radix, groups=groups, train=False)
    block.backend = "cpu" if fused else None
    y = torch.randn(b, radix * c, h, w)
    counter = _count(block, y, fused, train=False)
    ops = (mm.fused_inference_ops if fused else mm.eager_inference_ops)(_block(b, c, h, w, radix, groups), 4)
    assert mm.map_bytes(ops) == counter.map, counter.ops
    assert mm.total_bytes(ops) == counter.map + counter.small, counter.ops


@needs_cpu_kernels
@pytest.mark.parametrize("radix", [2, 4])
@pytest.mark.parametrize("fused", [False, True], ids=["eager", "fused"])
def test_training_counts_equal_the_ops_that_run(fused, radix):
    b, c, h, w = 2, 16, 5, 7
    block = make_block(channels=c, radix=radix, groups=1, train=True)
    block.backend = "cpu"
    y = torch.randn(b, radix * c, h, w, requires_grad=True)
    counter = _count(block, y, fused, train=True)
    ops = (mm.fused_training_ops if fused else mm.eager_training_ops)(_block(b, c, h, w, radix, 1), 4)
    assert mm.map_bytes(ops) == counter.map, counter.ops
    assert mm.total_bytes(ops) == counter.map + counter.small, counter.ops


def test_headline_pass_counts():
    """The passes over y the README quotes: eager inference 9.5, fused 2.5 (radix 2, map bytes / bytes of y)."""
    blk = _block(2, 64, 32, 32, 2, 1)
    y_bytes = 2 * 128 * 32 * 32 * 4
    assert mm.map_bytes(mm.eager_inference_ops(blk)) / y_bytes == 9.5
    assert mm.map_bytes(mm.fused_inference_ops(blk)) / y_bytes == 2.5


def test_cli_writes_the_labelled_csv_and_rejects_bad_arguments(tmp_path, capsys):
    out = tmp_path / "mm.csv"
    mm.main(["--size", "64", "128", "--batch", "2", "--bandwidth", "1e12", "--output", str(out)])
    printed = capsys.readouterr().out
    assert mm.LABEL.upper() in printed
    import csv

    rows = list(csv.DictReader(out.open()))
    assert [r["stage"] for r in rows] == ["one layer1 block", "one layer2.0 block", "one layer2.1+ block",
                                          "one layer3 block", "one layer4 block",
                                          "layer1", "layer2", "layer3", "layer4", "total"]
    assert [int(r["blocks"]) for r in rows] == [1] * 5 + [3, 4, 23, 3, 33]
    assert all(r["kind"] == mm.LABEL for r in rows)
    total = rows[-1]
    blocks = resnest101_d8_blocks(2, 64, 128)
    expected = sum(mm.total_bytes(mm.eager_training_ops(b)) for b in blocks)
    assert int(total["training_eager_bytes"]) == expected
    assert math.isclose(float(total["training_eager_us"]), expected / 1e12 * 1e6, rel_tol=1e-3)
    for bad in (["--batch", "0"], ["--bandwidth", "-1"], ["--size", "64"], ["--dtype-bytes", "3"]):
        with pytest.raises(SystemExit):
            mm.main(bad + ["--output", str(out)])
        assert "argument" in capsys.readouterr().err
    with pytest.raises(ValueError, match="radix >= 2"):
        mm.eager_training_ops(Block("x", 2, 8, 4, 4, radix=1))


def test_numbers_out_of_range_and_bad_outputs_are_one_line_and_leave_nothing(tmp_path, capsys):
    """--bandwidth inf printed 0.000 ms; a folder, an empty string or a path under a file as --output was a traceback
    after the table, with a .tmp file left beside it; an existing CSV was replaced without being asked."""
    (tmp_path / "a-file").write_text("mine\n")
    mine = tmp_path / "mm.csv"
    mine.write_text("mine\n")
    for argv, words in ((["--bandwidth", "inf"], ["--bandwidth", "'inf'"]),
                        (["--bandwidth", "nan"], ["--bandwidth", "'nan'"]),
                        (["--output", str(tmp_path)], ["--output", "is a folder"]),
                        (["--output", ""], ["--output", "empty string"]),
                        (["--output", str(tmp_path / "a-file" / "x.csv")], ["--output", "is a file"]),
                        (["--output", str(mine)], ["--output", "already exists", "--overwrite"])):
        refused(capsys, mm.main, argv + ([] if "--output" in argv else ["--output", str(tmp_path / "new.csv")]),
                *words)
        assert capsys.readouterr().out == ""  # refused before the table
    assert sorted(os.listdir(tmp_path)) == ["a-file", "mm.csv"] and mine.read_text() == "mine\n"
    assert mm.main(["--size", "64", "128", "--output", str(mine), "--overwrite"]) == 0
    assert mine.read_text().startswith("git,kind,") and sorted(os.listdir(tmp_path)) == ["a-file", "mm.csv"]
