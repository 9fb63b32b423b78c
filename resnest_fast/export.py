"""Deployment of ResNeSt models (segmentors, backbones, single modules): torch.export with the fused ops kept,
ONNX through the pure-PyTorch reference, TorchScript through tracing.

Which path, and what it needs where the model runs:

    path                 split attention in the artifact               needs at load / run time
    export_program       torch.ops.resnest_fast.splat_pool / combine   torch + resnest_fast imported (its _C)
    to_reference(prog)   the references' ATen ops                      torch only
    export_onnx          the references as ONNX ops (opset 18+)        any ONNX runtime
    trace_torchscript    resnest_fast::splat_pool / combine nodes      torch + resnest_fast imported
                         (reference=True: plain ATen nodes)            (torch only)
    torch.jit.script     not supported: SplitAttentionConv2d raises an error that points here

Every path exports the model in eval mode (BatchNorm on running statistics, bn0 folded into the fused ops'
scale/shift, dropout off) and puts back each submodule's own training flag afterwards.

The fused ops are ordinary dispatcher ops with fake kernels (resnest_fast/ops/registrations.py), so torch.export traces
them as single nodes whatever the shapes; the program holds whichever op the model's backend resolves to
(`splat_pool` for the cpu/cuda kernels, `triton_splat_pool` for Triton), or none at all when it resolves to the
reference.

Why an ONNX runtime (or TensorRT) may not be faster than PyTorch here: it does not have our fused kernels, so the
ONNX graph carries the reference decomposition of split attention, the eager form that makes about 9.5 passes over
the (B, radix*C, H, W) conv output (affine, relu, view/sum, mean, MLP, softmax, mul, sum) where the fused ops make
two. Measured on this project's 2-core CPU VM (`python -m benchmarks.onnx_runtime --threads 1` and `--threads 2`,
docs/results/onnx-runtime-*-2026-11-28.csv): after the conv of one block (2 x 512 x 64 x 128), ONNX Runtime took
2.0-3.3x the time of the fused kernels (and 1/6 of eager PyTorch's reference). The whole model is another matter:
convolutions dominate it, the ONNX exporter folds BatchNorm into the convs (eager PyTorch runs them separately) and
ONNX Runtime's grouped conv was faster than oneDNN's, so a ResNeSt-50-D8 FCN at 256 x 512 ran in 0.83-0.86x of our
eager time. Keep the fused kernels with export_program (Python with resnest_fast imported); use ONNX where a
runtime without them is the requirement.
"""
import contextlib
import importlib.util
import os
import pathlib
import re
import warnings
import zipfile
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torch.export import Dim, ExportedProgram

from resnest_fast import _extension as ext
from resnest_fast.nn.split_attention import SplitAttentionConv2d
from resnest_fast.ops import splat_combine_reference, splat_pool_reference
from resnest_fast.optimize import unpack_weights
from resnest_fast.utils import atomic_write, eval_mode

__all__ = [
    "export_program",
    "save_program",
    "load_program",
    "to_reference",
    "fused_op_counts",
    "export_onnx",
    "OnnxValidationError",
    "check_opset",
    "trace_torchscript",
    "reference_ops",
]

PathLike = Union[str, os.PathLike]

# The forward ops an eval-mode model can put in a program, and their pure-PyTorch references (same signature).
_REFERENCES = {
    "splat_pool": splat_pool_reference,
    "splat_combine": splat_combine_reference,
    "triton_splat_pool": splat_pool_reference,
    "triton_splat_combine": splat_combine_reference,
}
_OP_IN_PROGRAM = re.compile(r"torch\.ops\.resnest_fast\.(\w+)\.")
_ONNX_HINT = "pip install onnx onnxscript"
_ORT_HINT = "pip install onnxruntime"
# torch's dynamo ONNX exporter has its functions at opset 18 (torch.onnx's TORCHLIB_OPSET) and reaches a later opset
# with onnxscript's version converter. Below 18 it falls back to onnx's C converter, which fails on these models
# (Reduce* ops with computed axes) and leaves the model at 18, saying so only in a logged traceback.
ONNX_MIN_OPSET = 18


# ------------------------------------------------------------------------------------------------------ helpers


def _as_args(example_input) -> Tuple[Any, ...]:
    return (example_input,) if isinstance(example_input, Tensor) else tuple(example_input)


def _check_module(model) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")


def _registered(name: str) -> bool:
    return hasattr(torch.ops.resnest_fast, name)


