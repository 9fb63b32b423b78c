"""EncoderDecoder: mmseg's encoder-decoder segmentor around the fused ResNeSt backbone.

Same submodule names as mmseg (`backbone`, `decode_head`, `auxiliary_head`), so an mmseg checkpoint's
`state_dict` loads with strict=True; same maths: input normalisation with the data preprocessor's mean/std,
decode logits resized to the input with the head's align_corners, whole or sliding-window inference with mmseg's
window rule, and the training losses `decode.loss_ce` + `aux.loss_ce` (weight 0.4 in the ResNeSt configs).

Channel order. Images come in as (B, 3, H, W), 0-255 (uint8 or float), in `model.input_order`: 'rgb' for every
model built from a config file, this project's or mmseg's alike, because every loader of this project decodes RGB
(pillow). mmseg's files say `bgr_to_rgb=True` since mmcv decodes BGR (OpenCV) and swaps to RGB; the config loader
translates that, in one place (segmentation.mmseg_config), into this model's `bgr_to_rgb=False`, so the network
sees the same RGB input either way and `model(x)` / `model.predict(x)` want RGB whichever file built the model.
Here `data_preprocessor`'s `bgr_to_rgb` / `rgb_to_bgr` (either: swap the channels before normalising) describe what
this model is given, not what a decoder produced: to feed OpenCV arrays (BGR) either reverse the channels yourself
(`model(x.flip(1))`, or `img[..., ::-1]` on the HWC array) or build the model with
`data_preprocessor=dict(..., bgr_to_rgb=True)` in a dict or a config of this project's schema; its `input_order`
is then 'bgr' and it must not be given the RGB images of this project's loaders or commands.
"""
import itertools
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from resnest_fast.models import ResNeSt
from resnest_fast.segmentation.decode_heads import BaseDecodeHead, build_head, resize
from resnest_fast.utils import eval_mode, int_pair

__all__ = ["EncoderDecoder", "build_segmentor", "check_image", "default_stride", "slide_settings", "slide_windows"]

_PREPROCESSOR_KEYS = {"type", "mean", "std", "bgr_to_rgb", "rgb_to_bgr", "pad_val", "seg_pad_val", "size",
                      "size_divisor", "test_cfg"}


def slide_windows(crop_size, stride) -> Tuple[Tuple[int, int], Tuple[int, int]]:
    """(crop_size, stride) as pairs (h, w) of positive ints, the sliding-window settings of `inference`.

    A stride larger than the window leaves rows or columns that no window covers: their logits would be 0 / 0
    (NaN) and their label 0, so it is refused here, the one check the model and the commands share."""
    crop = int_pair(crop_size, "crop_size", 1)
    step = int_pair(stride, "stride", 1)
    if step[0] > crop[0] or step[1] > crop[1]:
        raise ValueError(f"stride {step} is larger than crop_size {crop}: pixels between the windows would get no "
                         "prediction (use a stride <= crop_size)")
    return crop, step


def default_stride(crop_size) -> Tuple[int, int]:
    """The stride of sliding windows given none: 2/3 of the window (mmseg's ADE20k slide settings, 512 -> 341)."""
    return tuple(max(1, int(c * 2 / 3)) for c in int_pair(crop_size, "crop_size", 1))


NO_WINDOWS = ("slide mode needs windows: set test_cfg's crop_size (the model has no training crop, "
              "data_preprocessor's size, to take instead)")


