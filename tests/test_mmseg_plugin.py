"""resnest_fast.mmseg against the installed mmsegmentation 1.2.2: mmseg's own config files of the ResNeSt table with
the backbone swapped to `ResNeStFast` (the one changed line plus custom_imports), built through mmseg's registry
and compared with mmseg's `ResNeSt` models holding the same weights; mmengine's init_cfg / pretrained handling; a
few iterations of mmseg's training loop (mmengine's Runner) on a tiny dataset in mmseg's on-disk layout."""
import copy
import json
import math
import pathlib
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch

from resnest_fast.nn.bn_relu_conv import lean_bn_relu_conv_applies
from resnest_fast.testing.small_models import shrink_model_cfg
from resnest_fast.testing.tolerances import FACTOR, assert_max_abs
from tests.mmseg_reference import import_mmseg
from tests.parity import randomize_model

ROOT = pathlib.Path(__file__).resolve().parents[1]
REFERENCE_FACTS = ROOT / "tests" / "data" / "mmseg_reference"
TABLE = sorted(p.stem for p in REFERENCE_FACTS.glob("resnest_*.json"))
SMALL_BACKBONE = dict(depth=50, stem_channels=16, base_channels=8, strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4),
                      contract_dilation=True)


@pytest.fixture(scope="module")
def mm():
    """mmseg's registry (with its modules imported, mmseg the default scope as in its tools) and mmengine's Config;
    skips without mmseg."""
    import_mmseg("mmseg.models")
    from mmengine.config import Config
    from mmengine.registry import DefaultScope
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    import resnest_fast.mmseg  # noqa: F401  (registers ResNeStFast)

    register_all_modules(init_default_scope=False)
    with DefaultScope.overwrite_default_scope("mmseg"):
        yield MODELS, Config


def mmseg_config_path(name: str) -> pathlib.Path:
    import mmseg

    return pathlib.Path(mmseg.__file__).parent / ".mim" / "configs" / "resnest" / f"{name}.py"


def swapped_config(Config, tmp_path, name: str):
    """What a user writes: mmseg's config as the base, the plugin imported, the backbone's type changed."""
    path = tmp_path / f"{name}_fast.py"
    path.write_text(textwrap.dedent(f"""\
        _base_ = [{str(mmseg_config_path(name))!r}]
        custom_imports = dict(imports=["resnest_fast.mmseg"], allow_failed_imports=False)
        model = dict(backbone=dict(type="ResNeStFast"))
    """))
    return Config.fromfile(str(path))


def model_pair(mm, tmp_path, name, shrink=True):
    """(mmseg's segmentor, ours with ResNeStFast): mmseg's with random weights, ours loaded from it strictly."""
    MODELS, Config = mm
    ref_cfg = Config.fromfile(str(mmseg_config_path(name))).model
    cfg = swapped_config(Config, tmp_path, name).model
    for c in (ref_cfg, cfg):
        if shrink:
            shrink_model_cfg(c)
    assert cfg.backbone.type == "ResNeStFast" and ref_cfg.backbone.type == "ResNeSt"
    with warnings.catch_warnings():  # the configs' model.pretrained (open-mmlab://resnest101) is deprecated
        warnings.simplefilter("ignore")
        ref = randomize_model(MODELS.build(ref_cfg))
        ours = MODELS.build(cfg)
    # what init_weights() will do (here: load the configs' ImageNet checkpoint through mmengine) is mmseg's
    assert ours.backbone.init_cfg == ref.backbone.init_cfg
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def assert_fp32_close(name, got32, ref32, ref64, floor=1e-5):
    """fp32 judged against float64: |ours32 - mmseg64| <= FACTOR * |mmseg32 - mmseg64| + floor * scale."""
    assert got32.shape == ref64.shape, name
    err = (got32.double() - ref64).abs().max().item()
    ref_err = (ref32.double() - ref64).abs().max().item()
    bound = FACTOR * ref_err + floor * max(1.0, ref64.abs().max().item())
    assert err <= bound, f"{name}: max error {err:.3g} > {bound:.3g} (mmseg fp32: {ref_err:.3g})"


def assert_eval_logits_match(name, ref, ours, x):
    """Eval-mode segmentation logits of both segmentors on x, fp32 judged against mmseg's float64 run."""
    ref64 = copy.deepcopy(ref).double()
    for m in (ref, ours, ref64):
        m.eval()
    with torch.no_grad():
        got, want, want64 = ours(x, mode="tensor"), ref(x, mode="tensor"), ref64(x.double(), mode="tensor")
    assert_fp32_close(f"{name} logits", got, want, want64)


def samples(num_classes, shape, seed=0):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(shape[0]):
        label = torch.randint(0, num_classes, (1, *shape[2:]), generator=g)
        label[:, :3] = 255  # mmseg's ignore index
        s = SegDataSample()
        s.gt_sem_seg = PixelData(data=label)
        out.append(s)
    return out


