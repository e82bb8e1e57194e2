"""The package's imports run one way (docs/design.md): cli -> pipeline -> training /
selection / scores -> data / core -> io. Checked on the source, module by module."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "cldfast"

# The layer of each subpackage; a module may import its own layer and the layers below.
LAYERS = {"_core": 0, "_extras": 0, "io": 0, "core": 1, "data": 2, "scores": 3, "selection": 3,
          "training": 3, "pipeline": 4, "integrations": 4, "cli": 5, "__init__": 6, "__main__": 6}
# Siblings in one layer that may use each other, in this direction only.
SIBLINGS = {("scores", "selection"), ("scores", "training"), ("integrations", "pipeline")}


def _subpackage(parts: list[str]) -> str:
    return parts[0] if len(parts) > 1 else parts[0].removesuffix(".py")


def _imports(path: Path) -> list[tuple[str, int]]:
    """(target subpackage, line) of every cldfast import in ``path``."""
    rel = path.relative_to(PKG).with_suffix("").parts
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = list(rel[:-1])[: len(rel) - node.level] if node.level > 1 else list(rel[:-1])
            target = base + (node.module.split(".") if node.module else [])
            if not target:  # from .. import name: a module of the package root
                target = [node.names[0].name]
            out.append((target[0], node.lineno))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cldfast."):
            out.append((node.module.split(".")[1], node.lineno))
    return out


def test_imports_run_one_way():
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).parts
        mine = _subpackage(list(rel))
        for target, line in _imports(path):
            if target not in LAYERS or target == mine:
                continue
            up = LAYERS[target] > LAYERS[mine]
            same = LAYERS[target] == LAYERS[mine] and (mine, target) not in SIBLINGS
            if up or same:
                bad.append(f"{path.relative_to(PKG.parent)}:{line} ({mine} imports {target})")
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_no_flat_modules_left():
    """The modules of the old flat layout live in subpackages now."""
    flat = sorted(p.name for p in PKG.glob("*.py")
                  if p.name not in ("__init__.py", "__main__.py", "_extras.py", "io.py"))
    assert flat == [], flat