def slide_settings(test_cfg: dict, crop_size=None, stride=None,
                   training_crop=None) -> Tuple[Tuple[int, int], Tuple[int, int]]:
    """The sliding windows (crop_size, stride), pairs (h, w), of a slide inference given the arguments of a call:
    the one rule of `EncoderDecoder.inference` (model.predict, segment_image) and of the commands
    (`segmentation.inference.slide_defaults`), so that the same arguments give the same windows everywhere.

    - the window: crop_size as given, else test_cfg's crop_size, else `training_crop` (data_preprocessor's size);
    - the stride: as given, else test_cfg's when the window is test_cfg's (none given, or test_cfg's own), else
      2/3 of the window (`default_stride`). A stride is never taken from another window than the one it was set
      for: test_cfg's (32, 32) with a crop_size of (16, 16) would leave pixels without a prediction.
    ValueError when there is no window (NO_WINDOWS) or the stride is larger than the window (`slide_windows`)."""
    own_crop = test_cfg.get("crop_size")
    own_crop = None if own_crop is None else int_pair(own_crop, "test_cfg['crop_size']", 1)
    crop = crop_size if crop_size is not None else own_crop if own_crop is not None else training_crop
    if crop is None:
        raise ValueError(NO_WINDOWS)
    crop = int_pair(crop, "crop_size", 1)
    if stride is None and crop == own_crop:
        stride = test_cfg.get("stride")
    return slide_windows(crop, default_stride(crop) if stride is None else stride)


def check_image(img, name: str = "img") -> None:
    """A ValueError/TypeError naming `name` unless img is a (B, 3, H, W) tensor with B, H, W >= 1 of 0-255 RGB
    values, uint8 or floating point (or another integer type; all are converted to the model's dtype)."""
    if not isinstance(img, Tensor):
        raise TypeError(f"{name} must be a (B, 3, H, W) torch.Tensor of 0-255 RGB values, got {type(img).__name__}")
    if img.dim() != 4 or img.shape[1] != 3 or 0 in img.shape:
        raise ValueError(f"{name} must be a (B, 3, H, W) tensor of 0-255 RGB values with B, H, W >= 1, "
                         f"got shape {tuple(img.shape)}")
    if img.dtype == torch.bool or img.is_complex():
        raise TypeError(f"{name} must be uint8 or floating point (0-255 RGB values), got {img.dtype}")


def build_backbone(cfg) -> ResNeSt:
    if isinstance(cfg, nn.Module):
        return cfg
    if not isinstance(cfg, dict):
        raise TypeError(f"backbone must be a dict like dict(type='ResNeSt', depth=101, ...) or a module, got {cfg!r}")
    cfg = dict(cfg)
    kind = cfg.pop("type", "ResNeSt")
    if kind != "ResNeSt":
        raise ValueError(f"backbone['type'] must be 'ResNeSt', got {kind!r}")
    return ResNeSt(**cfg)


