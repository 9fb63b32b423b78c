"""Transforms against independent expectations: sizes worked out by hand from mmcv's rules, invariants (flip
consistency, pad values, identity when nothing is drawn), and, where installed, the real mmseg/mmcv transforms
and OpenCV run on the same input with the same random draws."""
import copy

import numpy as np
import pytest

from resnest_fast.training.data.transforms import (
    Compose,
    Pad,
    PhotoMetricDistortion,
    RandomCrop,
    RandomFlip,
    RandomResize,
    Resize,
    build_pipeline,
    hsv_to_rgb,
    resize_image,
    resize_label,
    rgb_to_hsv,
)
from tests.mmseg_reference import import_mmseg
from tests.training.reference import import_cv2


def sample(h, w, seed=0, classes=(0, 1, 2, 255)):
    rng = np.random.default_rng(seed)
    return {
        "img": rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
        "gt_semantic_seg": rng.choice(np.array(classes, dtype=np.uint8), size=(h, w)),
    }


# ------------------------------------------------------------------------------------------------------------ resize


@pytest.mark.parametrize(
    "h, w, scale, expected_hw",
    [
        # factor = min(long / max(h, w), short / min(h, w)); size = int(edge * factor + 0.5)
        (30, 50, (40, 20), (20, 33)),  # min(40/50, 20/30) = 2/3: 30*2/3 = 20, int(33.33 + 0.5) = 33
        (30, 50, (20, 40), (20, 33)),  # the order of the scale pair does not matter with keep_ratio
        (1024, 2048, (2048, 1024), (1024, 2048)),  # Cityscapes at its own scale: unchanged
        (1024, 2048, (1024, 512), (512, 1024)),  # ratio 0.5
        (512, 683, (2048, 512), (512, 683)),  # ADE-like: short edge bound 512, long edge 2048 not reached
        (300, 700, (2048, 512), (512, 1195)),  # min(2048/700, 512/300) = 1.7067: int(1194.67 + 0.5) = 1195
        (7, 9, (6, 3), (3, 4)),  # min(6/9, 3/7) = 3/7: 7*3/7 = 3, int(3.857 + 0.5) = 4
        (10, 40, (20, 15), (5, 20)),  # the long edge binds: min(20/40, 15/10) = 0.5
    ],
)
def test_keep_ratio_resize_sizes_by_hand(h, w, scale, expected_hw):
    if h * w > 10**5:  # big cases: check the rule on the size only (no pixels)
        assert Resize(scale).target_size(h, w) == expected_hw[::-1]
        return
    out = Resize(scale, keep_ratio=True)(sample(h, w))
    assert out["img"].shape == expected_hw + (3,)
    assert out["gt_semantic_seg"].shape == expected_hw
    assert out["img_shape"] == expected_hw


def test_resize_without_keep_ratio_takes_w_h():
    out = Resize((13, 5), keep_ratio=False)(sample(8, 8))
    assert out["img"].shape == (5, 13, 3) and out["gt_semantic_seg"].shape == (5, 13)


def test_test_time_resize_leaves_the_label_alone():
    s = sample(10, 20)
    label = s["gt_semantic_seg"].copy()
    out = Resize((40, 20), resize_label=False)(s)
    assert out["img"].shape == (20, 40, 3)
    np.testing.assert_array_equal(out["gt_semantic_seg"], label)


def test_label_resize_never_invents_values():
    s = sample(17, 23, classes=(3, 7, 255))
    for scale in [(5, 3), (100, 60), (40, 31)]:
        out = Resize(scale, keep_ratio=False)(copy.deepcopy(s))
        assert set(np.unique(out["gt_semantic_seg"])) <= {3, 7, 255}


def test_bilinear_geometry_on_a_ramp():
    # Upsampling x2 with half-pixel centres: output column j samples input x = (j + 0.5) / 2 - 0.5.
    ramp = np.tile(np.arange(0, 80, 10, dtype=np.uint8)[None, :, None], (2, 1, 3))  # 0, 10, ..., 70
    out = resize_image(ramp, (16, 4))
    expected = np.clip((np.arange(16) + 0.5) / 2 - 0.5, 0, 7) * 10  # linear in x, clamped at the borders
    np.testing.assert_allclose(out[0, :, 0], expected, atol=0.51)


