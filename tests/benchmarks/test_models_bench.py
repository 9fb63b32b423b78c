"""benchmarks/models.py: model selection, argument errors, and one tiny end-to-end run (the CSV it writes and a
memory measurement in its own process). No timing is asserted."""
import csv
import pathlib

import pytest
import torch

from benchmarks import models, report

RESNEST_CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "resnest_fast" / "segmentation" / "configs" / "resnest"
TINY = "resnest_s50-d8-w16_fcn_1xb8-400_synthetic-64x64"  # ResNeSt-50 at a quarter of the widths
CONTEXT = ("date", "git", "torch", "python", "machine", "malloc")


def test_all_is_the_eight_shipped_configs():
    shipped = sorted(p.stem for p in RESNEST_CONFIGS.glob("*.py"))
    assert len(shipped) == 8
    assert sorted(models.resolve_models(["all"])) == shipped


@pytest.mark.parametrize("name,head,dataset", [("deeplabv3", "deeplabv3", "cityscapes"),
                                               ("pspnet-ade20k", "pspnet", "ade20k"),
                                               ("deeplabv3plus-cityscapes", "deeplabv3plus", "cityscapes"),
                                               ("fcn-ade20k", "fcn", "ade20k")])
def test_names_pick_the_config_of_that_head_and_dataset(name, head, dataset):
    config, = models.resolve_models([name])
    assert f"_{head}_" in config and dataset in config
    assert (RESNEST_CONFIGS / f"{config}.py").exists()


def test_repeated_names_run_once_and_config_names_pass():
    assert models.resolve_models(["deeplabv3", "deeplabv3-cityscapes", TINY]) == [models.HEAD_CONFIGS["deeplabv3"],
                                                                                   TINY]


def test_default_size_is_the_crop_size_in_the_config_name():
    for config in models.resolve_models(["all"]):
        h, w = models.crop_size(config)
        assert config.endswith(f"{h}x{w}")


@pytest.mark.parametrize("argv,flag", [(["--models", "deeplabv4"], "--models"),
                                       (["--models", "all", "nope"], "--models"),
                                       (["--size", "0", "512"], "--size"),
                                       (["--rounds", "0"], "--rounds"),
                                       (["--warmup", "-1"], "--warmup"),
                                       (["--memory-calls", "0"], "--memory-calls")])
def test_bad_arguments_are_named(capsys, argv, flag):
    with pytest.raises(SystemExit) as exc:
        models.parse_args(argv)
    assert exc.value.code == 2
    assert flag in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_without_a_gpu_is_refused(capsys):
    with pytest.raises(SystemExit):
        models.parse_args(["--device", "cuda"])
    assert "--device" in capsys.readouterr().err


def test_defaults_keep_run_sh_command():
    args = models.parse_args(["--models", "deeplabv3", "--size", "256", "512", "--compile", "--memory", "--overwrite"])
    assert args.models == [models.HEAD_CONFIGS["deeplabv3"]] and args.size == [256, 512]
    assert args.compile and args.memory and args.peak_memory and args.warmup == 5 and args.rounds is None


def test_tiny_run_writes_rows_with_context(tmp_path, fresh_report):
    models.main(["--models", TINY, "--size", "64", "64", "--rounds", "2", "--warmup", "1", "--no-peak-memory",
                 "--results-dir", str(tmp_path)])
    path, = tmp_path.glob("models*.csv")  # models-tuned-malloc.csv under GLIBC_TUNABLES
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert set(CONTEXT) <= set(rows[0])
    assert all(r["git"] and r["torch"] == torch.__version__ for r in rows)
    by_provider = {r["provider"]: r for r in rows if r["bench"] == "eval_forward"}
    reference = "mmseg" if "mmseg" in by_provider else "reference-backend"
    assert set(by_provider) == {reference, "ours", "ours-optimized"}
    for r in by_provider.values():
        assert r["model"] == TINY and r["input"] == "1x3x64x64" and r["rounds"] == "2" and r["warmup"] == "1"
        assert float(r["fps"]) > 0
    assert float(by_provider[reference]["speedup_vs_reference"]) == 1.0


def test_memory_process_measures_one_provider(tmp_path):
    torch.manual_seed(0)
    ref, kind, ref_forward, ours = models.build_pair(TINY)
    x = torch.randn(1, 3, 64, 64)
    torch.save(ref.state_dict(), tmp_path / "w.pt")
    torch.save(x, tmp_path / "x.pt")
    res = models.measure_in_subprocess(TINY, "ours", str(tmp_path / "w.pt"), str(tmp_path / "x.pt"),
                                       str(tmp_path / "out.pt"), calls=1)
    with torch.no_grad():
        want = ref_forward(x)
    torch.testing.assert_close(torch.load(res["output"]), want, atol=1e-4, rtol=1e-4)  # same weights there
    assert res["peak_mib"] >= res["after_build_mib"] > 0
    assert res["growth_mib"] == pytest.approx(res["peak_mib"] - res["after_build_mib"], abs=0.2)
    assert "peak RSS" in res["measure"]


def test_reference_builds_from_a_shipped_config_that_names_imagenet_weights():
    from resnest_fast.segmentation import load_config

    config = models.HEAD_CONFIGS["fcn"]
    assert load_config(config)["model"].get("pretrained")  # what broke the build: mmseg assigns it by attribute
    model, kind, _ = models.reference_model(config)
    if kind != "mmseg":
        pytest.skip("mmseg is not installed")
    assert type(model).__name__ == "EncoderDecoder" and type(model).__module__.startswith("mmseg")


def test_ctrl_c_keeps_the_models_finished_and_exits_130(tmp_path, monkeypatch, capsys, fresh_report):
    """Ctrl-C while the second model is timed: the first one's rows are written (the line says they are partial),
    none of a half-timed model, exit 130; no traceback."""
    seen = []

    def bench_model(name, *args, **kwargs):
        seen.append(name)
        if len(seen) == 2:
            raise KeyboardInterrupt
        report.add("models", {"bench": "eval_forward", "model": name, "provider": "ours", "fps": 2.0})

    monkeypatch.setattr(models, "bench_model", bench_model)
    assert models.main(["--models", "fcn", "pspnet", "--results-dir", str(tmp_path)]) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and "interrupted (Ctrl-C): partial results, the 1 row" in err
    with open(tmp_path / report.csv_name("models"), newline="") as f:
        assert [r["model"] for r in csv.DictReader(f)] == [models.HEAD_CONFIGS["fcn"]]
