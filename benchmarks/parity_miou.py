"""mIoU parity experiment: the reference segmentor and ours, trained from the same initial weights on the
same synthetic data with the same seed and schedule, both evaluated; reports both mIoUs, their difference and the
per-iteration loss curves.

What runs:
  reference  mmseg 1.2.2's EncoderDecoder built from the config (SyncBN -> BN on one process, mmseg's BGR input
             convention, mmcv's compiled ops stood in for: benchmarks.models.reference_model), behind
             `MMSegAdapter`, which gives it the interface of our training loop; without mmseg, our segmentor on the
             pure-PyTorch `reference` backend. The CSV and the printout say which.
  ours       build_segmentor(cfg['model']) on the default backend (the fused C++ kernels on a CPU when built),
             starting from the reference's initial weights (load_state_dict, strict=True).
  training   both through the project's own loop, training.train.train(model=...): same data order (the sampler's
             seed), same augmentation draws (a function of seed, pass and index), same dropout draws (the global
             generator reseeded by train(), the heads drawn in mmseg's order), deterministic algorithms, one
             process, CPU, the config's threads; the loss of every iteration from train()'s JSON-lines log.
  evaluation training.evaluate.evaluate on the config's validation split after the last iteration: aAcc, mIoU,
             mAcc (fractions in the CSV, percent on screen).
  dtype      --dtype float64 converts both models (and the control) to float64 after the weights are shared (the
             fp32 initial draws, widened exactly), and they train and evaluate in it: parameters, BN statistics,
             both preprocessors' mean/std and so every activation and gradient (mmseg's `.float()` of the uint8
             image is exact and promotes to float64 against its float64 mean). Rounding differences start at
             ~1e-16 instead of ~1e-7. Ours still runs the fused C++ kernels (they dispatch double); the printout
             and CSV name the custom ops one training step of ours calls and their dtypes (none: a fallback).
  control    with --control, the reference trained a third time from the same weights with another thread count:
             ATen then sums in another order, so this run differs from the reference by rounding alone. Its
             distance to the reference is the noise floor that ours' distance is to be read against.
The two runs are not expected to agree bit for bit: the fused kernels sum in another order than mmseg's eager ops.
From a random init at the config's lr 0.05 the difference grows ~30x per iteration (float64 runs: 4e-16 at
iteration 1, 1.6e-7 at 10, 4e-4 at 11) and the runs end 3-11 mIoU points apart - and so does mmseg against itself
with 2 threads instead of 1: that schedule's noise floor is far above the tolerance. Segmenters are trained from
trained weights, and from there the runs stay together: the command line's default is the fine-tuning design
(pretrain, then compare). How many leading iterations the curves stay within 1e-6 (loss_coincide_iters) says how
long the runs remain the same computation; the claim checked is |mIoU(ours) - mIoU(reference)| <= 0.5 points at
the end.

  pretrain   --pretrain-iters N (default 400): the reference trains alone for N iterations of the config's
             schedule (lr 0.05, poly) from its random init, is evaluated, and both compared runs start from the
             weights it reached (ours loads them strictly, BN statistics included), with fresh optimisers, at
             --lr (default 0.005) for --max-iters (default 200) iterations.

    python -m benchmarks.parity_miou                                 # pretrain 400, both fine-tune 200 at lr 0.005
    python -m benchmarks.parity_miou --control --seed 1              # also the reference's noise floor; seed 1
    python -m benchmarks.parity_miou --pretrain-iters 0 --lr 0.05 --max-iters 400   # from the random init
    python -m benchmarks.parity_miou --pretrain-iters 0 --lr 0.05 --max-iters 400 --dtype float64 --control

Writes <out-dir>/parity-miou.csv (parity-miou-float64.csv with --dtype float64; one row per iteration: both losses
and their difference; a summary row; each with machine, versions and git revision, as benchmarks.report writes
them) and the PNG of the same name (both loss curves in one plot, their |difference| on a log scale below), both
written to a temporary file and renamed. Exit code 0 when the mIoU difference is within the tolerance, 1 when it
is not, 2 on bad arguments (an out dir that already holds them is refused before anything runs unless --overwrite),
130 on Ctrl-C (nothing written: the rows compare two finished runs).
"""
import argparse
import copy
import os
import sys
import tempfile
import time
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from benchmarks import report
from resnest_fast.testing.mmseg_reference import INSTALL_HINT

