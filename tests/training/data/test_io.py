"""Decoding: RGB order, channel handling, mmseg's reduce_zero_label, and errors that name the file."""
import io
import os
import warnings

import numpy as np
import pytest
from PIL import Image

from resnest_fast.training.data import DataError
from resnest_fast.training.data.io import CorruptFileError, load_image, load_label, reduce_zero
from tests.training.data.files import (write_png, write_png16_gray_alpha, write_png_header_only,
                                     write_tiff_alpha)


def test_image_is_rgb_in_file_order(tmp_path):
    img = np.zeros((2, 3, 3), dtype=np.uint8)
    img[0, 0] = (255, 0, 0)  # red in the file
    img[1, 2] = (0, 0, 255)  # blue
    write_png(str(tmp_path / "a.png"), img)
    out = load_image(str(tmp_path / "a.png"))
    assert out.dtype == np.uint8 and out.shape == (2, 3, 3)
    assert tuple(out[0, 0]) == (255, 0, 0) and tuple(out[1, 2]) == (0, 0, 255)


def test_grayscale_and_palette_images_become_three_channels(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    write_png(str(tmp_path / "g.png"), gray)
    out = load_image(str(tmp_path / "g.png"))
    assert out.shape == (3, 4, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)


def test_exif_orientation_is_applied_to_images(tmp_path):
    # Orientation 6 = "rotate 90 CW to display": a 2x4 stored image is shown as 4x2, as cv2 and mmcv decode it.
    stored = np.zeros((2, 4, 3), dtype=np.uint8)
    stored[0, 0] = 255  # top-left when stored -> top-right when displayed
    pil = Image.fromarray(stored)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rot.png"
    pil.save(path, exif=exif)
    out = load_image(str(path))
    assert out.shape == (4, 2, 3)
    assert out[0, 1].tolist() == [255, 255, 255]


def test_palette_label_gives_indices_not_colours(tmp_path):
    label = np.array([[0, 1, 2], [3, 4, 255]], dtype=np.uint8)
    pil = Image.frombytes("P", (3, 2), label.tobytes())
    pil.putpalette([v for i in range(256) for v in (i, 255 - i, 7)])
    pil.save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    np.testing.assert_array_equal(load_label(str(tmp_path / "p.png")), label)


def test_reduce_zero_label_follows_mmseg_rule_for_every_value():
    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    # mmseg: 0 ("other") is ignored, classes 1..150 (any v in 1..254) shift down by one, 255 stays ignored.
    expected = np.array([255 if v in (0, 255) else v - 1 for v in range(256)], dtype=np.uint8).reshape(16, 16)
    np.testing.assert_array_equal(reduce_zero(values), expected)
    assert values[0, 0] == 0  # the input is not modified


def test_rgb_label_is_rejected_with_its_path(tmp_path):
    write_png(str(tmp_path / "rgb_label.png"), np.zeros((2, 2, 3), dtype=np.uint8))
    with pytest.raises(CorruptFileError, match="rgb_label.png.*single-channel"):
        load_label(str(tmp_path / "rgb_label.png"))


@pytest.mark.parametrize("loader", [load_image, load_label])
def test_missing_file_names_it(tmp_path, loader):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        loader(str(tmp_path / "nope.png"))


@pytest.mark.parametrize("loader", [load_image, load_label])
@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_a_path_that_is_not_a_regular_file_says_what_it_is(tmp_path, loader, kind):
    """'not found' sent people looking for a file that is there; a FIFO must not be opened (it waits for a writer)."""
    path = tmp_path / "x.png"
    os.mkfifo(path) if kind == "fifo" else path.mkdir()
    what = r"a named pipe \(FIFO\)" if kind == "fifo" else "a folder"
    with pytest.raises(CorruptFileError, match=rf"^cannot use (image|label) file {path}: it is {what}, not a regular "
                       "file$"):
        loader(str(path))


@pytest.mark.parametrize("loader", [load_image, load_label])
def test_garbage_file_names_it(tmp_path, loader):
    (tmp_path / "garbage.png").write_bytes(b"this is not an image at all")
    with pytest.raises(CorruptFileError, match="garbage.png"):
        loader(str(tmp_path / "garbage.png"))


@pytest.mark.parametrize("loader", [load_image, load_label])
def test_truncated_file_names_it(tmp_path, loader):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)).save(buf, format="PNG")
    (tmp_path / "cut.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(CorruptFileError, match="cut.png"):
        loader(str(tmp_path / "cut.png"))


def test_16_bit_images_decode_as_mmcv_with_opencv_does(tmp_path):
    # mmseg's LoadImageFromFile reads with mmcv.imread(backend='cv2', flag='color'): OpenCV's colour flag turns
    # 16-bit samples into 8-bit ones by >> 8 (pillow's convert('RGB') would clip 99 % of them to 255)
    cv2 = pytest.importorskip("cv2")
    mmcv = pytest.importorskip("mmcv")
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 65536, (20, 30), dtype=np.uint16)
    rgb = rng.integers(0, 65536, (20, 30, 3), dtype=np.uint16)
    paths = [tmp_path / "gray16.png", tmp_path / "rgb16.png", tmp_path / "gray16.tif"]
    cv2.imwrite(str(paths[0]), gray)
    cv2.imwrite(str(paths[1]), rgb)
    Image.fromarray(gray).save(paths[2])
    for path in paths:
        out = load_image(str(path))
        reference = mmcv.imread(str(path), backend="cv2")[..., ::-1]  # BGR -> RGB
        assert out.dtype == np.uint8 and out.flags.writeable
        np.testing.assert_array_equal(out, reference, err_msg=str(path))
    assert 100 < load_image(str(paths[0])).mean() < 156  # what mmseg sees; clipping gave ~254


