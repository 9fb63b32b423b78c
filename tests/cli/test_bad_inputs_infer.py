"""`infer` and `info` over bad inputs: each is refused or reported in one line naming what is wrong (never a
traceback), with the documented exit code (2: nothing done, a usage or setup error; 1: some images failed, the
others processed), and every file that existed before the run is byte-identical after it."""
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from resnest_fast.cli import infer
from resnest_fast.cli import main as cli
from tests.cli.test_infer import image, make_setup
from tests.cli.test_infer import one_thread  # noqa: F401  (autouse: one thread for the tiny model)
from tests.training.data.files import write_png_header_only


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(config path, checkpoint path, ...) of test_infer's small model."""
    return make_setup(tmp_path_factory.mktemp("bad_inputs"))


def snapshot(folder):
    return {p: p.read_bytes() for p in pathlib.Path(folder).rglob("*") if p.is_file() and not p.is_symlink()}


def good_png(path, h=21, w=34):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image(np.random.default_rng(1), h, w)).save(path)


def no_config_model(tmp, setup):
    path = tmp / "no_model.py"
    path.write_text("data = dict(scale=(64, 48))\n")
    return path


# name -> (command line given tmp (with tmp/in/good.png) and the fixture, exit code, text the error names)
def _infer(*extra, config=None, inputs=None):
    def make(tmp, setup):
        return ["infer", str(config(tmp, setup) if config else setup[0]), str(setup[1]),
                *(inputs(tmp) if inputs else [str(tmp / "in")]), "--out-dir", str(tmp / "out"), "--no-progress",
                *extra]
    return make


def _bomb_and_float(tmp):
    write_png_header_only(tmp / "in" / "bomb.png", 30000, 30000)
    Image.fromarray(np.linspace(0, 300, 600, dtype=np.float32).reshape(20, 30), mode="F").save(tmp / "in" / "f.tif")
    return [str(tmp / "in")]


def _empty_folder(tmp):
    (tmp / "empty").mkdir()
    (tmp / "empty" / "notes.txt").write_text("not an image")
    return [str(tmp / "empty")]


def _nan_checkpoint(tmp, setup):
    state = torch.load(setup[1], weights_only=True)
    sd = state.get("state_dict", state)
    torch.save({k: v.fill_(float("nan")) if v.is_floating_point() else v for k, v in sd.items()}, tmp / "nan.pth")
    return tmp / "nan.pth"


def _protocol_4_pickle(tmp, setup):
    import pickle

    with open(tmp / "plain.pkl", "wb") as f:
        pickle.dump(torch.load(setup[1], weights_only=True), f, protocol=4)
    return tmp / "plain.pkl"


def _with_checkpoint(checkpoint):
    def make(tmp, setup):
        return ["infer", str(setup[0]), str(checkpoint(tmp, setup)), str(tmp / "in"), "--out-dir", str(tmp / "out"),
                "--no-progress"]
    return make


def _fifo_beside_a_good_one(tmp):
    os.mkfifo(tmp / "in" / "pipe.png")  # opening it would wait for a writer forever
    return [str(tmp / "in"), str(tmp / "in" / "pipe.png")]


def _dangling_input(tmp):
    (tmp / "link.png").symlink_to(tmp / "nowhere.png")
    return [str(tmp / "link.png")]


def _dangling_out_dir(tmp, s):
    (tmp / "out").symlink_to(tmp / "nowhere")
    return ["infer", str(s[0]), str(s[1]), str(tmp / "in"), "--out-dir", str(tmp / "out")]


