"""ResNeSt backbone with mmsegmentation's arguments, semantics and state_dict names, built on the fused
SplitAttentionConv2d.

The structure is mmseg's `ResNeSt(ResNetV1d)`: a deep stem (three 3x3 convs, keys `stem.{0,1,3,4,6,7}`) and a
max-pool; four stages of ResNeSt bottlenecks (`conv1`/`bn1` 1x1, `conv2` split-attention 3x3, an optional
`avd_layer` 3x3 avg-pool carrying the stride, `conv3`/`bn3` 1x1) with an AvgPool -> 1x1 conv -> BN shortcut
(`downsample.{0,1,2}`, the pool present even at stride 1, as ResNetV1d builds it). The dilated "D8" variants
use strides (1, 2, 1, 1), dilations (1, 1, 2, 4) and `contract_dilation=True` (the first block of a dilated
stage uses half the dilation). An mmseg state_dict therefore loads with strict=True and gives the same features.
"""
import math
from typing import Optional, Sequence, Tuple

import torch
import torch.utils.checkpoint as cp
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from resnest_fast.nn import SplitAttentionConv2d, build_norm, check_conv_cfg
from resnest_fast.nn.bn_relu_conv import bn_relu_conv
from resnest_fast.utils import check_input_dtype

__all__ = ["Bottleneck", "ResLayer", "ResNeSt"]


def _conv(conv_cfg, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1):
    check_conv_cfg(conv_cfg)
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, dilation=dilation,
                     bias=False)


