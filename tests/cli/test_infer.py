"""The inference command (resnest_fast/cli/infer.py) on a small ResNeSt-50 FCN with random weights and statistics.

The oracle is computed here with torch ops, not with infer.py's helpers: mmseg's test pipeline (resize of the
uint8 image keeping its ratio, cv2's bilinear geometry) -> EncoderDecoder.inference -> bilinear resize of the
logits back to the original size -> argmax.
"""
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from resnest_fast.cli import main as cli
from resnest_fast.cli import infer
from resnest_fast.segmentation import build_model, segment_image
from resnest_fast.segmentation.config import CONFIG_DIR
from resnest_fast.training.data.meta import ADE20K_PALETTE, CITYSCAPES_PALETTE
from tests.parity import randomize_model

BASE = CONFIG_DIR / "resnest" / "resnest_s101-d8_fcn_4xb2-80k_cityscapes-512x1024.py"
SCALE = (64, 48)  # the test config's data.scale (long, short edge)
CONFIG = f"""
_base_ = {str(BASE)!r}
model = dict(
    backbone=dict(depth=50, stem_channels=16, base_channels=8),
    decode_head=dict(in_channels=256, channels=16),   # stage 4 of base_channels 8: 8 * 8 * 4 channels
    auxiliary_head=dict(in_channels=128, channels=8),
)
data = dict(scale={SCALE!r})
"""
# (relative path, height, width): a downscaled, an upscaled and an unchanged image, and two `img` stems that
# must not collide.
IMAGES = [("a.png", 75, 101), ("x/img.png", 21, 34), ("y/img.jpg", 48, 64)]


def image(rng, h, w):
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([np.sin(xx / 4.0), np.cos(yy / 3.0), np.sin((xx + yy) / 6.0)], -1)
    return np.clip(128 + 90 * base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # The model is tiny: a second OpenMP thread gains nothing, and on a shared 2-core machine threads waiting for a
    # busy core made one slide inference take seconds instead of 0.25 s. The fresh process gets one thread as well
    # (OMP_NUM_THREADS), so its logits are computed exactly as the oracle's.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return make_setup(tmp_path_factory.mktemp("infer"))


def make_setup(root):
    """(config path, checkpoint path, model with the checkpoint's weights, images folder, {rel: RGB array}) under
    the folder root."""
    config = root / "small_fcn.py"
    config.write_text(CONFIG)
    torch.manual_seed(0)
    model = randomize_model(build_model(str(config))).eval()
    checkpoint = root / "small_fcn.pth"
    torch.save({"meta": {}, "state_dict": model.state_dict()}, checkpoint)
    rng = np.random.default_rng(0)
    images = {}
    for rel, h, w in IMAGES:
        path = root / "images" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image(rng, h, w)).save(path, quality=95)
        images[rel] = np.array(Image.open(path).convert("RGB"))  # what a JPEG decodes to, not what was encoded
    return config, checkpoint, model, root / "images", images


def expected_labels(model, img, scale=SCALE, **inference_args):
    h, w = img.shape[:2]
    t = torch.from_numpy(img).permute(2, 0, 1).unsqueeze(0)
    if scale is not None:
        factor = min(max(scale) / max(h, w), min(scale) / min(h, w))  # mmcv's rescale_size
        size = (int(h * factor + 0.5), int(w * factor + 0.5))
        # uint8 bilinear with half-pixel centres and no antialiasing (cv2's INTER_LINEAR geometry)
        t = F.interpolate(t.contiguous(memory_format=torch.channels_last), size=size, mode="bilinear",
                          align_corners=False, antialias=False)
    logits = model.inference(t.contiguous(), **inference_args)
    logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=model.align_corners)
    return logits.argmax(1)[0].numpy()


def outputs(out_dir, rel, overlay_ext="png"):
    stem = pathlib.Path(out_dir) / pathlib.Path(rel).with_suffix("")
    return stem.with_name(stem.name + "_pred.png"), stem.with_name(stem.name + f"_overlay.{overlay_ext}")


def files_under(path):
    return sorted(str(p.relative_to(path)) for p in pathlib.Path(path).rglob("*") if p.is_file())


def snapshot(folder):
    return {p: (os.stat(p).st_mtime_ns, pathlib.Path(p).read_bytes()) for p in map(str, pathlib.Path(folder).rglob("*"))
            if os.path.isfile(p)}


