"""mmseg 1.x config files (mmengine's schema) translated into this project's (`model`, `data`, `schedule`, `runtime`).

mmseg describes a run with registry objects: `train_dataloader` / `val_dataloader` (a dataset type, `data_root`,
`data_prefix` and a pipeline of transforms), `optim_wrapper`, `param_scheduler`, `train_cfg` (the loop),
`default_hooks` (logging, checkpoints). This project runs one fixed recipe, mmseg's for the ResNeSt table, whose
free values live in plain dicts. The translation reads every value of that recipe from the mmseg keys and refuses,
with one line naming the key, whatever the recipe cannot do (another transform, optimiser, scheduler, hook,
dataset layout, `custom_imports`, ...), so an mmseg file either runs as mmseg would run it or does not run.

Channel order. mmcv's LoadImageFromFile decodes BGR (OpenCV) and mmseg's `bgr_to_rgb=True` (or `rgb_to_bgr=True`:
both mean "swap") makes the network see RGB; without it the network sees BGR. Every loader of this project
decodes RGB (pillow), so what the network must see is kept by swapping exactly when mmseg does not: mmseg's
`bgr_to_rgb=True` becomes `bgr_to_rgb=False` here, and mmseg's no-swap becomes `rgb_to_bgr=True`. This is the one
place where the flag is converted; afterwards `data_preprocessor` keys have this project's meaning (they describe
the channel order of what `EncoderDecoder` is given, see its docstring), and a model built from an mmseg file and
one built from the project's file of the same name are the same model, fed the same RGB arrays.
"""
import copy
from typing import Optional

from resnest_fast.utils import SGD_NUMERIC_OPTIONS, check_number

__all__ = ["MMSEG_KEYS", "is_mmseg_config", "from_mmseg_config"]

# Top-level keys of mmengine's schema that this project's schema never has: one of them marks an mmseg file.
MMSEG_KEYS = ("default_scope", "train_dataloader", "val_dataloader", "test_dataloader", "optim_wrapper",
              "param_scheduler", "train_cfg", "val_cfg", "test_cfg", "default_hooks", "custom_imports")
_OURS = ("data", "schedule", "runtime")

# Every other top-level key is left unread: the runner's settings that change no result here (env_cfg, visualizer,
# log_processor, log_level, ...) and the helper variables of mmseg's files (dataset_type, data_root, crop_size,
# train_pipeline, ...), which are copied by value into the keys that matter (mmengine trains on the dataloader's
# pipeline, not on `train_pipeline`), so overriding one changes nothing, in mmseg as here.
_REFUSED = {
    "custom_imports": "plugin modules are not imported: this project builds only its own ResNeSt segmenters",
    "custom_hooks": "hooks are not supported: the training loop is fixed (see resnest_fast.training.train)",
    "model_wrapper_cfg": "the model is wrapped in DistributedDataParallel under torchrun, nothing else",
    "work_dir": "pass --work-dir to `resnest-fast train` instead",
    "compile": "torch.compile is not applied by the training loop",
}

# dataset type -> (our data.type, image folder prefix, label folder prefix, default splits, reduce_zero_label)
_DATASETS = {
    "CityscapesDataset": ("cityscapes", "leftImg8bit/", "gtFine/", ("train", "val"), False),
    "ADE20KDataset": ("ade20k", "images/", "annotations/", ("training", "validation"), True),
}
_DATASET_DEFAULTS = {
    "CityscapesDataset": dict(img_suffix="_leftImg8bit.png", seg_map_suffix="_gtFine_labelTrainIds.png",
                              reduce_zero_label=False, ignore_index=255),
    "ADE20KDataset": dict(img_suffix=".jpg", seg_map_suffix=".png", reduce_zero_label=True, ignore_index=255),
}
_PHOTOMETRIC_DEFAULTS = dict(brightness_delta=32, contrast_range=(0.5, 1.5), saturation_range=(0.5, 1.5),
                             hue_delta=18)