def test_importing_resnest_fast_does_not_import_mmseg():
    code = ("import sys, resnest_fast, resnest_fast.segmentation, resnest_fast.models; "
            "print(sorted(m for m in ('mmseg', 'mmengine', 'mmcv', 'resnest_fast.mmseg') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert out.stdout.strip() == "[]"


def test_without_mmseg_the_import_error_says_what_to_install(monkeypatch):
    monkeypatch.delitem(sys.modules, "resnest_fast.mmseg", raising=False)
    monkeypatch.setitem(sys.modules, "mmseg.registry", None)  # what Python does for a missing package
    with pytest.raises(ImportError, match="needs mmsegmentation, mmcv and mmengine.*pip install"):
        import resnest_fast.mmseg  # noqa: F401


@pytest.mark.parametrize("name", TABLE)
def test_the_table_configs_with_one_changed_line_match_mmseg(mm, tmp_path, name, one_thread):
    """Each of mmseg's eight ResNeSt configs, backbone swapped, narrowed (the plumbing is the same at any width):
    strict load from mmseg's model, same segmentation logits in eval mode."""
    from resnest_fast.mmseg import ResNeStFast

    ref, ours = model_pair(mm, tmp_path, name)
    assert type(ours.backbone) is ResNeStFast
    assert [type(m) for n, m in ours.named_modules() if not n.startswith("backbone")] == \
        [type(m) for n, m in ref.named_modules() if not n.startswith("backbone")]
    assert_eval_logits_match(name, ref, ours, torch.randn(1, 3, 40, 56))


@pytest.mark.parametrize("name", [TABLE[0], next(n for n in TABLE if "deeplabv3plus" in n)])
def test_losses_and_gradients_match_mmseg_in_training(mm, tmp_path, name, one_thread):
    """Train mode (batch statistics), mmseg's losses: equal in float64 to rounding, fp32 judged against it."""
    ref, ours = model_pair(mm, tmp_path, name)
    num_classes = ref.decode_head.num_classes
    x = torch.randn(2, 3, 40, 56, dtype=torch.float64)
    data = samples(num_classes, x.shape)
    results = {}
    for tag, model, dtype in [("ref64", copy.deepcopy(ref), torch.float64), ("ours64", copy.deepcopy(ours),
                              torch.float64), ("ref32", ref, torch.float32), ("ours32", ours, torch.float32)]:
        model.to(dtype).train()
        torch.manual_seed(3)  # the heads' dropout draws the same masks in every run
        losses = model.loss(x.to(dtype), data)
        total = sum(v for k, v in losses.items() if "loss" in k)
        total.backward()
        results[tag] = (losses, {n: p.grad for n, p in model.named_parameters()})
    (l64, g64), (o64, og64) = results["ref64"], results["ours64"]
    (l32, _), (o32, _) = results["ref32"], results["ours32"]
    assert set(o64) == set(l64) and {"decode.loss_ce", "aux.loss_ce"} <= set(l64)
    for k in l64:
        assert_max_abs(k, o64[k], l64[k], tol=1e-10)
        if "loss" in k:  # accuracies count argmax hits: an fp32 near-tie flips a pixel, in mmseg's fp32 run too
            assert_fp32_close(f"fp32 {k}", o32[k], l32[k], l64[k], floor=1e-6)
    scale = max(g.abs().max().item() for g in g64.values())
    assert set(og64) == set(g64)
    for n, g in g64.items():
        assert_max_abs(f"grad {n}", og64[n], g, tol=1e-9 * scale)


def test_syncbn_frozen_stages_and_norm_eval_follow_mmseg(mm):
    MODELS, _ = mm
    from mmengine.model import revert_sync_batchnorm

    kwargs = dict(SMALL_BACKBONE, frozen_stages=2, norm_eval=True, norm_cfg=dict(type="SyncBN", requires_grad=True))
    ref = MODELS.build(dict(type="ResNeSt", **kwargs))
    ours = MODELS.build(dict(type="ResNeStFast", **kwargs))
    norms = lambda model: {n: type(m) for n, m in model.named_modules()
                           if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
    assert norms(ours) == norms(ref) and issubclass(norms(ref)["stem.1"], torch.nn.SyncBatchNorm)
    # mmengine's Runner turns SyncBN into BatchNorm on one process: the plugin's layers must be the ones it finds
    assert norms(revert_sync_batchnorm(copy.deepcopy(ours))) == norms(revert_sync_batchnorm(copy.deepcopy(ref)))
    for mode in (None, True, False, True):  # None: as built
        if mode is not None:
            ours.train(mode)
            ref.train(mode)
        assert {n: m.training for n, m in ours.named_modules()} == {n: m.training for n, m in ref.named_modules()}
        assert {n: p.requires_grad for n, p in ours.named_parameters()} == \
            {n: p.requires_grad for n, p in ref.named_parameters()}


def test_default_init_weights_are_mmsegs(mm):
    """Without init_cfg, what mmseg's init_weights gives: Kaiming fan_out convs with zero bias, norm layers at
    weight 1 and bias 0 (bn3 included: mmseg 1.2.2's ResNeSt does not apply zero_init_residual)."""
    MODELS, _ = mm
    ref = MODELS.build(dict(type="ResNeSt", **SMALL_BACKBONE))
    ours = MODELS.build(dict(type="ResNeStFast", **SMALL_BACKBONE))
    randomize_model(ours)
    assert ours.init_cfg == ref.init_cfg
    ref.init_weights()
    ours.init_weights()
    ref_params = dict(ref.named_parameters())
    for n, p in ours.named_parameters():
        r = ref_params[n]
        if p.dim() == 4 and p.numel() >= 2000:  # random draws: the spread must be mmseg's
            assert math.isclose(p.std().item(), r.std().item(), rel_tol=0.15), n
        elif p.dim() != 4:  # constants
            torch.testing.assert_close(p, r, atol=0, rtol=0, msg=n)


@pytest.mark.parametrize("how", ["init_cfg", "init_cfg with prefix", "pretrained", "segmentor pretrained"])
def test_pretrained_weights_load_through_mmengine(mm, tmp_path, how):
    MODELS, Config = mm
    ref = randomize_model(MODELS.build(dict(type="ResNeSt", **SMALL_BACKBONE)))
    path = str(tmp_path / "backbone.pth")
    if how == "init_cfg with prefix":  # a whole segmentor's checkpoint, as mmseg saves it
        torch.save({"meta": {}, "state_dict": {f"backbone.{k}": v for k, v in ref.state_dict().items()}}, path)
    else:
        torch.save({"meta": {}, "state_dict": ref.state_dict()}, path)
    if how == "segmentor pretrained":  # model.pretrained of mmseg's configs goes to the backbone
        cfg = swapped_config(Config, tmp_path, TABLE[0]).model
        shrink_model_cfg(cfg)
        cfg.pretrained = path
        with pytest.warns(UserWarning, match="pretrained is a deprecated"):
            model = MODELS.build(cfg)
        model.init_weights()
        model = model.backbone
    else:
        kwargs = {"init_cfg": dict(init_cfg=dict(type="Pretrained", checkpoint=path)),
                  "init_cfg with prefix": dict(init_cfg=dict(type="Pretrained", checkpoint=path, prefix="backbone.")),
                  "pretrained": dict(pretrained=path)}[how]
        model = MODELS.build(dict(type="ResNeStFast", **SMALL_BACKBONE, **kwargs))
        model.init_weights()
    assert model.is_init
    for (n, a), (_, b) in zip(model.state_dict().items(), ref.state_dict().items()):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=n)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(pretrained="a.pth", init_cfg=dict(type="Pretrained", checkpoint="b.pth")), ValueError, "at the same time"),
    (dict(pretrained=3), TypeError, "pretrained must be a str"),
])
def test_conflicting_weights_arguments_are_refused(mm, kwargs, error, match):
    from resnest_fast.mmseg import ResNeStFast

    with pytest.raises(error, match=match):
        ResNeStFast(**SMALL_BACKBONE, **kwargs)


