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
had not stopped (bit for bit with --deterministic, the same number of processes and threads). What the checkpoint
goes on with must not change: another lr, momentum, weight decay, --amp, --seed, max_iters, lr_policy or total batch
(images per process x processes) is refused (a new run from its weights is --load-from); the number of processes may
change if the total batch stays (with a note: the data order then differs). A work directory that
already holds a run is never written into without --resume, nor resumed into from a checkpoint older than its
newest (the resumed run would write over that history), and rank 0 holds its lock (`.lock`, fcntl.flock) from
before it looks into it until the run ends, so a second run started at the same moment is refused too.

What a failed run leaves: no checkpoint is written after a non-finite loss (checked at every checkpoint and log
line, watched every iteration without a synchronisation) or with non-finite weights, so `latest` always names finite
weights and pruning never removes the last of them; a write that fails (full disk, read-only folder) stops the run
with one line naming the folder, the older checkpoints intact; a run that stops before its first checkpoint takes
its run.json back (a retry is not refused). Under torchrun, a process stopping on an error only it met (a sample it
could not read) leaves the error in the process group's store before it leaves: the others' collectives fail, they
find it there, and rank 0 reports it (`process 1 of 2 stopped: ...`) instead of gloo's "Connection closed by
peer"; the SIGTERM torchrun then sends does not replace it. Config values are checked before anything is
created: unknown keys of `schedule`, `runtime` and `data` (a typo would silently keep the default) and intervals,
counts and sizes that are not whole numbers in range.

