# The README's first command: a small ResNeSt segmenter trained on the generated dataset (no download), on a CPU in
# about two minutes. Same code paths as the ResNeSt-101-D8 configs (deep stem, radix-2 split attention, dilated
# stages 3-4, FCN head + auxiliary FCN head, SyncBN when distributed, mmseg's SGD + poly schedule) at ResNeSt-50
# depth with a quarter of the widths (stem 16, base 16), on 64x64 images with 7 classes (background + 6 shapes
# told apart by colour and texture). The lr is 0.05 rather than mmseg's 0.01: a schedule of 400 iterations has to
# get somewhere fast. One thread: tiny convolutions gain nothing from a second one, and OpenMP threads waiting for a
# busy core make a shared 2-core machine an order of magnitude slower. Each residual block starts as its shortcut
# (zero_init_residual, which mmseg's ResNeSt accepts but never applies): from scratch at lr 0.05 the deep narrow
# network otherwise collapses to one class in its first iterations.
_base_ = [
    "../_base_/models/fcn_s101-d8.py",
    "../_base_/default_runtime.py",
    "../_base_/schedules/schedule_80k.py",
]
crop_size = (64, 64)
num_classes = 7
model = dict(
    pretrained=None,  # from scratch: ImageNet weights would be a download, and of another width
    data_preprocessor=dict(size=crop_size),
    backbone=dict(depth=50, stem_channels=16, base_channels=16, zero_init_residual=True),
    decode_head=dict(in_channels=512, channels=32, num_classes=num_classes),
    auxiliary_head=dict(in_channels=256, channels=16, num_classes=num_classes),
)
data = dict(type="synthetic", num_classes=num_classes, size=crop_size, crop_size=crop_size, train_samples=4000,
            val_samples=64, train_seed=0, val_seed=1, batch_size=8, num_workers=1, tta_ratios=(0.75, 1.0, 1.25))
schedule = dict(optimizer=dict(lr=0.05), max_iters=400, val_interval=200, checkpoint_interval=100)
runtime = dict(log_interval=20, num_threads=1)
