"""benchmarks.report's rules that every benchmark command shares: the numeric argument types, where results may go
(checked before anything is measured), writes that are whole or absent, and Ctrl-C."""
import argparse
import csv
import os

import pytest

from benchmarks import report


@pytest.mark.parametrize("parse, good, bad", [
    (report.positive_int, {"1": 1, "12": 12}, ["0", "-3", "1.5", "ten", "", "nan"]),
    (report.non_negative_int, {"0": 0, "7": 7}, ["-1", "2.0", "x"]),
    (report.positive_float, {"3.35e12": 3.35e12, "0.5": 0.5}, ["0", "-1", "inf", "-inf", "nan", "x"]),
    (report.non_negative_float, {"0": 0.0, "0.5": 0.5}, ["-0.1", "inf", "nan"]),
])
def test_numeric_types_take_finite_numbers_in_range(parse, good, bad):
    for text, value in good.items():
        assert parse(text) == value
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError, match=f"got {text!r}"):
            parse(text)


@pytest.fixture
def place(tmp_path):
    (tmp_path / "a-file").write_text("mine\n")
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "models.csv").write_text("mine\n")
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "models.csv").mkdir()
    return tmp_path


def test_a_results_folder_is_refused_where_writing_would_fail_or_replace(place):
    def refusal(folder, overwrite=False):
        return report.folder_refusal(folder, "--results-dir", ["models.csv"], overwrite)

    assert refusal("") == "--results-dir is an empty string: expected a folder"
    assert refusal(str(place / "a-file")) == f"--results-dir '{place}/a-file' is a file, not a folder"
    assert "cannot be created" in refusal(str(place / "a-file" / "sub")) and f"{place}/a-file is a file" in \
        refusal(str(place / "a-file" / "sub"))
    assert "already holds models.csv: pass --overwrite" in refusal(str(place / "done"))
    assert refusal(str(place / "done"), overwrite=True) is None
    assert "holds a folder named models.csv" in refusal(str(place / "odd"), overwrite=True)
    assert refusal(str(place / "new" / "deeper")) is None
    (place / "gone").symlink_to(place / "nowhere")
    assert "symbolic link" in refusal(str(place / "gone"))


def test_an_output_file_is_refused_where_writing_would_fail_or_replace(place):
    def refusal(path, overwrite=False):
        return report.file_refusal(path, "--output", overwrite, suffix=".png")

    assert refusal("") == "--output is an empty string: expected a .png file"
    assert refusal(str(place / "a-file")) == f"--output must name a .png file, got '{place}/a-file'"
    assert refusal(str(place / "done")) == f"--output '{place}/done' is a folder: expected a .png file"
    assert refusal(str(place) + "/") is not None
    assert refusal(str(place / "a-file" / "x.png")) == (f"--output '{place}/a-file/x.png': its folder "
                                                        f"'{place}/a-file' is a file, not a folder")
    (place / "old.png").write_bytes(b"png")
    assert refusal(str(place / "old.png")) == (f"--output '{place}/old.png' already exists: pass --overwrite to "
                                               "replace it")
    assert refusal(str(place / "old.png"), overwrite=True) is None
    assert refusal(str(place / "new" / "x.PNG")) is None


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("old\n")

    def rows():
        yield {"a": 1}
        raise RuntimeError("disk trouble")

    with pytest.raises(RuntimeError):
        report.write_csv(str(path), ["a"], rows())
    assert path.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["rows.csv"]


def test_ctrl_c_writes_the_rows_so_far_and_says_they_are_partial(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(report, "RESULTS", {})
    report.add("stages", {"part": "stem", "median_ms": 1.5})
    assert report.interrupted("python -m benchmarks.x", str(tmp_path)) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "interrupted (Ctrl-C): partial results, the 1 row measured so far" in err[0]
    with open(tmp_path / report.csv_name("stages"), newline="") as f:
        assert [(r["part"], r["median_ms"]) for r in csv.DictReader(f)] == [("stem", "1.5")]
    monkeypatch.setattr(report, "RESULTS", {})
    empty = tmp_path / "empty"
    assert report.interrupted("python -m benchmarks.x", str(empty)) == 130
    assert "nothing written" in capsys.readouterr().err and not empty.exists()


def _must_not_run(*args, **kwargs):
    raise AssertionError("measuring started before the output was checked")


# (module, its results-folder option, the file it writes there, what measures, extra arguments)
RESULTS_COMMANDS = [
    ("stages", "--results-dir", "stages", "build", []),
    ("models", "--results-dir", "models", "bench_model", ["--no-peak-memory"]),
    ("inference_memory", "--results-dir", "inference_memory", "measure_model", []),
    ("winograd_accuracy", "--results-dir", "winograd_accuracy", "measure", []),
    ("parity_miou", "--out-dir", "parity-miou", "run_experiment", []),
    ("gpu_check", "--out", "gpu-ops", "check_ops", ["ops", "--dry-run"]),
]


@pytest.mark.parametrize("name, flag, stem, measuring, extra", RESULTS_COMMANDS, ids=[c[0] for c in RESULTS_COMMANDS])
def test_every_command_checks_its_results_folder_before_measuring(name, flag, stem, measuring, extra, tmp_path,
                                                                  monkeypatch, capsys, fresh_report):
    """A results folder that is a file, lies under one or is an empty string, or one that already holds the file
    the command writes: one line naming the option, exit 2, before anything is measured, nothing changed; with
    --overwrite the existing file is replaced."""
    from tests.benchmarks.refusals import refused

    module = __import__(f"benchmarks.{name}", fromlist=["main"])
    monkeypatch.setattr(module, measuring, _must_not_run)
    (tmp_path / "a-file").write_text("mine\n")
    done = tmp_path / "done"
    done.mkdir()
    mine = done / report.csv_name(stem)
    mine.write_text("mine\n")
    for folder, words in ((tmp_path / "a-file", ["is a file"]), (tmp_path / "a-file" / "sub", ["cannot be created"]),
                          ("", ["empty string"]), (done, [report.csv_name(stem), "--overwrite"])):
        refused(capsys, module.main, extra + [flag, str(folder)], flag, *words)
    assert mine.read_text() == "mine\n" and sorted(os.listdir(tmp_path)) == ["a-file", "done"]
    assert (tmp_path / "a-file").read_text() == "mine\n"
    # with --overwrite the check passes and measuring starts
    with pytest.raises(AssertionError, match="measuring started"):
        module.main(extra + [flag, str(done), "--overwrite"])
