"""scripts/setup_env.sh on a machine whose python3 is a distribution's externally-managed Python (PEP 668).

The "system" python3 of these tests is a logging wrapper first on PATH. It runs a genuine externally-managed
interpreter where the machine has one (Debian's /usr/bin/python3 with its EXTERNALLY-MANAGED marker), else the
interpreter running the tests; either way it refuses `-m pip` as Debian's does. The setup must only ever ask it for
`-m venv`, install through .venv/bin/python, and leave the system's site-packages as they were. The script stops
after selecting the environment (`--print-python`) or after one tiny install (`--pip-install pip`, already
satisfied, no download), so nothing heavy is installed.
"""
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

SETUP = Path(__file__).resolve().parents[1] / "scripts" / "setup_env.sh"

WRAPPER = """#!/bin/sh
printf '%s\\n' "$*" >> "{log}"
case " $* " in
  *" -m pip "*) echo "error: externally-managed-environment" >&2; exit 1 ;;
  *" -m venv "*) if [ -n "$FAKE_NO_VENV" ]; then
      # what Debian's python3 prints without python3-venv (ensurepip is not there)
      echo "The virtual environment was not created successfully because ensurepip is not available."; exit 1
    fi ;;
esac
exec "{base}" "$@"
"""


def _externally_managed(python):
    code = "import sysconfig, os, ensurepip; print(os.path.isfile(os.path.join(sysconfig.get_path('stdlib'), 'EXTERNALLY-MANAGED')))"
    try:
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and out.stdout.strip() == "True"


def _base_python():
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(candidate) and _externally_managed(candidate):
            return candidate
    return sys.executable


def _site_packages(python):
    code = "import sysconfig; print(sysconfig.get_path('purelib')); print(sysconfig.get_path('platlib'))"
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    return {p: sorted(os.listdir(p)) if os.path.isdir(p) else None for p in out.stdout.split()}


@pytest.fixture
def machine(tmp_path):
    """A throwaway checkout (only the script) and an environment as a new user's shell would have it."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(SETUP, repo / "scripts" / "setup_env.sh")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "system_python.log"
    log.touch()
    base = _base_python()
    wrapper = bindir / "python3"
    wrapper.write_text(WRAPPER.format(log=log, base=base))
    wrapper.chmod(0o755)
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHON", "VIRTUAL_ENV", "CONDA_PREFIX", "CONDA_DEFAULT_ENV", "RESNEST_FAST_VENV",
                        "PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join([str(bindir), "/usr/bin", "/bin"])

    def run(*args, **extra_env):
        return subprocess.run(["bash", str(repo / "scripts" / "setup_env.sh"), *args], cwd=repo,
                              env={**env, **extra_env}, capture_output=True, text=True, timeout=300)

    return repo, log, base, run


def _system_calls(log):
    return [line for line in log.read_text().splitlines() if line]


def test_creates_and_uses_venv_never_the_system_python(machine):
    repo, log, base, run = machine
    before = _site_packages(base)

    out = run("--print-python")
    assert out.returncode == 0, out.stderr
    venv_python = repo / ".venv" / "bin" / "python"
    assert out.stdout.strip() == str(venv_python)  # stdout is the path alone, the messages go to stderr
    assert venv_python.exists()
    calls = _system_calls(log)
    # asked for a venv (and its version, for the message), never for pip
    assert [c for c in calls if "-m venv" in c] == [f"-m venv --clear {repo / '.venv'}"], calls
    assert not any("pip" in c for c in calls), calls

    first = run("--pip-install", "pip")  # already in the venv: pip resolves it locally and changes nothing
    assert first.returncode == 0, first.stderr
    assert "Requirement already satisfied: pip" in first.stdout
    assert "in ./.venv/lib/" in first.stdout  # the venv's site-packages (relative to the checkout), not the system's
    second = run("--pip-install", "pip")
    assert second.returncode == 0, second.stderr
    assert "pip skipped" in second.stdout and "Requirement already satisfied" not in second.stdout

    again = run("--print-python")
    assert again.returncode == 0 and again.stdout.strip() == str(venv_python)
    assert _system_calls(log) == calls  # reused: no second venv, and pip never went through the system python
    assert _site_packages(base) == before


def test_an_environment_named_by_the_user_is_used_as_it_is(machine, tmp_path):
    repo, log, _, run = machine
    other = tmp_path / "elsewhere"
    cases = [({"PYTHON": sys.executable}, sys.executable),
             ({"VIRTUAL_ENV": str(other)}, f"{other}/bin/python"),
             ({"CONDA_PREFIX": str(other), "CONDA_DEFAULT_ENV": "work"}, f"{other}/bin/python")]
    for extra, expected in cases:
        out = run("--print-python", **extra)
        assert out.returncode == 0, (extra, out.stderr)
        assert out.stdout.strip() == expected, extra
    assert not (repo / ".venv").exists()
    assert _system_calls(log) == []


def test_missing_venv_module_names_the_package_and_exits_2(machine):
    repo, log, base, run = machine
    out = run("--print-python", FAKE_NO_VENV="1")
    assert out.returncode == 2
    assert "Traceback" not in out.stdout + out.stderr
    version = subprocess.run([base, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture_output=True,
                             text=True, check=True).stdout.strip()
    errors = [line for line in out.stderr.splitlines() if line.startswith("scripts/setup_env.sh:")]
    assert len(errors) == 1 and f"apt install python{version}-venv" in errors[0], out.stderr
    assert not (repo / ".venv").exists()  # no half-made venv left for the next run to trust
