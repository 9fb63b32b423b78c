# Sourced by run.sh and test.sh: picks the Python environment of the project, creates it if needed, and installs
# what every command needs into it. Afterwards $PYTHON is the interpreter to run and `pip_install ARGS...` installs
# requirement lists into it.
#
# Which environment (first match wins):
#   PYTHON=/path/to/python        that interpreter, as it is (your choice; nothing is created)
#   an active venv or conda env   $VIRTUAL_ENV / $CONDA_PREFIX (conda's base environment does not count)
#   otherwise                     .venv/ at the repository root (RESNEST_FAST_VENV to move it), made with the
#                                 `python3` on PATH. A distribution's python3 is "externally managed" (PEP 668) and
#                                 refuses pip installs, so the project never installs into it.
# In .venv a requirement list that was installed once is not handed to pip again until it changes (a stamp per
# list in .venv/.resnest_fast_installed/; delete that folder, or .venv, to force a reinstall). Local builds
# (`pip install .`, `-e .`) always go to pip: the C++ build is incremental (ninja) and must see csrc/ changes.
#
# Run directly: `bash scripts/setup_env.sh --print-python` selects (creating .venv if needed) and prints the
# interpreter without installing anything; `bash scripts/setup_env.sh --pip-install ARGS...` runs one pip_install.
set -euo pipefail
_rf_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TORCH_SPEC=${RESNEST_FAST_TORCH:-torch==2.13.0+cpu}
RESNEST_FAST_OWN_VENV=  # the .venv path when the environment is the project's own (stamps are only kept there)

_rf_die() { echo "scripts/setup_env.sh: $*" >&2; exit 2; }

_rf_same_dir() { local a b; a=$(cd "$1" 2>/dev/null && pwd -P) && b=$(cd "$2" 2>/dev/null && pwd -P) && [ "$a" = "$b" ]; }

_rf_make_venv() {  # $1: where; made with the python3 on PATH
  local venv=$1 base log
  base=$(command -v python3) || _rf_die "no python3 on PATH: install Python 3.10+ (Debian/Ubuntu: sudo apt install python3 python3-venv), or set PYTHON=/path/to/python"
  echo "== creating the project's virtual environment $venv with $base ($("$base" --version 2>&1))" >&2
  log=$(mktemp)
  if ! "$base" -m venv --clear "$venv" >"$log" 2>&1; then
    # Debian/Ubuntu ship venv's ensurepip in a separate package; without it venv fails half-way
    local ver
    ver=$("$base" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo 3)
    rm -rf "$venv"
    _rf_die "'$base -m venv' failed: install python$ver-venv (Debian/Ubuntu: sudo apt install python$ver-venv), or set PYTHON=/path/to/python or activate an environment (venv's output: $log)"
  fi
  rm -f "$log"
  mkdir -p "$venv/.resnest_fast_installed"  # also marks a venv whose creation completed
}

_rf_select_python() {
  if [ -n "${PYTHON:-}" ]; then
    echo "== using PYTHON=$PYTHON as it is" >&2
    return
  fi
  local venv=${RESNEST_FAST_VENV:-$_rf_root/.venv}
  if [ -n "${VIRTUAL_ENV:-}" ] && ! _rf_same_dir "$VIRTUAL_ENV" "$venv"; then  # .venv activated: still ours
    PYTHON=$VIRTUAL_ENV/bin/python
    echo "== using the active virtual environment $VIRTUAL_ENV" >&2
    return
  fi
  if [ -z "${VIRTUAL_ENV:-}" ] && [ -n "${CONDA_PREFIX:-}" ] && [ "${CONDA_DEFAULT_ENV:-}" != base ]; then
    PYTHON=$CONDA_PREFIX/bin/python
    echo "== using the active conda environment $CONDA_PREFIX" >&2
    return
  fi
  # A venv that does not run (its base Python was removed or upgraded) or whose creation was interrupted is remade
  if ! [ -d "$venv/.resnest_fast_installed" ] || ! "$venv/bin/python" -c '' 2>/dev/null; then
    _rf_make_venv "$venv"
  fi
  venv=$(cd "$venv" && pwd)
  PYTHON=$venv/bin/python
  RESNEST_FAST_OWN_VENV=$venv
  # as `source .venv/bin/activate` would: tools that the build and the tests start by name (ninja) come from it
  export VIRTUAL_ENV=$venv PATH=$venv/bin:$PATH
  echo "== using the project's virtual environment $venv (to use it yourself: source ${venv#"$PWD/"}/bin/activate)" >&2
}

pip_install() {  # pip install "$@" into $PYTHON, skipped in .venv when this very list was installed there before
  local stamp= arg
  if [ -n "$RESNEST_FAST_OWN_VENV" ]; then
    stamp=$RESNEST_FAST_OWN_VENV/.resnest_fast_installed/$(printf '%s\0' "$@" | sha256sum | cut -c1-32)
    for arg in "$@"; do
      case $arg in .|./*|/*|*/) stamp= ;; esac  # a local project: its sources may have changed, pip decides
    done
  fi
  if [ -n "$stamp" ] && [ -e "$stamp" ]; then
    echo "   (unchanged since the last install into ${RESNEST_FAST_OWN_VENV#"$PWD/"}, pip skipped: $*)"
    return 0
  fi
  "$PYTHON" -m pip install "$@"
  if [ -n "$stamp" ]; then printf '%s\n' "$@" >"$stamp"; fi
}

_rf_select_python
if [ "${BASH_SOURCE[0]}" = "$0" ]; then  # run directly rather than sourced
  case ${1:-} in
    --print-python) echo "$PYTHON"; exit 0 ;;
    --pip-install) shift; pip_install "$@"; exit 0 ;;
    *) ;;
  esac
fi
echo "== installing $TORCH_SPEC, triton and the build tools"
# triton: the range setup.py's extra names (CI compiles the kernels with 3.6, 3.8 and the version installed here)
pip_install -q "$TORCH_SPEC" "triton>=3.6,<3.10" ninja "setuptools>=64" wheel numpy
