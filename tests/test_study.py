"""The Study API: the README example as written, reopening, typed records, tables and plots,
a kill -9 mid-run, and memoization turned off by name."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import eeipu_jax
from eeipu_jax import Study, Trial
from eeipu_jax import loop as bo
from eeipu_jax.checkpoint import restore_state
from eeipu_jax.runtime import PrepareError, rundir
from eeipu_jax.runtime.records import read_trials
from eeipu_jax.runtime.settings import ConfigError
from tests import pipelines_for_tests as tp
from tests.processes import wait_for_records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL_BO = {"n_random": 64, "mc_samples": 64, "n_refine": 0, "n_per_prefix": 8}
N_WARMUP = 6
COUNTING = "tests.pipelines_for_tests:counting_toy"


def _readme_block(heading: str) -> str:
    """The first ```python block after ``heading`` in the README."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    section = text[text.index(heading):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


# ------------------------------------------------------------ the README
def test_readme_study_example_runs_as_written(tmp_path, monkeypatch, capsys):
    """The README's Study example, executed verbatim (in tmp_path), so README and code cannot drift."""
    code = _readme_block("## Using the optimizer")
    assert "Study.create" in code and "Study.load" in code and "trials_dataframe" in code
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    printed = capsys.readouterr().out
    study = scope["study"]
    records = read_trials(str(tmp_path / "runs" / "rff" / "trials.jsonl"))
    # 20 trials, then 5 more after reopening (60 s of ~millisecond trials is not spent first).
    assert [r["index"] for r in records] == list(range(25))
    assert len(study.trials) == 25 and all(isinstance(t, Trial) for t in study.trials)
    ok = [r for r in records if r["status"] == "ok"]
    best = max(ok, key=lambda r: r["y"])
    assert scope["best"].index == best["index"] and scope["best"].y == best["y"]
    assert scope["best"].params == best["params"]
    assert f"{best['index']} {best['y']}" in printed
    # The objective is -MSE of the fitted model: recompute the best trial's from its parameters.
    assert -best["metrics"]["mse"] == pytest.approx(best["y"], rel=1e-6)


# ------------------------------------------------------- create and load
def _create(tmp_path, name="run", pipeline=COUNTING, method="eeipu", **kw):
    options = dict(n_warmup=N_WARMUP, bo=SMALL_BO, cache_policy="all")
    options.update(kw)
    return Study.create(str(tmp_path / name), pipeline, method, 1e6, 0, **options)


def test_trials_summary_dataframe_and_plot_agree_with_the_records(tmp_path):
    study = _create(tmp_path)
    summary = study.optimize(9)
    records = read_trials(os.path.join(study.out_dir, "trials.jsonl"))
    trials = study.trials
    assert [t.index for t in trials] == list(range(9))
    for t, r in zip(trials, records):
        assert (t.status, t.y, t.params, t.memo_depth, t.charged, t.spent, t.warmup) == (
            r["status"], r["y"], r["params"], r["memo_depth"], r["charged"], r["spent"], r["warmup"])
    with pytest.raises(Exception):  # frozen
        trials[0].y = 0.0
    ys = [r["y"] for r in records]
    assert study.best_trial.y == max(ys) and study.best_trial.index == int(np.argmax(ys))
    assert summary["n_trials"] == 9 and summary["spent"] == pytest.approx(sum(r["charged"] for r in records))
    assert study.summary()["best"] == summary["best"]
    # every record says whether ask fell back (all scores non-finite); none did on this well-posed run
    assert [r["fallback"] for r in records] == [False] * 9 and summary["n_fallback"] == 0
    assert json.load(open(os.path.join(study.out_dir, "summary.json")))["n_trials"] == 9

    df = study.trials_dataframe()
    assert list(df.index) == list(range(9))
    assert list(df["y"]) == ys
    assert list(df["params.evaluate.scale"]) == [r["params"]["evaluate"]["scale"] for r in records]

    import matplotlib

    matplotlib.use("Agg")
    ax = study.plot()
    x, y = ax.get_lines()[0].get_data()
    np.testing.assert_allclose(x, [r["spent"] for r in records])
    np.testing.assert_allclose(y, np.maximum.accumulate(ys))  # best so far, computed here independently
    assert ax.get_xlabel() == "budget spent (s)"


def test_dataframe_without_pandas_says_what_to_install(tmp_path, monkeypatch):
    study = _create(tmp_path)
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas -> ImportError
    with pytest.raises(ImportError, match="pip install pandas"):
        study.trials_dataframe()


def test_load_resolves_the_recorded_pipeline_or_checks_the_one_given(tmp_path):
    _create(tmp_path, "by_path").optimize(N_WARMUP + 1)
    again = Study.load(str(tmp_path / "by_path"))  # "module:attribute" recorded: no pipeline needed
    assert again.pipeline.name == "counting_toy" and again.method == "eeipu" and again.budget == 1e6
    assert again.config.n_warmup == N_WARMUP and again.config.n_random == SMALL_BO["n_random"]

    pipe = tp.counting_toy()
    Study.create(str(tmp_path / "by_object"), pipe, "ei", 1e6, 0, n_warmup=N_WARMUP, bo=SMALL_BO)
    with pytest.raises(ConfigError, match="created with a Pipeline object"):
        Study.load(str(tmp_path / "by_object"))
    assert Study.load(str(tmp_path / "by_object"), pipe).method == "ei"
    import dataclasses

    with pytest.raises(ConfigError, match="version"):
        Study.load(str(tmp_path / "by_object"), dataclasses.replace(pipe, version="other"))
    with pytest.raises(ConfigError, match="no study"):
        Study.load(str(tmp_path / "nothing"))


def test_registered_name_is_reresolved_through_its_recorded_path(tmp_path):
    from eeipu_jax.runtime import registry

    registry.register_pipeline("counting-for-study-test", COUNTING, overwrite=True)
    try:
        _create(tmp_path, pipeline="counting-for-study-test")
    finally:
        del registry.PIPELINES["counting-for-study-test"]
    # In a process that never registered the name, the recorded import path is used.
    assert Study.load(str(tmp_path / "run")).pipeline.name == "counting_toy"


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(budget=None), "budget: required"),
        (dict(budget=-1.0), "budget"),
        (dict(seed=2**32), "seed"),
        (dict(method="nope"), "unknown method"),
        (dict(pipeline="no.such.module:thing"), "pipeline"),
        (dict(bo={"top_q": 0}), "_nomemo"),
        (dict(bo={"bogus": 1}), "bo.bogus"),
        (dict(cache_max_bytes="9 parsecs"), "cache_max_bytes"),
        (dict(nonsense=1), "unknown option"),
        (dict(cache_q=5), "unknown option"),  # gone: a study's top_q cache keeps the optimizer's pool
    ],
)
def test_bad_settings_are_refused_before_anything_is_written(tmp_path, kw, message):
    args = dict(pipeline=COUNTING, method="eeipu", budget=1e6, seed=0)
    args.update({k: kw.pop(k) for k in list(kw) if k in args})
    with pytest.raises(ConfigError, match=message):
        Study.create(str(tmp_path / "run"), args["pipeline"], args["method"], args["budget"], args["seed"], **kw)
    with pytest.raises(ConfigError, match=message):
        Study.check(args["pipeline"], args["method"], args["budget"], args["seed"], **kw)
    assert not (tmp_path / "run").exists()


def test_a_run_recorded_with_cache_q_still_loads_and_resumes(tmp_path):
    """Runs of earlier versions have cache_q in config.json (a setting that changed nothing in a
    study); it is ignored: the run loads, resumes and reopens with the same settings."""
    study = _create(tmp_path)
    study.optimize(2)
    path = os.path.join(study.out_dir, "config.json")
    doc = json.load(open(path))
    assert "cache_q" not in doc
    doc["cache_q"] = 5
    with open(path, "w") as f:
        json.dump(doc, f)
    Study.load(study.out_dir).optimize(1)
    _create(tmp_path, load_if_exists=True).optimize(1)  # the same settings: reopened, not refused
    assert [t.index for t in Study.load(study.out_dir).trials] == [0, 1, 2, 3]
    assert Study.load(study.out_dir).summary()["n_trials"] == 4


def test_a_checkpoint_of_another_state_layout_is_rebuilt_from_the_records(tmp_path, caplog):
    """A checkpoint written by another version of the optimizer's state (here: a
    state of another method, another layout) is refused with a warning, and the
    study rebuilds its state from trials.jsonl, replaying the asks: the same
    proposals as the uninterrupted run, nothing lost or rerun."""
    study = _create(tmp_path)
    study.optimize(N_WARMUP + 2)
    records = read_trials(os.path.join(study.out_dir, "trials.jsonl"))
    other, _ = bo.configure(study.pipeline.space, "pbgi", n_warmup=N_WARMUP)
    for _, path in rundir.checkpoint_dirs(study.out_dir):
        shutil.rmtree(path)
    rundir.save_checkpoint(study.out_dir, bo.init(other, 1.0), jax.random.key(0))
    caplog.set_level("WARNING")
    Study.load(study.out_dir).optimize(1)
    assert any("unreadable" in r.getMessage() for r in caplog.records)
    assert not any("differs from the recorded one" in r.getMessage() for r in caplog.records)
    again = read_trials(os.path.join(study.out_dir, "trials.jsonl"))
    assert [r["index"] for r in again] == list(range(N_WARMUP + 3))
    assert [r["x"] for r in again[: len(records)]] == [r["x"] for r in records]


@pytest.mark.parametrize("lost", [1, 2])
def test_records_cut_short_of_the_checkpoint_continue_and_rerun_the_lost_trials(tmp_path, caplog, lost):
    """A truncated last line that a checkpoint already covered is dropped; the study used to refuse
    to load ("3 trials but the checkpoint has 4"). It continues from the newest checkpoint the
    records cover (lost=1), or rebuilds its state from the records (lost=2: no such checkpoint),
    removes the checkpoints that count the lost trials, and runs those again: the same
    proposals, their stages restored from the cache, nothing recorded twice."""
    study = _create(tmp_path)
    study.optimize(4)
    path = os.path.join(study.out_dir, "trials.jsonl")
    records = read_trials(path)
    lines = open(path, "rb").read().split(b"\n")[:-1]
    kept = b"".join(line + b"\n" for line in lines[: 4 - lost])
    open(path, "wb").write(kept + lines[4 - lost][: len(lines[4 - lost]) // 2])  # the last line cut mid-record
    assert [n for n, _ in rundir.checkpoint_dirs(study.out_dir)] == [3, 4]
    caplog.set_level("WARNING")
    calls = dict(tp.CALLS)
    Study.load(study.out_dir).optimize(lost)
    assert any("more than the" in r.getMessage() for r in caplog.records)
    again = read_trials(path)
    assert [r["index"] for r in again] == [0, 1, 2, 3]
    assert [r["x"] for r in again] == [r["x"] for r in records]  # the lost trials proposed again
    assert all(r["memo_depth"] == 2 for r in again[4 - lost:])  # restored from the cache, not recomputed
    assert tp.CALLS[("counting_toy", "features")] == calls.get(("counting_toy", "features"), 0)
    n, path_n = rundir.checkpoint_dirs(study.out_dir)[-1]
    state, _ = restore_state(path_n, bo.init(study.config, study.budget), with_key=True)
    assert n == int(state.n) == 4
    assert float(state.spent) == pytest.approx(sum(r["charged"] for r in again), rel=1e-5)


def test_paths_may_be_pathlib_paths(tmp_path):
    """``out_dir``, ``cache_dir`` and ``jax_cache_dir`` may be ``os.PathLike`` (they were refused
    as "expected a directory path"); config.json records them as text."""
    xla = pathlib.Path(os.environ["EEIPU_JAX_XLA_CACHE"])
    study = Study.create(tmp_path / "run", COUNTING, "eeipu", 1e6, 0, n_warmup=N_WARMUP, bo=SMALL_BO,
                         cache_dir=tmp_path / "cache", jax_cache_dir=xla)
    study.optimize(1)
    assert study.cache_dir == str(tmp_path / "cache") and os.listdir(tmp_path / "cache" / "entries")
    assert json.load(open(tmp_path / "run" / "config.json"))["runtime"]["cache_dir"] == str(tmp_path / "cache")
    again = Study.load(tmp_path / "run", cache_dir=tmp_path / "cache", jax_cache_dir=xla)
    again.optimize(1)
    assert [t.index for t in again.trials] == [0, 1]


def test_non_numeric_extra_metrics_keep_the_trial_ok(tmp_path, caplog):
    """A valid objective next to a metric that is not a number no longer fails the trial with
    "no scalar objective": numbers are recorded as floats, bools, strings and JSON values as they
    are, and what trials.jsonl cannot hold (a non-scalar array, an object) is dropped with a
    warning naming it."""
    caplog.set_level("WARNING")
    study = _create(tmp_path, pipeline="tests.pipelines_for_tests:extra_metrics")
    study.optimize(2)
    trials = study.trials
    assert [t.status for t in trials] == ["ok", "ok"] and all(t.error is None for t in trials)
    metrics = trials[0].metrics
    assert {k: metrics[k] for k in ("note", "flag", "count", "half", "jax0d", "pair")} == {
        "note": "ok", "flag": True, "count": 3.0, "half": 0.5, "jax0d": 2.0, "pair": [1, "a"]}
    assert "curve" not in metrics and "model" not in metrics and "mse" in metrics
    dropped = {r.getMessage().split("'")[1] for r in caplog.records if "is not recorded" in r.getMessage()}
    assert dropped == {"curve", "model"}
    assert study.summary()["best"]["metrics"]["note"] == "ok"


def test_a_failing_prepare_raises_prepare_error_and_records_nothing(tmp_path):
    """``prepare()`` raising: a :class:`PrepareError` (a ConfigError) naming the pipeline and the
    cause, nothing recorded; once it works, the study runs."""
    study = _create(tmp_path, pipeline=tp.bad_prepare())
    with pytest.raises(PrepareError, match=r"^pipeline bad_prepare's prepare\(\) failed: FileNotFoundError: "
                                           r"no such file: data/missing.npz$") as e:
        study.optimize(2)
    assert isinstance(e.value, ConfigError) and isinstance(e.value.__cause__, FileNotFoundError)
    assert study.trials == []
    fixed = dataclasses.replace(tp.bad_prepare(), prepare=tp.counting_toy().prepare)
    Study.load(study.out_dir, fixed).optimize(1)
    assert len(study.trials) == 1


def test_eeipu_is_lazy_and_the_engine_is_importable_from_the_package():
    assert eeipu_jax.Study is Study and "Study" in dir(eeipu_jax)
    with pytest.raises(AttributeError):
        eeipu_jax.NoSuchThing  # noqa: B018


# ---------------------------------------------------------------- kill -9
_KILLED_STUDY = """
import sys
from eeipu_jax import Study
from eeipu_jax.cpu import pin_xla_threads
pin_xla_threads()
study = Study.create(sys.argv[1], "tests.pipelines_for_tests:slow_toy", "eeipu", 1000.0, 1, n_warmup={n},
                     bo={bo!r}, jax_cache_dir=sys.argv[2])
study.optimize()
"""


def test_kill_9_mid_study_then_load_and_optimize_loses_and_duplicates_nothing(tmp_path):
    out = tmp_path / "run"
    trials_path = out / "trials.jsonl"
    xla_cache = os.environ.get("EEIPU_JAX_XLA_CACHE", str(tmp_path / "xla"))
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_STUDY.format(n=N_WARMUP, bo=SMALL_BO), str(out), xla_cache],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        wait_for_records(proc, trials_path, N_WARMUP + 2, 900, "the study")
        # While it runs, a second process (this one) is refused the directory.
        with pytest.raises(ConfigError, match="in use by another process"):
            Study.load(str(out)).optimize(1)
        time.sleep(0.08)  # into the next trial's 0.15 s training stage
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    before = read_trials(str(trials_path))
    assert len(before) >= N_WARMUP + 2

    study = Study.load(str(out))
    study.optimize(3)
    after = read_trials(str(trials_path))
    assert [r["index"] for r in after] == list(range(len(before) + 3))  # none lost, none twice
    assert after[: len(before)] == before
    assert [t.index for t in study.trials] == [r["index"] for r in after]
    n, path = rundir.checkpoint_dirs(str(out))[-1]
    state, _ = restore_state(path, bo.init(study.config, study.budget), with_key=True)
    assert n == int(state.n) == len(after)
    np.testing.assert_array_equal(np.asarray(state.X[: len(after)]), np.asarray([r["x"] for r in after], np.float32))
    assert math.isclose(float(state.spent), sum(r["charged"] for r in after), rel_tol=1e-5)


# ------------------------------------------------------- memoization off
def test_nomemo_study_never_restores_or_writes_and_records_its_name(tmp_path):
    study = _create(tmp_path, method="eeipu_nomemo", cache_policy="top_q")
    study.optimize(N_WARMUP + 6)
    assert study.method == "eeipu_nomemo" and not study.config.method_def.memoize
    assert json.load(open(os.path.join(study.out_dir, "config.json")))["method"] == "eeipu_nomemo"
    assert all(t.memo_depth == 0 and t.proposed_depth == 0 for t in study.trials)
    assert os.listdir(os.path.join(study.cache_dir, "entries")) == []  # cache writes "auto": none


# ------------------------------------------------ the optimizer's seconds
@pytest.mark.parametrize("charge", [False, True])
def test_optimizer_seconds_are_recorded_summarized_and_charged_on_request(tmp_path, charge):
    """Every record has ``ask_seconds`` (positive: the ask and the previous tell ran);
    the summary's optimizer seconds and fraction equal what the records give (computed
    here); with ``charge_optimizer`` the budget is charged trial + optimizer seconds,
    so spent is the sum of those, and a reopened study keeps the setting."""
    study = _create(tmp_path, charge_optimizer=charge)
    summary = study.optimize(N_WARMUP + 3)
    records = read_trials(os.path.join(study.out_dir, "trials.jsonl"))
    asks = np.array([r["ask_seconds"] for r in records])
    assert len(asks) == N_WARMUP + 3 and np.all(asks > 0)
    trial_s = np.array([r["trial_seconds"] for r in records])
    charged = np.array([r["charged"] for r in records])
    np.testing.assert_allclose(charged, trial_s + asks if charge else trial_s, rtol=1e-12)
    assert summary["spent"] == pytest.approx(float(np.sum(charged)), rel=1e-5)
    assert summary["optimizer_seconds"] == pytest.approx(float(asks.sum()), rel=1e-12)
    assert summary["optimizer_fraction"] == pytest.approx(float(asks.sum() / (asks.sum() + trial_s.sum())),
                                                          rel=1e-12)
    assert summary["charge_optimizer"] is charge
    assert json.load(open(os.path.join(study.out_dir, "config.json")))["charge_optimizer"] is charge
    assert Study.load(study.out_dir).charge_optimizer is charge
    other = not charge
    with pytest.raises(ConfigError, match="charge_optimizer"):
        _create(tmp_path, charge_optimizer=other, load_if_exists=True)


def test_charge_optimizer_must_be_a_bool(tmp_path):
    with pytest.raises(ConfigError, match="charge_optimizer"):
        _create(tmp_path, charge_optimizer="yes")
    assert not os.path.exists(tmp_path / "run")


# ------------------------------------------------- one definition of cached
@pytest.mark.parametrize(
    "method,pool", [("eeipu", {"prefix_pool": "post_warmup"}), ("pbgi", {"prefix_select": "top_prefixes"}),
                    pytest.param("eeipu", {}, marks=pytest.mark.slow),
                    pytest.param("eeipu", {"prefix_select": "top_prefixes"}, marks=pytest.mark.slow),
                    pytest.param("eeipu", {"prefix_pool": "post_warmup", "prefix_select": "top_prefixes"},
                                 marks=pytest.mark.slow)]
)
def test_every_memoized_proposal_is_a_cache_hit_on_toy_small(tmp_path, method, pool):
    """Under top_q the stage cache keeps exactly the optimizer's prefix pool (one
    definition, eeipu_jax.loop.prefix_pool), so no memoized proposal misses."""
    study = Study.create(str(tmp_path / "run"), "pipelines.toy:make_toy_small", method, 1e6, 0, n_warmup=N_WARMUP,
                         bo={**SMALL_BO, **pool}, cache_policy="top_q", epsilon=1e-6)  # toy stages take ~ms
    study.optimize(N_WARMUP + 12)
    memo = [t for t in study.trials if t.proposed_depth > 0]
    assert len(memo) >= 3  # the test exercises memoized proposals
    misses = [t.index for t in memo if t.memo_depth < t.proposed_depth]
    assert misses == []
    # every prefix of the final pool is on disk (the next ask may propose any of them)
    from eeipu_jax.runtime.cache import CachePolicy, StageCache
    from eeipu_jax.runtime.driver import pool_keys

    state, _ = rundir.restore_checkpoint(study.out_dir, bo.init(study.config, 1e6, bo.default_params(study.config, epsilon=1e-6)))
    records = read_trials(os.path.join(study.out_dir, "trials.jsonl"))
    assert int(state.n) == len(records)
    keep = pool_keys(state, study.config, records)
    cache = StageCache(study.cache_dir, CachePolicy("top_q"))
    assert keep and all(k in cache for k in keep)


# ------------------------------------------------------- hand-edited run directories
def _edit_json(path, edit):
    with open(path) as f:
        doc = json.load(f)
    edit(doc)
    with open(path, "w") as f:
        json.dump(doc, f)


def _edit_record(path, index, edit):
    with open(path) as f:
        lines = [json.loads(line) for line in f]
    edit(lines[index])
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in lines)


def test_hand_edits_of_a_run_directory_are_refused_naming_what_changed(tmp_path):
    study = _create(tmp_path)
    study.optimize(3)
    run = study.out_dir
    config, trials = os.path.join(run, "config.json"), os.path.join(run, "trials.jsonl")
    pristine = {p: open(p).read() for p in (config, trials)}

    def restore():
        for p, text in pristine.items():
            with open(p, "w") as f:
                f.write(text)

    _edit_json(config, lambda d: d.update(format=99))  # a format this version does not know
    with pytest.raises(ConfigError, match=r"format 99; this version of eeipu_jax reads format 1"):
        Study.load(run)
    restore()
    _edit_json(config, lambda d: d.update(seed=7))  # the seed changed after trials ran
    with pytest.raises(ConfigError, match=r"trial 0 was run with other cache keys .* seed 7.*seed in config.json"):
        Study.load(run).optimize(1)
    restore()
    _edit_record(trials, 1, lambda r: r.update(y=r["y"] + 1.0))  # the checkpoint holds the real value
    with pytest.raises(ConfigError, match=r"trial 1 has y .* but the checkpoint has .*records were altered"):
        Study.load(run).optimize(1)
    restore()
    _edit_record(trials, 2, lambda r: r["params"]["train"].update(steps=r["params"]["train"]["steps"] + 1))
    with pytest.raises(ConfigError, match=r"trial 2 was run with other cache keys"):
        Study.load(run).optimize(1)
    restore()
    Study.load(run).optimize(1)  # as it was: resumes
    assert [t.index for t in Study.load(run).trials] == [0, 1, 2, 3]
    # the way out the message gives: without checkpoints the optimizer is rebuilt from the records
    _edit_record(trials, 1, lambda r: r.update(y=r["y"] + 1.0))
    shutil.rmtree(os.path.join(run, "checkpoints"))
    Study.load(run).optimize(1)
    assert len(Study.load(run).trials) == 5


# ------------------------------------------------------------- bounded studies
def test_timeout_interrupts_a_hanging_stage_and_ends_the_study_with_its_summary(tmp_path):
    study = _create(tmp_path, pipeline="tests.pipelines_for_tests:always_hang")
    bo.ask(jax.random.key(0), bo.init(study.config, study.budget), study.config)  # compiled before the clock runs
    t0 = time.time()
    summary = study.optimize(timeout=2.0)
    assert time.time() - t0 < 20.0  # the stage sleeps 30 s
    assert summary["stopped"] == "timeout" and summary["n_trials"] == 1 and summary["n_failed"] == 1
    (trial,) = study.trials
    assert trial.status == "failed" and "the study's time limit ran out" in trial.error
    assert os.path.exists(os.path.join(study.out_dir, "summary.json"))
    with pytest.raises(ConfigError, match="timeout: must be positive seconds"):
        study.optimize(timeout=0)


def test_timeout_stops_dispatching_and_the_run_continues_where_it_stopped(tmp_path):
    study = _create(tmp_path)
    study.optimize(2)  # compiled: the trials below take milliseconds
    t0 = time.time()
    summary = study.optimize(timeout=0.5)
    assert time.time() - t0 < 10.0 and summary["stopped"] == "timeout"
    n = summary["n_trials"]
    assert n > 2 and all(t.ok for t in study.trials[:-1])
    assert study.trials[-1].ok or "time limit" in study.trials[-1].error  # unless the time ran out in a stage
    assert Study.load(study.out_dir).optimize(1)["stopped"] == "max_trials"
    assert [t.index for t in study.trials] == list(range(n + 1))


# ------------------------------------------------------------ limits
def test_max_trials_counts_per_call_and_total_trials_the_whole_study(tmp_path):
    study = _create(tmp_path)
    assert study.optimize(2)["stopped"] == "max_trials"
    summary = study.optimize(5, total_trials=3)  # 2 earlier trials count: one more runs
    assert summary["n_trials"] == 3 and summary["stopped"] == "total_trials"
    again = Study.load(study.out_dir).optimize(total_trials=3)  # a resumed study that holds them runs none
    assert again["n_trials"] == 3 and again["stopped"] == "total_trials"
    assert Study.load(study.out_dir).optimize(1, total_trials=10)["stopped"] == "max_trials"
    assert [t.index for t in study.trials] == list(range(4))
    for bad in (0, -1, 2.5, True, "3"):
        with pytest.raises(ConfigError, match="total_trials: must be an integer of at least 1"):
            study.optimize(total_trials=bad)


def test_jax_compile_time_is_recorded_and_not_charged(tmp_path):
    """The first trial of a process compiles the stages' jitted functions (here: TRACE_SLEEP seconds
    of tracing); that is set-up, recorded as compile_seconds and left out of the charge and of the
    stage costs the cost models learn; the next trial compiles nothing."""
    study = _create(tmp_path, pipeline="tests.pipelines_for_tests:compiling", n_warmup=2)
    summary = study.optimize(2)
    first, second = read_trials(os.path.join(study.out_dir, "trials.jsonl"))
    assert first["compile_seconds"] >= tp.TRACE_SLEEP
    assert tp.COMPUTE_SLEEP <= first["charged"] < tp.TRACE_SLEEP  # the stage's compute, not its compile
    assert first["stage_costs"][0] < tp.TRACE_SLEEP
    # the fields add up: wall seconds of the stages = their costs + the compile time
    assert sum(first["stage_seconds"]) == pytest.approx(sum(first["stage_costs"]) + first["compile_seconds"], abs=1e-6)
    assert second["compile_seconds"] < 0.05 and second["charged"] < tp.TRACE_SLEEP
    assert summary["compile_seconds"] == pytest.approx(first["compile_seconds"] + second["compile_seconds"])
    assert study.trials[0].compile_seconds == first["compile_seconds"]