@pytest.mark.parametrize("mode, array", [
    ("F", np.linspace(0, 300, 600, dtype=np.float32).reshape(20, 30)),
    ("I", np.arange(600, dtype=np.int32).reshape(20, 30) * 100),
])
def test_32_bit_images_are_refused_with_their_path(tmp_path, mode, array):
    # OpenCV cannot read these in colour (mmcv.imread returns None) and they have no 0-255 range; pillow's
    # conversion clipped 74 % of a float image to 255
    path = tmp_path / "deep.tif"
    Image.fromarray(array, mode=mode).save(path)
    with pytest.raises(CorruptFileError, match=f"{path}.*32-bit"):
        load_image(str(path))


def test_a_decompression_bomb_is_a_corrupt_file_named_by_path(tmp_path):
    path = tmp_path / "bomb.png"
    write_png_header_only(path, 30000, 30000)
    with pytest.raises(CorruptFileError, match=f"{path}.*decompression bomb"):
        load_image(str(path))


# (stored ids and dtype, reduce_zero_label, num_classes, the ids the error names or None when the file loads)
WIDE_LABELS = [
    ("300 in 16 bits", [300, 1, 0, 255], np.uint16, True, 150, "299"),
    ("300 in 16 bits, no dataset", [300, 1, 0, 255], np.uint16, False, None, "300"),
    ("65535 in 16 bits", [65535, 3], np.uint16, False, 19, "65535"),
    ("256 in 16 bits", [256, 3], np.uint16, False, 19, "256"),
    ("negative in 32 bits", [-1, 3], np.int32, False, 19, "-1"),
    ("16 bits within range", [150, 1, 0, 255], np.uint16, True, 150, None),
    ("32 bits within range", [18, 0, 255], np.int32, False, 19, None),
]


@pytest.mark.parametrize("name, ids, dtype, reduce, num_classes, named", WIDE_LABELS, ids=[r[0] for r in WIDE_LABELS])
def test_wide_label_ids_are_checked_before_they_become_uint8(tmp_path, name, ids, dtype, reduce, num_classes, named):
    """mmseg's uint8 cast wraps 300 to 44 (class 43 after reduce_zero_label): an id beyond the classes must be
    refused as a uint8 one is, and ids that fit must come out as the same uint8 map."""
    stored = np.array(ids * 3, dtype=dtype).reshape(3, len(ids))
    path = tmp_path / "wide.png" if dtype == np.uint16 else tmp_path / "wide.tif"
    Image.fromarray(stored).save(path)
    assert np.asarray(Image.open(path)).dtype != np.uint8  # the file really holds wide samples
    if named is None:
        row = [(255 if v in (0, 255) else v - 1) if reduce else v for v in ids]
        expected = np.array([row] * 3, dtype=np.uint8)
        np.testing.assert_array_equal(load_label(str(path), reduce, num_classes), expected)
        return
    with pytest.raises(DataError, match=rf"^label file {path} holds class id\(s\) {named}: "):
        load_label(str(path), reduce_zero_label=reduce, num_classes=num_classes)


