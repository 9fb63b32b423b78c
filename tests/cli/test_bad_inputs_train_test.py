"""`resnest-fast train` and `resnest-fast test` over a table of bad inputs: each row is refused with one line that
names the argument or file and what was expected (never a traceback), exit code 2 when nothing was done (usage,
config, checkpoint, data or work dir) and 1 when training started and failed, and every file that existed before
(work dirs, checkpoints, data) is byte-identical afterwards, with nothing new left behind."""
import hashlib
import os
import re

import numpy as np
import pytest
import torch

from resnest_fast._extension import HAS_CUDA_KERNELS
from resnest_fast.cli import main
from resnest_fast.segmentation import build_model
from resnest_fast.segmentation.config import CONFIG_DIR
from resnest_fast.training.checkpoints import WorkDirLock
from tests.training.data.files import smooth_image, write_jpg, write_png
from tests.training.train_helpers import tiny_config

ADE = "resnest_s101-d8_fcn_4xb4-160k_ade20k-512x512"


def _ade_config(folder) -> str:
    """The ADE20k config with a small model trained from scratch, 32x32 crops and a small test scale, as a file
    (`test` takes no --cfg-options)."""
    base = next(CONFIG_DIR.rglob(f"{ADE}.py"))
    path = folder / "ade_small.py"
    path.write_text("\n".join([
        f"_base_ = {str(base)!r}",
        ("model = dict(pretrained=None, data_preprocessor=dict(size=(32, 32)), "
         "backbone=dict(depth=50, stem_channels=16, base_channels=8), decode_head=dict(in_channels=256, channels=16), "
         "auxiliary_head=dict(in_channels=128, channels=8))"),
        "data = dict(crop_size=(32, 32), scale=(48, 24), batch_size=2, num_workers=0)",
        "runtime = dict(num_threads=1, log_interval=1)",
    ]) + "\n")
    return str(path)


