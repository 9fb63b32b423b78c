"""The byte counters of benchmarks/inference_memory.py and benchmarks/memory.py, on computations whose bytes are
known."""
import csv

import pytest
import torch

from benchmarks.inference_memory import heap_free_bytes, live_bytes_peak, main
from benchmarks.memory import held_bytes_by_form, held_storages
from tests.benchmarks.refusals import refused


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
    assert exc.value.code == 2 and "argument --calls: expected a whole number >= 1, got '0'" in capsys.readouterr().err


def test_a_bad_model_is_one_line_naming_the_option_given(capsys):
    line = refused(capsys, main, ["--model", "bogus"], "--model", "'bogus'")
    assert "--models" not in line
    refused(capsys, main, ["--threads", "0"], "--threads")


def test_ctrl_c_keeps_the_rows_measured_so_far(tmp_path, monkeypatch, capsys, fresh_report):
    """--model all measures each config in turn; Ctrl-C in the second leaves the first one's rows on disk."""
    from benchmarks import inference_memory, report

    seen = []

    def measure_model(name, args):
        seen.append(name)
        if len(seen) == 2:
            raise KeyboardInterrupt
        report.add("inference_memory", {"model": name, "provider": "ours", "peak_mib": 1.0})

    monkeypatch.setattr(inference_memory, "measure_model", measure_model)
    assert main(["--model", "all", "--results-dir", str(tmp_path)]) == 130
    assert "partial results" in capsys.readouterr().err
    with open(tmp_path / report.csv_name("inference_memory"), newline="") as f:
        assert [r["model"] for r in csv.DictReader(f)] == seen[:1]
