"""nn.Modules of resnest_fast (mmseg's class names and parameter names)."""
from resnest_fast.nn.norm import build_norm, check_conv_cfg
from resnest_fast.nn.split_attention import RSoftmax, SplitAttentionConv2d
from resnest_fast.nn.sync_batchnorm import DistributedDataParallel, SyncBatchNorm, sync_batch_norm

__all__ = ["SplitAttentionConv2d", "RSoftmax", "build_norm", "check_conv_cfg", "SyncBatchNorm", "sync_batch_norm",
           "DistributedDataParallel"]
