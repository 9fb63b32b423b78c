# mmseg's resnest_s101-d8_deeplabv3plus_4xb2-80k_cityscapes-512x1024: ResNeSt-101-D8 + DepthwiseSeparableASPPHead, cityscapes, 80k iterations
# (the published run used 4 GPUs x 2 images, SyncBN).
_base_ = [
    "../_base_/models/deeplabv3plus_s101-d8.py",
    "../_base_/datasets/cityscapes.py",
    "../_base_/default_runtime.py",
    "../_base_/schedules/schedule_80k.py",
]
