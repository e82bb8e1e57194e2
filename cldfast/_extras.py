"""Optional dependencies: which extra of ``pip install 'cldfast[...]'`` brings each one, and
one check that names it. The tracker itself needs only numpy and torch."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

# import name -> (distribution to install, extra that brings it)
PROVIDERS = {
    "torchvision": ("torchvision", "pipeline"),
    "tqdm": ("tqdm", "pipeline"),
    "matplotlib": ("matplotlib", "pipeline"),
    "sklearn": ("scikit-learn", "pipeline"),
    "numba": ("numba", "bench"),
    "lightning": ("lightning", "lightning"),
    "transformers": ("transformers", "hf"),
    "timm": ("timm", "timm"),
    "webdataset": ("webdataset", "stream"),
}
PIPELINE = ("torchvision", "tqdm", "matplotlib", "sklearn")


def missing_message(module: str, what: str, extra: str | None = None) -> str:
    dist, default_extra = PROVIDERS.get(module, (module, "all"))
    extra = extra or default_extra
    return (f"{what} needs {dist}, which is not installed: pip install 'cldfast[{extra}]' "
            f"(or pip install {dist})")


def require(module: str, what: str) -> ModuleType:
    """Import ``module`` or raise ImportError naming the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(missing_message(module, what)) from exc


def require_all(modules: tuple[str, ...], what: str, extra: str | None = None) -> None:
    """Check that every module can be imported (without importing it); the message names
    ``extra`` (default: the extra of the missing module)."""
    for module in modules:
        if importlib.util.find_spec(module) is None:
            raise ImportError(missing_message(module, what, extra))
