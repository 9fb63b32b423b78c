"""Builds resnest_fast and its extension resnest_fast._C.

CPU kernels are always built. CUDA kernels are built when a GPU is visible or FORCE_CUDA=1, and nvcc exists.
Knobs (environment variables):
  FORCE_CUDA=1                  build the CUDA kernels without a GPU (an arch list is then needed: see below)
  RESNEST_FAST_SKIP_CUDA_BUILD=1  never build CUDA kernels
  TORCH_CUDA_ARCH_LIST          e.g. "8.0;9.0"; default: the visible GPUs' archs, else "8.0;9.0+PTX"
  MAX_JOBS                      parallel compile jobs for ninja
  RESNEST_FAST_DEBUG=1          -O0 -g
Every decision is printed.
"""
import glob
import os
import re
import shutil
import sys

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCH_LIST = "8.0;9.0+PTX"
# resnest_fast/version.py is the one place the version is written
VERSION = re.search(r'__version__ = "([^"]+)"', open(os.path.join(HERE, "resnest_fast", "version.py")).read()).group(1)


def log(msg):
    print(f"resnest_fast setup: {msg}", flush=True)


def nvidia_include_dirs():
    """Headers of the pip-installed CUDA toolkit pieces (cusparse.h, cublas_v2.h, ...) that torch's CUDA build
    includes. They live in site-packages/nvidia/<cuXY or lib>/include, next to torch."""
    dirs = []
    for entry in sys.path:
        if not entry or not os.path.isdir(os.path.join(entry, "nvidia")):
            continue
        dirs += sorted(glob.glob(os.path.join(entry, "nvidia", "cu*", "include")))
        dirs += sorted(glob.glob(os.path.join(entry, "nvidia", "*", "include")))
    seen, out = set(), []
    for d in dirs:
        if d not in seen and os.path.isdir(d):
            seen.add(d)
            out.append(d)
    return out


def choose_cuda_home():
    """torch guesses CUDA_HOME from `which nvcc`; where nvcc is a wrapper script (here /usr/local/bin/nvcc runs
    /usr/local/cuda-13.0/bin/nvcc) that guess has no lib64/libcudart and linking fails. Pick a root that has it."""
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    nvcc = shutil.which("nvcc")
    candidates = [os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))] if nvcc else []
    candidates += ["/usr/local/cuda"]
    for root in candidates:
        if glob.glob(os.path.join(root, "lib64", "libcudart.so*")) or glob.glob(
            os.path.join(root, "targets", "*", "lib", "libcudart.so*")
        ):
            os.environ["CUDA_HOME"] = root
            log(f"CUDA_HOME={root} (has libcudart; set CUDA_HOME to override)")
            return


