"""resnest_fast.export: torch.export with the fused ops kept (static and dynamic sizes, save/load in this and in a
fresh process), ONNX through the reference decomposition checked with ONNX Runtime, TorchScript by tracing, and
the errors of the paths that cannot work (torch.jit.script, missing packages, missing ops, existing files).

Small segmentors (ResNeSt-50 layout at widths 16/8, one per head type) keep the file fast; the eight shipped
configs at full size are behind `-m heavy`."""
import copy
import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import pytest
import torch

import resnest_fast.export as rexport
from resnest_fast import _extension as ext
from resnest_fast.export import (
    OnnxValidationError,
    export_onnx,
    export_program,
    fused_op_counts,
    load_program,
    reference_ops,
    refuse_parity_guards,
    save_program,
    to_reference,
    trace_torchscript,
)
from resnest_fast.nn import SplitAttentionConv2d
from resnest_fast.optimize import FrozenConv2d
from resnest_fast.segmentation import build_model, build_segmentor, list_configs, load_config
from tests.parity import randomize, randomize_model

pytestmark = pytest.mark.skipif(not ext.HAS_CPU_KERNELS,
                                reason="resnest_fast._C is not built: there are no fused ops to export")

ROOT = pathlib.Path(__file__).resolve().parents[1]
FCN = "resnest_s101-d8_fcn_4xb2-80k_cityscapes-512x1024"
HEAD_CONFIGS = {
    "PSPHead": "resnest_s101-d8_pspnet_4xb2-80k_cityscapes512x1024",
    "ASPPHead": "resnest_s101-d8_deeplabv3_4xb2-80k_cityscapes-512x1024",
    "DepthwiseSeparableASPPHead": "resnest_s101-d8_deeplabv3plus_4xb2-80k_cityscapes-512x1024",
}
HAS_ONNX = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxscript", "onnxruntime"))
needs_onnx = pytest.mark.skipif(not HAS_ONNX, reason="needs onnx, onnxscript and onnxruntime: "
                                                      "pip install onnx onnxscript onnxruntime")


def small_segmentor(head_config=FCN):
    """The shipped config's model at ResNeSt-50 depth and tiny widths, with random weights and BN statistics."""
    cfg = copy.deepcopy(load_config(FCN)["model"])
    if head_config != FCN:
        cfg["decode_head"] = copy.deepcopy(load_config(head_config)["model"]["decode_head"])
    cfg["backbone"].update(depth=50, stem_channels=16, base_channels=8)
    cfg["decode_head"].update(in_channels=256, channels=16)
    if cfg["decode_head"]["type"] == "DepthwiseSeparableASPPHead":
        cfg["decode_head"].update(c1_in_channels=32)
    cfg["auxiliary_head"].update(in_channels=128, channels=8)
    return randomize_model(build_segmentor(cfg)).eval()


def image(*shape):
    return torch.rand(*shape) * 255


def blocks(model):
    return [m for m in model.modules() if isinstance(m, SplitAttentionConv2d)]


