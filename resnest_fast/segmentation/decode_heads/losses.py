"""mmseg's CrossEntropyLoss (its mean divides by *all* label pixels, ignored ones included, with
avg_non_ignore=False: not torch's mean over the valid ones) and the `acc_seg` accuracy mmseg logs."""
import inspect
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from resnest_fast.segmentation.decode_heads.blocks import resize

__all__ = ["cross_entropy", "CrossEntropyLoss", "build_loss", "acc_seg", "check_labels"]

_EPS = torch.finfo(torch.float32).eps  # mmseg's guard in its mean and its accuracy


def cross_entropy(
    logits: Tensor,
    labels: Tensor,
    *,
    ignore_index: int = 255,
    class_weight: Optional[Tensor] = None,
    avg_non_ignore: bool = False,
) -> Tensor:
    """mmseg's softmax cross-entropy with reduction 'mean' (loss_weight not applied).

    logits (B, K, H, W) float, labels (B, H, W) int64 at the same size. Pixels labelled `ignore_index` add 0 to
    the sum. The denominator is mmseg's, plus float32 eps:
      - avg_non_ignore=False (mmseg's default): the number of *all* pixels, ignored ones included, so the loss
        shrinks with the ignored fraction (torch's own mean divides by the valid pixels only);
      - avg_non_ignore=True: the number of non-ignored pixels;
      - with class_weight (K,) (only with avg_non_ignore=True, see CrossEntropyLoss): the sum of the weights of
        the non-ignored pixels' classes, i.e. torch's weighted mean.
    Returns a 0-dim tensor.
    """
    loss = F.cross_entropy(logits, labels, weight=class_weight, reduction="none", ignore_index=ignore_index)
    valid = labels != ignore_index
    if class_weight is not None:
        if not avg_non_ignore:
            raise ValueError("class_weight needs avg_non_ignore=True (see CrossEntropyLoss)")
        avg_factor = class_weight[labels[valid]].sum()
    elif avg_non_ignore:
        avg_factor = valid.sum()  # a tensor, so no host sync; the division rounds it as mmseg's Python int
    else:
        avg_factor = labels.numel()
    return loss.sum() / (avg_factor + _EPS)


class CrossEntropyLoss(nn.Module):
    """mmseg's CrossEntropyLoss (softmax, reduction 'mean'): `loss_weight * cross_entropy(...)`.

    forward(logits (B, K, H, W), labels (B, H, W) int64, ignore_index) -> 0-dim tensor. It holds no state, so
    mmseg state_dicts are unchanged by it. Unsupported mmseg options (use_sigmoid, use_mask, reduction other
    than 'mean', class weights from a file) raise ValueError naming the option.

    class_weight needs avg_non_ignore=True: mmseg 1.2.2 computes the denominator of the weighted mean as
    `class_weight[label]` over all pixels, which raises IndexError as soon as one pixel holds an ignore_index
    outside the classes (255), with either avg_non_ignore. With no ignored pixel the two settings agree; with
    avg_non_ignore=True this module computes what mmseg means (the weights of the non-ignored pixels).
    """

    def __init__(
        self,
        use_sigmoid: bool = False,
        use_mask: bool = False,
        reduction: str = "mean",
        class_weight: Optional[Sequence[float]] = None,
        loss_weight: float = 1.0,
        loss_name: str = "loss_ce",
        avg_non_ignore: bool = False,
    ):
        super().__init__()
        if use_sigmoid is not False:
            raise ValueError(f"loss_decode use_sigmoid={use_sigmoid!r} is not supported (softmax only)")
        if use_mask is not False:
            raise ValueError(f"loss_decode use_mask={use_mask!r} is not supported")
        if reduction != "mean":
            raise ValueError(f"loss_decode reduction must be 'mean', got {reduction!r}")
        if isinstance(loss_weight, bool) or not isinstance(loss_weight, (int, float)):
            raise TypeError(f"loss_decode loss_weight must be a number, got {loss_weight!r}")
        if not isinstance(loss_name, str) or not loss_name.startswith("loss_"):
            raise ValueError(f"loss_decode loss_name must be a str starting with 'loss_', got {loss_name!r}")
        if not isinstance(avg_non_ignore, bool):
            raise TypeError(f"loss_decode avg_non_ignore must be a bool, got {avg_non_ignore!r}")
        if class_weight is not None:
            if not isinstance(class_weight, (list, tuple)) or not all(
                isinstance(w, (int, float)) and not isinstance(w, bool) for w in class_weight
            ):
                raise TypeError(
                    f"loss_decode class_weight must be a list of numbers (files are not read), got {class_weight!r}"
                )
            if not avg_non_ignore:
                raise ValueError(
                    "loss_decode class_weight needs avg_non_ignore=True: with avg_non_ignore=False mmseg 1.2.2 "
                    "raises IndexError whenever a label equals ignore_index (255 is not a class); the two "
                    "settings agree when no pixel is ignored"
                )
            class_weight = tuple(float(w) for w in class_weight)
        self.class_weight: Optional[Tuple[float, ...]] = class_weight
        self.loss_weight = float(loss_weight)
        self.loss_name = loss_name
        self.avg_non_ignore = avg_non_ignore

    def forward(self, logits: Tensor, labels: Tensor, ignore_index: int = 255) -> Tensor:
        class_weight = None
        if self.class_weight is not None:
            if len(self.class_weight) != logits.shape[1]:
                raise ValueError(
                    f"loss_decode class_weight has {len(self.class_weight)} entries for {logits.shape[1]} classes"
                )
            class_weight = logits.new_tensor(self.class_weight)
        return self.loss_weight * cross_entropy(
            logits, labels, ignore_index=ignore_index, class_weight=class_weight, avg_non_ignore=self.avg_non_ignore
        )

    def extra_repr(self) -> str:
        s = f"loss_weight={self.loss_weight}, avg_non_ignore={self.avg_non_ignore}, loss_name={self.loss_name!r}"
        if self.class_weight is not None:
            s += f", class_weight=<{len(self.class_weight)} values>"
        return s


