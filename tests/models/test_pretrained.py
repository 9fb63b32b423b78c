"""resnest_fast.models.load_pretrained against the code that publishes each layout: mmseg's own ResNeSt (what
OpenMMLab's `open-mmlab://resnestNNN` files hold), the original ResNeSt release (`pip install resnest==0.0.5`) and
timm's ResNeSt. Each source model gets random weights and BN statistics, is saved, loaded into ours and must give
its own stage features; a file that does not cover the backbone is refused with the keys named; `open-mmlab://`
names resolve through torch's hub cache as mmengine's loader does, and offline give one error that says what to do."""
import importlib.util
import io
import json
import os
import pathlib
import urllib.error

import pytest
import torch

from resnest_fast.checkpoint import CheckpointError
from resnest_fast.models import PretrainedUnavailable, ResNeSt, load_pretrained, resnest101_d8
from resnest_fast.models.pretrained import OPENMMLAB, OPENMMLAB_URLS, RELEASE
from resnest_fast.testing.tolerances import assert_max_abs
from tests.mmseg_reference import import_mmseg, import_mmseg_resnest
from tests.parity import randomize_model
from tests.timm_reference import timm_package

pytestmark = pytest.mark.usefixtures("one_thread")
X = torch.randn(1, 3, 40, 40, generator=torch.Generator().manual_seed(0))


def random(build):
    """build() with random weights and BN statistics everywhere (randomize_model); made on the meta device and
    given memory after, since the constructors' own initialisation of a ResNeSt-50 costs more than the test."""
    with torch.device("meta"):
        model = build()
    return randomize_model(model.to_empty(device="cpu"))


def empty(build):
    """build() whose tensors hold whatever memory held: a load that misses any of them shows in the features."""
    with torch.device("meta"):
        return build().to_empty(device="cpu")


def release():
    """The original ResNeSt release's torch models; only resnest.torch is imported (no network, no gluon)."""
    return pytest.importorskip("resnest.torch", reason="the ResNeSt release: pip install --no-deps resnest==0.0.5")


def classifier_features(net, x):
    """Stage outputs of the release's or timm's ImageNet ResNet: its stem, max-pool and layer1-4 (no head)."""
    act = net.relu if hasattr(net, "relu") else net.act1
    x = net.maxpool(act(net.bn1(net.conv1(x))))
    outs = []
    for i in range(1, 5):
        x = getattr(net, f"layer{i}")(x)
        outs.append(x)
    return outs


def check_features(ours, want):
    with torch.no_grad():
        got = ours.eval()(X)
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.shape == b.shape, (i, a.shape, b.shape)
        assert_max_abs(f"stage {i + 1}", a, b, tol=1e-4)


def test_the_release_layout_gives_the_release_models_features(tmp_path):
    src = random(release().resnest50).eval()
    torch.save(src.state_dict(), tmp_path / "resnest50-528c19ca.pth")
    ours = empty(lambda: ResNeSt(50))
    report = load_pretrained(ours, tmp_path / "resnest50-528c19ca.pth")
    assert report.layout == RELEASE and report.loaded == len(ours.state_dict())
    assert report.classifier == ["fc.weight", "fc.bias"] and not report.extra and not report.skipped_stages
    assert f"every backbone weight loaded ({len(ours.state_dict())} tensors)" in str(report)
    with torch.no_grad():
        check_features(ours, classifier_features(src, X))


def test_the_timm_layout_gives_timms_features(tmp_path):
    src = random(lambda: timm_package().create_model("resnest50d")).eval()
    # as a training checkpoint of DDP would hold it: under `state_dict`, with `module.` prefixes
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "timm.pth")
    ours = empty(lambda: ResNeSt(50))
    report = load_pretrained(ours, tmp_path / "timm.pth")
    assert report.layout == RELEASE and report.loaded == len(ours.state_dict())
    with torch.no_grad():
        check_features(ours, classifier_features(src, X))


