"""Shared pieces of the experiment scripts: configs, results files, summaries.

Every experiment config is a Python file with ``get_config()`` returning an
``ml_collections.ConfigDict``; ``--set key=value`` overrides fields on the
command line (values parsed as Python literals, e.g. ``--set seeds=10``,
``--set methods="['ei','eeipu']"``).

Results: one JSON file per run (pipeline, method, seed) with per-trial rows
(x, y, stage costs, memo depth, charged cost, spent budget, eta), and a
summary table computed from those files only, so tables and figures can be
rebuilt from results alone.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import math
import os
from collections.abc import Iterable, Sequence

import numpy as np

__all__ = [
    "load_config",
    "apply_overrides",
    "write_run",
    "read_runs",
    "summarize",
    "headline",
    "format_table",
]

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "configs")


def load_config(path_or_name: str):
    """Load ``get_config()`` from a file path or a name in ``experiments/configs``."""
    path = path_or_name
    if not os.path.exists(path):
        path = os.path.join(CONFIG_DIR, path_or_name if path_or_name.endswith(".py") else path_or_name + ".py")
    if not os.path.exists(path):
        names = sorted(f[:-3] for f in os.listdir(CONFIG_DIR) if f.endswith(".py") and not f.startswith("_"))
        raise FileNotFoundError(f"no config {path_or_name!r}; known configs: {names}")
    spec = importlib.util.spec_from_file_location(f"_config_{os.path.basename(path)[:-3]}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if not hasattr(mod, "get_config"):
        raise AttributeError(f"config file {path} has no get_config()")
    cfg = mod.get_config()
    cfg.name = getattr(cfg, "name", None) or os.path.basename(path)[:-3]
    return cfg


def apply_overrides(cfg, overrides: Iterable[str]):
    """Apply ``key=value`` overrides (dotted keys allowed); unknown keys are errors."""
    for item in overrides or ():
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value")
        key, raw = item.split("=", 1)
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        node = cfg
        parts = key.split(".")
        for p in parts[:-1]:
            if p not in node:
                raise KeyError(f"unknown config key {key!r}")
            node = node[p]
        if parts[-1] not in node:
            raise KeyError(f"unknown config key {key!r}; known: {sorted(node.keys())}")
        node[parts[-1]] = value
    return cfg


def _jsonable(a):
    a = np.asarray(a)
    if a.dtype.kind == "f":
        return [None if not math.isfinite(v) else float(v) for v in a.ravel().tolist()] if a.ndim <= 1 else [
            _jsonable(r) for r in a
        ]
    return a.tolist()


def write_run(path: str, *, pipeline: str, method: str, seed: int, budget: float, n_warmup: int,
              x_raw, y, stage_costs, memo_depth, charged, eta, extra: dict | None = None) -> None:
    """Write one run's results file (atomic: temp file + rename)."""
    charged = np.asarray(charged, np.float64)
    rec = dict(
        pipeline=pipeline,
        method=method,
        seed=int(seed),
        budget=float(budget),
        n_warmup=int(n_warmup),
        trials=[
            dict(
                index=i,
                warmup=i < n_warmup,
                x=_jsonable(x_raw[i]),
                y=_jsonable([y[i]])[0],
                stage_costs=_jsonable(stage_costs[i]),
                memo_depth=int(memo_depth[i]),
                charged=float(charged[i]),
                spent=float(np.sum(charged[: i + 1])),
                eta=_jsonable([eta[i]])[0],
            )
            for i in range(len(y))
        ],
        **(extra or {}),
    )
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(rec, f)
    os.replace(tmp, path)


def read_runs(results_dir: str) -> list[dict]:
    """All run records under ``results_dir`` (recursively), sorted."""
    runs = []
    for root, _, files in os.walk(results_dir):
        for fn in files:
            if fn.endswith(".json") and fn.startswith("run_"):
                with open(os.path.join(root, fn)) as f:
                    runs.append(json.load(f))
    if not runs:
        raise FileNotFoundError(f"no run_*.json results under {results_dir}")
    return sorted(runs, key=lambda r: (r["pipeline"], r["method"], r["seed"]))


def run_stats(run: dict) -> dict:
    """Per-run figures: BO iterations, best objective, gain since warm-up, spend."""
    trials = run["trials"]
    y = np.array([t["y"] if t["y"] is not None else -np.inf for t in trials])
    warm = np.array([t["warmup"] for t in trials])
    best_warm = np.max(y[warm]) if warm.any() else -np.inf
    return dict(
        iterations=int((~warm).sum()),
        best=float(np.max(y)),
        gain=float(np.max(y) - best_warm),
        spent=float(trials[-1]["spent"]) if trials else 0.0,
        memoized=int(sum(t["memo_depth"] > 0 for t in trials if not t["warmup"])),
    )


