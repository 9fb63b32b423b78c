"""A tiny training config (the shipped synthetic config at 32x32, half its widths) and subprocess helpers."""
import os
import pathlib
import subprocess
import sys

from resnest_fast.segmentation.config import CONFIG_DIR

SYNTHETIC = "resnest_s50-d8-w16_fcn_1xb8-400_synthetic-64x64"
REPO = pathlib.Path(__file__).resolve().parents[2]


def tiny_config(folder, name="tiny.py", **overrides) -> str:
    """Writes a config file inheriting the shipped synthetic config, sized for tests (a step takes ~30 ms on one
    thread); `overrides` are extra top-level assignments (Python source text). Returns its path."""
    base = next(CONFIG_DIR.rglob(f"{SYNTHETIC}.py"))
    lines = [
        f"_base_ = {str(base)!r}",
        "crop_size = (32, 32)",
        "model = dict(data_preprocessor=dict(size=crop_size), backbone=dict(base_channels=8),",
        "             decode_head=dict(in_channels=256, channels=16),",
        "             auxiliary_head=dict(in_channels=128, channels=8))",
        "data = dict(size=crop_size, crop_size=crop_size, train_samples=64, val_samples=4, batch_size=4,",
        "            num_workers=0)",
        "schedule = dict(max_iters=6, val_interval=3, checkpoint_interval=2)",
        "runtime = dict(log_interval=2, keep_checkpoints=2)",
    ]
    lines += [f"{k} = {v}" for k, v in overrides.items()]
    path = pathlib.Path(folder) / name
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def child_env(threads=1):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["OMP_NUM_THREADS"] = str(threads)
    return env


def run_cli(args, cwd=None, timeout=300, **kwargs):
    """`python -m resnest_fast ARGS` in a subprocess; returns the CompletedProcess (text output)."""
    return subprocess.run([sys.executable, "-m", "resnest_fast", *map(str, args)], cwd=cwd, env=child_env(),
                          capture_output=True, text=True, timeout=timeout, **kwargs)