STEM = "parity-miou"
DEFAULT_CONFIG = "resnest_s50-d8-w16_fcn_1xb8-400_synthetic-64x64"
REFERENCES = ("auto", "mmseg", "reference-backend")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
TOLERANCE = 0.5  # mIoU points: the parity target
# The command line's design (run_experiment's own defaults are the config's schedule from a random init): the
# reference trains alone for the config's 400 iterations, then both fine-tune from there for 200 iterations at
# lr 0.005, a tenth of the from-scratch lr. From a random init, runs that differ by rounding alone part after
# 5-15 iterations and end 3-11 mIoU points apart (float32 and float64 alike); fine-tuning from a trained state
# keeps them together.
CLI_PRETRAIN_ITERS, CLI_LR, CLI_MAX_ITERS = 400, 0.005, 200
COINCIDE = 1e-6  # |loss difference| up to which two curves count as coinciding (float64 rounding starts at ~1e-16)
COLUMNS = ["row", "config", "reference", "ours_backend", "ours_fused_ops", "dtype", "seed", "max_iters", "threads",
           "lr", "pretrain_iters", "mIoU_pretrained",
           "iter", "loss_reference", "loss_ours", "loss_abs_diff", "aAcc_reference", "mIoU_reference", "mAcc_reference",
           "aAcc_ours", "mIoU_ours", "mAcc_ours", "mIoU_diff_points", "tolerance_points", "within_tolerance",
           "loss_max_abs_diff", "loss_first_abs_diff", "loss_coincide_iters", "seconds_reference", "seconds_ours",
           "control_threads", "loss_control", "aAcc_control", "mIoU_control", "mAcc_control",
           "mIoU_diff_control_points", "loss_max_abs_diff_control", "loss_coincide_iters_control", "seconds_control"]