class Bottleneck(nn.Module):
    """ResNeSt bottleneck: 1x1 conv -> BN -> ReLU -> split-attention 3x3 -> [3x3 avg-pool stride s] -> 1x1 conv ->
    BN, plus the shortcut, then ReLU.

    Shapes: (B, inplanes, H, W) -> (B, planes * 4, H / stride, W / stride).
    `groups > 1` uses width floor(planes * base_width / base_channels) * groups, as mmseg does.
    """

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: Optional[nn.Module] = None,
        groups: int = 1,
        base_width: int = 4,
        base_channels: int = 64,
        radix: int = 2,
        reduction_factor: int = 4,
        avg_down_stride: bool = True,
        style: str = "pytorch",
        with_cp: bool = False,
        conv_cfg: Optional[dict] = None,
        norm_cfg: Optional[dict] = None,
        backend: Optional[str] = None,
    ):
        super().__init__()
        if style not in ("pytorch", "caffe"):
            raise ValueError(f"style must be 'pytorch' or 'caffe', got {style!r}")
        norm_cfg = dict(type="BN") if norm_cfg is None else norm_cfg
        self.inplanes, self.planes = inplanes, planes
        self.stride, self.dilation = stride, dilation
        self.style, self.with_cp = style, with_cp
        self.conv1_stride, self.conv2_stride = (1, stride) if style == "pytorch" else (stride, 1)
        width = planes if groups == 1 else math.floor(planes * (base_width / base_channels)) * groups
        self.avg_down_stride = avg_down_stride and self.conv2_stride > 1

        self.conv1 = _conv(conv_cfg, inplanes, width, 1, stride=self.conv1_stride)
        self.bn1 = build_norm(norm_cfg, width)
        self.conv2 = SplitAttentionConv2d(
            width, width, kernel_size=3, stride=1 if self.avg_down_stride else self.conv2_stride,
            padding=dilation, dilation=dilation, groups=groups, radix=radix, reduction_factor=reduction_factor,
            conv_cfg=conv_cfg, norm_cfg=norm_cfg, backend=backend,
        )
        if self.avg_down_stride:
            self.avd_layer = nn.AvgPool2d(3, self.conv2_stride, padding=1)
        self.conv3 = _conv(conv_cfg, width, planes * self.expansion, 1)
        self.bn3 = build_norm(norm_cfg, planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    @property
    def norm1(self) -> nn.Module:
        return self.bn1

    @property
    def norm3(self) -> nn.Module:
        return self.bn3

    def _inner_forward(self, x: Tensor) -> Tensor:
        # bn1 -> relu -> the split attention's conv without keeping the ReLU output for backward (bn_relu_conv)
        y = bn_relu_conv(self.conv1(x), self.bn1, self.conv2.conv)
        out = self.conv2.attend(y)
        if self.avg_down_stride:
            out = self.avd_layer(out)
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity

    def forward(self, x: Tensor) -> Tensor:
        if self.with_cp and x.requires_grad and torch.is_grad_enabled():
            # Only the block's input is kept; everything inside is recomputed in backward. As in mmseg (and any
            # checkpointed BatchNorm), the recomputation updates the running statistics a second time.
            out = cp.checkpoint(self._inner_forward, x, use_reentrant=False)
        else:
            out = self._inner_forward(x)
        return self.relu(out)


class ResLayer(nn.Sequential):
    """A stage: the first block carries the stride (and the AvgPool -> 1x1 conv -> BN shortcut), the others keep
    the resolution. `contract_dilation` halves the first block's dilation; `multi_grid` gives each block's."""

    def __init__(
        self,
        block,
        inplanes: int,
        planes: int,
        num_blocks: int,
        stride: int = 1,
        dilation: int = 1,
        avg_down: bool = True,
        conv_cfg: Optional[dict] = None,
        norm_cfg: Optional[dict] = None,
        multi_grid: Optional[Sequence[int]] = None,
        contract_dilation: bool = False,
        **kwargs,
    ):
        norm_cfg = dict(type="BN") if norm_cfg is None else norm_cfg
        downsample = None
        if stride != 1 or inplanes != planes * block.expansion:
            layers = []
            conv_stride = stride
            if avg_down:
                conv_stride = 1
                layers.append(nn.AvgPool2d(kernel_size=stride, stride=stride, ceil_mode=True,
                                           count_include_pad=False))
            layers += [_conv(conv_cfg, inplanes, planes * block.expansion, 1, stride=conv_stride),
                       build_norm(norm_cfg, planes * block.expansion)]
            downsample = nn.Sequential(*layers)
        if multi_grid is not None:
            if len(multi_grid) != num_blocks:
                raise ValueError(f"multi_grid must have one dilation per block ({num_blocks}), got {multi_grid!r}")
            dilations = list(multi_grid)
        else:
            first = dilation // 2 if (dilation > 1 and contract_dilation) else dilation
            dilations = [first] + [dilation] * (num_blocks - 1)
        blocks = [block(inplanes=inplanes, planes=planes, stride=stride, dilation=dilations[0],
                        downsample=downsample, conv_cfg=conv_cfg, norm_cfg=norm_cfg, **kwargs)]
        for i in range(1, num_blocks):
            blocks.append(block(inplanes=planes * block.expansion, planes=planes, stride=1, dilation=dilations[i],
                                conv_cfg=conv_cfg, norm_cfg=norm_cfg, **kwargs))
        super().__init__(*blocks)


class ResNeSt(nn.Module):
    """ResNeSt backbone (mmseg's `ResNeSt`, a `ResNetV1d`: deep stem, average-pool shortcuts).

    Args (mmseg's names and defaults):
        depth: 50, 101, 152, 200 or 269.
        in_channels: image channels. stem_channels: width of the deep stem (64 for S-50, 128 for S-101 and up).
        base_channels: width of the first stage's bottleneck (64).
        num_stages: 1-4. strides, dilations: per stage. out_indices: the stages whose outputs are returned.
        style: 'pytorch' (stride on the 3x3) or 'caffe' (stride on the first 1x1).
        groups, base_width: cardinality and width per group of the split-attention conv.
        radix, reduction_factor: split attention (radix 1 is a sigmoid gate).
        avg_down_stride: move a block's stride into a 3x3 avg-pool after the split-attention conv.
        frozen_stages: freeze the stem (0) and stages 1..frozen_stages (parameters and BN statistics).
        norm_cfg: dict(type='BN' | 'SyncBN', requires_grad=...). norm_eval: keep BN layers in eval mode in train().
        multi_grid: dilations of the last stage's blocks. contract_dilation: halve the first dilation of a stage.
        with_cp: activation checkpointing per block. zero_init_residual: bn3 starts at zero (init_weights). Off by
            default, unlike mmseg's signature: mmseg 1.2.2's ResNeSt accepts it but never applies it (its ResNet
            tests `block is Bottleneck`, and ResNeSt's bottleneck is a subclass), so its bn3 starts at 1, and a
            model trained from scratch here starts where mmseg's does. True zeroes bn3 as asked.
        backend: backend of the fused split-attention ops (None: the default; see resnest_fast.set_default_backend).
    Input (B, in_channels, H, W) -> tuple of the selected stage outputs, stage i of shape
    (B, base_channels * 2**i * 4, H / s_i, W / s_i) with s = 4 * cumulative strides.
    """

    arch_settings = {
        50: (3, 4, 6, 3),
        101: (3, 4, 23, 3),
        152: (3, 8, 36, 3),
        200: (3, 24, 36, 3),
        269: (3, 30, 48, 8),
    }

    def __init__(
        self,
        depth: int,
        in_channels: int = 3,
        stem_channels: int = 64,
        base_channels: int = 64,
        num_stages: int = 4,
        strides: Sequence[int] = (1, 2, 2, 2),
        dilations: Sequence[int] = (1, 1, 1, 1),
        out_indices: Sequence[int] = (0, 1, 2, 3),
        style: str = "pytorch",
        frozen_stages: int = -1,
        conv_cfg: Optional[dict] = None,
        norm_cfg: Optional[dict] = None,
        norm_eval: bool = False,
        multi_grid: Optional[Sequence[int]] = None,
        contract_dilation: bool = False,
        with_cp: bool = False,
        zero_init_residual: bool = False,
        groups: int = 1,
        base_width: int = 4,
        radix: int = 2,
        reduction_factor: int = 4,
        avg_down_stride: bool = True,
        backend: Optional[str] = None,
        dcn: Optional[dict] = None,
        stage_with_dcn: Sequence[bool] = (False, False, False, False),
        plugins: Optional[list] = None,
        deep_stem: bool = True,
        avg_down: bool = True,
        pretrained: Optional[str] = None,
        init_cfg: Optional[dict] = None,
    ):
        super().__init__()
        if depth not in self.arch_settings:
            raise ValueError(f"depth must be one of {sorted(self.arch_settings)}, got {depth!r}")
        if not 1 <= num_stages <= 4:
            raise ValueError(f"num_stages must be in [1, 4], got {num_stages!r}")
        if len(strides) != num_stages or len(dilations) != num_stages:
            raise ValueError(
                f"strides and dilations must have num_stages ({num_stages}) entries, got {tuple(strides)} and "
                f"{tuple(dilations)}"
            )
        if not out_indices or max(out_indices) >= num_stages or min(out_indices) < 0:
            raise ValueError(f"out_indices must be stage indices in [0, {num_stages - 1}], got {tuple(out_indices)}")
        if not -1 <= frozen_stages <= num_stages:
            raise ValueError(f"frozen_stages must be in [-1, {num_stages}], got {frozen_stages!r}")
        if dcn is not None or any(stage_with_dcn[:num_stages]) or plugins:
            raise NotImplementedError("dcn and plugins are not supported (the ResNeSt configs use neither)")
        if not deep_stem or not avg_down:
            raise ValueError("ResNeSt is a ResNetV1d: deep_stem and avg_down must be True")
        if pretrained is not None or init_cfg is not None:
            raise ValueError(
                "pretrained/init_cfg are not supported here: load ImageNet weights (a file or open-mmlab://resnestNNN) "
                "with resnest_fast.models.load_pretrained(backbone, source), and mmseg checkpoints with "
                "resnest_fast.load_checkpoint(model, path)"
            )
        norm_cfg = dict(type="BN", requires_grad=True) if norm_cfg is None else dict(norm_cfg)
        self.depth = depth
        self.stem_channels, self.base_channels = stem_channels, base_channels
        self.num_stages = num_stages
        self.strides, self.dilations = tuple(strides), tuple(dilations)
        self.out_indices = tuple(out_indices)
        self.style = style
        self.frozen_stages = frozen_stages
        self.norm_cfg = norm_cfg
        self.norm_eval = norm_eval
        self.with_cp = with_cp
        self.zero_init_residual = zero_init_residual
        self.groups, self.base_width = groups, base_width
        self.radix, self.reduction_factor = radix, reduction_factor
        self.avg_down_stride = avg_down_stride
        self.contract_dilation = contract_dilation
        self.multi_grid = multi_grid
        self.stage_blocks = self.arch_settings[depth][:num_stages]

        half = stem_channels // 2
        self.stem = nn.Sequential(
            _conv(conv_cfg, in_channels, half, 3, stride=2, padding=1), build_norm(norm_cfg, half),
            nn.ReLU(inplace=True),
            _conv(conv_cfg, half, half, 3, padding=1), build_norm(norm_cfg, half), nn.ReLU(inplace=True),
            _conv(conv_cfg, half, stem_channels, 3, padding=1), build_norm(norm_cfg, stem_channels),
            nn.ReLU(inplace=True),
        )
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.res_layers = []
        inplanes = stem_channels
        for i, num_blocks in enumerate(self.stage_blocks):
            planes = base_channels * 2**i
            layer = ResLayer(
                Bottleneck, inplanes, planes, num_blocks, stride=strides[i], dilation=dilations[i],
                avg_down=True, conv_cfg=conv_cfg, norm_cfg=norm_cfg,
                multi_grid=multi_grid if i == num_stages - 1 else None, contract_dilation=contract_dilation,
                groups=groups, base_width=base_width, base_channels=base_channels, radix=radix,
                reduction_factor=reduction_factor, avg_down_stride=avg_down_stride, style=style, with_cp=with_cp,
                backend=backend,
            )
            inplanes = planes * Bottleneck.expansion
            self.add_module(f"layer{i + 1}", layer)
            self.res_layers.append(f"layer{i + 1}")
        self.feat_dim = inplanes
        # one per returned feature: forward returns the stages in stage order, each once, whatever out_indices'
        # order or repeats (as mmseg's ResNet does)
        self.out_channels = tuple(base_channels * 2**i * Bottleneck.expansion for i in sorted(set(self.out_indices)))
        self.init_weights()
        self._freeze_stages()

    def init_weights(self) -> None:
        """mmseg's initialisation without a checkpoint: Kaiming normal (fan_out, relu) for every conv, BN weight 1
        and bias 0; bn3 of every block at 0 only when zero_init_residual (each block then starts as its shortcut)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (_BatchNorm, nn.GroupNorm)):
                if m.weight is not None:
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
        if self.zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                    nn.init.zeros_(m.bn3.bias)

    def _freeze_stages(self) -> None:
        if self.frozen_stages < 0:
            return
        frozen = [self.stem] + [getattr(self, f"layer{i}") for i in range(1, self.frozen_stages + 1)]
        for m in frozen:
            m.eval()
            for p in m.parameters():
                p.requires_grad = False

    def train(self, mode: bool = True) -> "ResNeSt":
        """As mmseg: frozen stages stay in eval mode, and norm_eval keeps every BN layer in eval mode.
        (Unlike mmseg's, this returns the module.)"""
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        if x.dim() != 4:
            raise ValueError(f"ResNeSt expects x of shape (B, C, H, W), got {tuple(x.shape)}")
        check_input_dtype("ResNeSt", x, getattr(self.stem[0], "weight", None))
        # the stem is mmseg's Sequential (its state_dict names); run so that only BN inputs are kept for backward
        s = self.stem
        if self.training and torch.is_grad_enabled() and len(s) == 9:
            x = bn_relu_conv(bn_relu_conv(s[0](x), s[1], s[3]), s[4], s[6])
            x = s[8](s[7](x))
        else:
            x = s(x)
        x = self.maxpool(x)
        outs = []
        for i, name in enumerate(self.res_layers):
            x = getattr(self, name)(x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)
