"""mmseg 1.2.2's own ResNeSt config files, unchanged, give the model, the training values and the predictions of the
project's config of the same name (build_model, `infer`, `test`, `train`), and what this project does not run is
refused with one line naming the key.

References: mmengine's Config.fromfile for what the files say; the project's shipped configs for what they must
become. The end-to-end tests use configs that inherit the mmseg file (as a user's would) and shrink the model and
the image sizes; the project's counterpart inherits the shipped file with the same overrides.
"""
import json
import os
import pathlib

import numpy as np
import pytest
import torch
from PIL import Image

mmseg = pytest.importorskip("mmseg")
from mmengine.config import Config  # noqa: E402

from resnest_fast.cli import infer as infer_cli  # noqa: E402
from resnest_fast.cli import test as test_cli  # noqa: E402
from resnest_fast.cli import train as train_cli  # noqa: E402
from resnest_fast.segmentation import (  # noqa: E402
    build_model,
    list_configs,
    load_config,
    load_model,
    predict_scores,
    resolve_config,
)
from resnest_fast.segmentation.config import CONFIG_DIR, apply_cfg_options  # noqa: E402
from resnest_fast.training.data.io import load_image  # noqa: E402
from tests.training.data.files import write_png  # noqa: E402

MMSEG_DIR = pathlib.Path(mmseg.__file__).parent / ".mim" / "configs"
NAMES = sorted(p.stem for p in (MMSEG_DIR / "resnest").glob("*.py"))


def mmseg_file(name):
    return str(MMSEG_DIR / "resnest" / f"{name}.py")


def our_file(name):
    return str(next(CONFIG_DIR.rglob(f"{name}.py")))


def test_the_eight_files_are_the_projects_eight():
    assert len(NAMES) == 8 and set(NAMES) <= set(list_configs())


def _tuples(value):
    """mmengine gives lists where the files wrote tuples."""
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return tuple(_tuples(v) for v in value)
    return value


@pytest.mark.parametrize("name", NAMES)
def test_an_mmseg_file_gives_the_projects_model_and_training_values(name):
    ours, theirs = load_config(name), load_config(mmseg_file(name))
    reference = Config.fromfile(mmseg_file(name)).to_dict()
    # the model mmseg's file describes (mmengine's merge), with the one key whose meaning depends on the loader
    model = dict(theirs["model"], data_preprocessor=dict(theirs["model"]["data_preprocessor"]))
    assert model["data_preprocessor"].pop("bgr_to_rgb") is False
    ref_pre = reference["model"]["data_preprocessor"]
    assert ref_pre.pop("bgr_to_rgb") is True
    assert _tuples(model) == _tuples(reference["model"])
    # ... which is the project's model, ImageNet weights included
    assert theirs["model"]["pretrained"] == "open-mmlab://resnest101"
    assert theirs["model"] == ours["model"]
    # the same recipe: schedule, runtime, crop, pipeline values, batch, TTA ratios
    assert theirs["schedule"] == ours["schedule"] and theirs["runtime"] == ours["runtime"]
    assert theirs["crop_size"] == ours["crop_size"] == reference["crop_size"]
    assert dict(theirs["data"], root=None) == dict(ours["data"], root=None)
    # the data roots differ in spelling only (ADE20k: the folder or the one holding ADEChallengeData2016)
    assert theirs["data"]["root"] == reference["train_dataloader"]["dataset"]["data_root"]
    assert os.path.normpath(theirs["data"]["root"]).startswith(os.path.normpath(ours["data"]["root"]))
    assert theirs["schedule"]["max_iters"] == reference["train_cfg"]["max_iters"]
    assert theirs["schedule"]["checkpoint_interval"] == reference["default_hooks"]["checkpoint"]["interval"]
    crop = reference["train_dataloader"]["dataset"]["pipeline"][3]
    assert theirs["data"]["crop_size"] == tuple(crop["crop_size"])
    assert theirs["data"]["cat_max_ratio"] == crop["cat_max_ratio"]


def test_a_dict_loaded_by_mmengine_is_translated_alike():
    name = NAMES[-1]
    from_file = load_config(mmseg_file(name))
    from_dict = resolve_config(Config.fromfile(mmseg_file(name)).to_dict())
    assert from_dict == {k: v for k, v in from_file.items() if k not in ("filename", "name")}
    assert from_dict["model"]["data_preprocessor"]["bgr_to_rgb"] is False


@pytest.mark.parametrize("name", NAMES[::3])
def test_an_mmseg_file_builds_the_same_module_tree(name):
    with torch.device("meta"):
        ours, theirs = build_model(name), build_model(mmseg_file(name))
    assert repr(theirs) == repr(ours)
    assert list(theirs.state_dict()) == list(ours.state_dict())
    assert theirs.input_order == ours.input_order == "rgb"