Python: `train(cfg, ...)`. Command line (resnest_fast.cli.train): `resnest-fast train --help`; distributed:
`torchrun --nproc-per-node N -m resnest_fast train CONFIG ...`.
"""
import copy
import datetime
import functools
import gc
import json
import math
import os
import random
import resource
import signal
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

from resnest_fast.backend import check_backend
from resnest_fast.checkpoint import CheckpointError, check_finite, check_state_dict, load_checkpoint, torch_load
from resnest_fast.models import load_pretrained
from resnest_fast.models.pretrained import resolve_pretrained
from resnest_fast.nn import DistributedDataParallel, SyncBatchNorm
from resnest_fast.segmentation import build_segmentor, resolve_config
from resnest_fast.segmentation.config import apply_cfg_options  # re-exported: its home moved there
from resnest_fast.training import checkpoints as ckpt
from resnest_fast.training.data.builder import build_dataset, check_data_config, check_known_keys
from resnest_fast.training.data.collate import collate
from resnest_fast.training.data.datasets import DataError, data_error_message
from resnest_fast.training.data.samplers import InfiniteSampler
from resnest_fast.training.distributed import (DistInfo, all_gather_object, broadcast_object, cleanup, init_distributed,
                                               peer_stopped, report_own_failure)
from resnest_fast.training.evaluate import evaluate, metrics_summary
from resnest_fast.training.errors import SetupError
from resnest_fast.training.schedule import build_optimizer, build_scheduler, check_optimizer
from resnest_fast.utils import Interrupted, check_path, hold_sigterm, interruption

__all__ = ["SetupError", "TrainingError", "train", "apply_cfg_options", "seed_everything"]

RUN_FILE = "run.json"
# every key of `schedule` and `runtime` that training reads: any other is a typo whose default would silently apply
SCHEDULE_KEYS = ("max_iters", "val_interval", "checkpoint_interval", "optimizer", "lr_policy")
RUNTIME_KEYS = ("seed", "deterministic", "amp", "log_interval", "keep_checkpoints", "num_threads")


class TrainingError(RuntimeError):
    """Training started but could not go on (e.g. a non-finite loss)."""


# ----------------------------------------------------------------------------------------------------- config


def _whole(value, name: str, minimum: int, note: str = "") -> int:
    """`value` as an int >= minimum (None -> 0 where 0 is allowed), else ValueError naming `name`: int() would
    truncate 1.5 and a negative interval would divide every iteration."""
    if value is None and minimum == 0:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        wanted = "a positive whole number" if minimum == 1 else f"a whole number >= {minimum}"
        raise ValueError(f"{name} must be {wanted}{note}, got {value!r}")
    return int(value)


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
    """The work directory of one training run: refuses another run's folder, writes its files. Rank 0 holds the
    folder's lock (training.checkpoints.WorkDirLock) from before it looks at the folder until the run ends."""

    def __init__(self, work_dir: Path, is_main: bool, lock: Optional[ckpt.WorkDirLock] = None):
        self.dir = work_dir
        self.is_main = is_main
        self.lock = lock
        self.log_path: Optional[Path] = None
        self._log = None
        self._wrote_run_file = False
        self.saved = False  # a checkpoint was written by this call

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
            self._wrote_run_file = True
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
            try:
                self._log.write(json.dumps(record) + "\n")
                self._log.flush()
            except OSError as exc:
                raise ckpt.WriteError(ckpt.describe_write_error(exc, self.log_path) or str(exc)) from exc

    def close(self, finished: bool) -> None:
        """Closes the log and lets go of the folder. A run that stopped before its first checkpoint takes back
        its run.json (and its log, if empty), so that running it again is not refused as a resume."""
        if self._log is not None:
            try:
                self._log.close()
            except OSError:
                pass  # the failure that matters was reported when a line could not be written
            self._log = None
        if not finished and not self.saved:
            if self._wrote_run_file:
                (self.dir / RUN_FILE).unlink(missing_ok=True)
            if self.log_path is not None and self.log_path.exists() and self.log_path.stat().st_size == 0:
                self.log_path.unlink()
        if self.lock is not None:
            self.lock.release()


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
    there is none) or a checkpoint path. load_from: weights to start a new run from (strict=False, the report
    printed; not with resume). max_iters, seed, deterministic, batch_size (per process), num_workers, amp ('bf16' |
    'fp16' | None) override the config's schedule/runtime/data; cfg_options: `key.sub=value` overrides applied
    first; data_root replaces data.root. Problems found before the first iteration raise SetupError (nothing left
    written, except that a resumed run may have cleaned its temporary files); a non-finite loss, a sample that
    cannot be read or does not fit the dataset (its file named) and a checkpoint or log that cannot be written raise
    TrainingError. Ctrl-C (or SIGTERM inside resnest_fast.utils.sigterm_interrupts) raises resnest_fast.utils.
    Interrupted, a KeyboardInterrupt naming the checkpoint to resume from; the one being written is dropped.

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
    loop = ddp = None
    finished = False
    work, start_iter, resume_from = None, 0, None
    # process-wide settings this call changes, given back at the end (train() may run inside a larger program)
    threads, deterministic_before = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        try:
            if resume and load_from is not None:
                # the resumed checkpoint's weights would replace the loaded ones at once
                raise ValueError("--resume and --load-from cannot be combined: --resume continues a run from its "
                                 "checkpoint (weights included), --load-from starts a new run from a file's weights")
            # the options first: for an mmseg file they name mmseg's keys, as with mmseg's own tools
            check_path(work_dir, "work dir (--work-dir)", "a folder")
            cfg = copy.deepcopy(resolve_config(cfg, cfg_options))
            if not isinstance(cfg.get("model"), dict):
                raise ValueError(f"config {cfg.get('filename', '<dict>')!r} has no `model = dict(...)`")
            data = check_data_config(cfg)
            for section in ("schedule", "runtime"):
                if not isinstance(cfg.get(section) or {}, dict):
                    raise ValueError(f"config {cfg.get('filename', '<dict>')!r} (or --cfg-options): `{section}` must "
                                     f"be a dict of its settings, got {cfg[section]!r}")
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
            where = f"config {cfg.get('name') or cfg.get('filename', '<dict>')!r} (or --cfg-options)"
            check_known_keys("schedule", schedule, SCHEDULE_KEYS, where)
            check_known_keys("runtime", runtime, RUNTIME_KEYS, where)
            total_iters = _whole(schedule.get("max_iters"), "schedule.max_iters", 1)
            amp = runtime.get("amp")
            if amp not in (None, "bf16", "fp16"):
                raise ValueError(f"amp must be 'bf16', 'fp16' or None, got {amp!r}")
            batch = _whole(data["batch_size"], "data.batch_size", 1)
            workers = _whole(data.get("num_workers", 0), "data.num_workers", 0)
            seed_value = _whole(runtime.get("seed", 0), "runtime.seed", 0)
            deterministic = bool(runtime.get("deterministic", False))
            log_interval = _whole(runtime.get("log_interval", 50), "runtime.log_interval", 1)
            keep = _whole(runtime.get("keep_checkpoints", 3), "runtime.keep_checkpoints", 0, " (0: keep all)")
            # 0 or None: a checkpoint at the end only / no validation
            ckpt_interval = _whole(schedule.get("checkpoint_interval"), "schedule.checkpoint_interval", 0,
                                   " (0 or None: only at the end)") or total_iters
            val_interval = _whole(schedule.get("val_interval"), "schedule.val_interval", 0,
                                  " (0 or None: no validation)")
            check_optimizer(schedule.get("optimizer", {}))
            for head in ("decode_head", "auxiliary_head"):
                head_cfg = cfg["model"].get(head)
                ignore = head_cfg.get("ignore_index", 255) if isinstance(head_cfg, dict) else 255
                if ignore != 255:
                    # any other id turns the ignored pixels into targets (out of range for the loss) and ignores a
                    # real class instead
                    raise ValueError(f"model.{head}.ignore_index must be 255, the id the datasets, the crops and the "
                                     f"batch padding give ignored pixels; got {ignore!r}")
            if runtime.get("num_threads") is not None:
                torch.set_num_threads(_whole(runtime["num_threads"], "runtime.num_threads", 1))
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
            if prebuilt is None:  # not at the first iteration's forward, as a traceback
                check_backend(backend, info.device)
        except (ValueError, RuntimeError) as exc:
            raise SetupError(str(exc)) from exc
        work = Path(work_dir) if work_dir is not None else Path("work_dirs") / cfg.get("name", "run")
        lock, checked = None, None
        if info.is_main:
            try:
                # locked before looking: of two runs started together into one folder, the second is refused here
                lock = ckpt.WorkDirLock.acquire(work)
                checked = _Run.check(work, resume)
            except (ValueError, OSError) as exc:
                checked = (str(exc), None)
        run = _Run(work, info.is_main, lock)
        problem, resume_from = broadcast_object(checked)
        error = None
        try:
            if problem:
                raise ValueError(problem)
            if lock is not None and lock.stale:
                tqdm.write(f"note: {work} was locked by {lock.stale}, which ended without letting go: taken over",
                           file=log)
            if amp == "fp16" and info.device.type != "cuda":
                raise ValueError("--amp fp16 needs a CUDA GPU (fp16 autocast with a GradScaler); on the CPU use "
                                 "--amp bf16")
            seed_everything(seed_value, deterministic)
            train_set = build_dataset(data, "train", root=data_root, seed=seed_value)
            val_set = build_dataset(data, "val", root=data_root) if val_interval > 0 else None
            model = prebuilt if prebuilt is not None else build_segmentor(cfg["model"], backend=backend)
            classes = getattr(train_set, "CLASSES", None)
            if classes and len(classes) != model.num_classes:
                raise ValueError(f"the model predicts {model.num_classes} classes but the {data['type']} dataset "
                                 f"has {len(classes)} (model.decode_head.num_classes)")
            _check_batch_norm(model, batch, info.world_size)
            crop_size = model.crop_size or tuple(data.get("crop_size") or ()) or None
            # ImageNet weights for the backbone (mmseg's init_weights): all of them or a SetupError, never a silent
            # partial load; a resumed run takes every weight from its checkpoint, so nothing is fetched for it
            pretrained = getattr(model, "pretrained", None) if resume_from is None else None
            if isinstance(pretrained, (str, os.PathLike)) and info.local_rank == 0:
                # one download per machine (an open-mmlab:// file absent from torch's hub cache), as mmengine does
                # it; the other processes find the file there once every process has agreed that all went well
                resolve_pretrained(pretrained, progress=progress and info.is_main)
        except (CheckpointError, ValueError, TypeError, KeyError, OSError) as exc:
            error = str(exc)
        _agree(error)
        try:
            if pretrained:
                report = load_pretrained(model.backbone, pretrained, progress=progress and info.is_main)
                if info.is_main:
                    tqdm.write(f"backbone weights from {report}", file=log)
            if load_from is not None:
                report = load_checkpoint(model, load_from, strict=False)
                _check_something_loaded(model, load_from, report)
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
                if info.is_main:
                    _check_nothing_newer(work, resume_from, int(state["meta"]["iter"]))
                _check_same_settings(state, resume_from, optimizer, amp, seed_value, batch, info.world_size)
                start_iter, rng_states = _restore(state, model, optimizer, scheduler, scaler, info)
                if info.is_main:
                    tqdm.write(f"resumed from {resume_from} at iteration {start_iter}", file=log)
            if start_iter > total_iters:
                raise ValueError(f"the checkpoint is at iteration {start_iter}, beyond max_iters={total_iters}")
            run.start(cfg, dict(config=cfg.get("name"), seed=seed_value, world_size=info.world_size,
                                batch_size=batch, max_iters=total_iters, created=time.strftime("%Y-%m-%d %H:%M:%S")))
        except (CheckpointError, ValueError, TypeError, KeyError, OSError) as exc:
            error = str(exc)
        _agree(error)

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
        finished = True
        return summary
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM where the caller turned it into Interrupted
        # under torchrun, the SIGTERM sent once another process ended on an error: that error is the news
        peer = peer_stopped(info, wait=False)
        if peer is not None:
            raise TrainingError(peer) from None
        raise _interrupted(exc, loop, work, start_iter, resume_from) from None
    except TrainingError as exc:
        report_own_failure(info, str(exc))  # only this process may know it (a sample it could not read)
        raise
    except RuntimeError:
        # a collective that failed because another process ended on its own error: that error, not gloo's
        peer = peer_stopped(info)
        if peer is None:
            raise
        raise TrainingError(peer) from None
    finally:
        if run is not None:
            run.close(finished)
        if info is not None:
            # DDP's reducer holds the process group; were it the last holder, the group would die in the reducer's
            # destructor, which keeps the GIL while it joins gloo's worker threads, as a worker freeing a finished
            # collective's tensors waits for the GIL (a hang at exit). Dropped here, the group dies in
            # destroy_process_group instead.
            if loop is not None:
                loop.ddp = None
            loop = ddp = None
            gc.collect()
            cleanup(info)
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic_before)
        hold_sigterm(False)


