"""Training: mmseg's iteration-based recipe for the ResNeSt segmenters, on one process or under torchrun.

What runs, per process (mmseg 1.x / mmengine semantics unless said otherwise):
  data     the config's training set, mmseg's pipeline, an endless sampler (InfiniteSampler: one permutation after
           another, rank r of W taking every W-th element), `data.batch_size` images per process, batches padded
           to the crop size (images 0 after normalisation, labels 255);
  model    the config's EncoderDecoder; `SyncBN` layers synchronise across processes (torch's SyncBatchNorm on
           CUDA, resnest_fast.nn.SyncBatchNorm on CPU/gloo) and are plain BatchNorm on one process; wrapped in
           DistributedDataParallel when there is more than one process (gradients averaged);
  loss     decode.loss_ce + aux.loss_ce (cross-entropy ignoring 255, the auxiliary head weighted 0.4 by its config);
  optimise SGD (lr 0.01, momentum 0.9, weight decay 5e-4 in mmseg's schedules) with mmengine's chained PolyLR
           (power 0.9 down to eta_min 1e-4 over max_iters, stepped every iteration; see training.schedule);
           optional AMP: bf16 autocast (CPU or CUDA), fp16 autocast + GradScaler (CUDA only);
  save     every `checkpoint_interval` iterations and at the end, on rank 0: iter_<N>.pth in mmseg's layout,
           written atomically, the newest `keep_checkpoints` kept, `latest` naming the newest (training.checkpoints);
  validate every `val_interval` iterations and at the end: mIoU etc. on the validation split (training.evaluate),
           each process scoring its share;
  log      rank 0: a progress bar (loss, lr, it/s, ETA) and a JSON-lines file <work_dir>/<time>.log.jsonl with one
           line per `log_interval` iterations (iter, lr, losses, accuracies, time, data_time, memory = peak CUDA
           allocation or peak RSS in MiB), one per validation, and a final summary.

--resume restores the model, optimiser, scheduler, GradScaler, iteration, the RNG states of every rank and the
sampler's position: a run killed at any point and resumed from its latest checkpoint continues exactly as if it
had not stopped (bit for bit with --deterministic, the same number of processes and threads). A work directory that
already holds a run is never written into without --resume.

Python: `train(cfg, ...)`. Command line (resnest_fast.cli.train): `resnest-fast train --help`; distributed:
`torchrun --nproc-per-node N -m resnest_fast train CONFIG ...`.
"""
import ast
import copy
import datetime
import functools
import json
import math
import os
import random
import resource
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from resnest_fast.checkpoint import CheckpointError, load_checkpoint
from resnest_fast.nn import DistributedDataParallel
from resnest_fast.segmentation import build_segmentor, load_config
from resnest_fast.training import checkpoints as ckpt
from resnest_fast.training.data.builder import build_dataset, check_data_config
from resnest_fast.training.data.collate import collate
from resnest_fast.training.data.samplers import InfiniteSampler
from resnest_fast.training.distributed import DistInfo, all_gather_object, broadcast_object, cleanup, init_distributed
from resnest_fast.training.evaluate import evaluate, metrics_summary
from resnest_fast.training.errors import SetupError
from resnest_fast.training.schedule import build_optimizer, build_scheduler

__all__ = ["SetupError", "TrainingError", "train", "apply_cfg_options", "seed_everything"]

RUN_FILE = "run.json"


class TrainingError(RuntimeError):
    """Training started but could not go on (e.g. a non-finite loss)."""


# ----------------------------------------------------------------------------------------------------- config


def _parse_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare word: a string


def apply_cfg_options(cfg: dict, options: Sequence[str]) -> dict:
    """A copy of cfg with `key.sub=value` overrides (mmengine's --cfg-options): value is a Python literal (1, 0.5,
    (512, 512), None, 'SyncBN') or else taken as a string; missing dicts on the way are created."""
    cfg = copy.deepcopy(cfg)
    for option in options:
        key, sep, text = option.partition("=")
        if not sep or not key:
            raise ValueError(f"--cfg-options takes key.sub=value, got {option!r}")
        node = cfg
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ValueError(f"--cfg-options {option!r}: {'.'.join(parts[:i + 1])} is a "
                                 f"{type(nxt).__name__}, not a dict")
            node = nxt
        node[parts[-1]] = _parse_value(text)
    return cfg


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """mmengine's set_random_seed (Python, numpy, torch on every device; the same seed on every rank) and, when
    deterministic, deterministic algorithms only (cuDNN's too, without its autotuner)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


# ------------------------------------------------------------------------------------------------- pieces


class _LossModule(nn.Module):
    """model.loss as a forward, so that DistributedDataParallel sees (and synchronises) the training step."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, img, labels, img_shape):
        return self.model.loss(img, labels, img_shape)