class MMSegAdapter(nn.Module):
    """mmseg's EncoderDecoder with the interface of resnest_fast.segmentation.EncoderDecoder that the training loop and
    training.evaluate use. Every computation is mmseg's own: its data preprocessor (BGR -> RGB, normalisation,
    padding of images with pad_val and of labels with seg_pad_val), `loss`, `inference` (whole or slide).

    Images come in as ours do: RGB, 0-255, (B, 3, H, W). mmseg's configs expect mmcv's BGR decoding
    (`bgr_to_rgb=True`), so the adapter hands mmseg BGR images when its preprocessor converts channels.
    The wrapped model is the submodule `mmseg`: state_dict keys carry the prefix `mmseg.`."""

    def __init__(self, mmseg_model: nn.Module):
        super().__init__()
        self.mmseg = mmseg_model
        self.num_classes = mmseg_model.decode_head.num_classes
        self.align_corners = mmseg_model.align_corners
        size = getattr(mmseg_model.data_preprocessor, "size", None)
        self.crop_size = None if size is None else tuple(size)
        self.pretrained = None  # the loop's backbone checkpoint hook: mmseg loads its own init_cfg

    def _inputs(self, img: Tensor, img_shape: Optional[Sequence[Tuple[int, int]]]) -> List[Tensor]:
        if not isinstance(img, Tensor) or img.dim() != 4 or img.shape[1] != 3:
            shape = tuple(img.shape) if isinstance(img, Tensor) else type(img).__name__
            raise ValueError(f"img must be a (B, 3, H, W) tensor of 0-255 RGB values, got {shape}")
        if img_shape is not None and len(img_shape) != img.shape[0]:
            raise ValueError(f"img_shape has {len(img_shape)} entries for a batch of {img.shape[0]} images")
        bgr = self.mmseg.data_preprocessor.channel_conversion
        out = []
        for i in range(img.shape[0]):
            h, w = img_shape[i] if img_shape is not None else img.shape[2:]
            x = img[i, :, :h, :w]  # mmseg pads after normalising: give it the unpadded image
            out.append(x.flip(0) if bgr else x)
        return out

    def loss(self, img: Tensor, labels: Tensor,
             img_shape: Optional[Sequence[Tuple[int, int]]] = None) -> Dict[str, Tensor]:
        """img (B, 3, H, W) RGB 0-255, labels (B, H, W) int64 (255 = ignore), img_shape the sizes before padding
        -> mmseg's loss dict (decode.loss_ce, decode.acc_seg, aux.loss_ce, aux.acc_seg)."""
        from mmengine.structures import PixelData
        from mmseg.structures import SegDataSample

        if labels.dim() != 3 or labels.shape[0] != img.shape[0]:
            raise ValueError(f"labels must be (B, H, W) with B = {img.shape[0]}, got {tuple(labels.shape)}")
        inputs = self._inputs(img, img_shape)
        samples = []
        for x, lab in zip(inputs, labels):
            h, w = x.shape[1:]
            sample = SegDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w)))
            sample.gt_sem_seg = PixelData(data=lab[None, :h, :w])
            samples.append(sample)
        data = self.mmseg.data_preprocessor(dict(inputs=inputs, data_samples=samples), True)
        return self.mmseg.loss(data["inputs"], data["data_samples"])

    @staticmethod
    def sum_losses(losses: Dict[str, Tensor]) -> Tensor:
        # mmengine's parse_losses: the mean of every entry whose key contains 'loss', summed
        return sum(v.mean() for k, v in losses.items() if "loss" in k)

    @torch.no_grad()
    def inference(self, img: Tensor, mode: Optional[str] = None, crop_size=None, stride=None) -> Tensor:
        """RGB 0-255 (B, 3, H, W) -> logits (B, num_classes, H, W) by mmseg's `inference` (arguments override the
        model's test_cfg for this call)."""
        from mmengine.config import ConfigDict

        mm = self.mmseg
        cfg = dict(mm.test_cfg or {})
        for key, value in (("mode", mode), ("crop_size", crop_size), ("stride", stride)):
            if value is not None:
                cfg[key] = value
        cfg.setdefault("mode", "whole")
        h, w = img.shape[2:]
        metas = [dict(ori_shape=(h, w), img_shape=(h, w), pad_shape=(h, w), padding_size=[0, 0, 0, 0])
                 for _ in range(img.shape[0])]
        data = mm.data_preprocessor(dict(inputs=self._inputs(img, None)), False)
        saved = mm.test_cfg
        mm.test_cfg = ConfigDict(cfg)
        try:
            return mm.inference(data["inputs"], metas)
        finally:
            mm.test_cfg = saved

    def forward(self, img: Tensor) -> Tensor:
        return self.inference(img)


# ------------------------------------------------------------------------------------------------ experiment