def _ops_missing_reason(names: Sequence[str]) -> str:
    if any(not n.startswith("triton_") for n in names) and not ext.HAS_C:
        return f"resnest_fast._C is not available ({ext.C_IMPORT_ERROR}); rebuild with `pip install .`"
    if any(n.startswith("triton_") for n in names):
        return ("the Triton ops are registered only where triton is installed and CUDA (or TRITON_INTERPRET=1 set "
                "before importing resnest_fast) is available")
    return "this build of resnest_fast does not define them"


def _write_atomically(path: pathlib.Path, overwrite: bool, write) -> pathlib.Path:
    """write(tmp_path) then moved into place atomically; an existing file is replaced only with overwrite=True."""
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    if not atomic_write(path, write, overwrite=overwrite, to_path=True):  # appeared while we were writing
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    return path


# ------------------------------------------------------------------------------------------------- torch.export


def _image_dynamic_shapes(spec: str, args: Tuple[Any, ...], minima: Tuple[Optional[int], ...] = (None, None)):
    dims = {"hw": (2, 3), "bhw": (0, 2, 3)}[spec]
    if not args or not isinstance(args[0], Tensor) or args[0].dim() != 4:
        raise ValueError(f"dynamic_shapes={spec!r} needs a 4-D image (B, C, H, W) as the first input")
    if 0 in dims and args[0].shape[0] < 2:
        raise ValueError(
            "dynamic_shapes='bhw' needs an example batch of at least 2: torch.export specialises a size of 1"
        )
    first = {d: Dim.DYNAMIC for d in dims}
    for d, low in zip((2, 3), minima):
        if low is not None and low > 2:
            first[d] = Dim.DYNAMIC(min=low)
    return (first,) + (None,) * (len(args) - 1)


def _size_guards(program: ExportedProgram, args: Tuple[Any, ...]):
    """accepts(h, w): whether the program's input guards take an image of h x w (the batch and the other inputs as
    in the example). The guards read sizes only, so they are asked with meta tensors; None where the program has no
    guard function (torch's `module()._guards_fn`) that takes the example's inputs."""
    guards = getattr(program.module(), "_guards_fn", None)
    if guards is None:
        return None
    img, rest = args[0], args[1:]

    def accepts(h: int, w: int) -> bool:
        try:
            guards(torch.empty((*img.shape[:2], h, w), dtype=img.dtype, device="meta"), *rest)
        except AssertionError:  # "Guard failed: ..."
            return False
        return True

    try:
        accepts(*img.shape[2:])
    except Exception:  # a guard function that wants other inputs: nothing to learn from it
        return None
    return accepts


def _smallest(accepts_size, size: int) -> int:
    """The smallest n <= size such that accepts_size takes every size from n to `size`."""
    while size > 2 and accepts_size(size - 1):
        size -= 1
    return size


def _range_minima(program: ExportedProgram) -> Tuple[Optional[int], ...]:
    """The lower bounds of the program's ranges for the first input's height and width (None: not found)."""
    try:
        name = program.graph_signature.user_inputs[0]
        node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == name)
        sizes = node.meta["val"].shape[2:]
        return tuple(int(program.range_constraints[s.node.expr].lower) if isinstance(s, torch.SymInt) else None
                     for s in sizes)
    except (AttributeError, IndexError, KeyError, StopIteration):
        return (None, None)


def _image_minima(model: nn.Module, args: Tuple[Any, ...], spec: str) -> Optional[Tuple[int, int]]:
    """The smallest height and width the model takes with a dynamic size, read from the guards of a program exported
    on zero images large enough to have none above their size; None if that fails."""
    size = 64
    while size <= 4096:
        probe = (torch.zeros((*args[0].shape[:2], size, size), dtype=args[0].dtype, device=args[0].device),) + args[1:]
        try:
            accepts = _size_guards(torch.export.export(model, probe, dynamic_shapes=_image_dynamic_shapes(spec, probe)),
                                   probe)
        except Exception:  # only the error message loses the size
            return None
        if accepts is None:
            return None
        if accepts(2 * size, 2 * size):
            return (_smallest(lambda n: accepts(n, size), size), _smallest(lambda n: accepts(size, n), size))
        size *= 4
    return None