def _peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _autocast(amp: Optional[str], device: torch.device):
    if amp is None:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def _dataset_meta(dataset) -> dict:
    classes = getattr(dataset, "CLASSES", None)
    palette = getattr(dataset, "PALETTE", None)
    return {"classes": list(classes) if classes else None,
            "palette": [list(map(int, c)) for c in palette] if palette else None}


def _version() -> str:
    from resnest_fast.version import __version__

    return __version__


def _plain(value):
    """The config as JSON-friendly values (tuples -> lists)."""
    return json.loads(json.dumps(value, default=str))


class _Run:
    """The work directory of one training run: refuses another run's folder, writes its files."""

    def __init__(self, work_dir: Path, is_main: bool):
        self.dir = work_dir
        self.is_main = is_main
        self.log_path: Optional[Path] = None
        self._log = None

    @staticmethod
    def check(work_dir: Path, resume) -> Tuple[Optional[str], Optional[str]]:
        """(why the run cannot use work_dir or None, the checkpoint to resume from or None). Rank 0 asks and
        tells the others: a file it writes meanwhile must not change another rank's answer."""
        ours = [RUN_FILE, ckpt.LATEST] + [p.name for _, p in ckpt.list_checkpoints(work_dir)]
        existing = [name for name in ours if (work_dir / name).exists()]
        if existing and not resume:
            shown = ", ".join(existing[:4]) + (", ..." if len(existing) > 4 else "")
            return (f"work dir {str(work_dir)!r} already holds a training run ({shown}): pass --resume to continue "
                    "it, or choose another --work-dir"), None
        if not resume:
            return None, None
        if not isinstance(resume, bool):
            return None, str(resume)
        found = ckpt.find_latest(work_dir)
        return None, None if found is None else str(found)

    def start(self, cfg: dict, summary: dict) -> None:
        if not self.is_main:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        removed = ckpt.clean_temp_files(self.dir)
        if removed:
            tqdm.write(f"removed {len(removed)} temporary file(s) of an interrupted run: "
                       f"{', '.join(p.name for p in removed)}", file=sys.stderr)
        run_file = self.dir / RUN_FILE
        if not run_file.exists():
            ckpt.atomic_write_text(run_file, json.dumps(dict(summary, config=_plain(cfg)), indent=2) + "\n")
        stamp = datetime.datetime.now().strftime("%Y%m%d_%H%M%S")
        for n in range(100):
            path = self.dir / (f"{stamp}.log.jsonl" if n == 0 else f"{stamp}_{n}.log.jsonl")
            try:
                self._log = open(path, "x", encoding="utf-8")
            except FileExistsError:
                continue
            self.log_path = path
            break
        else:
            raise ValueError(f"cannot create a log file in {self.dir}")

    def log(self, record: dict) -> None:
        if self._log is not None:
            self._log.write(json.dumps(record) + "\n")
            self._log.flush()

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


# --------------------------------------------------------------------------------------------------- train