def test_folder_whole_mode_matches_the_model_at_the_original_size(setup, tmp_path, capsys):
    config, checkpoint, model, folder, images = setup
    before = snapshot(folder)
    out = tmp_path / "out"
    assert cli(["infer", str(config), str(checkpoint), str(folder), "--out-dir", str(out), "--opacity", "0.3"]) == 0
    assert "3 processed, 0 skipped (outputs exist), 0 failed" in capsys.readouterr().out
    assert snapshot(folder) == before  # inputs only read
    assert files_under(out) == ["a_overlay.png", "a_pred.png", "x/img_overlay.png", "x/img_pred.png",
                                "y/img_overlay.jpg", "y/img_pred.png"]  # JPEG in, JPEG overlay out
    palette = np.array(CITYSCAPES_PALETTE, dtype=np.uint8)
    for rel, img in images.items():
        pred_path, overlay_path = outputs(out, rel, "jpg" if rel.endswith(".jpg") else "png")
        want = expected_labels(model, img)
        assert len(np.unique(want)) > 1  # random BN statistics: a constant map would test nothing
        pred = Image.open(pred_path)
        assert pred.mode == "P" and pred.size == (img.shape[1], img.shape[0])
        np.testing.assert_array_equal(np.asarray(pred), want)
        assert pred.getpalette()[: 3 * 19] == palette.reshape(-1).tolist()
        blended = (img * 0.7 + palette[want] * 0.3).astype(np.uint8)  # mmseg's visualiser
        got = np.asarray(Image.open(overlay_path))
        if overlay_path.suffix == ".png":
            np.testing.assert_array_equal(got, blended)
        else:
            assert np.abs(got.astype(int) - blended).mean() < 3, np.abs(got.astype(int) - blended).mean()


def test_slide_mode_equals_model_inference_slide(setup, tmp_path):
    config, checkpoint, model, folder, images = setup
    summary = infer.run(config, checkpoint, [folder / "a.png"], tmp_path, mode="slide", crop_size=(32, 40),
                        stride=(20, 24), scale="none", progress=False)
    assert (summary["processed"], summary["failed"], summary["mode"]) == (1, 0, "slide")
    want = expected_labels(model, images["a.png"], scale=None, mode="slide", crop_size=(32, 40), stride=(20, 24))
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "a_pred.png")), want)
    labels = segment_image(model, images["a.png"], mode="slide", crop_size=(32, 40), stride=(20, 24))
    np.testing.assert_array_equal(labels, want)  # the Python API says the same


def test_a_corrupt_image_is_named_and_the_others_are_processed(setup, tmp_path, capsys):
    config, checkpoint, _, folder, images = setup
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "good.png").write_bytes((folder / "a.png").read_bytes())
    (inputs / "bad.png").write_bytes(b"\x89PNG not really" + bytes(range(256)))
    (inputs / "notes.txt").write_text("not an image: ignored in folders")
    out = tmp_path / "out"
    code = infer.main([str(config), str(checkpoint), str(inputs), "--out-dir", str(out), "--no-progress"])
    assert code == 1
    captured = capsys.readouterr()
    assert "1 processed, 0 skipped (outputs exist), 1 failed" in captured.out
    failed = captured.err.split("failed:")[-1]
    assert str(inputs / "bad.png") in failed and "good.png" not in failed
    assert files_under(out) == ["good_overlay.png", "good_pred.png"]


def test_existing_outputs_are_kept_unless_overwrite(setup, tmp_path):
    config, checkpoint, _, folder, _ = setup
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "a.png").write_bytes((folder / "a.png").read_bytes())
    out = inputs / "out"  # inside the input folder: its files must not be read back as inputs
    args = ["infer", str(config), str(checkpoint), str(inputs), "--out-dir", str(out), "--no-progress"]
    assert cli(args) == 0
    pred, overlay = outputs(out, "a.png")
    good = pred.read_bytes()
    pred.write_bytes(b"an older result")
    kept = snapshot(out)
    summary = infer.run(config, checkpoint, [inputs], out, progress=False)
    assert (summary["processed"], summary["skipped"], summary["failed"]) == (0, 1, 0)
    assert sorted(summary["skipped_files"]) == sorted([str(pred), str(overlay)])
    assert snapshot(out) == kept
    overlay.unlink()  # one output missing: only that one is written
    summary = infer.run(config, checkpoint, [inputs], out, progress=False)
    assert summary["written"] == [str(overlay)] and pred.read_bytes() == b"an older result"
    assert cli(args + ["--overwrite"]) == 0
    assert pred.read_bytes() == good
    assert files_under(inputs) == ["a.png", "out/a_overlay.png", "out/a_pred.png"]  # no temporary file left