def max_abs(a, b):
    return (a - b).abs().max().item()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny shapes: one thread is fastest, and on shared cores a second OpenMP thread that is descheduled stalls
    every op at its barrier (100x slower here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def segmentor():
    torch.manual_seed(0)
    return small_segmentor()


@pytest.fixture(scope="module")
def program(segmentor):
    return export_program(segmentor, image(1, 3, 64, 96))


@pytest.fixture(scope="module")
def portable(program):
    return to_reference(program)


def eager(model, *args):
    with torch.no_grad():
        return model(*args)


# ------------------------------------------------------------------------------------------------- torch.export


def test_program_matches_eager_and_keeps_one_pool_and_one_combine_per_block(segmentor, program):
    x = image(1, 3, 64, 96)
    assert max_abs(program.module()(x), eager(segmentor, x)) <= 1e-5
    n = len(blocks(segmentor))
    assert n == 16  # ResNeSt-50: 3 + 4 + 6 + 3 bottlenecks
    assert fused_op_counts(program) == {"splat_pool": n, "splat_combine": n}


@pytest.mark.parametrize("head", sorted(HEAD_CONFIGS))
def test_every_head_type_exports(head):
    model = small_segmentor(HEAD_CONFIGS[head])
    assert type(model.decode_head).__name__ == head
    x = image(1, 3, 64, 96)
    program = export_program(model, x)
    assert max_abs(program.module()(x), eager(model, x)) <= 1e-5
    assert fused_op_counts(program) == {"splat_pool": 16, "splat_combine": 16}


def _torch_guards_the_parity(segmentor) -> bool:
    """Whether torch.export itself (no resnest_fast wrapper) makes a program that refuses a 100-wide image after a
    96-wide example: torch before 2.13 turns ceil-mode pooling's output size into a guard on its parity."""
    dims = {"img": {2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC}}
    with torch.no_grad():
        plain = torch.export.export(segmentor, (image(1, 3, 64, 96),), dynamic_shapes=dims)
        try:
            plain.module()(image(1, 3, 64, 100))
        except AssertionError as exc:
            assert "Guard failed" in str(exc)
            return True
    return False


def test_dynamic_batch_height_and_width(segmentor):
    if _torch_guards_the_parity(segmentor):
        with pytest.raises(ValueError, match=r"dynamic_shapes: torch .* fixes the parity .* torch 2.13"):
            export_program(segmentor, image(2, 3, 64, 96), dynamic_shapes="bhw")
        return
    program = export_program(segmentor, image(2, 3, 64, 96), dynamic_shapes="bhw")
    for shape in [(1, 3, 72, 100), (3, 3, 33, 47)]:
        x = image(*shape)
        out = program.module()(x)
        assert out.shape == (shape[0], segmentor.num_classes, *shape[2:])
        assert max_abs(out, eager(segmentor, x)) <= 1e-5


def test_dynamic_sizes_start_where_the_model_takes_them_and_a_smaller_example_is_refused(segmentor):
    """torch.export fixes a size of 1: the D8 model's 1/8 feature maps must be 2 pixels wide, so H, W >= 9. The
    program's range says so (a smaller image gets `img.size()[2] >= 9`, not a guard on a floor division), and an
    example below it, which made a program that took no larger image, is refused naming the size."""
    if _torch_guards_the_parity(segmentor):
        pytest.skip("this torch refuses the dynamic export (parity guard)")
    program = export_program(segmentor, image(2, 3, 32, 40), dynamic_shapes="bhw")
    assert sorted(int(r.lower) for r in program.range_constraints.values()) == [2, 9, 9]
    for shape in [(2, 3, 9, 9), (1, 3, 9, 70)]:
        x = image(*shape)
        assert max_abs(program.module()(x), eager(segmentor, x)) <= 1e-5
    for shape in [(2, 3, 8, 40), (2, 3, 32, 5)]:
        with pytest.raises(AssertionError, match=r"Guard failed: img\.size\(\)\[[23]\] >= 9$"):
            program.module()(image(*shape))
    for shape, spec in [((2, 3, 8, 8), "bhw"), ((1, 3, 32, 6), "hw")]:
        with pytest.raises(ValueError, match=(
                rf"^dynamic_shapes='{spec}' needs an example image of at least 9x9 \(got {shape[2]}x{shape[3]}\): "
                r"below that the model's smallest feature maps are 1 pixel wide")):
            export_program(segmentor, image(*shape), dynamic_shapes=spec)


def test_a_program_guarding_a_size_parity_is_refused_and_one_guarding_sizes_is_not():
    class Program:  # what torch.export leaves in an ExportedProgram: the guards its module() checks at each call
        def __init__(self, guards):
            self._guards_code = guards

    size_guards = ["(1 + (((-1) + L['img'].size()[3]) // 2)) != 1"]
    refuse_parity_guards(Program(size_guards))
    refuse_parity_guards(Program([]))
    parity = "((((-1) + L['img'].size()[3]) // 4) % 2) != 0"
    with pytest.raises(ValueError, match="dynamic_shapes: torch .* fixes the parity") as refused:
        refuse_parity_guards(Program(size_guards + [parity]))
    assert parity in str(refused.value)


def test_export_program_checks_the_guards_of_a_dynamic_export_only(monkeypatch):
    """On any torch: a program torch exported with a parity guard is refused when the sizes were asked dynamic, and a
    static export (whose sizes are fixed anyway) is returned as it is."""
    block = SplitAttentionConv2d(16, 16, 3, padding=1).eval()
    real_export = torch.export.export

    def export_with_a_parity_guard(*args, **kwargs):
        program = real_export(*args, **kwargs)
        program._guards_code = ["((((-1) + L['x'].size()[3]) // 2) % 2) != 0"]
        return program

    monkeypatch.setattr(torch.export, "export", export_with_a_parity_guard)
    with pytest.raises(ValueError, match="dynamic_shapes: torch .* fixes the parity"):
        export_program(block, torch.randn(1, 16, 8, 8), dynamic_shapes="hw")
    assert fused_op_counts(export_program(block, torch.randn(1, 16, 8, 8))) == {"splat_pool": 1, "splat_combine": 1}


def test_dynamic_shorthand_errors():
    block = SplitAttentionConv2d(16, 16, 3, padding=1).eval()
    with pytest.raises(ValueError, match="at least 2"):
        export_program(block, torch.randn(1, 16, 8, 8), dynamic_shapes="bhw")
    with pytest.raises(ValueError, match="'hw' or 'bhw'"):
        export_program(block, torch.randn(2, 16, 8, 8), dynamic_shapes="hwc")


def test_export_uses_eval_mode_and_restores_every_training_flag():
    model = randomize(SplitAttentionConv2d(16, 16, 3, padding=1, radix=2, groups=2)).train()
    model.bn1.eval()  # mixed flags, as norm_eval or frozen stages leave them
    x = torch.randn(2, 16, 8, 8)
    program = export_program(model, x)
    assert model.training and model.bn0.training and not model.bn1.training
    model.eval()
    assert max_abs(program.module()(x), eager(model, x)) <= 1e-5
    assert model.bn0.num_batches_tracked.item() == 7  # the trace did not update running statistics


def test_export_with_parameters_requiring_grad_traces_the_ops_not_the_fused_backward(segmentor):
    # In eager mode with grad enabled, the module takes its autograd.Function path; the trace must not.
    assert all(p.requires_grad for p in segmentor.parameters())
    with torch.enable_grad():
        program = export_program(segmentor, image(1, 3, 32, 32))
    assert fused_op_counts(program) == {"splat_pool": 16, "splat_combine": 16}


def test_save_load_round_trip_and_no_overwrite(program, segmentor, tmp_path):
    path = save_program(program, tmp_path / "fcn.pt2")
    assert sorted(os.listdir(tmp_path)) == ["fcn.pt2"]  # no temporary file left behind
    loaded = load_program(path)
    assert fused_op_counts(loaded) == fused_op_counts(program)
    x = image(1, 3, 64, 96)
    assert max_abs(loaded.module()(x), eager(segmentor, x)) <= 1e-5
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_program(program, path)
    assert path.read_bytes() == before
    save_program(program, path, overwrite=True)


FRESH_PROCESS = """
import sys, torch
fused, portable, x_path, out_path = sys.argv[1:]
out = torch.export.load(portable).module()(torch.load(x_path))  # plain ATen: torch alone loads it
assert "resnest_fast" not in sys.modules
try:
    torch.export.load(fused)
except Exception:
    print("plain-load-failed")
import resnest_fast
torch.save((torch.export.load(fused).module()(torch.load(x_path)), out), out_path)
"""


def test_load_in_a_fresh_process(program, portable, segmentor, tmp_path):
    """The fused program loads once resnest_fast is imported (its ops registered), not before; the to_reference
    program loads with torch alone."""
    fused = save_program(program, tmp_path / "fcn.pt2")
    plain = save_program(portable, tmp_path / "fcn_reference.pt2")
    x = image(1, 3, 64, 96)
    torch.save(x, tmp_path / "x.pt")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(fused), str(plain), str(tmp_path / "x.pt"),
                           str(tmp_path / "out.pt")], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "plain-load-failed" in done.stdout
    want = eager(segmentor, x)
    for got in torch.load(tmp_path / "out.pt"):
        assert max_abs(got, want) <= 1e-5