def _ade_tree(root, bad=None):
    """ADEChallengeData2016 with 2 training and 1 validation image; `bad` spoils the first of each split:
    'corrupt' (a truncated JPEG), 'size' (a label smaller than its image), 'rgb' (an RGB label), 'range' (a class
    id 200, beyond ADE20k's 150 after reduce_zero_label), 'range16' (a 16-bit label holding 300, which a uint8
    cast would wrap to class 43), 'orphan' (one more label, ADE_9.png, without its image), 'fifo' (the image a named
    pipe, which opening would wait on forever); 'unlabelled' leaves the validation image without a labelled pixel
    (all 0, "other": ignored after reduce_zero_label)."""
    rng = np.random.default_rng(0)
    for split, n in (("training", 2), ("validation", 1)):
        for i in range(n):
            img = root / "ADEChallengeData2016" / "images" / split / f"ADE_{i}.jpg"
            seg = root / "ADEChallengeData2016" / "annotations" / split / f"ADE_{i}.png"
            write_jpg(str(img), smooth_image(rng, 24, 30))
            label = rng.integers(0, 5, (24, 30)).astype("uint8")
            if i == 0 and bad == "size":
                label = label[:20]
            if i == 0 and bad == "rgb":
                label = np.stack([label] * 3, -1)
            if i == 0 and bad == "range":
                label[3, 4] = 200
            if split == "validation" and bad == "unlabelled":
                label[:] = 0
            if i == 0 and bad == "range16":
                label = label.astype("uint16")
                label[3, 4] = 300
            write_png(str(seg), label)
            if i == 0 and bad == "corrupt":
                img.write_bytes(img.read_bytes()[:200])
            if i == 0 and bad == "orphan":
                write_png(str(seg.with_name("ADE_9.png")), label)
            if i == 0 and bad == "fifo":
                img.unlink()
                os.mkfifo(img)
    return str(root)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_inputs")
    torch.manual_seed(0)
    w = {"root": root, "tiny": tiny_config(root), "ade": _ade_config(root), "empty": ""}
    # run: iter_2.pth and iter_4.pth; seed7: the same of another run
    assert main(["train", w["tiny"], "--work-dir", str(root / "run"), "--max-iters", "4", "--no-progress",
                 "--cfg-options", "schedule.val_interval=0"]) == 0
    assert main(["train", w["tiny"], "--work-dir", str(root / "seed7"), "--max-iters", "4", "--seed", "7",
                 "--no-progress", "--cfg-options", "schedule.val_interval=0"]) == 0
    assert main(["train", w["tiny"], "--work-dir", str(root / "bf16"), "--max-iters", "4", "--amp", "bf16",
                 "--no-progress", "--cfg-options", "schedule.val_interval=0", "schedule.checkpoint_interval=4"]) == 0
    state_dict = torch.load(root / "run" / "iter_2.pth", weights_only=True)["state_dict"]
    torch.save({"state_dict": {k: v.to(torch.int32) if v.is_floating_point() else v for k, v in state_dict.items()}},
               root / "int32.pth")
    torch.save({"state_dict": {k: v.fill_(float("nan")) if v.is_floating_point() else v
                               for k, v in state_dict.items()}}, root / "nan.pth")
    state = torch.load(root / "run" / "iter_2.pth", weights_only=True)  # a training state whose weights are NaN
    state["state_dict"] = {k: v.fill_(float("nan")) if v.is_floating_point() else v
                           for k, v in state["state_dict"].items()}
    torch.save(state, root / "nan_state.pth")
    (root / "text.pth").write_text("101 is a number, not a checkpoint\n")
    torch.save(torch.zeros(3), root / "tensor.pth")
    torch.save({"meta": {}, "state_dict": "abc"}, root / "str_state_dict.pth")
    torch.save({"meta": {"iter": 2}, "state_dict": "abc", "optimizer": {}, "param_schedulers": [{}]},
               root / "str_training_state.pth")
    torch.save(build_model(w["ade"]).state_dict(), root / "ade.pth")
    torch.save(build_model(w["tiny"]).backbone.state_dict(), root / "backbone.pth")  # ImageNet weights' layout
    for bad in ("corrupt", "size", "rgb", "range", "range16", "orphan", "fifo", "unlabelled"):
        w[bad] = _ade_tree(root / f"ade_{bad}", bad)
    (root / "a_file").write_text("not a folder")
    (root / "dangling").symlink_to(root / "nowhere")
    # configs inheriting the tiny one with one bad value each (`test` takes no --cfg-options)
    for name, line in (("tta_zero", "data = dict(tta_ratios=(0,))"), ("tta_huge", "data = dict(tta_ratios=(1e6,))"),
                       ("tta_text", "data = dict(tta_ratios='abc')"),
                       ("in_index", "model = dict(decode_head=dict(in_index=7))")):
        (root / f"{name}.py").write_text(f"_base_ = {w['tiny']!r}\n{line}\n")
        w[name] = str(root / f"{name}.py")
    return w


