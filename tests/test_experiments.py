"""Results files, summary statistics, headline ratios and the figure script."""

import json
import os

import numpy as np
import pytest

from experiments import common
from paper_figures import synthetic as figs


def _fake_run(out, method, seed, ys, spent_per_trial, n_warmup=3, memo=None):
    n = len(ys)
    memo = memo or [0] * n
    common.write_run(
        os.path.join(out, "runs", f"run_p3_{method}_{seed}.json"),
        pipeline="p3", method=method, seed=seed, budget=100.0, n_warmup=n_warmup,
        x_raw=np.zeros((n, 2)), y=np.asarray(ys, float), stage_costs=np.ones((n, 3)),
        memo_depth=np.asarray(memo), charged=np.full(n, spent_per_trial), eta=np.full(n, np.nan),
        extra=dict(optimum=5.0),
    )


@pytest.fixture()
def results(tmp_path):
    out = str(tmp_path)
    # eeipu: 3 warm-up + 5 BO trials; ei: 3 warm-up + 2 BO trials (and a failed trial)
    _fake_run(out, "eeipu", 0, [0, 1, 0, 2, 3, 1, 4, 2], 10.0, memo=[0, 0, 0, 1, 2, 0, 1, 0])
    _fake_run(out, "eeipu", 1, [1, 0, 0, 1, 2, 2, 2, 2], 10.0)
    _fake_run(out, "ei", 0, [0, 1, 0, 1.5, float("nan")], 25.0)
    _fake_run(out, "ei", 1, [1, 0, 0, 1.5, 1.0], 25.0)
    return out


def test_summary_statistics_by_hand(results):
    runs = common.read_runs(results)
    assert [(r["method"], r["seed"]) for r in runs] == [("eeipu", 0), ("eeipu", 1), ("ei", 0), ("ei", 1)]
    assert runs[2]["trials"][-1]["spent"] == pytest.approx(125.0)
    assert runs[2]["trials"][4]["y"] is None  # NaN stored as null
    table = common.summarize(runs)["p3"]
    assert table["eeipu"]["iterations"] == 5 and table["ei"]["iterations"] == 2
    # best: eeipu seeds 4 and 2 -> mean 3, se = std([4, 2], ddof=1) / sqrt(2) = 1
    assert table["eeipu"]["best"] == pytest.approx(3.0)
    assert table["eeipu"]["best_se"] == pytest.approx(1.0)
    # gain after warm-up: eeipu (4 - 1) and (2 - 1) -> 2; ei (1.5 - 1) and (1.5 - 1) -> 0.5
    assert table["eeipu"]["gain"] == pytest.approx(2.0)
    assert table["ei"]["gain"] == pytest.approx(0.5)
    assert table["eeipu"]["memoized"] == pytest.approx(1.5)  # 3 memoized BO trials in seed 0, 0 in seed 1
    head = common.headline({"p3": table})
    h = head["per_pipeline"]["p3"]["per_baseline"]["ei"]
    assert h["candidates"] == pytest.approx(5 / 2 - 1)
    assert h["gain"] == pytest.approx(2.0 / 0.5 - 1)
    assert head["mean"]["candidates"] == pytest.approx(1.5)
    md = common.format_table({"p3": table}, head)
    assert "| eeipu | 2 | 5.0 ± 0.0 |" in md and "+150% candidates" in md


def test_average_baseline_is_the_papers_baselines_only():
    """A new method in the table (pbgi) is compared one to one but kept out of the
    average baseline; without any paper baseline, every other method is averaged."""
    row = lambda it, g: dict(iterations=it, gain=g)  # noqa: E731
    table = {"p": {"eeipu": row(30.0, 6.0), "ei": row(10.0, 2.0), "eips": row(20.0, 4.0), "pbgi": row(90.0, 9.0)}}
    h = common.headline(table)["per_pipeline"]["p"]
    assert h["average_of"] == ["ei", "eips"]
    assert h["vs_average_baseline"]["candidates"] == pytest.approx(30.0 / 15.0 - 1)
    assert h["vs_average_baseline"]["gain"] == pytest.approx(6.0 / 3.0 - 1)
    assert h["per_baseline"]["pbgi"]["candidates"] == pytest.approx(30.0 / 90.0 - 1)
    ablation = {"p": {"eeipu": row(30.0, 6.0), "eeipu_nomemo": row(10.0, 3.0)}}
    h = common.headline(ablation)["per_pipeline"]["p"]
    assert h["average_of"] == ["eeipu_nomemo"] and h["vs_average_baseline"]["gain"] == pytest.approx(1.0)


