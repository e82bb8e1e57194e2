"""Benchmark findings the workflows print, read from the package data file ``findings.json``
(beside this module, shipped in the wheel). The texts summarise sections of
benchmarks/RESULTS.md and change with them, so they live in data, not in code."""

from __future__ import annotations

import functools
import json
from importlib import resources

__all__ = ["finding", "EMBEDDED_NOTE"]


@functools.lru_cache(maxsize=None)
def _findings() -> dict[str, str]:
    text = resources.files(__package__).joinpath("findings.json").read_text(encoding="utf-8")
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


def finding(key: str) -> str:
    """The text of finding ``key`` in ``findings.json`` (KeyError names the keys there)."""
    found = _findings()
    if key not in found:
        raise KeyError(f"no finding {key!r} in cldfast/pipeline/findings.json; it has "
                       f"{', '.join(sorted(found))}")
    return found[key]


#: Said after `cldfast run` / pipeline.run on the embedded data: what the fidelity and the
#: selection-rules studies found there.
EMBEDDED_NOTE: str = finding("embedded_note")
