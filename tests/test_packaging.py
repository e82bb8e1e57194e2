"""Packaging: one version number (pyproject.toml, read back from the installed metadata and the
compiled module), the typing marker and the stub of the compiled module, which must name every
function and attribute the module exports with the same number of arguments. Runs against
whatever `import cldfast` finds (scripts/check_wheel.sh runs it against an installed wheel)."""

from __future__ import annotations

import ast
import importlib.metadata
import re
from pathlib import Path

import cldfast
from cldfast import _core

PKG = Path(cldfast.__file__).resolve().parent
STUB = PKG / "_core.pyi"


def _stub() -> tuple[dict[str, int], dict[str, str]]:
    """(function -> number of parameters, attribute -> annotation) declared in _core.pyi."""
    tree = ast.parse(STUB.read_text())
    functions, attributes = {}, {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            a = node.args
            assert not (a.args or a.kwonlyargs or a.vararg or a.kwarg), (
                f"{node.name}: the bindings declare no argument names, so every parameter in the "
                "stub must be positional-only")
            functions[node.name] = len(a.posonlyargs)
        elif isinstance(node, ast.AnnAssign):
            attributes[node.target.id] = ast.unparse(node.annotation)
    return functions, attributes


def test_one_version_number():
    assert cldfast.__version__ == _core.__version__ == importlib.metadata.version("cldfast")


def test_typing_marker_and_stub_are_installed():
    assert (PKG / "py.typed").is_file()
    assert STUB.is_file()


def test_stub_matches_the_compiled_module():
    functions, attributes = _stub()
    exported = {n for n in dir(_core) if not n.startswith("__")} | {"__version__"}
    # the cuda_* functions exist only in a build with the CUDA kernels
    in_this_build = set(attributes) | {n for n in functions
                                       if _core.with_cuda or not n.startswith("cuda_")}
    assert exported == in_this_build, (
        f"in the module, not the stub: {sorted(exported - in_this_build)}; "
        f"in the stub, not the module: {sorted(in_this_build - exported)}")
    for name, annotation in attributes.items():
        assert type(getattr(_core, name)).__name__ == annotation, name
    for name, count in functions.items():
        if name not in exported:
            continue
        signature = getattr(_core, name).__doc__.splitlines()[0]  # pybind11: name(arg0: ..., ...)
        assert len(re.findall(r"\barg\d+:", signature)) == count, (name, signature)