def _interrupted(exc: KeyboardInterrupt, loop: Optional["_Loop"], work: Optional[Path], start_iter: int,
                 resume_from: Optional[str]) -> Interrupted:
    """The Interrupted that `exc` becomes: the signal, how far the run got and the checkpoint to resume from."""
    signum = getattr(exc, "signum", signal.SIGINT)
    how = interruption(signum)
    if loop is None:
        return Interrupted(f"{how} before the first iteration: nothing was written", signum)
    # a checkpoint newer than the one resumed from is this call's (_check_nothing_newer), and complete (atomic), even
    # when the signal came before `latest` named it
    written = _checkpoints_after(work, start_iter)
    last = written[-1] if written else resume_from
    done = f"{how} after {loop.iteration} of {loop.total_iters} iterations"
    if last is None:
        return Interrupted(f"{done}, before the first checkpoint: nothing to resume", signum)
    return Interrupted(f"{done}: resume with --resume {last}", signum)


def _agree(error: Optional[str]) -> None:
    """A collective every process calls at the same point of the setup with its error or None: SetupError on every
    process when any had one (its own message, else the first process's)."""
    errors = [e for e in all_gather_object(error) if e]
    if errors:
        raise SetupError(error or f"another process could not start: {errors[0]}")


def _read_training_state(path: Path) -> dict:
    """The checkpoint at `path` if it holds a training state of this project's layout, else CheckpointError saying
    what it holds instead."""
    state = torch_load(str(path), "cpu")
    if not isinstance(state, dict):
        what = f"a tensor of shape {list(state.shape)}" if isinstance(state, torch.Tensor) else \
            f"a {type(state).__name__}"
        raise CheckpointError(f"{str(path)!r} is not a training checkpoint of this project: expected a dict with "
                              f"meta, state_dict, optimizer and param_schedulers, got {what}")
    missing = [k for k in ("meta", "state_dict", "optimizer", "param_schedulers") if k not in state]
    if missing:
        raise CheckpointError(f"{str(path)!r} is not a training checkpoint of this project (missing {missing}): "
                              "to start from its weights use --load-from")
    check_state_dict(state["state_dict"], str(path))
    # as load_checkpoint does for --load-from: NaN weights would only surface as "the loss became nan" a step later
    check_finite(state["state_dict"], str(path))
    meta, schedulers = state["meta"], state["param_schedulers"]
    if not isinstance(meta, dict) or isinstance(meta.get("iter"), bool) or not isinstance(meta.get("iter"), int):
        raise CheckpointError(f"{str(path)!r}: meta must be a dict with an int 'iter', got {meta!r:.80}")
    if not isinstance(state["optimizer"], dict):
        raise CheckpointError(f"{str(path)!r}: optimizer must be a dict (an optimizer's state_dict), got a "
                              f"{type(state['optimizer']).__name__}")
    if not (isinstance(schedulers, (list, tuple)) and schedulers and isinstance(schedulers[0], dict)):
        raise CheckpointError(f"{str(path)!r}: param_schedulers must be a list holding the scheduler's state_dict, "
                              f"got {schedulers!r:.80}")
    return state


