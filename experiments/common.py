"""Shared pieces of the experiment scripts: configs, results files, summaries.

Every experiment config is a Python file with ``get_config()`` returning an
``ml_collections.ConfigDict``; ``--set key=value`` overrides fields on the
command line (values parsed as Python literals, e.g. ``--set seeds=10``,
``--set methods="['ei','eeipu']"``).

Settings are checked before anything is written or computed
(:class:`ConfigError` and the ``check_*`` helpers): a wrong value is named,
with what was expected, and the scripts exit with status 2.

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
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

# The checks a study makes are the library's; the experiment scripts share them.
from eeipu_jax.runtime.settings import (  # noqa: F401  (re-exported)
    INT32_MAX,
    ConfigError,
    check_writable_dir,
    coerce_bo_option,
    is_int,
    is_real,
)

__all__ = [
    "headline_se",
    "ConfigError",
    "INT32_MAX",
    "is_int",
    "is_real",
    "check_int",
    "check_positive",
    "check_names",
    "check_writable_dir",
    "coerce_bo_option",
    "method_settings",
    "load_checked_config",
    "load_config",
    "apply_overrides",
    "write_run",
    "read_runs",
    "summarize",
    "headline",
    "relative",
    "format_relative",
    "format_mean",
    "format_table",
]

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "configs")


# ------------------------------------------------------------- checking
def check_int(value: Any, name: str, lo: int, hi: int = INT32_MAX) -> int:
    """``value`` as an ``int`` in ``lo .. hi`` (raises :class:`ConfigError` naming ``name``)."""
    if not (is_int(value) and lo <= value <= hi):
        raise ConfigError(f"{name} must be an integer in {lo}..{hi}, got {value!r}")
    return int(value)


def method_settings(method: str, bo, reserved: Sequence[str] = ()) -> dict:
    """The BO settings of ``bo`` (a config's ``bo`` dict) for one ``method``, coerced.

    Flat entries are settings every method of a comparison takes (BOConfig
    fields and float params: ``n_random``, ``refine_lr``, ...). An entry named
    after a registered method holds that method's own params
    (``bo.pbgi = {"lambda0": 0.1}``; on a command line ``--set
    bo.pbgi.lambda0=0.2``) and applies to that method only (and to its
    ``_nomemo`` variant).

    Raises:
        ConfigError: an unknown setting or a value of the wrong type.
    """
    from eeipu_jax.methods import get_method, registered

    if not hasattr(bo, "items"):
        raise ConfigError(f"bo must be a dict of BO settings, got {bo!r}")
    base = get_method(method).name.removesuffix("_nomemo")
    out = {}
    for k, v in bo.items():
        if k in registered():
            if not hasattr(v, "items"):
                raise ConfigError(f"bo.{k} must be a dict of method {k!r}'s params, got {v!r}")
            if k == base:
                out.update({kk: coerce_bo_option(kk, vv, reserved, where=f"bo.{k}.", method=method)
                            for kk, vv in v.items()})
            continue
        out[k] = coerce_bo_option(k, v, reserved, method=method)
    return out


def check_positive(value: Any, name: str, *, allow_none: bool = False, none_means: str = "") -> float | None:
    """``value`` as a finite ``float > 0`` (or ``None`` when allowed)."""
    if value is None and allow_none:
        return None
    if not (is_real(value) and math.isfinite(value) and value > 0):
        alt = f", or None ({none_means})" if allow_none else ""
        raise ConfigError(f"{name} must be a finite number > 0{alt}, got {value!r}")
    return float(value)


def check_names(values: Any, name: str, check: Callable[[str], Any]) -> list[str]:
    """A non-empty list of distinct names, each accepted by ``check`` (which raises on a bad one)."""
    if isinstance(values, str) or not isinstance(values, Sequence) or not values:
        raise ConfigError(f"{name} must be a non-empty list of names, got {values!r}")
    values = list(values)
    for v in values:
        if not isinstance(v, str):
            raise ConfigError(f"{name}: {v!r} is not a name")
        try:
            check(v)
        except (ValueError, KeyError) as e:
            raise ConfigError(f"{name}: {e.args[0] if e.args else e}") from None
    if len(set(values)) != len(values):
        raise ConfigError(f"{name} lists a name twice: {values}")
    return values


def load_checked_config(name: str, overrides: Iterable[str]):
    """:func:`load_config` plus :func:`apply_overrides`, every failure as a :class:`ConfigError`."""
    try:
        cfg = load_config(name)
    except FileNotFoundError as e:
        raise ConfigError(str(e)) from None
    except Exception as e:  # the config file's own code failed
        raise ConfigError(f"config {name!r} could not be loaded: {type(e).__name__}: {e}") from None
    try:
        return apply_overrides(cfg, overrides)
    except KeyError as e:
        raise ConfigError(e.args[0] if e.args else str(e)) from None
    except (TypeError, ValueError, AttributeError) as e:
        raise ConfigError(f"--set: {e}") from None


def fail(message: str) -> int:
    """Print ``error: message`` on stderr (one line) and return the exit status 2."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    return 2


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


def total_wall(out: str, wall: float, ran_jobs: bool, *, fresh: bool = False) -> float:
    """Wall seconds of a results folder over the invocations that ran its jobs.

    A comparison is often finished in several invocations (resumed after a
    stop, methods added), and an invocation that finds every result only
    re-renders the summary: its own few seconds are not the comparison's wall
    time. The previous total is read from ``out/summary.json``.

    Args:
        out: the results folder.
        wall: this invocation's wall seconds.
        ran_jobs: whether this invocation ran any job (else ``wall`` is not
            added).
        fresh: every job was rerun (``--force``): the previous total does not
            count.

    Returns:
        The previous total (0 without a readable summary) plus ``wall`` if
        ``ran_jobs``.

    Raises:
        ValueError: ``out/summary.json`` exists but is not a JSON object with a
            numeric or null ``wall_seconds`` (a corrupt summary is not papered
            over: remove it to start the count anew).
    """
    previous = 0.0
    path = os.path.join(out, "summary.json")
    if not fresh and os.path.exists(path):
        try:
            with open(path) as f:
                data = json.load(f)
            value = data.get("wall_seconds") if isinstance(data, dict) else "missing"
            previous = 0.0 if value is None else float(value)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{path}: cannot read its wall_seconds ({e}); remove the file to start anew") from e
        if not math.isfinite(previous) or previous < 0:
            raise ValueError(f"{path}: wall_seconds {previous} is not a finite non-negative number")
    return previous + (wall if ran_jobs else 0.0)


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


def relative(me: float, base: float) -> tuple[float | None, float | None]:
    """``(me / base - 1, me - base)``; the ratio is ``None`` unless ``base > 0`` and both are finite.

    A ratio over a baseline that made no BO iteration or gained nothing is not
    a number (it would print as ``+nan%`` or ``+inf%``), so it is left out and
    the difference says what happened instead.
    """
    finite = math.isfinite(me) and math.isfinite(base)
    ratio = me / base - 1 if finite and base > 0 else None
    return ratio, (me - base if finite else None)


def _compare(me: dict, iterations: float, gain: float) -> dict:
    cand, cand_diff = relative(me["iterations"], iterations)
    g, g_diff = relative(me["gain"], gain)
    return dict(candidates=cand, candidates_difference=cand_diff, gain=g, gain_difference=g_diff)


#: The paper's baselines: the "average baseline" of the headline figures is their mean.
PAPER_BASELINES = ("ei", "eips", "carbo", "ms_carbo", "lambo", "ms_bo")


def headline(table: dict, method: str = "eeipu", baselines=PAPER_BASELINES) -> dict:
    """The paper's two ratios per pipeline and baseline, and averaged.

    The baselines are the paper's (``baselines``) found in the table; other
    methods (a new acquisition such as ``pbgi``, a ``_nomemo`` ablation) are
    compared one by one but kept out of the average baseline. A table that
    holds none of ``baselines`` compares with every other method it holds.

    * extra candidates: ``mean_iters(method) / mean_iters(baseline) - 1``;
    * larger gain: ``mean_gain(method) / mean_gain(baseline) - 1``, the gain
      being best objective at budget end minus best at the end of warm-up.

    Returned per baseline and "vs the average baseline" (the method's mean over
    the mean of the baselines' means), then averaged over pipelines. Each
    figure comes with its difference (``candidates_difference``,
    ``gain_difference``: the method's mean minus the baseline's). Where the
    baseline's figure is 0 (no BO iteration, no gain) the ratio is undefined:
    it is ``None`` (never NaN), the difference stands in for it, and the
    average over pipelines takes the pipelines where it is defined (listed in
    ``candidates_pipelines`` / ``gain_pipelines``; ``None`` if there are none).
    """
    out: dict = {"per_pipeline": {}, "mean": {}}
    acc: dict[str, dict[str, float]] = {"candidates": {}, "gain": {}}
    n_pipes = 0
    for pipe, rows in table.items():
        if method not in rows:
            continue
        me = rows[method]
        others = {m: r for m, r in rows.items() if m != method}
        if not others:
            continue
        per = {m: _compare(me, r["iterations"], r["gain"]) for m, r in others.items()}
        base = {m: r for m, r in others.items() if m in baselines} or others
        vs_avg = _compare(
            me, float(np.mean([r["iterations"] for r in base.values()])), float(np.mean([r["gain"] for r in base.values()]))
        )
        out["per_pipeline"][pipe] = dict(per_baseline=per, vs_average_baseline=vs_avg, average_of=sorted(base))
        n_pipes += 1
        for figure in acc:
            if vs_avg[figure] is not None:
                acc[figure][pipe] = vs_avg[figure]
    if n_pipes:
        out["mean"] = {}
        for figure, values in acc.items():
            out["mean"][figure] = float(np.mean(list(values.values()))) if values else None
            out["mean"][f"{figure}_pipelines"] = sorted(values)
        out["mean"]["pipelines"] = n_pipes
    return out


def headline_se(runs: list[dict], method: str = "eeipu", baselines=PAPER_BASELINES, n_boot: int = 1000,
                seed: int = 0) -> dict:
    """Standard errors of :func:`headline`'s averages over pipelines, by bootstrap over seeds.

    Each (pipeline, method)'s seeds are resampled with replacement, the table
    and its headline recomputed, ``n_boot`` times; the standard deviation of
    the averaged figures is their standard error. A figure undefined in a
    resample (a baseline figure of 0) leaves that resample out.

    Returns:
        ``{"candidates": se, "gain": se}`` (``None`` where fewer than 2 seeds
        or no defined resample).
    """
    groups: dict = {}
    for r in runs:
        groups.setdefault((r["pipeline"], r["method"]), []).append(run_stats(r))
    if not groups or min(len(v) for v in groups.values()) < 2:
        return {"candidates": None, "gain": None}
    rng = np.random.default_rng(seed)
    draws: dict = {"candidates": [], "gain": []}
    for _ in range(n_boot):
        table: dict = {}
        for (pipe, m), stats in groups.items():
            pick = rng.integers(0, len(stats), len(stats))
            table.setdefault(pipe, {})[m] = {k: float(np.mean([stats[i][k] for i in pick]))
                                             for k in ("iterations", "gain")}
        mean = headline(table, method, baselines).get("mean", {})
        for figure in draws:
            if mean.get(figure) is not None:
                draws[figure].append(mean[figure])
    return {f: (float(np.std(v, ddof=1)) if len(v) > 1 else None) for f, v in draws.items()}


def format_relative(entry: dict, figure: str) -> str:
    """``"+35% gain"``, or for an undefined ratio the difference, marked as such."""
    ratio, diff = entry.get(figure), entry.get(f"{figure}_difference")
    if ratio is not None:
        return f"{ratio:+.0%} {figure}"
    if diff is None:
        return f"{figure} undefined (no finite value)"
    base = "made no BO iteration" if figure == "candidates" else "gained 0"
    return f"{diff:+.3g} {figure} (a difference, not a ratio: the baseline {base})"


def format_mean(mean: dict, figure: str) -> str:
    """The average over pipelines of one figure (± its standard error when
    ``mean`` holds one, see :func:`headline_se`), saying which pipelines it covers."""
    value, used, total = mean.get(figure), mean.get(f"{figure}_pipelines", []), mean.get("pipelines", 0)
    if value is None:
        return f"{figure} undefined (every pipeline's baseline figure is 0)"
    over = "" if len(used) == total else f" (over {', '.join(used)} only: elsewhere the ratio is undefined)"
    se = mean.get(f"{figure}_se")
    pm = f" ± {se:.0%}" if se is not None else ""
    return f"{value:+.0%}{pm} {figure}{over}"


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
                f"{m}: {format_relative(v, 'candidates')} / {format_relative(v, 'gain')}"
                for m, v in sorted(h["per_baseline"].items())
            )
            va = h["vs_average_baseline"]
            lines.append("")
            lines.append(f"{method} vs each baseline: {parts}.")
            lines.append(
                f"{method} vs the average baseline ({', '.join(h.get('average_of', []))}): "
                f"{format_relative(va, 'candidates')}, "
                f"{format_relative(va, 'gain')}."
            )
        lines.append("")
    if head and head.get("mean"):
        lines.append(
            f"Averaged over pipelines, {method} vs the average baseline: "
            f"{format_mean(head['mean'], 'candidates')}, {format_mean(head['mean'], 'gain')} after warm-up."
        )
    return "\n".join(lines)
