"""SegEvaluator against a confusion matrix computed here, cityscapesscripts' official pixel-level evaluation
(run on label files written in its layout) and mmseg's own IoUMetric maths."""
import math
import os

import numpy as np
import pytest
import torch
from cityscapesscripts.helpers import labels as cs
from PIL import Image

from resnest_fast.training.data.meta import CITYSCAPES_CLASSES
from resnest_fast.training.metrics import SegEvaluator, intersect_and_union
from tests.mmseg_reference import import_mmseg

NC = 6


def random_pairs(n, nc=NC, h=20, w=30, seed=0):
    """Predictions and labels with ignored pixels, a class absent everywhere (nc - 1), a class only ever
    predicted (nc - 2, so its Acc is undefined but its IoU is 0) and out-of-range predictions (255)."""
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(n):
        label = rng.integers(0, nc - 2, (h, w))
        label[rng.random((h, w)) < 0.1] = 255
        pred = np.where(rng.random((h, w)) < 0.6, label, rng.integers(0, nc - 1, (h, w)))
        pred[label == 255] = rng.integers(0, nc - 1, (h, w))[label == 255]
        pred[rng.random((h, w)) < 0.02] = 255
        pairs.append((pred, label))
    return pairs


def confusion_reference(pairs, nc, ignore=255):
    """Metrics from a confusion matrix: rows = label, columns = prediction, plus a column for predictions that
    are not class ids (they still count as misses of the labelled class)."""
    cm = np.zeros((nc, nc + 1), dtype=np.int64)
    for pred, label in pairs:
        keep = label != ignore
        p, g = pred[keep], label[keep]
        p = np.where((p >= 0) & (p < nc), p, nc)
        np.add.at(cm, (g, p), 1)
    tp = np.diag(cm[:, :nc]).astype(float)
    gt = cm.sum(1).astype(float)
    predicted = cm[:, :nc].sum(0).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = tp / (gt + predicted - tp)
        acc = tp / gt
    return {"aAcc": tp.sum() / gt.sum(), "IoU": iou, "Acc": acc,
            "mIoU": np.nanmean(iou), "mAcc": np.nanmean(acc)}


def test_against_a_confusion_matrix():
    pairs = random_pairs(5)
    ev = SegEvaluator(NC)
    for pred, label in pairs:
        ev.update(pred, label)
    got, ref = ev.compute(), confusion_reference(pairs, NC)
    for key in ("aAcc", "mIoU", "mAcc"):
        assert got[key] == pytest.approx(ref[key], abs=1e-12)
    np.testing.assert_allclose(got["IoU"], ref["IoU"], atol=1e-12)
    np.testing.assert_allclose(got["Acc"], ref["Acc"], atol=1e-12)
    # Absent from labels and predictions: NaN, left out of the means. Only predicted: IoU 0, Acc NaN.
    assert math.isnan(got["IoU"][NC - 1]) and math.isnan(got["Acc"][NC - 1])
    assert got["IoU"][NC - 2] == 0 and math.isnan(got["Acc"][NC - 2])
    assert got["mIoU"] == pytest.approx(np.mean(got["IoU"][: NC - 1]))


def test_tensors_batches_and_arrays_agree():
    pairs = random_pairs(4, seed=1)
    one_by_one, batched = SegEvaluator(NC), SegEvaluator(NC)
    for pred, label in pairs:
        one_by_one.update(torch.from_numpy(pred), torch.from_numpy(label).to(torch.uint8))
    batched.update(np.stack([p for p, _ in pairs]), np.stack([g for _, g in pairs]))
    assert torch.equal(one_by_one.areas, batched.areas)
    assert one_by_one.num_images == batched.num_images == 4


def test_against_mmseg_iou_metric():
    iou_metric = import_mmseg("mmseg.evaluation.metrics.iou_metric")
    metric = iou_metric.IoUMetric
    pairs = random_pairs(3, seed=2)
    ev = SegEvaluator(NC)
    ref_areas = [metric.intersect_and_union(torch.from_numpy(p), torch.from_numpy(g), NC, 255) for p, g in pairs]
    for pred, label in pairs:
        ev.update(pred, label)
    for i, name in enumerate(("intersect", "union", "pred_label", "label")):
        np.testing.assert_array_equal(getattr(ev, f"area_{name}").numpy(), sum(a[i] for a in ref_areas).numpy())
    ref = metric.total_area_to_metrics(*(sum(a[i] for a in ref_areas) for i in range(4)), ["mIoU"])
    got = ev.compute()
    assert got["aAcc"] == pytest.approx(float(ref["aAcc"]), abs=1e-6)
    np.testing.assert_allclose(got["IoU"], ref["IoU"], atol=1e-6)
    np.testing.assert_allclose(got["Acc"], ref["Acc"], atol=1e-6)
    assert got["mIoU"] == pytest.approx(float(np.nanmean(ref["IoU"])), abs=1e-6)


