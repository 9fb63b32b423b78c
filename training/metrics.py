"""mmseg's IoUMetric maths: per-image areas, summed over the dataset, then aAcc, mIoU, mAcc and per-class IoU/Acc.

For each image, pixels whose label is ``ignore_index`` are dropped; nothing else is remapped. Over the remaining
pixels, with values counted only when they are class ids in [0, num_classes) (mmseg's ``torch.histc`` bins):
  area_intersect[c] = #(pred == label == c)     area_pred_label[c] = #(pred == c)     area_label[c] = #(label == c)
  area_union = area_pred_label + area_label - area_intersect
  aAcc = sum(intersect) / sum(label);  IoU = intersect / union;  Acc = intersect / label
  mIoU, mAcc = nanmean over classes: a class absent from both label and prediction has IoU NaN, a class absent
  from the labels has Acc NaN, and those are left out of the means.
Counts are int64 (mmseg sums float32 histograms, exact only up to 2**24 pixels per class and image). Results are
fractions in [0, 1]; mmseg prints them x100 rounded to 2 decimals, as ``table()`` does.
"""

import math

import numpy as np
import torch


def _as_tensor(x, name):
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")
    if x.is_floating_point() or x.is_complex():
        raise TypeError(
            f"{name} must hold integer class ids, got dtype {x.dtype} (for logits, take argmax over classes first)"
        )
    return x


def intersect_and_union(pred, label, num_classes, ignore_index=255):
    """Areas of one image (or a batch: any shape, pred and label alike) as four int64 tensors of shape
    (num_classes,): (intersect, union, pred_label, label)."""
    pred = _as_tensor(pred, "pred")
    label = _as_tensor(label, "label")
    if pred.shape != label.shape:
        raise ValueError(f"pred has shape {tuple(pred.shape)} but label has shape {tuple(label.shape)}")
    pred = pred.reshape(-1).to(torch.int64)
    label = label.reshape(-1).to(device=pred.device, dtype=torch.int64)
    keep = label != ignore_index
    pred, label = pred[keep], label[keep]

    def count(values):
        values = values[(values >= 0) & (values < num_classes)]
        return torch.bincount(values, minlength=num_classes).cpu()

    area_intersect = count(label[pred == label])
    area_pred = count(pred)
    area_label = count(label)
    return area_intersect, area_pred + area_label - area_intersect, area_pred, area_label


def total_area_to_metrics(area_intersect, area_union, area_pred_label, area_label):
    """Dataset-level metrics from summed areas: {'aAcc', 'mIoU', 'mAcc' (floats), 'IoU', 'Acc' (float64 arrays,
    NaN where undefined)}. area_pred_label is unused by these metrics and accepted for symmetry."""
    inter = np.asarray(area_intersect, dtype=np.float64)
    union = np.asarray(area_union, dtype=np.float64)
    label = np.asarray(area_label, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / union
        acc = inter / label
        a_acc = inter.sum() / label.sum() if label.sum() > 0 else float("nan")
    return {"aAcc": float(a_acc), "mIoU": _nanmean(iou), "mAcc": _nanmean(acc), "IoU": iou, "Acc": acc}


def _nanmean(values):
    valid = values[~np.isnan(values)]
    return float(valid.mean()) if valid.size else float("nan")


class SegEvaluator:
    """Accumulates the four area vectors over images; ``compute()`` gives mmseg's metrics, ``table()`` a readable
    per-class table, ``merge`` / ``all_reduce`` combine the counts of several evaluators or processes."""

    def __init__(self, num_classes, ignore_index=255, class_names=None):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.class_names = tuple(class_names) if class_names is not None else tuple(str(c) for c in range(num_classes))
        self.reset()

    def reset(self):
        # Rows: intersect, union, pred_label, label.
        self.areas = torch.zeros(4, self.num_classes, dtype=torch.int64)
        self.num_images = 0

    @property
    def area_intersect(self):
        return self.areas[0]

    @property
    def area_union(self):
        return self.areas[1]

    @property
    def area_pred_label(self):
        return self.areas[2]

    @property
    def area_label(self):
        return self.areas[3]

    def update(self, pred, label):
        """Add one image (H, W) or a batch (B, H, W) of integer predictions and labels (tensors or arrays)."""
        areas = intersect_and_union(pred, label, self.num_classes, self.ignore_index)
        self.areas += torch.stack(areas)
        shape = pred.shape
        self.num_images += int(shape[0]) if len(shape) == 3 else 1
        return self

    def merge(self, other):
        """Add the counts of another evaluator of the same classes (e.g. one per data shard)."""
        if other.num_classes != self.num_classes or other.ignore_index != self.ignore_index:
            raise ValueError(
                f"cannot merge an evaluator of {other.num_classes} classes (ignore {other.ignore_index}) into one of "
                f"{self.num_classes} classes (ignore {self.ignore_index})"
            )
        self.areas += other.areas
        self.num_images += other.num_images
        return self

    def all_reduce(self, group=None):
        """Sum the counts over the processes of torch.distributed (every rank then holds the totals). A no-op
        when torch.distributed is not available or not initialised."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        device = torch.device("cpu")
        if dist.get_backend(group) == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        packed = torch.cat([self.areas.reshape(-1), torch.tensor([self.num_images])]).to(device)
        dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=group)
        packed = packed.cpu()
        self.areas = packed[:-1].reshape(4, self.num_classes).clone()
        self.num_images = int(packed[-1])
        return self

    def compute(self):
        """{'aAcc', 'mIoU', 'mAcc': float fractions; 'IoU', 'Acc': float64 arrays (num_classes,) with NaN for
        undefined classes; 'per_class': {name: {'IoU', 'Acc'}}}."""
        metrics = total_area_to_metrics(*self.areas.numpy())
        metrics["per_class"] = {
            name: {"IoU": float(metrics["IoU"][c]), "Acc": float(metrics["Acc"][c])}
            for c, name in enumerate(self.class_names)
        }
        return metrics

    def table(self):
        """Per-class IoU and Acc in percent (2 decimals, as mmseg prints them) and the summary line."""
        m = self.compute()

        def pct(v):
            return "nan" if math.isnan(v) else f"{100 * v:.2f}"

        width = max(len("Class"), *(len(n) for n in self.class_names))
        rule = "+" + "-" * (width + 2) + "+--------+--------+"
        lines = [rule, f"| {'Class':<{width}} |    IoU |    Acc |", rule]
        for c, name in enumerate(self.class_names):
            lines.append(f"| {name:<{width}} | {pct(m['IoU'][c]):>6} | {pct(m['Acc'][c]):>6} |")
        lines.append(rule)
        lines.append(
            f"aAcc {pct(m['aAcc'])}  mIoU {pct(m['mIoU'])}  mAcc {pct(m['mAcc'])}  ({self.num_images} images)"
        )
        return "\n".join(lines)

    def __repr__(self):
        return f"{type(self).__name__}(num_classes={self.num_classes}, ignore_index={self.ignore_index}, images={self.num_images})"