def _snapshot(root):
    """{relative path: sha256} of every file (a link: its target, a FIFO: its kind, never opened) and {relative
    path} of every folder under root."""
    files, folders = {}, set()
    for folder, dirs, names in os.walk(root):
        folders.update(os.path.relpath(os.path.join(folder, d), root) for d in dirs)
        for name in names:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                files[os.path.relpath(path, root)] = "-> " + os.readlink(path)
            elif not os.path.isfile(path):
                files[os.path.relpath(path, root)] = "special"
            else:
                with open(path, "rb") as f:
                    files[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return files, folders


# (id, argv with {placeholders}, exit code, what the error must say[, its number of lines if not 1])
TRAIN = [
    ("typo-in-cfg-option", "{tiny} --cfg-options schedule.val_intervall=1", 2,
     r"unknown key schedule\.val_intervall \(did you mean schedule\.val_interval\?\)"),
    ("typo-in-runtime", "{tiny} --cfg-options runtime.log_intervall=1", 2,
     r"unknown key runtime\.log_intervall \(did you mean runtime\.log_interval\?\)"),
    ("typo-in-data", "{tiny} --cfg-options data.batchsize=2", 2, r"unknown key data\.batchsize"),
    ("typo-in-a-section", "{tiny} --cfg-options schedul.val_interval=1", 2,
     r"--cfg-options 'schedul\.val_interval=1': the config has no entry 'schedul' \(did you mean schedule\?\)"),
    ("negative-checkpoint-interval", "{tiny} --cfg-options schedule.checkpoint_interval=-1", 2,
     r"schedule\.checkpoint_interval must be a whole number >= 0 \(0 or None: only at the end\), got -1"),
    ("negative-val-interval", "{tiny} --cfg-options schedule.val_interval=-3", 2,
     r"schedule\.val_interval must be a whole number >= 0 \(0 or None: no validation\), got -3"),
    ("negative-lr", "{tiny} --cfg-options schedule.optimizer.lr=-1", 2,
     r"schedule\.optimizer\.lr must be a finite number >= 0, got -1$"),
    ("negative-eta-min", "{tiny} --cfg-options schedule.lr_policy.eta_min=-1", 2,
     r"schedule\.lr_policy\.eta_min must be a finite number >= 0, got -1$"),
    ("negative-power", "{tiny} --cfg-options schedule.lr_policy.power=-1", 2,
     r"schedule\.lr_policy\.power must be a finite number >= 0, got -1$"),
    ("fractional-log-interval", "{tiny} --cfg-options runtime.log_interval=2.5", 2,
     r"runtime\.log_interval must be a positive whole number, got 2\.5"),
    ("batch-size-1", "{tiny} --batch-size 1", 2, r"data\.batch_size 1 is too small: .*BatchNorm"),
    ("negative-num-workers", "{tiny} --num-workers -1", 2,
     r"data\.num_workers must be a whole number >= 0, got -1"),
    ("work-dir-is-a-file", "{tiny} --work-dir {root}/a_file", 2, r"work dir '.*/a_file' is a file, not a folder"),
    ("work-dir-under-a-file", "{tiny} --work-dir {root}/a_file/sub", 2,
     r"work dir '.*/a_file/sub' cannot be created: .*/a_file is a file, not a folder"),
    ("work-dir-a-link-to-nothing", "{tiny} --work-dir {root}/dangling", 2,
     r"work dir '.*/dangling' is a symbolic link to .*/nowhere, which does not exist$"),
    ("work-dir-under-a-link-to-nothing", "{tiny} --work-dir {root}/dangling/sub", 2,
     r"work dir '.*/dangling/sub' cannot be created: .*/dangling is a symbolic link to .*/nowhere, which does not "
     r"exist$"),
    ("resume-a-text-file", "{tiny} --resume {root}/text.pth", 2,
     r"text\.pth' is not a PyTorch checkpoint: expected what torch\.save writes .* got a file starting with b'101"),
    ("resume-one-tensor", "{tiny} --resume {root}/tensor.pth", 2,
     r"tensor\.pth' is not a training checkpoint of this project: .* got a tensor of shape \[3\]"),
    ("resume-state-dict-a-string", "{tiny} --resume {root}/str_training_state.pth", 2,
     r"str_training_state\.pth' holds no state_dict: expected a dict of tensors.* got a str \('abc'\)"),
    ("resume-nan-weights", "{tiny} --max-iters 4 --resume {root}/nan_state.pth", 2,
     r"nan_state\.pth' holds NaN or infinite values in \d+ of its \d+ floating-point tensors \(backbone\.stem\.0\."),
    # a resumed run writes iter_<N>.pth after its checkpoint's iteration: none of those may exist already
    ("resume-older-than-the-work-dirs-newest",
     "{tiny} --work-dir {root}/run --max-iters 4 --resume {root}/run/iter_2.pth", 2,
     (r"work dir '.*/run' already holds iter_4\.pth, newer than iteration 2 of the checkpoint resumed from "
         r"\('.*/run/iter_2\.pth'\): .*\(--resume .*/run/iter_4\.pth\).* into a new --work-dir$")),
    ("resume-another-runs-checkpoint",
     "{tiny} --work-dir {root}/run --max-iters 4 --seed 7 --resume {root}/seed7/iter_2.pth", 2,
     r"work dir '.*/run' already holds iter_4\.pth, newer than iteration 2 of the checkpoint resumed from"),
    # a resumed run takes its optimiser (hyper-parameters included), precision and random streams from its checkpoint
    ("resume-with-another-lr", "{tiny} --max-iters 4 --resume {root}/run/iter_2.pth --cfg-options "
     "schedule.optimizer.lr=0.02", 2,
     (r"checkpoint '.*/run/iter_2\.pth' was written with schedule\.optimizer\.lr=0\.05 but this run has 0\.02: "
      r".*--load-from")),
    ("resume-with-another-momentum", "{tiny} --max-iters 4 --resume {root}/run/iter_2.pth --cfg-options "
     "schedule.optimizer.momentum=0.5", 2, r"with schedule\.optimizer\.momentum=0\.9 but this run has 0\.5: "),
    ("resume-with-another-weight-decay", "{tiny} --max-iters 4 --resume {root}/run/iter_2.pth --cfg-options "
     "schedule.optimizer.weight_decay=0", 2, r"with schedule\.optimizer\.weight_decay=0\.0005 but this run has 0: "),
    ("resume-a-bf16-run-without-amp", "{tiny} --max-iters 4 --resume {root}/bf16/iter_4.pth", 2,
     r"checkpoint '.*/bf16/iter_4\.pth' was written with runtime\.amp \(--amp\)='bf16' but this run has None: "),
    ("resume-with-another-seed", "{tiny} --max-iters 4 --resume {root}/seed7/iter_2.pth", 2,
     r"with runtime\.seed \(--seed\)=7 but this run has 0: "),
    ("resume-with-another-batch-size", "{tiny} --max-iters 4 --resume {root}/run/iter_2.pth --batch-size 2", 2,
     r"checkpoint '.*/run/iter_2\.pth' was written with data\.batch_size \(--batch-size\)=4 but this run has 2: "),
    ("resume-and-load-from", "{tiny} --max-iters 4 --resume {root}/run/iter_2.pth --load-from {root}/run/iter_4.pth",
     2, r"--resume and --load-from cannot be combined: "),
    ("resume-latest-and-load-from", "{tiny} --max-iters 4 --resume --load-from {root}/run/iter_4.pth", 2,
     r"--resume and --load-from cannot be combined: "),
    ("empty-training-set", "{tiny} --cfg-options data.train_samples=0", 2,
     r"data\.train_samples must be a positive whole number, got 0"),
    ("empty-validation-set", "{tiny} --cfg-options data.val_samples=0", 2,
     r"data\.val_samples must be a positive whole number, got 0"),
    ("load-from-a-text-file", "{tiny} --load-from {root}/text.pth", 2, r"text\.pth' is not a PyTorch checkpoint"),
    ("load-from-backbone-weights", "{tiny} --load-from {root}/backbone.pth", 2,
     (r"--load-from '.*/backbone\.pth': none of its \d+ tensors fits this config's model .*"
      r"--cfg-options model\.pretrained=.*/backbone\.pth")),
    ("data-root-for-synthetic-data", "{tiny} --data-root {root}", 2,
     r"a data root \('.*', --data-root\) was given for the synthetic dataset, which generates its images"),
    ("corrupt-training-image", "{ade} --data-root {corrupt} --max-iters 1", 1,
     r"cannot decode image file .*ade_corrupt/.*/training/ADE_0\.jpg"),
    ("label-out-of-range", "{ade} --data-root {range} --max-iters 1", 1,
     r"label file .*ade_range/.*/training/ADE_0\.png holds class id\(s\) 199: the dataset has 150 classes"),
    # '' is the current folder to the OS: a blank shell variable would train into the working directory
    ("empty-config", "{empty}", 2, r"^resnest-fast train: error: CONFIG is an empty string: expected a shipped config"),
    ("empty-work-dir", "{tiny} --work-dir {empty}", 2, r"--work-dir is an empty string: expected a folder"),
    ("empty-data-root", "{ade} --data-root {empty}", 2, r"--data-root is an empty string: expected a dataset folder"),
    ("empty-load-from", "{tiny} --load-from {empty}", 2, r"--load-from is an empty string: expected a checkpoint"),
    ("empty-resume", "{tiny} --resume {empty}", 2, r"--resume is an empty string: expected a checkpoint file"),
    # values that the first iteration or validation would meet as a traceback (or not at all: a wrong ignore_index
    # trains on ignored pixels), named before anything is made
    ("in-index-out-of-range", "{tiny} --cfg-options model.decode_head.in_index=7", 2,
     r"decode_head\.in_index=7 is out of range: the backbone returns 4 features \(out_indices \(0, 1, 2, 3\)\), so "
     r"in_index must be in -4\.\.3$"),
    ("aux-in-channels-wrong", "{tiny} --cfg-options model.auxiliary_head.in_channels=100", 2,
     r"auxiliary_head\.in_channels=100 does not fit feature 2 of the backbone, which has 128 channels$"),
    ("ignore-index-300", "{tiny} --cfg-options model.decode_head.ignore_index=300", 2,
     r"model\.decode_head\.ignore_index must be 255, the id .* ignored pixels; got 300$"),
    ("ignore-index-a-class", "{tiny} --cfg-options model.auxiliary_head.ignore_index=5", 2,
     r"model\.auxiliary_head\.ignore_index must be 255, .*got 5$"),
    ("tta-ratio-0", "{tiny} --cfg-options data.tta_ratios=(0,)", 2,
     r"tiny\.py: data\.tta_ratios must be a list of numbers from 0\.25 to 4\.0 .*, got 0 in \(0,\)$"),
    ("tta-ratio-tiny", "{tiny} --cfg-options data.tta_ratios=(1.0,0.01)", 2,
     r"data\.tta_ratios must be a list of numbers from 0\.25 to 4\.0 .*, got 0\.01 in \(1\.0, 0\.01\)$"),
    ("tta-ratio-huge", "{tiny} --cfg-options data.tta_ratios=(1e6,)", 2,
     r"data\.tta_ratios must be .*, got 1000000\.0 in"),
    ("tta-ratios-a-string", "{tiny} --cfg-options data.tta_ratios=abc", 2,
     r"data\.tta_ratios must be a list of numbers from 0\.25 to 4\.0 .*, got 'abc'$"),
    # values whose messages named neither the key nor what it takes ("'<' not supported between instances of 'str'
    # and 'float'", "'int' object is not iterable", "not enough values to unpack")
    ("lr-nan", "{tiny} --cfg-options schedule.optimizer.lr=nan", 2,
     r"error: schedule\.optimizer\.lr must be a finite number >= 0, got 'nan'$"),
    ("lr-inf", "{tiny} --cfg-options schedule.optimizer.lr=inf", 2, r"schedule\.optimizer\.lr must be a finite number"),
    ("lr-quoted", "{tiny} --cfg-options schedule.optimizer.lr='0.01'", 2,
     r"schedule\.optimizer\.lr must be a finite number >= 0, got '0\.01' \(a string: leave out the quotes\)$"),
    ("lr-none", "{tiny} --cfg-options schedule.optimizer.lr=None", 2,
     r"schedule\.optimizer\.lr must be a finite number >= 0, got None$"),
    ("momentum-negative", "{tiny} --cfg-options schedule.optimizer.momentum=-1", 2,
     r"schedule\.optimizer\.momentum must be a finite number >= 0, got -1$"),
    ("optimizer-not-a-dict", "{tiny} --cfg-options schedule.optimizer=1", 2,
     r"schedule\.optimizer must be a dict like dict\(type='SGD', .*got 1$"),
    ("lr-policy-not-a-dict", "{tiny} --cfg-options schedule.lr_policy=1", 2, r"schedule\.lr_policy must be a dict"),
    ("schedule-not-a-dict", "{tiny} --cfg-options schedule=1", 2,
     r"tiny\.py' \(or --cfg-options\): `schedule` must be a dict of its settings, got 1$"),
    ("runtime-not-a-dict", "{tiny} --cfg-options runtime=1", 2, r"`runtime` must be a dict of its settings, got 1$"),
    ("size-of-one-number", "{tiny} --cfg-options data.size=(32,)", 2,
     r"tiny\.py: data\.size must be a pair of positive ints \(h, w\), got \(32,\)$"),
    ("scale-of-one-number", "{tiny} --cfg-options data.scale=(32,)", 2,
     r"data\.scale must be a pair of positive ints \(long, short edge\), got \(32,\)$"),
    ("scale-far-too-large", "{tiny} --cfg-options data.scale=(100000,100000)", 2,
     r"tiny\.py: data\.scale \(100000, 100000\) resizes images to up to 10000000000 pixels: at most 67108864 "
     r"\(8192 x 8192\) are allowed"),
    ("crop-size-zero", "{tiny} --cfg-options data.crop_size=(32,0)", 2, r"data\.crop_size must be a pair of positive"),
    ("num-classes-a-word", "{tiny} --cfg-options data.num_classes=abc", 2,
     r"data\.num_classes must be a positive whole number, got 'abc'$"),
    ("ratio-range-reversed", "{tiny} --cfg-options data.ratio_range=(2.0,0.5)", 2,
     r"data\.ratio_range must be a pair \(low, high\) of positive numbers with low <= high, got \(2\.0, 0\.5\)$"),
    ("slide-without-any-window", "{tiny} --cfg-options model.test_cfg.mode=slide model.data_preprocessor.size=None",
     2, r"error: slide mode needs windows: set test_cfg's crop_size \(the model has no training crop"),
    ("label-out-of-range-in-a-worker", "{ade} --data-root {range} --max-iters 1 --num-workers 1", 1,
     (r"^resnest-fast train: error: label file .*ADE_0\.png holds class id\(s\) 199: the dataset has 150 classes "
      r"\(0\.\.149, 255 = ignore\) \(loading the batch of iteration 1\)$")),
]

# --backend cuda where it cannot run (where a GPU is, it may): what is missing from the build is said first, as no
# --device can help then
CUDA_REFUSED = r"^resnest-fast (train|test): error: backend='cuda' " + (
    r"runs on cuda tensors, but the input is on cpu$" if HAS_CUDA_KERNELS else
    r"is not available: resnest_fast\._C was (not built|built without cuda kernels) \(rebuild with FORCE_CUDA=1")
if not torch.cuda.is_available():
    TRAIN.append(("backend-cuda-without-a-gpu", "{tiny} --backend cuda", 2, CUDA_REFUSED))

TEST = [
    ("text-file-checkpoint", "{tiny} {root}/text.pth", 2, r"text\.pth' is not a PyTorch checkpoint"),
    ("state-dict-a-string", "{tiny} {root}/str_state_dict.pth", 2,
     r"str_state_dict\.pth' holds no state_dict: .* got a str \('abc'\)"),
    # the line naming the file, then the load report's line (as for missing keys or shape mismatches)
    ("int32-weights", "{tiny} {root}/int32.pth", 2,
     (r"int32\.pth' does not fit EncoderDecoder \(nothing was loaded\):\n"
      r"dtype mismatches, not a float-to-float cast \(\d+\): .*checkpoint int32 vs model float32"), 2),
    ("nan-weights", "{tiny} {root}/nan.pth", 2,
     r"nan\.pth' holds NaN or infinite values in \d+ of its \d+ floating-point tensors \(backbone\.stem\.0\.weight, "
     r".*: nothing was loaded"),
    ("negative-num-workers", "{tiny} {root}/run/iter_2.pth --num-workers -1", 2,
     r"num_workers .* must be a whole number >= 0, got -1"),
    ("out-under-a-file", "{tiny} {root}/run/iter_2.pth --out {root}/a_file/m.json", 2,
     r"--out '.*/a_file/m\.json' cannot be written: .*/a_file is a file, not a folder"),
    ("out-is-a-folder", "{tiny} {root}/run/iter_2.pth --out {root}/run", 2, r"--out '.*/run' is a folder"),
    ("data-root-for-synthetic-data", "{tiny} {root}/run/iter_2.pth --data-root {root}", 2,
     r"a data root \('.*', --data-root\) was given for the synthetic dataset"),
    ("corrupt-validation-image", "{ade} {root}/ade.pth --data-root {corrupt}", 2,
     r"cannot decode image file .*ade_corrupt/.*/validation/ADE_0\.jpg"),
    ("image-label-size-mismatch", "{ade} {root}/ade.pth --data-root {size}", 2,
     r"image .*validation/ADE_0\.jpg is 30x24 but its label .*validation/ADE_0\.png is 30x20"),
    ("rgb-label", "{ade} {root}/ade.pth --data-root {rgb}", 2,
     r"label file .*validation/ADE_0\.png has mode RGB .* must be a single-channel image"),
    ("label-out-of-range", "{ade} {root}/ade.pth --data-root {range}", 2,
     r"label file .*validation/ADE_0\.png holds class id\(s\) 199"),
    ("empty-config", "{empty} {root}/ade.pth", 2, r"CONFIG is an empty string: expected a shipped config"),
    ("empty-checkpoint", "{tiny} {empty}", 2, r"CHECKPOINT is an empty string: expected a checkpoint file"),
    ("empty-data-root", "{ade} {root}/ade.pth --data-root {empty}", 2,
     r"--data-root is an empty string: expected a dataset folder"),
    ("empty-out", "{tiny} {root}/run/iter_2.pth --out {empty}", 2,
     r"--out is an empty string: expected a JSON file to write"),
    ("tta-ratio-0", "{tta_zero} {root}/run/iter_2.pth --tta", 2,
     r"tta_zero\.py: data\.tta_ratios must be a list of numbers from 0\.25 to 4\.0 .*, got 0 in \(0,\)$"),
    ("tta-ratio-huge", "{tta_huge} {root}/run/iter_2.pth --tta", 2, r"data\.tta_ratios must be .*got 1000000\.0"),
    ("tta-ratios-a-string", "{tta_text} {root}/run/iter_2.pth --tta", 2, r"data\.tta_ratios must be .*got 'abc'$"),
    ("in-index-out-of-range", "{in_index} {root}/run/iter_2.pth", 2, r"decode_head\.in_index=7 is out of range"),
    ("label-without-its-image", "{ade} {root}/ade.pth --data-root {orphan}", 2,
     r"no image for label .*ade_orphan/.*/annotations/validation/ADE_9\.png: expected "
     r".*ade_orphan/.*/images/validation/ADE_9\.jpg$"),
    ("data-root-a-file", "{ade} {root}/ade.pth --data-root {root}/a_file", 2,
     r"ade20k data root '.*/a_file' is a file, not a folder \(the config's data\.root, or --data-root"),
    ("image-a-fifo", "{ade} {root}/ade.pth --data-root {fifo}", 2,
     r"cannot use image file .*ade_fifo/.*/validation/ADE_0\.jpg: it is a named pipe \(FIFO\), not a regular file$"),
    ("16-bit-label-out-of-range", "{ade} {root}/ade.pth --data-root {range16}", 2,
     r"label file .*validation/ADE_0\.png holds class id\(s\) 299: the dataset has 150 classes"),
]

if not torch.cuda.is_available():
    TEST.append(("backend-cuda-without-a-gpu", "{tiny} {root}/run/iter_2.pth --backend cuda", 2, CUDA_REFUSED))


def _run(world, capsys, command, argv, monkeypatch):
    # run from inside the snapshot: a path that resolves to the current folder must not touch anything either
    monkeypatch.chdir(world["root"])
    args = [a.format(**{k: str(v) for k, v in world.items()}) for a in argv.split()]
    if command == "train" and "--work-dir" not in args:
        args += ["--work-dir", str(world["root"] / "fresh")]
    before = _snapshot(world["root"])
    capsys.readouterr()
    code = main([command, *args, "--no-progress"])
    out, err = capsys.readouterr()
    assert _snapshot(world["root"]) == before, "a file was changed, or something was left behind"
    return code, out, err


def _assert_refused(world, capsys, command, row, monkeypatch):
    _, argv, exit_code, message, *count = row
    code, out, err = _run(world, capsys, command, argv, monkeypatch)
    assert "Traceback" not in err + out
    lines = err.strip().splitlines()
    assert code == exit_code and len(lines) == (count or [1])[0], err
    assert re.search(message, err.strip(), re.MULTILINE), err
    assert lines[0].startswith(f"resnest-fast {command}: error: "), err


@pytest.mark.parametrize("row", TRAIN, ids=[r[0] for r in TRAIN])
def test_train_refuses(world, capsys, one_thread, row, monkeypatch):
    _assert_refused(world, capsys, "train", row, monkeypatch)


@pytest.mark.parametrize("row", TEST, ids=[r[0] for r in TEST])
def test_test_refuses(world, capsys, one_thread, row, monkeypatch):
    _assert_refused(world, capsys, "test", row, monkeypatch)


def test_a_validation_without_a_labelled_pixel_reports_the_metrics_as_not_available(world, capsys, one_thread):
    """Every pixel ignored: IoU and accuracy are 0/0, which mmseg reports as NaN; the commands' summary lines say
    n/a instead of failing after the work was done."""
    work = world["root"] / "unlabelled_run"
    code = main(["train", world["ade"], "--data-root", world["unlabelled"], "--max-iters", "1", "--work-dir",
                 str(work), "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0 and "Traceback" not in err, err
    assert "; mIoU n/a, aAcc n/a, mAcc n/a on 1 val images;" in out, out
    code = main(["test", world["ade"], str(work / "iter_1.pth"), "--data-root", world["unlabelled"], "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0 and "aAcc n/a  mIoU n/a  mAcc n/a on 1 images" in out, out + err


@pytest.mark.skipif(torch.cuda.is_available(), reason="Triton runs on the GPU here")
@pytest.mark.parametrize("command, given", [("train", "--backend"), ("test", "--backend"), ("train", "default"),
                                            ("test", "default")])
def test_triton_without_a_gpu_or_its_interpreter_is_one_line_before_any_work(world, capsys, monkeypatch, one_thread,
                                                                              command, given):
    """--backend triton, or RESNEST_FAST_BACKEND=triton (read once at import: the default is patched here), on CPU
    tensors without TRITON_INTERPRET: refused before the model runs, not a traceback from its first forward."""
    from resnest_fast import backend

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    argv = {"train": "{tiny}", "test": "{tiny} {root}/run/iter_2.pth"}[command]
    if given == "default":
        monkeypatch.setattr(backend, "_default", "triton")
    else:
        argv += " --backend triton"
    code, out, err = _run(world, capsys, command, argv, monkeypatch)
    assert code == 2 and "Traceback" not in out + err, err
    expected = (f"resnest-fast {command}: error: backend='triton' " +
                ("is not available: the triton package is not installed" if not backend.ext.HAS_TRITON else
                 "needs CUDA tensors, or CPU tensors with TRITON_INTERPRET=1 set before importing resnest_fast; "
                 "the input is on cpu"))
    if given == "default":
        expected += " (the default backend, from RESNEST_FAST_BACKEND or set_default_backend)"
    assert err.strip() == expected


def test_python_train_refuses_an_empty_work_dir(world, one_thread, monkeypatch):
    from resnest_fast.training.train import SetupError, train

    monkeypatch.chdir(world["root"])
    before = _snapshot(world["root"])
    with pytest.raises(SetupError, match=r"^work dir \(--work-dir\) is an empty string: expected a folder$"):
        train(world["tiny"], work_dir="", max_iters=1, progress=False)
    assert _snapshot(world["root"]) == before


def test_a_work_dir_in_use_is_refused(world, capsys, one_thread, monkeypatch):
    """A run holding the work dir's lock (here this process): the second is refused before it looks or writes."""
    lock = WorkDirLock.acquire(world["root"] / "busy")
    try:
        code, _, err = _run(world, capsys, "train", f"{world['tiny']} --work-dir {world['root']}/busy", monkeypatch)
    finally:
        lock.release()
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert re.search(r"work dir '.*/busy' is in use by another training run \(process \d+ on .*\): wait for it",
                     err), err
    assert not (world["root"] / "busy").exists()  # released: the folder it made is gone with its lock


def test_test_out_on_a_full_disk_prints_the_metrics_then_one_line(world, capsys, monkeypatch, one_thread):
    """The metrics are computed and printed; writing --out fails (ENOSPC): exit 1, one error line, no file."""
    from tests.training.test_train_failures import _full_disk_after

    out = world["root"] / "metrics.json"
    _full_disk_after(monkeypatch, 10)
    code = main(["test", world["tiny"], str(world["root"] / "run" / "iter_2.pth"), "--out", str(out),
                 "--no-progress"])
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and "mIoU" in err, err
    assert err.strip().splitlines()[-1].startswith(f"resnest-fast test: error: no space left on {world['root']}: ")
    assert not out.exists() and not [p for p in os.listdir(world["root"]) if p.endswith(".tmp")]


def test_test_out_on_a_read_only_file_system_is_refused_before_the_evaluation(world, capsys, one_thread,
                                                                             read_only_tmpfs):
    out = read_only_tmpfs / "m.json"
    code = main(["test", world["tiny"], str(world["root"] / "run" / "iter_2.pth"), "--out", str(out),
                 "--no-progress"])
    out_, err = capsys.readouterr()
    assert code == 2 and "aAcc" not in out_ + err, err
    assert err.strip() == (f"resnest-fast test: error: --out '{out}' cannot be written: {read_only_tmpfs} is on a "
                           "read-only file system"), err
