"""The independent references of the training tests, imported only when installed (test.sh installs them):
mmsegmentation 1.2.2 / mmcv 2.1 (and the opencv they bring), read for their semantics; tests skip otherwise."""
import ast
import importlib.util

import pytest

from tests.mmseg_reference import skip_without_mmseg


def import_cv2():
    return pytest.importorskip("cv2", reason="opencv (installed with mmcv-lite) is the reference of this test")


def mmseg_dataset_metainfo(module_file, class_name):
    """METAINFO of an mmseg dataset class read from its source (no import of mmseg's registry and transforms)."""
    skip_without_mmseg()
    spec = importlib.util.find_spec("mmseg")
    import os

    path = os.path.join(os.path.dirname(spec.origin), "datasets", module_file)
    tree = ast.parse(open(path).read())
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            for stmt in node.body:
                if isinstance(stmt, ast.Assign) and getattr(stmt.targets[0], "id", None) == "METAINFO":
                    return {kw.arg: ast.literal_eval(kw.value) for kw in stmt.value.keywords}
    raise AssertionError(f"no METAINFO in {class_name} of {path}")
