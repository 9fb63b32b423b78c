"""Evaluation command: a checkpoint scored on a config's validation split, mmseg's way (issue 4).

For each validation image (batch 1, as mmseg's val dataloader):
  single scale: the image resized keeping its ratio to the config's test scale (`data.scale`; none for the
    synthetic set) -> whole-image or sliding-window logits (`EncoderDecoder.inference`) -> logits resized
    bilinearly to the original size (mmseg's `postprocess_result`) -> argmax;
  --tta (mmseg 1.x's SegTTAModel over its `tta_pipeline`): for every ratio r of `data.tta_ratios` the *original*
    image resized by r (mmcv's Resize(scale_factor=r, keep_ratio=True)), unflipped and flipped horizontally; each
    prediction's logits flipped back and resized to the original size, turned into probabilities by a softmax over
    the classes, and the probabilities averaged (not the logits) -> argmax.
Predictions are scored against the label at its original resolution by SegEvaluator (aAcc, mIoU, mAcc, per-class
IoU and Acc; mmseg's IoUMetric). Under torchrun each process scores every world_size-th image and the counts are
summed across processes, so every image is scored once.

Python: `predict_scores`, `evaluate`, `run`. Command line: `resnest-fast test --help` (or
`python -m resnest_fast.training.evaluate`). Exit codes: 0 done, 2 nothing done (bad arguments, config,
checkpoint or data).
"""
import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from resnest_fast.checkpoint import CheckpointError
from resnest_fast.training.checkpoints import atomic_write_text
from resnest_fast.training.cli import add_runtime_arguments
from resnest_fast.training.data.builder import build_dataset, check_data_config
from resnest_fast.training.data.transforms import rescale_size, resize_image
from resnest_fast.training.heads import resize
from resnest_fast.training.infer import SetupError, _slide_defaults, load_model
from resnest_fast.training.metrics import SegEvaluator

__all__ = ["tta_size", "predict_scores", "evaluate", "metrics_summary", "run", "add_arguments", "main"]


def tta_size(width: int, height: int, ratio: float) -> Tuple[int, int]:
    """(w, h) of an image of width x height after mmcv's Resize(scale_factor=ratio, keep_ratio=True): the target
    int(edge * ratio + 0.5), then mmcv's imrescale to that target (which may round an edge differently)."""
    target = (int(width * float(ratio) + 0.5), int(height * float(ratio) + 0.5))
    return rescale_size((width, height), target)[0]


def _logits_at(model, img: np.ndarray, size, flip: bool, out_hw, mode, crop_size, stride) -> torch.Tensor:
    """(1, C, *out_hw) logits of img resized to size (w, h) (None: as it is), flipped horizontally if asked,
    the prediction flipped back and resized to out_hw."""
    resized = img if size is None or tuple(size) == (img.shape[1], img.shape[0]) else resize_image(img, size)
    device = next(model.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1).unsqueeze(0).contiguous().to(device)
    if flip:
        x = x.flip(-1)
    logits = model.inference(x, mode=mode, crop_size=crop_size, stride=stride)
    if flip:
        logits = logits.flip(-1)
    if tuple(logits.shape[2:]) != tuple(out_hw):
        logits = resize(logits, out_hw, model.align_corners)
    return logits


@torch.no_grad()
def predict_scores(
    model,
    img: np.ndarray,
    *,
    scale=None,
    mode: Optional[str] = None,
    crop_size: Optional[Sequence[int]] = None,
    stride: Optional[Sequence[int]] = None,
    tta_ratios: Optional[Sequence[float]] = None,
    flip: bool = False,
) -> torch.Tensor:
    """Class scores (num_classes, H, W) of one (H, W, 3) uint8 RGB image at its original size; argmax over dim 0
    is the prediction.

    Without TTA (tta_ratios None and flip False): the logits of the image resized to `scale` (a pair bounding the
    long and short edges, a factor, or None for the original size). With TTA: the mean over ratios x flips of
    softmax(logits), the ratios applying to the original image (mmseg 1.x; `scale` is then unused); flip alone
    uses the ratio 1. mode, crop_size, stride: the model's inference settings (None: its test_cfg)."""
    if not (isinstance(img, np.ndarray) and img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8):
        what = f"{img.dtype} array of shape {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
        raise ValueError(f"img must be an (H, W, 3) uint8 RGB array, got a {what}")
    h, w = img.shape[:2]
    if tta_ratios is None and not flip:
        size = None if scale is None else rescale_size((w, h), scale)[0]
        return _logits_at(model, img, size, False, (h, w), mode, crop_size, stride)[0]
    ratios = tuple(tta_ratios) if tta_ratios else (1.0,)
    flips = (False, True) if flip else (False,)
    total = None
    for ratio in ratios:
        size = tta_size(w, h, ratio)
        for flipped in flips:
            probs = _logits_at(model, img, size, flipped, (h, w), mode, crop_size, stride).softmax(dim=1)
            total = probs if total is None else total + probs
    return (total / (len(ratios) * len(flips)))[0]