def write_dataset(root: pathlib.Path, n=4, size=(40, 56)):
    """mmseg's on-disk layout: img_dir/train/*.png (BGR images), ann_dir/train/*.png (label maps, 255 ignored)."""
    import cv2

    rng = np.random.default_rng(0)
    for sub in ("img_dir/train", "ann_dir/train"):
        (root / sub).mkdir(parents=True)
    for i in range(n):
        cv2.imwrite(str(root / "img_dir/train" / f"{i}.png"), rng.integers(0, 256, (*size, 3), dtype=np.uint8))
        label = rng.integers(0, 3, size, dtype=np.uint8)
        label[:2] = 255
        cv2.imwrite(str(root / "ann_dir/train" / f"{i}.png"), label)


def test_mmengine_runner_trains_with_the_swapped_backbone(mm, tmp_path, one_thread):
    """mmseg's train loop (Runner.from_cfg, as tools/train.py) for three iterations; its checkpoint loads strictly
    into mmseg's own model."""
    MODELS, Config = mm
    from mmengine.runner import Runner

    write_dataset(tmp_path / "data")
    cfg = swapped_config(Config, tmp_path, TABLE[0])
    shrink_model_cfg(cfg.model, num_classes=3)
    cfg.model.pretrained = None
    cfg.model.data_preprocessor.size = (40, 56)
    pipeline = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations"), dict(type="PackSegInputs")]
    cfg.train_dataloader = dict(
        batch_size=2, num_workers=0, persistent_workers=False, sampler=dict(type="InfiniteSampler", shuffle=True),
        dataset=dict(type="BaseSegDataset", data_root=str(tmp_path / "data"), pipeline=pipeline,
                     data_prefix=dict(img_path="img_dir/train", seg_map_path="ann_dir/train"),
                     img_suffix=".png", seg_map_suffix=".png",
                     metainfo=dict(classes=("a", "b", "c"), palette=[[0, 0, 0], [1, 1, 1], [2, 2, 2]])))
    for key in ("val_dataloader", "val_cfg", "val_evaluator", "test_dataloader", "test_cfg", "test_evaluator"):
        cfg[key] = None
    cfg.train_cfg = dict(type="IterBasedTrainLoop", max_iters=3)
    cfg.default_hooks.checkpoint = dict(type="CheckpointHook", by_epoch=False, interval=3)
    cfg.default_hooks.logger = dict(type="LoggerHook", interval=1)
    cfg.work_dir = str(tmp_path / "work")
    cfg.log_level = "WARNING"
    runner = Runner.from_cfg(cfg)
    runner.train()
    assert type(runner.model.backbone).__name__ == "ResNeStFast"
    # one process: mmengine reverted the plugin's SyncBN, as it does mmseg's; the blocks still keep only bn1's input
    block = runner.model.backbone.layer1[0]
    assert type(block.bn1).__name__ == "_BatchNormXd" and block.bn1.training
    assert lean_bn_relu_conv_applies(torch.randn(2, block.bn1.num_features, 4, 4), block.bn1, block.conv2.conv)
    losses = runner.message_hub.get_scalar("train/loss").data[0]
    assert len(losses) == 3 and np.isfinite(losses).all()
    ref_cfg = Config.fromfile(str(mmseg_config_path(TABLE[0]))).model
    shrink_model_cfg(ref_cfg, num_classes=3)
    ref_cfg.pretrained = None
    ref = MODELS.build(ref_cfg)
    saved = torch.load(tmp_path / "work" / "iter_3.pth", map_location="cpu", weights_only=False)["state_dict"]
    ref.load_state_dict(saved, strict=True)
    ref_sd = ref.state_dict()
    for k, v in runner.model.state_dict().items():
        torch.testing.assert_close(ref_sd[k], v, atol=0, rtol=0, msg=k)


