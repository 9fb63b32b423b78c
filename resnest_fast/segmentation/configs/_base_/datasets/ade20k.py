# ADE20k (SceneParsing), mmseg's recipe: random resize of 2048x512 by 0.5-2.0, 512x512 crops (cat_max_ratio
# 0.75), flip 0.5, photometric distortion; test at 2048x512; labels with reduce_zero_label (0 = "other" -> 255).
# Layout: ADEChallengeData2016/images/{training,validation}/*.jpg and annotations/{training,validation}/*.png.
crop_size = (512, 512)
model = dict(data_preprocessor=dict(size=crop_size), decode_head=dict(num_classes=150),
             auxiliary_head=dict(num_classes=150))
data = dict(type="ade20k", root="data/ade", train_split="training", val_split="validation", scale=(2048, 512),
            ratio_range=(0.5, 2.0), crop_size=crop_size, cat_max_ratio=0.75, batch_size=4, num_workers=4,
            reduce_zero_label=True, tta_ratios=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75))