class _Reader:
    """Error messages that name the file and the key."""

    def __init__(self, cfg: dict):
        self.where = cfg.get("filename", "the mmseg config")

    def fail(self, key: str, why: str):
        raise ValueError(f"{self.where}: {key}: {why}")

    def dict_of(self, value, key: str, kind: Optional[str] = None) -> dict:
        if not isinstance(value, dict):
            self.fail(key, f"expected a dict, got {type(value).__name__}")
        value = dict(value)
        if kind is not None and value.get("type") != kind:
            self.fail(f"{key}.type", f"only {kind!r} is supported, got {value.get('type')!r}")
        return value

    def only(self, value: dict, key: str, allowed) -> None:
        extra = sorted(set(value) - set(allowed) - {"type"})
        if extra:
            self.fail(key, f"unsupported keys {extra} (supported: {sorted(allowed)})")

    def expect(self, value: dict, key: str, name: str, default):
        """value[name], which must equal `default` when given."""
        got = value.get(name, default)
        if _plain(got) != _plain(default):
            self.fail(f"{key}.{name}", f"only {default!r} is supported, got {got!r}")
        return got


def _plain(value):
    """Lists and tuples compare alike (mmengine turns tuples into lists in some paths)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _pair(r: _Reader, value, key: str) -> tuple:
    if not (isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value)):
        r.fail(key, f"expected a pair of numbers, got {value!r}")
    return tuple(value)


def is_mmseg_config(cfg: dict) -> bool:
    """True for a config in mmseg/mmengine's schema (one of MMSEG_KEYS at the top level)."""
    return isinstance(cfg, dict) and any(k in cfg for k in MMSEG_KEYS)


def _steps(r: _Reader, pipeline, key: str, expected) -> list:
    """The pipeline's steps as dicts, when their types are `expected` in that order."""
    if not isinstance(pipeline, (list, tuple)):
        r.fail(key, f"expected a list of transforms, got {type(pipeline).__name__}")
    types_ = [s.get("type") if isinstance(s, dict) else s for s in pipeline]
    if types_ != list(expected):
        r.fail(key, f"only mmseg's pipeline {list(expected)} is supported, got {types_}")
    return [dict(s) for s in pipeline]


def _load_steps(r: _Reader, load_img: dict, load_ann: dict, key: str, i_img: int, i_ann: int, reduce: bool) -> None:
    # mmcv decodes with OpenCV and this project with pillow: the same pixels for PNG, and for JPEG within the
    # libjpeg differences the two libraries have anyway; the channel order is handled by the preprocessor.
    r.only(load_img, f"{key}.{i_img}", ("backend_args", "imdecode_backend", "color_type", "to_float32"))
    r.expect(load_img, f"{key}.{i_img}", "backend_args", None)
    r.expect(load_img, f"{key}.{i_img}", "to_float32", False)
    r.expect(load_img, f"{key}.{i_img}", "color_type", "color")
    r.only(load_ann, f"{key}.{i_ann}", ("reduce_zero_label", "backend_args", "imdecode_backend"))
    r.expect(load_ann, f"{key}.{i_ann}", "backend_args", None)
    if load_ann.get("reduce_zero_label") not in (None, reduce):
        r.fail(f"{key}.{i_ann}.reduce_zero_label", f"this dataset's rule is {reduce}, got "
               f"{load_ann['reduce_zero_label']!r}")


