"""Install what you use: a missing optional dependency is reported with the extra to install,
and the tracker needs none of them."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from cldfast import _extras
from cldfast.cli import main


def hide(monkeypatch, *names):
    real = importlib.util.find_spec
    monkeypatch.setattr(_extras.importlib.util, "find_spec",
                        lambda name, *a, **k: None if name in names else real(name, *a, **k))


def test_missing_pipeline_dependency_names_the_extra(monkeypatch, capsys):
    hide(monkeypatch, "torchvision")
    with pytest.raises(ImportError, match=r"pip install 'cldfast\[pipeline\]'"):
        _extras.require_all(_extras.PIPELINE, "cldfast.pipeline")
    assert main(["track", "--dataset", "digits", "--epochs", "1", "--quiet"]) == 2
    assert "cldfast[pipeline]" in capsys.readouterr().err
    monkeypatch.undo()
    hide(monkeypatch, "numba")
    assert main(["bench", "--dataset", "digits", "--quiet"]) == 2
    assert "cldfast[bench]" in capsys.readouterr().err


def test_missing_module_import(monkeypatch):
    monkeypatch.setitem(sys.modules, "numba", None)  # makes `import numba` fail
    with pytest.raises(ImportError, match=r"cldfast\[bench\]"):
        _extras.require("numba", "the geometry methods")


def test_the_tracker_imports_no_optional_dependency():
    # (tqdm is left out: torch itself imports it when it is installed.)
    code = ("import sys, cldfast\n"
            "t = cldfast.CLDTracker([0, 1, 0, 1], [0, 1])\n"
            "bad = [m for m in ('torchvision', 'matplotlib', 'sklearn', 'numba', "
            "'lightning', 'transformers', 'timm') if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd="/")
