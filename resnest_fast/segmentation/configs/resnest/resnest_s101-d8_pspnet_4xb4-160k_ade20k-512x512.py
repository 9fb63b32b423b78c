# mmseg's resnest_s101-d8_pspnet_4xb4-160k_ade20k-512x512: ResNeSt-101-D8 + PSPHead, ade20k, 160k iterations
# (the published run used 4 GPUs x 4 images, SyncBN).
_base_ = [
    "../_base_/models/pspnet_s101-d8.py",
    "../_base_/datasets/ade20k.py",
    "../_base_/default_runtime.py",
    "../_base_/schedules/schedule_160k.py",
]