def test_load_program_names_the_ops_this_process_lacks(program, tmp_path, monkeypatch):
    path = save_program(program, tmp_path / "fcn.pt2")
    monkeypatch.setattr(rexport, "_registered", lambda name: name != "splat_combine")
    with pytest.raises(RuntimeError, match=r"splat_combine.*to_reference"):
        load_program(path)
    with pytest.raises(FileNotFoundError):
        load_program(tmp_path / "missing.pt2")


def test_load_program_of_a_file_that_is_not_a_program_names_it_and_what_it_is(tmp_path):
    """A checkpoint gave torch's "check the warnings above" RuntimeError, a text file zipfile's BadZipFile."""
    import zipfile

    torch.save({"w": torch.zeros(2)}, tmp_path / "c.pth")
    (tmp_path / "some.py").write_text("print('hello')\n")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as archive:
        archive.writestr("notes.txt", "not a program")
    (tmp_path / "empty.pt2").write_bytes(b"")
    expected = {
        "c.pth": "a PyTorch checkpoint (torch.save); load it with resnest_fast.load_checkpoint",
        "some.py": "a file starting with b\"print('h\"",
        "other.zip": "a zip archive without the models/ and archive_format entries of one",
        "empty.pt2": "an empty file",
    }
    for name, what in expected.items():
        with pytest.raises(ValueError) as refused:
            load_program(tmp_path / name)
        assert str(refused.value) == (f"{tmp_path / name} is not an exported program (a .pt2 file, as save_program "
                                      f"and torch.export.save write): it is {what}"), name