def _train_pipeline(r: _Reader, pipeline, key: str, reduce: bool) -> dict:
    names = ("LoadImageFromFile", "LoadAnnotations", "RandomResize", "RandomCrop", "RandomFlip",
             "PhotoMetricDistortion", "PackSegInputs")
    load_img, load_ann, resize, crop, flip, photo, pack = _steps(r, pipeline, key, names)
    _load_steps(r, load_img, load_ann, key, 0, 1, reduce)
    r.only(resize, f"{key}.2", ("scale", "ratio_range", "keep_ratio"))
    r.expect(resize, f"{key}.2", "keep_ratio", True)
    r.only(crop, f"{key}.3", ("crop_size", "cat_max_ratio", "ignore_index"))
    r.expect(crop, f"{key}.3", "ignore_index", 255)
    r.only(flip, f"{key}.4", ("prob", "direction"))
    r.expect(flip, f"{key}.4", "prob", 0.5)
    r.expect(flip, f"{key}.4", "direction", "horizontal")
    r.only(photo, f"{key}.5", _PHOTOMETRIC_DEFAULTS)
    for name, default in _PHOTOMETRIC_DEFAULTS.items():
        r.expect(photo, f"{key}.5", name, default)
    r.only(pack, f"{key}.6", ("meta_keys",))
    if "ratio_range" not in resize:
        r.fail(f"{key}.2.ratio_range", "RandomResize needs a ratio_range (the recipe draws the scale's ratio)")
    return dict(scale=_pair(r, resize.get("scale"), f"{key}.2.scale"),
                ratio_range=_pair(r, resize["ratio_range"], f"{key}.2.ratio_range"),
                crop_size=_pair(r, crop.get("crop_size"), f"{key}.3.crop_size"),
                cat_max_ratio=crop.get("cat_max_ratio", 1.0))  # mmseg's RandomCrop default: no check


def _test_pipeline(r: _Reader, pipeline, key: str, reduce: bool) -> tuple:
    # labels loaded after Resize: scored at the original size, as the project's evaluation does
    names = ("LoadImageFromFile", "Resize", "LoadAnnotations", "PackSegInputs")
    load_img, resize, load_ann, pack = _steps(r, pipeline, key, names)
    _load_steps(r, load_img, load_ann, key, 0, 2, reduce)
    r.only(resize, f"{key}.1", ("scale", "keep_ratio"))
    r.expect(resize, f"{key}.1", "keep_ratio", True)
    r.only(pack, f"{key}.3", ("meta_keys",))
    return _pair(r, resize.get("scale"), f"{key}.1.scale")


def _tta_ratios(r: _Reader, pipeline) -> Optional[tuple]:
    """The ratios of mmseg's TestTimeAug (each with and without a horizontal flip: the project's --tta)."""
    if pipeline is None:
        return None
    key = "tta_pipeline"
    _, tta = _steps(r, pipeline, key, ("LoadImageFromFile", "TestTimeAug"))
    transforms = tta.get("transforms")
    if not (isinstance(transforms, (list, tuple)) and len(transforms) == 4):
        r.fail(f"{key}.1.transforms", "expected mmseg's four groups [Resize x ratios, flips, LoadAnnotations, "
               "PackSegInputs]")
    resizes, flips = transforms[0], transforms[1]
    ratios = []
    for i, step in enumerate(resizes):
        step = r.dict_of(step, f"{key}.1.transforms.0.{i}", "Resize")
        r.only(step, f"{key}.1.transforms.0.{i}", ("scale_factor", "keep_ratio"))
        r.expect(step, f"{key}.1.transforms.0.{i}", "keep_ratio", True)
        ratios.append(float(step.get("scale_factor", 0)))
    probs = [(f.get("type"), f.get("prob"), f.get("direction", "horizontal")) for f in flips]
    if sorted(probs, key=str) != sorted([("RandomFlip", 0.0, "horizontal"), ("RandomFlip", 1.0, "horizontal")],
                                        key=str):
        r.fail(f"{key}.1.transforms.1", "only mmseg's pair of horizontal flips (prob 0. and 1.) is supported")
    return tuple(ratios)