def train(
    cfg: Union[str, os.PathLike, dict],
    *,
    work_dir: Optional[Union[str, os.PathLike]] = None,
    resume: Union[None, bool, str, os.PathLike] = None,
    load_from: Optional[Union[str, os.PathLike]] = None,
    max_iters: Optional[int] = None,
    amp: Optional[str] = None,
    seed: Optional[int] = None,
    deterministic: Optional[bool] = None,
    data_root: Optional[str] = None,
    batch_size: Optional[int] = None,
    num_workers: Optional[int] = None,
    cfg_options: Sequence[str] = (),
    device: Optional[str] = None,
    backend: Optional[str] = None,
    progress: bool = True,
    log=None,
    model: Optional[nn.Module] = None,
) -> dict:
    """Trains the segmenter of `cfg` (a shipped config's name, a .py file or a loaded dict) and returns the
    summary: iterations (done in this call), iter (final), seconds, metrics (last validation), peak_memory_mib,
    last_checkpoint, work_dir, log_file.

    work_dir: default work_dirs/<config name>. resume: True (the work dir's latest checkpoint; from scratch if
    there is none) or a checkpoint path. load_from: weights to start from (strict=False, the report printed).
    max_iters, seed, deterministic, batch_size (per process), num_workers, amp ('bf16' | 'fp16' | None) override
    the config's schedule/runtime/data; cfg_options: `key.sub=value` overrides applied first; data_root replaces
    data.root. Problems found before the first iteration raise SetupError (nothing written, except that a
    resumed run may have cleaned its temporary files); a non-finite loss raises TrainingError.

    model: a segmentor to train instead of building cfg['model'] (trained in place; `backend` must then be None).
    It needs EncoderDecoder's training interface: loss(img, labels, img_shape) -> dict of tensors, sum_losses,
    num_classes, crop_size, and for validation inference(img, mode, crop_size, stride) and align_corners. The
    parity experiment (benchmarks/parity_miou.py) passes mmseg's model behind such an adapter, so that the
    reference and ours go through this one loop.
    """
    log = log or sys.stderr
    prebuilt, model = model, None
    info: Optional[DistInfo] = None
    run: Optional[_Run] = None
    # process-wide settings this call changes, given back at the end (train() may run inside a larger program)
    threads, deterministic_before = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        try:
            cfg = copy.deepcopy(cfg) if isinstance(cfg, dict) else load_config(cfg)
            cfg = apply_cfg_options(cfg, cfg_options)
            if not isinstance(cfg.get("model"), dict):
                raise ValueError(f"config {cfg.get('filename', '<dict>')!r} has no `model = dict(...)`")
            data = check_data_config(cfg)
            schedule = dict(cfg.get("schedule") or {})
            if not schedule:
                raise ValueError(f"config {cfg.get('filename', '<dict>')!r} has no `schedule = dict(...)` "
                                 "(inherit resnest_fast/segmentation/configs/_base_/schedules/*.py)")
            runtime = dict(cfg.get("runtime") or {})
            if max_iters is not None:
                schedule["max_iters"] = max_iters
            if seed is not None:
                runtime["seed"] = seed
            if deterministic is not None:
                runtime["deterministic"] = deterministic
            if amp is not None:
                runtime["amp"] = amp
            if batch_size is not None:
                data["batch_size"] = batch_size
            if num_workers is not None:
                data["num_workers"] = num_workers
            cfg["schedule"], cfg["runtime"] = schedule, runtime  # what the checkpoints' meta records
            total_iters = int(schedule.get("max_iters", 0))
            if total_iters < 1:
                raise ValueError(f"max_iters must be a positive number of iterations, got "
                                 f"{schedule.get('max_iters')!r}")
            amp = runtime.get("amp")
            if amp not in (None, "bf16", "fp16"):
                raise ValueError(f"amp must be 'bf16', 'fp16' or None, got {amp!r}")
            batch = int(data["batch_size"])
            if batch < 1:
                raise ValueError(f"batch_size must be >= 1, got {batch}")
            workers = int(data.get("num_workers", 0))
            seed_value = int(runtime.get("seed", 0))
            deterministic = bool(runtime.get("deterministic", False))
            log_interval = max(1, int(runtime.get("log_interval", 50)))
            keep = int(runtime.get("keep_checkpoints", 3))
            ckpt_interval = int(schedule.get("checkpoint_interval", total_iters) or total_iters)
            val_interval = int(schedule.get("val_interval", 0) or 0)
            if runtime.get("num_threads"):
                torch.set_num_threads(int(runtime["num_threads"]))
            if prebuilt is not None and backend is not None:
                raise ValueError(f"backend={backend!r} cannot apply to a prebuilt model: build it with that backend")
            if prebuilt is not None and not isinstance(prebuilt, nn.Module):
                raise TypeError(f"model must be an nn.Module (a segmentor), got {type(prebuilt).__name__}")

        except (CheckpointError, ValueError, TypeError, KeyError, OSError) as exc:
            raise SetupError(str(exc)) from exc
        # From here on every rank must take the same way: rank 0 alone looks at the work dir, and an error on any
        # rank is an error on all (a rank that gave up would leave the others waiting in a collective).
        try:
            info = init_distributed(device)
        except (ValueError, RuntimeError) as exc:
            raise SetupError(str(exc)) from exc
        work = Path(work_dir) if work_dir is not None else Path("work_dirs") / cfg.get("name", "run")
        problem, resume_from = broadcast_object(_Run.check(work, resume) if info.is_main else None)
        error = None
        try:
            if problem:
                raise ValueError(problem)
            if amp == "fp16" and info.device.type != "cuda":
                raise ValueError("--amp fp16 needs a CUDA GPU (fp16 autocast with a GradScaler); on the CPU use "
                                 "--amp bf16")
            seed_everything(seed_value, deterministic)
            run = _Run(work, info.is_main)
            train_set = build_dataset(data, "train", root=data_root, seed=seed_value)
            val_set = build_dataset(data, "val", root=data_root) if val_interval > 0 else None
            model = prebuilt if prebuilt is not None else build_segmentor(cfg["model"], backend=backend)
            classes = getattr(train_set, "CLASSES", None)
            if classes and len(classes) != model.num_classes:
                raise ValueError(f"the model predicts {model.num_classes} classes but the {data['type']} dataset "
                                 f"has {len(classes)} (model.decode_head.num_classes)")
            crop_size = model.crop_size or tuple(data.get("crop_size") or ()) or None
            if getattr(model, "pretrained", None):
                report = load_checkpoint(model.backbone, model.pretrained, strict=False)
                if info.is_main:
                    tqdm.write(f"backbone weights from {model.pretrained}: {report}", file=log)
            if load_from is not None:
                report = load_checkpoint(model, load_from, strict=False)
                if info.is_main:
                    tqdm.write(f"weights from {load_from}: {report}", file=log)
            model.to(info.device)
            optimizer = build_optimizer(model.parameters(), schedule.get("optimizer", {}))
            scheduler = build_scheduler(optimizer, schedule.get("lr_policy"), total_iters)
            scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None

            start_iter, rng_states = 0, None
            if resume and resume_from is None and info.is_main:
                tqdm.write(f"--resume: no checkpoint in {work}, starting from scratch", file=log)
            if resume_from is not None:
                state = _read_training_state(Path(resume_from))
                start_iter, rng_states = _restore(state, model, optimizer, scheduler, scaler, info)
                if info.is_main:
                    tqdm.write(f"resumed from {resume_from} at iteration {start_iter}", file=log)
            if start_iter > total_iters:
                raise ValueError(f"the checkpoint is at iteration {start_iter}, beyond max_iters={total_iters}")
        except (CheckpointError, ValueError, TypeError, KeyError, OSError) as exc:
            error = str(exc)
        errors = [e for e in all_gather_object(error) if e]
        if errors:
            raise SetupError(error or f"another process could not start: {errors[0]}")

        run.start(cfg, dict(config=cfg.get("name"), seed=seed_value, world_size=info.world_size,
                            batch_size=batch, max_iters=total_iters, created=time.strftime("%Y-%m-%d %H:%M:%S")))
        ddp = _LossModule(model)
        if info.world_size > 1:
            # no buffer broadcast at each forward (mmseg's broadcast_buffers=False): SyncBN keeps the running
            # statistics equal on every rank, and plain BN's are per process as in mmseg
            ddp = DistributedDataParallel(  # torch's, also accepting our CPU SyncBatchNorm
                ddp, device_ids=[info.local_rank] if info.device.type == "cuda" else None, forward_sync_buffers=False)
        meta = dict(seed=seed_value, world_size=info.world_size, batch_size=batch, config=_plain(cfg),
                    config_name=cfg.get("name"), dataset_meta=_dataset_meta(train_set), amp=amp,
                    torch_version=str(torch.__version__), resnest_fast_version=_version())
        loop = _Loop(model, ddp, optimizer, scheduler, scaler, info, run, meta, amp=amp, keep=keep,
                     log_interval=log_interval, ckpt_interval=ckpt_interval, val_interval=val_interval,
                     total_iters=total_iters, val_set=val_set, data=data, workers=workers, log=log)
        if rng_states is not None:
            ckpt.set_rng_state(rng_states)
        loader = DataLoader(
            train_set, batch_size=batch, num_workers=workers, drop_last=True, pin_memory=info.device.type == "cuda",
            sampler=InfiniteSampler(len(train_set), shuffle=True, seed=seed_value, rank=info.rank,
                                    world_size=info.world_size, start=start_iter * batch),
            collate_fn=functools.partial(collate, size=crop_size),
            # the loader's own seed must not come from the global generator, which the resumed run restores
            generator=torch.Generator().manual_seed(seed_value),
        )
        summary = loop.run(loader, start_iter, progress=progress)
        summary.update(work_dir=str(work), log_file=str(run.log_path) if run.log_path else None)
        return summary
    finally:
        if run is not None:
            run.close()
        if info is not None:
            cleanup(info)
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic_before)


