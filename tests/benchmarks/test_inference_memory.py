"""The byte counters of benchmarks/inference_memory.py and benchmarks/memory.py, on computations whose bytes are
known."""
import pytest
import torch

from benchmarks.inference_memory import heap_free_bytes, live_bytes_peak, main
from benchmarks.memory import held_bytes_by_form, held_storages


def test_live_peak_counts_what_is_alive_at_once():
    x = torch.randn(1000, 1000)  # 4 MB each

    def fn(t):
        a = t * 2
        b = a + 1
        del a
        c = b * 3  # two 4 MB tensors alive at a time, never three
        return c.sum()  # 4 more bytes while b and c are alive

    assert live_bytes_peak(fn, x) == 2 * 4_000_000 + 4
    view_of_input = live_bytes_peak(lambda t: t[:10] * 1, x, exclude={x.untyped_storage().data_ptr()})
    assert view_of_input == 10 * 1000 * 4


def test_held_storages_count_a_shared_storage_once():
    conv = torch.nn.Conv2d(4, 8, 3)
    conv.register_buffer("winograd_weight", torch.zeros(16, 4, 8))
    conv.register_buffer("alias", conv.weight.detach()[:2])  # a view: same storage as the weight
    forms = held_bytes_by_form(conv)
    assert forms == {"dense": (8 * 4 * 9 + 8) * 4, "winograd": 16 * 4 * 8 * 4}
    assert len(held_storages(conv)) == 3


def test_heap_free_and_bad_arguments(capsys):
    free = heap_free_bytes()
    assert free is None or free >= 0
    with pytest.raises(SystemExit) as exc:
        main(["--calls", "0"])
    assert exc.value.code == 2 and "--calls must be at least 1" in capsys.readouterr().err
