"""Benchmarks (``e2x bench NAME``) and the selection baselines they compare E2X against.

This package sits above the library and the flows: it may import both, and nothing in them
imports it. ``BENCHES`` is its one registry; each entry is imported only when it runs, so
``e2x --help`` stays fast.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

# name -> "module:function"; each function is (cfg, out_dir, progress=..., **options) -> dict
BENCHES: dict[str, str] = {
    "train": "e2x_bench.train:bench_train",
    "mine": "e2x_bench.mine:bench_mine",
    "explain": "e2x_bench.explain:bench_explain",
    "repair": "e2x_bench.repair:bench_repair",
    "scale": "e2x_bench.scale:bench_scale",
    "realsize": "e2x_bench.realsize:bench_realsize",
    "similarity": "e2x_bench.similarity:bench_similarity",
    "reference": "e2x_bench.reference:bench_reference",
    "targets": "e2x_bench.targets:bench_targets",
}


def get_bench(name: str) -> Callable[..., dict[str, Any]]:
    """The benchmark function registered as ``name`` (a KeyError lists the registered ones)."""
    if name not in BENCHES:
        raise KeyError(f"unknown benchmark {name!r}; registered: {', '.join(BENCHES)}")
    module, func = BENCHES[name].split(":")
    return getattr(importlib.import_module(module), func)
