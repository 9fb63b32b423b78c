"""Distributed training on the CPU (gloo): 2 processes x 2 images give the gradients, the updated weights and the
BN statistics of 1 process on the 4 images (SyncBN across the processes, DDP averaging the gradients); the
training command under torchrun matches a single-process run of the same combined batches."""
import os
import pathlib
import re
import subprocess
import sys

import pytest
import torch
from torch import nn

from resnest_fast.nn import DistributedDataParallel
from resnest_fast.segmentation import build_segmentor
from resnest_fast.training.data import SyntheticDataset, collate
from resnest_fast.training.distributed import init_distributed
from resnest_fast.training.schedule import build_optimizer
from resnest_fast.training.train import _LossModule
from tests.distributed import run_distributed
from resnest_fast.testing.small_models import small_model_cfg
from tests.training.train_helpers import child_env, tiny_config

SGD = dict(type="SGD", lr=0.01, momentum=0.9, weight_decay=0.0005)


def _model_cfg():
    cfg = small_model_cfg("fcn", num_classes=6)  # SyncBN everywhere, as the shipped configs
    cfg["decode_head"]["dropout_ratio"] = cfg["auxiliary_head"]["dropout_ratio"] = 0  # no random masks to match
    return cfg


def _model():
    """The small segmenter in float64: with every residual branch live (mmseg's initialisation), batch norms over a
    few values per channel make fp32 gradients of this net differ by percents between two summation orders, which
    would hide a wrong reduction; in float64 the two runs agree to 1e-10."""
    return build_segmentor(_model_cfg()).double()


def _step(model, losses):
    loss = model.sum_losses(losses)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return loss.detach(), grads


def _ddp_worker(rank, world_size, tmp):
    data = torch.load(os.path.join(tmp, "batch.pt"))
    model = _model()
    model.load_state_dict(data["state"])
    model.train()
    # torch's DDP refuses every nn.SyncBatchNorm in a CPU module, ours included; resnest_fast.nn's lets ours through
    # and still refuses torch's own, which cannot reduce CPU tensors
    assert any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    with pytest.raises(ValueError, match="SyncBatchNorm layers only work with GPU modules"):
        nn.parallel.DistributedDataParallel(_LossModule(model))
    with pytest.raises(ValueError, match="SyncBatchNorm layers only work with GPU modules"):
        DistributedDataParallel(nn.Sequential(nn.Conv2d(3, 4, 1), nn.SyncBatchNorm(4)))
    ddp = DistributedDataParallel(_LossModule(model), forward_sync_buffers=False)
    optimizer = build_optimizer(model.parameters(), SGD)
    mine = slice(2 * rank, 2 * rank + 2)
    loss, grads = _step(model, ddp(data["img"][mine], data["labels"][mine], data["img_shape"][mine]))
    optimizer.step()
    torch.save({"loss": loss, "grads": grads, "state": model.state_dict()}, os.path.join(tmp, f"rank{rank}.pt"))


