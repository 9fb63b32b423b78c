"""PolyLR against mmengine's formula written out here, against mmengine's own PolyLR (when installed), and across a
resume; the optimiser and scheduler builders' errors."""
import pytest
import torch

from resnest_fast.training.schedule import PolyLR, build_optimizer, build_scheduler


def _sgd(lr=0.01):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=lr, momentum=0.9, weight_decay=5e-4)


def _lrs(optimizer, scheduler, n):
    """The lr each of n iterations trains with (the scheduler steps after each)."""
    out = []
    for _ in range(n):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def closed_form(base, eta_min, power, step, end):
    """mmengine's PolyParamScheduler._get_closed_form: T = end - begin - 1 (begin = 0)."""
    total = end - 1
    return (base - eta_min) * (1 - min(total, step) / total) ** power + eta_min


def chained(base, eta_min, power, steps, end):
    """mmengine's PolyParamScheduler._get_value, step after step, from its source (mmengine 0.10.7)."""
    total, lr, out = end - 1, base, []
    for step in range(steps):
        if 0 < step < end:
            lr = (lr - eta_min) * (1 - 1 / (total - step + 1)) ** power + eta_min
        out.append(lr)
    return out


@pytest.mark.parametrize("end", [1, 2, 7, 1000])
def test_poly_lr_is_mmengines_chained_formula_and_close_to_the_closed_form(end):
    opt = _sgd()
    lrs = _lrs(opt, PolyLR(opt, eta_min=1e-4, power=0.9, end=end), end + 3)
    assert lrs == chained(0.01, 1e-4, 0.9, end + 3, end)  # bit for bit
    assert lrs[0] == 0.01
    if end > 1:
        assert lrs[end - 1] == pytest.approx(1e-4, abs=1e-18)  # the last iteration trains with eta_min
    assert lrs[end:] == [lrs[end - 1]] * 3  # past `end` the lr stays
    for step, lr in enumerate(lrs[:end] if end > 1 else []):  # end = 1: T = 0, one iteration at the base lr
        assert lr == pytest.approx(closed_form(0.01, 1e-4, 0.9, step, end), rel=1e-12, abs=1e-18)


def test_poly_lr_at_mmsegs_80k():
    opt = _sgd()
    sched = PolyLR(opt, eta_min=1e-4, power=0.9, end=80000)
    lrs = _lrs(opt, sched, 80000)
    for step in (0, 1, 100, 40000, 79998, 79999):
        assert lrs[step] == pytest.approx(closed_form(0.01, 1e-4, 0.9, step, 80000), rel=1e-9, abs=1e-15)
    assert lrs[40000] == pytest.approx((0.01 - 1e-4) * (1 - 40000 / 79999) ** 0.9 + 1e-4)


def test_poly_lr_equals_mmengines_own_scheduler():
    mmengine_sched = pytest.importorskip("mmengine.optim.scheduler")
    ours_opt, ref_opt = _sgd(), _sgd()
    ours = PolyLR(ours_opt, eta_min=1e-4, power=0.9, begin=0, end=500)
    ref = mmengine_sched.PolyLR(ref_opt, eta_min=1e-4, power=0.9, begin=0, end=500, by_epoch=False)
    assert _lrs(ours_opt, ours, 505) == _lrs(ref_opt, ref, 505)


def test_resumed_scheduler_continues_the_same_floats():
    opt = _sgd()
    sched = PolyLR(opt, eta_min=1e-4, power=0.9, end=300)
    first = _lrs(opt, sched, 120)
    saved_opt, saved_sched = opt.state_dict(), sched.state_dict()
    rest = _lrs(opt, sched, 180)

    opt2 = _sgd()
    sched2 = PolyLR(opt2, eta_min=1e-4, power=0.9, end=300)
    opt2.load_state_dict(saved_opt)
    sched2.load_state_dict(saved_sched)
    assert _lrs(opt2, sched2, 180) == rest
    assert first[0] == 0.01 and "PolyLR(eta_min=0.0001" in repr(sched2)
    with pytest.raises(ValueError, match="end=300 but this run's has 200"):
        PolyLR(_sgd(), eta_min=1e-4, power=0.9, end=200).load_state_dict(saved_sched)


def test_builders_follow_the_schedule_config_and_name_bad_options():
    model = torch.nn.Linear(3, 2)
    opt = build_optimizer(model.parameters(), dict(type="SGD", lr=0.01, momentum=0.9, weight_decay=0.0005))
    group = opt.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.01, 0.9, 0.0005)
    sched = build_scheduler(opt, dict(type="poly", power=0.9, eta_min=1e-4), 80000)
    assert (sched.end, sched.total_iters, sched.power, sched.eta_min) == (80000, 79999, 0.9, 1e-4)
    with pytest.raises(ValueError, match="must be 'SGD'"):
        build_optimizer(model.parameters(), dict(type="AdamW", lr=0.01))
    with pytest.raises(ValueError, match="needs an lr"):
        build_optimizer(model.parameters(), dict(type="SGD"))
    with pytest.raises(ValueError, match="option SGD does not take"):
        build_optimizer(model.parameters(), dict(type="SGD", lr=0.1, betas=(0.9, 0.99)))
    with pytest.raises(ValueError, match="no trainable parameter"):
        build_optimizer([torch.nn.Parameter(torch.zeros(1), requires_grad=False)], dict(lr=0.1))
    with pytest.raises(ValueError, match="must be 'poly'"):
        build_scheduler(opt, dict(type="step"), 10)
    with pytest.raises(ValueError, match="unknown keys"):
        build_scheduler(opt, dict(type="poly", warmup=10), 10)
    for key, value in (("eta_min", -1e-4), ("eta_min", float("nan")), ("eta_min", "0"), ("power", -0.9),
                       ("power", float("inf")), ("power", True)):
        expected = rf"schedule\.lr_policy\.{key} must be a finite number >= 0, got {value!r}"
        with pytest.raises(ValueError, match=expected):
            build_scheduler(opt, dict(type="poly", **{key: value}), 10)
    constant = build_scheduler(opt, dict(type="poly", power=0, eta_min=0), 10)  # power 0: the lr never moves
    for _ in range(10):
        constant.step()
    assert constant.get_last_lr() == [0.01]
    with pytest.raises(ValueError, match="end > begin"):
        PolyLR(opt, end=0)
