# Logging every 50 iterations (mmseg's LoggerHook interval), the last 3 checkpoints kept, fixed seed (the same on
# every rank, as mmengine's default). amp: None, 'bf16' or 'fp16' (CUDA). num_threads: torch's intra-op threads per
# process (None: torch's default).
runtime = dict(log_interval=50, keep_checkpoints=3, seed=0, deterministic=False, amp=None, num_threads=None)
