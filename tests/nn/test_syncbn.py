"""resnest_fast.nn.SyncBatchNorm on CPU with 2 gloo processes against nn.BatchNorm2d on the combined batch: outputs,
input and parameter gradients, running statistics; the split-attention module's distributed path; a group of one."""
import os

import pytest
import torch
import torch.distributed as dist
from torch import nn

from resnest_fast.nn import DistributedDataParallel, SplitAttentionConv2d, SyncBatchNorm, build_norm, sync_batchnorm
from tests.distributed import run_distributed
from tests.mmseg_reference import import_mmseg

# Per-rank batch sizes: unequal on purpose, so that the statistics must be weighted by each process's count.
SIZES = (1, 3)
STEPS = 2


def _slices(sizes):
    start = 0
    for n in sizes:
        yield slice(start, start + n)
        start += n


def _make_inputs(path, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    batch = sum(SIZES)
    data = {
        # a large mean next to a small spread: the variance must survive sum(x^2)/N - mean^2
        "x": [(torch.randn(batch, 5, 7, 9, generator=g) * 0.5 + 30).to(dtype) for _ in range(STEPS)],
        "grad": [torch.randn(batch, 5, 7, 9, generator=g).to(dtype) for _ in range(STEPS)],
        "weight": torch.rand(5, generator=g) + 0.5,
        "bias": torch.randn(5, generator=g),
    }
    torch.save(data, path)
    return data


def _bn_worker(rank, world_size, tmp, momentum):
    data = torch.load(os.path.join(tmp, "inputs.pt"))
    mine = list(_slices(SIZES))[rank]
    bn = SyncBatchNorm(5, momentum=momentum)
    with torch.no_grad():
        bn.weight.copy_(data["weight"])
        bn.bias.copy_(data["bias"])
    out = {"y": [], "dx": [], "dw": [], "db": []}
    for x, grad in zip(data["x"], data["grad"]):
        x = x[mine].clone().requires_grad_(True)
        bn.zero_grad()
        y = bn(x)
        y.backward(grad[mine])
        out["y"].append(y.detach())
        out["dx"].append(x.grad)
        out["dw"].append(bn.weight.grad.clone())
        out["db"].append(bn.bias.grad.clone())
    out["running_mean"], out["running_var"] = bn.running_mean.clone(), bn.running_var.clone()
    out["num_batches_tracked"] = bn.num_batches_tracked.clone()
    # a group of one process: a plain BatchNorm (torch's SyncBatchNorm raises on CPU tensors here)
    solo = dist.new_group([0]), dist.new_group([1])
    alone = SyncBatchNorm(5, process_group=solo[rank])
    x = data["x"][0][mine].float()
    if x.shape[0] * x.shape[2] * x.shape[3] > 1:
        out["alone"] = (alone(x), nn.functional.batch_norm(x, None, None, training=True))
    torch.save(out, os.path.join(tmp, f"rank{rank}.pt"))


@pytest.mark.parametrize("momentum", [0.1, None])
def test_syncbn_matches_batchnorm_on_the_combined_batch(tmp_path, momentum):
    data = _make_inputs(tmp_path / "inputs.pt")
    run_distributed(_bn_worker, 2, tmp_path, str(tmp_path), momentum)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    ref = nn.BatchNorm2d(5, momentum=momentum)
    with torch.no_grad():
        ref.weight.copy_(data["weight"])
        ref.bias.copy_(data["bias"])
    for step, (x, grad) in enumerate(zip(data["x"], data["grad"])):
        x = x.clone().requires_grad_(True)
        ref.zero_grad()
        y = ref(x)
        y.backward(grad)
        for r, sl in enumerate(_slices(SIZES)):
            torch.testing.assert_close(ranks[r]["y"][step], y[sl].detach(), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(ranks[r]["dx"][step], x.grad[sl], rtol=1e-4, atol=1e-4)
        # parameter gradients stay local (DDP adds them up): their sum is the combined batch's
        torch.testing.assert_close(ranks[0]["dw"][step] + ranks[1]["dw"][step], ref.weight.grad, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(ranks[0]["db"][step] + ranks[1]["db"][step], ref.bias.grad, rtol=1e-5, atol=1e-5)
    for r in range(2):
        torch.testing.assert_close(ranks[r]["running_mean"], ref.running_mean, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(ranks[r]["running_var"], ref.running_var, rtol=1e-5, atol=1e-6)
        assert int(ranks[r]["num_batches_tracked"]) == int(ref.num_batches_tracked) == STEPS
    y_alone, y_bn = ranks[1]["alone"]
    torch.testing.assert_close(y_alone, y_bn)


def _split_attention_worker(rank, world_size, tmp):
    data = torch.load(os.path.join(tmp, "sa.pt"))
    mine = list(_slices((2, 2)))[rank]
    m = SplitAttentionConv2d(8, 8, 3, padding=1, radix=2, groups=2, norm_cfg=dict(type="SyncBN"))
    m.load_state_dict(data["state"])
    x = data["x"][mine].clone().requires_grad_(True)
    y = m(x)
    y.backward(data["grad"][mine])
    grads = {n: p.grad for n, p in m.named_parameters()}
    torch.save({"y": y.detach(), "dx": x.grad, "grads": grads,
                "buffers": {n: b for n, b in m.named_buffers()}}, os.path.join(tmp, f"sa{rank}.pt"))


def test_split_attention_distributed_path_matches_one_process(tmp_path):
    """With SyncBN across processes, SplitAttentionConv2d runs bn0 and bn1 synchronised (its distributed path):
    2 processes x 2 images give the outputs and gradients of one process on the 4 images with plain BN."""
    torch.manual_seed(0)
    ref = SplitAttentionConv2d(8, 8, 3, padding=1, radix=2, groups=2, norm_cfg=dict(type="BN"))
    x = torch.randn(4, 8, 6, 7, requires_grad=True)
    grad = torch.randn(4, 8, 6, 7)
    torch.save({"state": ref.state_dict(), "x": x.detach(), "grad": grad}, tmp_path / "sa.pt")
    run_distributed(_split_attention_worker, 2, tmp_path, str(tmp_path))
    y = ref(x)
    y.backward(grad)
    ranks = [torch.load(tmp_path / f"sa{r}.pt") for r in range(2)]
    for r, sl in enumerate(_slices((2, 2))):
        torch.testing.assert_close(ranks[r]["y"], y[sl].detach(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ranks[r]["dx"], x.grad[sl], rtol=1e-4, atol=1e-5)
        for name, b in ref.named_buffers():
            torch.testing.assert_close(ranks[r]["buffers"][name], b, rtol=1e-5, atol=1e-6,
                                       msg=lambda m, n=name: f"{n}: {m}")
    # fc1's bias feeds bn1, which cancels it: its gradient is 0 plus rounding of the size of the other gradients
    largest = max(float(p.grad.abs().max()) for p in ref.parameters())
    for name, p in ref.named_parameters():
        torch.testing.assert_close(ranks[0]["grads"][name] + ranks[1]["grads"][name], p.grad, rtol=1e-4,
                                   atol=1e-5 * max(1.0, largest), msg=lambda m, n=name: f"{n}: {m}")


def test_build_norm_syncbn_is_ours_and_a_plain_bn_on_one_process():
    bn = build_norm(dict(type="SyncBN", requires_grad=True), 4)
    assert type(bn) is SyncBatchNorm and isinstance(bn, nn.SyncBatchNorm)
    assert repr(bn) == repr(nn.SyncBatchNorm(4))
    ref = nn.BatchNorm2d(4)
    x = torch.randn(3, 4, 5, 5)
    torch.testing.assert_close(bn(x), ref(x))
    torch.testing.assert_close(bn.running_var, ref.running_var)
    assert set(bn.state_dict()) == set(ref.state_dict())
    bn.eval()
    torch.testing.assert_close(bn(x), ref.eval()(x))  # running statistics in eval mode


def test_syncbn_is_an_nn_syncbatchnorm_with_batchnorms_state_dict():
    """isinstance checks (mmseg's tests, torch's convert helpers, mmengine's revert_sync_batchnorm) see a SyncBN;
    the state_dict stays BatchNorm2d's, so BN checkpoints load with strict=True."""
    model = nn.Sequential(nn.Conv2d(3, 4, 1), build_norm(dict(type="SyncBN"), 4))
    assert isinstance(model[1], nn.SyncBatchNorm)
    bn = nn.BatchNorm2d(4)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
    assert list(model[1].state_dict()) == list(bn.state_dict())
    model[1].load_state_dict(bn.state_dict(), strict=True)
    # mmengine converts every nn.SyncBatchNorm back to a BatchNorm, keeping the statistics
    reverted = import_mmseg("mmengine.model").revert_sync_batchnorm(model)
    assert not isinstance(reverted[1], nn.SyncBatchNorm)
    torch.testing.assert_close(reverted[1].running_mean, bn.running_mean)


@pytest.mark.parametrize("torch_has_it", [True, False])
def test_forward_sync_buffers_is_accepted_on_a_torch_with_or_without_it(monkeypatch, torch_has_it):
    """torch 2.13 renamed broadcast_buffers to forward_sync_buffers; the training command passes the new name, which
    before 2.13 was a TypeError in DistributedDataParallel's constructor."""
    seen = {}

    def torch_init(self, module, *args, **kwargs):
        seen.update(kwargs)

    monkeypatch.setattr(nn.parallel.DistributedDataParallel, "__init__", torch_init)
    monkeypatch.setattr(sync_batchnorm, "TORCH_DDP_HAS_FORWARD_SYNC_BUFFERS", torch_has_it)
    DistributedDataParallel(nn.Linear(2, 2), forward_sync_buffers=False, find_unused_parameters=True)
    name = "forward_sync_buffers" if torch_has_it else "broadcast_buffers"
    assert seen == {name: False, "find_unused_parameters": True}