class EncoderDecoder(nn.Module):
    """backbone -> decode_head (+ auxiliary_head in training), mmseg's EncoderDecoder.

    Args:
        backbone: dict(type='ResNeSt', ...) (mmseg's backbone config) or a module returning a tuple of features.
        decode_head, auxiliary_head: mmseg head configs (see segmentation.decode_heads.build_head); auxiliary may
            be None.
        data_preprocessor: dict(mean, std, bgr_to_rgb=False, pad_val=0, seg_pad_val=255, size=None) as mmseg's
            SegDataPreProcessor; `size` is the training crop that batches are padded to. mean and std are in the
            network's channel order (R, G, B); bgr_to_rgb (or rgb_to_bgr) True: the images given are BGR and are
            swapped first (`input_order` 'bgr'), see the module docstring for mmseg's files.
        test_cfg: dict(mode='whole') or dict(mode='slide', crop_size=(h, w), stride=(h, w)); slide without a
            crop_size takes data_preprocessor's size (the training crop), without a stride 2/3 of the window.
        backend: backend of the fused split-attention ops (None: the default).
    forward(img (B, 3, H, W) 0-255, in `input_order`: RGB unless built with bgr_to_rgb=True) -> logits
    (B, num_classes, H, W) (what you deploy; argmax is the label map). `decode(x)` is mmseg's
    `forward(mode='tensor')`: normalised input -> logits at 1/8 resolution.
    """

    def __init__(
        self,
        backbone,
        decode_head: dict,
        auxiliary_head: Optional[dict] = None,
        data_preprocessor: Optional[dict] = None,
        test_cfg: Optional[dict] = None,
        train_cfg: Optional[dict] = None,
        pretrained: Optional[str] = None,
        backend: Optional[str] = None,
    ):
        super().__init__()
        if train_cfg:
            raise ValueError(f"train_cfg must be empty (no sampler is implemented), got {train_cfg!r}")
        if isinstance(backbone, dict) and backend is not None:
            backbone = dict(backbone, backend=backend)
        self.backbone = build_backbone(backbone)
        self.decode_head: BaseDecodeHead = build_head(decode_head)
        self.auxiliary_head: Optional[BaseDecodeHead] = (
            None if auxiliary_head is None else build_head(auxiliary_head)
        )
        self._check_head_inputs()
        self.num_classes = self.decode_head.num_classes
        self.align_corners = self.decode_head.align_corners
        # ImageNet weights for the backbone (a file or open-mmlab://NAME): only the training command loads them,
        # through resnest_fast.models.load_pretrained, as only mmseg's init_weights does
        self.pretrained = pretrained
        pre = dict(data_preprocessor or {})
        unknown = set(pre) - _PREPROCESSOR_KEYS
        if unknown:
            raise ValueError(f"data_preprocessor has unknown keys {sorted(unknown)}")
        mean = pre.get("mean", (123.675, 116.28, 103.53))
        std = pre.get("std", (58.395, 57.12, 57.375))
        for name, v in (("mean", mean), ("std", std)):
            if len(v) != 3:
                raise ValueError(f"data_preprocessor['{name}'] must have 3 values (R, G, B), got {v!r}")
        if any(s <= 0 for s in std):
            raise ValueError(f"data_preprocessor['std'] must be positive, got {std!r}")
        # Not persistent: mmseg keeps them out of its state_dict too.
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        if pre.get("bgr_to_rgb") and pre.get("rgb_to_bgr"):
            raise ValueError("data_preprocessor: bgr_to_rgb and rgb_to_bgr cannot both be True")
        self.bgr_to_rgb = bool(pre.get("bgr_to_rgb", False) or pre.get("rgb_to_bgr", False))
        self.pad_val = pre.get("pad_val", 0)
        self.seg_pad_val = pre.get("seg_pad_val", 255)
        self.crop_size = None if pre.get("size") is None else int_pair(pre["size"], "data_preprocessor['size']", 1)
        self.test_cfg = self._check_test_cfg(dict(test_cfg or dict(mode="whole")))

    def _check_head_inputs(self) -> None:
        """ValueError naming the head when its in_index or in_channels does not fit the ResNeSt backbone's features:
        the heads alone cannot know them, and the first forward (a training run's first iteration) would fail with
        an IndexError or a shape error instead. Another backbone module is taken as it is."""
        if not isinstance(self.backbone, ResNeSt):
            return
        channels, n = self.backbone.out_channels, len(self.backbone.out_channels)
        for name, head in (("decode_head", self.decode_head), ("auxiliary_head", self.auxiliary_head)):
            if head is None:
                continue
            if not -n <= head.in_index < n:
                raise ValueError(f"{name}.in_index={head.in_index} is out of range: the backbone returns {n} features "
                                 f"(out_indices {self.backbone.out_indices}), so in_index must be in {-n}..{n - 1}")
            if head.in_channels != channels[head.in_index]:
                raise ValueError(f"{name}.in_channels={head.in_channels} does not fit feature {head.in_index} of the "
                                 f"backbone, which has {channels[head.in_index]} channels")

    def _check_test_cfg(self, cfg: dict) -> dict:
        """test_cfg with its windows checked. Slide mode without a crop_size takes the training crop
        (data_preprocessor's size, `crop_size`) and without a stride 2/3 of the window (`slide_settings`)."""
        mode = cfg.get("mode", "whole")
        if mode not in ("whole", "slide"):
            raise ValueError(f"test_cfg['mode'] must be 'whole' or 'slide', got {mode!r}")
        if mode == "slide":
            cfg["crop_size"], cfg["stride"] = slide_settings(cfg, training_crop=self.crop_size)
        cfg["mode"] = mode
        return cfg

    @property
    def input_order(self) -> str:
        """'rgb' or 'bgr': the channel order the images given to forward / inference / predict / loss must have."""
        return "bgr" if self.bgr_to_rgb else "rgb"

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, input_order={self.input_order!r}, test_cfg={self.test_cfg}, "
                f"crop_size={self.crop_size}")

    # ------------------------------------------------------------------------------------------------ inputs
    def weight_dtype(self) -> torch.dtype:
        """The dtype of the model's weights: that of its first floating parameter or buffer (a conv may hold its
        weight in another form than `.weight`, as optimize_for_inference's do once they have run)."""
        for t in itertools.chain(self.parameters(), self.buffers()):
            if t.is_floating_point():
                return t.dtype
        return torch.get_default_dtype()

    def preprocess(self, img: Tensor, img_shape: Optional[Sequence[Tuple[int, int]]] = None) -> Tensor:
        """(B, 3, H, W) 0-255 image (uint8 or float) -> normalised float input, in the model's dtype.

        img_shape: each sample's (h, w) before the batch was padded (what `data.collate` records). mmseg
        normalises first and pads with 0 afterwards, so the padded area (outside each img_shape) is set to 0
        after normalisation; without img_shape the whole tensor is normalised as it is."""
        check_image(img)
        # the model's dtype for uint8 and float images alike: a float32 image must not reach a float64 (or
        # bfloat16) model's first conv in float32
        x = img.to(self.weight_dtype())
        if self.bgr_to_rgb:
            x = x.flip(1)
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        if img_shape is not None:
            if len(img_shape) != x.shape[0]:
                raise ValueError(f"img_shape has {len(img_shape)} entries for a batch of {x.shape[0]} images")
            for i, (h, w) in enumerate(img_shape):
                if h < x.shape[2]:
                    x[i, :, h:, :] = 0
                if w < x.shape[3]:
                    x[i, :, :, w:] = 0
        return x

    # ------------------------------------------------------------------------------------------------- model
    def extract_feat(self, x: Tensor) -> Tuple[Tensor, ...]:
        return self.backbone(x)

    def decode(self, x: Tensor) -> Tensor:
        """Normalised input -> decode-head logits at the head's resolution (mmseg's `forward(mode='tensor')`)."""
        return self.decode_head(self.extract_feat(x))

    def encode_decode(self, x: Tensor) -> Tensor:
        """Normalised input (B, 3, H, W) -> logits (B, num_classes, H, W) (mmseg's encode_decode)."""
        return resize(self.decode(x), x.shape[2:], self.align_corners)

    def forward(self, img: Tensor) -> Tensor:
        """RGB 0-255 image (B, 3, H, W) -> logits (B, num_classes, H, W), whole-image inference."""
        return self.encode_decode(self.preprocess(img))

    # ------------------------------------------------------------------------------------------------- train
    def loss(self, img: Tensor, labels: Tensor,
             img_shape: Optional[Sequence[Tuple[int, int]]] = None) -> Dict[str, Tensor]:
        """img (B, 3, H, W) RGB 0-255, labels (B, H, W) int64 (255 = ignore) -> mmseg's loss dict:
        decode.loss_ce, decode.acc_seg, aux.loss_ce, aux.acc_seg. `sum_losses` adds the *loss* entries.
        img_shape: the sizes before padding of a padded batch (see `preprocess`)."""
        x = self.preprocess(img, img_shape)
        if labels.dim() != 3 or labels.shape[0] != img.shape[0]:
            raise ValueError(f"labels must be (B, H, W) with B = {img.shape[0]}, got {tuple(labels.shape)}")
        feats = self.extract_feat(x)
        losses = {}
        heads = [("decode", self.decode_head)] + ([("aux", self.auxiliary_head)] if self.auxiliary_head else [])
        for prefix, head in heads:  # the decode head first: the heads' dropout draws in mmseg's order
            logits = head(feats)
            losses[f"{prefix}.loss_ce"] = head.loss(logits, labels)
            losses[f"{prefix}.acc_seg"] = head.acc_seg(logits.detach(), labels)
        return losses

    @staticmethod
    def sum_losses(losses: Dict[str, Tensor]) -> Tensor:
        return sum(v for k, v in losses.items() if "loss" in k)

    # --------------------------------------------------------------------------------------------- inference
    @torch.no_grad()
    def inference(self, img: Tensor, mode: Optional[str] = None, crop_size=None, stride=None) -> Tensor:
        """RGB 0-255 (B, 3, H, W) -> logits (B, num_classes, H, W), whole or sliding-window as test_cfg says
        (arguments override it). Slide: mmseg's windows (the last one of a row or column flush with the border),
        logits averaged where windows overlap; the windows follow `slide_settings`, as in the commands: none given,
        test_cfg's (else the training crop, `crop_size`, with a stride of 2/3 of it); a crop_size without a stride,
        2/3 of that window as stride (test_cfg's stride only for test_cfg's own window).

        Runs in eval mode whatever mode the model is in, and leaves every module's flag as it was: in train mode the
        BatchNorms would use the batch's statistics and overwrite their running ones (and refuse a single image),
        which is never what an inference wants (mmseg's tools put the model in eval before they predict)."""
        with eval_mode(self):
            return self._inference(img, mode, crop_size, stride)

    def _inference(self, img: Tensor, mode, crop_size, stride) -> Tensor:
        x = self.preprocess(img)
        mode = self.test_cfg["mode"] if mode is None else mode
        if mode not in ("whole", "slide"):
            raise ValueError(f"mode must be 'whole' or 'slide', got {mode!r}")
        if mode == "whole":
            return self.encode_decode(x)
        return self.slide_inference(x, *slide_settings(self.test_cfg, crop_size, stride, self.crop_size))

    def slide_inference(self, x: Tensor, crop_size: Sequence[int], stride: Sequence[int]) -> Tensor:
        (h_crop, w_crop), (h_stride, w_stride) = crop_size, stride
        batch, _, h_img, w_img = x.shape
        h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
        w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
        preds = x.new_zeros((batch, self.num_classes, h_img, w_img))
        count = x.new_zeros((1, 1, h_img, w_img))
        for h_idx in range(h_grids):
            for w_idx in range(w_grids):
                y2 = min(h_idx * h_stride + h_crop, h_img)
                x2 = min(w_idx * w_stride + w_crop, w_img)
                y1, x1 = max(y2 - h_crop, 0), max(x2 - w_crop, 0)
                crop_logits = self.encode_decode(x[:, :, y1:y2, x1:x2])
                preds[:, :, y1:y2, x1:x2] += crop_logits
                count[:, :, y1:y2, x1:x2] += 1
        return preds / count

    @torch.no_grad()
    def predict(self, img: Tensor, **kwargs) -> Tensor:
        """RGB 0-255 (B, 3, H, W) -> label map (B, H, W) int64 (in eval mode, as `inference`)."""
        return self.inference(img, **kwargs).argmax(1)


def build_segmentor(cfg: dict, backend: Optional[str] = None) -> EncoderDecoder:
    """A segmentor from a `model` config dict (mmseg's layout: type='EncoderDecoder', backbone, decode_head,
    auxiliary_head, data_preprocessor, test_cfg)."""
    if not isinstance(cfg, dict):
        raise TypeError(f"the model config must be a dict, got {type(cfg).__name__}")
    cfg = dict(cfg)
    kind = cfg.pop("type", "EncoderDecoder")
    if kind != "EncoderDecoder":
        raise ValueError(f"model['type'] must be 'EncoderDecoder', got {kind!r}")
    return EncoderDecoder(**cfg, backend=backend)