def _checkpoints_after(work: Path, start_iter: int) -> List[Path]:
    """The work dir's checkpoints of iterations after start_iter, oldest first."""
    return [path for iteration, path in ckpt.list_checkpoints(work) if iteration > start_iter]


def _check_nothing_newer(work: Path, resume_from: str, start_iter: int) -> None:
    """ValueError when `work` holds a checkpoint of an iteration after `start_iter`. The resumed run writes
    iter_<N>.pth for iterations after start_iter: it would replace such a file, and short of that its `latest`
    and pruning would mix two histories in one folder (another run's checkpoint, or a branch from an older one)."""
    newer = _checkpoints_after(work, start_iter)
    if newer:
        newest = newer[-1]
        raise ValueError(f"work dir {str(work)!r} already holds {newer[0].name}, newer than iteration {start_iter} of "
                         f"the checkpoint resumed from ({str(resume_from)!r}): to continue the run there, resume "
                         f"from its newest checkpoint (--resume {newest}); to continue {str(resume_from)!r}, "
                         "resume it into a new --work-dir")


# the settings torch's SGD keeps in each param group, by their config names: optimizer.load_state_dict takes them
# from the checkpoint, whatever this run's config says (initial_lr: the base lr, kept there by PolyLR)
_OPTIMIZER_SETTINGS = {"initial_lr": "lr", "momentum": "momentum", "weight_decay": "weight_decay",
                       "dampening": "dampening", "nesterov": "nesterov", "maximize": "maximize"}