def test_the_openmmlab_layout_gives_mmsegs_features_and_skips_stages_the_backbone_lacks(tmp_path):
    mmseg = import_mmseg_resnest()
    src = random(lambda: mmseg.ResNeSt(depth=50, stem_channels=64))
    src.eval()
    sd = {f"backbone.{k}": v for k, v in src.state_dict().items()}
    sd.update({"fc.weight": torch.zeros(10, 2048), "fc.bias": torch.zeros(10)})
    torch.save({"meta": {}, "state_dict": sd}, tmp_path / "resnest50_d2.pth")
    ours = empty(lambda: ResNeSt(50))
    report = load_pretrained(ours, str(tmp_path / "resnest50_d2.pth"))
    assert report.layout == OPENMMLAB and report.loaded == len(ours.state_dict()) and not report.extra
    assert report.classifier == ["fc.weight", "fc.bias"]
    check_features(ours, src(X))

    three = empty(lambda: ResNeSt(50, num_stages=3, strides=(1, 2, 2), dilations=(1, 1, 1), out_indices=(0, 1, 2)))
    report = load_pretrained(three, tmp_path / "resnest50_d2.pth")
    assert report.skipped_stages and all(k.startswith("layer4.") for k in report.skipped_stages)
    check_features(three, src(X)[:3])


def _meta(build):
    with torch.device("meta"):
        return build()


@pytest.mark.parametrize("layout", ["openmmlab", "release", "timm"])
def test_every_resnest101_weight_of_the_table_backbone_is_covered(layout):
    """The backbone of the eight table configs (S-101, stem 128) takes each layout's ResNeSt-101 whole: keys and
    shapes only, on the meta device."""
    if layout == "openmmlab":
        sd = _meta(lambda: import_mmseg_resnest().ResNeSt(depth=101, stem_channels=128)).state_dict()
    elif layout == "release":
        sd = _meta(release().resnest101).state_dict()
    else:
        sd = _meta(lambda: timm_package().create_model("resnest101e")).state_dict()
    ours = _meta(resnest101_d8)
    report = load_pretrained(ours, sd)
    assert report.loaded == len(ours.state_dict()) and not report.extra and not report.skipped_stages


def test_a_network_of_another_depth_is_refused_with_the_keys_named():
    ours = _meta(resnest101_d8)
    with pytest.raises(CheckpointError, match=r"nothing was loaded\):\nmissing from the checkpoint \(\d+\): "
                                              r"layer3\.6\.conv1\.weight"):
        load_pretrained(ours, _meta(release().resnest50).state_dict())
    with pytest.raises(CheckpointError, match=r"nothing was loaded\):\nnot in the model \(\d+\): layer2\.4\."):
        load_pretrained(ours, _meta(release().resnest200).state_dict())


def test_a_partial_or_misshapen_file_is_refused_and_nothing_is_loaded(tmp_path):
    mmseg = import_mmseg_resnest()
    sd = randomize_model(mmseg.ResNeSt(depth=50, stem_channels=16, base_channels=8)).state_dict()
    ours = ResNeSt(50, stem_channels=16, base_channels=8)
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    partial = {k: v for k, v in sd.items() if not k.startswith("layer2.1.conv2.")}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match=r"partial\.pth.*OpenMMLab.*nothing was loaded[\s\S]*"
                                              r"missing from the checkpoint \(\d+\): layer2\.1\.conv2\.conv\.weight"):
        load_pretrained(ours, tmp_path / "partial.pth")
    wide = randomize_model(mmseg.ResNeSt(depth=50, stem_channels=32, base_channels=8)).state_dict()
    with pytest.raises(CheckpointError, match=r"shape mismatches.*stem\.0\.weight: checkpoint \[16, 3, 3, 3\] vs "
                                              r"model \[8, 3, 3, 3\]"):
        load_pretrained(ours, wide)
    ints = {k: v.to(torch.int32) if v.is_floating_point() else v for k, v in sd.items()}
    with pytest.raises(CheckpointError, match=r"dtype mismatches, not a float-to-float cast \(\d+\): stem\.0\.weight: "
                                              r"checkpoint int32 vs model float32"):
        load_pretrained(ours, ints)
    for k, v in ours.state_dict().items():
        assert torch.equal(v, before[k]), k
    one_counter_less = {k: v for k, v in sd.items() if k != "layer1.0.bn1.num_batches_tracked"}
    with pytest.raises(CheckpointError, match=r"missing from the checkpoint \(1\): layer1\.0\.bn1\.num_batches"):
        load_pretrained(ours, one_counter_less)
    # a file of an older PyTorch, without any BN counter: every weight and statistic still arrives
    no_counters = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    report = load_pretrained(ours, no_counters)
    assert report.counters_absent == len(sd) - len(no_counters) > 0
    assert report.loaded == len(no_counters) and "counters absent" in str(report)
    assert torch.equal(ours.state_dict()["layer4.2.bn3.running_var"], sd["layer4.2.bn3.running_var"])


