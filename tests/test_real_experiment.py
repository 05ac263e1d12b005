"""The real-pipeline comparison script on stacking-tiny: runs, conversion to the
results format, summary, figures, resume."""

import json
import os

import numpy as np
import pytest

from experiments import common
from experiments import real

ARGS = [
    "--config", "real_smoke", "--workers", "1",
    "--set", "pipelines=['stacking-tiny', 'not-registered']",
    "--set", "methods=['ei', 'eeipu']",
    "--set", "seeds=1", "--set", "budget=1e6", "--set", "n_warmup=3", "--set", "max_trials=6",
    "--set", "bo={'n_random': 64, 'mc_samples': 64, 'n_refine': 0, 'n_per_prefix': 8}",
]


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("EEIPU_JAX_DATA_DIR", str(tmp_path / "tfds"))


def test_real_comparison_end_to_end_and_resume(tmp_path, capsys):
    out = str(tmp_path / "res")
    assert real.main(ARGS + ["--out", out]) == 0
    printed = capsys.readouterr()
    assert "not registered" in printed.err
    jobs = json.load(open(os.path.join(out, "summary.json")))["jobs"]
    assert [j["pipeline"] for j in jobs if "prepare_seconds" in j] == ["stacking-tiny"]  # prepared once, first
    runs = common.read_runs(os.path.join(out, "runs"))
    assert sorted((r["pipeline"], r["method"], r["seed"]) for r in runs) == [
        ("stacking-tiny", "eeipu", 0), ("stacking-tiny", "ei", 0)]
    for r in runs:
        lines = [json.loads(s) for s in open(os.path.join(out, "tuning", "stacking-tiny", r["method"], "seed0",
                                                          "trials.jsonl"))]
        assert len(r["trials"]) == len(lines) >= 3
        np.testing.assert_allclose([t["spent"] for t in r["trials"]], np.cumsum([ln["charged"] for ln in lines]))
        assert [t["y"] for t in r["trials"]] == [ln["y"] for ln in lines]
        # raw values in the search space's column order: level0 (6 columns) then meta (3)
        first = lines[0]["params"]
        assert r["trials"][0]["x"][0] == first["level0"]["n_estimators0"]
        assert r["trials"][0]["x"][-1] == first["meta"]["max_iter"]
        assert r["n_warmup"] == 3 and r["budget"] == 1e6
    # Same seed, same warm-up configurations for both methods.
    assert runs[0]["trials"][0]["x"] == runs[1]["trials"][0]["x"]
    # The optimizer's share, recomputed here from each run's records.
    share = json.load(open(os.path.join(out, "summary.json")))["optimizer_share"]["stacking-tiny"]
    for m in ("ei", "eeipu"):
        lines = [json.loads(s) for s in open(os.path.join(out, "tuning", "stacking-tiny", m, "seed0", "trials.jsonl"))]
        opt = sum(ln["ask_seconds"] for ln in lines)
        assert opt > 0 and share[m]["runs"] == 1
        assert share[m]["fraction"] == pytest.approx(opt / (opt + sum(ln["trial_seconds"] for ln in lines)))
    md = open(os.path.join(out, "summary.md")).read()
    assert "optimizer's share of wall time" in md
    assert "**stacking-tiny**" in md and "+103%" in md and "+108%" in md
    assert f"figures: python -m paper_figures.real {out}" in printed.out
    from paper_figures import real as real_figures

    real_figures.main([out])  # the command the comparison printed
    assert os.path.exists(os.path.join(out, "figures", "stacking-tiny.png"))
    assert os.path.exists(os.path.join(out, "figures", "stacking-tiny_iterations.png"))
    # Resume: finished runs are skipped, results untouched.
    mtimes = {r: os.stat(os.path.join(out, "runs", r)).st_mtime_ns for r in os.listdir(os.path.join(out, "runs"))}
    assert real.main(ARGS + ["--out", out]) == 0
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["jobs"] and all(j["skipped"] for j in summary["jobs"])  # nothing left: nothing prepared
    assert {r: os.stat(os.path.join(out, "runs", r)).st_mtime_ns for r in mtimes} == mtimes


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--set", "methods=['nope']"], "unknown method"),
        (["--set", "pipelines=['nope']"], "none of the pipelines"),
        (["--set", "budget=-5"], "budget must be a finite number > 0"),
        (["--set", "budget=0"], "budget must be a finite number > 0"),
        (["--set", "budgets={'stacking-tiny': 0.0}"], "budgets['stacking-tiny']"),
        (["--set", "seeds=0"], "seeds"),
        (["--set", "seed_offset=4294967296"], "seed_offset"),
        (["--set", "n_warmup=0"], "n_warmup"),
        (["--set", "n_warmup=1"], "n_warmup"),
        (["--set", "max_trials=0"], "max_trials"),
        (["--set", "stage_timeout=0"], "stage_timeout"),
        (["--set", "epsilon=1e999"], "epsilon"),
        (["--set", "cache_q=5"], "unknown config key 'cache_q'"),  # removed: bo.top_q is the one top_q
        (["--set", "cache_policy='lru'"], "cache_policy"),
        (["--set", "cache_max_bytes='9 parsecs'"], "cache_max_bytes"),
        (["--set", "bo={'refine_lr': 1e999}"], "bo.refine_lr"),
        (["--set", "pipelines=['tests.pipelines_for_tests:raising_factory']"], "fails on purpose"),
        (["--workers", "0"], "--workers"),
    ],
)
def test_bad_config_exits_2_before_anything(tmp_path, capsys, extra, message):
    out = tmp_path / "res"
    argv = ARGS[:-2] + ["--set", "pipelines=['stacking-tiny']", "--out", str(out)] + ARGS[-2:]
    code = real.main(argv + extra)
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert not out.exists()
