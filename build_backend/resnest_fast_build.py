"""PEP 517 backend: setuptools', plus the torch of the environment that runs `pip install`.

A C++/CUDA extension of torch must be compiled against the torch it will be imported into. pip's build isolation
hides that torch, and declaring `torch` as a build requirement would install another one (on this project's
machines pip resolves it to a multi-GB CUDA build of a newer version, whose ABI does not match). So we ask the
installing environment's interpreter where its torch lives and put that directory at the *end* of sys.path:
the isolated setuptools/wheel still win, and only packages missing from the build environment (torch and its
dependencies) come from outside. With `--no-build-isolation` torch is importable already and nothing changes.
If no torch is installed anywhere, torch becomes a build requirement and pip installs one for the build.
"""
import json
import os
import subprocess
import sys

from setuptools import build_meta as _orig
from setuptools.build_meta import *  # noqa: F401,F403  (the PEP 517 hooks we do not override)


def _outer_torch_path():
    try:
        import torch  # noqa: F401

        return None  # already importable (no build isolation)
    except ImportError:
        pass
    # pip's isolation works through PYTHONPATH/PYTHONNOUSERSITE and a sitecustomize; without them the same
    # interpreter sees the installing environment again.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONNOUSERSITE", "PYTHONHOME")}
    code = "import json, os, torch; print(json.dumps(os.path.dirname(os.path.dirname(torch.__file__))))"
    try:
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def _expose_outer_torch():
    path = _outer_torch_path()
    if path and path not in sys.path:
        print(f"resnest_fast build: using the installing environment's torch from {path}", flush=True)
        sys.path.append(path)
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), path]))
    return path


def _torch_importable():
    try:
        import torch  # noqa: F401

        return True
    except ImportError:
        return False


def get_requires_for_build_wheel(config_settings=None):
    _expose_outer_torch()
    extra = [] if _torch_importable() else ["torch"]
    return _orig.get_requires_for_build_wheel(config_settings) + extra


def get_requires_for_build_editable(config_settings=None):
    _expose_outer_torch()
    extra = [] if _torch_importable() else ["torch"]
    return _orig.get_requires_for_build_editable(config_settings) + extra


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    _expose_outer_torch()
    return _orig.build_wheel(wheel_directory, config_settings, metadata_directory)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    _expose_outer_torch()
    return _orig.build_editable(wheel_directory, config_settings, metadata_directory)
