"""The package's imports run one way (docs/design.md): cli -> pipeline -> training /
selection / scores -> data / core -> io. Checked on the source, module by module.

Private names stay private: a name with a leading underscore belongs to the module that
defines it (a private module or subpackage, e.g. ``cldfast._core``, to the package that
holds it), so no other module imports it or reads it as an attribute. Every imported name is
checked (``from m import a, _b as c``, parenthesised lists, ``import cldfast.x._y``), in the
package and in benchmarks/, whose scripts use cldfast's public API only (between themselves
they share ``_common`` and ``_results``)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "cldfast"
BENCH = ROOT / "benchmarks"

# The layer of each subpackage; a module may import its own layer and the layers below.
LAYERS = {"_core": 0, "_extras": 0, "io": 0, "defaults": 0, "core": 1, "data": 2, "scores": 3,
          "selection": 3, "training": 3, "pipeline": 4, "integrations": 4, "cli": 5, "__init__": 6,
          "__main__": 6}
# Siblings in one layer that may use each other, in this direction only.
SIBLINGS = {("scores", "selection"), ("scores", "training"), ("integrations", "pipeline")}

# Private names used outside their module today, to be made public (or moved) by the owners
# of these files; each entry is (importing file, name). Remove an entry when its use goes:
# the test fails on an entry that no longer matches anything, so the list only shrinks.
# benchmarks/ has no entry and gets none.
ALLOWED_PRIVATE: set[tuple[str, str]] = set()
# The same for private attributes read on another module's objects: (reading file, attribute).
ALLOWED_PRIVATE_READS: set[tuple[str, str]] = set()


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _subpackage(parts: list[str]) -> str:
    return parts[0] if len(parts) > 1 else parts[0].removesuffix(".py")


def _module_of(path: Path) -> list[str]:
    """Dotted parts of the module in ``path`` (cldfast/x/__init__.py -> cldfast, x)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def _package_of(path: Path) -> list[str]:
    """The package a relative import in ``path`` starts from."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return parts[:-1]


def _is_package_member(module: list[str], name: str) -> bool:
    """Whether ``name`` is a module or subpackage of the package ``module`` (else it is a
    name defined in that module). The compiled ``_core`` counts through its stub."""
    base = ROOT.joinpath(*module)
    return (base.is_dir() and ((base / name).is_dir() or (base / f"{name}.py").is_file()
                               or (base / f"{name}.pyi").is_file()))


def _imported(tree: ast.AST, path: Path):
    """(absolute dotted parts of every imported cldfast module or name, line)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "cldfast":
                    yield alias.name.split("."), node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package_of(path)
                base = base[: len(base) - (node.level - 1)]
                module = base + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == "cldfast":
                module = node.module.split(".")
            else:
                continue
            for alias in node.names:  # every name, not only the first
                if alias.name != "*":
                    yield module + [alias.name], node.lineno


def _owner(target: list[str]) -> list[str] | None:
    """The module or package a private part of ``target`` belongs to (None: all public).
    A private module or subpackage belongs to the package holding it; a private name
    defined in a module belongs to that module."""
    for k in range(1, len(target)):
        if _private(target[k]):
            holder = target[:k]
            if k < len(target) - 1 or _is_package_member(holder, target[k]):
                return holder  # a private module / subpackage: its package's
            return target  # a name defined in module `holder`: that module's own
    return None


def _private_import_uses(path: Path) -> list[tuple[str, int]]:
    """(dotted private target, line) of every import of a private name ``path`` may not use."""
    me = _module_of(path)
    out = []
    for target, line in _imported(ast.parse(path.read_text()), path):
        owner = _owner(target)
        if owner is None:
            continue
        own_name = owner == target  # a module-level name: only its own module may use it
        allowed = (me == target[:-1]) if own_name else (me[: len(owner)] == owner)
        if not allowed:
            out.append((".".join(target), line))
    return out


def _private_attribute_reads(path: Path, owned_elsewhere: set[str] | None) -> list[tuple[str, int]]:
    """``x._name`` reads on anything but ``self`` / ``cls`` / ``super()``. With
    ``owned_elsewhere``, only names that another cldfast module defines and this one does
    not (a read of another module's private attribute); without it, all of them."""
    tree = ast.parse(path.read_text())
    mine = _defined_private_attributes(tree)
    out = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and _private(node.attr)):
            continue
        v = node.value
        if isinstance(v, ast.Name) and v.id in ("self", "cls"):
            continue
        if isinstance(v, ast.Call) and isinstance(v.func, ast.Name) and v.func.id == "super":
            continue
        if owned_elsewhere is not None and (node.attr in mine or node.attr not in owned_elsewhere):
            continue
        out.append((ast.unparse(node), node.lineno))
    return out


