"""The Python API refuses what it cannot do right, with a message that names the argument: sliding windows that
leave pixels uncovered, a malformed `scale` or TTA ratio, images of no pixels or of a dtype that is not a picture,
a config that is not one, and constructor arguments that would only fail later inside a kernel."""
import numpy as np
import pytest
import torch

from resnest_fast.nn import SplitAttentionConv2d
from resnest_fast.segmentation import build_model, predict_scores, segment_image, slide_defaults
from resnest_fast.segmentation.decode_heads.blocks import ConvModule
from resnest_fast.segmentation.segmentor import build_segmentor
from resnest_fast.testing.small_models import small_model_cfg


@pytest.fixture(scope="module")
def model():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield build_segmentor(small_model_cfg()).eval()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def img():
    return np.random.default_rng(0).integers(0, 256, (45, 67, 3), dtype=np.uint8)


def as_batch(img):
    return torch.from_numpy(img).permute(2, 0, 1).unsqueeze(0).contiguous()


def test_slide_windows_that_leave_pixels_uncovered_are_refused(model, img):
    # 16x16 windows every 40 pixels on 45x67: mmseg's window rule leaves rows 16-28 and columns 16-39 with
    # no window at all; those logits were 0/0 = NaN and their label 0
    x = as_batch(img)
    with pytest.raises(ValueError, match=r"stride \(40, 40\) is larger than crop_size \(16, 16\)"):
        model.predict(x, mode="slide", crop_size=(16, 16), stride=(40, 40))
    with pytest.raises(ValueError, match="stride"):
        segment_image(model, img, mode="slide", crop_size=(16, 16), stride=(16, 40))
    with pytest.raises(ValueError, match="stride"):  # the model's own test_cfg is checked when it is built
        build_segmentor(dict(small_model_cfg(), test_cfg=dict(mode="slide", crop_size=(8, 8), stride=(9, 8))))
    with pytest.raises(ValueError, match="stride"):  # the commands' defaults go through the same check
        slide_defaults(model, {}, (16, 16), (40, 40))
    # windows as large as the stride tile the image: every pixel has a prediction
    logits = model.inference(x, mode="slide", crop_size=(16, 16), stride=(16, 16))
    assert logits.shape == (1, model.num_classes, 45, 67) and torch.isfinite(logits).all()


def test_slide_without_windows_takes_the_training_crop_or_names_what_is_missing(img):
    """mode='slide' with no crop_size in test_cfg: the training crop (data_preprocessor's size) and 2/3 of it as
    stride, the commands' defaults, where 'crop_size must be an int or a pair of ints, got None' came before."""
    cfg = small_model_cfg()
    cfg["data_preprocessor"]["size"] = (16, 24)
    torch.manual_seed(0)
    whole = build_segmentor(cfg).eval()
    slide = build_segmentor(dict(cfg, test_cfg=dict(mode="slide")))
    slide.load_state_dict(whole.state_dict())
    slide.eval()
    assert slide.test_cfg == dict(mode="slide", crop_size=(16, 24), stride=(10, 16))  # int(16 * 2 / 3), int(24 * 2 / 3)
    x = as_batch(img)
    expected = whole.inference(x, mode="slide", crop_size=(16, 24), stride=(10, 16))
    torch.testing.assert_close(whole.inference(x, mode="slide"), expected, rtol=0, atol=0)
    torch.testing.assert_close(slide.inference(x), expected, rtol=0, atol=0)
    assert torch.equal(whole.predict(x, mode="slide"), expected.argmax(1))
    cfg["data_preprocessor"]["size"] = None
    with pytest.raises(ValueError, match=r"^slide mode needs windows: set test_cfg's crop_size \(the model has no "
                       r"training crop, data_preprocessor's size, to take instead\)$"):
        build_segmentor(dict(cfg, test_cfg=dict(mode="slide")))
    with pytest.raises(ValueError, match="^slide mode needs windows"):
        build_segmentor(cfg).predict(x, mode="slide")


@pytest.mark.parametrize("scale, kind", [
    ([32], TypeError), ("64", TypeError), ((64, 0), ValueError), (0.0, ValueError), (float("nan"), ValueError),
    (torch.tensor(2.0), TypeError), ((64.5, 32), TypeError), (True, TypeError),
])
def test_a_malformed_scale_is_named(model, img, scale, kind):
    with pytest.raises(kind, match="scale"):
        segment_image(model, img, scale=scale)


def test_a_scale_beyond_8192_x_8192_pixels_is_refused_before_anything_is_allocated(model, img):
    """45x67 scaled by 1000 would be 45000x67000 (9 GB of uint8 before the model's features): refused by name, as a
    pair whose long x short edge exceeds the bound, or per image for a factor; at the bound it is allowed."""
    with pytest.raises(ValueError, match=r"^scale \(100000, 100000\) resizes images to up to 10000000000 pixels: "
                       r"at most 67108864 \(8192 x 8192\) are allowed"):
        segment_image(model, img, scale=(100000, 100000))
    with pytest.raises(ValueError, match=r"^cannot resize an image of 67x45 to 67000x45000: 3015000000 pixels, over "
                       r"the 67108864 \(8192 x 8192\) allowed"):
        segment_image(model, img, scale=1000.0)
    with pytest.raises(ValueError, match=r"67108864 \(8192 x 8192\)"):
        predict_scores(model, img, tta_ratios=[1000.0])
    from resnest_fast.segmentation.inference import check_scale
    assert check_scale((8192, 8192)) == (8192, 8192) and check_scale([16384, 4096]) == (16384, 4096)


