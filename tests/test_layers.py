"""The import arrows of the source tree run only downwards, read from the source files themselves (ast, imports
inside functions included): one floor per layer, nothing of the library imports the training package but the
commands, no two units import each other, benchmarks never import the tests."""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# where each package's files live in the source tree (setup.py's package_dir)
SOURCE_DIRS = {
    "resnest_fast": ROOT / "resnest_fast",
    "resnest_fast.kernels": ROOT / "kernels",
    "resnest_fast.training": ROOT / "training",
    "benchmarks": ROOT / "benchmarks",
}

# unit -> floor. A unit may import units of its own floor or below; the units of one floor must not import
# each other both ways. `resnest_fast` itself (the package face) and its __main__ sit on top of the library.
FLOORS = {
    "resnest_fast.utils": 0,
    "resnest_fast._extension": 0,
    "resnest_fast.checkpoint": 0,
    "resnest_fast.version": 0,
    "resnest_fast._C": 0,
    "resnest_fast.op_rules": 1,
    "resnest_fast.backend": 1,
    "resnest_fast.ops": 2,
    "resnest_fast.kernels": 2,
    "resnest_fast.nn": 3,
    "resnest_fast.models": 4,
    "resnest_fast.conversion": 4,
    "resnest_fast.segmentation": 5,
    "resnest_fast.optimize": 6,
    "resnest_fast.export": 6,
    "resnest_fast.info": 6,
    "resnest_fast.mmseg": 6,  # the mmseg plugin: imports mmseg, so nothing of the library imports it
    "resnest_fast.training": 7,
    "resnest_fast.cli": 8,
    "resnest_fast.__main__": 9,
    "resnest_fast": 9,
    "resnest_fast.testing": 10,
    "benchmarks": 11,
}


def _module_name(package: str, folder: pathlib.Path, path: pathlib.Path) -> str:
    parts = list(path.relative_to(folder).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([package, *parts])


def source_modules():
    """{module name: path} of every Python file of the packages (configs are data, not modules)."""
    out = {}
    for package, folder in SOURCE_DIRS.items():
        for path in sorted(folder.rglob("*.py")):
            if "configs" in path.relative_to(folder).parts:
                continue
            name = _module_name(package, folder, path)
            if name.startswith("resnest_fast.kernels") and package == "resnest_fast":
                continue
            out.setdefault(name, path)
    out["resnest_fast._C"] = None  # the compiled extension: its registrations import nothing of ours
    return out


def imports_of(name: str, path: pathlib.Path, known) -> set:
    """The modules `name` imports (absolute names; `from pkg import sub` counts as pkg.sub when sub is a module)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                found.add(sub if sub in known else module)
    return found


def unit_of(module: str):
    """The longest FLOORS key that is `module` or a package above it; None for modules outside the project."""
    best = None
    for unit in FLOORS:
        if (module == unit or module.startswith(unit + ".")) and (best is None or len(unit) > len(best)):
            best = unit
    return best


def edges():
    modules = source_modules()
    out = []
    for name, path in modules.items():
        if path is None:
            continue
        for target in imports_of(name, path, modules):
            out.append((name, target))
    return modules, out


def test_every_module_has_a_floor():
    modules, _ = edges()
    assert len(modules) > 50, "the walk found too few files: the source layout changed?"
    unplaced = sorted(m for m in modules if unit_of(m) is None)
    assert not unplaced, f"modules without a floor in tests/test_layers.py: {unplaced}"


def test_arrows_run_only_downwards():
    _, all_edges = edges()
    upward = []
    for source, target in all_edges:
        if target.split(".")[0] == "tests":
            upward.append(f"{source} -> {target} (the tests)")
            continue
        su, tu = unit_of(source), unit_of(target)
        if tu is None or su == tu:
            continue
        if FLOORS[tu] > FLOORS[su]:
            upward.append(f"{source} (floor {FLOORS[su]}) -> {target} (floor {FLOORS[tu]})")
    assert not upward, "imports that run upwards:\n" + "\n".join(sorted(upward))


def test_no_two_units_import_each_other():
    _, all_edges = edges()
    pairs = {(unit_of(s), unit_of(t)) for s, t in all_edges}
    pairs = {(a, b) for a, b in pairs if a and b and a != b}
    both_ways = sorted({tuple(sorted(p)) for p in pairs if (p[1], p[0]) in pairs})
    assert not both_ways, f"units that import each other: {both_ways}"


def test_only_the_commands_import_the_training_package():
    _, all_edges = edges()
    offenders = sorted({s for s, t in all_edges if unit_of(t) == "resnest_fast.training"
                        and unit_of(s) not in ("resnest_fast.training", "resnest_fast.cli")
                        and not s.startswith("benchmarks")})
    assert not offenders, f"library modules importing resnest_fast.training: {offenders}"


def test_nothing_of_the_library_imports_the_mmseg_plugin():
    _, all_edges = edges()
    offenders = sorted(s for s, t in all_edges if unit_of(t) == "resnest_fast.mmseg" and s != "resnest_fast.mmseg")
    assert not offenders, f"modules importing resnest_fast.mmseg (which needs mmseg installed): {offenders}"


def test_no_command_imports_another():
    _, all_edges = edges()
    commands = {"resnest_fast.cli.info", "resnest_fast.cli.infer", "resnest_fast.cli.train", "resnest_fast.cli.test"}
    offenders = sorted(f"{s} -> {t}" for s, t in all_edges if s in commands and t in commands and s != t)
    assert not offenders, f"commands importing each other: {offenders}"


@pytest.mark.parametrize("source, target, upward", [
    ("resnest_fast.ops.splat_pool", "resnest_fast.training.train", True),
    ("resnest_fast.segmentation.segmentor", "resnest_fast.models.resnest", False),
    ("resnest_fast.nn.split_attention", "resnest_fast.segmentation", True),
])
def test_the_floor_rule_itself(source, target, upward):
    su, tu = unit_of(source), unit_of(target)
    assert (FLOORS[tu] > FLOORS[su]) is upward
