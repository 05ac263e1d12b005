"""The tuning run and its command line: records, budget, failures, resume after a crash or a kill.

The command line is ``python -m experiments.run`` (``eeipu tune`` with the
repository's pipelines registered); in-process runs go through
:class:`eeipu_jax.Study`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from eeipu_jax import Study
from eeipu_jax import loop as bo
from eeipu_jax.checkpoint import restore_state
from eeipu_jax.runtime import rundir
from eeipu_jax.runtime.records import read_trials
from eeipu_jax.runtime.settings import ConfigError
from experiments.run import main
from tests import pipelines_for_tests as tp
from tests.processes import wait_for_records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A small optimizer configuration shared by every in-process run (compiled once).
SMALL_BO = (("n_random", 64), ("mc_samples", 64), ("n_refine", 0), ("n_per_prefix", 8))
SMALL_BO_ARGS = [a for k, v in SMALL_BO for a in ("--bo", f"{k}={v}")]
N_WARMUP = 6


def _create(tmp_path, pipeline="tests.pipelines_for_tests:counting_toy", budget=1e6, seed=0, **kw):
    options = dict(n_warmup=N_WARMUP, bo=dict(SMALL_BO), cache_policy="all")
    options.update(kw)
    return Study.create(str(tmp_path / "run"), pipeline, "eeipu", budget, seed, **options)


def _latest_state(run_dir, study):
    n, path = rundir.checkpoint_dirs(run_dir)[-1]
    state, _ = restore_state(path, bo.init(study.config, study.budget), with_key=True)
    return n, state


# -------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "args, field",
    [
        (["--pipeline", "no-such-pipeline"], "--pipeline"),
        (["--pipeline", "no_such_module:thing"], "--pipeline"),
        (["--method", "nope"], "--method"),
        (["--budget", "-5"], "--budget"),
        (["--budget", "nan"], "--budget"),
        (["--n-warmup", "1"], "n_warmup"),
        (["--bo", "bogus=1"], "--bo bogus"),
        (["--bo", "n_random=many"], "--bo n_random"),
        (["--placement-timeout", "0", "--workers", "2"], "--placement-timeout"),
        (["--placement-timeout", "5"], "--placement-timeout"),  # without --workers: nothing to place
        (["--stage-timeout", "0"], "--stage-timeout"),
        (["--resume"], "--resume"),
        # Each of these gave a traceback, some after writing into --out.
        (["--bo", "refine_lr=nan"], "--bo refine_lr"),
        (["--bo", "refine_lr=inf"], "--bo refine_lr"),
        (["--bo", "n_random=2.5"], "--bo n_random"),
        (["--bo", "refit_every=100000000000000000000"], "--bo refit_every"),
        (["--seed", "1180591620717411303424"], "--seed"),
        (["--seed", "4294967296"], "--seed"),  # jax.random.key(2**32) == key(0)
        (["--seed", "-1"], "--seed"),
        (["--n-warmup", "100000000000"], "--n-warmup"),
        (["--epsilon", "inf"], "--epsilon"),
        (["--max-trials", "0"], "--max-trials"),
        (["--jax-cache-dir", "{blocker}/xla"], "--jax-cache-dir"),
        (["--cache-dir", "{blocker}/cache"], "--cache-dir"),
        (["--out", ""], "--out"),
        (["--pipeline", "tests.pipelines_for_tests:raising_factory"], "fails on purpose"),
        (["--pipeline", "tests.pipelines_for_tests:nan_choice"], "--pipeline"),
        (["--pipeline", "tests.pipelines_for_tests:"], "--pipeline"),
    ],
)
def test_bad_configuration_is_refused_before_compute(tmp_path, capsys, args, field):
    """Exit status 2, one line naming the option, no traceback, and nothing created in --out."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    args = [a.replace("{blocker}", str(blocker)) for a in args]
    argv = ["--pipeline", "toy-small", "--budget", "10", "--out", str(tmp_path / "r"), "--no-progress"]
    argv = argv[:4] + argv[6:] if "--out" in args else argv
    code = main(argv + args)
    err = capsys.readouterr().err
    assert code == 2 and field in err, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert not os.path.exists(tmp_path / "r")  # nothing written, not even the directory
    os.makedirs(tmp_path / "r")
    assert main(argv + args) == 2
    assert os.listdir(tmp_path / "r") == []  # an existing --out is left as it was
    capsys.readouterr()


def test_resume_of_an_unreadable_config_is_refused(tmp_path, capsys):
    out = tmp_path / "r"
    out.mkdir()
    (out / "config.json").write_text("{not json")
    assert main(["--pipeline", "toy-small", "--budget", "10", "--out", str(out), "--resume"]) == 2
    assert "config.json is unreadable" in capsys.readouterr().err