def test_to_reference_needs_only_aten(portable, segmentor):
    assert fused_op_counts(portable) == {}
    x = image(1, 3, 64, 96)
    assert max_abs(portable.module()(x), eager(segmentor, x)) <= 1e-5
    assert to_reference(portable) is portable


# ---------------------------------------------------------------------------------------------------------- ONNX


@needs_onnx
def test_onnx_of_a_segmentor_matches_eager(portable, segmentor, tmp_path):
    import onnx
    import onnxruntime as ort

    # The program already decomposed (to save time here; the block tests below go through the decomposition
    # inside export_onnx). export_onnx validates with onnxruntime too.
    path = export_onnx(portable, image(1, 3, 64, 96), tmp_path / "fcn.onnx")
    proto = onnx.load(path)
    assert not any(node.domain.startswith("resnest") for node in proto.graph.node)
    x = image(1, 3, 64, 96)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    assert max_abs(got, eager(segmentor, x)) <= 1e-4
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_onnx(portable, x, path)
    assert path.read_bytes() == before


@needs_onnx
def test_onnx_dynamic_height_and_width_of_a_block(tmp_path):
    import onnxruntime as ort

    block = randomize(SplitAttentionConv2d(32, 32, 3, padding=1, radix=4, groups=2)).eval()  # groups > 1: layout
    path = export_onnx(block, torch.randn(1, 32, 12, 10), tmp_path / "block.onnx", opset=18, dynamic=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in [(1, 32, 12, 10), (1, 32, 7, 9)]:
        x = torch.randn(shape)
        got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
        assert max_abs(got, eager(block, x)) <= 1e-4
    assert sorted(os.listdir(tmp_path)) == ["block.onnx"]


@needs_onnx
def test_an_opset_the_exporter_cannot_write_is_refused_before_exporting_and_one_it_can_is_honoured(tmp_path,
                                                                                                   monkeypatch):
    """opset=11 used to write an opset-18 file, with only a logged converter traceback to say so."""
    import onnx

    block = randomize(SplitAttentionConv2d(16, 16, 3, padding=1)).eval()
    x = torch.randn(1, 16, 6, 6)

    def no_export(*args, **kwargs):
        raise AssertionError("the opset must be refused before anything is exported")

    with monkeypatch.context() as patch:
        patch.setattr(torch.onnx, "export", no_export)
        patch.setattr(torch.export, "export", no_export)
        for opset in (11, 17, 99):
            with pytest.raises(ValueError, match=rf"^opset {opset} cannot be written by torch's ONNX exporter here: "
                                                 r"use an opset from 18 to \d+ \(None: torch's default\)"):
                export_onnx(block, x, tmp_path / "block.onnx", opset=opset)
        for opset in ("18", 18.0, True):
            with pytest.raises(TypeError, match="opset must be an int"):
                export_onnx(block, x, tmp_path / "block.onnx", opset=opset)
    assert os.listdir(tmp_path) == []
    path = export_onnx(block, x, tmp_path / "block.onnx", opset=19)
    assert {i.domain: i.version for i in onnx.load(path).opset_import}[""] == 19


@needs_onnx
def test_onnx_validation_failure_writes_nothing(tmp_path, monkeypatch):
    block = randomize(SplitAttentionConv2d(16, 16, 3, padding=1)).eval()
    real = rexport._onnxruntime_outputs
    monkeypatch.setattr(rexport, "_onnxruntime_outputs", lambda path, args: [o + 1 for o in real(path, args)])
    with pytest.raises(OnnxValidationError, match="nothing was written"):
        export_onnx(block, torch.randn(1, 16, 6, 6), tmp_path / "block.onnx")
    assert os.listdir(tmp_path) == []


def test_onnx_without_the_packages_says_what_to_install(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a))
    block = SplitAttentionConv2d(16, 16, 3, padding=1).eval()
    with pytest.raises(ImportError, match="pip install onnx onnxscript"):
        export_onnx(block, torch.randn(1, 16, 6, 6), tmp_path / "block.onnx")
    assert os.listdir(tmp_path) == []


