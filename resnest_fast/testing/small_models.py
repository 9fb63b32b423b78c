"""Small versions of the shipped configs' models (ResNeSt-50 layout at 1/8 of the widths, narrow heads): the same
code paths as the ResNeSt-101-D8 segmenters at a fraction of the cost."""
import copy

from resnest_fast.segmentation import load_config

CONFIG_OF_HEAD = {
    "fcn": "resnest_s101-d8_fcn_4xb2-80k_cityscapes-512x1024",
    "pspnet": "resnest_s101-d8_pspnet_4xb2-80k_cityscapes512x1024",
    "deeplabv3": "resnest_s101-d8_deeplabv3_4xb2-80k_cityscapes-512x1024",
    "deeplabv3plus": "resnest_s101-d8_deeplabv3plus_4xb2-80k_cityscapes-512x1024",
}


def shrink_model_cfg(cfg: dict, num_classes=None) -> dict:
    """Narrows a ResNeSt segmenter's `model` config in place (ours or mmseg's: any dict with mmseg's keys) and
    returns it; `num_classes` None keeps the config's."""
    cfg["backbone"].update(depth=50, stem_channels=16, base_channels=8)
    cfg["decode_head"].update(in_channels=256, channels=16)
    if "c1_in_channels" in cfg["decode_head"]:  # DeepLabV3+'s low-level branch
        cfg["decode_head"].update(c1_in_channels=32, c1_channels=8)
    cfg["auxiliary_head"].update(in_channels=128, channels=8)
    if num_classes is not None:
        cfg["decode_head"]["num_classes"] = cfg["auxiliary_head"]["num_classes"] = num_classes
    return cfg


def small_model_cfg(head: str = "fcn", num_classes: int = 19) -> dict:
    return shrink_model_cfg(copy.deepcopy(load_config(CONFIG_OF_HEAD[head])["model"]), num_classes)
