# What the four ResNeSt-101-D8 segmenters of mmseg's table share: the backbone, the auxiliary FCN head on stage 3
# (loss weight 0.4), the data preprocessor, and mmseg's starting point: ImageNet ResNeSt-101 weights, which the
# training command loads into the backbone (resnest_fast.models.load_pretrained: torch's hub cache, else a download;
# a local file or another layout's checkpoint works too). Building the model, testing and inference never load
# them. Offline, train from scratch with --cfg-options model.pretrained=None.
norm_cfg = dict(type="SyncBN", requires_grad=True)  # plain BN on one process; SyncBN when distributed
model = dict(
    type="EncoderDecoder",
    # mmseg says bgr_to_rgb=True because OpenCV decodes BGR; our loaders decode RGB with pillow.
    data_preprocessor=dict(type="SegDataPreProcessor", mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
                           bgr_to_rgb=False, pad_val=0, seg_pad_val=255),
    pretrained="open-mmlab://resnest101",
    backbone=dict(type="ResNeSt", depth=101, num_stages=4, out_indices=(0, 1, 2, 3), dilations=(1, 1, 2, 4),
                  strides=(1, 2, 1, 1), norm_cfg=norm_cfg, norm_eval=False, style="pytorch",
                  contract_dilation=True, stem_channels=128, radix=2, reduction_factor=4, avg_down_stride=True),
    auxiliary_head=dict(type="FCNHead", in_channels=1024, in_index=2, channels=256, num_convs=1,
                        concat_input=False, dropout_ratio=0.1, num_classes=19, norm_cfg=norm_cfg,
                        align_corners=False,
                        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=0.4)),
    train_cfg=dict(),
    test_cfg=dict(mode="whole"),
)