def _first(item):
    return item


@torch.no_grad()
def evaluate(
    model,
    dataset,
    *,
    scale=None,
    mode: Optional[str] = None,
    crop_size: Optional[Sequence[int]] = None,
    stride: Optional[Sequence[int]] = None,
    tta_ratios: Optional[Sequence[float]] = None,
    flip: bool = False,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    progress: bool = False,
    log=None,
) -> SegEvaluator:
    """SegEvaluator over `dataset` (items with `img` uint8 (3, H, W) and `gt_semantic_seg` (H, W) at the original
    resolution: a validation set built without pipeline). This process scores images rank, rank + world_size, ...;
    with world_size > 1 the counts are then summed over torch.distributed, so every process returns the totals.
    The model is put in eval mode and given back in the mode it had."""
    evaluator = SegEvaluator(model.num_classes, class_names=_class_names(dataset, model.num_classes))
    shard = Subset(dataset, range(rank, len(dataset), world_size))
    # an explicit generator: the loader's seed is not drawn from the global one (a training run's random stream
    # must not depend on whether it validated)
    loader = DataLoader(shard, batch_size=None, shuffle=False, num_workers=num_workers, collate_fn=_first,
                        generator=torch.Generator().manual_seed(0))
    was_training = model.training
    model.eval()
    try:
        for item in tqdm(loader, desc="test", unit="img", disable=not progress, file=log or sys.stderr,
                         dynamic_ncols=True, leave=False):
            img = item["img"].permute(1, 2, 0).numpy()
            scores = predict_scores(model, img, scale=scale, mode=mode, crop_size=crop_size, stride=stride,
                                    tta_ratios=tta_ratios, flip=flip)
            evaluator.update(scores.argmax(0).cpu(), item["gt_semantic_seg"])
    finally:
        model.train(was_training)
    if world_size > 1:
        evaluator.all_reduce()
    return evaluator


def _class_names(dataset, num_classes):
    names = getattr(dataset, "CLASSES", None)
    return tuple(names) if names is not None and len(names) == num_classes else None


def _finite(v):
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def metrics_summary(evaluator: SegEvaluator) -> dict:
    """aAcc, mIoU, mAcc and per-class IoU/Acc as JSON-ready values (fractions; NaN -> None)."""
    m = evaluator.compute()
    return {
        "aAcc": _finite(m["aAcc"]),
        "mIoU": _finite(m["mIoU"]),
        "mAcc": _finite(m["mAcc"]),
        "num_images": evaluator.num_images,
        "per_class": {name: {k: _finite(v) for k, v in d.items()} for name, d in m["per_class"].items()},
    }


# ----------------------------------------------------------------------------------------------------- runs


