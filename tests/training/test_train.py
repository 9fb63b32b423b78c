"""The training command: checkpoints (mmseg's layout, atomic, last K, `latest`), logs, --cfg-options, setup errors
that name their cause, the work-dir guard, a short run that learns, and SIGKILL + --resume giving bit-identical
weights. The 2-process runs are in test_distributed.py; the full synthetic run is marked heavy."""
import io
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from resnest_fast import load_checkpoint
from resnest_fast.segmentation import build_model, load_config
from resnest_fast.training.errors import SetupError
from resnest_fast.training.train import apply_cfg_options, train
from tests.training.train_helpers import SYNTHETIC, child_env, run_cli, tiny_config


def _records(work_dir):
    logs = sorted(p for p in os.listdir(work_dir) if p.endswith(".log.jsonl"))
    return [json.loads(line) for name in logs for line in open(os.path.join(work_dir, name))]


def test_cfg_options_set_nested_keys_with_python_literals():
    cfg = {"model": {"decode_head": {"num_classes": 19}}, "data": {"crop_size": (512, 512)}}
    out = apply_cfg_options(cfg, ["model.decode_head.num_classes=7", "data.crop_size=(64, 64)",
                                  "model.backbone.norm_cfg.type=BN", "runtime.amp=None", "schedule.optimizer.lr=0.02"])
    assert out["model"]["decode_head"]["num_classes"] == 7 and out["data"]["crop_size"] == (64, 64)
    assert out["model"]["backbone"]["norm_cfg"]["type"] == "BN" and out["runtime"]["amp"] is None
    assert out["schedule"]["optimizer"]["lr"] == 0.02
    assert cfg["model"]["decode_head"]["num_classes"] == 19  # the input is not changed
    with pytest.raises(ValueError, match="key.sub=value"):
        apply_cfg_options(cfg, ["model.decode_head.num_classes"])
    with pytest.raises(ValueError, match="data.crop_size is a tuple, not a dict"):
        apply_cfg_options(cfg, ["data.crop_size.h=3"])


def test_a_short_run_writes_mmseg_checkpoints_logs_and_keeps_the_last_two(tmp_path, one_thread):
    cfg = tiny_config(tmp_path)
    work = tmp_path / "work"
    log = io.StringIO()
    summary = train(cfg, work_dir=work, log=log)
    assert summary["iter"] == summary["iterations"] == 6
    assert sorted(os.listdir(work)) == sorted(["iter_4.pth", "iter_6.pth", "latest", "run.json",
                                               os.path.basename(summary["log_file"])])
    assert (work / "latest").read_text().strip() == "iter_6.pth"

    state = torch.load(work / "iter_6.pth", weights_only=True)  # loads without running any code
    assert {"meta", "state_dict", "optimizer", "param_schedulers", "rng_states"} <= set(state)
    assert state["meta"]["iter"] == 6 and state["meta"]["seed"] == 0
    assert state["meta"]["dataset_meta"]["classes"][0] == "background"
    assert len(state["meta"]["dataset_meta"]["palette"]) == 7
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-4)  # the poly schedule reached eta_min
    model = build_model(cfg)
    assert load_checkpoint(model, work / "iter_6.pth").ok  # strict, through the generic loader

    records = _records(work)
    train_lines = [r for r in records if r["mode"] == "train"]
    assert [r["iter"] for r in train_lines] == [2, 4, 6]
    for key in ("lr", "loss", "decode.loss_ce", "decode.acc_seg", "aux.loss_ce", "aux.acc_seg", "time", "data_time",
                "memory"):
        assert key in train_lines[0], key
    # logged: the lr the logged iteration trained with; iteration 2 is step 1 of mmengine's PolyLR (T = 6 - 1)
    assert train_lines[0]["lr"] == pytest.approx((0.05 - 1e-4) * (1 - 1 / 5) ** 0.9 + 1e-4)
    assert train_lines[-1]["lr"] == pytest.approx(1e-4)
    assert train_lines[0]["memory"] > 0
    vals = [r for r in records if r["mode"] == "val"]
    assert [r["iter"] for r in vals] == [3, 6] and 0 <= vals[-1]["mIoU"] <= 1
    assert records[-1]["mode"] == "summary" and records[-1]["iter"] == 6
    assert summary["metrics"]["mIoU"] == vals[-1]["mIoU"]
    assert "validation at iteration 6" in log.getvalue()
    assert not torch.are_deterministic_algorithms_enabled()


