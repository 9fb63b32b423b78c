"""`resnest-fast infer`: image files in, a palette PNG of class indices and an overlay out.

Each image goes through mmseg's test pipeline and post-processing, so a label map here is the one mmseg would
predict and score:
  decode (pillow, RGB, EXIF orientation applied, 16-bit samples >> 8 and alpha dropped (multiplied in TIFF) as
  OpenCV does, 32-bit integer or float images refused; `resnest_fast.training.data.io.load_image`)
  -> resize of the uint8 image keeping its ratio to the config's test scale (`data.scale`, mmcv's rescale rule,
     `resnest_fast.segmentation.inference.resize_image`), unless --scale says otherwise
  -> whole-image or sliding-window logits (`EncoderDecoder.inference`)
  -> logits resized bilinearly back to the original size with the model's align_corners -> argmax.
mmseg predicts at the original resolution (its `postprocess_result` resizes the logits to `ori_shape`), so the
label map always has the input's size.

Outputs, per image, under --out-dir with the input folders' structure mirrored (two `img.png` in different
folders never collide): `<stem>_pred.png`, a 'P' PNG whose pixel values are the class indices (it doubles as a
label map) and whose palette is the dataset's; `<stem>_overlay.png|jpg`, the image blended with the colour map as
mmseg's visualiser does (`(img * (1 - opacity) + color * opacity)` truncated to uint8).

Files are written atomically (`resnest_fast.utils.atomic_write`; a hard link when existing files must be kept,
so "never overwrite" holds even against a concurrent writer): an interrupted run leaves no partial output, and
the hidden temporary files of a run killed outright (SIGKILL) are removed by the next run once a minute old.
Input files are only read; an input folder reached through a symbolic link is compared by its real path, so an
--out-dir inside it is never read back as input. Symbolic links to folders are followed (as mmengine's
list_dir_or_file does), each real folder listed once, so links that loop end; an image reached by two routes is
segmented once, under the first route found (its own folder's when it has one inside the input).

Python: `colorize`, `overlay`, `run` here; one image: `resnest_fast.segmentation.segment_image`.
"""
import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image
from tqdm import tqdm

from resnest_fast.backend import check_backend
from resnest_fast.checkpoint import CheckpointError
from resnest_fast.cli._common import add_runtime_arguments, check_path_arguments, command_main, print_error
from resnest_fast.segmentation.inference import (Scale, check_scale, config_scale, load_model, segment_image,
                                                 slide_defaults)
from resnest_fast.training.data.io import CorruptFileError, load_image
from resnest_fast.training.data.meta import ADE20K_PALETTE, CITYSCAPES_PALETTE
from resnest_fast.training.errors import SetupError
from resnest_fast.utils import atomic_write, atomic_write_leftovers, check_path, not_a_file, unwritable_folder

__all__ = [
    "IMAGE_EXTENSIONS",
    "PALETTES",
    "colorize",
    "overlay",
    "generated_palette",
    "resolve_palette",
    "plan_outputs",
    "remove_stale_temporaries",
    "check_overlay_size",
    "run",
    "add_arguments",
    "main",
]

IMAGE_EXTENSIONS = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
PALETTES = {"cityscapes": CITYSCAPES_PALETTE, "ade20k": ADE20K_PALETTE}
# the path arguments: attribute -> (name on the command line, what it expects)
PATH_ARGUMENTS = {"config": ("CONFIG", "a shipped config's name or a .py file"),
                  "checkpoint": ("CHECKPOINT", "a checkpoint file"),
                  "inputs": ("INPUT", "an image file or a folder of images"), "out_dir": ("--out-dir", "a folder")}
# num_classes -> palette name for --palette auto (the two datasets of mmseg's ResNeSt table)
_PALETTE_BY_CLASSES = {len(CITYSCAPES_PALETTE): "cityscapes", len(ADE20K_PALETTE): "ade20k"}


# ------------------------------------------------------------------------------------------------ colours