def _dataset(r: _Reader, loader: dict, key: str) -> tuple:
    """(our data.type, root, split, pipeline, reduce_zero_label) of a dataloader's dataset."""
    dataset = r.dict_of(loader.get("dataset"), f"{key}.dataset")
    kind = dataset.get("type")
    if kind not in _DATASETS:
        r.fail(f"{key}.dataset.type", f"supported: {sorted(_DATASETS)}, got {kind!r}")
    ours, img_prefix, seg_prefix, _, reduce = _DATASETS[kind]
    r.only(dataset, f"{key}.dataset", ("data_root", "data_prefix", "pipeline", *_DATASET_DEFAULTS[kind]))
    for name, default in _DATASET_DEFAULTS[kind].items():
        r.expect(dataset, f"{key}.dataset", name, default)
    prefix = r.dict_of(dataset.get("data_prefix"), f"{key}.dataset.data_prefix")
    img_path, seg_path = str(prefix.get("img_path", "")).rstrip("/"), str(prefix.get("seg_map_path", "")).rstrip("/")
    split = img_path[len(img_prefix):]
    if not img_path.startswith(img_prefix) or "/" in split or not split or seg_path != seg_prefix + split:
        r.fail(f"{key}.dataset.data_prefix", f"expected img_path='{img_prefix}<split>' and "
               f"seg_map_path='{seg_prefix}<split>' (the dataset's own layout), got {prefix}")
    root = dataset.get("data_root")
    if not root:
        r.fail(f"{key}.dataset.data_root", "is not set")
    return ours, str(root), split, dataset.get("pipeline"), reduce


def _data(r: _Reader, cfg: dict) -> dict:
    train = r.dict_of(cfg.get("train_dataloader"), "train_dataloader")
    r.only(train, "train_dataloader", ("batch_size", "num_workers", "persistent_workers", "sampler", "dataset",
                                        "pin_memory"))
    sampler = r.dict_of(train.get("sampler"), "train_dataloader.sampler", "InfiniteSampler")
    r.only(sampler, "train_dataloader.sampler", ("shuffle", "seed"))
    r.expect(sampler, "train_dataloader.sampler", "shuffle", True)
    kind, root, train_split, pipeline, reduce = _dataset(r, train, "train_dataloader")
    values = _train_pipeline(r, pipeline, "train_dataloader.dataset.pipeline", reduce)

    val = r.dict_of(cfg.get("val_dataloader"), "val_dataloader")
    test = cfg.get("test_dataloader", val)
    if _plain(test) != _plain(val):
        r.fail("test_dataloader", "must be the val_dataloader (`resnest-fast test` scores the validation split; "
               "override both alike)")
    r.only(val, "val_dataloader", ("batch_size", "num_workers", "persistent_workers", "sampler", "dataset"))
    val_sampler = r.dict_of(val.get("sampler", dict(type="DefaultSampler")), "val_dataloader.sampler",
                            "DefaultSampler")
    r.expect(val_sampler, "val_dataloader.sampler", "shuffle", False)
    val_kind, val_root, val_split, val_pipeline, _ = _dataset(r, val, "val_dataloader")
    if (val_kind, val_root) != (kind, root):
        r.fail("val_dataloader.dataset", f"must be the training set's dataset and data_root ({kind}, {root!r}), "
               f"got ({val_kind}, {val_root!r})")
    scale = _test_pipeline(r, val_pipeline, "val_dataloader.dataset.pipeline", reduce)
    if scale != values["scale"]:
        r.fail("val_dataloader.dataset.pipeline.1.scale", f"{scale} differs from the training RandomResize scale "
               f"{values['scale']}: this project has one data.scale for both")
    for name in ("val_evaluator", "test_evaluator"):
        evaluator = r.dict_of(cfg.get(name, dict(type="IoUMetric")), name, "IoUMetric")
        r.only(evaluator, name, ("iou_metrics",))
    data = dict(type=kind, root=root, train_split=train_split, val_split=val_split, scale=values["scale"],
                ratio_range=values["ratio_range"], crop_size=values["crop_size"],
                cat_max_ratio=values["cat_max_ratio"], batch_size=train.get("batch_size", 1),
                num_workers=train.get("num_workers", 0))
    if reduce:
        data["reduce_zero_label"] = True
    tta_ratios = _tta_ratios(r, cfg.get("tta_pipeline"))
    if tta_ratios is not None:
        data["tta_ratios"] = tta_ratios
    return data