@pytest.mark.parametrize("hw, out_wh", [((37, 53), (101, 80)), ((100, 200), (77, 51)), ((64, 64), (32, 48))])
def test_resize_against_opencv(hw, out_wh):
    cv2 = import_cv2()
    s = sample(*hw, seed=1, classes=tuple(range(19)) + (255,))
    ref_img = cv2.resize(s["img"], out_wh, interpolation=cv2.INTER_LINEAR)
    ref_seg = cv2.resize(s["gt_semantic_seg"], out_wh, interpolation=cv2.INTER_NEAREST)
    img = resize_image(s["img"], out_wh)
    # cv2 rounds through an 11-bit fixed-point pipeline: values may differ by one level, the geometry not at all.
    assert np.abs(img.astype(int) - ref_img.astype(int)).max() <= 1
    np.testing.assert_array_equal(resize_label(s["gt_semantic_seg"], out_wh), ref_seg)


def test_resize_against_mmcv_resize():
    processing = import_mmseg("mmseg.datasets.transforms.transforms")
    s = sample(45, 70, seed=2)
    ref = processing.Resize(scale=(100, 30), keep_ratio=True)(
        {"img": s["img"][..., ::-1].copy(), "gt_seg_map": s["gt_semantic_seg"].copy(), "seg_fields": ["gt_seg_map"]}
    )
    out = Resize((100, 30), keep_ratio=True)(copy.deepcopy(s))
    assert out["img"].shape == ref["img"].shape
    assert np.abs(out["img"].astype(int) - ref["img"][..., ::-1].astype(int)).max() <= 1
    np.testing.assert_array_equal(out["gt_semantic_seg"], ref["gt_seg_map"])
    np.testing.assert_allclose(out["scale_factor"], ref["scale_factor"])


def test_random_resize_draws_one_ratio_for_both_edges():
    t = RandomResize(scale=(160, 96), ratio_range=(0.5, 2.0))
    h, w = 64, 128  # 1:2 against a 5:3 scale: the long edge binds
    ratios = []
    for seed in range(50):
        rng = np.random.default_rng(seed)
        ratio = copy.deepcopy(rng).random() * 1.5 + 0.5  # the documented draw: U[0, 1) scaled into the range
        target = (int(160 * ratio), int(96 * ratio))
        out = t(sample(h, w), rng)
        assert out["scale"] == target
        factor = min(max(target) / w, min(target) / h)
        assert out["img"].shape[:2] == (int(h * factor + 0.5), int(w * factor + 0.5))
        ratios.append(ratio)
    assert min(ratios) < 0.7 and max(ratios) > 1.8


# -------------------------------------------------------------------------------------------------------------- crop


def test_crop_size_and_crop_of_a_small_image():
    out = RandomCrop((5, 7), cat_max_ratio=1.0)(sample(20, 30), np.random.default_rng(0))
    assert out["img"].shape == (5, 7, 3) and out["gt_semantic_seg"].shape == (5, 7)
    out = RandomCrop((50, 7), cat_max_ratio=1.0)(sample(20, 30), np.random.default_rng(0))
    assert out["img"].shape == (20, 7, 3)  # never padded: the batch is padded later


def test_crop_image_and_label_come_from_the_same_window():
    s = sample(40, 50)
    s["img"][..., 0] = np.arange(40)[:, None]  # row index in red, column index in green
    s["img"][..., 1] = np.arange(50)[None, :]
    s["gt_semantic_seg"] = ((np.arange(40)[:, None] * 3 + np.arange(50)[None, :]) % 200).astype(np.uint8)
    out = RandomCrop((10, 12), cat_max_ratio=1.0)(s, np.random.default_rng(3))
    top, left = out["img"][0, 0, 0], out["img"][0, 0, 1]
    expected = ((np.arange(top, top + 10)[:, None] * 3 + np.arange(left, left + 12)[None, :]) % 200)
    np.testing.assert_array_equal(out["gt_semantic_seg"], expected)