def colorize(labels: np.ndarray, palette) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) uint8 colours, palette: (N, 3) RGB with N > every index."""
    pal = np.asarray(palette, dtype=np.uint8)
    if pal.ndim != 2 or pal.shape[1] != 3:
        raise ValueError(f"palette must be (N, 3) RGB colours, got shape {pal.shape}")
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= len(pal)):
        raise ValueError(f"labels range over [{labels.min()}, {labels.max()}] but the palette has {len(pal)} colours")
    return pal[labels]


def overlay(img: np.ndarray, color: np.ndarray, opacity: float = 0.5) -> np.ndarray:
    """The image blended with a colour map, mmseg's visualiser formula:
    uint8(img * (1 - opacity) + color * opacity), truncated (not rounded) as mmseg's `.astype(np.uint8)`.
    img, color: (H, W, 3) uint8. opacity in [0, 1] (0: the image, 1: the colour map)."""
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    if img.shape != color.shape:
        raise ValueError(f"img {img.shape} and color {color.shape} must have the same shape")
    return (img * (1 - opacity) + color * opacity).astype(np.uint8)


def generated_palette(num_classes: int) -> np.ndarray:
    """mmseg's palette for datasets without one (BaseSegDataset: numpy's legacy generator seeded with 42,
    randint(0, 255, (N, 3))), without touching numpy's global random state."""
    return np.random.RandomState(42).randint(0, 255, size=(num_classes, 3)).astype(np.uint8)


def _checkpoint_palette(meta: Optional[dict]) -> Optional[np.ndarray]:
    """The palette an mmseg checkpoint carries: meta['dataset_meta']['palette'] (mmseg 1.x) or meta['PALETTE']
    (0.x); None when there is none or it is not a list of RGB triples."""
    meta = meta or {}
    dataset_meta = meta.get("dataset_meta") if isinstance(meta.get("dataset_meta"), dict) else {}
    found = dataset_meta.get("palette", meta.get("PALETTE"))
    try:
        pal = np.asarray(found, dtype=np.int64)
    except (TypeError, ValueError):
        return None
    if found is None or pal.ndim != 2 or pal.shape[1] != 3 or len(pal) == 0 or pal.min() < 0 or pal.max() > 255:
        return None
    return pal.astype(np.uint8)


def resolve_palette(choice: str, num_classes: int, cfg: Optional[dict] = None,
                    meta: Optional[dict] = None) -> Tuple[str, np.ndarray]:
    """(name, (N, 3) uint8 palette) for --palette: 'cityscapes', 'ade20k', or 'auto'. 'auto' follows mmseg's
    `init_model`: the palette saved in the checkpoint's meta (mmseg 1.x `dataset_meta`, 0.x `PALETTE`) if it covers
    the classes, else the dataset found by class count (19 -> Cityscapes, 150 -> ADE20k), asking the config's
    data.type first; where mmseg then falls back to Cityscapes' colours, any other count gets mmseg's generated
    palette (Cityscapes has too few colours for more than 19 classes)."""
    if choice == "auto":
        saved = _checkpoint_palette(meta)
        if saved is not None and len(saved) >= num_classes:
            return "checkpoint", saved
        dataset = str(((cfg or {}).get("data") or {}).get("type", "")).lower()
        if dataset in PALETTES and len(PALETTES[dataset]) == num_classes:
            choice = dataset
        else:
            choice = _PALETTE_BY_CLASSES.get(num_classes, "generated")
        if choice == "generated":
            return choice, generated_palette(num_classes)
    if choice not in PALETTES:
        raise ValueError(f"palette must be one of {sorted(PALETTES) + ['auto']}, got {choice!r}")
    pal = np.asarray(PALETTES[choice], dtype=np.uint8)
    if num_classes > len(pal):
        raise ValueError(f"the {choice} palette has {len(pal)} colours but the model predicts {num_classes} classes "
                         "(use --palette auto for a generated palette)")
    return choice, pal


# -------------------------------------------------------------------------------------------------- outputs


def _label_image(labels: np.ndarray, palette: np.ndarray) -> Image.Image:
    """'P' image whose pixel values are the class indices; a palette image holds at most 256 of them, so larger
    label sets are written as 16-bit grayscale (still a label map, without colours)."""
    if labels.dtype != np.uint8:
        return Image.fromarray(labels.astype(np.uint16))
    h, w = labels.shape
    im = Image.frombytes("P", (w, h), np.ascontiguousarray(labels, dtype=np.uint8).tobytes())
    im.putpalette(palette[:256].reshape(-1).tolist())
    return im


