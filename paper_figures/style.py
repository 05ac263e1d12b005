"""One colour per method, shared by every figure of this repository.

A method keeps its colour in every figure (synthetic curves, real-pipeline
curves, bars, ablations); a ``_nomemo`` variant takes its method's colour. A
method not listed gets a fixed colour of its own from its name (the same in
every figure), never a colour of a listed one.
"""

from __future__ import annotations

import zlib

__all__ = ["COLORS", "color"]

COLORS = {
    "eeipu": "#d62728",  # red
    "ms_carbo": "#ff7f0e",  # orange
    "carbo": "#2ca02c",  # green
    "eips": "#1f77b4",  # blue
    "ei": "#7f7f7f",  # grey
    "lambo": "#9467bd",  # purple
    "ms_bo": "#8c564b",  # brown
    "pbgi": "#17becf",  # cyan
}
_SPARE = ["#bcbd22", "#e377c2", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd"]


def color(method: str) -> str:
    """The colour of ``method`` (``<name>_nomemo`` takes ``<name>``'s)."""
    base = method.lower().removesuffix("_nomemo")
    if base in COLORS:
        return COLORS[base]
    return _SPARE[zlib.crc32(base.encode()) % len(_SPARE)]