def test_headline_when_a_baseline_gained_nothing(tmp_path):
    """A ratio over a zero gain is reported as a marked difference, never NaN."""
    out = str(tmp_path)
    _fake_run(out, "eeipu", 0, [0, 1, 0, 2, 3], 10.0)  # best of warm-up 1, best 3: gain 2
    _fake_run(out, "ei", 0, [0, 1, 0, 0.5, 1.0], 10.0)  # never beats its warm-up: gain 0
    table = common.summarize(common.read_runs(out))
    assert table["p3"]["ei"]["gain"] == 0.0
    head = common.headline(table)
    h = head["per_pipeline"]["p3"]["per_baseline"]["ei"]
    assert h["gain"] is None and h["gain_difference"] == pytest.approx(2.0)
    assert h["candidates"] == pytest.approx(0.0) and h["candidates_difference"] == pytest.approx(0.0)
    assert head["mean"]["gain"] is None and head["mean"]["gain_pipelines"] == []
    md = common.format_table(table, head)
    assert "nan" not in md.lower() and "inf" not in md.lower()
    assert "ei: +0% candidates / +2 gain (a difference, not a ratio: the baseline gained 0)" in md
    assert "gain undefined (every pipeline's baseline figure is 0)" in md
    json.dumps(head, allow_nan=False)  # strict JSON: no NaN in summary.json

    # Over pipelines, the mean takes the pipelines where the ratio is defined, and says so.
    rows = {"eeipu": dict(iterations=6.0, gain=3.0), "ei": dict(iterations=3.0, gain=0.0)}
    two = {"a": rows, "b": {"eeipu": dict(iterations=4.0, gain=3.0), "ei": dict(iterations=0.0, gain=2.0)}}
    head = common.headline(two)
    assert head["mean"]["gain"] == pytest.approx(3.0 / 2.0 - 1) and head["mean"]["gain_pipelines"] == ["b"]
    assert head["mean"]["candidates"] == pytest.approx(6.0 / 3.0 - 1) and head["mean"]["candidates_pipelines"] == ["a"]
    vs = head["per_pipeline"]["b"]["per_baseline"]["ei"]
    assert vs["candidates"] is None and vs["candidates_difference"] == 4.0
    line = common.format_mean(head["mean"], "gain")
    assert line == "+50% gain (over b only: elsewhere the ratio is undefined)"
    from experiments.real import _headline_md

    assert "nan" not in _headline_md(common.headline(table)).lower()


def test_best_vs_budget_step_function(results):
    run = [r for r in common.read_runs(results) if r["method"] == "eeipu" and r["seed"] == 0][0]
    grid = np.array([0.0, 25.0, 30.0, 45.0, 80.0])
    # spend after trial i is 10 (i + 1); warm-up ends at 30 (3 trials)
    got = figs.best_vs_budget(run, grid)
    assert np.isnan(got[0]) and np.isnan(got[1])
    np.testing.assert_allclose(got[2:], [1.0, 2.0, 4.0])


def test_figure_script_writes_png_pdf_and_table(results, tmp_path):
    paths = figs.draw(results, str(tmp_path / "figs"))
    names = sorted(os.path.basename(p) for p in paths)
    assert names == ["p3.pdf", "p3.png", "summary.md"]
    for p in paths:
        assert os.path.getsize(p) > 500
    with open(paths[0], "rb") as f:
        assert f.read(8) in (b"\x89PNG\r\n\x1a\n", b"%PDF-1.4")