ROWS = {
    "stride larger than the window": (
        _infer("--mode", "slide", "--crop-size", "16", "16", "--stride", "40", "40"), 2, "stride (40, 40)"),
    "config without a model": (_infer(config=no_config_model), 2, "has no `model = dict"),
    "missing checkpoint": (lambda tmp, s: ["infer", str(s[0]), str(tmp / "nope.pth"), str(tmp / "in"), "--out-dir",
                                           str(tmp / "out")], 2, "nope.pth"),
    "NaN weights": (_with_checkpoint(_nan_checkpoint), 2, "nan.pth' holds NaN or infinite values"),
    "a pickle of protocol 4": (_with_checkpoint(_protocol_4_pickle), 2, "plain.pkl' could not be read as a "
                               "weights-only checkpoint"),
    "out-dir is the input folder": (lambda tmp, s: ["infer", str(s[0]), str(s[1]), str(tmp / "in"), "--out-dir",
                                                    str(tmp / "in")], 2, "is an input folder"),
    "out-dir is a file": (lambda tmp, s: ["infer", str(s[0]), str(s[1]), str(tmp / "in"), "--out-dir",
                                          str(tmp / "in" / "good.png")], 2,
                          "--out-dir '{tmp}/in/good.png' is a file, not a folder"),
    "out-dir under a file": (lambda tmp, s: ["infer", str(s[0]), str(s[1]), str(tmp / "in"), "--out-dir",
                                             str(tmp / "in" / "good.png" / "out")], 2,
                             "--out-dir '{tmp}/in/good.png/out' cannot be created: {tmp}/in/good.png is a file, "
                             "not a folder"),
    "a folder without images": (_infer(inputs=_empty_folder), 2, "no image found"),
    "opacity out of range": (_infer("--opacity", "2"), 2, "opacity must be in [0, 1]"),
    "scale of one number": (_infer("--scale", "7"), 2, "--scale takes"),
    # the process was killed for memory (an 18 GB image for this 34x21 one, then its features)
    "scale far too large": (_infer("--scale", "100000", "100000"), 2,
                            "--scale (100000, 100000) resizes images to up to 10000000000 pixels: at most 67108864 "
                            "(8192 x 8192) are allowed"),
    "a bomb and a float image beside a good one": (_infer(inputs=_bomb_and_float), 1, "bomb.png"),
    "a FIFO named like an image beside a good one": (
        _infer(inputs=_fifo_beside_a_good_one), 1, "input {tmp}/in/pipe.png is a named pipe (FIFO), not an image"),
    # usage errors, named in one line before anything is written, not failed images of a run that started
    "an input that does not exist": (_infer(inputs=lambda tmp: [str(tmp / "nothere")]), 2,
                                     "error: INPUT '{tmp}/nothere' does not exist: expected an image file or a "
                                     "folder of images"),
    "inputs that do not exist beside a good one": (
        _infer(inputs=lambda tmp: [str(tmp / "gone.jpg"), str(tmp / "in"), str(tmp / "nothere")]), 2,
        "error: INPUT '{tmp}/gone.jpg', '{tmp}/nothere' do not exist: expected image files or folders of images"),
    "an input that is a link to nothing": (_infer(inputs=_dangling_input), 2,
                                           "error: INPUT '{tmp}/link.png' (a symbolic link to {tmp}/nowhere.png) "
                                           "does not exist"),
    "out-dir a link to nothing": (_dangling_out_dir, 2,
                                  "--out-dir '{tmp}/out' is a symbolic link to {tmp}/nowhere, which does not exist"),
    "bad backend variable (infer)": (_infer(), 2, "RESNEST_FAST_BACKEND"),
    "bad backend variable (info)": (lambda tmp, s: ["info"], 2, "RESNEST_FAST_BACKEND"),
    "unknown info option": (lambda tmp, s: ["info", "--bogus"], 2, "unrecognized arguments: --bogus"),
    # '' is the current folder to the OS (the test runs in tmp): searched recursively, or written into, unasked
    "empty input": (_infer(inputs=lambda tmp: [""]), 2,
                    "INPUT is an empty string: expected an image file or a folder of images"),
    "empty --out-dir": (lambda tmp, s: ["infer", str(s[0]), str(s[1]), str(tmp / "in"), "--out-dir", ""], 2,
                        "--out-dir is an empty string: expected a folder"),
    "empty config": (lambda tmp, s: ["infer", "", str(s[1]), str(tmp / "in"), "--out-dir", str(tmp / "out")], 2,
                     "CONFIG is an empty string: expected a shipped config's name or a .py file"),
    "empty checkpoint": (lambda tmp, s: ["infer", str(s[0]), "", str(tmp / "in"), "--out-dir", str(tmp / "out")], 2,
                         "CHECKPOINT is an empty string: expected a checkpoint file"),
    "missing --out-dir": (lambda tmp, s: ["infer", str(s[0]), str(s[1]), str(tmp / "in")], 2,
                          "the following arguments are required: --out-dir"),
}