def _dominant_share(label, ignore=255):
    values, counts = np.unique(label[label != ignore], return_counts=True)
    return (counts.max() / counts.sum() if counts.size else 1.0), values.size


def test_cat_max_ratio_avoids_single_class_crops():
    # Class 1 everywhere except a 10-column band of class 2 on the right: most 20x20 windows are all class 1.
    label = np.ones((100, 100), dtype=np.uint8)
    label[:, 90:] = 2
    label[:5] = 255  # ignored pixels do not count
    img = np.zeros((100, 100, 3), dtype=np.uint8)
    good_checked, good_unchecked = 0, 0
    for seed in range(200):
        for ratio, _ in ((0.75, "checked"), (1.0, "unchecked")):
            out = RandomCrop((20, 20), cat_max_ratio=ratio)(
                {"img": img, "gt_semantic_seg": label}, np.random.default_rng(seed)
            )
            share, n = _dominant_share(out["gt_semantic_seg"])
            ok = n > 1 and share < 0.75
            if ratio < 1:
                good_checked += ok
            else:
                good_unchecked += ok
    # One draw is acceptable with p = 5/81 (left offset 76..80); 11 draws: 1 - (76/81)^11 = 0.50.
    assert good_unchecked < 0.15 * 200
    assert 0.35 * 200 < good_checked < 0.65 * 200


def test_crop_against_mmseg_with_the_same_draws(monkeypatch):
    transforms = import_mmseg("mmseg.datasets.transforms.transforms")
    label = np.ones((60, 80), dtype=np.uint8)
    label[:, 70:] = 2
    label[40:, :30] = 3
    img = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    for seed in range(20):
        ours = RandomCrop((16, 24), cat_max_ratio=0.75)({"img": img, "gt_semantic_seg": label},
                                                        np.random.default_rng(seed))
        draws = np.random.default_rng(seed)
        monkeypatch.setattr(np.random, "randint", lambda lo, hi: int(draws.integers(lo, hi)))
        ref = transforms.RandomCrop((16, 24), cat_max_ratio=0.75)(
            {"img": img.copy(), "gt_seg_map": label.copy(), "seg_fields": ["gt_seg_map"]}
        )
        monkeypatch.undo()
        np.testing.assert_array_equal(ours["img"], ref["img"])
        np.testing.assert_array_equal(ours["gt_semantic_seg"], ref["gt_seg_map"])


# -------------------------------------------------------------------------------------------------------------- flip


@pytest.mark.parametrize("direction", ["horizontal", "vertical"])
def test_flip_moves_image_and_label_together(direction):
    s = sample(6, 9)
    s["img"][..., 0] = s["gt_semantic_seg"]  # the label is written in the red channel
    flips = 0
    for seed in range(40):
        out = RandomFlip(prob=0.5, direction=direction)(copy.deepcopy(s), np.random.default_rng(seed))
        np.testing.assert_array_equal(out["img"][..., 0], out["gt_semantic_seg"])
        axis = 1 if direction == "horizontal" else 0
        expected = np.flip(s["img"], axis) if out["flip"] else s["img"]
        np.testing.assert_array_equal(out["img"], expected)
        flips += out["flip"]
    assert 10 <= flips <= 30


def test_flip_probability_bounds():
    s = sample(4, 4)
    assert not any(RandomFlip(0.0)(copy.deepcopy(s), np.random.default_rng(i))["flip"] for i in range(20))
    assert all(RandomFlip(1.0)(copy.deepcopy(s), np.random.default_rng(i))["flip"] for i in range(20))


# ------------------------------------------------------------------------------------------- photometric distortion


def test_rgb_to_hsv_equals_opencv_on_a_million_colours():
    cv2 = import_cv2()
    colours = np.random.default_rng(0).integers(0, 256, (1000, 1000, 3), dtype=np.uint8)
    colours[0, :256] = np.arange(256)[:, None]  # greys, including black and white
    np.testing.assert_array_equal(rgb_to_hsv(colours), cv2.cvtColor(colours, cv2.COLOR_RGB2HSV))