def build_models(config: str, reference: str = "auto", seed: int = 0, dtype: str = "float32"):
    """(reference model, its kind, ours): the reference initialised once (torch seeded with `seed`), ours given
    its weights with strict=True, then both converted to `dtype` ('float32' or 'float64'). reference: 'auto'
    (mmseg if installed, else our reference backend), 'mmseg' (an error without it) or 'reference-backend'."""
    from benchmarks.models import reference_model
    from resnest_fast.segmentation import build_segmentor, load_config

    if reference not in REFERENCES:
        raise ValueError(f"reference must be one of {REFERENCES}, got {reference!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
    cfg = load_config(config)
    # both runs start from the same random weights: the training loop must not put ImageNet weights into ours
    cfg["model"] = dict(cfg["model"], pretrained=None)
    torch.manual_seed(seed)
    if reference == "reference-backend":
        ref, kind = build_segmentor(cfg["model"], backend="reference"), "reference-backend"
    else:
        ref, kind, _ = reference_model(config)
        if reference == "mmseg" and kind != "mmseg":
            raise ValueError(f"reference='mmseg' but {INSTALL_HINT}")
    ours = build_segmentor(cfg["model"])
    ours.load_state_dict(ref.state_dict(), strict=True)
    if kind == "mmseg":
        ref = MMSegAdapter(ref)
    # converted after the weights are shared (the same fp32 draws, widened exactly); parameters and buffers
    # (BN statistics, both preprocessors' mean/std) follow, and so does everything computed from them
    ref.to(DTYPES[dtype])
    ours.to(DTYPES[dtype])
    return ref, kind, ours


def fused_ops_used(model: nn.Module, crop_size: Tuple[int, int], batch: int = 2) -> Dict[str, List[str]]:
    """The project's custom ops (namespace `resnest_fast`) that one training step of `model` (a deep copy: the
    model and its BN statistics are left as they were) calls, each with the dtypes of its floating-point tensor
    arguments: {op name: sorted dtype names}. Empty when the ops ran on the pure-PyTorch reference (which calls no
    custom op), so it tells the fused C++ kernels from a silent fallback. The batch is random (own generator: the
    global one, which the dropout draws of the training runs come from, is not touched)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen: Dict[str, set] = {}

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.namespace == "resnest_fast":
                dtypes = seen.setdefault(func.name().split("::")[1].split(".")[0], set())
                for a in list(args) + list((kwargs or {}).values()):
                    if isinstance(a, Tensor) and a.is_floating_point():
                        dtypes.add(str(a.dtype).replace("torch.", ""))
            return func(*args, **(kwargs or {}))

    probe = copy.deepcopy(model).train()
    g = torch.Generator().manual_seed(0)
    img = torch.randint(0, 256, (batch, 3, *crop_size), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, probe.num_classes, (batch, *crop_size), generator=g)
    rng = torch.get_rng_state()
    try:
        with Record():
            probe.sum_losses(probe.loss(img, labels)).backward()
    finally:
        torch.set_rng_state(rng)
    return {k: sorted(v) for k, v in sorted(seen.items())}


def _describe_ops(ops: Dict[str, List[str]]) -> str:
    if not ops:
        return "none (the pure-PyTorch reference ran)"
    return "; ".join(f"{k} ({'/'.join(v)})" for k, v in ops.items())


def coinciding_iterations(a: Sequence[float], b: Sequence[float], bound: float = COINCIDE) -> int:
    """How many leading iterations two loss curves stay within `bound` of each other: how long the runs remain
    the same computation before rounding differences, amplified by the training dynamics, take over."""
    n = 0
    for x, y in zip(a, b):
        if abs(x - y) > bound:
            break
        n += 1
    return n


def _train_losses(log_file: str) -> List[Tuple[int, float]]:
    import json

    with open(log_file, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [(r["iter"], r["loss"]) for r in records if r.get("mode") == "train"]


def train_and_evaluate(cfg: dict, model: nn.Module, *, max_iters: int, seed: int, progress: bool, log) -> dict:
    """Trains `model` in place with the project's loop (per-iteration log, no validation during training, one
    checkpoint at the end, in a temporary work dir) and evaluates it on the validation split."""
    from resnest_fast.training.data.builder import build_dataset, check_data_config
    from resnest_fast.training.evaluate import evaluate, metrics_summary
    from resnest_fast.training.train import train

    options = ["runtime.log_interval=1", "schedule.val_interval=0", f"schedule.checkpoint_interval={max_iters}",
               "runtime.keep_checkpoints=1"]
    with tempfile.TemporaryDirectory(prefix="parity-miou-") as work:
        summary = train(cfg, work_dir=os.path.join(work, "run"), model=model, max_iters=max_iters, seed=seed,
                        deterministic=True, cfg_options=options, progress=progress, log=log)
        losses = _train_losses(summary["log_file"])
    if [i for i, _ in losses] != list(range(1, max_iters + 1)):
        raise RuntimeError(f"the training log has iterations {[i for i, _ in losses][:5]}..., expected 1..{max_iters}")
    data = check_data_config(cfg)
    threads = torch.get_num_threads()
    if (cfg.get("runtime") or {}).get("num_threads"):
        torch.set_num_threads(int(cfg["runtime"]["num_threads"]))
    try:
        scale = data.get("scale")
        evaluator = evaluate(model, build_dataset(data, "val"), scale=None if scale is None else tuple(scale))
    finally:
        torch.set_num_threads(threads)
    return dict(losses=[v for _, v in losses], metrics=metrics_summary(evaluator), seconds=summary["seconds"])


def run_experiment(config: str = DEFAULT_CONFIG, *, max_iters: Optional[int] = None, seed: Optional[int] = None,
                   reference: str = "auto", out_dir: Optional[str] = None, tolerance: float = TOLERANCE,
                   control: bool = False, dtype: str = "float32", pretrain_iters: int = 0,
                   lr: Optional[float] = None, progress: bool = True, plot: bool = True, log=None) -> dict:
    """Runs the experiment; writes the CSV (and the PNG if `plot`) to out_dir (default benchmarks/results) and
    returns the summary: reference (kind), ours_backend, per-model losses and metrics, mIoU_diff_points
    (ours - reference, in points), within_tolerance, loss_max_abs_diff, loss_first_abs_diff, loss_coincide_iters,
    dtype, ours_fused_ops (fused_ops_used: the custom ops ours' training step calls, with their dtypes), csv, png;
    with `control`, also control_threads, mIoU_diff_control_points, loss_max_abs_diff_control and
    loss_coincide_iters_control.
    dtype: 'float32' or 'float64', what both models (and the control) are converted to after the weights are
    shared, and trained and evaluated in. pretrain_iters > 0: the reference is first trained alone for that many
    iterations of the config's schedule and the compared runs start from the weights it reaches (ours loads them
    strictly): fine-tuning from trained weights, as segmenters are trained, instead of from a random init (the
    summary's `pretrained` has its metrics). lr: the compared runs' base learning rate instead of the config's."""
    from resnest_fast.backend import resolve_backend
    from resnest_fast.segmentation import load_config

    log = log or sys.stderr
    cfg = load_config(config)
    max_iters = int((cfg.get("schedule") or {}).get("max_iters", 0)) if max_iters is None else max_iters
    if not isinstance(max_iters, int) or max_iters < 1:
        raise ValueError(f"max_iters must be a positive number of iterations, got {max_iters!r}")
    seed = int((cfg.get("runtime") or {}).get("seed", 0)) if seed is None else seed
    if not (isinstance(tolerance, (int, float)) and tolerance >= 0):
        raise ValueError(f"tolerance must be a number >= 0 (mIoU points), got {tolerance!r}")
    if pretrain_iters < 0:
        raise ValueError(f"pretrain_iters must be >= 0, got {pretrain_iters!r}")
    if lr is not None and not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    ref, kind, ours = build_models(config, reference, seed, dtype)
    pretrained = None
    if pretrain_iters:
        print(f"pretraining the reference ({kind}) for {pretrain_iters} iterations: the shared starting point", file=log)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module="mmseg.*|mmcv.*|mmengine.*")
            pretrained = train_and_evaluate(cfg, ref, max_iters=pretrain_iters, seed=seed, progress=progress, log=log)
        ours.load_state_dict((ref.mmseg if isinstance(ref, MMSegAdapter) else ref).state_dict(), strict=True)
        print(f"  pretrained: mIoU {100 * pretrained['metrics']['mIoU']:.2f}", file=log)
    if lr is not None:
        cfg = copy.deepcopy(cfg)
        cfg.setdefault("schedule", {}).setdefault("optimizer", {})["lr"] = float(lr)
    ours_backend = resolve_backend(None, torch.device("cpu"))
    crop = ours.crop_size or tuple((cfg.get("data") or {}).get("crop_size") or (32, 32))
    ours_ops = fused_ops_used(ours, crop)
    print(f"ours ({dtype}, backend {ours_backend}) calls the fused ops: {_describe_ops(ours_ops)}", file=log)
    runs = [("reference", ref, cfg, kind), ("ours", ours, cfg, f"ours, backend {ours_backend}")]
    if control:
        threads = int((cfg.get("runtime") or {}).get("num_threads") or torch.get_num_threads())
        control_threads = 2 if threads == 1 else 1
        control_cfg = copy.deepcopy(cfg)
        control_cfg.setdefault("runtime", {})["num_threads"] = control_threads
        runs.append(("control", copy.deepcopy(ref), control_cfg, f"{kind} again, {control_threads} threads"))
    results = {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="mmseg.*|mmcv.*|mmengine.*")
        for label, model, run_cfg, what in runs:
            print(f"training {label} ({what}) for {max_iters} iterations", file=log)
            results[label] = train_and_evaluate(run_cfg, model, max_iters=max_iters, seed=seed, progress=progress,
                                                log=log)
    ref_losses, our_losses = results["reference"]["losses"], results["ours"]["losses"]
    diffs = [abs(a - b) for a, b in zip(ref_losses, our_losses)]
    m_ref, m_ours = results["reference"]["metrics"], results["ours"]["metrics"]
    miou_diff = 100 * (m_ours["mIoU"] - m_ref["mIoU"])
    threads = int((cfg.get("runtime") or {}).get("num_threads") or torch.get_num_threads())
    summary = dict(config=cfg["name"], reference=kind, ours_backend=ours_backend, seed=seed, max_iters=max_iters,
                   threads=threads, dtype=dtype, ours_fused_ops=ours_ops, pretrain_iters=pretrain_iters,
                   lr=float(cfg["schedule"]["optimizer"]["lr"]), pretrained=pretrained,
                   metrics=dict(reference=m_ref, ours=m_ours), losses=dict(reference=ref_losses, ours=our_losses),
                   mIoU_diff_points=miou_diff, tolerance_points=tolerance, within_tolerance=abs(miou_diff) <= tolerance,
                   loss_max_abs_diff=max(diffs), loss_first_abs_diff=diffs[0],
                   loss_coincide_iters=coinciding_iterations(ref_losses, our_losses),
                   seconds={k: v["seconds"] for k, v in results.items()})
    if control:
        control_losses = results["control"]["losses"]
        summary["losses"]["control"] = control_losses
        summary["metrics"]["control"] = results["control"]["metrics"]
        summary.update(control_threads=control_threads,
                       mIoU_diff_control_points=100 * (results["control"]["metrics"]["mIoU"] - m_ref["mIoU"]),
                       loss_max_abs_diff_control=max(abs(a - b) for a, b in zip(ref_losses, control_losses)),
                       loss_coincide_iters_control=coinciding_iterations(ref_losses, control_losses))
    out_dir = out_dir or os.path.join(report.HERE, "results")
    summary["csv"] = write_csv(summary, out_dir)
    summary["png"] = write_plot(summary, os.path.join(out_dir, f"{_stem(dtype)}.png")) if plot else None
    return summary


