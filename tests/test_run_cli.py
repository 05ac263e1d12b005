"""The tuning run and its command line: records, budget, failures, resume after a crash or a kill.

The command line is ``python -m experiments.run`` (``eeipu tune`` with the
repository's pipelines registered); in-process runs go through
:class:`eeipu_jax.Study`.
"""

from __future__ import annotations

import builtins
import errno
import fcntl
import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from eeipu_jax import Study
from eeipu_jax import loop as bo
from eeipu_jax.checkpoint import restore_state, save_state
from eeipu_jax.runtime import cli, rundir
from eeipu_jax.runtime.records import read_trials
from eeipu_jax.runtime.settings import ConfigError, StorageError
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
        # Each of these was refused only after --out and config.json were written, so the
        # corrected command then failed with "already holds a run"; sys:exit ended the process.
        (["--workers", "0"], "--workers"),
        (["--workers", "-2"], "--workers"),
        (["--workers", "2", "--worker-cpus", "-1"], "--worker-cpus"),
        (["--workers", "2", "--worker-gpus", "nan"], "--worker-gpus"),
        (["--worker-cpus", "2"], "--worker-cpus"),  # without --workers: nothing to reserve
        (["--address", "garbage:xx"], "--address"),
        (["--timeout", "0"], "--timeout"),
        (["--timeout", "nan"], "--timeout"),
        (["--pipeline", "sys:exit"], "--pipeline"),
        (["--pipeline", "os:getcwd"], "not a Pipeline"),
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


# ------------------------------------------- damaged, read-only and full run directories
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A run directory with 4 recorded trials (tests copy it before changing anything)."""
    study = _create(tmp_path_factory.mktemp("finished"))
    study.optimize(4)
    return study.out_dir


def _copy_run(run_dir, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(run_dir, out)
    return out


def _edit_line(n, edit):
    """An edit of ``trials.jsonl``'s lines: line ``n`` (1-based) as ``edit(record)`` returns it."""
    def apply(lines):
        lines[n - 1] = json.dumps(edit(json.loads(lines[n - 1]))).encode()
        return lines
    return apply