def _write_atomically(path: Path, image: Image.Image, fmt: str, overwrite: bool, **save_args) -> bool:
    """Writes `image` to `path` atomically; without `overwrite` an existing `path` is kept (False is returned),
    even one that appears meanwhile."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda f: image.save(f, format=fmt, **save_args), overwrite=overwrite)


# libjpeg's JPEG_MAX_DIMENSION: the longest edge a JPEG file may have. Beyond it pillow's encoder fails only once it
# runs, with libjpeg's own message written straight to stderr.
JPEG_MAX_EDGE = 65500


def check_overlay_size(path: Path, hw: Tuple[int, int]) -> None:
    """ValueError naming `path` when an overlay of hw = (height, width) cannot be written in its format (a JPEG
    edge longer than JPEG_MAX_EDGE)."""
    if path.suffix == ".jpg" and max(hw) > JPEG_MAX_EDGE:
        raise ValueError(f"cannot write the overlay {path} as a JPEG: the image is {hw[1]} x {hw[0]} pixels and a "
                         f"JPEG edge holds at most {JPEG_MAX_EDGE} (use --overlay-format png)")


# A temporary file of atomic_write older than this was left by a run that was killed (SIGKILL, power loss) before
# it could remove it; a younger one may belong to a run writing into the same folder right now (one image's
# write takes well under a second).
STALE_TEMP_SECONDS = 60.0


def remove_stale_temporaries(outputs: Sequence[Path], log=None) -> List[Path]:
    """Removes the temporary files that killed runs left beside `outputs` (exactly atomic_write's names for these
    outputs, older than STALE_TEMP_SECONDS; no other file is touched) and returns them."""
    removed, now = [], time.time()
    for tmp in atomic_write_leftovers(outputs):
        try:
            if now - tmp.stat().st_mtime > STALE_TEMP_SECONDS:
                tmp.unlink()
                removed.append(tmp)
        except OSError:  # gone meanwhile, or not ours to remove: left as it is
            continue
    if removed and log is not None:
        tqdm.write(f"removed {len(removed)} temporary file(s) that an interrupted run left in {removed[0].parent}"
                   + (" and other folders" if len({p.parent for p in removed}) > 1 else ""), file=log)
    return removed


@dataclass(frozen=True)
class _Job:
    source: Path
    pred: Path
    overlay: Path


def _walk_images(folder: Path, skip: Path, failures: List[Tuple[str, str]]) -> List[Path]:
    """Image files under `folder`, hidden files and folders left out (our temporary files, macOS's '._*'), and the
    output folder (`skip`, a real path) left out when it lies inside, whatever the route to it. Folders that
    cannot be listed are added to `failures`.

    Symbolic links to folders are followed, as mmengine's list_dir_or_file does, each real folder being listed
    once: a link that loops back, or a second route to a folder already listed, is not followed again. The folders
    themselves come first (sorted, depth-first by name), then the linked ones, so an image inside `folder` keeps
    its own route (and its output name) when a link also reaches it."""
    found: List[Path] = []
    listed = {os.path.realpath(folder)}
    links: List[str] = []  # linked folders met, walked once the real tree is done

    def unreadable(err: OSError):
        failures.append((str(err.filename), f"cannot list folder {err.filename}: {err.strerror}"))

    def walk(top):
        # os.walk does not descend into links; they are queued instead. `skip` is a real path, so every folder is
        # compared by its real path, or a route through a link would walk into the output folder and segment the
        # previous run's outputs
        for dirpath, dirnames, filenames in os.walk(top, onerror=unreadable):
            kept = []
            for name in sorted(dirnames):
                path = os.path.join(dirpath, name)
                real = os.path.realpath(path)
                if name.startswith(".") or Path(real) == skip or real in listed:
                    continue
                if os.path.islink(path):
                    links.append(path)
                else:
                    listed.add(real)
                    kept.append(name)
            dirnames[:] = kept
            found.extend(Path(dirpath, f) for f in sorted(filenames)
                         if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS)

    walk(folder)
    while links:
        link = links.pop(0)
        real = os.path.realpath(link)
        if real not in listed:  # two links to one folder: the first one met
            listed.add(real)
            walk(link)
    return found


def _missing_inputs(inputs: Sequence[Union[str, os.PathLike]]) -> Optional[str]:
    """One line naming every input that does not exist (a symbolic link to nothing with its target), or None."""
    missing = []
    for given in inputs:
        if not os.path.exists(given):
            link = f" (a symbolic link to {os.readlink(given)})" if os.path.islink(given) else ""
            missing.append(f"{str(given)!r}{link}")
    if not missing:
        return None
    if len(missing) == 1:
        return f"INPUT {missing[0]} does not exist: expected an image file or a folder of images"
    return f"INPUT {', '.join(missing)} do not exist: expected image files or folders of images"


def plan_outputs(inputs: Sequence[Union[str, os.PathLike]], out_dir: Union[str, os.PathLike],
                 overlay_format: str = "auto") -> Tuple[List[_Job], List[Tuple[str, str]]]:
    """(jobs, failures): the images to process with their two output paths, and the inputs that cannot be
    (not a file nor a folder, output-name clashes). Nothing is read or written. An input that does not exist is a
    usage error, not a failure of the run: ValueError naming every such input.

    Files given by name are taken whatever their extension; folders are searched recursively for
    IMAGE_EXTENSIONS. Outputs mirror the inputs' folders relative to their common ancestor (a file's ancestor is
    its folder). Two images of one folder with the same stem (a.png, a.jpg) keep their extension in the output
    name (a.png_pred.png, a.jpg_pred.png)."""
    if overlay_format not in ("auto", "png", "jpg"):
        raise ValueError(f"overlay_format must be 'auto', 'png' or 'jpg', got {overlay_format!r}")
    check_path(out_dir, "--out-dir", "a folder")
    for given in inputs:
        check_path(given, "INPUT", "an image file or a folder of images")
    missing = _missing_inputs(inputs)
    if missing:
        raise ValueError(missing)
    refusal = unwritable_folder(out_dir, "--out-dir")
    if refusal:
        raise ValueError(refusal)
    out_dir = Path(os.path.abspath(out_dir))
    real_out_dir = Path(os.path.realpath(out_dir))
    failures: List[Tuple[str, str]] = []
    sources: List[Tuple[Path, Path]] = []  # (image, root its output path is relative to)
    for given in inputs:
        path = Path(os.path.abspath(given))
        if path.is_dir():
            if Path(os.path.realpath(path)) == real_out_dir:
                raise ValueError(f"--out-dir {str(out_dir)!r} is an input folder: outputs would be read as inputs "
                                 "by the next run; choose another folder")
            sources += [(p, path) for p in _walk_images(path, real_out_dir, failures)]
        elif path.is_file():
            sources.append((path, path.parent))
        else:  # it existed a moment ago (_missing_inputs): a FIFO, a socket, a device, or removed meanwhile
            what = not_a_file(path)
            failures.append((str(given), f"input {given} is {what}, not an image file or folder" if what
                             else f"input {given} was removed during the run"))
    seen, unique = set(), []
    for src, root in sources:
        key = os.path.realpath(src)
        if key not in seen:
            seen.add(key)
            unique.append((src, root))
    if not unique:
        return [], failures
    common = Path(os.path.commonpath([str(root) for _, root in unique]))
    stems: Dict[Tuple[Path, str], int] = {}
    for src, _ in unique:
        stems[(src.parent, src.stem)] = stems.get((src.parent, src.stem), 0) + 1
    jobs, claimed = [], {}
    inputs_set = set(seen)  # real paths: an output must not replace an input reached by another route
    for src, _ in unique:
        folder = out_dir / src.parent.relative_to(common)
        base = src.name if stems[(src.parent, src.stem)] > 1 else src.stem
        ext = overlay_format if overlay_format != "auto" else (
            "jpg" if src.suffix.lower() in (".jpg", ".jpeg") else "png")
        job = _Job(src, folder / f"{base}_pred.png", folder / f"{base}_overlay.{ext}")
        clash = next((claimed[p] for p in (job.pred, job.overlay) if p in claimed), None)
        if clash is not None:
            failures.append((str(src), f"{src}: its outputs would have the same names as those of {clash}"))
        elif os.path.realpath(job.pred) in inputs_set or os.path.realpath(job.overlay) in inputs_set:
            failures.append((str(src), f"{src}: an output would replace an input file ({job.pred.name})"))
        else:
            claimed[job.pred] = claimed[job.overlay] = src
            jobs.append(job)
    return jobs, failures


# ----------------------------------------------------------------------------------------------------- runs


def run(
    config,
    checkpoint,
    inputs: Sequence[Union[str, os.PathLike]],
    out_dir: Union[str, os.PathLike],
    *,
    mode: Optional[str] = None,
    crop_size: Optional[Sequence[int]] = None,
    stride: Optional[Sequence[int]] = None,
    scale: Union[str, Scale] = "config",
    palette: str = "auto",
    opacity: float = 0.5,
    overlay_format: str = "auto",
    backend: Optional[str] = None,
    device: Optional[str] = None,
    overwrite: bool = False,
    progress: bool = True,
    log=None,
) -> dict:
    """Segments every image of `inputs` (files and/or folders) and writes its two outputs under `out_dir`.

    config: a shipped config's name, a .py file or a loaded dict; checkpoint: mmseg's format or a state_dict.
    mode: 'whole' / 'slide' (None: the config's test_cfg); crop_size, stride: slide windows (h, w), by default
    the config's. scale: 'config' (the config's data.scale), None (original size), a pair or a factor (see
    segment_image). palette: 'auto', 'cityscapes', 'ade20k'. overlay_format: 'auto' (jpg for JPEG inputs, png
    otherwise), 'png', 'jpg'. overwrite: replace existing outputs (default: keep and report them).
    log: a file for messages (default stderr).

    Setup problems (arguments, inputs that do not exist, config, checkpoint, device, no image found) raise
    SetupError before anything is written. An image that cannot be read, segmented or written is reported and
    counted, and the others go on. Returns the summary: processed, skipped, failed (counts), failures [(path,
    message)], written and skipped_files (paths), seconds, seconds_per_image, out_dir, mode, scale, palette.
    """
    log = log or sys.stderr
    started = time.perf_counter()
    try:
        if mode not in (None, "whole", "slide"):
            raise ValueError(f"mode must be 'whole' or 'slide', got {mode!r}")
        if not 0.0 <= opacity <= 1.0:
            raise ValueError(f"opacity must be in [0, 1], got {opacity}")
        if isinstance(scale, str) and scale not in ("config", "none"):
            raise ValueError(f"scale must be 'config', 'none', a pair of edges or a factor, got {scale!r}")
        jobs, failures = plan_outputs(inputs, out_dir, overlay_format)
        model, cfg, meta = load_model(config, checkpoint, backend=backend, device=device)
        # once for the run: the ops would refuse it at every image's first forward
        check_backend(backend, next(model.parameters()).device)
        palette_name, pal = resolve_palette(palette, model.num_classes, cfg, meta)
        if scale == "config":
            scale = check_scale(config_scale(cfg), "the config's test scale, data.scale,")
        elif scale == "none":
            scale = None
        else:  # once here rather than once per image
            scale = check_scale(scale, "--scale")
        mode = mode or model.test_cfg["mode"]
        if mode == "slide":
            crop_size, stride = slide_defaults(model, cfg, crop_size, stride)
        elif crop_size is not None or stride is not None:
            raise ValueError("a crop size and a stride (--crop-size, --stride) apply to mode 'slide' only")
    except (CheckpointError, ValueError, TypeError, KeyError, OSError) as exc:
        raise SetupError(str(exc)) from exc
    if not jobs and not failures:
        raise SetupError(f"no image found in {[str(i) for i in inputs]} (extensions: {', '.join(IMAGE_EXTENSIONS)})")
    for path, message in failures:
        tqdm.write(f"error: {message}", file=log)
    remove_stale_temporaries([p for job in jobs for p in (job.pred, job.overlay)], log)

    written, skipped_files = [], []
    processed = skipped = 0
    busy = 0.0
    for job in tqdm(jobs, desc="infer", unit="img", disable=not progress, file=log, dynamic_ncols=True):
        todo = [p for p in (job.pred, job.overlay) if overwrite or not p.exists()]
        kept = [p for p in (job.pred, job.overlay) if p not in todo]
        if not todo:
            skipped += 1
            skipped_files += [str(p) for p in kept]
            tqdm.write(f"skipped {job.source}: {', '.join(str(p) for p in kept)} exist (--overwrite replaces them)",
                       file=log)
            continue
        t0 = time.perf_counter()
        try:
            img = load_image(job.source)
            if job.overlay in todo:  # before any work or file for this image
                check_overlay_size(job.overlay, img.shape[:2])
            labels = segment_image(model, img, mode=mode, scale=scale, crop_size=crop_size, stride=stride)
            for path in todo:
                if path == job.pred:
                    image, fmt, save_args = _label_image(labels, pal), "PNG", {}
                else:
                    image = Image.fromarray(overlay(img, colorize(labels, pal), opacity))
                    jpeg = path.suffix == ".jpg"
                    fmt, save_args = ("JPEG", {"quality": 95, "subsampling": 0}) if jpeg else ("PNG", {})
                if _write_atomically(path, image, fmt, overwrite, **save_args):
                    written.append(str(path))
                else:
                    kept.append(path)
            if kept:
                skipped_files += [str(p) for p in kept]
                tqdm.write(f"kept existing {', '.join(str(p) for p in kept)}", file=log)
            processed += 1
            busy += time.perf_counter() - t0
        # MemoryError: one image too large for this machine must not stop the others
        except (CorruptFileError, OSError, ValueError, RuntimeError, MemoryError) as exc:
            message = str(exc) if str(job.source) in str(exc) else f"{job.source}: {exc}"
            failures.append((str(job.source), message))
            tqdm.write(f"error: {message}", file=log)

    return dict(
        processed=processed,
        skipped=skipped,
        failed=len(failures),
        failures=failures,
        written=written,
        skipped_files=skipped_files,
        seconds=time.perf_counter() - started,
        seconds_per_image=busy / processed if processed else 0.0,
        out_dir=str(out_dir),
        mode=mode,
        scale=scale,
        palette=palette_name,
    )


# ------------------------------------------------------------------------------------------------ command line


def _scale_arg(values: List[str]):
    if len(values) == 1 and values[0].lower() in ("config", "none"):
        return values[0].lower()
    if len(values) == 2:
        try:
            pair = tuple(int(v) for v in values)
        except ValueError:
            pair = None
        if pair and min(pair) > 0:
            return pair
    raise argparse.ArgumentTypeError(f"--scale takes 'config', 'none' or two positive ints H W, got {values}")


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("config", help="a shipped config's name (resnest_s101-d8_...) or a .py config file (ours, "
                        "or mmseg 1.x's)")
    parser.add_argument("checkpoint", help="checkpoint file (mmseg's format or a state_dict)")
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help=f"image files and/or folders (searched recursively for {', '.join(IMAGE_EXTENSIONS)})")
    parser.add_argument("--out-dir", required=True, help="where <stem>_pred.png and <stem>_overlay.* go "
                        "(the inputs' folder structure is mirrored)")
    parser.add_argument("--mode", choices=("whole", "slide"), default=None,
                        help="whole-image or sliding-window inference (default: the config's test_cfg)")
    parser.add_argument("--crop-size", nargs=2, type=int, metavar=("H", "W"), help="slide window (default: the "
                        "config's test_cfg crop_size, else its training crop)")
    parser.add_argument("--stride", nargs=2, type=int, metavar=("H", "W"),
                        help="slide stride (default: the config's with its own window, else 2/3 of the window)")
    parser.add_argument("--scale", nargs="+", default=["config"], metavar="SCALE",
                        help="'H W': resize keeping the ratio so the image fits these two edges (their order does not "
                        "matter; H x W at most 8192 x 8192 pixels); 'config': the config's test scale, data.scale "
                        "(default); 'none': the original size")
    parser.add_argument("--palette", choices=("auto", "cityscapes", "ade20k"), default="auto",
                        help="colours (auto, mmseg's rule: the checkpoint's saved palette, else the config's dataset, "
                        "else by class count: 19 Cityscapes, 150 ADE20k, others mmseg's generated palette)")
    parser.add_argument("--opacity", type=float, default=0.5, help="colour weight in the overlay, 0-1 (default 0.5)")
    parser.add_argument("--overlay-format", choices=("auto", "png", "jpg"), default="auto",
                        help="auto: jpg for JPEG inputs, png otherwise")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: keep them)")
    add_runtime_arguments(parser)
    return parser


def run_from_args(args: argparse.Namespace, prog: str = "resnest-fast infer") -> int:
    """Exit code: 0 all done, 1 some images failed, 2 nothing done (bad arguments, config or checkpoint)."""
    try:
        check_path_arguments(args, PATH_ARGUMENTS)
        scale = _scale_arg(args.scale)
        summary = run(
            args.config, args.checkpoint, args.inputs, args.out_dir, mode=args.mode, crop_size=args.crop_size,
            stride=args.stride, scale=scale, palette=args.palette, opacity=args.opacity,
            overlay_format=args.overlay_format, backend=args.backend, device=args.device, overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    except (SetupError, argparse.ArgumentTypeError) as exc:
        print_error(prog, exc)
        return 2
    per = f"{summary['seconds_per_image']:.2f} s per image" if summary["processed"] else "no image segmented"
    print(f"{summary['processed']} processed, {summary['skipped']} skipped (outputs exist), {summary['failed']} "
          f"failed; {per}, {summary['seconds']:.1f} s in all; outputs in {summary['out_dir']}")
    if summary["failures"]:
        print("failed:", file=sys.stderr)
        for _, message in summary["failures"]:
            print(f"  {message}", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    return command_main(__doc__, add_arguments, run_from_args, "python -m resnest_fast.cli.infer", argv)


if __name__ == "__main__":
    sys.exit(main())