def _rows(summary: dict) -> List[dict]:
    common = {k: summary[k] for k in ("config", "reference", "ours_backend", "dtype", "seed", "max_iters", "threads",
                                      "lr", "pretrain_iters")}
    if summary.get("pretrained"):
        common["mIoU_pretrained"] = summary["pretrained"]["metrics"]["mIoU"]
    common["ours_fused_ops"] = _describe_ops(summary["ours_fused_ops"])
    control = summary["losses"].get("control")
    if control:
        common["control_threads"] = summary["control_threads"]
    rows = []
    for i, (a, b) in enumerate(zip(summary["losses"]["reference"], summary["losses"]["ours"]), start=1):
        rows.append(dict(common, row="iteration", iter=i, loss_reference=a, loss_ours=b, loss_abs_diff=abs(a - b),
                         loss_control=control[i - 1] if control else ""))
    last = dict(common, row="summary", iter=summary["max_iters"], tolerance_points=summary["tolerance_points"],
                mIoU_diff_points=round(summary["mIoU_diff_points"], 4), within_tolerance=summary["within_tolerance"],
                loss_max_abs_diff=summary["loss_max_abs_diff"], loss_first_abs_diff=summary["loss_first_abs_diff"],
                loss_coincide_iters=summary["loss_coincide_iters"],
                loss_reference=summary["losses"]["reference"][-1], loss_ours=summary["losses"]["ours"][-1])
    for label in summary["metrics"]:
        for metric in ("aAcc", "mIoU", "mAcc"):
            last[f"{metric}_{label}"] = summary["metrics"][label][metric]
        last[f"seconds_{label}"] = round(summary["seconds"][label], 1)
    if control:
        last.update(loss_control=control[-1], mIoU_diff_control_points=round(summary["mIoU_diff_control_points"], 4),
                    loss_max_abs_diff_control=summary["loss_max_abs_diff_control"],
                    loss_coincide_iters_control=summary["loss_coincide_iters_control"])
    rows.append(last)
    # every row with every column, in COLUMNS' order (report.flush orders columns by the first row)
    return [{k: row.get(k, "") for k in COLUMNS} for row in rows]