def test_resume_without_a_checkpoint_starts_from_scratch_and_an_explicit_one_continues(tmp_path, one_thread):
    cfg = tiny_config(tmp_path, schedule="dict(max_iters=4, val_interval=0, checkpoint_interval=2)")
    log = io.StringIO()
    summary = train(cfg, work_dir=tmp_path / "a", resume=True, log=log)
    assert summary["iterations"] == 4 and "no checkpoint" in log.getvalue()
    summary = train(cfg, work_dir=tmp_path / "b", resume=tmp_path / "a" / "iter_2.pth", log=log)
    assert summary["iterations"] == 2 and summary["iter"] == 4
    assert sorted(p for p in os.listdir(tmp_path / "b") if p.endswith(".pth")) == ["iter_4.pth"]
    summary = train(cfg, work_dir=tmp_path / "a", resume=True, log=log)  # already at max_iters
    assert summary["iterations"] == 0
    # killed between writing iter_4.pth and pointing `latest` at it: resuming from `latest` would write over it
    (tmp_path / "a" / "latest").write_text("iter_2.pth\n")
    with pytest.raises(SetupError, match=r"already holds iter_4\.pth, newer than iteration 2 .*--resume .*iter_4\.pth"):
        train(cfg, work_dir=tmp_path / "a", resume=True, log=log)


def test_a_work_dir_holding_a_run_is_refused_without_resume(tmp_path, one_thread):
    cfg = tiny_config(tmp_path, schedule="dict(max_iters=2, val_interval=0, checkpoint_interval=2)")
    train(cfg, work_dir=tmp_path / "w", log=io.StringIO())
    before = {p: os.path.getmtime(tmp_path / "w" / p) for p in os.listdir(tmp_path / "w")}
    with pytest.raises(SetupError, match=r"already holds a training run \(run.json, latest, iter_2.pth\).*--resume"):
        train(cfg, work_dir=tmp_path / "w", log=io.StringIO())
    assert {p: os.path.getmtime(tmp_path / "w" / p) for p in os.listdir(tmp_path / "w")} == before
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("a folder with unrelated files is fine")
    train(cfg, work_dir=tmp_path / "other", log=io.StringIO())
    assert (tmp_path / "other" / "notes.txt").read_text().startswith("a folder")


def _ade_tree(root, rng):
    """ADEChallengeData2016 with 3 training and 2 validation images of odd sizes (labels 0..4, 0 = "other")."""
    from tests.training.data.files import smooth_image, write_jpg, write_png

    for split, n in (("training", 3), ("validation", 2)):
        for i in range(n):
            h, w = 20 + 3 * i, 30 - 2 * i
            write_jpg(str(root / "ADEChallengeData2016" / "images" / split / f"ADE_{split}_{i}.jpg"),
                      smooth_image(rng, h, w))
            write_png(str(root / "ADEChallengeData2016" / "annotations" / split / f"ADE_{split}_{i}.png"),
                      rng.integers(0, 5, (h, w)).astype("uint8"))


def test_a_real_layout_dataset_trains_with_mmsegs_pipeline_and_padded_batches(tmp_path, one_thread):
    """The ADE20k config (random resize, cat_max_ratio crops, flip, photometric distortion, reduce_zero_label)
    on a tiny tree, with a small model: crops of images resized below the crop size are padded (the second batch
    holds a 28x32 crop), validation resizes to the test scale and scores at the original size; then --load-from
    starts a new run from its checkpoint."""
    import numpy as np

    _ade_tree(tmp_path / "ade", np.random.default_rng(0))
    small = ["model.pretrained=None", "model.backbone.depth=50", "model.backbone.stem_channels=16",
             "model.backbone.base_channels=8",
             "model.decode_head.in_channels=256", "model.decode_head.channels=16",
             "model.auxiliary_head.in_channels=128", "model.auxiliary_head.channels=8",
             "model.data_preprocessor.size=(32, 32)", "data.crop_size=(32, 32)", "data.scale=(48, 24)",
             "data.num_workers=0", "data.batch_size=2", "schedule.val_interval=2", "schedule.checkpoint_interval=2",
             "runtime.log_interval=1", "runtime.num_threads=1"]
    summary = train("resnest_s101-d8_fcn_4xb4-160k_ade20k-512x512", work_dir=tmp_path / "w", max_iters=2,
                    data_root=str(tmp_path / "ade"), cfg_options=small, log=io.StringIO(), progress=False)
    assert summary["iter"] == 2 and summary["metrics"]["num_images"] == 2
    assert all(np.isfinite(r["loss"]) for r in _records(tmp_path / "w") if r["mode"] == "train")
    log = io.StringIO()
    train("resnest_s101-d8_fcn_4xb4-160k_ade20k-512x512", work_dir=tmp_path / "w2", max_iters=1,
          load_from=tmp_path / "w" / "iter_2.pth", data_root=str(tmp_path / "ade"), cfg_options=small, log=log,
          progress=False)
    assert f"weights from {tmp_path / 'w' / 'iter_2.pth'}: all keys matched" in log.getvalue()