def test_nan_weights_are_refused_unless_only_the_dropped_classifier_holds_them(tmp_path):
    """A NaN or infinite backbone weight (a diverged run, a damaged file) is refused naming the file and the tensor,
    the backbone unchanged; the release layout's ImageNet classifier, which is not loaded, may hold one."""
    mmseg = import_mmseg_resnest()
    sd = randomize_model(mmseg.ResNeSt(depth=50, stem_channels=16, base_channels=8)).state_dict()
    ours = ResNeSt(50, stem_channels=16, base_channels=8)
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    sd["layer3.1.conv2.conv.weight"][0, 0, 0, 0] = float("nan")
    sd["layer1.0.bn1.running_var"][1] = float("inf")
    torch.save(sd, tmp_path / "nan.pth")
    with pytest.raises(CheckpointError, match=r"pretrained .*nan\.pth.* holds NaN or infinite values in 2 of its "
                                              r"\d+ floating-point tensors \(layer1\.0\.bn1\.running_var, "
                                              r"layer3\.1\.conv2\.conv\.weight\): nothing was loaded"):
        load_pretrained(ours, tmp_path / "nan.pth")
    for k, v in ours.state_dict().items():
        assert torch.equal(v, before[k]), k
    net = random(lambda: release().resnest50())
    classifier = net.state_dict()
    classifier["fc.weight"][0, 0] = float("nan")
    ours = ResNeSt(50)
    report = load_pretrained(ours, classifier)
    assert "fc.weight" in report.classifier and report.loaded > 0


def test_an_unknown_layout_is_named():
    with pytest.raises(CheckpointError, match=r"match no ResNeSt ImageNet layout.*features, head.*expected"):
        load_pretrained(ResNeSt(50, stem_channels=16, base_channels=8),
                        {"features.0.weight": torch.zeros(1), "head.weight": torch.zeros(1)})
    with pytest.raises(FileNotFoundError, match="no-such.pth"):
        load_pretrained(ResNeSt(50, stem_channels=16, base_channels=8), "no-such.pth")


def test_openmmlab_urls_are_mmengines():
    mmengine = import_mmseg("mmengine")
    table = json.loads((pathlib.Path(mmengine.__file__).parent / "hub" / "openmmlab.json").read_text())
    assert OPENMMLAB_URLS == {k: table[k] for k in OPENMMLAB_URLS}


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torch hub dir, and a download that fails as it does without a network (recording its calls)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    calls = []

    def offline(url, dst, *args, **kwargs):
        calls.append((url, dst))
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return pathlib.Path(tmp_path / "torch" / "hub" / "checkpoints"), calls


def test_offline_without_the_file_one_error_says_where_to_put_it(hub):
    cache, calls = hub
    want = cache / "resnest101_d2-f3b931b2.pth"
    with pytest.raises(PretrainedUnavailable) as exc:
        load_pretrained(_meta(resnest101_d8), "open-mmlab://resnest101")
    msg = str(exc.value)
    assert calls == [(OPENMMLAB_URLS["resnest101"], str(want))]
    assert str(want) in msg and OPENMMLAB_URLS["resnest101"] in msg and "name resolution" in msg
    assert "--cfg-options model.pretrained=None" in msg
    assert isinstance(exc.value, CheckpointError) and not os.listdir(cache)
    with pytest.raises(CheckpointError, match=r"unknown OpenMMLab.*open-mmlab://resnest50, open-mmlab://resnest101"):
        load_pretrained(_meta(resnest101_d8), "open-mmlab://resnest18")


def test_the_file_in_torchs_hub_cache_is_used_and_a_download_lands_there(hub, monkeypatch):
    cache, calls = hub
    mmseg = import_mmseg_resnest()
    sd = random(lambda: mmseg.ResNeSt(depth=50, stem_channels=64)).state_dict()
    cache.mkdir(parents=True)
    torch.save(sd, cache / "resnest50_d2-7497a55b.pth")
    report = load_pretrained(empty(lambda: ResNeSt(50)), "openmmlab://resnest50")
    assert report.path == str(cache / "resnest50_d2-7497a55b.pth") and not calls
    assert str(report).startswith(f"openmmlab://resnest50 ({cache / 'resnest50_d2-7497a55b.pth'}): OpenMMLab")

    def download(url, dst, hash_prefix=None, progress=True):
        calls.append((url, dst, progress))
        torch.save(sd, dst)

    (cache / "resnest50_d2-7497a55b.pth").unlink()
    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    ours = empty(lambda: ResNeSt(50))
    load_pretrained(ours, "open-mmlab://resnest50", progress=False)
    assert calls == [(OPENMMLAB_URLS["resnest50"], str(cache / "resnest50_d2-7497a55b.pth"), False)]
    assert torch.equal(ours.state_dict()["layer4.2.conv2.fc2.weight"], sd["layer4.2.conv2.fc2.weight"])