def test_scale_as_a_list_or_a_numpy_number_is_the_tuple_or_the_float(model, img):
    # a list is what a JSON or YAML config gives; np.float32 is not a Python float (it has no len either)
    as_pair = segment_image(model, img, scale=(40, 30))
    np.testing.assert_array_equal(segment_image(model, img, scale=[40, 30]), as_pair)
    np.testing.assert_array_equal(segment_image(model, img, scale=np.float32(0.5)),
                                  segment_image(model, img, scale=0.5))


def test_malformed_tta_ratios_are_named(model, img):
    with pytest.raises(TypeError, match="tta_ratios"):
        predict_scores(model, img, tta_ratios=0.5)
    with pytest.raises(ValueError, match="tta_ratios"):
        predict_scores(model, img, tta_ratios=[1.0, -0.5])


def test_integer_and_double_images_give_the_uint8_images_logits_and_others_are_refused(model, img):
    x = as_batch(img)
    expected = model(x)  # uint8: accepted as before
    for dtype in (torch.int64, torch.int32, torch.float64, torch.float16):
        torch.testing.assert_close(model(x.to(dtype)), expected, rtol=0, atol=0)
        torch.testing.assert_close(model.inference(x.to(dtype)), expected, rtol=0, atol=0)
    with pytest.raises(TypeError, match=r"img must be uint8 or floating point.*torch\.bool"):
        model(x > 127)
    with pytest.raises(TypeError, match="img must be a .*torch.Tensor.*ndarray"):
        model.predict(img)


@pytest.mark.parametrize("shape", [(0, 3, 45, 67), (1, 3, 0, 67), (1, 3, 45, 0)])
def test_an_image_batch_without_pixels_is_named(model, shape):
    empty = torch.zeros(shape)
    model.train()
    try:
        with pytest.raises(ValueError, match=r"img must be .* B, H, W >= 1, got shape"):
            model(empty)
        with pytest.raises(ValueError, match="img must be"):
            model.loss(empty, torch.zeros((shape[0],) + shape[2:], dtype=torch.int64))
    finally:
        model.eval()
    with pytest.raises(ValueError, match="img must be"):
        model.predict(empty)


def test_build_model_names_a_config_that_is_not_one():
    with pytest.raises(TypeError, match="config must be a shipped config's name, a .py file or a config dict"):
        build_model(None)
    with pytest.raises(ValueError, match="has no `model = dict"):
        build_model({"data": {}})


@pytest.mark.parametrize("typed, meant", [
    # mmseg's PSPNet config is spelled `cityscapes512x1024`, the other heads' `cityscapes-512x1024`
    ("resnest_s101-d8_pspnet_4xb2-80k_cityscapes-512x1024", "resnest_s101-d8_pspnet_4xb2-80k_cityscapes512x1024"),
    ("resnest_s101-d8_fcn_4xb4-80k_cityscapes-512x1024.py", "resnest_s101-d8_fcn_4xb2-80k_cityscapes-512x1024"),
    ("deeplabv3", None),
])
def test_an_unknown_config_name_suggests_the_shipped_one_it_nearly_spells(typed, meant):
    with pytest.raises(ValueError) as exc:
        build_model(typed)
    msg = str(exc.value)
    assert msg.startswith(f"unknown config {typed!r}: ") and "resnest_s101-d8_fcn_4xb4-160k_ade20k-512x512" in msg
    if meant:
        assert f"did you mean {meant!r}? " in msg
    else:
        assert "did you mean" not in msg


@pytest.mark.parametrize("make", [
    lambda k: SplitAttentionConv2d(8, 8, kernel_size=k),
    lambda k: ConvModule(4, 4, k),
])
def test_a_kernel_size_below_1_is_refused_by_the_constructor(make):
    for k in (0, -1, (3, 0)):
        with pytest.raises(ValueError, match="kernel_size"):
            make(k)


@pytest.mark.parametrize("dtype", [torch.float64, torch.int64])
def test_a_module_given_another_dtype_than_its_weights_names_itself_and_the_fix(dtype):
    from resnest_fast.models import ResNeSt

    block = SplitAttentionConv2d(8, 8, 3, padding=1, norm_cfg=dict(type="BN")).eval()
    backbone = ResNeSt(depth=50, stem_channels=16, base_channels=8, num_stages=1, strides=(1,), dilations=(1,),
                       out_indices=(0,)).eval()
    for name, module, x in (("SplitAttentionConv2d", block, torch.ones(1, 8, 6, 6, dtype=dtype)),
                            ("ResNeSt", backbone, torch.ones(1, 3, 16, 16, dtype=dtype))):
        with pytest.raises(TypeError, match=rf"^{name}: input x is {dtype} but the weights are torch\.float32"):
            module(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast inputs stay allowed
        block(torch.ones(1, 8, 6, 6, dtype=torch.bfloat16))