def test_setup_errors_name_their_cause(tmp_path):
    cfg = load_config(SYNTHETIC)
    no_data = {k: v for k, v in cfg.items() if k != "data"}
    with pytest.raises(SetupError, match="has no `data = dict"):
        train(no_data, work_dir=tmp_path / "a")
    with pytest.raises(SetupError, match="fp16 needs a CUDA GPU.*--amp bf16"):
        train(cfg, work_dir=tmp_path / "a", amp="fp16", device="cpu")
    with pytest.raises(SetupError, match="max_iters must be a positive"):
        train(cfg, work_dir=tmp_path / "a", max_iters=0)
    with pytest.raises(SetupError, match="predicts 7 classes but the synthetic dataset has 5"):
        train(cfg, work_dir=tmp_path / "a", cfg_options=["data.num_classes=5"])
    missing = tmp_path / "no-such-cityscapes"
    with pytest.raises(SetupError, match=f"cityscapes data root '{missing}' does not exist"):
        train("resnest_s101-d8_fcn_4xb2-80k_cityscapes-512x1024", work_dir=tmp_path / "a", data_root=str(missing))
    with pytest.raises(SetupError, match="unknown config"):
        train("no_such_config", work_dir=tmp_path / "a")
    with pytest.raises(SetupError, match="not a training checkpoint of this project.*--load-from"):
        torch.save({"state_dict": {"w": torch.zeros(1)}}, tmp_path / "weights.pth")
        train(cfg, work_dir=tmp_path / "a", resume=tmp_path / "weights.pth")
    assert not (tmp_path / "a").exists()  # nothing was written