def test_against_cityscapesscripts_pixel_level_evaluation(tmp_path):
    ev_pixel = pytest.importorskip("cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling")
    train_to_id = {lab.trainId: lab.id for lab in cs.labels if 0 <= lab.trainId < 255}
    to_ids = np.zeros(256, dtype=np.uint8)  # trainId -> label id; 255 -> 0 ('unlabeled', ignored in eval)
    for train_id, label_id in train_to_id.items():
        to_ids[train_id] = label_id
    rng = np.random.default_rng(3)
    ours = SegEvaluator(19, class_names=CITYSCAPES_CLASSES)
    pred_files, gt_files = [], []
    for i in range(3):
        gt = rng.integers(0, 17, (24, 40)).astype(np.uint8)  # classes 17, 18 never labelled
        gt[rng.random(gt.shape) < 0.15] = 255
        pred = np.where(rng.random(gt.shape) < 0.7, gt, rng.integers(0, 18, gt.shape)).astype(np.uint8)
        pred[pred == 255] = 3  # predictions are class ids; 18 is never predicted
        gt_files.append(str(tmp_path / f"city_00000{i}_000019_gtFine_labelIds.png"))
        pred_files.append(str(tmp_path / "pred" / f"city_00000{i}_000019_pred.png"))
        os.makedirs(tmp_path / "pred", exist_ok=True)
        Image.fromarray(to_ids[gt]).save(gt_files[-1])
        Image.fromarray(to_ids[pred]).save(pred_files[-1])
        ours.update(pred, gt)
    args = ev_pixel.CArgs()
    args.evalInstLevelScore = False
    args.evalPixelAccuracy = False
    args.evalLabels = []
    args.quiet = True
    args.JSONOutput = False
    args.normalized = True
    args.colorized = False
    args.printRow = 5
    args.avgClassSize = {}
    official = ev_pixel.evaluateImgLists(pred_files, gt_files, args)
    got = ours.compute()
    for c, name in enumerate(CITYSCAPES_CLASSES):
        ref = official["classScores"][name]
        if math.isnan(ref):
            assert math.isnan(got["IoU"][c]), name
        else:
            assert got["IoU"][c] == pytest.approx(ref, abs=1e-6), name
    assert math.isnan(got["IoU"][18]) and got["IoU"][17] == 0  # never labelled nor predicted / only predicted
    assert got["mIoU"] == pytest.approx(official["averageScoreClasses"], abs=1e-6)


def test_merge_equals_one_evaluator_over_everything():
    pairs = random_pairs(6, seed=4)
    whole, first, second = SegEvaluator(NC), SegEvaluator(NC), SegEvaluator(NC)
    for i, (pred, label) in enumerate(pairs):
        whole.update(pred, label)
        (first if i % 2 else second).update(pred, label)
    first.merge(second)
    assert torch.equal(first.areas, whole.areas) and first.num_images == 6
    with pytest.raises(ValueError):
        first.merge(SegEvaluator(NC + 1))


def test_all_reduce_is_a_no_op_without_distributed():
    ev = SegEvaluator(NC).update(*random_pairs(1)[0])
    before = ev.areas.clone()
    ev.all_reduce()
    assert torch.equal(ev.areas, before)


def _all_reduce_worker(rank, world_size, init_file, pairs, out_file):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    ev = SegEvaluator(NC)
    for pred, label in pairs[rank::world_size]:
        ev.update(pred, label)
    ev.all_reduce()
    torch.save((ev.areas, ev.num_images), f"{out_file}.{rank}")
    dist.destroy_process_group()


def test_all_reduce_sums_the_counts_of_two_processes(tmp_path):
    import torch.multiprocessing as mp

    pairs = random_pairs(5, seed=5)
    mp.start_processes(_all_reduce_worker, args=(2, str(tmp_path / "init"), pairs, str(tmp_path / "out")),
                       nprocs=2, start_method="fork")
    whole = SegEvaluator(NC)
    for pred, label in pairs:
        whole.update(pred, label)
    for rank in range(2):
        areas, num_images = torch.load(f"{tmp_path / 'out'}.{rank}")
        assert torch.equal(areas, whole.areas) and num_images == 5


def test_table_is_readable():
    ev = SegEvaluator(3, class_names=("road", "sky", "car"))
    ev.update(np.array([[0, 0, 1, 1]]), np.array([[0, 0, 1, 0]]))
    text = ev.table()
    # road: intersect 2, union 3 -> 66.67 IoU, 2/3 -> 66.67 Acc; sky: 1/2 -> 50.00, 1/1 -> 100.00; car: nan
    assert "| road  |  66.67 |  66.67 |" in text
    assert "| sky   |  50.00 | 100.00 |" in text
    assert "| car   |    nan |    nan |" in text
    assert "mIoU 58.33" in text and "aAcc 75.00" in text
    assert repr(ev) == "SegEvaluator(num_classes=3, ignore_index=255, images=1)"


def test_bad_inputs():
    ev = SegEvaluator(NC)
    with pytest.raises(TypeError, match="argmax"):
        ev.update(torch.rand(4, 4), torch.zeros(4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="shape"):
        ev.update(np.zeros((4, 4), int), np.zeros((4, 5), int))
    with pytest.raises(ValueError):
        SegEvaluator(3, class_names=("a", "b"))
    areas = intersect_and_union(np.array([[1, 1]]), np.array([[255, 255]]), NC)
    assert all(int(a.sum()) == 0 for a in areas)  # every pixel ignored
    assert math.isnan(SegEvaluator(NC).compute()["aAcc"])