def _read_training_state(path: Path) -> dict:
    from resnest_fast.checkpoint import torch_load

    state = torch_load(str(path), "cpu")
    missing = [k for k in ("meta", "state_dict", "optimizer", "param_schedulers") if k not in state]
    if not isinstance(state, dict) or missing:
        raise CheckpointError(f"{str(path)!r} is not a training checkpoint of this project (missing {missing}): "
                              "to start from its weights use --load-from")
    return state


def _restore(state, model, optimizer, scheduler, scaler, info: DistInfo):
    """Loads the training state into the pieces; returns (iteration, this rank's RNG states or None)."""
    from resnest_fast.checkpoint import compare_state_dicts

    report = compare_state_dicts(model.state_dict(), state["state_dict"])
    if not report.ok:
        raise CheckpointError(f"the checkpoint does not fit this config's model:\n{report}")
    model.load_state_dict(state["state_dict"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["param_schedulers"][0])
    if scaler is not None and state.get("grad_scaler"):
        scaler.load_state_dict(state["grad_scaler"])
    meta = state["meta"]
    iteration = int(meta["iter"])
    rng = state.get("rng_states") or []
    if meta.get("world_size", 1) != info.world_size:
        if info.is_main:
            tqdm.write(f"note: the checkpoint was written by {meta.get('world_size')} process(es) and this run has "
                       f"{info.world_size}: the data order and random draws differ from an uninterrupted run",
                       file=sys.stderr)
        return iteration, None
    return iteration, rng[info.rank] if info.rank < len(rng) else None


class _Loop:
    def __init__(self, model, ddp, optimizer, scheduler, scaler, info: DistInfo, run: _Run, meta: dict, *, amp,
                 keep, log_interval, ckpt_interval, val_interval, total_iters, val_set, data, workers, log):
        self.model, self.ddp = model, ddp
        self.optimizer, self.scheduler, self.scaler = optimizer, scheduler, scaler
        self.info, self.run_dir, self.meta = info, run, meta
        self.amp, self.keep = amp, keep
        self.log_interval, self.ckpt_interval, self.val_interval = log_interval, ckpt_interval, val_interval
        self.total_iters = total_iters
        self.val_set, self.data, self.workers = val_set, data, workers
        self.log = log
        self.last_checkpoint: Optional[str] = None
        self.last_metrics: Optional[dict] = None

    # -- checkpoints ----------------------------------------------------------------------------------------
    def save(self, iteration: int) -> None:
        states = all_gather_object(ckpt.rng_state())  # every rank's, for an exact resume of each
        if not self.info.is_main:
            return
        state = {
            "meta": dict(self.meta, iter=iteration, time=time.strftime("%Y-%m-%d %H:%M:%S")),
            "state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "param_schedulers": [self.scheduler.state_dict()],
            "rng_states": states,
        }
        if self.scaler is not None:
            state["grad_scaler"] = self.scaler.state_dict()
        path = self.run_dir.dir / ckpt.checkpoint_name(iteration)
        ckpt.atomic_save(state, path)
        ckpt.write_latest(self.run_dir.dir, path)
        ckpt.prune_checkpoints(self.run_dir.dir, self.keep)
        self.last_checkpoint = str(path)

    # -- validation -----------------------------------------------------------------------------------------
    def validate(self, iteration: int) -> dict:
        started = time.perf_counter()
        scale = self.data.get("scale")
        evaluator = evaluate(self.model, self.val_set, scale=None if scale is None else tuple(scale),
                             rank=self.info.rank, world_size=self.info.world_size, num_workers=0)
        metrics = metrics_summary(evaluator)
        if self.info.is_main:
            tqdm.write(f"validation at iteration {iteration}:\n{evaluator.table()}", file=self.log)
            self.run_dir.log(dict(mode="val", iter=iteration, aAcc=metrics["aAcc"], mIoU=metrics["mIoU"],
                                  mAcc=metrics["mAcc"], IoU={k: v["IoU"] for k, v in metrics["per_class"].items()},
                                  num_images=metrics["num_images"], time=time.perf_counter() - started))
        self.last_metrics = metrics
        return metrics

    # -- the loop -------------------------------------------------------------------------------------------
    def _reduce_means(self, sums: Dict[str, torch.Tensor], count: int) -> Dict[str, float]:
        keys = sorted(sums)
        packed = torch.stack([sums[k] for k in keys]) / count
        if self.info.world_size > 1:
            torch.distributed.all_reduce(packed)
            packed /= self.info.world_size
        return dict(zip(keys, packed.tolist()))

    def run(self, loader, start_iter: int, progress: bool) -> dict:
        info = self.info
        bar = tqdm(total=self.total_iters, initial=start_iter, desc="train", unit="it", dynamic_ncols=True,
                   disable=not (progress and info.is_main), file=self.log)
        started = time.perf_counter()
        # float64 sums: the logged means keep a float64 model's loss exactly (the parity experiment compares loss
        # curves to ~1e-15) and add no fp32 rounding of their own over long log intervals
        sums: Dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), dtype=torch.float64, device=info.device))
        times: List[float] = []
        data_times: List[float] = []
        last_loss = None
        self.ddp.train()
        batches = iter(loader)
        iteration = start_iter
        try:
            while iteration < self.total_iters:
                t0 = time.perf_counter()
                batch = next(batches)
                t1 = time.perf_counter()
                img = batch["img"].to(info.device, non_blocking=True)
                labels = batch["gt_semantic_seg"].to(info.device, non_blocking=True)
                lr = self.optimizer.param_groups[0]["lr"]
                with _autocast(self.amp, info.device):
                    losses = self.ddp(img, labels, batch["img_shape"])
                loss = self.model.sum_losses(losses)
                self.optimizer.zero_grad(set_to_none=True)
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                else:
                    loss.backward()
                    self.optimizer.step()
                self.scheduler.step()
                iteration += 1
                sums["loss"] += loss.detach().double()
                for k, v in losses.items():
                    sums[k] += v.detach().double().mean()
                times.append(time.perf_counter() - t0)
                data_times.append(t1 - t0)
                bar.update(1)

                if iteration % self.log_interval == 0 or iteration == self.total_iters:
                    means = self._reduce_means(sums, len(times))
                    if not math.isfinite(means["loss"]):
                        raise TrainingError(f"the loss is {means['loss']} at iteration {iteration} (lr {lr:.3g}): "
                                            "training diverged; lower the lr or check the data")
                    record = dict(mode="train", iter=iteration, lr=lr, **means, time=float(np.mean(times)),
                                  data_time=float(np.mean(data_times)), memory=round(_peak_memory_mib(info.device)))
                    if info.is_main:
                        self.run_dir.log(record)
                        bar.set_postfix(loss=f"{means['loss']:.4f}", lr=f"{lr:.3g}", refresh=False)
                    last_loss = means["loss"]
                    sums.clear()
                    times.clear()
                    data_times.clear()
                if iteration % self.ckpt_interval == 0 or iteration == self.total_iters:
                    self.save(iteration)
                if self.val_set is not None and (iteration % self.val_interval == 0 or iteration == self.total_iters):
                    self.validate(iteration)
        finally:
            bar.close()
        seconds = time.perf_counter() - started
        done = iteration - start_iter
        summary = dict(iterations=done, iter=iteration, seconds=seconds, it_per_s=done / seconds if seconds else 0.0,
                       loss=last_loss, metrics=self.last_metrics, last_checkpoint=self.last_checkpoint,
                       peak_memory_mib=round(_peak_memory_mib(info.device)))
        if info.is_main:
            self.run_dir.log(dict(mode="summary", **{k: v for k, v in summary.items() if k != "metrics"},
                                  mIoU=(self.last_metrics or {}).get("mIoU")))
        return summary