def test_hsv_to_rgb_against_opencv():
    cv2 = import_cv2()
    rng = np.random.default_rng(1)
    hsv = np.stack([rng.integers(0, 180, (512, 1024)), rng.integers(0, 256, (512, 1024)),
                    rng.integers(0, 256, (512, 1024))], -1).astype(np.uint8)
    ours = hsv_to_rgb(hsv).astype(int)
    ref = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).astype(int)
    # Equal everywhere with the opencv measured here; other builds may round one level differently.
    assert np.abs(ours - ref).max() <= 1
    assert (ours == ref).all(-1).mean() > 0.999


def test_hsv_round_trip_keeps_colours_close():
    img = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    back = hsv_to_rgb(rgb_to_hsv(img)).astype(int)
    # 8-bit hue has 2-degree steps: a channel moves by at most ~ V * 6 / 180 * 1 step, i.e. a few levels.
    assert np.abs(back - img).max() <= 8
    grey = np.repeat(np.arange(256, dtype=np.uint8)[:, None, None], 3, axis=2)
    assert np.abs(hsv_to_rgb(rgb_to_hsv(grey)).astype(int) - grey).max() <= 1


def test_distortion_is_identity_when_no_branch_is_drawn():
    img = np.random.default_rng(3).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    for contrast_first in (True, False):
        params = {"brightness": None, "contrast_first": contrast_first, "contrast": None, "saturation": None,
                  "hue": None}
        out = PhotoMetricDistortion.apply(img, params)
        np.testing.assert_array_equal(out, img)


def test_distortion_branches_by_hand():
    img = np.array([[[10, 100, 250], [0, 128, 255]]], dtype=np.uint8)
    # brightness: x + beta, clipped, truncated
    out = PhotoMetricDistortion.apply(img, {"brightness": 10.7, "contrast_first": True})
    np.testing.assert_array_equal(out, [[[20, 110, 255], [10, 138, 255]]])
    # contrast: x * alpha, clipped, truncated
    out = PhotoMetricDistortion.apply(img, {"contrast_first": False, "contrast": 1.5})
    np.testing.assert_array_equal(out, [[[15, 150, 255], [0, 192, 255]]])
    # saturation 0 gives a grey of the pixel's value (max channel) whatever the hue
    grey = PhotoMetricDistortion.apply(img, {"contrast_first": True, "saturation": 0.0})
    np.testing.assert_array_equal(grey, [[[250, 250, 250], [255, 255, 255]]])
    # hue +60 (120 degrees) rotates pure red to pure green
    red = np.array([[[255, 0, 0]]], dtype=np.uint8)
    np.testing.assert_array_equal(PhotoMetricDistortion.apply(red, {"contrast_first": True, "hue": 60}),
                                  [[[0, 255, 0]]])


def test_distortion_keeps_dtype_and_shape_and_draws_every_branch():
    t = PhotoMetricDistortion()
    img = np.random.default_rng(4).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    seen = {"brightness": 0, "contrast": 0, "saturation": 0, "hue": 0}
    first = 0
    for seed in range(200):
        params = t.sample(np.random.default_rng(seed))
        for k in seen:
            seen[k] += params[k] is not None
        first += params["contrast_first"]
        if params["hue"] is not None:
            assert -18 <= params["hue"] <= 17
        out = t({"img": img.copy()}, np.random.default_rng(seed))["img"]
        assert out.dtype == np.uint8 and out.shape == img.shape
    for k, n in seen.items():
        assert 70 <= n <= 130, (k, n)  # each branch with probability 1/2
    assert 70 <= first <= 130