def _from_the_smallest_size(model: nn.Module, program: ExportedProgram, args: Tuple[Any, ...],
                            spec: str) -> ExportedProgram:
    """The program of a shorthand dynamic export, its height and width ranges starting at the smallest size the
    model takes. torch.export fixes a size of 1, so a model that downsamples by 8 gets guards that its 1/8 feature
    maps are not 1 pixel wide: H, W >= 9, which the range may not say (a call below it then fails a guard on a floor
    division); exported again with the range starting there, a call below it fails `img.size()[2] >= 9`. An example
    below that size made a program that takes no larger image: refused (ValueError) with the size."""
    accepts = _size_guards(program, args)
    if accepts is None:
        return program
    h, w = args[0].shape[2:]
    far = 2 * max(h, w, 2048)  # such a program's bound is the model's downsampling factor (8 for a D8 backbone)
    if not (accepts(far, w) and accepts(h, far)):
        minima = _image_minima(model, args, spec)
        need = f"an example image of at least {minima[0]}x{minima[1]}" if minima else "a larger example image"
        raise ValueError(f"dynamic_shapes={spec!r} needs {need} (got {h}x{w}): below that the model's smallest "
                         "feature maps are 1 pixel wide, a size torch.export fixes, and the program would take no "
                         "larger image")
    minima = (_smallest(lambda n: accepts(n, w), h), _smallest(lambda n: accepts(h, n), w))
    if all(low <= 2 for low in minima) or _range_minima(program) == minima:
        return program
    return torch.export.export(model, args, dynamic_shapes=_image_dynamic_shapes(spec, args, minima))


def export_program(model: nn.Module, example_input, dynamic_shapes=None) -> ExportedProgram:
    """torch.export of `model` in eval mode, the split-attention ops kept as fused `torch.ops.resnest_fast.*` calls.

    Args:
        model: a segmentor (forward: RGB 0-255 image (B, 3, H, W) -> logits (B, num_classes, H, W)), a ResNeSt
            backbone, a SplitAttentionConv2d or any module containing them. Exported in eval mode; each
            submodule's training flag is restored afterwards.
        example_input: a tensor, or a tuple of the forward's positional arguments.
        dynamic_shapes: None (every size static), torch.export's own spec, or a shorthand for an image input:
            "hw" (height and width dynamic) or "bhw" (batch too; needs an example batch >= 2). The shorthands
            use Dim.DYNAMIC, so a size the model would specialise raises instead of being silently fixed. Height
            and width range from the smallest size the model takes (torch.export fixes a size of 1, so its
            smallest feature maps must be 2 pixels wide: H, W >= 9 for a D8 backbone); an example below it is
            refused (ValueError naming it). The program checks at every call that the sizes are in its ranges
            (program.range_constraints: `Guard failed: img.size()[2] >= 9`). Torch before 2.13 fixes the parity
            of the feature sizes of a ResNeSt-D backbone instead: refused (ValueError).
    Returns: the torch.export.ExportedProgram; `program.module()(img)` runs it.

    The fused ops trace through their fake kernels. To save and load: save_program / load_program, or
    torch.export.save / torch.export.load in a process that has imported resnest_fast first (the ops are
    registered by that import; without it, load fails to resolve torch.ops.resnest_fast.*). For a program that
    loads with torch alone, pass it through to_reference().
    """
    _check_module(model)
    args = _as_args(example_input)
    shorthand = dynamic_shapes if isinstance(dynamic_shapes, str) else None
    if shorthand is not None:
        if shorthand not in ("hw", "bhw"):
            raise ValueError(f"dynamic_shapes shorthand must be 'hw' or 'bhw', got {shorthand!r}")
        dynamic_shapes = _image_dynamic_shapes(shorthand, args)
    with eval_mode(model):
        program = torch.export.export(unpack_weights(model), args, dynamic_shapes=dynamic_shapes)
        if dynamic_shapes is not None:
            refuse_parity_guards(program)
        if shorthand is not None:
            program = _from_the_smallest_size(model, program, args, shorthand)
    return program


def refuse_parity_guards(program: ExportedProgram) -> None:
    """Raises if the program holds a guard on the parity of a size.

    Before 2.13, torch evaluates the output size of ceil-mode average pooling (ResNeSt-D's avg_down downsampling)
    as a guard that fixes the parity of the feature maps' sizes: a program exported with a dynamic height and width
    then raises "Guard failed" at about three image sizes in four (e.g. a 100-pixel-wide image after a 96-wide
    example). Refused here, when the program is made, with the way out."""
    parity = [g for g in getattr(program, "_guards_code", None) or () if "%" in g]
    if parity:
        raise ValueError(
            f"dynamic_shapes: torch {torch.__version__} fixes the parity of this model's feature sizes when it "
            f"exports it ({parity[0]}), so the program would refuse most other image sizes; torch 2.13 and later "
            "export it for every size. Upgrade torch, or export one program per image size (dynamic_shapes=None)")