DAMAGES = {
    "a middle line that is not JSON": (lambda lines: lines[:1] + [b"{not json"] + lines[2:], "line 2 is not valid JSON"),
    "a line that is a list": (lambda lines: lines[:1] + [b"[1, 2]"] + lines[2:], "line 2: holds a JSON list"),
    "a record missing spent": (_edit_line(4, lambda r: {k: v for k, v in r.items() if k != "spent"}),
                               "line 4: 'spent' is missing"),
    "y null with status ok": (_edit_line(2, lambda r: {**r, "y": None}), "line 2: 'y' is None"),
    "y a string with status ok": (_edit_line(2, lambda r: {**r, "y": "0.5"}), "line 2: 'y' is '0.5'"),
    "a non-UTF-8 byte": (lambda lines: lines[:1] + [lines[1][:20] + b"\xff" + lines[1][20:]] + lines[2:],
                         "line 2 is not UTF-8 text (byte 0xff at column 21)"),
    "trials.jsonl is a directory": (None, "Is a directory"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_summary_of_damaged_records_is_one_line_naming_the_file_and_line(finished_run, tmp_path, capsys, damage):
    """``eeipu summary`` on a damaged ``trials.jsonl``: exit 2 and one line naming the file and
    the line, never a traceback (each of these gave one); from Python, a ConfigError saying the same."""
    edit, expected = DAMAGES[damage]
    out = _copy_run(finished_run, tmp_path)
    path = out / "trials.jsonl"
    if edit is None:
        path.unlink()
        path.mkdir()
    else:
        path.write_bytes(b"\n".join(edit(path.read_bytes().split(b"\n")[:-1])) + b"\n")
    assert cli.main(["summary", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert str(path) in err and expected in err, err
    with pytest.raises(ConfigError, match=re.escape(expected)):
        Study.load(str(out)).summary()


def test_summary_only_reads_so_a_read_only_run_directory_is_summarized(finished_run, tmp_path, monkeypatch, capsys):
    """``eeipu summary`` takes no lock and writes nothing: with every way of writing a file or a
    directory refused as on a read-only file system (the tests run as root, for whom a 0o555
    directory is writable), it prints the summary."""
    out = _copy_run(finished_run, tmp_path)
    os.chmod(out, 0o555)

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    real_open = builtins.open

    def open_for_reading(file, mode="r", *args, **kwargs):
        if set(mode) & set("wax+"):
            read_only()
        return real_open(file, mode, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(builtins, "open", open_for_reading)
        for name in ("mkdir", "makedirs", "rmdir", "remove", "unlink", "rename", "replace", "truncate"):
            m.setattr(os, name, read_only)
        m.setattr(tempfile, "mkdtemp", read_only)
        m.setattr(fcntl, "flock", read_only)
        code = cli.main(["summary", str(out)])
    os.chmod(out, 0o755)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert json.loads(captured.out)["n_trials"] == 4


def _cli_args(out, *extra):
    return ["--pipeline", "tests.pipelines_for_tests:counting_toy", "--budget", "1e6", "--out", str(out),
            "--n-warmup", str(N_WARMUP), "--cache-policy", "all", "--no-progress", *SMALL_BO_ARGS, *extra]


def _full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("where", ["config.json", "the cache directory"])
def test_a_full_disk_when_creating_a_study_leaves_nothing_behind(tmp_path, monkeypatch, capsys, where):
    """ENOSPC while a study is created (it left .lock, cache/ and config.json.tmp behind, with a
    traceback): one line, exit 1, and every file and directory the attempt made removed."""
    out = tmp_path / "parent" / "run"
    real_makedirs = os.makedirs

    def makedirs(path, *args, **kwargs):
        if str(path).endswith("cache"):
            _full_disk()
        return real_makedirs(path, *args, **kwargs)

    with monkeypatch.context() as m:
        if where == "config.json":
            m.setattr(os, "fsync", _full_disk)  # config.json.tmp is written, then its fsync fails
        else:
            m.setattr(os, "makedirs", makedirs)
        with pytest.raises(StorageError, match="No space left on device") as e:
            _create(tmp_path / "parent")
        assert e.value.errno == errno.ENOSPC and "\n" not in str(e.value)
        assert os.listdir(tmp_path) == []  # not even the parent directory it made
        assert main(_cli_args(out)) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "No space left on device" in err, err
    assert "--resume" not in err  # nothing to resume
    assert os.listdir(tmp_path) == []
    assert main(_cli_args(out, "--max-trials", "1")) == 0  # with space again, the same command works


def _orbax_full_disk(calls_before_failure):
    """``StandardCheckpointer.save`` failing as orbax does on a full disk, after ``calls_before_failure``
    saves: its temporary directory half-written, then its RESOURCE_EXHAUSTED ValueError."""
    real_save = ocp.StandardCheckpointer.save
    calls = []

    def save(self, directory, *args, **kwargs):
        calls.append(directory)
        if len(calls) <= calls_before_failure:
            return real_save(self, directory, *args, **kwargs)
        tmp = f"{directory}.orbax-checkpoint-tmp"
        os.makedirs(os.path.join(tmp, "ocdbt.process_0"))
        with open(os.path.join(tmp, "_CHECKPOINT_METADATA"), "w") as f:
            f.write("{}")
        raise ValueError(
            f'RESOURCE_EXHAUSTED: Error writing "state.X/0.0" in OCDBT database at local file "{tmp}/ocdbt.process_0/": '
            f'Failed writing: "{tmp}/ocdbt.process_0/d/0": Failed to write 4096 bytes to file 4: No space left on '
            "device [os_error_code='28'] [tensorstore_spec='{\"driver\": \"zarr\"}']")

    return save


@pytest.mark.parametrize("how", ["orbax fails", "no room before the save"])
def test_a_full_disk_at_a_checkpoint_stops_with_one_line_and_the_run_resumes(tmp_path, monkeypatch, capsys, how):
    """A checkpoint that cannot be written mid-run (orbax's RESOURCE_EXHAUSTED, or too little room
    to try): exit 1 with one line, orbax's temporary files removed, every recorded trial kept; with
    space again, --resume continues, losing and repeating nothing."""
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        if how == "orbax fails":
            m.setattr(ocp.StandardCheckpointer, "save", _orbax_full_disk(2))
        else:
            real_usage = shutil.disk_usage

            def disk_usage(path):  # the third checkpoint finds 4 kB free
                usage = real_usage(path)
                full = "checkpoints" in str(path) and os.path.exists(out / "checkpoints" / "00000002")
                return usage._replace(free=4096) if full else usage

            m.setattr(shutil, "disk_usage", disk_usage)
        code = main(_cli_args(out, "--max-trials", "5"))
    err = capsys.readouterr().err
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: could not write the checkpoint") and "No space left on device" in lines[0]
    assert "continue with --resume" in lines[0] and "tensorstore_spec" not in lines[0]
    assert sorted(os.listdir(out / "checkpoints")) == ["00000001", "00000002"]  # no temporary directory left
    before = read_trials(str(out / "trials.jsonl"))
    assert [r["index"] for r in before] == [0, 1, 2]  # the trial whose checkpoint failed is recorded
    assert main(_cli_args(out, "--resume", "--max-trials", "2")) == 0, capsys.readouterr().err
    after = read_trials(str(out / "trials.jsonl"))
    assert after[:3] == before and [r["index"] for r in after] == list(range(5))
    n, state = _latest_state(str(out), Study.load(str(out)))
    assert n == int(state.n) == 5


def test_a_trial_line_that_cannot_be_written_leaves_the_records_as_they_were(tmp_path, monkeypatch):
    """append_line on a full disk cuts the file back (no half line), and the study stops with a
    StorageError naming the trial; the trial runs again on resume."""
    study = _create(tmp_path)
    study.optimize(2)
    path = os.path.join(study.out_dir, "trials.jsonl")
    before = open(path, "rb").read()
    with monkeypatch.context() as m:
        m.setattr(os, "fsync", _full_disk)
        with pytest.raises(StorageError, match=r"could not write trial 2 to .*trials.jsonl: No space left on device"):
            study.optimize(1)
    assert open(path, "rb").read() == before
    Study.load(study.out_dir).optimize(1)
    assert [r["index"] for r in read_trials(path)] == [0, 1, 2]


def _orbax_threads() -> list[str]:
    """The running threads of orbax's background saves (its own thread classes, or threads running
    an orbax object's method)."""
    def of_orbax(t):
        owner = getattr(getattr(t, "_target", None), "__self__", None)
        return any(type(o).__module__.startswith("orbax") for o in (t, owner)) or t.name.startswith("metadata_store")

    return [t.name for t in threading.enumerate() if t.is_alive() and of_orbax(t)]


def test_ctrl_c_during_a_checkpoint_save_exits_130_with_orbax_finished(tmp_path, monkeypatch, capsys):
    """SIGINT while orbax writes a checkpoint in its background threads: the "interrupted ...
    --resume" line and exit 130, and no orbax thread left running (they printed tracebacks while
    the process exited); the Ctrl-C waits for the save, which is complete, and the run resumes."""
    out = tmp_path / "run"
    real_save = ocp.StandardCheckpointer.save
    calls = []

    def save(self, *args, **kwargs):
        real_save(self, *args, **kwargs)  # returns with the writes under way in orbax's threads
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C

    # A user's process: Python's own SIGINT handler (whatever an earlier test in this worker left).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with monkeypatch.context() as m:
            m.setattr(ocp.StandardCheckpointer, "save", save)
            code = main(_cli_args(out, "--max-trials", "5"))
    finally:
        signal.signal(signal.SIGINT, previous)
    left = _orbax_threads()
    captured = capsys.readouterr()
    err = captured.err
    assert code == 130 and err.strip().splitlines() == [
        f"interrupted; finished trials are in {out}; continue with --resume"], (code, len(calls), err, captured.out)
    assert left == []
    # the interrupted save completed (the older ones are pruned by the next save)
    assert sorted(os.listdir(out / "checkpoints")) == ["00000001", "00000002", "00000003"]
    assert _latest_state(str(out), Study.load(str(out)))[0] == 3
    assert main(_cli_args(out, "--resume", "--max-trials", "1")) == 0
    assert [r["index"] for r in read_trials(str(out / "trials.jsonl"))] == [0, 1, 2, 3]


def test_an_interrupted_state_save_waits_for_orbax(tmp_path, monkeypatch):
    """save_state interrupted another way than by a signal (a KeyboardInterrupt raised inside it)
    still waits for orbax's background writes before it propagates."""
    real_save = ocp.StandardCheckpointer.save

    def save(self, *args, **kwargs):
        real_save(self, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(ocp.StandardCheckpointer, "save", save)
    state = bo.init(bo.configure(tp.counting_toy().space, "eeipu", n_warmup=N_WARMUP)[0], 1.0)
    with pytest.raises(KeyboardInterrupt):
        save_state(tmp_path / "ck", state, jax.random.key(0))
    assert _orbax_threads() == []
    monkeypatch.undo()
    assert int(restore_state(tmp_path / "ck", state).n) == 0  # and the checkpoint is complete


def test_a_failing_prepare_is_one_line_and_exit_2(tmp_path, capsys):
    """A pipeline whose prepare() raises: "pipeline X's prepare() failed: ..." on one line, exit 2,
    no trial recorded (it gave a raw traceback)."""
    args = _cli_args(tmp_path / "run", "--max-trials", "2")
    args[1] = "tests.pipelines_for_tests:bad_prepare"
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err == ("error: pipeline bad_prepare's prepare() failed: FileNotFoundError: no such file: "
                   "data/missing.npz\n")
    assert read_trials(str(tmp_path / "run" / "trials.jsonl")) == []


# ------------------------------------------------- what stages return, how long they run
def _cli_args_with(out, pipeline, *extra):
    return ["--pipeline", f"tests.pipelines_for_tests:{pipeline}", "--budget", "1e6", "--out", str(out),
            "--n-warmup", str(N_WARMUP), "--no-progress", *SMALL_BO_ARGS, *extra]


def test_a_stage_calling_sys_exit_fails_its_trial_and_the_study_goes_on(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_cli_args_with(out, "always_exit", "--max-trials", "3")) == 0
    captured = capsys.readouterr()
    assert "3 trials (3 failed" in captured.out  # the summary, not a silent exit after one trial
    trials = read_trials(str(out / "trials.jsonl"))
    assert len(trials) == 3 and all("stage 1 (fit) called sys.exit(0)" in r["error"] for r in trials)
    assert json.load(open(out / "summary.json"))["n_failed"] == 3


def test_objectives_beyond_float32_or_float64_are_failed_trials_and_resume_goes_on(tmp_path, capsys):
    """1e39 and 10**400 aborted the run, and every --resume hit the same trial again."""
    out = tmp_path / "run"
    assert main(_cli_args_with(out, "extreme_objectives", "--max-trials", "4")) == 0
    assert main(_cli_args_with(out, "extreme_objectives", "--max-trials", "2", "--resume")) == 0
    trials = read_trials(str(out / "trials.jsonl"))
    assert [r["index"] for r in trials] == list(range(6))
    errors = [r["error"] or "" for r in trials]
    assert any("beyond the float32 range" in e for e in errors) and any("OverflowError" in e for e in errors)
    for r in trials:
        a = r["params"]["prep"]["a"]
        assert (r["status"] == "ok") == (0.3 <= a <= 0.6), r
    capsys.readouterr()


def test_timeout_from_the_command_line_interrupts_a_hanging_stage(tmp_path, capsys):
    import jax

    out = tmp_path / "run"
    config, _ = bo.configure(tp.always_hang().space, "eeipu", n_warmup=N_WARMUP, epsilon=0.1, **dict(SMALL_BO))
    bo.ask(jax.random.key(0), bo.init(config, 1e6), config)  # the command's ask, compiled before the clock runs
    t0 = time.time()
    assert main(_cli_args_with(out, "always_hang", "--timeout", "2")) == 0
    assert time.time() - t0 < 20.0  # the stage sleeps 30 s
    captured = capsys.readouterr()
    assert "stopped: the time limit of 2 s ran out" in captured.err and "1 trials (1 failed" in captured.out
    assert json.load(open(out / "summary.json"))["stopped"] == "timeout"
    (trial,) = read_trials(str(out / "trials.jsonl"))
    assert "the study's time limit ran out" in trial["error"]


def test_the_eeipu_command_imports_the_pipeline_from_the_working_directory(tmp_path, monkeypatch, capsys):
    """`eeipu tune --pipeline mymodule:pipe` finds mymodule.py in the working directory, as
    `python -m` would (a console script's sys.path[0] is its bin directory); --total-trials stops
    the run when it holds that many trials, the resumed invocation's included."""
    (tmp_path / "my_cwd_pipeline.py").write_text(
        "from tests.pipelines_for_tests import counting_toy\npipe = counting_toy()\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "my_cwd_pipeline", raising=False)
    out = tmp_path / "run"
    argv = ["tune", "--pipeline", "my_cwd_pipeline:pipe", "--budget", "1e6", "--out", str(out), "--n-warmup",
            str(N_WARMUP), "--no-progress", *SMALL_BO_ARGS]
    assert cli.main(argv + ["--max-trials", "2"]) == 0, capsys.readouterr().err
    assert cli.main(argv + ["--resume", "--total-trials", "3"]) == 0, capsys.readouterr().err
    assert len(read_trials(str(out / "trials.jsonl"))) == 3
    assert json.load(open(out / "summary.json"))["stopped"] == "total_trials"
    assert cli.main(argv + ["--resume", "--total-trials", "0"]) == 2
    assert "error: --total-trials: must be an integer of at least 1" in capsys.readouterr().err