def test_argparse_rejects_unknown_choices_and_sizes(tmp_path, capsys):
    base = ["--pipeline", "toy-small", "--budget", "10", "--out", str(tmp_path / "r")]
    # --cache-q is gone: a study's top_q cache keeps the optimizer's prefix pool (--bo top_q=...)
    for extra, field in ((["--cache-policy", "lru"], "--cache-policy"), (["--cache-max-bytes", "9 parsecs"], "--cache-max-bytes"),
                         (["--cache-q", "5"], "--cache-q")):
        with pytest.raises(SystemExit) as e:
            main(base + extra)
        assert e.value.code == 2 and field in capsys.readouterr().err


def test_unwritable_output_directory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="^out"):
        Study.create(str(blocker / "run"), "tests.pipelines_for_tests:counting_toy", budget=10)
    with pytest.raises(ConfigError, match="^cache_dir"):
        _create(tmp_path, cache_dir=str(blocker / "cache"))
    with pytest.raises(ConfigError, match="^cache_policy"):
        _create(tmp_path, cache_policy="lru")
    assert not (tmp_path / "run").exists()


def test_help_explains_the_options(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    for option in ("--pipeline", "--method", "--budget", "--seed", "--out", "--cache-dir", "--cache-policy",
                   "--cache-max-bytes", "--resume", "--workers", "--worker-cpus", "--placement-timeout", "toy-small",
                   "eeipu"):
        assert option in out


# ------------------------------------------------------------- a real run
def test_run_records_every_trial_and_resumes_after_a_crash(tmp_path, monkeypatch, caplog):
    study = _create(tmp_path)
    run_dir = study.out_dir
    summary = study.optimize(8)
    trials = read_trials(os.path.join(run_dir, "trials.jsonl"))
    assert [r["index"] for r in trials] == list(range(8)) and summary["n_trials"] == 8
    assert sum(r["warmup"] for r in trials) == N_WARMUP
    n, state = _latest_state(run_dir, study)
    assert n == int(state.n) == 8
    np.testing.assert_array_equal(np.asarray(state.y[:8]), np.asarray([r["y"] for r in trials], np.float32))
    assert float(state.spent) == pytest.approx(sum(r["charged"] for r in trials), rel=1e-5)
    assert json.load(open(os.path.join(run_dir, "config.json")))["method"] == "eeipu"
    for r in trials:  # records are complete and consistent with the cache keys
        assert r["status"] == "ok" and len(r["stage_costs"]) == 3 and len(r["cache_keys"]) == 2
        if r["memo_depth"]:
            assert r["stage_seconds"][r["memo_depth"] - 1] == pytest.approx(r["restore_seconds"])

    # A crash after trial 9's line is fsynced but before its checkpoint.
    real_save = rundir.save_checkpoint

    def crash_at_9(path, state, key):
        if int(state.n) == 10:
            raise OSError("simulated crash while checkpointing")
        real_save(path, state, key)

    monkeypatch.setattr(rundir, "save_checkpoint", crash_at_9)
    with pytest.raises(OSError, match="simulated"):
        Study.load(run_dir).optimize(5)
    monkeypatch.undo()
    before = read_trials(os.path.join(run_dir, "trials.jsonl"))
    assert len(before) == 10 and _latest_state(run_dir, study)[0] == 9
    with open(os.path.join(run_dir, "trials.jsonl"), "a") as f:
        f.write('{"index": 10, "status": "o')  # and a line cut short by the crash

    evaluations = tp.CALLS[("counting_toy", "evaluate")]
    with caplog.at_level(logging.WARNING, logger="eeipu_jax.runtime.records"):
        Study.load(run_dir).optimize(2)
    assert any("half-written line" in r.message for r in caplog.records)
    after = read_trials(os.path.join(run_dir, "trials.jsonl"))
    assert [r["index"] for r in after] == list(range(12))
    assert after[:10] == before  # nothing finished lost or changed
    # Trial 9 was re-told from its line, not rerun: only the 2 new trials evaluated.
    assert tp.CALLS[("counting_toy", "evaluate")] == evaluations + 2
    n, state = _latest_state(run_dir, study)
    assert n == int(state.n) == 12
    np.testing.assert_array_equal(np.asarray(state.X[:12]), np.asarray([r["x"] for r in after], np.float32))
    assert float(state.spent) == pytest.approx(sum(r["charged"] for r in after), rel=1e-5)

    # Reopening with other settings, or starting over in the same directory, is refused.
    with pytest.raises(ConfigError, match="budget: run has 1000000.0, given 5.0"):
        _create(tmp_path, budget=5.0, load_if_exists=True)
    with pytest.raises(ConfigError, match="already holds a run"):
        _create(tmp_path)
    assert len(read_trials(os.path.join(run_dir, "trials.jsonl"))) == 12


def test_budget_stops_the_run(tmp_path):
    study = _create(tmp_path, budget=2.0)
    summary = study.optimize()
    trials = read_trials(os.path.join(study.out_dir, "trials.jsonl"))
    assert trials[-1]["spent"] >= 2.0 and summary["spent"] >= 2.0
    assert len(trials) == 1 or trials[-2]["spent"] < 2.0  # stopped at the first trial past the budget


def test_failed_trials_are_recorded_charged_and_the_run_continues(tmp_path):
    # Seed 0's warm-up hits the failing regions: [ok, ok, nan, nan, raise, nan].
    study = _create(tmp_path, pipeline="tests.pipelines_for_tests:failing_toy", seed=0)
    summary = study.optimize(8)
    trials = read_trials(os.path.join(study.out_dir, "trials.jsonl"))
    assert len(trials) == 8
    failed = [r for r in trials if r["status"] == "failed"]
    assert summary["n_failed"] == len(failed) >= 4
    assert any("RuntimeError" in r["error"] and r["failed_stage"] == 1 for r in failed)
    assert any("non-finite" in r["error"] for r in failed)
    for r in failed:
        assert r["y"] is None and r["charged"] > 0
        if r["failed_stage"] == 1:
            assert r["stage_costs"][2] is None  # evaluate never ran
    assert trials[-1]["index"] > failed[0]["index"]  # trials continued after a failure
    n, state = _latest_state(study.out_dir, study)
    assert [bool(f) for f in np.asarray(state.failed[:8])] == [r["status"] == "failed" for r in trials]
    assert float(state.spent) == pytest.approx(sum(r["charged"] for r in trials), rel=1e-5)
    assert summary["best"]["y"] == max(r["y"] for r in trials if r["y"] is not None)
    assert [t.ok for t in study.trials] == [r["status"] == "ok" for r in trials]


def test_charge_optimizer_from_the_command_line_charges_and_resumes(tmp_path, capsys):
    """``--charge-optimizer``: recorded in config.json, each trial charged its own plus its
    optimizer seconds (the checkpointed budget is their sum), the summary line reports the
    optimizer's share, and a resume without the flag is refused as a different run."""
    out = tmp_path / "cli"
    args = ["--pipeline", "tests.pipelines_for_tests:counting_toy", "--budget", "1e6", "--out", str(out),
            "--n-warmup", str(N_WARMUP), "--cache-policy", "all", "--max-trials", str(N_WARMUP + 2),
            "--no-progress", *SMALL_BO_ARGS]
    assert main([*args, "--charge-optimizer"]) == 0
    assert "optimizer" in capsys.readouterr().out
    assert json.load(open(out / "config.json"))["charge_optimizer"] is True
    trials = read_trials(str(out / "trials.jsonl"))
    for r in trials:
        assert r["ask_seconds"] > 0 and r["charged"] == pytest.approx(r["trial_seconds"] + r["ask_seconds"], rel=1e-12)
    study = Study.load(str(out))
    n, state = _latest_state(str(out), study)
    assert n == N_WARMUP + 2
    assert float(state.spent) == pytest.approx(sum(r["trial_seconds"] + r["ask_seconds"] for r in trials), rel=1e-5)
    assert main([*args, "--resume"]) == 2
    assert "charge_optimizer" in capsys.readouterr().err
    assert main([*args, "--resume", "--charge-optimizer"]) == 0
    assert len(read_trials(str(out / "trials.jsonl"))) == 2 * (N_WARMUP + 2)


# ---------------------------------------------------------------- kill -9
def test_sigkill_mid_run_then_resume_loses_and_duplicates_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=ROOT)  # and cwd=ROOT: `python -m experiments...` imports the repository
    argv = [
        "--pipeline", "tests.pipelines_for_tests:slow_toy", "--method", "eeipu", "--budget", "1000",
        "--seed", "1", "--out", str(out), "--n-warmup", str(N_WARMUP), "--no-progress", *SMALL_BO_ARGS,
    ]
    trials_path = out / "trials.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "experiments.run", *argv], cwd=ROOT, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        wait_for_records(proc, trials_path, N_WARMUP + 2, 900, "the run")
        time.sleep(0.08)  # into the next trial's 0.15 s training stage
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    before = read_trials(str(trials_path))
    assert len(before) >= N_WARMUP + 2

    # Resume through the same command line (in this process, which has the
    # optimizer compiled already).
    assert main(argv + ["--resume", "--max-trials", "3"]) == 0, capsys.readouterr().err
    after = read_trials(str(trials_path))
    assert [r["index"] for r in after] == list(range(len(before) + 3))
    assert after[: len(before)] == before
    n, state = _latest_state(str(out), Study.load(str(out)))
    assert n == int(state.n) == len(after)
    assert math.isclose(float(state.spent), sum(r["charged"] for r in after), rel_tol=1e-5)