def _alpha_files(folder):
    """(name, path) of images with alpha or transparency in every form load_image meets, random samples."""
    rng = np.random.default_rng(5)
    h, w = 20, 30
    gray, alpha = rng.integers(0, 256, (2, h, w), dtype=np.uint8)
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    premultiplied_rgb = (rgb.astype(int) * alpha[..., None] // 255).astype(np.uint8)  # associated alpha: c <= a
    premultiplied_gray = (gray.astype(int) * alpha // 255).astype(np.uint8)
    palette = Image.frombytes("P", (w, h), gray.tobytes())
    palette.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    writers = {
        "grey+alpha.png": lambda p: Image.fromarray(np.dstack([gray, alpha]), "LA").save(p),
        "grey+alpha.tif": lambda p: write_tiff_alpha(p, np.dstack([gray, alpha]), associated=False),
        "grey+premultiplied-alpha.tif": lambda p: write_tiff_alpha(p, np.dstack([premultiplied_gray, alpha]),
                                                                   associated=True),
        "grey+alpha-16bit.png": lambda p: write_png16_gray_alpha(
            p, rng.integers(0, 65536, (h, w, 2), dtype=np.uint16)),
        "grey+alpha.webp": lambda p: Image.fromarray(np.dstack([gray, alpha]), "LA").save(p, lossless=True),
        "rgba.png": lambda p: Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(p),
        "rgba.webp": lambda p: Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(p, lossless=True),
        "rgba.tif": lambda p: write_tiff_alpha(p, np.dstack([rgb, alpha]), associated=False),
        "rgba-lzw.tif": lambda p: Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(p, compression="tiff_lzw"),
        "rgb+premultiplied-alpha.tif": lambda p: write_tiff_alpha(p, np.dstack([premultiplied_rgb, alpha]),
                                                                  associated=True),
        "palette+tRNS-table.png": lambda p: palette.save(p, transparency=bytes(range(256))),
        "palette+tRNS-index.png": lambda p: palette.save(p, transparency=5),
        "grey+tRNS.png": lambda p: Image.fromarray(gray).save(p, transparency=7),
        "rgb+tRNS.png": lambda p: Image.fromarray(rgb).save(p, transparency=(1, 2, 3)),
    }
    for name, write in writers.items():
        write(str(folder / name))
    return [(name, folder / name) for name in writers]


def test_images_with_alpha_decode_as_mmseg_with_opencv_does(tmp_path):
    """mmseg's LoadImageFromFile decodes with cv2's colour flag, which drops alpha (libtiff premultiplies it in
    TIFF). Grey + alpha was composited on grey (124, 117, 104), mmcv's pillow path: up to 148 levels off on 97 % of
    the pixels; an RGBA TIFF was not premultiplied: up to 247 off."""
    cv2 = pytest.importorskip("cv2")
    mmcv = pytest.importorskip("mmcv")
    for name, path in _alpha_files(tmp_path):
        reference = mmcv.imread(str(path), backend="cv2")[..., ::-1]  # BGR -> RGB
        assert reference.shape == (20, 30, 3), name
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # pillow's palette-transparency warning came once per image
            out = load_image(str(path))
        assert out.dtype == np.uint8 and out.flags.writeable
        np.testing.assert_array_equal(out, reference, err_msg=name)
    assert Image.open(tmp_path / "grey+alpha.png").mode == "LA"
    assert Image.open(tmp_path / "grey+premultiplied-alpha.tif").mode == "La"  # the files hold what they claim
    assert cv2.imread(str(tmp_path / "rgba.tif"), cv2.IMREAD_UNCHANGED).shape == (20, 30, 4)


def test_16_bit_colour_tiffs_are_within_one_level_of_opencv(tmp_path):
    """The documented difference: OpenCV's libtiff reader rounds 16-bit colour samples (v / 257), pillow keeps their
    high byte."""
    cv2 = pytest.importorskip("cv2")
    samples = np.random.default_rng(6).integers(0, 65536, (20, 30, 3), dtype=np.uint16)
    path = tmp_path / "rgb16.tif"
    cv2.imwrite(str(path), samples)
    difference = np.abs(load_image(str(path)).astype(int) - cv2.imread(str(path))[..., ::-1])
    assert 0 < difference.max() <= 1
