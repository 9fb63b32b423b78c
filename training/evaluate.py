"""Evaluation: a checkpoint scored on a config's validation split, mmseg's way.

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

Python: `evaluate` (a model over a dataset), `run` (a config and a checkpoint; what `resnest-fast test` calls);
one image: `resnest_fast.segmentation.predict_scores`.
"""
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from resnest_fast.backend import check_backend
from resnest_fast.checkpoint import CheckpointError
from resnest_fast.segmentation import load_model, predict_scores, resolve_config, slide_defaults
from resnest_fast.training.checkpoints import WriteError, atomic_write_text, describe_write_error
from resnest_fast.training.data.builder import build_dataset, check_data_config
from resnest_fast.training.data.datasets import DataError, data_error_message
from resnest_fast.training.distributed import cleanup, init_distributed, peer_stopped, report_own_failure
from resnest_fast.training.errors import SetupError
from resnest_fast.training.metrics import SegEvaluator
from resnest_fast.utils import hold_sigterm, write_refusal

__all__ = ["evaluate", "metrics_summary", "run"]


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


def _check_out(path: Path, overwrite: bool) -> None:
    """ValueError now, rather than after the evaluation, for an --out that exists (without overwrite), is a
    folder, or lies under a file or in a folder that cannot be written."""
    if path.is_dir():
        raise ValueError(f"--out {str(path)!r} is a folder: name the JSON file to write")
    if path.exists() and not overwrite:
        raise ValueError(f"--out {str(path)!r} exists (pass --overwrite to replace it)")
    folder = next(p for p in path.parents if p.exists() or p == Path(p.anchor))
    if not folder.is_dir():
        raise ValueError(f"--out {str(path)!r} cannot be written: {folder} is a file, not a folder")
    reason = write_refusal(folder)
    if reason:
        raise ValueError(f"--out {str(path)!r} cannot be written: {reason}")


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

    Setup problems (config without data, missing data root, bad checkpoint, bad arguments, an --out that exists or
    cannot be written) raise SetupError before anything is written; so does a validation sample that cannot be
    read or does not fit (DataError, CorruptFileError: the message names its file). A failure to write `out` after
    the evaluation (e.g. a full disk) raises training.checkpoints.WriteError, the table already printed."""
    log = log or sys.stderr
    started = time.perf_counter()
    info = None
    threads = torch.get_num_threads()
    try:
        try:
            if mode not in (None, "whole", "slide"):
                raise ValueError(f"mode must be 'whole' or 'slide', got {mode!r}")
            out_path = Path(out) if out is not None else None
            if out_path is not None:
                _check_out(out_path, overwrite)
            cfg = resolve_config(config)
            data = check_data_config(cfg)
            if (cfg.get("runtime") or {}).get("num_threads"):
                torch.set_num_threads(int(cfg["runtime"]["num_threads"]))
            info = init_distributed(device)
            check_backend(backend, info.device)  # not at the first image's forward, as a traceback
            dataset = build_dataset(data, "val", root=data_root)
            model, cfg, _ = load_model(cfg, checkpoint, backend=backend, device="cpu")
            model = model.to(info.device)
            if len(getattr(dataset, "CLASSES", ())) not in (0, model.num_classes):
                raise ValueError(f"the model predicts {model.num_classes} classes but the dataset has "
                                 f"{len(dataset.CLASSES)}")
            mode = mode or model.test_cfg["mode"]
            if mode == "slide":
                crop_size, stride = slide_defaults(model, cfg, crop_size, stride)
            elif crop_size is not None or stride is not None:
                raise ValueError("a crop size and a stride (--crop-size, --stride) apply to mode 'slide' only")
            tta_ratios = None
            if tta:
                tta_ratios = data.get("tta_ratios")  # checked by check_data_config
                if not tta_ratios:
                    raise ValueError("--tta needs data.tta_ratios in the config (e.g. (0.5, 0.75, 1.0, 1.25, 1.5, "
                                     "1.75))")
                tta_ratios = tuple(float(r) for r in tta_ratios)
            scale = data.get("scale")
            scale = None if scale is None else tuple(int(s) for s in scale)
            workers = data.get("num_workers", 0) if num_workers is None else num_workers
            if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
                raise ValueError(f"num_workers (--num-workers, data.num_workers) must be a whole number >= 0, "
                                 f"got {workers!r}")
        except (CheckpointError, ValueError, TypeError, KeyError, OSError) as exc:
            raise SetupError(str(exc)) from exc
        try:
            evaluator = evaluate(model, dataset, scale=scale, mode=mode, crop_size=crop_size, stride=stride,
                                 tta_ratios=tta_ratios, flip=tta, rank=info.rank, world_size=info.world_size,
                                 num_workers=workers, progress=progress and info.is_main, log=log)
        except (DataError, OSError) as exc:  # a validation image or label, named in the message
            message = data_error_message(exc)
            report_own_failure(info, message)  # under torchrun, only this process read that file
            raise SetupError(message) from exc
        except (RuntimeError, KeyboardInterrupt) as exc:
            # under torchrun, the summing collective that failed, or the SIGTERM sent, once another process ended on
            # its own error: that error, not gloo's or the signal's
            peer = peer_stopped(info, wait=isinstance(exc, RuntimeError))
            if peer is None:
                raise
            raise SetupError(peer) from None
        summary = dict(config=cfg.get("name"), checkpoint=str(checkpoint), mode=mode, tta=tta,
                       tta_ratios=list(tta_ratios) if tta_ratios else None, **metrics_summary(evaluator),
                       seconds=time.perf_counter() - started)
        if info.is_main:
            print(evaluator.table(), file=log)
            if out_path is not None:
                try:
                    out_path.parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise WriteError(describe_write_error(exc, out_path) or str(exc)) from exc
                atomic_write_text(out_path, json.dumps(summary, indent=2) + "\n")
        return summary
    finally:
        if info is not None:
            cleanup(info)
        torch.set_num_threads(threads)
        hold_sigterm(False)