def test_a_prebuilt_model_is_the_one_trained_and_saved(tmp_path, one_thread):
    """train(model=...) (what the mIoU parity experiment uses to run mmseg's model through this loop): the object
    passed in is trained in place and is what the checkpoint holds; a backend cannot apply to it."""
    cfg = tiny_config(tmp_path)
    model = build_model(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    summary = train(cfg, work_dir=tmp_path / "w", model=model, max_iters=2, progress=False, log=io.StringIO(),
                    cfg_options=["schedule.val_interval=0"])
    saved = torch.load(summary["last_checkpoint"], weights_only=True)["state_dict"]
    assert saved.keys() == before.keys()
    for key, value in model.state_dict().items():
        assert torch.equal(saved[key], value), key
    assert not torch.equal(before["decode_head.conv_seg.weight"], model.decode_head.conv_seg.weight)
    with pytest.raises(SetupError, match="backend='reference' cannot apply to a prebuilt model"):
        train(cfg, work_dir=tmp_path / "w2", model=model, backend="reference")
    with pytest.raises(SetupError, match="model must be an nn.Module"):
        train(cfg, work_dir=tmp_path / "w2", model="EncoderDecoder")
    assert not (tmp_path / "w2").exists()


def test_cli_exit_codes_and_messages(tmp_path):
    missing = tmp_path / "nowhere"
    done = run_cli(["train", "resnest_s101-d8_fcn_4xb2-80k_cityscapes-512x1024", "--data-root", missing,
                    "--work-dir", tmp_path / "w"])
    assert done.returncode == 2, done.stderr
    assert f"resnest-fast train: error: cityscapes data root '{missing}' does not exist" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_short_run_of_the_shipped_synthetic_config_learns(tmp_path, one_thread):
    """40 of the config's 400 iterations (its lr decays over 40): already far above chance (about 0.07 mIoU for
    uniform guesses over 7 classes). The full run is test_the_readme_run_reaches_a_high_miou (heavy)."""
    summary = train(SYNTHETIC, work_dir=tmp_path / "w", max_iters=40, num_workers=0, progress=False,
                    cfg_options=["schedule.val_interval=40", "schedule.checkpoint_interval=40"], log=io.StringIO())
    assert summary["metrics"]["mIoU"] > 0.25, summary["metrics"]


# ------------------------------------------------------------------------------------------- kill and resume

_KILLABLE = r"""
import io, sys, time, torch
real_save = torch.save
calls = [0]

def save(obj, f, *args, **kwargs):
    calls[0] += 1
    if calls[0] == 3:  # the third checkpoint: half of it reaches the file, then the process waits to be killed
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        print("HALF-WRITTEN", getattr(f, "name", "?"), flush=True)
        time.sleep(600)
    return real_save(obj, f, *args, **kwargs)

torch.save = save
from resnest_fast.cli.train import main
sys.exit(main(sys.argv[1:]))
"""


def _train_args(cfg, work):
    return ["train", cfg, "--work-dir", work, "--deterministic", "--no-progress", "--num-workers", "1"]


def test_sigkill_while_writing_a_checkpoint_then_resume_gives_bit_identical_weights(tmp_path):
    cfg = tiny_config(tmp_path, schedule="dict(max_iters=12, val_interval=6, checkpoint_interval=3)")
    straight = run_cli(_train_args(cfg, tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr

    work = tmp_path / "killed"
    child = subprocess.Popen([sys.executable, "-c", _KILLABLE, *map(str, _train_args(cfg, work)[1:])],
                             env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    lines = queue.Queue()
    threading.Thread(target=lambda: lines.put(child.stdout.readline()), daemon=True).start()
    try:
        try:  # a child that stalls before the third checkpoint must fail the test, not hang the suite
            line = lines.get(timeout=300)
        except queue.Empty:
            line = "(no line within 300 s)"
        assert line.startswith("HALF-WRITTEN"), (line, child.stderr.read() if child.poll() is not None else "")
    finally:
        os.killpg(child.pid, signal.SIGKILL)  # the trainer and its data loader worker
        child.wait(timeout=60)
    names = sorted(os.listdir(work))
    partial = [n for n in names if n.endswith(".tmp")]
    assert len(partial) == 1 and partial[0].startswith(".iter_9.pth.")  # killed while writing iteration 9
    assert [n for n in names if n.startswith("iter_")] == ["iter_3.pth", "iter_6.pth"]
    assert (work / "latest").read_text().strip() == "iter_6.pth"  # the pointer names a complete file
    assert torch.load(work / "iter_6.pth", weights_only=True)["meta"]["iter"] == 6

    resumed = run_cli(_train_args(cfg, work) + ["--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stderr and ".iter_9.pth." in resumed.stderr  # the partial file was removed
    assert not [n for n in os.listdir(work) if n.endswith(".tmp")]

    a = torch.load(tmp_path / "straight" / "iter_12.pth", weights_only=True)
    b = torch.load(work / "iter_12.pth", weights_only=True)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    for idx, slot in a["optimizer"]["state"].items():
        assert torch.equal(slot["momentum_buffer"], b["optimizer"]["state"][idx]["momentum_buffer"])
    assert a["optimizer"]["param_groups"][0]["lr"] == b["optimizer"]["param_groups"][0]["lr"]
    last = [r for r in _records(tmp_path / "straight") if r["mode"] == "train"][-1]
    again = [r for r in _records(work) if r["mode"] == "train"][-1]
    assert last["iter"] == again["iter"] == 12 and last["loss"] == again["loss"]


# ------------------------------------------------------------------------------------------------- heavy


@pytest.mark.heavy
def test_the_readme_run_reaches_a_high_miou(tmp_path):
    """The README's first command in full: train the synthetic config, then score it with `resnest-fast test`."""
    started = time.perf_counter()
    done = run_cli(["train", SYNTHETIC, "--work-dir", tmp_path / "w", "--no-progress"], timeout=1800)
    assert done.returncode == 0, done.stderr
    trained = time.perf_counter() - started
    out = tmp_path / "metrics.json"
    scored = run_cli(["test", SYNTHETIC, tmp_path / "w" / "iter_400.pth", "--out", out, "--no-progress"])
    assert scored.returncode == 0, scored.stderr
    metrics = json.loads(out.read_text())
    print(f"trained in {trained:.0f} s: {done.stdout.strip()}\n{scored.stdout.strip()}")
    assert metrics["mIoU"] > 0.6, metrics