def test_an_interrupted_run_leaves_no_partial_file(setup, tmp_path, monkeypatch):
    config, checkpoint, _, folder, _ = setup
    real_save = Image.Image.save

    def save_half_then_interrupt(self, fp, *args, **kwargs):
        real_save(self, fp, *args, **kwargs)
        fp.truncate(fp.tell() // 2)
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", save_half_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        infer.run(config, checkpoint, [folder], tmp_path / "out", progress=False)
    assert files_under(tmp_path) == []


def other_architecture(setup, path):
    psp = setup[0].with_name("small_psp.py")  # the same backbone under a PSP head
    psp.write_text(CONFIG.replace(BASE.name, "resnest_s101-d8_pspnet_4xb2-80k_cityscapes512x1024.py"))
    torch.save({"meta": {}, "state_dict": build_model(str(psp)).state_dict()}, path)
    return "does not fit"


def truncated(setup, path):
    data = pathlib.Path(setup[1]).read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return "not a readable PyTorch checkpoint"


def not_a_state_dict(setup, path):
    torch.save({"meta": {}, "state_dict": [1, 2, 3]}, path)
    return "holds no state_dict"


@pytest.mark.parametrize("make", [other_architecture, truncated, not_a_state_dict])
def test_a_wrong_checkpoint_exits_2_and_writes_nothing(setup, tmp_path, capsys, make):
    config, _, _, folder, _ = setup
    checkpoint = tmp_path / "wrong.pth"
    message = make(setup, checkpoint)
    out = tmp_path / "out"
    assert cli(["infer", str(config), str(checkpoint), str(folder), "--out-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(checkpoint) in err, err
    assert not out.exists()


def test_a_bad_config_exits_2(setup, tmp_path, capsys):
    _, checkpoint, _, folder, _ = setup
    out = tmp_path / "out"
    assert cli(["infer", str(tmp_path / "missing.py"), str(checkpoint), str(folder), "--out-dir", str(out)]) == 2
    assert "missing.py" in capsys.readouterr().err
    assert not out.exists()


def test_command_in_a_fresh_process(setup, tmp_path):
    config, checkpoint, model, folder, images = setup
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "resnest_fast", "infer", str(config), str(checkpoint), str(folder / "x" / "img.png"),
         "--out-dir", str(out), "--scale", "none", "--palette", "ade20k", "--device", "cpu"],
        capture_output=True, text=True, timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert result.returncode == 0, result.stderr
    assert "1 processed" in result.stdout
    pred = Image.open(out / "img_pred.png")
    np.testing.assert_array_equal(np.asarray(pred), expected_labels(model, images["x/img.png"], scale=None))
    assert pred.getpalette()[: 3 * 19] == np.array(ADE20K_PALETTE[:19], dtype=np.uint8).reshape(-1).tolist()


def test_the_palette_saved_in_the_checkpoint_comes_first(setup, tmp_path):
    config, checkpoint, model, folder, images = setup
    saved = np.random.default_rng(3).integers(0, 256, (19, 3)).tolist()
    state_dict = torch.load(checkpoint, weights_only=True)["state_dict"]
    torch.save({"meta": {"dataset_meta": {"palette": saved}}, "state_dict": state_dict}, tmp_path / "meta.pth")
    summary = infer.run(config, tmp_path / "meta.pth", [folder / "x" / "img.png"], tmp_path, progress=False)
    assert summary["palette"] == "checkpoint"
    assert Image.open(tmp_path / "img_pred.png").getpalette()[: 3 * 19] == np.array(saved).reshape(-1).tolist()


def test_palettes():
    assert infer.resolve_palette("auto", 19)[0] == "cityscapes"
    assert infer.resolve_palette("auto", 150)[0] == "ade20k"
    name, generated = infer.resolve_palette("auto", 7)
    assert name == "generated" and generated.shape == (7, 3)
    state = np.random.get_state()  # mmseg's rule, which draws from numpy's global generator
    np.random.seed(42)
    np.testing.assert_array_equal(generated, np.random.randint(0, 255, size=(7, 3)))
    np.random.set_state(state)
    with pytest.raises(ValueError, match="19 colours"):
        infer.resolve_palette("cityscapes", 150)
    labels = np.array([[0, 2], [1, 0]], dtype=np.uint8)
    np.testing.assert_array_equal(infer.colorize(labels, CITYSCAPES_PALETTE)[0, 1], CITYSCAPES_PALETTE[2])
    with pytest.raises(ValueError, match="palette has 2 colours"):
        infer.colorize(labels, CITYSCAPES_PALETTE[:2])
    many = np.array([[300, 2]], dtype=np.int64)  # more classes than a 'P' PNG holds: 16-bit grey class indices
    label_image = infer._label_image(many, infer.generated_palette(301))
    assert label_image.mode == "I;16" and np.array(label_image).tolist() == [[300, 2]]


def test_symlinked_folders_are_followed_once_and_loops_end(setup, tmp_path):
    """Links to folders are followed, as mmengine's list_dir_or_file does (they were skipped without a word); links
    that loop (to the folder itself, to its parent, back from outside) end, and an image reachable by two routes is
    segmented once, under its own folder's route."""
    config, checkpoint, model, folder, images = setup
    inputs, outside = tmp_path / "in", tmp_path / "outside"
    (inputs / "sub").mkdir(parents=True)
    outside.mkdir()
    for path in (inputs / "a.png", inputs / "sub" / "b.png", outside / "c.png"):
        path.write_bytes((folder / "x" / "img.png").read_bytes())
    (inputs / "alias").symlink_to(inputs / "sub")  # a second route to sub/, sorted before it
    (inputs / "ext").symlink_to(outside)  # a folder outside the input, reached only through the link
    (inputs / "sub" / "self").symlink_to(inputs / "sub")
    (inputs / "sub" / "up").symlink_to(inputs)
    (outside / "back").symlink_to(inputs)
    jobs, failures = infer.plan_outputs([inputs], tmp_path / "out")
    assert failures == []
    assert [str(job.source.relative_to(inputs)) for job in jobs] == ["a.png", "sub/b.png", "ext/c.png"]
    out = tmp_path / "out"
    summary = infer.run(config, checkpoint, [inputs], out, scale="none", progress=False)
    assert (summary["processed"], summary["failed"], summary["skipped"]) == (3, 0, 0)
    assert files_under(out) == ["a_overlay.png", "a_pred.png", "ext/c_overlay.png", "ext/c_pred.png",
                                "sub/b_overlay.png", "sub/b_pred.png"]
    want = expected_labels(model, images["x/img.png"], scale=None)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "ext" / "c_pred.png")), want)