def extension_modules():
    choose_cuda_home()
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        log("torch is not importable: building without resnest_fast._C (the pure-PyTorch reference will run)")
        return [], {}

    log(f"torch {torch.__version__} from {os.path.dirname(torch.__file__)}")
    skip_cuda = os.environ.get("RESNEST_FAST_SKIP_CUDA_BUILD", "0") == "1"
    force_cuda = os.environ.get("FORCE_CUDA", "0") == "1"
    gpu_visible = torch.cuda.is_available()
    nvcc = shutil.which("nvcc") or (
        os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc") if cpp_extension.CUDA_HOME else None
    )
    torch_has_cuda = torch.version.cuda is not None
    want_cuda = (gpu_visible or force_cuda) and not skip_cuda
    use_cuda = want_cuda and nvcc is not None and os.path.exists(nvcc) and torch_has_cuda
    log(
        f"gpu visible={gpu_visible}, FORCE_CUDA={int(force_cuda)}, skip={int(skip_cuda)}, nvcc={nvcc}, "
        f"torch CUDA={torch.version.cuda} -> CUDA kernels: {'yes' if use_cuda else 'no'}"
    )
    if want_cuda and not use_cuda:
        log("CUDA was asked for but cannot be built (needs nvcc and a CUDA build of torch): CPU kernels only")

    debug = os.environ.get("RESNEST_FAST_DEBUG", "0") == "1"
    cxx_flags = ["-O0", "-g"] if debug else ["-O3"]
    # No -std: torch's cpp_extension adds the standard its headers need (C++17 for 2.13, C++20 for 2.14), and
    # Py_LIMITED_API (py_limited_api=True below). -fno-trapping-math lets GCC turn the ReLU mask's compare into a
    # vector select (a signalling compare may not be speculated otherwise, and the loop stays scalar + branchy).
    cxx_flags += ["-fno-trapping-math", "-ffp-contract=off"]
    # at::parallel_for is a header template: it runs in parallel only where the extension itself is compiled with
    # the threading backend torch was built with (_OPENMP -> INTRA_OP_PARALLEL in ATen/ParallelOpenMP.h).
    # Without -fopenmp every kernel ran on one thread. Linking -fopenmp resolves to the libgomp.so.1 that torch
    # has already loaded (same soname), so there is one OpenMP runtime in the process.
    link_flags = []
    if "OpenMP" in torch.__config__.parallel_info() and sys.platform != "win32":
        cxx_flags += ["-fopenmp"]
        link_flags += ["-fopenmp"]
        log("torch's intra-op threading is OpenMP: kernels compiled with -fopenmp")
    else:
        cxx_flags += ["-fopenmp-simd"]
        log("torch's intra-op threading is not OpenMP: kernels compiled with -fopenmp-simd (vectorised only)")
    sources = sorted(glob.glob("csrc/ops/*.cpp")) + sorted(glob.glob("csrc/ops/cpu/*.cpp"))
    include_dirs = [os.path.join(HERE, "csrc")]
    extra = {"cxx": cxx_flags}
    if use_cuda:
        if not gpu_visible and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCH_LIST
            log(f"no GPU to query: TORCH_CUDA_ARCH_LIST={DEFAULT_ARCH_LIST} (set it to change)")
        else:
            log(f"TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST', '(archs of the visible GPUs)')}")
        sources += sorted(glob.glob("csrc/ops/cuda/*.cu"))
        nv_inc = nvidia_include_dirs()
        log(f"nvidia header dirs: {nv_inc or 'none found'}")
        include_dirs += nv_inc
        extra["nvcc"] = ["-O3" if not debug else "-G", "--use_fast_math", "-lineinfo"]
        extra["cxx"] = extra["cxx"] + ["-DRESNEST_FAST_WITH_CUDA"]
        ext_cls = cpp_extension.CUDAExtension
    else:
        ext_cls = cpp_extension.CppExtension
    log(f"MAX_JOBS={os.environ.get('MAX_JOBS', '(ninja default)')}, sources: {', '.join(sources)}")
    ext = ext_cls(
        "resnest_fast._C",
        sources,
        include_dirs=include_dirs,
        extra_compile_args=extra,
        extra_link_args=link_flags,
        py_limited_api=True,
    )

    class BuildExt(cpp_extension.BuildExtension.with_options(use_ninja=True)):
        # setuptools builds an editable install in a new temporary directory every time, so each `pip install -e .`
        # (every run of run.sh and test.sh) recompiled all of csrc/: minutes on 2 cores. The objects of editable
        # builds live in build/temp-editable instead, where ninja recompiles only what changed (sources, the
        # headers they include, or the flags).
        def finalize_options(self):
            super().finalize_options()
            if getattr(self, "editable_mode", False):
                self.build_temp = os.path.join(HERE, "build", "temp-editable")
                log(f"editable build: objects in {self.build_temp} (incremental)")

    return [ext], {"build_ext": BuildExt}


ext_modules, cmdclass = extension_modules()
packages = find_packages(include=["resnest_fast", "resnest_fast.*"])
packages += ["resnest_fast.kernels"] + [
    "resnest_fast.kernels." + p for p in find_packages(where="kernels")
]
packages += ["resnest_fast.training"] + [
    "resnest_fast.training." + p for p in find_packages(where="training")
]

TRITON = "triton>=3.6,<3.10"

setup(
    name="resnest_fast",
    version=VERSION,
    description="Fused split-attention kernels behind a drop-in ResNeSt backbone",
    packages=packages,
    package_dir={"resnest_fast.kernels": "kernels", "resnest_fast.training": "training"},
    python_requires=">=3.10",
    # pillow: image/label decoding and PNG writing; tqdm: progress bars; cityscapesscripts: the official Cityscapes
    # label table (ids, trainIds, colours) instead of a hand-typed copy
    install_requires=["torch>=2.4", "numpy", "pillow", "tqdm", "cityscapesscripts"],
    package_data={"resnest_fast.segmentation": ["configs/*/*.py", "configs/*/*/*.py"]},
    # deploy: the ONNX exporter and the two CPU runtimes the model benchmark compares with (optional: nothing in
    # the library needs them to run)
    # triton: the versions CI compiles the kernels with (3.6: torch 2.11's pin; 3.8: torch 2.14's; 3.9); 3.10 turns
    # floating-point fusion off by default, which changes results
    extras_require={"triton": [TRITON], "test": ["pytest", "pytest-benchmark", "numpy"],
                    "deploy": ["onnx", "onnxscript", "onnxruntime", "openvino"]},
    entry_points={"console_scripts": ["resnest-fast=resnest_fast.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    options={"bdist_wheel": {"py_limited_api": "cp310"}} if ext_modules else {},
    zip_safe=False,
)