def fused_op_counts(program: ExportedProgram) -> Dict[str, int]:
    """How many calls of each resnest_fast op the program's graph holds, e.g. {'splat_pool': 33,
    'splat_combine': 33} for ResNeSt-101 (one of each per split-attention block)."""
    counts: Dict[str, int] = {}
    for node in program.graph.nodes:
        if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload):
            if node.target.namespace == "resnest_fast":
                name = node.target._opname
                counts[name] = counts.get(name, 0) + 1
    return counts


def to_reference(program: ExportedProgram) -> ExportedProgram:
    """The program with every fused resnest_fast forward op replaced by its pure-PyTorch reference
    (run_decompositions with a table of just those ops; everything else is left as it is).

    The result needs only torch to load and run, and is what export_onnx hands to the ONNX exporter. A program
    without fused ops is returned unchanged."""
    if not fused_op_counts(program):
        return program
    table = {getattr(torch.ops.resnest_fast, name).default: ref for name, ref in _REFERENCES.items()
             if _registered(name)}
    return program.run_decompositions(table)


def save_program(program: ExportedProgram, path: PathLike, overwrite: bool = False) -> pathlib.Path:
    """torch.export.save to `path` (conventionally *.pt2), written atomically; an existing file is replaced only
    with overwrite=True. Load it with load_program (or torch.export.load after `import resnest_fast`)."""
    if not isinstance(program, ExportedProgram):
        raise TypeError(f"program must be a torch.export.ExportedProgram, got {type(program).__name__}")
    return _write_atomically(pathlib.Path(path), overwrite, lambda tmp: torch.export.save(program, tmp))


def _what_instead_of_a_program(path: pathlib.Path) -> Optional[str]:
    """None when the file is laid out as a .pt2 archive (models/*.json and archive_format entries), else what it is."""
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read(8)
        if head.startswith(b"\x80"):
            return "a pickle (torch.save's legacy format?), not a zip archive"
        return "an empty file" if not head else f"a file starting with {head!r}"
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    leaves = {name.rsplit("/", 1)[-1] for name in names}
    if "archive_format" in leaves and any("/models/" in n or n.startswith("models/") for n in names):
        return None
    if "data.pkl" in leaves:
        return "a PyTorch checkpoint (torch.save); load it with resnest_fast.load_checkpoint"
    return "a zip archive without the models/ and archive_format entries of one"


def load_program(path: PathLike) -> ExportedProgram:
    """torch.export.load of a program saved by save_program / torch.export.save.

    A file that is not laid out as one (a checkpoint, a script) is refused with a ValueError naming it and what it is.
    Importing resnest_fast (which this function's module does) registers the fused ops that the program calls;
    if one of them is not registered here (resnest_fast._C missing, or a Triton op where Triton cannot run), this
    raises a RuntimeError that names the ops and why, instead of torch's deserialisation error.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no exported program at {path}")
    # torch.export.load reports any other file with an error that names neither the file nor what it is
    # ("check the warnings above", or zipfile's BadZipFile)
    what = _what_instead_of_a_program(path)
    if what:
        raise ValueError(f"{path} is not an exported program (a .pt2 file, as save_program and torch.export.save "
                         f"write): it is {what}")
    used = set()
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            if "/models/" in name and name.endswith(".json"):
                used.update(_OP_IN_PROGRAM.findall(archive.read(name).decode("utf-8", "replace")))
    missing = sorted(n for n in used if not _registered(n))
    if missing:
        raise RuntimeError(
            f"{path} calls torch.ops.resnest_fast.{{{', '.join(missing)}}}, which this process does not register: "
            f"{_ops_missing_reason(missing)}. Where the fused ops cannot run, export with "
            f"resnest_fast.export.to_reference(program) instead (a program that needs only torch)."
        )
    return torch.export.load(path)


# ---------------------------------------------------------------------------------------------------------- ONNX


class OnnxValidationError(RuntimeError):
    """ONNX Runtime's output differs from PyTorch's by more than the tolerance (nothing was written)."""


def _require(module: str, hint: str, what: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ImportError(f"{what} needs the {module!r} package, which is not installed: {hint}")


def _onnx_max_opset() -> Optional[int]:
    """The latest opset onnxscript's version converter goes to (25 for onnxscript 0.7; past it the converter's fallback
    fails); None where this onnxscript does not say."""
    try:
        from onnxscript.version_converter import _version_converter
    except ImportError:
        return None
    return getattr(_version_converter, "SUPPORTED_MAX_ONNX_OPSET", None)


def check_opset(opset) -> None:
    """TypeError/ValueError unless opset is None or an opset torch's ONNX exporter writes as asked."""
    if opset is None:
        return
    if isinstance(opset, bool) or not isinstance(opset, int):
        raise TypeError(f"opset must be an int (18 or later) or None, got {opset!r}")
    high = _onnx_max_opset()
    if opset < ONNX_MIN_OPSET or (high is not None and opset > high):
        span = f"from {ONNX_MIN_OPSET} to {high}" if high is not None else f"of {ONNX_MIN_OPSET} or later"
        raise ValueError(f"opset {opset} cannot be written by torch's ONNX exporter here: use an opset {span} "
                         f"(None: torch's default)")