def test_config_loading_and_overrides():
    cfg = common.load_config("synthetic_smoke")
    assert cfg.name == "synthetic_smoke" and "eeipu" in cfg.methods
    common.apply_overrides(cfg, ["seeds=7", "methods=['ei']", "bo.n_warmup=6"])
    assert cfg.seeds == 7 and list(cfg.methods) == ["ei"] and cfg.bo.n_warmup == 6
    with pytest.raises(KeyError, match="unknown config key"):
        common.apply_overrides(cfg, ["nope=1"])
    with pytest.raises(FileNotFoundError, match="known configs"):
        common.load_config("does_not_exist")


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--set", "budget=-5"], "budget must be a finite number > 0"),  # ran 10 warm-up trials and 0 BO steps
        (["--set", "budget=0"], "budget must be a finite number > 0"),  # silently used the pipeline's budget
        (["--set", "budget=1e999"], "budget"),
        (["--set", "seeds=0"], "seeds"),
        (["--set", "seeds=2.5"], "seeds"),
        (["--set", "seed_offset=-1"], "seed_offset"),
        (["--set", "seed_offset=4294967295", "--set", "seeds=2"], "largest seed"),
        (["--set", "bo.n_warmup=1"], "n_warmup"),
        (["--set", "max_trials=5"], "max_trials"),
        (["--set", "capacity=0"], "capacity"),
        (["--set", "epsilon=0"], "epsilon"),
        (["--set", "warmup='sobol'"], "warmup"),
        (["--set", "methods=['nope']"], "unknown method"),
        (["--set", "methods=[]"], "methods"),
        (["--set", "pipelines=['nope']"], "unknown synthetic pipeline"),
        (["--set", "bo={'refine_lr': 1e999}"], "bo.refine_lr"),
        (["--set", "bo={'n_random': 2.5}"], "bo.n_random"),
        (["--set", "nope=1"], "unknown config key"),
        (["--config", "does_not_exist"], "known configs"),
        (["--workers", "0"], "--workers"),
        (["--out", "{blocker}/res"], "--out"),
    ],
)
def test_synthetic_bad_settings_exit_2_before_anything(tmp_path, capsys, extra, message):
    from experiments import synthetic

    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = tmp_path / "res"
    argv = ["--config", "synthetic_smoke", "--out", str(out), "--workers", "1",
            "--set", "methods=['ei']", "--set", "seeds=1"]
    code = synthetic.main(argv + [a.replace("{blocker}", str(blocker)) for a in extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert not out.exists()


def test_synthetic_main_job_end_to_end(tmp_path, capsys):
    """The README's main job at a tiny size: results files, summary, the figure command and its figures."""
    from experiments import synthetic

    out = str(tmp_path / "res")
    assert synthetic.main(["--config", "synthetic_smoke", "--out", out, "--workers", "1",
                           "--set", "pipelines=['synthetic3']", "--set", "methods=['ei']", "--set", "seeds=2",
                           "--set", "budget=110.0"]) == 0
    with open(os.path.join(out, "summary.json")) as f:
        first = json.load(f)
    rows = first["table"]["synthetic3"]["ei"]
    assert rows["seeds"] == 2 and rows["iterations"] >= 1 and first["wall_seconds"] > 0
    runs = common.read_runs(out)
    assert {r["seed"] for r in runs} == {0, 1}
    for r in runs:
        spent = [t["spent"] for t in r["trials"]]
        assert spent[-1] >= 110.0 > spent[-2]  # stopped by the budget, one trial of overshoot at most
        assert all(t["memo_depth"] == 0 for t in r["trials"])  # EI never memoizes
    assert f"figures: python -m paper_figures.synthetic {out}" in capsys.readouterr().out
    figs.main([out])  # the command the job printed (the README chains it)
    assert os.path.exists(os.path.join(out, "figures", "synthetic3.png"))
    with open(os.path.join(out, "summary.json")) as f:
        assert json.load(f)["table"]["synthetic3"]["ei"]["iterations"] == rows["iterations"]
    # A second invocation finds every results file and reruns nothing (resume / add methods).
    mtimes = {r: os.path.getmtime(os.path.join(out, "runs", r)) for r in os.listdir(os.path.join(out, "runs"))}
    assert synthetic.main(["--config", "synthetic_smoke", "--out", out, "--workers", "1",
                           "--set", "pipelines=['synthetic3']", "--set", "methods=['ei']", "--set", "seeds=2",
                           "--set", "budget=110.0"]) == 0
    with open(os.path.join(out, "summary.json")) as f:
        second = json.load(f)
    assert second["table"]["synthetic3"]["ei"] == rows
    assert second["wall_seconds"] == first["wall_seconds"]  # re-rendering is not the comparison's wall time
    with open(os.path.join(out, "summary.md")) as f:
        assert f"wall {first['wall_seconds']:.0f} s" in f.readline()
    assert {r: os.path.getmtime(os.path.join(out, "runs", r)) for r in mtimes} == mtimes


def test_total_wall_adds_the_invocations_that_ran_jobs(tmp_path):
    out = str(tmp_path)
    assert common.total_wall(out, 12.5, True) == 12.5  # no summary yet
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump({"wall_seconds": 100.0}, f)
    assert common.total_wall(out, 3.0, False) == 100.0  # re-rendered only
    assert common.total_wall(out, 40.0, True) == 140.0  # resumed: both invocations ran jobs
    assert common.total_wall(out, 40.0, True, fresh=True) == 40.0  # --force: every job rerun
    with open(os.path.join(out, "summary.json"), "w") as f:
        f.write("{not json")
    with pytest.raises(ValueError, match="wall_seconds"):
        common.total_wall(out, 1.0, True)