def test_two_process_ddp_step_equals_one_process_on_the_combined_batch(tmp_path, one_thread):
    torch.manual_seed(0)
    items = [SyntheticDataset(4, size=(32, 32), num_classes=6, seed=5)[i] for i in range(4)]
    items[1]["gt_semantic_seg"][:5] = 255  # some ignored pixels
    batch = collate(items, size=(32, 32))
    batch["img"] = batch["img"].double()
    model = _model()
    torch.save({"state": model.state_dict(), "img": batch["img"], "labels": batch["gt_semantic_seg"],
                "img_shape": batch["img_shape"]}, tmp_path / "batch.pt")
    run_distributed(_ddp_worker, 2, tmp_path, str(tmp_path))

    model.train()
    optimizer = build_optimizer(model.parameters(), SGD)
    loss, grads = _step(model, model.loss(batch["img"], batch["gt_semantic_seg"], batch["img_shape"]))
    optimizer.step()
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    torch.testing.assert_close((ranks[0]["loss"] + ranks[1]["loss"]) / 2, loss, rtol=1e-10, atol=1e-12)
    # float64 sums of many terms in another order (and the synchronised path instead of the fused one): compare each
    # gradient within 1e-8 of its own size plus 1e-9 of the largest (biases before a BN are 0 plus rounding)
    largest = max(float(g.abs().max()) for g in grads.values())
    for name, g in grads.items():
        for r in range(2):  # DDP left the averaged gradient on both ranks
            torch.testing.assert_close(ranks[r]["grads"][name], g, rtol=1e-8, atol=1e-9 * largest,
                                       msg=lambda m, n=name: f"{n}: {m}")
    for name, value in model.state_dict().items():  # weights after the SGD step, and BN running statistics
        for r in range(2):
            if value.is_floating_point():
                torch.testing.assert_close(ranks[r]["state"][name], value, rtol=1e-9, atol=1e-10,
                                           msg=lambda m, n=name: f"{n}: {m}")
            else:
                assert torch.equal(ranks[r]["state"][name], value), name