def _onnxruntime_outputs(path: pathlib.Path, args: Tuple[Any, ...]) -> list:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    tensors = [a for a in args if isinstance(a, Tensor)]
    feeds = {i.name: t.detach().cpu().numpy() for i, t in zip(session.get_inputs(), tensors)}
    return [torch.from_numpy(o) for o in session.run(None, feeds)]


def export_onnx(
    model: Union[nn.Module, ExportedProgram],
    example_input,
    path: PathLike,
    opset: Optional[int] = None,
    dynamic: bool = False,
    overwrite: bool = False,
    validate: Optional[bool] = None,
    atol: float = 1e-4,
) -> pathlib.Path:
    """ONNX export of an eval-mode model, split attention written as its pure-PyTorch reference.

    The fused ops have no ONNX counterpart, so the model is exported with export_program (fused ops, fake
    kernels) and to_reference() decomposes them into the references' ATen ops before torch.onnx.export
    (dynamo exporter) converts the program. This was chosen over switching every module to backend='reference'
    during the trace (reference_ops): it needs no knowledge of the model's modules, also converts a program
    loaded from disk, and leaves the model untouched.

    Args:
        model: a module (exported in eval mode, as export_program does) or an ExportedProgram (e.g. from
            load_program; its dynamic shapes are the ones it was exported with).
        example_input: a tensor or a tuple of positional arguments (used for the trace and the validation).
        path: the .onnx file, written atomically and self-contained (weights inside: fine below 2 GB, which every
            ResNeSt segmentor is).
        opset: ONNX opset, 18 to the latest onnxscript's converter reaches (25 for onnxscript 0.7); None:
            torch.onnx's default (20 with torch 2.13). Any other is refused (ValueError) before exporting.
        dynamic: height and width dynamic (export_program's dynamic_shapes='hw'); for a dynamic batch, export
            with export_program(..., dynamic_shapes='bhw') and pass the program.
        overwrite: replace an existing file (otherwise FileExistsError).
        validate: run the file with ONNX Runtime on example_input and compare with PyTorch (the eager model, or
            the program): None = when onnxruntime is installed, True = always (ImportError without it).
        atol: validation tolerance: max |onnx - torch| <= atol * max(1, max |torch|).
    Returns the path. Raises ImportError (with the pip command) without onnx/onnxscript, OnnxValidationError
    (before anything is written at `path`) when the outputs differ.

    Speed: ONNX runtimes (TensorRT too) get the ~9.5-pass eager decomposition of split attention, not our two fused
    passes; see the module docstring and `python -m benchmarks.onnx_runtime`.
    """
    _require("onnx", _ONNX_HINT, "export_onnx")
    _require("onnxscript", _ONNX_HINT, "export_onnx (torch.onnx's exporter)")
    check_opset(opset)
    if validate is None:
        validate = importlib.util.find_spec("onnxruntime") is not None
    elif validate:
        _require("onnxruntime", _ORT_HINT, "export_onnx(validate=True)")
    path = pathlib.Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    args = _as_args(example_input)
    if isinstance(model, ExportedProgram):
        if dynamic:
            raise ValueError("dynamic=True applies when exporting a module; a program keeps the dynamic shapes it "
                             "was exported with (export_program(..., dynamic_shapes='hw'))")
        program = model
    else:
        program = export_program(model, args, dynamic_shapes="hw" if dynamic else None)
    onnx_program = torch.onnx.export(to_reference(program), args, dynamo=True, opset_version=opset,
                                     external_data=False, verbose=False)
    written = onnx_program.model.opset_imports.get("")
    if opset is not None and written != opset:  # a converter that gave up leaves the model at another opset
        raise ValueError(f"torch's ONNX exporter made an opset-{written} model where opset {opset} was asked for; "
                         f"nothing was written to {path}")

    def write(tmp: pathlib.Path) -> None:
        onnx_program.save(tmp, external_data=False)
        if validate:
            _validate(model, program, args, tmp, atol)

    return _write_atomically(path, overwrite, write)


