# mmseg's resnest_s101-d8_pspnet_4xb2-80k_cityscapes512x1024: ResNeSt-101-D8 + PSPHead, cityscapes, 80k iterations
# (the published run used 4 GPUs x 2 images, SyncBN).
_base_ = [
    "../_base_/models/pspnet_s101-d8.py",
    "../_base_/datasets/cityscapes.py",
    "../_base_/default_runtime.py",
    "../_base_/schedules/schedule_80k.py",
]