@pytest.mark.parametrize("crop", [(16, 16), (30, 30)])
def test_a_crop_size_without_a_stride_gives_the_windows_and_labels_of_model_predict(setup, tmp_path, crop):
    """`infer --crop-size` and model.predict(crop_size=...) under a test_cfg of (24, 24) windows every 24: both take
    2/3 of the window given as stride (10 and 20 here). predict kept test_cfg's 24 (refused for a 16 window, other
    windows than infer's for a 30 one)."""
    config, checkpoint, model, folder, images = setup
    slide_config = tmp_path / "slide_fcn.py"
    slide_config.write_text(f"_base_ = {str(config)!r}\n"
                            "model = dict(test_cfg=dict(mode='slide', crop_size=(24, 24), stride=(24, 24)))\n")
    slide_model = build_model(str(slide_config))
    slide_model.load_state_dict(model.state_dict())
    slide_model.eval()
    out = tmp_path / "out"
    assert cli(["infer", str(slide_config), str(checkpoint), str(folder / "a.png"), "--out-dir", str(out), "--scale",
                "none", "--crop-size", *map(str, crop), "--no-progress"]) == 0
    img = torch.from_numpy(images["a.png"]).permute(2, 0, 1).unsqueeze(0).contiguous()
    api = slide_model.predict(img, crop_size=crop)[0].numpy()
    stride = tuple(int(c * 2 / 3) for c in crop)
    np.testing.assert_array_equal(api, expected_labels(model, images["a.png"], scale=None, mode="slide",
                                                       crop_size=crop, stride=stride))
    np.testing.assert_array_equal(np.asarray(Image.open(out / "a_pred.png")), api)


def test_an_image_too_wide_for_a_jpeg_overlay_is_refused_before_any_output(setup, tmp_path, capfd):
    """libjpeg refuses an edge over 65500 pixels (JPEG_MAX_DIMENSION) only while encoding, printing its own message
    to stderr, after `_pred.png` was written: the image is refused, named, before any file of its own; the others
    are processed."""
    config, checkpoint, _, folder, _ = setup
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "good.png").write_bytes((folder / "x" / "img.png").read_bytes())
    Image.fromarray(np.full((2, 65501, 3), 90, dtype=np.uint8)).save(inputs / "wide.png")
    with pytest.raises(OSError):  # what the encoder does with it: the limit is real
        Image.new("RGB", (65501, 2)).save(tmp_path / "probe.jpg")
    capfd.readouterr()
    out = tmp_path / "out"
    code = cli(["infer", str(config), str(checkpoint), str(inputs), "--out-dir", str(out), "--overlay-format", "jpg",
                "--scale", "none", "--no-progress"])
    err = capfd.readouterr().err
    assert code == 1, err
    assert (f"error: {inputs / 'wide.png'}: cannot write the overlay {out / 'wide_overlay.jpg'} as a JPEG: the image "
            "is 65501 x 2 pixels and a JPEG edge holds at most 65500 (use --overlay-format png)") in err, err
    assert "Maximum supported image dimension" not in err, err
    assert files_under(out) == ["good_overlay.jpg", "good_pred.png"]