def _stem(dtype: str) -> str:
    # fp32 keeps the original file name; other dtypes get their own files, so that both can sit in one folder
    return STEM if dtype == "float32" else f"{STEM}-{dtype}"


def output_files(dtype: str) -> List[str]:
    """The names the experiment writes in its out_dir."""
    return [report.csv_name(_stem(dtype)), f"{_stem(dtype)}.png"]


def write_csv(summary: dict, out_dir: str) -> str:
    """The rows through benchmarks.report (machine, versions, git revision; temporary file + rename); other
    benchmarks' pending rows are left as they were. Returns the path written."""
    pending = dict(report.RESULTS)
    report.RESULTS.clear()
    try:
        for row in _rows(summary):
            report.add(_stem(summary["dtype"]), row)
        report.flush(out_dir)
    finally:
        report.RESULTS.clear()
        report.RESULTS.update(pending)
    return os.path.join(out_dir, report.csv_name(_stem(summary["dtype"])))


def write_plot(summary: dict, path: str) -> str:
    """Both loss curves in one panel, their |difference| (log scale) in a second; temporary file + rename."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref, ours = summary["losses"]["reference"], summary["losses"]["ours"]
    iters = range(1, len(ref) + 1)
    m = summary["metrics"]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, gridspec_kw=dict(height_ratios=(3, 1)))
    top.plot(iters, ref, label=f"{summary['reference']}: mIoU {100 * m['reference']['mIoU']:.2f}", lw=1.2)
    top.plot(iters, ours, label=f"ours ({summary['ours_backend']}): mIoU {100 * m['ours']['mIoU']:.2f}", lw=1.2,
             ls="--")
    control = summary["losses"].get("control")
    if control:
        top.plot(iters, control, lw=0.8, ls=":", color="grey",
                 label=f"{summary['reference']}, {summary['control_threads']} threads (control): "
                       f"mIoU {100 * m['control']['mIoU']:.2f}")
    top.set_ylabel("total training loss")
    top.legend()
    top.set_title(f"{summary['config']}, {summary['dtype']}, seed {summary['seed']}, {summary['threads']} thread(s)\n"
                  f"mIoU difference {summary['mIoU_diff_points']:+.2f} points "
                  f"(tolerance {summary['tolerance_points']}); "
                  f"losses within {COINCIDE:g} for the first {summary['loss_coincide_iters']} iterations", fontsize=9)
    # log scale: how the difference grows from rounding (1e-16 in float64, 1e-7 in float32) to O(1) is the
    # information; exact zeros are drawn at the floor
    floor = 1e-17
    bottom.semilogy(iters, [max(abs(b - a), floor) for a, b in zip(ref, ours)], lw=0.8, color="black",
                    label="|ours - reference|")
    if control:
        bottom.semilogy(iters, [max(abs(c - a), floor) for a, c in zip(ref, control)], lw=0.8, color="grey",
                        ls=":", label="|control - reference|")
    bottom.axhline(COINCIDE, lw=0.5, color="grey", ls="--")
    bottom.legend(fontsize=7)
    bottom.set_ylabel("|loss difference|")
    bottom.set_xlabel("iteration")
    fig.suptitle(f"{report.machine()[:90]}; git {report.git_revision()}", fontsize=7)
    fig.tight_layout()
    report.save_figure(fig, path)
    plt.close(fig)
    return path


def summary_lines(summary: dict) -> List[str]:
    m = summary["metrics"]
    lines = [f"parity: {summary['config']}, {summary['dtype']}, {summary['max_iters']} iterations, seed "
             f"{summary['seed']}, {summary['threads']} thread(s); reference = {summary['reference']}, ours = backend "
             f"{summary['ours_backend']}",
             f"  fused ops in ours' training step: {_describe_ops(summary['ours_fused_ops'])}"]
    start = (f"the reference's weights after {summary['pretrain_iters']} iterations of training alone (mIoU "
             f"{100 * summary['pretrained']['metrics']['mIoU']:.2f})" if summary.get("pretrained")
             else "the reference's random init")
    lines.append(f"  both start from {start}; base lr {summary['lr']:g}")
    for label in summary["metrics"]:
        lines.append(f"  {label:9s}  mIoU {100 * m[label]['mIoU']:6.2f}  aAcc {100 * m[label]['aAcc']:6.2f}  "
                     f"mAcc {100 * m[label]['mAcc']:6.2f}  final loss {summary['losses'][label][-1]:.4f}  "
                     f"training {summary['seconds'][label]:.1f} s")
    verdict = "within" if summary["within_tolerance"] else "NOT within"
    lines.append(f"  mIoU difference (ours - reference) {summary['mIoU_diff_points']:+.2f} points: {verdict} "
                 f"+-{summary['tolerance_points']}")
    lines.append(f"  loss curves: max |diff| {summary['loss_max_abs_diff']:.3g}, at iteration 1 "
                 f"{summary['loss_first_abs_diff']:.3g}, within {COINCIDE:g} for the first "
                 f"{summary['loss_coincide_iters']} iterations")
    if "control" in m:
        lines.append(f"  control ({summary['reference']} with {summary['control_threads']} threads, "
                     f"{summary['dtype']} rounding only): mIoU {summary['mIoU_diff_control_points']:+.2f} points, "
                     f"loss curves max |diff| {summary['loss_max_abs_diff_control']:.3g}, within {COINCIDE:g} for the "
                     f"first "
                     f"{summary['loss_coincide_iters_control']} iterations")
    lines.append(f"  wrote {summary['csv']}" + (f" and {summary['png']}" if summary.get("png") else ""))
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.parity_miou", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="a shipped config's name or a .py config file "
                        f"(default {DEFAULT_CONFIG})")
    parser.add_argument("--max-iters", type=report.positive_int, default=CLI_MAX_ITERS,
                        help=f"iterations of each compared run (default {CLI_MAX_ITERS})")
    parser.add_argument("--seed", type=int, help="random seed of both runs (default: the config's runtime.seed)")
    parser.add_argument("--out-dir", help="where the CSV and PNG go (default: benchmarks/results)")
    report.add_overwrite_argument(parser)
    parser.add_argument("--reference", choices=REFERENCES, default="auto",
                        help="auto: mmseg if installed, else our pure-PyTorch reference backend")
    parser.add_argument("--tolerance", type=report.non_negative_float, default=TOLERANCE,
                        help="allowed |mIoU difference|, in points")
    parser.add_argument("--control", action="store_true", help="also train the reference again with another "
                        "thread count: the differences fp32 rounding alone makes (a third training run)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32",
                        help="the dtype both models (and the control) are converted to after sharing the weights, "
                        "and trained and evaluated in (float64: rounding noise ~1e-16 instead of ~1e-7)")
    parser.add_argument("--pretrain-iters", type=report.non_negative_int, default=CLI_PRETRAIN_ITERS,
                        help="first train the reference alone for this many iterations of the config's schedule and "
                        "start both compared runs from the weights it reaches (fine-tuning, as segmenters are "
                        f"trained; default {CLI_PRETRAIN_ITERS}; 0: both from the random init)")
    parser.add_argument("--lr", type=report.positive_float, default=CLI_LR,
                        help=f"base learning rate of the compared runs (default {CLI_LR}; 0.05 is the config's)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    try:
        from resnest_fast.segmentation import load_config

        load_config(args.config)
    except (ValueError, FileNotFoundError) as exc:
        parser.error(f"--config: {exc}")
    out_dir = report.check_output_folder(parser, args.out_dir, "--out-dir", output_files(args.dtype), args.overwrite)
    started = time.perf_counter()
    try:
        summary = run_experiment(args.config, max_iters=args.max_iters, seed=args.seed, reference=args.reference,
                                 out_dir=out_dir, tolerance=args.tolerance, control=args.control,
                                 dtype=args.dtype, pretrain_iters=args.pretrain_iters, lr=args.lr,
                                 progress=not args.no_progress)
    except ValueError as exc:  # e.g. --reference mmseg without mmseg
        parser.error(str(exc))
    except KeyboardInterrupt:  # its rows compare two finished runs: there is nothing partial to write
        print(f"{parser.prog}: interrupted (Ctrl-C) before both runs finished; nothing written", file=sys.stderr)
        return report.INTERRUPTED_EXIT
    for line in summary_lines(summary):
        print(line)
    print(f"  wall time {time.perf_counter() - started:.0f} s")
    return 0 if summary["within_tolerance"] else 1


if __name__ == "__main__":
    sys.exit(main())
