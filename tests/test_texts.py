"""The package's docstrings say what the code does, not what a benchmark measured once:
measured figures live in benchmarks/RESULTS.md (and the README quotes them), where they are
regenerated, so a copy in a docstring goes stale (as the --loss-source help's did)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "cldfast"

# Speed-ups, correlations, detection rates and accuracies, as the old docstrings quoted them.
MEASURED = re.compile(r"\d+(?:\.\d+)?x (?:faster|slower)|~\d+(?:\.\d+)?x\b|AUROC \d|"
                      r"Spearman -?\d|\d+(?:\.\d+)? ?% test accuracy")


def test_docstrings_quote_no_measured_figures():
    found = []
    for path in sorted(PKG.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                doc = ast.get_docstring(node) or ""
                found += [(str(path.relative_to(PKG)), getattr(node, "name", "<module>"), m)
                          for m in MEASURED.findall(doc)]
    assert found == []


def test_the_pattern_catches_what_it_is_for():
    for text in ("about 3x faster", "ran ~50x slower", "AUROC 0.60 vs 0.92", "Spearman -0.02",
                 "about 89 % test accuracy"):
        assert MEASURED.search(text), text
    for text in ("8x8 inputs", "1x28x28", "2x2 max-pool", "10 % of training"):
        assert not MEASURED.search(text), text