# ------------------------------------------------------------------------------------------ small end-to-end runs
SMALL_MODEL = """
model = dict(pretrained=None, backbone=dict(depth=50, stem_channels=16, base_channels=8),
             data_preprocessor=dict(size=(32, 48)),
             decode_head=dict(in_channels=256, channels=16), auxiliary_head=dict(in_channels=128, channels=8))
"""
# the same sizes in each schema: train at 40x64 resized by 0.5-2, crop 32x48, test at 40x64
MMSEG_SMALL = SMALL_MODEL + """
train_pipeline = [
    dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=(64, 40), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=(32, 48), cat_max_ratio=0.75), dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'), dict(type='PackSegInputs')]
test_pipeline = [dict(type='LoadImageFromFile'), dict(type='Resize', scale=(64, 40), keep_ratio=True),
                 dict(type='LoadAnnotations'), dict(type='PackSegInputs')]
train_dataloader = dict(batch_size=2, num_workers=0, dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(num_workers=0, dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
"""
OURS_SMALL = SMALL_MODEL + """
data = dict(scale=(64, 40), crop_size=(32, 48), batch_size=2, num_workers=0)
"""
NAME = "resnest_s101-d8_fcn_4xb2-80k_cityscapes-512x1024"


def _small_configs(folder):
    folder = pathlib.Path(folder)
    theirs, ours = folder / "mmseg_small.py", folder / "ours_small.py"
    theirs.write_text(f"_base_ = {mmseg_file(NAME)!r}\n{MMSEG_SMALL}")
    ours.write_text(f"_base_ = {our_file(NAME)!r}\n{OURS_SMALL}")
    return str(theirs), str(ours)


@pytest.fixture
def small(tmp_path, one_thread):
    """(mmseg-style config, project config, shared random checkpoint, cityscapes root with one val image)."""
    theirs, ours = _small_configs(tmp_path)
    torch.manual_seed(0)
    model = build_model(ours)
    for m in model.modules():  # BN statistics away from (0, 1), so that the input's scaling matters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    checkpoint = tmp_path / "random.pth"
    torch.save({"state_dict": model.state_dict()}, checkpoint)
    rng = np.random.default_rng(0)
    root = tmp_path / "cityscapes"
    for split, city, frame in (("train", "aachen", "000000_000019"), ("train", "aachen", "000001_000019"),
                               ("val", "frankfurt", "000000_000294")):
        yy, xx = np.mgrid[0:40, 0:64]
        img = np.stack([xx * 4, yy * 6, 255 - xx * 3], -1) + rng.integers(0, 40, (40, 64, 3))
        write_png(str(root / "leftImg8bit" / split / city / f"{city}_{frame}_leftImg8bit.png"),
                  np.clip(img, 0, 255).astype(np.uint8))
        write_png(str(root / "gtFine" / split / city / f"{city}_{frame}_gtFine_labelTrainIds.png"),
                  rng.choice(np.r_[np.arange(19), 255], size=(40, 64)).astype(np.uint8))
    return theirs, ours, str(checkpoint), str(root)


def test_an_mmseg_file_gives_the_same_logits_and_predictions_as_the_projects(small, tmp_path, capsys):
    theirs, ours, checkpoint, root = small
    image = next(pathlib.Path(root, "leftImg8bit", "val").rglob("*.png"))
    # what `infer` computes, in process: the logits at the original size
    logits, models = {}, {}
    for which, config in (("theirs", theirs), ("ours", ours)):
        models[which], _, _ = load_model(config, checkpoint, device="cpu")
        logits[which] = predict_scores(models[which], load_image(str(image)), scale=(64, 40))
    torch.testing.assert_close(logits["theirs"], logits["ours"], rtol=1e-5, atol=1e-5)
    assert models["theirs"].input_order == models["ours"].input_order == "rgb"
    # fed BGR (mmseg's flag taken literally) the logits move by far more than the tolerance
    model, _, _ = load_model(ours, checkpoint, device="cpu")
    swapped = predict_scores(model, np.ascontiguousarray(load_image(str(image))[..., ::-1]), scale=(64, 40))
    assert (swapped - logits["ours"]).abs().max() > 1e-2
    # the command, each config on the same file: the same label maps
    labels = {}
    for which, config in (("theirs", theirs), ("ours", ours)):
        out = tmp_path / f"out_{which}"
        assert infer_cli.main([config, checkpoint, str(image), "--out-dir", str(out), "--device", "cpu",
                               "--no-progress"]) == 0
        labels[which] = np.asarray(Image.open(next(out.rglob("*_pred.png"))))
    np.testing.assert_array_equal(labels["theirs"], labels["ours"])
    np.testing.assert_array_equal(labels["ours"], logits["ours"].argmax(0).numpy())