def test_the_table_configs_name_mmsegs_pretrained_weights_and_build_offline(hub):
    """`pretrained` as in mmseg's own config files; building the model (test, inference) never fetches it."""
    from resnest_fast.segmentation import build_model, list_configs, load_config

    mmengine = import_mmseg("mmengine")
    configs = pathlib.Path(importlib.util.find_spec("mmseg").submodule_search_locations[0]) / ".mim" / "configs"
    names = [n for n in list_configs() if "_synthetic-" not in n]
    assert len(names) == 8
    for name in names:
        theirs = mmengine.Config.fromfile(str(configs / "resnest" / f"{name}.py"))
        assert load_config(name)["model"]["pretrained"] == theirs.model.pretrained == "open-mmlab://resnest101"
    with torch.device("meta"):  # the structure is what matters here, not ResNeSt-101's initialisation
        model = build_model(names[0])
    assert model.pretrained == "open-mmlab://resnest101" and not hub[1]
    assert next(n for n in list_configs() if "_synthetic-" in n) and all(
        load_config(n)["model"]["pretrained"] is None for n in list_configs() if "_synthetic-" in n)


def test_training_loads_the_configs_pretrained_weights_and_logs_it(tmp_path, hub):
    from resnest_fast.training.errors import SetupError
    from resnest_fast.training.train import train
    from tests.training.train_helpers import tiny_config

    mmseg = import_mmseg_resnest()
    cfg = tiny_config(tmp_path)
    backbone = dict(depth=50, stem_channels=16, base_channels=8)
    src = randomize_model(mmseg.ResNeSt(**backbone)).state_dict()
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in src.items()}}, tmp_path / "imagenet.pth")
    log = io.StringIO()
    options = ["schedule.val_interval=0", "schedule.optimizer.lr=0.0",
               f"model.pretrained={str(tmp_path / 'imagenet.pth')!r}"]
    summary = train(cfg, work_dir=tmp_path / "w", max_iters=1, progress=False, log=log, cfg_options=options)
    assert (f"backbone weights from {tmp_path / 'imagenet.pth'}: {OPENMMLAB} layout, every backbone weight "
            f"loaded ({len(src)} tensors)") in log.getvalue()
    saved = torch.load(summary["last_checkpoint"], weights_only=True)["state_dict"]
    # lr 0: the trained weights are the file's (BN running statistics move with the batch; weights do not)
    assert torch.equal(saved["backbone.layer3.0.conv2.conv.weight"], src["layer3.0.conv2.conv.weight"])
    assert torch.equal(saved["backbone.stem.7.weight"], src["stem.7.weight"])

    # a model built in Python may carry its ImageNet weights as a state_dict in memory
    from resnest_fast.segmentation import build_segmentor
    from resnest_fast.segmentation.config import load_config
    prebuilt = build_segmentor(load_config(cfg)["model"])
    prebuilt.pretrained = src
    log = io.StringIO()
    summary = train(cfg, work_dir=tmp_path / "w3", max_iters=1, progress=False, log=log, model=prebuilt,
                    cfg_options=options[:2])
    assert f"backbone weights from the given state_dict: {OPENMMLAB} layout" in log.getvalue()
    saved = torch.load(summary["last_checkpoint"], weights_only=True)["state_dict"]
    assert torch.equal(saved["backbone.layer3.0.conv2.conv.weight"], src["layer3.0.conv2.conv.weight"])

    torch.save({k: v for k, v in src.items() if not k.startswith("layer1.")}, tmp_path / "partial.pth")
    with pytest.raises(SetupError, match=r"partial\.pth.*does not fit.*\n.*missing from the checkpoint.*layer1\.0"):
        train(cfg, work_dir=tmp_path / "w2", max_iters=1, progress=False, log=io.StringIO(),
              cfg_options=[f"model.pretrained={str(tmp_path / 'partial.pth')!r}"])
    with pytest.raises(SetupError, match=r"resnest101_d2-f3b931b2\.pth.*--cfg-options model\.pretrained=None"):
        train(cfg, work_dir=tmp_path / "w2", max_iters=1, progress=False, log=io.StringIO(),
              cfg_options=["model.pretrained='open-mmlab://resnest101'"])
    assert not (tmp_path / "w2").exists()
