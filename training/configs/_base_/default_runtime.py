# Logging every 50 iterations (mmseg's LoggerHook interval), the last 3 checkpoints kept, fixed seed.
runtime = dict(log_interval=50, keep_checkpoints=3, seed=0, deterministic=False, amp=None)