# -------------------------------------------------------------------------------------------- reference_ops


def test_reference_ops_restores_backends_even_when_the_export_raises():
    model = torch.nn.Sequential(SplitAttentionConv2d(16, 16, 3, padding=1, backend="cpu"),
                                SplitAttentionConv2d(16, 16, 3, padding=1)).eval()
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        with reference_ops(model):
            assert [m.backend for m in model] == ["reference", "reference"]
            export_program(model, torch.randn(16, 8, 8))  # 3-D: the module rejects it while tracing
    assert [m.backend for m in model] == ["cpu", None]


# --------------------------------------------------------------------------------------------------- TorchScript


@pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:DeprecationWarning")
def test_torchscript_trace_keeps_the_fused_ops_and_runs_at_other_sizes(segmentor, tmp_path):
    traced = trace_torchscript(segmentor, image(1, 3, 64, 96))
    kinds = [n.kind() for n in traced.inlined_graph.nodes()]
    assert kinds.count("resnest_fast::splat_pool") == kinds.count("resnest_fast::splat_combine") == 16
    torch.jit.save(traced, tmp_path / "fcn.ts")
    loaded = torch.jit.load(tmp_path / "fcn.ts")
    for shape in [(1, 3, 64, 96), (2, 3, 40, 72)]:
        x = image(*shape)
        assert max_abs(loaded(x), eager(segmentor, x)) <= 1e-5
    reference = trace_torchscript(segmentor, image(1, 3, 64, 96), reference=True)
    assert not any("resnest_fast" in n.kind() for n in reference.inlined_graph.nodes())
    assert all(m.backend is None for m in blocks(segmentor))


@pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:DeprecationWarning")
def test_torchscript_script_points_to_the_working_paths(segmentor):
    with pytest.raises(RuntimeError, match="export_program.*trace_torchscript"):
        torch.jit.script(segmentor)


# ------------------------------------------------------------------------------------------- optimized models


def optimized_with_every_conv_form(monkeypatch):
    """(DeepLabV3+ small segmentor, its optimize_for_inference) where the optimized convs use every form they have
    on CPU: Winograd for the 3x3 convs (its channel threshold lowered to the tiny widths), oneDNN-packed weights
    and the dilated depthwise kernel of the separable ASPP."""
    from resnest_fast import optimize_for_inference
    from resnest_fast.ops import winograd as winograd_ops

    monkeypatch.setattr(winograd_ops, "WINOGRAD_MIN_CHANNELS", 1)
    model = small_segmentor(HEAD_CONFIGS["DepthwiseSeparableASPPHead"])
    return model, optimize_for_inference(model)


def foreign_ops(kinds):
    """The op names of this library in a graph other than the fused split-attention forward ops."""
    names = {m.group(1) for k in kinds for m in [re.search(r"resnest_fast(?:::|\.)(\w+)", k)] if m}
    return sorted(names - {"splat_pool", "splat_combine", "triton_splat_pool", "triton_splat_combine"})


@pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:DeprecationWarning")
@pytest.mark.parametrize("path", ["export_program hw", "trace_torchscript"])
@pytest.mark.parametrize("called", [False, True], ids=["fresh", "after-a-call"])
def test_an_optimized_model_exports_as_aten_convs_before_and_after_its_first_call(monkeypatch, path, called):
    """An optimized model traces to ATen convs with BN folded (no oneDNN-packed weight, no Winograd or depthwise op
    of this library, which other runtimes lack), whether or not a call has converted its weights; the result gives
    the original model's logits at two sizes, and the model still runs and converts its weights again."""
    model, fast = optimized_with_every_conv_form(monkeypatch)
    x, other = image(1, 3, 64, 96), image(1, 3, 48, 72)
    convs = [m for m in fast.modules() if isinstance(m, FrozenConv2d)]
    if called:
        eager(fast, x)
        if torch.backends.mkldnn.is_available():
            assert any(m.winograd_weight is not None for m in convs) and any(m._packed for m in convs)
    if path == "trace_torchscript":
        traced = trace_torchscript(fast, x)
        kinds, run = [n.kind() for n in traced.inlined_graph.nodes()], traced
        assert kinds.count("resnest_fast::splat_pool") == 16
    else:
        program = export_program(fast, x, dynamic_shapes="hw")
        kinds, run = [str(n.target) for n in program.graph.nodes if n.op == "call_function"], program.module()
        assert fused_op_counts(program) == {"splat_pool": 16, "splat_combine": 16}
    assert foreign_ops(kinds) == []
    assert not any("mkldnn" in k for k in kinds)
    for inp in (x, other):
        assert max_abs(run(inp), eager(model, inp)) <= 1e-4
    assert max_abs(eager(fast, x), eager(model, x)) <= 1e-4
    if torch.backends.mkldnn.is_available():  # one form of each weight again, not the folded one kept beside it
        assert all(m.weight is None for m in convs if m._packed is not None or m.winograd_weight is not None)


@needs_onnx
def test_an_optimized_model_that_has_run_exports_to_onnx(monkeypatch, tmp_path):
    model, fast = optimized_with_every_conv_form(monkeypatch)
    x = image(1, 3, 64, 96)
    eager(fast, x)
    path = export_onnx(fast, x, tmp_path / "optimized.onnx", validate=True)
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    assert max_abs(got, eager(model, x)) <= 1e-4


@pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:DeprecationWarning")
def test_tracing_an_optimized_model_that_has_run_directly_names_what_to_call(monkeypatch):
    """torch.jit.trace itself (not trace_torchscript) of a model whose weights are packed: one error naming the
    functions that restore them, and after unpack_weights the trace works."""
    from resnest_fast.optimize import unpack_weights

    model, fast = optimized_with_every_conv_form(monkeypatch)
    x = image(1, 3, 64, 96)
    eager(fast, x)
    if not torch.backends.mkldnn.is_available():
        pytest.skip("without oneDNN the convs keep their folded weights")
    with torch.no_grad(), pytest.raises(RuntimeError, match="trace_torchscript.*unpack_weights"):
        torch.jit.trace(fast, (x,), check_trace=False)
    with torch.no_grad():
        traced = torch.jit.trace(unpack_weights(fast), (x,), check_trace=False)
    assert max_abs(traced(x), eager(model, x)) <= 1e-4


# ------------------------------------------------------------------------------------------------------- heavy


@pytest.mark.heavy
@pytest.mark.parametrize("name", list_configs())
def test_full_size_config_exports_with_dynamic_height_and_width(name):
    model = randomize_model(build_model(name)).eval()
    x = image(1, 3, 512, 1024)
    program = export_program(model, x, dynamic_shapes="hw")
    assert fused_op_counts(program) == {"splat_pool": 33, "splat_combine": 33}  # ResNeSt-101: 3 + 4 + 23 + 3
    for x in (x, image(1, 3, 256, 384)):
        want = eager(model, x)
        assert max_abs(program.module()(x), want) <= 1e-5 * max(1.0, want.abs().max().item())


@pytest.mark.heavy
@needs_onnx
def test_full_size_onnx(tmp_path):
    model = randomize_model(build_model(FCN)).eval()
    export_onnx(model, image(1, 3, 512, 1024), tmp_path / "fcn.onnx")  # raises if ONNX Runtime disagrees