def run(
    config,
    checkpoint,
    *,
    mode: Optional[str] = None,
    crop_size: Optional[Sequence[int]] = None,
    stride: Optional[Sequence[int]] = None,
    tta: bool = False,
    data_root: Optional[str] = None,
    out: Optional[Union[str, os.PathLike]] = None,
    overwrite: bool = False,
    num_workers: Optional[int] = None,
    backend: Optional[str] = None,
    device: Optional[str] = None,
    progress: bool = True,
    log=None,
) -> dict:
    """Scores `checkpoint` on the validation split of `config` and returns the summary (metrics_summary plus
    config, checkpoint, mode, tta, tta_ratios, seconds); rank 0 prints the per-class table to `log` (default
    stderr) and writes the summary to `out` (JSON, atomically; an existing file is kept unless overwrite).

    Setup problems (config without data, missing data root, bad checkpoint, bad arguments, existing --out) raise
    SetupError before anything is written."""
    from resnest_fast.training.config import load_config
    from resnest_fast.training.distributed import cleanup, init_distributed

    log = log or sys.stderr
    started = time.perf_counter()
    info = None
    threads = torch.get_num_threads()
    try:
        try:
            if mode not in (None, "whole", "slide"):
                raise ValueError(f"mode must be 'whole' or 'slide', got {mode!r}")
            out_path = Path(out) if out is not None else None
            if out_path is not None and out_path.exists() and not overwrite:
                raise ValueError(f"--out {str(out_path)!r} exists (pass --overwrite to replace it)")
            cfg = config if isinstance(config, dict) else load_config(config)
            data = check_data_config(cfg)
            if (cfg.get("runtime") or {}).get("num_threads"):
                torch.set_num_threads(int(cfg["runtime"]["num_threads"]))
            info = init_distributed(device)
            dataset = build_dataset(data, "val", root=data_root)
            model, cfg, _ = load_model(cfg, checkpoint, backend=backend, device="cpu")
            model = model.to(info.device)
            if len(getattr(dataset, "CLASSES", ())) not in (0, model.num_classes):
                raise ValueError(f"the model predicts {model.num_classes} classes but the dataset has "
                                 f"{len(dataset.CLASSES)}")
            mode = mode or model.test_cfg["mode"]
            if mode == "slide":
                crop_size, stride = _slide_defaults(model, cfg, crop_size, stride)
            elif crop_size is not None or stride is not None:
                raise ValueError("a crop size and a stride (--crop-size, --stride) apply to mode 'slide' only")
            tta_ratios = None
            if tta:
                tta_ratios = data.get("tta_ratios")
                if not tta_ratios:
                    raise ValueError("--tta needs data.tta_ratios in the config (e.g. (0.5, 0.75, 1.0, 1.25, 1.5, "
                                     "1.75))")
                tta_ratios = tuple(float(r) for r in tta_ratios)
            scale = data.get("scale")
            scale = None if scale is None else tuple(int(s) for s in scale)
            workers = data.get("num_workers", 0) if num_workers is None else num_workers
        except (CheckpointError, ValueError, TypeError, KeyError, OSError) as exc:
            raise SetupError(str(exc)) from exc
        evaluator = evaluate(model, dataset, scale=scale, mode=mode, crop_size=crop_size, stride=stride,
                             tta_ratios=tta_ratios, flip=tta, rank=info.rank, world_size=info.world_size,
                             num_workers=workers, progress=progress and info.is_main, log=log)
        summary = dict(config=cfg.get("name"), checkpoint=str(checkpoint), mode=mode, tta=tta,
                       tta_ratios=list(tta_ratios) if tta_ratios else None, **metrics_summary(evaluator),
                       seconds=time.perf_counter() - started)
        if info.is_main:
            print(evaluator.table(), file=log)
            if out_path is not None:
                out_path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(out_path, json.dumps(summary, indent=2) + "\n")
        return summary
    finally:
        if info is not None:
            cleanup(info)
        torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------------ command line


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("config", help="a shipped config's name or a .py config file (it must define `data`)")
    parser.add_argument("checkpoint", help="checkpoint file (ours, mmseg's format or a state_dict)")
    parser.add_argument("--mode", choices=("whole", "slide"), default=None,
                        help="whole-image or sliding-window inference (default: the config's test_cfg)")
    parser.add_argument("--crop-size", nargs=2, type=int, metavar=("H", "W"),
                        help="slide window (default: the config's test_cfg crop_size, else its training crop)")
    parser.add_argument("--stride", nargs=2, type=int, metavar=("H", "W"),
                        help="slide stride (default: the config's, else 2/3 of the window)")
    parser.add_argument("--tta", action="store_true",
                        help="multi-scale (the config's data.tta_ratios of the original size) + flip test-time "
                        "augmentation, probabilities averaged (mmseg's SegTTAModel)")
    parser.add_argument("--data-root", help="dataset folder (default: the config's data.root)")
    parser.add_argument("--out", help="write the metrics as JSON to this file")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.add_argument("--num-workers", type=int, default=None, help="data loading processes (default: the config's)")
    add_runtime_arguments(parser)
    return parser


def run_from_args(args: argparse.Namespace, prog: str = "resnest-fast test") -> int:
    """Exit code: 0 done, 2 nothing done (bad arguments, config, checkpoint or data)."""
    try:
        summary = run(args.config, args.checkpoint, mode=args.mode, crop_size=args.crop_size, stride=args.stride,
                      tta=args.tta, data_root=args.data_root, out=args.out, overwrite=args.overwrite,
                      num_workers=args.num_workers, backend=args.backend, device=args.device,
                      progress=not args.no_progress)
    except SetupError as exc:
        if os.environ.get("RANK", "0") in ("", "0"):  # under torchrun every rank has the same error
            print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    if os.environ.get("RANK", "0") in ("", "0"):
        def pct(v):
            return "nan" if v is None else f"{100 * v:.2f}"

        tta = f" + TTA (ratios {summary['tta_ratios']}, flip)" if summary["tta"] else ""
        print(f"{summary['config']}: aAcc {pct(summary['aAcc'])}  mIoU {pct(summary['mIoU'])}  "
              f"mAcc {pct(summary['mAcc'])} on {summary['num_images']} images ({summary['mode']}{tta}; "
              f"{summary['seconds']:.1f} s)" + (f"; metrics in {args.out}" if args.out else ""))
    return 0


def main(argv=None) -> int:
    parser = add_arguments(argparse.ArgumentParser(prog="python -m resnest_fast.training.evaluate",
                                                   description=__doc__.split("\n\n")[0]))
    return run_from_args(parser.parse_args(argv), prog=parser.prog)


if __name__ == "__main__":
    sys.exit(main())
