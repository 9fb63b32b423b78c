# mmseg's 80k schedule: SGD lr 0.01, momentum 0.9, weight decay 5e-4, poly decay (power 0.9) to 1e-4 per
# iteration; validation and a checkpoint every 8k iterations.
schedule = dict(optimizer=dict(type="SGD", lr=0.01, momentum=0.9, weight_decay=0.0005),
                lr_policy=dict(type="poly", power=0.9, eta_min=1e-4), max_iters=80000, val_interval=8000,
                checkpoint_interval=8000)