def build_loss(cfg: dict) -> CrossEntropyLoss:
    """mmseg's `loss_decode` dict -> CrossEntropyLoss; other types and unknown keys raise ValueError."""
    if not isinstance(cfg, dict):
        raise TypeError(
            f"loss_decode must be a dict like dict(type='CrossEntropyLoss'), got {type(cfg).__name__} "
            "(lists of losses are not supported)"
        )
    cfg = dict(cfg)
    kind = cfg.pop("type", None)
    if kind != "CrossEntropyLoss":
        raise ValueError(f"loss_decode['type'] must be 'CrossEntropyLoss', got {kind!r}")
    allowed = set(inspect.signature(CrossEntropyLoss).parameters)
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        raise ValueError(f"loss_decode has unknown keys {unknown}; supported: {sorted(allowed)}")
    return CrossEntropyLoss(**cfg)


def check_labels(logits: Tensor, labels: Tensor) -> None:
    if logits.dim() != 4:
        raise ValueError(f"logits must be (B, num_classes, h, w), got shape {tuple(logits.shape)}")
    if labels.dim() != 3 or labels.shape[0] != logits.shape[0]:
        raise ValueError(
            f"labels must be (B, H, W) with B = {logits.shape[0]} as in logits, got shape {tuple(labels.shape)}"
        )
    if labels.dtype != torch.int64:
        raise TypeError(f"labels must be int64, got {labels.dtype}")
    if labels.device != logits.device:
        raise ValueError(f"labels are on {labels.device}, logits on {logits.device}")


@torch.no_grad()
def acc_seg(
    logits: Tensor, labels: Tensor, *, ignore_index: Optional[int] = 255, align_corners: bool = False
) -> Tensor:
    """The `acc_seg` mmseg logs in training: percentage of non-ignored pixels whose argmax class is the label.

    logits (B, K, h, w), resized bilinearly to the labels' (H, W) with `align_corners` as the head's loss does;
    labels (B, H, W) int64. Returns a (1,) tensor in percent, with mmseg's eps guards:
    100 * (correct + eps) / (valid + eps), so a batch with no valid pixel gives 100.
    """
    check_labels(logits, labels)
    if logits.shape[2:] != labels.shape[1:]:
        logits = resize(logits, labels.shape[1:], align_corners)
    pred = logits.topk(1, dim=1).indices.squeeze(1)  # topk, not argmax: mmseg's tie-breaking
    correct = pred == labels
    if ignore_index is not None:
        valid = labels != ignore_index
        correct = correct[valid]
        total = int(valid.sum())
    else:
        total = labels.numel()
    return (correct.sum().float().reshape(1) + _EPS).mul_(100.0 / (total + _EPS))