def _check_same_settings(state: dict, path, optimizer: torch.optim.Optimizer, amp: Optional[str], seed: int,
                         batch: int, world_size: int) -> None:
    """ValueError naming the first setting this run changes from its checkpoint's. A resumed run continues the
    checkpoint's optimiser state (hyper-parameters included), its random streams and its sampler's order, so a
    changed lr, momentum or weight decay would be recorded in run.json yet ignored, and a changed --amp or --seed
    would silently switch the precision or the data order half-way; like a changed max_iters, each is refused. So
    is another total batch (images per process x processes), which the lr was set for and the sampler's position
    counts in; the number of processes may change if the total stays (_restore notes it)."""
    changed = []
    for group, saved in zip(optimizer.param_groups, state["optimizer"].get("param_groups") or ()):
        changed += [(f"schedule.optimizer.{name}", repr(saved[key]), repr(group.get(key)))
                    for key, name in _OPTIMIZER_SETTINGS.items() if key in saved and saved[key] != group.get(key)]
    meta = state["meta"]
    if "amp" in meta and meta["amp"] != amp:
        changed.append(("runtime.amp (--amp)", repr(meta["amp"]), repr(amp)))
    if "seed" in meta and meta["seed"] != seed:
        changed.append(("runtime.seed (--seed)", repr(meta["seed"]), repr(seed)))
    saved_batch, saved_world = meta.get("batch_size"), meta.get("world_size", 1)
    if saved_batch is not None and saved_batch * saved_world != batch * world_size:
        if saved_world == world_size:
            changed.append(("data.batch_size (--batch-size)", repr(saved_batch), repr(batch)))
        else:
            changed.append(("a total batch (data.batch_size x processes)", f"{saved_batch} x {saved_world}",
                            f"{batch} x {world_size}"))
    if changed:
        name, saved, ours = changed[0]
        raise ValueError(f"checkpoint {str(path)!r} was written with {name}={saved} but this run has {ours}: a "
                         "resumed run goes on with its checkpoint's settings (give the same ones); to train on from "
                         "its weights with others, start a new run with --load-from")


