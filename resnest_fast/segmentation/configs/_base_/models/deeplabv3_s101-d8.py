_base_ = "s101-d8_common.py"
norm_cfg = dict(type="SyncBN", requires_grad=True)
model = dict(decode_head=dict(type="ASPPHead", in_channels=2048, in_index=3, channels=512, dilations=(1, 12, 24, 36),
                     dropout_ratio=0.1, num_classes=19, norm_cfg=norm_cfg, align_corners=False,
                     loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0)))