def test_distortion_against_mmseg_with_the_same_draws(monkeypatch):
    transforms = import_mmseg("mmseg.datasets.transforms.transforms")
    img = np.random.default_rng(5).integers(0, 256, (32, 64, 3), dtype=np.uint8)  # width: whole SIMD blocks
    for seed in range(12):
        ours = PhotoMetricDistortion()({"img": img.copy()}, np.random.default_rng(seed))["img"]
        draws = np.random.default_rng(seed)

        class SameDraws:  # mmseg calls numpy.random.randint / uniform: serve them from our generator
            @staticmethod
            def randint(lo, hi=None):
                return int(draws.integers(lo, hi)) if hi is not None else int(draws.integers(lo))

            @staticmethod
            def uniform(lo, hi):
                return draws.uniform(lo, hi)

        monkeypatch.setattr(transforms, "random", SameDraws)
        ref = transforms.PhotoMetricDistortion()({"img": img[..., ::-1].copy()})["img"][..., ::-1]
        monkeypatch.undo()
        diff = np.abs(ours.astype(int) - ref.astype(int))
        assert diff.max() <= 1 and (diff == 0).mean() > 0.999, seed


# ------------------------------------------------------------------------------------------------ pad and pipelines


def test_pad_values_and_sizes():
    s = sample(5, 7)
    out = Pad(size=(8, 10), pad_val=0, seg_pad_val=255)(copy.deepcopy(s))
    assert out["img"].shape == (8, 10, 3) and out["gt_semantic_seg"].shape == (8, 10)
    np.testing.assert_array_equal(out["img"][:5, :7], s["img"])
    np.testing.assert_array_equal(out["gt_semantic_seg"][:5, :7], s["gt_semantic_seg"])
    assert (out["img"][5:] == 0).all() and (out["img"][:, 7:] == 0).all()
    assert (out["gt_semantic_seg"][5:] == 255).all() and (out["gt_semantic_seg"][:, 7:] == 255).all()
    assert Pad(size=(3, 3))(copy.deepcopy(s))["img"].shape == (5, 7, 3)  # never crops
    assert Pad(size_divisor=4, pad_val=9)(copy.deepcopy(s))["img"][7, 7, 0] == 9
    assert Pad(size_divisor=4)(copy.deepcopy(s))["img"].shape == (8, 8, 3)
    with pytest.raises(ValueError):
        Pad()
    big_label = {"img": s["img"].copy(), "gt_semantic_seg": np.zeros((9, 9), dtype=np.uint8)}
    assert Pad(size=(6, 8))(big_label)["gt_semantic_seg"].shape == (9, 9)


def test_build_pipeline_matches_mmseg_configs():
    train = build_pipeline("cityscapes", "train")
    kinds = [type(t) for t in train.transforms]
    assert kinds == [RandomResize, RandomCrop, RandomFlip, PhotoMetricDistortion]
    assert train.transforms[0].scale == (2048, 1024) and train.transforms[0].ratio_range == (0.5, 2.0)
    assert train.transforms[1].crop_size == (512, 1024) and train.transforms[1].cat_max_ratio == 0.75
    assert train.transforms[2].prob == 0.5
    ade = build_pipeline("ade20k", "training")
    assert ade.transforms[0].scale == (2048, 512) and ade.transforms[1].crop_size == (512, 512)
    test = build_pipeline("ade20k", "validation")
    assert [type(t) for t in test.transforms] == [Resize]
    assert test.transforms[0].scale == (2048, 512) and not test.transforms[0].resize_label
    assert build_pipeline("cityscapes", "train", crop_size=(64, 128)).transforms[1].crop_size == (64, 128)
    for bad in [("pascal", "train"), ("cityscapes", "trainval")]:
        with pytest.raises(ValueError):
            build_pipeline(*bad)
    assert "RandomCrop" in repr(train)


def test_train_pipeline_end_to_end_keeps_label_values():
    s = sample(64, 128, classes=(0, 5, 18, 255))
    out = build_pipeline("cityscapes", "train", crop_size=(32, 48))(
        {"img": s["img"], "gt_semantic_seg": s["gt_semantic_seg"]}, np.random.default_rng(0)
    )
    assert out["img"].shape == (32, 48, 3) and out["img"].dtype == np.uint8
    assert set(np.unique(out["gt_semantic_seg"])) <= {0, 5, 18, 255}


def test_compose_passes_one_generator_through():
    seen = []
    Compose([lambda r, g: seen.append(g) or r, lambda r, g: seen.append(g) or r])({}, "gen")
    assert seen == ["gen", "gen"]