def _mean_se(v: Sequence[float]):
    v = np.asarray(v, np.float64)
    se = v.std(ddof=1) / math.sqrt(len(v)) if len(v) > 1 else float("nan")
    return float(v.mean()), float(se)


def summarize(runs: list[dict]) -> dict:
    """``{pipeline: {method: stats}}`` with mean and standard error over seeds."""
    out: dict = {}
    for r in runs:
        out.setdefault(r["pipeline"], {}).setdefault(r["method"], []).append(run_stats(r))
    table = {}
    for pipe, methods in out.items():
        table[pipe] = {}
        for m, stats in methods.items():
            row = {"seeds": len(stats)}
            for k in ("iterations", "best", "gain", "spent", "memoized"):
                row[k], row[k + "_se"] = _mean_se([s[k] for s in stats])
            table[pipe][m] = row
    return table


def headline(table: dict, method: str = "eeipu") -> dict:
    """The paper's two ratios per pipeline and baseline, and averaged.

    * extra candidates: ``mean_iters(method) / mean_iters(baseline) - 1``;
    * larger gain: ``mean_gain(method) / mean_gain(baseline) - 1``, the gain
      being best objective at budget end minus best at the end of warm-up.

    Returned per baseline and "vs the average baseline" (the method's mean over
    the mean of the baselines' means), then averaged over pipelines.
    """
    out: dict = {"per_pipeline": {}, "mean": {}}
    acc_c, acc_g = [], []
    for pipe, rows in table.items():
        if method not in rows:
            continue
        me = rows[method]
        base = {m: r for m, r in rows.items() if m != method}
        if not base:
            continue
        per = {
            m: dict(
                candidates=me["iterations"] / r["iterations"] - 1 if r["iterations"] > 0 else float("nan"),
                gain=me["gain"] / r["gain"] - 1 if r["gain"] > 0 else float("nan"),
            )
            for m, r in base.items()
        }
        avg_iters = np.mean([r["iterations"] for r in base.values()])
        avg_gain = np.mean([r["gain"] for r in base.values()])
        vs_avg = dict(
            candidates=me["iterations"] / avg_iters - 1 if avg_iters > 0 else float("nan"),
            gain=me["gain"] / avg_gain - 1 if avg_gain > 0 else float("nan"),
        )
        out["per_pipeline"][pipe] = dict(per_baseline=per, vs_average_baseline=vs_avg)
        acc_c.append(vs_avg["candidates"])
        acc_g.append(vs_avg["gain"])
    if acc_c:
        out["mean"] = dict(candidates=float(np.mean(acc_c)), gain=float(np.mean(acc_g)))
    return out


def _pm(m, se, fmt):
    return f"{m:{fmt}} ± {se:{fmt}}" if math.isfinite(se) else f"{m:{fmt}}"


def format_table(table: dict, head: dict | None = None, method: str = "eeipu") -> str:
    """Markdown summary: one block per pipeline, one row per method."""
    lines = []
    for pipe, rows in table.items():
        lines.append(f"**{pipe}**\n")
        lines.append("| method | seeds | BO iterations | best objective | gain after warm-up | memoized trials | final spend |")
        lines.append("|---|---|---|---|---|---|---|")
        for m, r in sorted(rows.items(), key=lambda kv: (kv[0] != method, kv[0])):
            lines.append(
                f"| {m} | {r['seeds']} | {_pm(r['iterations'], r['iterations_se'], '.1f')} | "
                f"{_pm(r['best'], r['best_se'], '.3f')} | {_pm(r['gain'], r['gain_se'], '.3f')} | "
                f"{r['memoized']:.1f} | {r['spent']:.1f} |"
            )
        if head and pipe in head.get("per_pipeline", {}):
            h = head["per_pipeline"][pipe]
            parts = ", ".join(
                f"{m}: {v['candidates']:+.0%} candidates / {v['gain']:+.0%} gain"
                for m, v in sorted(h["per_baseline"].items())
            )
            va = h["vs_average_baseline"]
            lines.append("")
            lines.append(f"{method} vs each baseline: {parts}.")
            lines.append(
                f"{method} vs the average baseline: {va['candidates']:+.0%} candidates, {va['gain']:+.0%} gain."
            )
        lines.append("")
    if head and head.get("mean"):
        lines.append(
            f"Averaged over pipelines, {method} vs the average baseline: "
            f"{head['mean']['candidates']:+.0%} candidates, {head['mean']['gain']:+.0%} gain after warm-up."
        )
    return "\n".join(lines)