def test_a_process_outside_torchrun_is_a_run_of_one(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    info = init_distributed("cpu")
    assert (info.rank, info.world_size, info.backend, info.is_main) == (0, 1, None, True)
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE='two' is not an integer"):
        init_distributed("cpu")


def _train(cfg, work, batch_size, nproc=None, dropout=False, extra=()):
    args = ["-m", "resnest_fast", "train", cfg, "--work-dir", str(work), "--batch-size", str(batch_size),
            "--no-progress", *extra]
    if not dropout:
        args += ["--cfg-options", "model.decode_head.dropout_ratio=0", "model.auxiliary_head.dropout_ratio=0"]
    if nproc:
        args = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"] + args
    return subprocess.run([sys.executable] + args, env=child_env(), capture_output=True, text=True, timeout=300)


def test_torchrun_training_matches_one_process_on_the_combined_batches(tmp_path):
    """The InfiniteSampler gives rank r of 2 the stream's elements r, r + 2, ...: with 2 images per process the two
    ranks' batches together are the 4 images a single process with batch 4 takes, iteration after iteration."""
    cfg = tiny_config(tmp_path, schedule="dict(max_iters=3, val_interval=3, checkpoint_interval=3)")
    two = _train(cfg, tmp_path / "two", 2, nproc=2)
    assert two.returncode == 0, two.stderr
    one = _train(cfg, tmp_path / "one", 4)
    assert one.returncode == 0, one.stderr
    files = sorted(os.listdir(tmp_path / "two"))
    assert len([f for f in files if f.endswith(".log.jsonl")]) == 1  # rank 0 alone logs and saves
    assert "iter_3.pth" in files and "4 images" in two.stderr  # each val image scored once across the 2 ranks
    a = torch.load(tmp_path / "two" / "iter_3.pth", weights_only=True)
    b = torch.load(tmp_path / "one" / "iter_3.pth", weights_only=True)
    assert a["meta"]["world_size"] == 2 and len(a["rng_states"]) == 2
    for name, value in b["state_dict"].items():
        if value.is_floating_point():
            torch.testing.assert_close(a["state_dict"][name], value, rtol=1e-4, atol=1e-5,
                                       msg=lambda m, n=name: f"{n}: {m}")
        else:
            assert torch.equal(a["state_dict"][name], value), name


def test_a_two_process_run_resumes_bit_identically_and_refuses_a_used_work_dir(tmp_path):
    """Dropout on, so that each rank's restored random state matters, as does each rank's sampler position."""
    cfg = tiny_config(tmp_path, schedule="dict(max_iters=4, val_interval=0, checkpoint_interval=2)")
    straight = _train(cfg, tmp_path / "a", 2, nproc=2, dropout=True, extra=["--deterministic"])
    assert straight.returncode == 0, straight.stderr
    resumed = _train(cfg, tmp_path / "b", 2, nproc=2, dropout=True,
                     extra=["--deterministic", "--resume", str(tmp_path / "a" / "iter_2.pth")])
    assert resumed.returncode == 0, resumed.stderr
    a = torch.load(tmp_path / "a" / "iter_4.pth", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b" / "iter_4.pth", weights_only=True)["state_dict"]
    for name, value in a.items():
        assert torch.equal(value, b[name]), name
    again = _train(cfg, tmp_path / "a", 2, nproc=2)
    assert again.returncode != 0
    assert again.stderr.count("error: work dir") == 1, again.stderr  # both ranks refuse; rank 0 says so


def test_a_run_resumes_on_another_number_of_processes_at_the_same_total_batch_only(tmp_path):
    """A checkpoint of one process at 4 images per batch resumes under torchrun with 2 processes at 2 images each
    (with a note that the data order differs), and is refused at 4 each (a total batch of 8), naming both."""
    cfg = tiny_config(tmp_path, schedule="dict(max_iters=4, val_interval=0, checkpoint_interval=2)")
    one = _train(cfg, tmp_path / "one", 4)
    assert one.returncode == 0, one.stderr
    checkpoint = str(tmp_path / "one" / "iter_2.pth")
    refused = _train(cfg, tmp_path / "refused", 4, nproc=2, extra=["--resume", checkpoint])
    ours = [line for line in refused.stderr.splitlines() if line.startswith("resnest-fast")]
    assert refused.returncode != 0 and len(ours) == 1, refused.stderr
    assert re.fullmatch(r"resnest-fast train: error: checkpoint '.*/one/iter_2\.pth' was written with a total batch "
                        r"\(data\.batch_size x processes\)=4 x 1 but this run has 4 x 2: .*--load-from", ours[0])
    assert not (tmp_path / "refused").exists()
    resumed = _train(cfg, tmp_path / "two", 2, nproc=2, extra=["--resume", checkpoint])
    assert resumed.returncode == 0, resumed.stderr
    assert "note: the checkpoint was written by 1 process(es) and this run has 2" in resumed.stderr
    assert torch.load(tmp_path / "two" / "iter_4.pth", weights_only=True)["meta"]["iter"] == 4


@pytest.mark.parametrize("seed", [0, 3])
def test_a_sample_one_process_cannot_read_is_one_line_from_rank_0_and_no_traceback(tmp_path, seed):
    """One training image is truncated; with one image per process, the seed decides which process draws it first.
    That process stops with its error; the other's collective then fails ("Connection closed by peer"): it must
    not print a traceback, and rank 0 prints the error whichever process met it."""
    from resnest_fast.training.data.samplers import InfiniteSampler
    from tests.cli.test_bad_inputs_train_test import _ade_config, _ade_tree

    corrupt_rank = [next(iter(InfiniteSampler(2, seed=seed, rank=r, world_size=2)))[0] for r in range(2)].index(0)
    root = _ade_tree(tmp_path / "ade", "corrupt")  # ADE_0.jpg, index 0 of the sorted training images, is truncated
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m",
                           "resnest_fast", "train", _ade_config(tmp_path), "--data-root", root, "--work-dir",
                           str(tmp_path / "w"), "--max-iters", "2", "--batch-size", "1", "--seed", str(seed),
                           "--no-progress"], env=child_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    ours = [line for line in done.stderr.splitlines() if line.startswith("resnest-fast")]
    other = f"process {corrupt_rank} of 2 stopped: " if corrupt_rank else ""
    assert len(ours) == 1 and re.fullmatch(rf"resnest-fast train: error: {other}cannot decode image file "
                                           rf".*/training/ADE_0\.jpg: .* \(loading the batch of iteration 1\)",
                                           ours[0]), done.stderr
    assert "[rank0]" not in done.stderr and "[rank1]" not in done.stderr, done.stderr  # torchrun's prefix of ours


@pytest.mark.parametrize("corrupt_rank", [0, 1])
def test_a_validation_image_one_process_cannot_read_is_one_line_from_rank_0_and_no_traceback(tmp_path, corrupt_rank):
    """`test` under torchrun with two validation images, one per process, one of them truncated: the process that
    reads it stops with its error, the other's summing collective fails; one line from rank 0 naming the file,
    whichever process met it, and no traceback from either."""
    import shutil

    from resnest_fast.segmentation import build_model
    from tests.cli.test_bad_inputs_train_test import _ade_config, _ade_tree

    root = pathlib.Path(_ade_tree(tmp_path / "ade")) / "ADEChallengeData2016"
    images, labels = root / "images", root / "annotations"
    shutil.copy(images / "training" / "ADE_1.jpg", images / "validation" / "ADE_1.jpg")
    shutil.copy(labels / "training" / "ADE_1.png", labels / "validation" / "ADE_1.png")
    bad = images / "validation" / f"ADE_{corrupt_rank}.jpg"  # process r scores image r
    bad.write_bytes(bad.read_bytes()[:200])
    config = _ade_config(tmp_path)
    torch.save(build_model(config).state_dict(), tmp_path / "ade.pth")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m",
                           "resnest_fast", "test", config, str(tmp_path / "ade.pth"), "--data-root",
                           str(tmp_path / "ade"), "--no-progress"], env=child_env(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode != 0
    ours = [line for line in done.stderr.splitlines() if line.startswith("resnest-fast")]
    other = f"process {corrupt_rank} of 2 stopped: " if corrupt_rank else ""
    assert len(ours) == 1 and re.fullmatch(rf"resnest-fast test: error: {other}cannot decode image file "
                                           rf".*/validation/ADE_{corrupt_rank}\.jpg: .*", ours[0]), done.stderr
    assert "[rank0]" not in done.stderr and "[rank1]" not in done.stderr, done.stderr


def _live_ddp_at_cleanup(rank, world_size, cfg, work, port, report):
    """Trains under a gloo group that train() itself creates (env rendezvous, as under torchrun) and records how many
    DistributedDataParallel wrappers are still alive when train() destroys the group."""
    import gc
    from resnest_fast.training import train as train_module
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    real = train_module.cleanup

    def cleanup(info):
        gc.collect()
        live = sum(isinstance(o, nn.parallel.DistributedDataParallel) for o in gc.get_objects())
        with open(os.path.join(report, f"rank{rank}.txt"), "w") as f:
            f.write(str(live))
        real(info)

    train_module.cleanup = cleanup
    train_module.train(cfg, work_dir=work, batch_size=2,
                       progress=False, log=open(os.devnull, "w"),
                       cfg_options=["model.decode_head.dropout_ratio=0", "model.auxiliary_head.dropout_ratio=0"])


def test_the_ddp_wrapper_is_gone_before_the_process_group_is_destroyed(tmp_path):
    """DDP's reducer holds the gloo process group. Were it the last holder, the group would be destroyed in the
    reducer's destructor, which keeps the GIL while it joins gloo's worker threads, while a worker freeing a
    finished collective's tensors waits for the GIL: the process hangs at exit (seen under torchrun, in about one run
    of several). train() must drop the wrapper first, so that destroy_process_group frees the group."""
    import socket
    import torch.multiprocessing as mp
    cfg = tiny_config(tmp_path, schedule="dict(max_iters=2, val_interval=0, checkpoint_interval=2)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_live_ddp_at_cleanup, args=(2, cfg, str(tmp_path / "work"), port, str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        assert (tmp_path / f"rank{rank}.txt").read_text() == "0", f"rank {rank}: a DDP wrapper outlived train()"


def _train_from_an_openmmlab_name(rank, world_size, cfg, work, port, hub, source, report, fail):
    """train() in process `rank` of a gloo group it creates itself (as under torchrun, one machine), with
    model.pretrained='open-mmlab://resnest50', an empty torch hub cache shared by the processes and a download that
    copies `source` there after a second (or fails as it does offline when `fail`), each call recorded."""
    import io
    import shutil
    import time
    import urllib.error
    from resnest_fast.training import train as train_module
    from resnest_fast.training.errors import SetupError
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.hub.set_dir(hub)

    def download(url, dst, hash_prefix=None, progress=True):
        with open(os.path.join(report, f"download{rank}.txt"), "a") as f:
            f.write(f"{url}\n")
        time.sleep(1.0)  # time for another process to look, find no file and fetch it too
        if fail:
            raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
        shutil.copyfile(source, dst + ".partial")
        os.replace(dst + ".partial", dst)

    torch.hub.download_url_to_file = download
    log = io.StringIO()
    try:
        train_module.train(cfg, work_dir=work, batch_size=2, max_iters=1, progress=False, log=log,
                           cfg_options=["model.pretrained='open-mmlab://resnest50'", "schedule.optimizer.lr=0.0",
                                        "schedule.val_interval=0", "model.decode_head.dropout_ratio=0",
                                        "model.auxiliary_head.dropout_ratio=0"])
        outcome = "trained"
    except SetupError as exc:
        outcome = f"SetupError: {exc}"
    with open(os.path.join(report, f"rank{rank}.txt"), "w") as f:
        f.write(f"{outcome}\n{log.getvalue()}")


@pytest.mark.parametrize("fail", [False, True], ids=["downloaded", "offline"])
def test_an_openmmlab_backbone_is_downloaded_once_per_machine_and_a_failed_download_stops_every_process(
        tmp_path, fail):
    """mmengine downloads an `open-mmlab://` checkpoint on rank 0 only, the other ranks waiting for it: 8 processes
    of a node must not each fetch ResNeSt-101's weights. When the download fails, every process stops with a
    SetupError (the others name the first one's), none left waiting in a collective or fetching on its own."""
    import socket
    import torch.multiprocessing as mp
    from resnest_fast.models import ResNeSt
    from resnest_fast.models.pretrained import OPENMMLAB_URLS
    from tests.parity import randomize_model

    cfg = tiny_config(tmp_path)
    src = randomize_model(ResNeSt(depth=50, stem_channels=16, base_channels=8)).state_dict()
    torch.save(src, tmp_path / "imagenet.pth")
    report = tmp_path / "report"
    report.mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_train_from_an_openmmlab_name, nprocs=2, join=True,
             args=(2, cfg, str(tmp_path / "work"), port, str(tmp_path / "hub"), str(tmp_path / "imagenet.pth"),
                   str(report), fail))
    url = OPENMMLAB_URLS["resnest50"]
    assert (report / "download0.txt").read_text() == f"{url}\n"
    assert not (report / "download1.txt").exists(), "the second process downloaded the file too"
    outcome = [(report / f"rank{r}.txt").read_text() for r in range(2)]
    if fail:
        assert outcome[0].startswith("SetupError: pretrained='open-mmlab://resnest50' is not in torch's hub cache")
        assert "name resolution" in outcome[0] and "--cfg-options model.pretrained=None" in outcome[0]
        assert outcome[1].startswith("SetupError: another process could not start: pretrained='open-mmlab://")
        assert not list((tmp_path / "work").glob("*.pth"))
    else:
        assert outcome[0].startswith("trained\n") and outcome[1] == "trained\n", outcome
        assert f"backbone weights from open-mmlab://resnest50 ({tmp_path / 'hub' / 'checkpoints'}" in outcome[0]
        saved = torch.load(tmp_path / "work" / "iter_1.pth", weights_only=True)["state_dict"]
        # lr 0: the weights after one iteration are the file's
        assert torch.equal(saved["backbone.layer3.0.conv2.conv.weight"], src["layer3.0.conv2.conv.weight"])