def _schedule(r: _Reader, cfg: dict, runtime: dict) -> dict:
    loop = r.dict_of(cfg.get("train_cfg"), "train_cfg", "IterBasedTrainLoop")
    r.only(loop, "train_cfg", ("max_iters", "val_interval", "val_begin"))
    r.expect(loop, "train_cfg", "val_begin", 1)
    max_iters = loop.get("max_iters")
    for name, kind in (("val_cfg", "ValLoop"), ("test_cfg", "TestLoop")):
        r.only(r.dict_of(cfg.get(name, dict(type=kind)), name, kind), name, ())

    wrapper = r.dict_of(cfg.get("optim_wrapper"), "optim_wrapper")
    if wrapper.get("type") not in ("OptimWrapper", "AmpOptimWrapper"):
        r.fail("optim_wrapper.type", f"supported: 'OptimWrapper', 'AmpOptimWrapper', got {wrapper.get('type')!r}")
    r.only(wrapper, "optim_wrapper", ("optimizer", "clip_grad", "dtype", "loss_scale"))
    r.expect(wrapper, "optim_wrapper", "clip_grad", None)
    if wrapper["type"] == "AmpOptimWrapper":
        r.expect(wrapper, "optim_wrapper", "loss_scale", "dynamic")
        dtype = wrapper.get("dtype") or "float16"
        amps = {"float16": "fp16", "bfloat16": "bf16"}
        if dtype not in amps:
            r.fail("optim_wrapper.dtype", f"supported: {sorted(amps)}, got {dtype!r}")
        runtime["amp"] = amps[dtype]
    optimizer = r.dict_of(wrapper.get("optimizer"), "optim_wrapper.optimizer")
    for key in SGD_NUMERIC_OPTIONS:  # named here by mmseg's key, not ours
        if key in optimizer:
            check_number(optimizer[key], f"{r.where}: optim_wrapper.optimizer.{key}:")

    schedulers = cfg.get("param_scheduler")
    schedulers = [schedulers] if isinstance(schedulers, dict) else schedulers
    if not (isinstance(schedulers, (list, tuple)) and len(schedulers) == 1):
        r.fail("param_scheduler", f"only one PolyLR is supported (no warm-up chain), got {schedulers!r}")
    poly = r.dict_of(schedulers[0], "param_scheduler.0", "PolyLR")
    r.only(poly, "param_scheduler.0", ("eta_min", "power", "begin", "end", "by_epoch"))
    r.expect(poly, "param_scheduler.0", "by_epoch", False)
    if "end" not in poly:
        r.fail("param_scheduler.0.end", "is required (mmengine's default, no end, never decays)")
    lr_policy = dict(type="poly", power=poly.get("power", 1.0), eta_min=poly.get("eta_min", 0.0))
    # begin/end equal to the whole run are left out so that --max-iters moves the end with the run, as in the
    # project's schedules
    if poly.get("begin", 0) != 0:
        lr_policy["begin"] = poly["begin"]
    if poly["end"] != max_iters:
        lr_policy["end"] = poly["end"]

    hooks = r.dict_of(cfg.get("default_hooks", {}), "default_hooks")
    kinds = dict(timer="IterTimerHook", logger="LoggerHook", param_scheduler="ParamSchedulerHook",
                 checkpoint="CheckpointHook", sampler_seed="DistSamplerSeedHook", visualization="SegVisualizationHook")
    r.only(hooks, "default_hooks", kinds)
    for name, hook in hooks.items():
        hook = r.dict_of(hook, f"default_hooks.{name}", kinds[name])
        if name == "logger":
            r.only(hook, "default_hooks.logger", ("interval", "log_metric_by_epoch"))
            r.expect(hook, "default_hooks.logger", "log_metric_by_epoch", False)
            runtime["log_interval"] = hook.get("interval", 10)
        elif name == "checkpoint":
            r.only(hook, "default_hooks.checkpoint", ("interval", "by_epoch", "max_keep_ckpts"))
            r.expect(hook, "default_hooks.checkpoint", "by_epoch", False)
            if hook.get("max_keep_ckpts", -1) > 0:
                runtime["keep_checkpoints"] = hook["max_keep_ckpts"]
        elif name == "visualization":
            r.only(hook, "default_hooks.visualization", ("draw", "interval"))
            r.expect(hook, "default_hooks.visualization", "draw", False)
        else:
            r.only(hook, f"default_hooks.{name}", ())
    schedule = dict(optimizer=optimizer, lr_policy=lr_policy, max_iters=max_iters,
                    val_interval=loop.get("val_interval", 1000))
    interval = (hooks.get("checkpoint") or {}).get("interval", -1)
    schedule["checkpoint_interval"] = interval if interval > 0 else max_iters
    return schedule