def _check_something_loaded(model: nn.Module, path, report) -> None:
    """ValueError when --load-from loaded no tensor: a non-strict load of, say, ImageNet backbone weights (keys
    without the segmentor's `backbone.`) would otherwise train from scratch under a report of missing keys."""
    model_keys = list(model.state_dict())
    unloaded = set(report.missing) | report.skipped
    if all(k in unloaded for k in model_keys):
        theirs = report.unexpected[0] if report.unexpected else (report.mismatched or report.dtype_mismatched)[0][0]
        count = len(report.unexpected) + len(report.mismatched) + len(report.dtype_mismatched)
        raise ValueError(f"--load-from {str(path)!r}: none of its {count} tensors fits this config's model (its keys "
                         f"look like {theirs!r}, the model's like {model_keys[0]!r}): expected a checkpoint of this "
                         f"segmentor; for ImageNet backbone weights use --cfg-options model.pretrained={path}")


def _check_batch_norm(model: nn.Module, batch: int, world_size: int) -> None:
    """ValueError for a batch of one image where BatchNorm would see one value per channel: the split attention
    normalises pooled (1x1) features, and torch refuses that in training only at the first step."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    synced = world_size > 1 and all(isinstance(m, (nn.SyncBatchNorm, SyncBatchNorm)) for m in norms)
    if batch < 2 and norms and not synced:
        raise ValueError(f"data.batch_size {batch} is too small: the model's BatchNorm layers need at "
                         "least 2 images per batch in training (or SyncBN over several processes)")


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
        self.iteration = 0  # the iterations done, for a run interrupted part-way
        self.val_set, self.data, self.workers = val_set, data, workers
        self.log = log
        self.last_checkpoint: Optional[str] = None
        self.last_metrics: Optional[dict] = None
        # the iteration of the first non-finite loss (0: none yet) and that loss, kept on the device: watching every
        # step costs no synchronisation, and a checkpoint is never written after it
        self._first_bad = torch.zeros((), dtype=torch.long, device=info.device)
        self._bad_loss = torch.zeros((), dtype=torch.float32, device=info.device)

    # -- divergence -----------------------------------------------------------------------------------------
    def watch(self, iteration: int, loss: torch.Tensor) -> None:
        """Records `iteration` if its loss is the first non-finite one."""
        new = (self._first_bad == 0) & ~torch.isfinite(loss.detach())
        self._first_bad.masked_fill_(new, iteration)
        self._bad_loss = torch.where(new, loss.detach().float(), self._bad_loss)

    def stop_if_diverged(self, iteration: int, weights: bool) -> None:
        """TrainingError (on every rank) when a loss so far was not finite or, with weights=True, when a weight
        or buffer is: nothing after the last good checkpoint may be saved over it."""
        never = torch.iinfo(torch.long).max
        first = torch.where(self._first_bad == 0, torch.full_like(self._first_bad, never), self._first_bad)
        bad_weights = torch.zeros((), dtype=torch.long, device=first.device)
        if weights:
            values = [v for v in self.model.state_dict().values() if v.is_floating_point()]
            bad_weights = (~torch.stack([torch.isfinite(v).all() for v in values]).all()).long()
        packed = torch.stack([first, -bad_weights])  # one MIN reduction: the earliest iteration, any bad weight
        if self.info.world_size > 1:
            torch.distributed.all_reduce(packed, op=torch.distributed.ReduceOp.MIN)
        first_bad, bad = packed.tolist()
        if first_bad == never and not bad:
            return
        latest = ckpt.find_latest(self.run_dir.dir) if self.info.is_main else None
        kept = f"the last checkpoint, {latest}, is from before it" if latest else "no checkpoint was written"
        if first_bad != never:
            value = self._bad_loss.item() if self._first_bad.item() == first_bad else float("nan")
            what = f"the loss became {value} at iteration {first_bad}"
        else:
            what = f"the weights hold non-finite values at iteration {iteration} (the loss was finite)"
        raise TrainingError(f"{what}: training diverged ({kept}); lower the lr or check the data")

    # -- checkpoints ----------------------------------------------------------------------------------------
    def save(self, iteration: int) -> None:
        """Writes iter_<iteration>.pth on rank 0, after checking that the run has not diverged; a write that fails
        is a TrainingError on every rank, with the older checkpoints intact."""
        self.stop_if_diverged(iteration, weights=True)
        states = all_gather_object(ckpt.rng_state())  # every rank's, for an exact resume of each
        error = None
        if self.info.is_main:
            try:
                self._write(iteration, states)
            except OSError as exc:
                latest = ckpt.find_latest(self.run_dir.dir)
                error = (f"{exc}: training stopped at iteration {iteration}; "
                         + (f"the last checkpoint is {latest}" if latest else "no checkpoint was written"))
        error = broadcast_object(error)
        if error:
            raise TrainingError(error)

    def _write(self, iteration: int, states) -> None:
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
        self.run_dir.saved = True
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
        iteration = self.iteration = start_iter
        try:
            while iteration < self.total_iters:
                t0 = time.perf_counter()
                try:
                    batch = next(batches)
                except (DataError, OSError) as exc:
                    raise TrainingError(f"{data_error_message(exc)} (loading the batch of iteration "
                                        f"{iteration + 1})") from exc
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
                self.iteration = iteration
                self.watch(iteration, loss)
                sums["loss"] += loss.detach().double()
                for k, v in losses.items():
                    sums[k] += v.detach().double().mean()
                times.append(time.perf_counter() - t0)
                data_times.append(t1 - t0)
                bar.update(1)

                if iteration % self.log_interval == 0 or iteration == self.total_iters:
                    means = self._reduce_means(sums, len(times))
                    if not math.isfinite(means["loss"]):
                        self.stop_if_diverged(iteration, weights=False)
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
                    try:
                        self.validate(iteration)
                    except (DataError, OSError) as exc:
                        raise TrainingError(f"{data_error_message(exc)} (validating at iteration {iteration})") from exc
        except ckpt.WriteError as exc:  # the log file
            raise TrainingError(f"{exc}: training stopped at iteration {iteration}") from exc
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