if not torch.cuda.is_available():  # where a GPU is, the cuda backend may run
    ROWS["--backend cuda without a GPU"] = (_infer("--backend", "cuda"), 2, "error: backend='cuda'")


@pytest.mark.parametrize("name", list(ROWS))
def test_bad_input_is_one_line_with_its_exit_code_and_changes_no_file(setup, tmp_path, capsys, monkeypatch, name):
    make, code, names = ROWS[name]
    good_png(tmp_path / "in" / "good.png")
    monkeypatch.chdir(tmp_path)
    if "backend variable" in name:
        monkeypatch.setenv("RESNEST_FAST_BACKEND", "garbage")
    argv = make(tmp_path, setup)
    before = {**snapshot(tmp_path), **snapshot(pathlib.Path(setup[0]).parent)}
    try:
        got = cli(argv)
    except SystemExit as exit_:  # argparse's usage errors
        got = exit_.code
    err = capsys.readouterr().err
    assert got == code, err
    assert "Traceback" not in err and names.format(tmp=tmp_path) in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    if code == 2:  # argparse adds its usage line above the error
        assert len(lines) == 1 or (len(lines) >= 2 and lines[0].startswith("usage:") and "error:" in lines[-1]), err
    after = {**snapshot(tmp_path), **snapshot(pathlib.Path(setup[0]).parent)}
    assert {p: after.get(p) for p in before} == before
    new = sorted(str(p.relative_to(tmp_path)) for p in set(after) - set(before))
    if code == 2:
        assert new == []
    else:  # the good image is processed despite the bad ones, which are named with what is wrong
        assert new == ["out/good_overlay.png", "out/good_pred.png"]
        if "bomb" in name:
            assert "decompression bomb" in err and "f.tif" in err and "32-bit float" in err
        else:  # found by the folder's walk and given by name: refused (once) without being opened
            assert f"cannot use image file {tmp_path}/in/pipe.png: it is a named pipe (FIFO), not a regular file" \
                in err and err.count("pipe.png") == 4, err  # the two lines as it happens, the two of the summary


def test_a_bad_backend_variable_is_one_line_in_a_fresh_process(tmp_path):
    # the variable is read when the package is imported, before any command code runs
    env = dict(os.environ, RESNEST_FAST_BACKEND="garbage", PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run([sys.executable, "-m", "resnest_fast", "info"], env=env, capture_output=True, text=True,
                          cwd=tmp_path, timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [(
        "resnest-fast info: error: environment variable RESNEST_FAST_BACKEND must be one of auto, cpu, cuda, triton, "
        "reference (or unset), got 'garbage'")]


def test_a_pickle_of_protocol_4_is_one_line_in_a_fresh_process(setup, tmp_path):
    """torch's warning about the pickle protocol went to stderr above the error (pytest records warnings, so only a
    process of its own shows what a user sees)."""
    good_png(tmp_path / "in" / "good.png")
    checkpoint = _protocol_4_pickle(tmp_path, setup)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "resnest_fast", "infer", str(setup[0]), str(checkpoint),
                           str(tmp_path / "in"), "--out-dir", str(tmp_path / "out"), "--no-progress"],
                          env=env, capture_output=True, text=True, cwd=tmp_path, timeout=300, check=False)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"resnest-fast infer: error: '{checkpoint}' could not be read "
                                                   "as a weights-only checkpoint: "), done.stderr
    assert "pickled with protocol 4" in lines[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the cuda backend may run here")
def test_a_backend_variable_that_cannot_run_here_is_one_line_before_any_image(setup, tmp_path):
    """RESNEST_FAST_BACKEND=cuda without CUDA kernels or a GPU: one line and exit 2, not one failure per image."""
    good_png(tmp_path / "in" / "a.png")
    good_png(tmp_path / "in" / "b.png")
    env = dict(os.environ, RESNEST_FAST_BACKEND="cuda", PYTHONPATH=os.pathsep.join(sys.path), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "resnest_fast", "infer", str(setup[0]), str(setup[1]),
                           str(tmp_path / "in"), "--out-dir", str(tmp_path / "out"), "--no-progress"], env=env,
                          capture_output=True, text=True, cwd=tmp_path, timeout=300, check=False)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("resnest-fast infer: error: backend='cuda' ") and lines[0].endswith(
        "(the default backend, from RESNEST_FAST_BACKEND or set_default_backend)"), done.stderr
    assert not (tmp_path / "out").exists()