def _runtime(r: _Reader, cfg: dict, defaults: dict) -> dict:
    runtime = dict(defaults)
    scope = cfg.get("default_scope", "mmseg")
    if scope != "mmseg":
        r.fail("default_scope", f"only 'mmseg' is supported, got {scope!r}")
    if cfg.get("load_from") is not None:
        r.fail("load_from", "is not read from the config: pass --load-from to `resnest-fast train`")
    if cfg.get("resume"):
        r.fail("resume", "is not read from the config: pass --resume to `resnest-fast train`")
    randomness = r.dict_of(cfg.get("randomness", {}), "randomness")
    r.only(randomness, "randomness", ("seed", "deterministic", "diff_rank_seed"))
    r.expect(randomness, "randomness", "diff_rank_seed", False)
    if randomness.get("seed") is not None:
        runtime["seed"] = randomness["seed"]
    if "deterministic" in randomness:
        runtime["deterministic"] = bool(randomness["deterministic"])
    tta_model = r.dict_of(cfg.get("tta_model", dict(type="SegTTAModel")), "tta_model", "SegTTAModel")
    r.only(tta_model, "tta_model", ())
    scaling = cfg.get("auto_scale_lr")
    if scaling is not None and r.dict_of(scaling, "auto_scale_lr").get("enable"):
        r.fail("auto_scale_lr.enable", "learning-rate scaling is not supported: set the lr you want")
    return runtime


def _model(r: _Reader, model: dict) -> dict:
    model = copy.deepcopy(r.dict_of(model, "model"))
    pre = dict(model.get("data_preprocessor") or {})
    if pre.get("bgr_to_rgb") and pre.get("rgb_to_bgr"):
        r.fail("model.data_preprocessor", "bgr_to_rgb and rgb_to_bgr cannot both be True (mmseg refuses it too)")
    swap = bool(pre.pop("bgr_to_rgb", False)) or bool(pre.pop("rgb_to_bgr", False))
    # see the module docstring: our loaders already give RGB, which is what mmseg's swap produces
    if swap:
        pre["bgr_to_rgb"] = False
    else:
        pre["rgb_to_bgr"] = True
    model["data_preprocessor"] = pre
    return model


def from_mmseg_config(cfg: dict, runtime_defaults: dict) -> dict:
    """This project's config (model, data, schedule, runtime, crop_size, filename, name) for an mmseg 1.x config
    dict (its files merged, as mmengine's Config.fromfile gives them). runtime_defaults: the project's `runtime`
    values for what mmseg's files do not say (the number of checkpoints kept, the seed, threads). Raises
    ValueError naming the key for what this project does not run."""
    r = _Reader(cfg)
    mixed = [k for k in _OURS if k in cfg]
    if mixed:
        r.fail(mixed[0], "an mmseg config (train_dataloader, optim_wrapper, ...) cannot also use this project's "
               f"keys {list(_OURS)}: set the mmseg keys (e.g. train_dataloader.batch_size) instead")
    for key, why in _REFUSED.items():
        if cfg.get(key):
            r.fail(key, why)
    runtime = _runtime(r, cfg, runtime_defaults)
    data = _data(r, cfg)
    out = dict(model=_model(r, cfg.get("model")), data=data, schedule=_schedule(r, cfg, runtime), runtime=runtime,
               crop_size=data["crop_size"])
    for key in ("filename", "name"):
        if key in cfg:
            out[key] = cfg[key]
    return out
