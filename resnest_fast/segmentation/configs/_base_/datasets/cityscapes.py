# Cityscapes, mmseg's recipe: random resize of 2048x1024 by 0.5-2.0, 512x1024 crops (cat_max_ratio 0.75),
# flip 0.5, photometric distortion; test at 2048x1024. Layout: leftImg8bit/{train,val}/*/*_leftImg8bit.png and
# gtFine/{train,val}/*/*_gtFine_labelTrainIds.png (make them with resnest_fast.training.data.convert_cityscapes).
crop_size = (512, 1024)
model = dict(data_preprocessor=dict(size=crop_size), decode_head=dict(num_classes=19),
             auxiliary_head=dict(num_classes=19))
data = dict(type="cityscapes", root="data/cityscapes", train_split="train", val_split="val", scale=(2048, 1024),
            ratio_range=(0.5, 2.0), crop_size=crop_size, cat_max_ratio=0.75, batch_size=2, num_workers=2,
            tta_ratios=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75))