def test_test_scores_an_mmseg_file_as_the_projects(small, tmp_path):
    theirs, ours, checkpoint, root = small
    metrics = {}
    for which, config in (("theirs", theirs), ("ours", ours)):
        out = tmp_path / f"{which}.json"
        assert test_cli.main([config, checkpoint, "--data-root", root, "--out", str(out), "--device", "cpu",
                              "--no-progress"]) == 0
        metrics[which] = json.loads(out.read_text())
    for key in ("aAcc", "mIoU", "mAcc", "num_images"):
        assert metrics["theirs"][key] == metrics["ours"][key], key


def test_train_runs_an_mmseg_file_with_mmseg_cfg_options(small, tmp_path):
    theirs, _, _, root = small
    work = tmp_path / "work"
    assert train_cli.main([theirs, "--work-dir", str(work), "--data-root", root, "--device", "cpu", "--no-progress",
                           "--cfg-options", "train_cfg.max_iters=2", "train_cfg.val_interval=2",
                           "default_hooks.checkpoint.interval=2", "train_dataloader.num_workers=0",
                           "train_dataloader.dataset.pipeline.3.crop_size=(24, 40)"]) == 0
    state = torch.load(work / "iter_2.pth", map_location="cpu", weights_only=False)
    assert state["meta"]["iter"] == 2
    assert state["meta"]["config"]["data"]["crop_size"] == [24, 40]
    assert state["meta"]["config"]["data"]["batch_size"] == 2


# ------------------------------------------------------------------------------------------------- refusals
def _derived(tmp_path, text):
    path = tmp_path / "derived.py"
    path.write_text(f"_base_ = {mmseg_file(NAME)!r}\n{text}\n")
    return str(path)


@pytest.mark.parametrize("text, key", [
    ("custom_imports = dict(imports=['my_plugin'])", "custom_imports"),
    ("train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=2, _delete_=True)", "train_cfg.type"),
    ("param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=100), "
     "dict(type='PolyLR', power=0.9, begin=100, end=80000, by_epoch=False)]", "param_scheduler"),
    ("train_dataloader = dict(dataset=dict(pipeline=[dict(type='LoadImageFromFile'), dict(type='RandomRotate', "
     "prob=0.5, degree=10)]))", "train_dataloader.dataset.pipeline"),
    ("optim_wrapper = dict(clip_grad=dict(max_norm=1.0))", "optim_wrapper.clip_grad"),
    ("default_scope = 'mmdet'", "default_scope"),
    ("load_from = 'x.pth'", "load_from"),
    ("data = dict(batch_size=1)", "data"),
    ("optim_wrapper = dict(optimizer=dict(lr=None))", "optim_wrapper.optimizer.lr"),
    ("optim_wrapper = dict(optimizer=dict(weight_decay='5e-4'))", "optim_wrapper.optimizer.weight_decay"),
])
def test_what_the_project_does_not_run_is_refused_naming_the_key(tmp_path, text, key):
    with pytest.raises(ValueError, match=f"derived.py: {key}: "):
        load_config(_derived(tmp_path, text))


@pytest.mark.parametrize("text", ["model = dict(decode_head=dict(num_classes={{_base_.num_classes}}))",
                                  "from mmengine.config import read_base\nwith read_base():\n    pass"])
def test_mmengine_substitution_syntax_is_refused_by_name(tmp_path, text):
    with pytest.raises(ValueError, match="mmengine's .* is not supported"):
        load_config(_derived(tmp_path, text))


def test_the_commands_refuse_an_unsupported_mmseg_file_in_one_line(tmp_path, capsys):
    config = _derived(tmp_path, "custom_imports = dict(imports=['my_plugin'])")
    assert test_cli.main([config, str(tmp_path / "none.pth"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "custom_imports" in err[0] and "Traceback" not in err[0]


def test_cfg_options_index_lists_as_mmengine_does():
    cfg = {"pipeline": [{"type": "A"}, {"type": "RandomCrop", "crop_size": (512, 512)}]}
    out = apply_cfg_options(cfg, ["pipeline.1.crop_size=(8, 8)"])
    assert out["pipeline"][1]["crop_size"] == (8, 8) and cfg["pipeline"][1]["crop_size"] == (512, 512)
    reference = Config(cfg)
    reference.merge_from_dict({"pipeline.1.crop_size": (8, 8)})
    assert reference.to_dict()["pipeline"] == out["pipeline"]
    with pytest.raises(ValueError, match="pipeline is a list of 2 items, '5' is not an index"):
        apply_cfg_options(cfg, ["pipeline.5.crop_size=(8, 8)"])