def _defined_private_attributes(tree: ast.AST) -> set[str]:
    """Private attribute names a module defines: ``self._x = ...``, class-level ``_x``
    (methods and assignments) and state declared as ``add_state("_x", ...)``."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                for sub in ast.walk(t):
                    if isinstance(sub, ast.Attribute) and _private(sub.attr):
                        names.add(sub.attr)
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and _private(item.name):
                    names.add(item.name)
                elif isinstance(item, ast.Assign):
                    names.update(t.id for t in item.targets if isinstance(t, ast.Name) and _private(t.id))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "add_state" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            names.add(node.args[0].value)
    return names


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _layer_targets(path: Path) -> list[tuple[str, int]]:
    """(target subpackage, line) of every cldfast import in ``path``."""
    return [(target[1], line) for target, line in _imported(ast.parse(path.read_text()), path)
            if len(target) > 1]


# --------------------------------------------------------------------------------------------
def test_imports_run_one_way():
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).parts
        mine = _subpackage(list(rel))
        for target, line in _layer_targets(path):
            target = target.removesuffix(".py")
            if target not in LAYERS or target == mine:
                continue
            up = LAYERS[target] > LAYERS[mine]
            same = LAYERS[target] == LAYERS[mine] and (mine, target) not in SIBLINGS
            if up or same:
                bad.append(f"{_rel(path)}:{line} ({mine} imports {target})")
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_no_private_names_imported_across_modules():
    bad, used = [], set()
    for path in sorted(PKG.rglob("*.py")):
        for target, line in _private_import_uses(path):
            if (_rel(path), target) in ALLOWED_PRIVATE:
                used.add((_rel(path), target))
            else:
                bad.append(f"{_rel(path)}:{line} imports {target}")
    assert not bad, "private names imported from another module:\n" + "\n".join(bad)
    stale = sorted(ALLOWED_PRIVATE - used)
    assert not stale, f"ALLOWED_PRIVATE entries no longer needed (remove them): {stale}"


def test_no_private_attributes_of_other_modules_read():
    files = sorted(PKG.rglob("*.py"))
    defined = {p: _defined_private_attributes(ast.parse(p.read_text())) for p in files}
    bad, used = [], set()
    for path in files:
        elsewhere = set().union(*(d for p, d in defined.items() if p != path))
        for expr, line in _private_attribute_reads(path, elsewhere):
            key = (_rel(path), expr.rsplit(".", 1)[1])
            if key in ALLOWED_PRIVATE_READS:
                used.add(key)
            else:
                bad.append(f"{_rel(path)}:{line} reads {expr}")
    assert not bad, "private attributes read outside their module:\n" + "\n".join(bad)
    stale = sorted(ALLOWED_PRIVATE_READS - used)
    assert not stale, f"ALLOWED_PRIVATE_READS entries no longer needed (remove them): {stale}"


def test_benchmarks_use_the_public_api_only():
    bad = []
    for path in sorted(BENCH.glob("*.py")):
        tree = ast.parse(path.read_text())
        for target, line in _imported(tree, path):
            if any(_private(part) for part in target[1:]):
                bad.append(f"{_rel(path)}:{line} imports {'.'.join(target)}")
        for node in ast.walk(tree):  # their own shared modules: public names only
            if isinstance(node, ast.ImportFrom) and node.module in ("_common", "_results"):
                bad += [f"{_rel(path)}:{node.lineno} imports {node.module}.{a.name}"
                        for a in node.names if _private(a.name)]
        bad += [f"{_rel(path)}:{line} reads {expr}"
                for expr, line in _private_attribute_reads(path, None)]
    assert not bad, "benchmarks reaching into private names:\n" + "\n".join(bad)


def test_checks_see_every_imported_name(tmp_path, monkeypatch):
    """The checks themselves: multi-name, parenthesised and aliased imports, absolute and
    relative, private modules and attribute reads."""
    pkg = tmp_path / "cldfast"
    for sub in ("core", "pipeline"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "_core.pyi").write_text("")
    (pkg / "core" / "kernels.py").write_text("def _twin(): pass\ndef pub(): pass\n")
    src = pkg / "pipeline" / "use.py"
    src.write_text("from ..core.kernels import (pub,\n    _twin as twin)\n"
                   "from cldfast.core.kernels import pub, _twin\n"
                   "from .. import io, _core\n"
                   "import cldfast.core._hidden.x\n"
                   "obj._secret\nself._mine\n")
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    found = [t for t, _ in _private_import_uses(src)]
    assert found == ["cldfast.core.kernels._twin", "cldfast.core.kernels._twin",
                     "cldfast.core._hidden.x"], found
    assert [e for e, _ in _private_attribute_reads(src, None)] == ["obj._secret"]
    assert [e for e, _ in _private_attribute_reads(src, {"_other"})] == []
    assert sorted({t for t, _ in _layer_targets(src)}) == ["_core", "core", "io"]


def test_no_flat_modules_left():
    """The modules of the old flat layout live in subpackages now; the root holds the
    package's entry points, the compiled module's helpers, file I/O and the defaults."""
    flat = sorted(p.name for p in PKG.glob("*.py")
                  if p.name not in ("__init__.py", "__main__.py", "_extras.py", "io.py",
                                    "defaults.py"))
    assert flat == [], flat