def _validate(model, program: ExportedProgram, args, onnx_path: pathlib.Path, atol: float) -> None:
    with torch.no_grad():
        if isinstance(model, nn.Module):
            with eval_mode(model):
                expected = model(*args)
        else:
            expected = program.module()(*args)
    expected = [expected] if isinstance(expected, Tensor) else list(expected)
    got = _onnxruntime_outputs(onnx_path, args)
    if len(got) != len(expected):
        raise OnnxValidationError(f"ONNX Runtime returned {len(got)} outputs, PyTorch {len(expected)}")
    for i, (g, e) in enumerate(zip(got, expected)):
        if tuple(g.shape) != tuple(e.shape):
            raise OnnxValidationError(f"output {i}: ONNX Runtime shape {tuple(g.shape)}, PyTorch {tuple(e.shape)}")
        err = (g.to(e.dtype) - e).abs().max().item() if e.numel() else 0.0
        bound = atol * max(1.0, e.abs().max().item() if e.numel() else 0.0)
        if not err <= bound:
            raise OnnxValidationError(
                f"output {i}: ONNX Runtime differs from PyTorch by {err:.3g} (> {bound:.3g}); nothing was written. "
                f"Pass validate=False to write the file anyway."
            )


# --------------------------------------------------------------------------------------------------- TorchScript


@contextlib.contextmanager
def reference_ops(model: nn.Module) -> Iterator[nn.Module]:
    """Every SplitAttentionConv2d of `model` runs the pure-PyTorch reference (backend='reference') inside the
    block; each module's previous backend is restored on exit, also when the block raises.

    For tools that trace Python and cannot load resnest_fast where the result runs (torch.jit.trace for a
    TorchScript file that plain libtorch loads, torch.onnx.export(dynamo=False), third-party tracers). Ops called
    directly through resnest_fast.ops with backend=None follow the global default instead
    (resnest_fast.set_default_backend)."""
    _check_module(model)
    blocks = [m for m in model.modules() if isinstance(m, SplitAttentionConv2d)]
    previous = [m.backend for m in blocks]
    try:
        for m in blocks:
            m.backend = "reference"
        yield model
    finally:
        for m, backend in zip(blocks, previous):
            m.backend = backend


def trace_torchscript(model: nn.Module, example_input, reference: bool = False) -> torch.jit.ScriptModule:
    """TorchScript of `model` by torch.jit.trace, in eval mode and without autograd.

    The fused ops are dispatcher ops and appear in the trace as `resnest_fast::splat_pool` /
    `resnest_fast::splat_combine` nodes: the ScriptModule runs, and torch.jit.load loads it, in a process that
    has imported resnest_fast. With reference=True the trace holds the pure-PyTorch reference instead (loads with
    torch or libtorch alone; the ~9.5-pass eager form). Sizes are recorded as traced values where the code reads
    them from tensors, so the result runs at other input sizes too (checked in tests/test_export.py), but control
    flow is frozen at the example's (as with any trace). torch.jit.script is not supported: it raises an error
    that points to this function and to export_program. TorchScript is deprecated as of torch 2.13 (torch.jit.trace
    warns so): prefer export_program for new deployments.
    """
    _check_module(model)
    args = _as_args(example_input)
    context = reference_ops(model) if reference else contextlib.nullcontext()
    with context, eval_mode(model), torch.no_grad(), warnings.catch_warnings():
        # Our input checks, and SyncBatchNorm's (the configs' norm), compare channel counts and ranks, which a trace
        # rightly freezes; the tracer's warnings about them would bury any warning about the user's own code.
        for module in (r"resnest_fast(\.|$)", r"torch\.nn\.modules\.batchnorm$"):
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=module)
        return torch.jit.trace(unpack_weights(model), args, check_trace=False)
