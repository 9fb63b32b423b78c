"""mmseg's optimisation recipe: SGD and mmengine's iteration-based PolyLR, reproduced to the last bit.

mmseg's schedule configs say `optimizer=dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=0.0005)` (weight
decay on every parameter, BN included) and `param_scheduler=[dict(type='PolyLR', eta_min=1e-4, power=0.9,
begin=0, end=max_iters, by_epoch=False)]`. mmengine's PolyLR (PolyParamScheduler, mmengine 0.10.7) is *chainable*:
each step multiplies the distance to eta_min of the learning rate currently in the optimiser,

    lr_t = (lr_{t-1} - eta_min) * (1 - 1 / (T - t + 1)) ** power + eta_min,   T = end - begin - 1,

which telescopes to the closed form (base - eta_min) * (1 - t / T) ** power + eta_min up to rounding. Iteration t
(0-based) trains with lr_t: the scheduler takes one step when it is built (t = 0: the base lr) and one after each
iteration; the last iteration, t = T, trains with exactly eta_min, and steps past `end` leave the lr alone. The
chained form is kept here (not the closed form) so that the floats are mmengine's; since the current lr lives in
the optimiser's param_groups, a resumed run continues the very same sequence.
"""
from typing import Dict, Iterable, List

import torch

from resnest_fast.utils import SGD_NUMERIC_OPTIONS, check_number

__all__ = ["PolyLR", "build_optimizer", "build_scheduler", "check_optimizer"]


class PolyLR:
    """mmengine's PolyLR, by iteration. optimizer: a torch optimiser (its groups' current lr is the base);
    eta_min: the final lr; power: the polynomial's power; begin/end: the iterations [begin, end) it acts on."""

    def __init__(self, optimizer: torch.optim.Optimizer, eta_min: float = 0.0, power: float = 1.0, begin: int = 0,
                 end: int = 80000):
        if end <= begin:
            raise ValueError(f"PolyLR needs end > begin, got begin={begin}, end={end}")
        self.optimizer = optimizer
        self.eta_min = float(eta_min)
        self.power = float(power)
        self.begin, self.end = int(begin), int(end)
        self.total_iters = self.end - self.begin - 1
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_values = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_step = -1
        self._global_step = -1
        self.step()

    def _values(self) -> List[float]:
        groups = self.optimizer.param_groups
        if self.last_step == 0:
            return [group["lr"] for group in groups]
        factor = (1 - 1 / (self.total_iters - self.last_step + 1)) ** self.power
        return [(group["lr"] - self.eta_min) * factor + self.eta_min for group in groups]

    def step(self) -> None:
        """Called once after every training iteration (and once by the constructor)."""
        self._global_step += 1
        if self.begin <= self._global_step < self.end:
            self.last_step += 1
            for group, value in zip(self.optimizer.param_groups, self._values()):
                group["lr"] = value

    def get_last_lr(self) -> List[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> Dict[str, object]:
        return {"type": "PolyLR", "eta_min": self.eta_min, "power": self.power, "begin": self.begin,
                "end": self.end, "last_step": self.last_step, "_global_step": self._global_step,
                "base_values": list(self.base_values)}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        for key in ("eta_min", "power", "begin", "end"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(f"the checkpoint's PolyLR has {key}={state[key]!r} but this run's has "
                                 f"{getattr(self, key)!r} (a different schedule: max_iters or lr_policy changed?)")
        self.last_step = int(state["last_step"])
        self._global_step = int(state["_global_step"])
        self.base_values = list(state["base_values"])

    def __repr__(self) -> str:
        return (f"PolyLR(eta_min={self.eta_min}, power={self.power}, begin={self.begin}, end={self.end}, "
                f"last_step={self.last_step})")


def check_optimizer(cfg, name: str = "schedule.optimizer") -> dict:
    """The optimizer dict, or a ValueError naming `name` and the key: a dict with an lr, whose numeric options
    (utils.SGD_NUMERIC_OPTIONS) are finite numbers >= 0."""
    if not isinstance(cfg, dict):
        raise ValueError(f"{name} must be a dict like dict(type='SGD', lr=0.01, momentum=0.9), got {cfg!r}")
    if "lr" not in cfg:
        raise ValueError(f"{name} needs an lr")
    for key in SGD_NUMERIC_OPTIONS:
        if key in cfg:
            check_number(cfg[key], f"{name}.{key}")
    return cfg


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: dict) -> torch.optim.Optimizer:
    """SGD from the schedule's `optimizer` dict (mmseg's type='SGD', lr, momentum, weight_decay, ...)."""
    cfg = dict(check_optimizer(cfg))
    kind = cfg.pop("type", "SGD")
    if kind != "SGD":
        raise ValueError(f"schedule.optimizer.type must be 'SGD' (mmseg's ResNeSt recipe), got {kind!r}")
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameter")
    try:
        return torch.optim.SGD(params, **cfg)
    except TypeError as exc:
        raise ValueError(f"schedule.optimizer has an option SGD does not take: {exc}") from exc
    except ValueError as exc:  # torch's own checks ("Nesterov momentum requires a momentum ..."): say where from
        raise ValueError(f"schedule.optimizer: {exc}") from exc


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: dict, max_iters: int) -> PolyLR:
    """The lr policy of the schedule (`lr_policy=dict(type='poly', power, eta_min)`) over [0, max_iters)."""
    if cfg is not None and not isinstance(cfg, dict):
        raise ValueError(f"schedule.lr_policy must be a dict like dict(type='poly', power=0.9, eta_min=1e-4), "
                         f"got {cfg!r}")
    cfg = dict(cfg or {})
    kind = cfg.pop("type", "poly")
    if kind.lower() not in ("poly", "polylr"):
        raise ValueError(f"schedule.lr_policy.type must be 'poly' (mmseg's PolyLR), got {kind!r}")
    unknown = set(cfg) - {"power", "eta_min", "by_epoch", "begin", "end"}
    if unknown:
        raise ValueError(f"schedule.lr_policy has unknown keys {sorted(unknown)}")
    if cfg.get("by_epoch"):
        raise ValueError("schedule.lr_policy.by_epoch must be False: training is counted in iterations")
    for key in ("eta_min", "power"):
        # a negative eta_min trains with a negative lr in the end; a negative power divides by zero at the last step
        check_number(cfg.get(key, 0.0), f"schedule.lr_policy.{key}")
    return PolyLR(optimizer, eta_min=cfg.get("eta_min", 0.0), power=cfg.get("power", 1.0),
                  begin=cfg.get("begin", 0), end=cfg.get("end", max_iters))