def test_python_api_with_a_bad_backend_variable_raises_a_clear_error(monkeypatch):
    from resnest_fast import backend
    from resnest_fast.nn import SplitAttentionConv2d

    monkeypatch.setattr(backend, "_default", None)
    monkeypatch.setattr(backend, "_environment_error", "environment variable RESNEST_FAST_BACKEND must be one of ...")
    conv = SplitAttentionConv2d(8, 8, 3, padding=1, groups=2).eval()
    with pytest.raises(ValueError, match="RESNEST_FAST_BACKEND .*set_default_backend"):
        conv(torch.randn(2, 8, 5, 5))
    previous = backend.set_default_backend("reference")  # the way out that the message names
    assert previous is None and conv(torch.randn(2, 8, 5, 5)).shape == (2, 8, 5, 5)
    backend.set_default_backend("auto")


@pytest.mark.parametrize("inputs, out", [([""], "out"), (["in"], "")], ids=["empty input", "empty out_dir"])
def test_python_run_refuses_empty_paths_too(setup, tmp_path, monkeypatch, inputs, out):
    """infer.run, not only the command: '' would be the current folder, searched or written into."""
    good_png(tmp_path / "in" / "good.png")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="is an empty string"):
        infer.run(setup[0], setup[1], inputs, out, progress=False)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["good.png", "in"]


def test_through_a_symlinked_folder_the_output_folder_inside_is_not_read(setup, tmp_path):
    real = tmp_path / "real"
    good_png(real / "a.png")
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    out = real / "out"
    for _ in range(2):  # the second run must not segment the first one's outputs
        summary = infer.run(setup[0], setup[1], [link], out, progress=False, overwrite=True)
        assert summary["failed"] == 0 and summary["processed"] == 1
    assert sorted(p.name for p in out.rglob("*")) == ["a_overlay.png", "a_pred.png"]
    with pytest.raises(Exception, match="is an input folder"):  # the output folder reached through the link
        infer.run(setup[0], setup[1], [link], real, progress=False)


def test_temporary_files_a_killed_run_left_are_removed_and_nothing_else(setup, tmp_path):
    good_png(tmp_path / "in" / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    stale = [out / ".a_pred.png.0123456789ab.tmp", out / ".a_overlay.png.ba9876543210.tmp"]
    kept = [out / ".a_pred.png.0123456789a.tmp", out / ".a_pred.png.0123456789ABCD.tmp", out / "a_pred.png.tmp",
            out / ".b_pred.png.0123456789ab.tmp", out / "notes.txt"]
    fresh = out / ".a_overlay.png.00000000000f.tmp"  # a running writer's file: too young to be stale
    for p in stale + kept + [fresh]:
        p.write_bytes(b"half a png")
    old = os.path.getmtime(fresh) - 2 * infer.STALE_TEMP_SECONDS
    for p in stale + kept:
        os.utime(p, (old, old))
    summary = infer.run(setup[0], setup[1], [tmp_path / "in"], out, progress=False)
    assert summary["processed"] == 1
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [p.name for p in kept] + [fresh.name, "a_pred.png", "a_overlay.png"])
    assert all(p.read_bytes() == b"half a png" for p in kept + [fresh])


def test_an_out_dir_on_a_read_only_file_system_is_refused_before_the_model_loads(setup, tmp_path, capsys,
                                                                                 read_only_tmpfs):
    """Root writes through chmod but not through a read-only mount: the line names the mount, exit 2, once, rather
    than one failure per image."""
    good_png(tmp_path / "in" / "a.png")
    good_png(tmp_path / "in" / "b.png")
    for out in (read_only_tmpfs, read_only_tmpfs / "new" / "out"):
        got = cli(["infer", str(setup[0]), str(setup[1]), str(tmp_path / "in"), "--out-dir", str(out),
                   "--no-progress"])
        err = capsys.readouterr().err
        assert got == 2, err
        assert err.strip() == (f"resnest-fast infer: error: --out-dir '{out}' cannot be written: {read_only_tmpfs} "
                               "is on a read-only file system"), err
