"""Training that fails keeps what it had: two runs started together into one work dir (one trains, the other is
refused), a lock left by a dead run (taken over), a loss that turns NaN between two log lines (no checkpoint after
it, the last finite one kept), a full disk (one line naming the folder and the space needed, older checkpoints
intact), a run stopped before its first checkpoint (run.json taken back, so the retry is not refused), and Ctrl-C or
SIGTERM (one line saying where to resume, the lock let go, no partial checkpoint, a resume as if uninterrupted)."""
import errno
import io
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading

import pytest
import torch

from resnest_fast.segmentation import build_model
from resnest_fast.training import checkpoints as ckpt
from resnest_fast.training.train import TrainingError, train
from tests.training.train_helpers import REPO, child_env, run_cli, tiny_config

NO_VAL = "schedule.val_interval=0"


@pytest.mark.heavy  # two subprocesses (~30 s on a busy 2-core machine); the lock itself: tests/cli/test_bad_inputs*
def test_two_runs_started_together_into_one_work_dir_one_trains_the_other_is_refused(tmp_path):
    cfg = tiny_config(tmp_path)
    work = tmp_path / "w"
    command = [sys.executable, "-m", "resnest_fast", "train", cfg, "--work-dir", str(work), "--max-iters", "12",
               "--no-progress", "--cfg-options", NO_VAL, "schedule.checkpoint_interval=4"]
    procs = [subprocess.Popen(command + ["--seed", str(seed)], cwd=REPO, env=child_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for seed in (1, 2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2).strip().splitlines()
    assert len(refused) == 1, refused
    # started together it finds the lock; started after the first ended, the finished run
    assert (f"work dir '{work}' is in use by another training run" in refused[0]
            or f"work dir '{work}' already holds a training run" in refused[0]), refused
    seed = json.loads((work / "run.json").read_text())["seed"]
    for _, path in ckpt.list_checkpoints(work):
        assert torch.load(path, weights_only=True)["meta"]["seed"] == seed, path
    assert not (work / ckpt.LOCK).exists()


def test_a_lock_left_by_a_dead_run_is_taken_over_with_a_note(tmp_path, one_thread):
    cfg = tiny_config(tmp_path)
    work = tmp_path / "w"
    work.mkdir()
    (work / ckpt.LOCK).write_text("process 999999 on elsewhere, started 2020-01-01 00:00:00")
    log = io.StringIO()
    summary = train(cfg, work_dir=work, max_iters=1, cfg_options=[NO_VAL], log=log, progress=False)
    assert summary["iter"] == 1
    assert (f"note: {work} was locked by process 999999 on elsewhere, started 2020-01-01 00:00:00, which ended "
            "without letting go: taken over") in log.getvalue()
    assert not (work / ckpt.LOCK).exists()


def test_a_loss_turning_nan_between_log_lines_never_reaches_a_checkpoint(tmp_path, one_thread):
    """checkpoint_interval 1, log_interval 50: the loss is NaN from iteration 5; checkpoints 3 and 4 (finite) are
    what is left, `latest` names 4, and the error names iteration 5."""
    cfg = tiny_config(tmp_path)
    model = build_model(cfg)
    loss, calls = model.loss, []

    def nan_from_the_fifth(img, labels, img_shape):
        calls.append(1)
        losses = loss(img, labels, img_shape)
        return {k: v * float("nan") for k, v in losses.items()} if len(calls) >= 5 else losses

    model.loss = nan_from_the_fifth
    work = tmp_path / "w"
    with pytest.raises(TrainingError, match=r"the loss became nan at iteration 5: training diverged \(the last "
                       rf"checkpoint, {work / 'iter_4.pth'}, is from before it\)"):
        train(cfg, work_dir=work, model=model, max_iters=8, log=io.StringIO(), progress=False,
              cfg_options=[NO_VAL, "schedule.checkpoint_interval=1", "runtime.log_interval=50",
                           "runtime.keep_checkpoints=2"])
    assert [i for i, _ in ckpt.list_checkpoints(work)] == [3, 4]
    assert ckpt.find_latest(work) == work / "iter_4.pth"
    state = torch.load(work / "iter_4.pth", weights_only=True)["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def _full_disk_after(monkeypatch, free_bytes):
    """Writes through resnest_fast.utils.atomic_write fail with ENOSPC once `free_bytes` are used up, and the folder
    reports that much free space: a full disk without mounting one."""
    real_fdopen, used = os.fdopen, [0]

    class Full(io.RawIOBase):
        def __init__(self, f):
            self.f = f

        def writable(self):
            return True

        def write(self, data):
            if used[0] + len(data) > free_bytes:
                raise OSError(errno.ENOSPC, "No space left on device")
            used[0] += len(data)
            return self.f.write(data)

        def flush(self):
            self.f.flush()

        def fileno(self):
            return self.f.fileno()

        def close(self):
            super().close()  # flushes through self.flush, so before the real file closes
            self.f.close()

    monkeypatch.setattr(os, "fdopen", lambda fd, mode="r", *a, **k: Full(real_fdopen(fd, mode, *a, **k)))
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - free_bytes,
                                                                                    free_bytes - used[0]))


def test_a_full_disk_stops_training_with_one_line_and_keeps_the_older_checkpoints(tmp_path, monkeypatch, one_thread):
    """Room for run.json, iter_2.pth (about 4.4 MB) and `latest`, not for iter_4.pth."""
    cfg = tiny_config(tmp_path)
    work = tmp_path / "w"
    _full_disk_after(monkeypatch, 6 * 2**20)
    with pytest.raises(TrainingError, match=rf"^no space left on {work}: \d+\.\d MiB needed, \d+\.\d MiB free: "
                       rf"training stopped at iteration 4; the last checkpoint is {work / 'iter_2.pth'}$"):
        train(cfg, work_dir=work, max_iters=4, cfg_options=[NO_VAL], log=io.StringIO(), progress=False)
    monkeypatch.undo()
    assert sorted(p.name for p in work.iterdir() if not p.name.endswith(".jsonl")) == ["iter_2.pth", "latest",
                                                                                      "run.json"]
    assert torch.load(work / "iter_2.pth", weights_only=True)["meta"]["iter"] == 2
    assert ckpt.find_latest(work) == work / "iter_2.pth"


def test_a_read_only_work_dir_is_refused_with_one_line(tmp_path, read_only_tmpfs):
    from resnest_fast.training.errors import SetupError

    cfg = tiny_config(tmp_path)
    with pytest.raises(SetupError, match=rf"^work dir '{read_only_tmpfs}/w/x' cannot be created: {read_only_tmpfs} "
                       "is on a read-only file system$"):
        train(cfg, work_dir=read_only_tmpfs / "w" / "x", max_iters=1, log=io.StringIO(), progress=False)
    with pytest.raises(SetupError, match=rf"^cannot write {read_only_tmpfs}/\.lock: {read_only_tmpfs} is on a "
                       "read-only file system$"):
        train(cfg, work_dir=read_only_tmpfs, max_iters=1, log=io.StringIO(), progress=False)


def test_a_real_full_disk_reads_the_same(tmp_path, tiny_tmpfs, one_thread):
    """torch.save reports a short write as `RuntimeError: [enforce fail at inline_container.cc] unexpected pos`:
    the message is still the folder and the space needed, and the run leaves no run.json to refuse a retry."""
    cfg = tiny_config(tmp_path)
    work = tiny_tmpfs / "w"
    with pytest.raises(TrainingError, match=rf"^no space left on {work}: \d+\.\d MiB needed, \d+\.\d MiB free: "
                       "training stopped at iteration 2; no checkpoint was written$"):
        train(cfg, work_dir=work, max_iters=2, cfg_options=[NO_VAL], log=io.StringIO(), progress=False)
    assert sorted(p.name for p in work.iterdir() if not p.name.endswith(".jsonl")) == []


# ------------------------------------------------------------------------------------------------ signals

# `python -c` scripts running the command line with one step made to wait, after printing a marker, for the signal
_STALLED_STEP = r"""
import sys, time
from resnest_fast.training import train as training

forward, calls = training._LossModule.forward, [0]

def forward_stalling_at_the_third(self, *args):
    calls[0] += 1
    if calls[0] == 3:
        print("IN-ITERATION-3", flush=True)
        time.sleep(600)
    return forward(self, *args)

training._LossModule.forward = forward_stalling_at_the_third
from resnest_fast.cli import main
sys.exit(main(sys.argv[1:]))
"""

_STALLED_SAVE = r"""
import io, sys, time, torch
real_save, calls = torch.save, [0]

def save_stalling_half_way_through_the_second(obj, f, *args, **kwargs):
    calls[0] += 1
    if calls[0] == 2:
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        f.flush()
        print("HALF-WRITTEN", flush=True)
        time.sleep(600)
    return real_save(obj, f, *args, **kwargs)

torch.save = save_stalling_half_way_through_the_second
from resnest_fast.cli import main
sys.exit(main(sys.argv[1:]))
"""

_STALLED_EVALUATION = r"""
import sys, time
from resnest_fast.training import evaluate

def evaluate_stalling(*args, **kwargs):
    print("EVALUATING", flush=True)
    time.sleep(600)

evaluate.evaluate = evaluate_stalling
from resnest_fast.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _signalled(script, args, marker, signum):
    """Runs `script` with the command line `args`, sends `signum` once it printed `marker`; (exit code, stderr)."""
    child = subprocess.Popen([sys.executable, "-c", script, *map(str, args)], env=child_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in child.stdout], daemon=True).start()
    try:
        line = ""
        while marker not in line:  # a child that never gets there must fail the test, not hang the suite
            line = lines.get(timeout=300)
        child.send_signal(signum)
        child.wait(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return child.returncode, child.stderr.read()


def _train_args(cfg, work):
    return ["train", cfg, "--work-dir", work, "--deterministic", "--no-progress"]


def _run_files(work):
    """The names in a work dir, hidden ones included (a lock, a half-written checkpoint), but its logs."""
    return sorted(n for n in os.listdir(work) if not n.endswith(".log.jsonl"))


def test_ctrl_c_stops_training_with_one_line_and_the_run_resumes_as_if_uninterrupted(tmp_path):
    cfg = tiny_config(tmp_path, schedule="dict(max_iters=6, val_interval=0, checkpoint_interval=2)")
    straight = run_cli(_train_args(cfg, tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr

    work = tmp_path / "stopped"
    code, err = _signalled(_STALLED_STEP, _train_args(cfg, work), "IN-ITERATION-3", signal.SIGINT)
    assert code == 130 and err.strip() == (f"resnest-fast train: interrupted (SIGINT) after 2 of 6 iterations: "
                                           f"resume with --resume {work / 'iter_2.pth'}"), err
    assert _run_files(work) == ["iter_2.pth", "latest", "run.json"]

    resumed = run_cli(_train_args(cfg, work) + ["--resume", work / "iter_2.pth"])
    assert resumed.returncode == 0, resumed.stderr
    a = torch.load(tmp_path / "straight" / "iter_6.pth", weights_only=True)
    b = torch.load(work / "iter_6.pth", weights_only=True)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key


def test_sigterm_while_a_checkpoint_is_written_leaves_the_last_complete_one_and_lets_go_of_the_work_dir(tmp_path):
    cfg = tiny_config(tmp_path, schedule="dict(max_iters=6, val_interval=0, checkpoint_interval=2)")
    work = tmp_path / "w"
    code, err = _signalled(_STALLED_SAVE, _train_args(cfg, work), "HALF-WRITTEN", signal.SIGTERM)
    assert code == 143 and err.strip() == (f"resnest-fast train: interrupted (SIGTERM) after 4 of 6 iterations: "
                                           f"resume with --resume {work / 'iter_2.pth'}"), err
    # no .lock (a later run would find it taken over, with a note), no half-written .iter_4.pth.*.tmp
    assert _run_files(work) == ["iter_2.pth", "latest", "run.json"]
    assert ckpt.find_latest(work) == work / "iter_2.pth"


def test_ctrl_c_before_the_first_checkpoint_says_there_is_nothing_to_resume(tmp_path):
    cfg = tiny_config(tmp_path, schedule="dict(max_iters=6, val_interval=0, checkpoint_interval=4)")
    work = tmp_path / "w"
    code, err = _signalled(_STALLED_STEP, _train_args(cfg, work), "IN-ITERATION-3", signal.SIGINT)
    assert code == 130 and err.strip() == ("resnest-fast train: interrupted (SIGINT) after 2 of 6 iterations, before "
                                           "the first checkpoint: nothing to resume"), err
    assert _run_files(work) == []  # run.json taken back: a rerun starts


def test_ctrl_c_during_the_test_command_is_one_line(tmp_path, one_thread):
    cfg = tiny_config(tmp_path)
    train(cfg, work_dir=tmp_path / "w", max_iters=2, cfg_options=[NO_VAL], log=io.StringIO(), progress=False)
    out = tmp_path / "metrics.json"
    code, err = _signalled(_STALLED_EVALUATION, ["test", cfg, tmp_path / "w" / "iter_2.pth", "--out", out,
                                                 "--no-progress"], "EVALUATING", signal.SIGINT)
    assert code == 130 and err.strip() == "resnest-fast test: interrupted (SIGINT)", err
    assert not out.exists()
