"""Evaluation over a dataset: evaluate() against a SegEvaluator fed by hand, slide vs whole, 2 processes merging
their counts, and the `resnest-fast test` command. One image's prediction (TTA included) is tested in
tests/segmentation/test_inference.py."""
import io
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from resnest_fast.segmentation import build_segmentor, load_config
from resnest_fast.segmentation.inference import predict_scores, segment_image
from resnest_fast.training.data import SyntheticDataset
from resnest_fast.training.evaluate import evaluate, run
from resnest_fast.training.errors import SetupError
from resnest_fast.training.metrics import SegEvaluator
from resnest_fast.training.train import train
from tests.distributed import run_distributed
from tests.segmentation.test_inference import Probe
from resnest_fast.testing.small_models import small_model_cfg
from tests.training.train_helpers import SYNTHETIC, run_cli, tiny_config


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    model = build_segmentor(small_model_cfg("fcn", num_classes=6)).eval()
    return model


@pytest.fixture(scope="module")
def val_set():
    return SyntheticDataset(5, size=(24, 40), num_classes=6, seed=3)


def test_evaluate_equals_a_seg_evaluator_fed_by_hand(small_model, val_set):
    got = evaluate(small_model, val_set, scale=(64, 32))
    by_hand = SegEvaluator(6)
    for i in range(len(val_set)):
        item = val_set[i]
        pred = segment_image(small_model, item["img"].permute(1, 2, 0).numpy(), scale=(64, 32))
        assert pred.shape == tuple(item["gt_semantic_seg"].shape)  # scored at the original resolution
        by_hand.update(torch.from_numpy(pred.astype(np.int64)), item["gt_semantic_seg"])
    assert torch.equal(got.areas, by_hand.areas) and got.num_images == by_hand.num_images == 5
    assert got.compute()["mIoU"] == by_hand.compute()["mIoU"]
    assert got.class_names == val_set.CLASSES
    assert not small_model.training


def test_slide_equals_whole_for_one_window_and_for_a_pointwise_model(small_model, val_set):
    whole = evaluate(small_model, val_set)
    one_window = evaluate(small_model, val_set, mode="slide", crop_size=(24, 40), stride=(16, 16))
    assert torch.equal(whole.areas, one_window.areas)
    # a 1x1-conv model gives every pixel the same logits whatever window it is seen in
    pointwise = Probe(lambda x: F.conv2d(x.float() / 255, torch.randn(6, 3, 1, 1, generator=torch.Generator()
                                                                        .manual_seed(0))), 6)
    img = val_set[0]["img"].permute(1, 2, 0).numpy()
    whole_scores = predict_scores(pointwise, img)
    seg = build_segmentor(small_model_cfg("fcn", num_classes=6))
    seg.encode_decode = lambda x: pointwise.fn(x)  # the segmentor's own window loop around the pointwise model
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    slid = seg.slide_inference(x, (10, 16), (7, 11))
    torch.testing.assert_close(slid[0], whole_scores)


def _shard_worker(rank, world_size, tmp):
    torch.manual_seed(0)
    model = build_segmentor(small_model_cfg("fcn", num_classes=6)).eval()
    dataset = SyntheticDataset(5, size=(24, 40), num_classes=6, seed=3)
    ev = evaluate(model, dataset, rank=rank, world_size=world_size)
    torch.save({"areas": ev.areas, "num_images": ev.num_images}, os.path.join(tmp, f"ev{rank}.pt"))


def test_two_processes_score_each_image_once_and_merge(tmp_path, small_model, val_set):
    run_distributed(_shard_worker, 2, tmp_path, str(tmp_path))
    single = evaluate(small_model, val_set)
    for r in range(2):
        got = torch.load(tmp_path / f"ev{r}.pt")
        assert torch.equal(got["areas"], single.areas) and got["num_images"] == 5


def test_the_test_command_scores_a_trained_checkpoint(tmp_path, one_thread):
    cfg = tiny_config(tmp_path, schedule="dict(max_iters=4, val_interval=0, checkpoint_interval=4)")
    train(cfg, work_dir=tmp_path / "w", log=io.StringIO(), progress=False)
    checkpoint = tmp_path / "w" / "iter_4.pth"
    out = tmp_path / "metrics.json"
    done = run_cli(["test", cfg, checkpoint, "--out", out, "--tta", "--no-progress"])
    assert done.returncode == 0, done.stderr
    metrics = json.loads(out.read_text())
    assert metrics["tta"] and metrics["tta_ratios"] == [0.75, 1.0, 1.25] and metrics["num_images"] == 4
    assert f"mIoU {100 * metrics['mIoU']:.2f}" in done.stdout and "| background |" in done.stderr
    assert set(metrics["per_class"]) == {"background"} | {f"shape_{k}" for k in range(1, 7)}
    again = run_cli(["test", cfg, checkpoint, "--out", out, "--no-progress"])
    assert again.returncode == 2 and "exists (pass --overwrite" in again.stderr
    summary = run(cfg, checkpoint, mode="slide", crop_size=(16, 16), stride=(8, 8), progress=False,
                  log=io.StringIO())
    assert summary["mode"] == "slide" and 0 <= summary["mIoU"] <= 1


def test_the_test_command_names_bad_inputs(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(SetupError, match=f"cityscapes data root '{missing}' does not exist"):
        run("resnest_s101-d8_fcn_4xb2-80k_cityscapes-512x1024", tmp_path / "x.pth", data_root=str(missing))
    with pytest.raises(SetupError, match="has no `data = dict"):
        run({"model": small_model_cfg("fcn", 6), "filename": "mine.py"}, tmp_path / "x.pth")
    with pytest.raises(SetupError, match="does not exist"):
        run(SYNTHETIC, tmp_path / "x.pth")
    torch.save(build_segmentor(load_config(SYNTHETIC)["model"]).state_dict(), tmp_path / "w.pth")
    with pytest.raises(SetupError, match="apply to mode 'slide' only"):
        run(SYNTHETIC, tmp_path / "w.pth", crop_size=(8, 8))
    with pytest.raises(SetupError, match="mode must be 'whole' or 'slide'"):
        run(SYNTHETIC, tmp_path / "w.pth", mode="tiles")