def test_mmseg_apis_infer_with_a_checkpoint_of_mmsegs_model(mm, tmp_path, one_thread):
    """mmseg.apis.init_model + inference_model (the path of mmseg's image demo), swapped config, a checkpoint saved
    from mmseg's own model: mmseg's logits and prediction."""
    _, Config = mm
    from mmseg.apis import inference_model, init_model

    configs = [Config.fromfile(str(mmseg_config_path(TABLE[0]))), swapped_config(Config, tmp_path, TABLE[0])]
    for c in configs:
        shrink_model_cfg(c.model)
        c.test_pipeline = [dict(type="LoadImageFromFile"), dict(type="Resize", scale=(56, 40), keep_ratio=True),
                           dict(type="PackSegInputs")]
    with warnings.catch_warnings():  # a checkpoint without dataset_meta
        warnings.simplefilter("ignore")
        ref = randomize_model(init_model(configs[0], device="cpu"))
        path = tmp_path / "mmseg_model.pth"
        torch.save({"meta": {}, "state_dict": ref.state_dict()}, path)
        ours = init_model(configs[1], str(path), device="cpu")
    assert type(ours.backbone).__name__ == "ResNeStFast"
    img = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    got, want = inference_model(ours, img), inference_model(ref, img)
    assert_max_abs("logits", got.seg_logits.data, want.seg_logits.data, tol=1e-4)
    top2 = want.seg_logits.data.topk(2, dim=0).values
    clear = (top2[0] - top2[1]) > 1e-3  # where no fp32 rounding can flip the argmax
    assert clear.float().mean() > 0.9
    assert torch.equal(got.pred_sem_seg.data[0][clear], want.pred_sem_seg.data[0][clear])


@pytest.mark.heavy
@pytest.mark.parametrize("name", TABLE)
def test_full_size_configs_match_mmseg(mm, tmp_path, name):
    """ResNeSt-101 as the table has it: mmseg's recorded state_dict (keys, shapes, dtypes), strict load, logits."""
    ref, ours = model_pair(mm, tmp_path, name, shrink=False)
    facts = json.loads((REFERENCE_FACTS / f"{name}.json").read_text())
    ours_sd = [(k, list(v.shape), str(v.dtype).replace("torch.", "")) for k, v in ours.state_dict().items()]
    assert sorted(ours_sd) == sorted(tuple(f) for f in facts["state_dict"])
    assert_eval_logits_match(name, ref, ours, torch.randn(1, 3, 64, 64))
