"""benchmarks.stages: the parts it times are the model's stages under mmseg's names, nested parts never take longer
than what holds them, and every block's part adds up under one label."""
import csv
import os

import torch

from benchmarks import report, stages
from resnest_fast import optimize_for_inference
from resnest_fast.segmentation import build_segmentor
from resnest_fast.testing.small_models import small_model_cfg
from tests.benchmarks.refusals import refused


def _models():
    torch.manual_seed(0)
    ours = build_segmentor(small_model_cfg("deeplabv3")).eval()
    fast = optimize_for_inference(ours)
    return {"ours": (ours, ours.decode), "ours-optimized": (fast, fast.decode)}


def test_parts_are_the_stages_and_nest_within_their_totals():
    models = _models()
    x = torch.randn(1, 3, 64, 96)
    results = stages.measure(models, x, rounds=2, warmup=1)
    for provider, (total, parts) in results.items():
        assert {"stem", "layer1", "layer4", "layer3.conv1", "head.aspp_modules.1", "head.bottleneck",
                "head.conv_seg"} <= set(parts), (provider, sorted(parts))
        # ours eager runs conv2's conv and split attention from the block (bn1 + ReLU fused into the conv's input)
        assert ("layer3.conv2" in parts) == (provider == "ours-optimized")
        top = [p for p in parts if "." not in p or p.startswith("head.") and p.count(".") == 1]
        assert sum(parts[p] for p in top) <= total
        for layer in ("layer1", "layer2", "layer3", "layer4"):
            inner = [v for p, v in parts.items() if p.startswith(layer + ".")]
            assert inner and sum(inner) <= parts[layer]


def test_a_label_adds_up_over_the_blocks():
    ours, _ = _models()["ours"]
    timer = stages.StageTimer(ours)
    calls = []
    for block in ours.backbone.layer3:
        block.conv1.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        ours.decode(torch.randn(1, 3, 32, 32))
    assert len(calls) == len(ours.backbone.layer3) > 1
    assert timer.times["layer3.conv1"] > 0
    timer.remove()
    timer.reset()
    with torch.no_grad():
        ours.decode(torch.randn(1, 3, 32, 32))
    assert not timer.times  # the hooks are gone


def test_timing_leaves_the_optimized_model_running_as_it_does_untimed():
    """The timer registers no forward hook (one would turn off the optimized blocks' in-place residual add), and
    the timed forward gives the untimed one's logits."""
    models = _models()
    fast, forward = models["ours-optimized"]
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        want = forward(x)
        timer = stages.StageTimer(fast)
        assert not any(m._forward_hooks or m._forward_pre_hooks for m in fast.modules())
        got = forward(x)
    assert timer.times["layer3.conv3"] > 0
    assert torch.equal(got, want)


def test_a_bad_model_is_one_line_naming_the_option_given(capsys):
    line = refused(capsys, stages.main, ["--model", "bogus"], "--model", "'bogus'")
    assert "--models" not in line
    refused(capsys, stages.main, ["--rounds", "0"], "--rounds")
    refused(capsys, stages.main, ["--size", "64", "-1"], "--size")


def test_all_runs_every_model_and_ctrl_c_keeps_those_finished(tmp_path, monkeypatch, capsys, fresh_report):
    """--model all times each of the eight configs in turn; Ctrl-C in the third writes the rows of the first two
    (one line saying they are partial) and exits 130, as the shell's Ctrl-C does."""
    from benchmarks.models import MODEL_CONFIGS

    built = []
    monkeypatch.setattr(stages, "build", lambda name, providers: built.append(name) or {"ours": (None, None)})

    def measure(models, x, rounds, warmup):
        if stop_at and len(built) == stop_at:
            raise KeyboardInterrupt
        return {"ours": (0.010, {"stem": 0.002})}

    monkeypatch.setattr(stages, "measure", measure)
    stop_at = None
    args = ["--model", "all", "--size", "8", "8", "--rounds", "1", "--providers", "ours"]
    assert stages.main(args + ["--results-dir", str(tmp_path / "all")]) == 0
    assert built == list(MODEL_CONFIGS.values())
    with open(tmp_path / "all" / report.csv_name("stages"), newline="") as f:
        assert sorted({r["model"] for r in csv.DictReader(f)}) == sorted(MODEL_CONFIGS.values())
    capsys.readouterr()

    built.clear()
    report.RESULTS.clear()
    stop_at = 3
    assert stages.main(args + ["--results-dir", str(tmp_path / "cut")]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "interrupted (Ctrl-C): partial results" in err[0], err
    with open(tmp_path / "cut" / report.csv_name("stages"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["model"] for r in rows if r["part"] == "total"] == list(MODEL_CONFIGS.values())[:2]
    assert os.listdir(tmp_path / "cut") == [report.csv_name("stages")]  # no temporary file left
