"""Parallel studies on Ray: records, single flight, faults (worker and driver killed), counters across a resume,
placement (more workers than CPUs; a time limit with a clear error), localhost bind, CLI, and a Ray Tune
experiment with EEIPUSearcher.

One local Ray (2 CPUs, no dashboard) serves the module; pipelines are
:func:`tests.pipelines_for_tests.sleepy_small` (synthetic3 whose stages sleep
their simulated cost), so trials need no cores.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

from eeipu_jax import loop as bo  # noqa: E402
from eeipu_jax.checkpoint import restore_state  # noqa: E402
from eeipu_jax.runtime import PrepareError, Study, driver, parallel, rundir  # noqa: E402
from eeipu_jax.runtime.records import read_trials  # noqa: E402
from eeipu_jax.runtime.settings import ConfigError  # noqa: E402
from pipelines import synthetic  # noqa: E402
from tests import pipelines_for_tests as tp  # noqa: E402
from tests.processes import wait_for_records  # noqa: E402

# One worker runs this file's tests: its module fixture is built once (pytest -n 2 --dist loadgroup).
pytestmark = pytest.mark.xdist_group("parallel")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL_BO = dict(n_random=64, mc_samples=64, n_refine=0, n_per_prefix=8)
N_WARMUP = 3
PIPELINE = "tests.pipelines_for_tests:sleepy_small"


@pytest.fixture(scope="module")
def local_ray():
    started = parallel.connect(num_cpus=2)
    yield ray
    if started:
        ray.shutdown()


def _create(tmp_path, pipeline=PIPELINE, name="run", **kw):
    options = dict(n_warmup=N_WARMUP, bo=dict(SMALL_BO))
    options.update(kw)
    return Study.create(str(tmp_path / name), pipeline, "eeipu", 1e6, 0, **options)


def _check_records(study, n):
    """Every trial once, rows in order, the state and checkpoint agreeing with the records."""
    records = read_trials(os.path.join(study.out_dir, "trials.jsonl"))
    assert [r["index"] for r in records] == list(range(n))
    assert len({tuple(r["x"]) for r in records}) == n  # no trial recorded twice
    last, path = rundir.checkpoint_dirs(study.out_dir)[-1]
    state, _ = restore_state(path, bo.init(study.config, study.budget), with_key=True)
    assert last == int(state.n) == n
    np.testing.assert_array_equal(np.asarray(state.X[:n]), np.asarray([r["x"] for r in records], np.float32))
    assert math.isclose(float(state.spent), sum(r["charged"] for r in records), rel_tol=1e-5)
    return records


def _objective(params) -> float:
    """synthetic3's objective from a trial's raw parameters (what the last stage must have returned)."""
    pipe = synthetic.get_pipeline("synthetic3")
    x = np.concatenate([[params[f"stage{s}"][f"x{j}"] for j in range(d)] for s, d in enumerate(pipe.dims)])
    return float(pipe.objective_raw(np.asarray(x, np.float32)))


def _reuse_the_first_pending_prefix(monkeypatch, asks) -> dict:
    """Make the driver's asks number ``asks`` (1-based) propose restoring stage 0 of pending row 0
    (the first trial in flight). Returns the calls: ``n`` asks so far, ``pending`` live pending
    rows seen by each."""
    real_ask = bo.ask
    calls = {"n": 0, "pending": []}

    def ask(key, state, config, pending=None):
        prop, new_state = real_ask(key, state, config, pending=pending)
        calls["n"] += 1
        calls["pending"].append(int(np.asarray(pending.mask).sum()))
        if calls["n"] in asks:
            prop = prop._replace(memo_depth=np.int32(1), source=np.int32(int(state.X.shape[0])))
        return prop, new_state

    monkeypatch.setattr(bo, "ask", ask)  # the driver asks through eeipu_jax.loop.ask
    return calls


# ----------------------------------------------------------------- helpers
def test_duplicate_computations_counts_stage_outputs_computed_twice():
    K = 3
    recs = [
        {"status": "ok", "memo_depth": 0, "cache_keys": ["a", "ab"]},      # computes a, ab
        {"status": "ok", "memo_depth": 1, "cache_keys": ["a", "ac"]},      # restores a, computes ac
        {"status": "ok", "memo_depth": 0, "cache_keys": ["a", "ab"]},      # a and ab again: 2 duplicates
        {"status": "failed", "memo_depth": 0, "failed_stage": 1, "cache_keys": ["a", "ad"]},  # a again: 1
        {"status": "failed", "memo_depth": 0, "failed_stage": None, "cache_keys": ["a", "ae"]},  # died: none
    ]
    assert driver.duplicate_computations(recs, K) == 3


def test_run_counters_count_from_the_records_including_older_ones():
    """waited_for_prefix: records with wait_seconds > 0; worker_restarts: records with worker_replaced
    (records of an older version have neither field, and count as neither)."""
    recs = [
        {"status": "ok", "memo_depth": 0, "cache_keys": ["a"], "wait_seconds": 0.0, "worker_replaced": False},
        {"status": "ok", "memo_depth": 1, "cache_keys": ["a"], "wait_seconds": 0.4, "worker_replaced": False},
        {"status": "failed", "memo_depth": 0, "cache_keys": ["b"], "wait_seconds": 0.0, "worker_replaced": True},
        {"status": "ok", "memo_depth": 0, "cache_keys": ["c"]},  # a serial (or older) record
    ]
    assert driver.run_counters(recs, 2) == {"duplicate_stage_computations": 0, "waited_for_prefix": 1,
                                            "worker_restarts": 1}


def test_a_prefix_counts_as_written_when_its_trial_restored_or_saved_it():
    rec = dict(status="ok", memo_depth=1, cache_keys=["a", "b", "c"], saved_keys=["b"])
    assert driver.prefix_written(rec, 1)  # restored
    assert driver.prefix_written(rec, 2)  # saved
    assert not driver.prefix_written(rec, 3)  # neither
    died = dict(status="failed", memo_depth=0, cache_keys=["a", "b", "c"], saved_keys=[])
    assert not driver.prefix_written(died, 1)  # its waiters compute the prefix, one of them at a time
    assert driver.prefix_written(dict(died, saved_keys=["a"]), 1)  # failed after writing stage 0


def test_trial_resources_are_checked_and_default_to_a_share_of_a_local_rays_cpus():
    assert parallel.TrialResources.of({"num_gpus": 1}) == parallel.TrialResources(None, 1.0)
    for bad in ({"num_cpus": -1}, {"num_gpu": 1}, "two", {"num_cpus": float("nan")}):
        with pytest.raises(ValueError):
            parallel.TrialResources.of(bad)
    auto = parallel.TrialResources()
    assert auto.resolved(2, 2.0, local=True).num_cpus == 1.0  # never more than one CPU a trial
    three = auto.resolved(3, 2.0, local=True).num_cpus  # rounded down to Ray's 1e-4, so three fit in two
    assert three == 0.6666 and 3 * three <= 2.0
    assert auto.resolved(8, 2.0, local=False).num_cpus == 1.0  # a cluster joined by address: one each
    assert parallel.TrialResources(2.0).resolved(8, 2.0, local=True).num_cpus == 2.0  # asked for: kept


def test_missing_ray_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r"eeipu-jax\[ray\]"):
        parallel.require_ray()
    study = _create(tmp_path)
    with pytest.raises(ImportError, match=r"eeipu-jax\[ray\]"):
        study.optimize(2, workers=2)
    assert not os.path.exists(os.path.join(study.out_dir, "trials.jsonl"))


def test_bad_parallel_settings_are_refused(tmp_path):
    study = _create(tmp_path)
    with pytest.raises(ConfigError, match="workers"):
        study.optimize(2, workers=0)
    with pytest.raises(ConfigError, match="resources"):
        study.optimize(2, workers=2, resources={"num_cpus": -1})
    with pytest.raises(ConfigError, match="resources"):
        study.optimize(2, resources={"num_cpus": 1})
    with pytest.raises(ConfigError, match="placement_timeout"):
        study.optimize(2, placement_timeout=5.0)  # nothing to place without Ray workers
    with pytest.raises(ConfigError, match="placement_timeout"):
        study.optimize(2, workers=2, placement_timeout=0.0)


# ------------------------------------------------------------------- runs
def test_two_workers_run_a_study_recording_every_trial_once(local_ray, tmp_path):
    study = _create(tmp_path)
    compiled = bo.compiled_asks()
    summary = study.optimize(10, workers=2, resources={"num_cpus": 1})
    # 0 or 1 trial in flight at each ask, one state capacity: one compiled pending-aware ask at most
    assert bo.compiled_asks() - compiled <= 1
    records = _check_records(study, 10)
    assert {r["worker"] for r in records} == {0, 1}
    assert sorted(r["proposed"] for r in records) == list(range(10))
    for r in records:  # each recorded objective belongs to the recorded parameters
        assert r["status"] == "ok"
        assert math.isclose(r["y"], _objective(r["params"]), rel_tol=1e-5, abs_tol=1e-5)
    assert summary["parallel"]["duplicate_stage_computations"] == 0
    assert summary["n_trials"] == 10
    # Asks after the first saw the other worker's trial in flight.
    assert any(r["pending"] == 1 for r in records)
    assert json.load(open(os.path.join(study.out_dir, "summary.json")))["parallel"]["workers"] == 2


def test_workers_that_cannot_be_placed_stop_the_study_with_what_was_asked_and_what_there_is(local_ray, tmp_path):
    """A GPU per trial on the CPU-only local Ray: the study stops after the placement time-out with one
    error naming the resources asked for and the cluster's, runs no trial and leaves no reservation."""
    study = _create(tmp_path)
    t0 = time.monotonic()
    with pytest.raises(parallel.PlacementError) as e:
        study.optimize(2, workers=2, resources={"num_gpus": 1}, placement_timeout=1.0)
    assert time.monotonic() - t0 < 60  # stopped, not hung (the guard is generous: Ray may be slow to answer)
    message = str(e.value)
    assert "2 trial workers of {'num_cpus': 1.0, 'num_gpus': 1.0} each (2 CPU, 2 GPU in all) within 1 s" in message
    assert "the Ray cluster has 2 CPU, 0 GPU" in message and "--worker-gpus" in message
    assert isinstance(e.value, ConfigError)  # a command line prints it on one line and exits 2
    assert read_trials(os.path.join(study.out_dir, "trials.jsonl")) == []
    from ray.util import placement_group_table

    assert all(g["state"] == "REMOVED" for g in placement_group_table().values())
    assert local_ray.available_resources().get("CPU") == 2  # nothing left reserved


def test_a_failing_prepare_on_the_workers_is_one_line(local_ray, tmp_path):
    """``prepare()`` raising on every Ray worker: the study stops with the worker's PrepareError as
    its own, one line without the worker's traceback, and records nothing."""
    study = _create(tmp_path, pipeline="tests.pipelines_for_tests:sleepy_bad_prepare")
    with pytest.raises(PrepareError) as e:
        study.optimize(2, workers=2, resources={"num_cpus": 1})
    assert str(e.value) == ("pipeline sleepy_bad_prepare's prepare() failed: FileNotFoundError: no such file: "
                            "data/missing.npz")
    assert read_trials(os.path.join(study.out_dir, "trials.jsonl")) == []


def test_a_prefix_in_flight_is_waited_for_and_restored_not_recomputed(local_ray, tmp_path, monkeypatch):
    """The third and fourth proposals reuse the prefix of the trial still running (a pending source).
    Each is held without a worker: the freed worker is asked again (the fourth ask sees the held
    third as pending) and stays free. Once the prefix is written both run, one on each worker, and
    restore stage 0 from the shared cache."""
    calls = _reuse_the_first_pending_prefix(monkeypatch, asks=(3, 4))
    study = _create(tmp_path, cache_policy="top_q", n_warmup=2)
    summary = study.optimize(4, workers=2, resources={"num_cpus": 1})
    records = _check_records(study, 4)
    waiters = [next(r for r in records if r["proposed"] == p) for p in (2, 3)]
    # the trial in flight at the third ask: the one of the first two that finished last
    first = max((r for r in records if r["proposed"] < 2), key=lambda r: r["index"])
    assert calls["pending"][2:] == [1, 2]  # the fourth ask saw the held third as pending
    assert {w["worker"] for w in waiters} == {0, 1}  # neither held a worker while it waited
    for waiter in waiters:
        assert waiter["memo_depth"] == waiter["proposed_depth"] == 1
        assert waiter["source"] == first["index"]
        assert waiter["params"]["stage0"] == first["params"]["stage0"]
        assert waiter["cache_keys"][0] == first["cache_keys"][0]
        assert waiter["index"] > first["index"]
    assert first["cache_keys"][0] in first["saved_keys"]  # written because a trial waited for it
    assert summary["parallel"]["waited_for_prefix"] == 2
    assert summary["parallel"]["duplicate_stage_computations"] == 0


def test_a_worker_killed_mid_trial_is_recorded_once_and_the_study_goes_on(local_ray, tmp_path):
    flag = str(tmp_path / "stalled.pid")
    pipeline = tp.stall_once(flag)
    killed = {}

    def kill_when_stalled():
        deadline = time.monotonic() + 120  # a guard against a hang, not a timing check
        while time.monotonic() < deadline:
            try:
                pid = int(open(flag).read())
            except (FileNotFoundError, ValueError):
                time.sleep(0.05)
                continue
            killed["pid"] = pid
            os.kill(pid, signal.SIGKILL)
            return

    killer = threading.Thread(target=kill_when_stalled, daemon=True)
    killer.start()
    study = _create(tmp_path, pipeline=pipeline)
    summary = study.optimize(6, workers=2, resources={"num_cpus": 1})
    killer.join(timeout=5)
    records = _check_records(study, 6)
    failed = [r for r in records if r["status"] == "failed"]
    assert len(failed) == 1 and "died" in failed[0]["error"]
    assert summary["parallel"]["worker_restarts"] == 1
    assert all(r["status"] == "ok" for r in records if r is not failed[0])
    assert "pid" in killed


def test_trials_held_for_a_killed_workers_prefix_compute_it_once(local_ray, tmp_path, monkeypatch):
    """Two proposals wait for the prefix of a trial whose worker is then killed: that trial is
    recorded failed once, the first waiter computes the prefix (it was never written) and the
    second waits for it and restores it; nothing is computed twice."""
    flag = str(tmp_path / "stalled.pid")
    # at the third and fourth asks the stalled trial is the only one running (pending slot 0)
    calls = _reuse_the_first_pending_prefix(monkeypatch, asks=(3, 4))

    def kill_after_the_fourth_ask():
        deadline = time.monotonic() + 120  # a guard against a hang, not a timing check
        while time.monotonic() < deadline and not (calls["n"] >= 4 and os.path.exists(flag)):
            time.sleep(0.05)
        time.sleep(0.2)
        os.kill(int(open(flag).read()), signal.SIGKILL)

    killer = threading.Thread(target=kill_after_the_fourth_ask, daemon=True)
    killer.start()
    study = _create(tmp_path, pipeline=tp.stall_once(flag), n_warmup=2)
    summary = study.optimize(4, workers=2, resources={"num_cpus": 1})
    killer.join(timeout=5)
    records = _check_records(study, 4)
    dead = [r for r in records if r["status"] == "failed"]
    assert len(dead) == 1 and "died" in dead[0]["error"] and dead[0]["proposed"] < 2
    first, second = (next(r for r in records if r["proposed"] == p) for p in (2, 3))
    assert first["params"]["stage0"] == second["params"]["stage0"] == dead[0]["params"]["stage0"]
    assert first["memo_depth"] == 0 and first["index"] < second["index"]  # computed it
    assert second["memo_depth"] == 1 and second["source"] == first["index"]  # restored it
    assert summary["parallel"]["duplicate_stage_computations"] == 0
    assert summary["parallel"]["worker_restarts"] == 1
    assert summary["parallel"]["waited_for_prefix"] == 2

    # Reopened, the run's counters go on from the records (they were once per optimize call)
    again = Study.load(study.out_dir, study.pipeline).optimize(1, workers=2)
    _check_records(study, 5)
    assert again["parallel"]["worker_restarts"] == 1
    assert again["parallel"]["waited_for_prefix"] >= 2
    assert again["parallel"]["duplicate_stage_computations"] == 0


_DRIVER = """
import sys
from eeipu_jax import Study
study = Study.create(sys.argv[1], {pipeline!r}, "eeipu", 1e6, 0, n_warmup={n}, bo={bo!r})
study.optimize(workers=2, resources={{"num_cpus": 1}})
"""


@pytest.mark.slow  # ~45 s: a second process starts its own Ray and workers
def test_a_killed_driver_resumes_losing_and_duplicating_nothing(local_ray, tmp_path):
    out = tmp_path / "run"
    trials_path = out / "trials.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-c", _DRIVER.format(pipeline=PIPELINE, n=N_WARMUP, bo=SMALL_BO), str(out)],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    children = []
    try:
        wait_for_records(proc, trials_path, N_WARMUP + 2, 300, "the driver", poll=0.05)
        with pytest.raises(ConfigError, match="in use by another process"):  # the lock holds
            Study.load(str(out), PIPELINE).optimize(1, workers=2)
        children = psutil.Process(proc.pid).children(recursive=True)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
        # The local Ray this driver started goes with it; end what is left of it (its own processes only).
        gone, alive = psutil.wait_procs(children, timeout=20)
        for p in alive:
            p.kill()
    before = read_trials(str(trials_path))
    assert len(before) >= N_WARMUP + 2
    study = Study.load(str(out), PIPELINE)
    study.optimize(4, workers=2, resources={"num_cpus": 1})
    after = _check_records(study, len(before) + 4)
    assert after[: len(before)] == before


# --------------------------------------------------------------- security
def test_a_local_ray_listens_on_localhost_only(local_ray):
    if local_ray.util.get_node_ip_address() != "127.0.0.1":
        pytest.skip("this process joined a Ray it did not start")
    procs = psutil.Process().children(recursive=True)
    listening = []
    for p in procs:
        try:
            listening += [(p.name(), c.laddr.ip, c.laddr.port) for c in p.net_connections(kind="inet")
                          if c.status == psutil.CONN_LISTEN]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    assert listening, "no listening socket found among the Ray processes"
    names = {n for n, _, _ in listening}
    assert any("gcs_server" in n for n in names) and any("raylet" in n for n in names)
    for name, ip, port in listening:
        assert ip in ("127.0.0.1", "::1", "::ffff:127.0.0.1"), f"{name} listens on {ip}:{port}"


# -------------------------------------------------------------------- CLI
def test_cli_runs_more_workers_than_the_local_rays_cpus(local_ray, tmp_path, capsys):
    """The README's `--workers N` on a machine with fewer cores: three workers on the 2-CPU local Ray
    each reserve a share of its CPUs by default, and every trial is recorded (the command once
    started no trial and said nothing: each actor waited for a whole CPU)."""
    from experiments.run import main

    assert local_ray.cluster_resources()["CPU"] == 2
    out = tmp_path / "cli"
    args = ["--pipeline", PIPELINE, "--budget", "1e6", "--out", str(out), "--n-warmup", str(N_WARMUP),
            "--max-trials", "6", "--workers", "3", "--no-progress", "--jax-cache-dir", str(tmp_path / "xla")]
    args += [a for k, v in SMALL_BO.items() for a in ("--bo", f"{k}={v}")]
    assert main(args) == 0
    assert "3 workers: 0 duplicated stage computations" in capsys.readouterr().out
    records = read_trials(str(out / "trials.jsonl"))
    assert [r["index"] for r in records] == list(range(6)) and {r["worker"] for r in records} == {0, 1, 2}
    assert all(r["status"] == "ok" for r in records)
    summary = json.load(open(out / "summary.json"))
    assert summary["parallel"]["resources"] == {"num_cpus": 0.6666, "num_gpus": 0.0}


# ------------------------------------------------------------------- Tune
def test_a_tune_experiment_runs_with_the_eeipu_searcher(local_ray, tmp_path):
    from ray import tune

    from eeipu_jax.runtime.tune_search import EEIPUSearcher, nested_config

    pipeline = tp.sleepy_small()
    searcher = EEIPUSearcher(pipeline, seed=0, budget=1e6, max_concurrent=2, n_warmup=3, bo_options=SMALL_BO)
    tuner = tune.Tuner(  # one object: the searcher gives the trainable (no second pipeline, no second limit)
        tune.with_resources(searcher.trainable(cache_dir=str(tmp_path / "cache")), {"cpu": 1}),
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=6, metric="objective", mode="max"),
        run_config=tune.RunConfig(storage_path=str(tmp_path / "tune"), name="eeipu", verbose=0),
    )
    results = tuner.fit()
    assert len(results) == 6 and not results.errors
    keys = {f"stage{s}/x{j}" for s, d in enumerate(synthetic.get_pipeline("synthetic3").dims) for j in range(d)}
    for r in results:  # every reported objective is the pipeline's at the suggested parameters
        assert r.metrics["status"] == "ok"
        assert set(r.config) == keys  # flat "stage/param" keys, nothing else
        assert math.isclose(r.metrics["objective"], _objective(nested_config(pipeline, r.config)), rel_tol=1e-5,
                            abs_tol=1e-5)
    # the searcher told every trial, with the costs the trainable measured
    assert int(searcher.state.n) == 6 and not searcher.live
    told_y = np.sort(np.asarray(searcher.state.y[:6], np.float64))
    np.testing.assert_allclose(told_y, np.sort([r.metrics["objective"] for r in results]), rtol=1e-5)
    best = results.get_best_result()
    assert best.metrics["objective"] == max(r.metrics["objective"] for r in results)

    # save / restore: a new searcher continues from the same state and key
    path = str(tmp_path / "searcher.pkl")
    searcher.save(path)
    again = EEIPUSearcher(pipeline, seed=123, budget=1e6, max_concurrent=2, n_warmup=3, bo_options=SMALL_BO)
    again.restore(path)
    assert int(again.state.n) == 6
    a, b = searcher.suggest("next-a"), again.suggest("next-b")
    assert a == b  # same state, same key: the same proposal


def test_the_searcher_suggests_flat_keys_keeps_the_wait_out_of_the_config_and_ends_with_its_budget(
        tmp_path, monkeypatch):
    """Like Tune's own searchers: a flat "stage/param" config; the trial to wait for travels in the
    cache directory, not in the config; Searcher.FINISHED once the trials told spent the budget."""
    from ray.tune.search import Searcher

    from eeipu_jax.runtime.tune_search import WAIT_KEY, EEIPUSearcher, nested_config

    pipeline = tp.sleepy_small()
    searcher = EEIPUSearcher(pipeline, seed=0, budget=1.0, max_concurrent=2, n_warmup=N_WARMUP, bo_options=SMALL_BO)
    searcher.cache_dir = str(tmp_path / "cache")  # what searcher.trainable(cache_dir=...) sets
    _reuse_the_first_pending_prefix(monkeypatch, asks={2})
    a, b = searcher.suggest("a"), searcher.suggest("b")
    assert WAIT_KEY not in b and all("/" in k for k in b)
    assert nested_config(pipeline, b)["stage0"] == nested_config(pipeline, a)["stage0"]  # b reuses a's prefix
    with open(tmp_path / "cache" / "tune_wait" / "b.wait") as f:
        assert f.read() == "a"
    assert searcher.suggest("c") is None  # two in flight
    done = {"objective": 1.0, "stage_costs": [0.2] * 3, "memo_depth": 0, "charged": 0.6}
    searcher.on_trial_complete("a", done)
    assert searcher.suggest("c") not in (None, Searcher.FINISHED)
    searcher.on_trial_complete("b", dict(done, memo_depth=1))  # 1.2 s spent of 1.0
    assert searcher.suggest("d") == Searcher.FINISHED
    with pytest.raises(ValueError, match="budget"):
        EEIPUSearcher(pipeline, seed=0, budget=0)


def test_trial_resources_take_custom_resources_such_as_tpu_chips(tmp_path):
    res = parallel.TrialResources.of({"num_cpus": 1, "TPU": 4})
    assert res.custom == {"TPU": 4.0} and res.bundle() == {"CPU": 1.0, "TPU": 4.0}
    assert res.actor_options() == {"num_cpus": 1.0, "num_gpus": 0.0, "resources": {"TPU": 4.0}}
    assert res.describe() == {"num_cpus": 1.0, "num_gpus": 0.0, "TPU": 4.0}
    # the actor a RayExecutor starts carries them
    seen = {}

    class Actor:
        @staticmethod
        def options(**options):
            seen.update(options)
            return Actor

        @staticmethod
        def remote(**kwargs):
            return "actor"

    executor = parallel.RayExecutor(2, res, None)
    executor._actor_cls, executor._spec = Actor, _create(tmp_path)._spec()
    assert executor._new_actor(0) == "actor"
    assert seen["resources"] == {"TPU": 4.0} and seen["num_cpus"] == 1.0
    for bad in ({"TPU": -1}, {"TPU": float("inf")}, {"TPU": "4"}, {"TPU": True}, {1: 2}, {"": 1},
                {"CPU": 1}, {"GPU": 1}, {"num_tpus": 4}, {"memory": 1e9}):
        with pytest.raises(ValueError):
            parallel.TrialResources.of(bad)
    study = _create(tmp_path, name="refused")
    with pytest.raises(ConfigError, match="resources: custom resource 'TPU' must be a non-negative finite number"):
        study.optimize(2, workers=2, resources={"TPU": -4})


def test_cli_worker_resources_are_checked_before_anything_is_written(tmp_path, capsys):
    from eeipu_jax.runtime.cli import main

    out = tmp_path / "cli"
    base = ["tune", "--pipeline", PIPELINE, "--budget", "10", "--out", str(out), "--workers", "2"]
    with pytest.raises(SystemExit):
        main(base + ["--worker-resources", "TPU"])
    assert "NAME=AMOUNT" in capsys.readouterr().err
    assert main(base + ["--worker-resources", "TPU=-1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --worker-cpus/--worker-gpus/--worker-resources: custom resource 'TPU'")
    assert not out.exists()


# ------------------------------------------------ processes of their own
def _python(code: str, timeout: float = 240, **env) -> subprocess.CompletedProcess:
    """``code`` in a fresh Python (no Ray, no JAX backend yet, no RAY_* settings of this process), from
    the repository root."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    environ.update(PYTHONPATH=ROOT, PYTHONWARNINGS="default", **env)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=environ, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow  # starts a Ray of its own
def test_a_local_ray_started_after_jax_gives_no_fork_warning():
    """JAX warns at every fork of a process whose backend is up; Ray's fork+exec of its servers
    cannot deadlock and connect() silences exactly that warning, there only."""
    proc = _python("import jax, ray; jax.devices()\n"
                   "from eeipu_jax.runtime import parallel\n"
                   "assert parallel.connect(num_cpus=1)\n"
                   "ray.shutdown(); print('started')")
    assert proc.returncode == 0 and "started" in proc.stdout, proc.stderr[-3000:]
    assert "os.fork() was called" not in proc.stderr


@pytest.mark.slow  # starts a Ray of its own
def test_the_tune_trainable_starts_ray_on_localhost_only(tmp_path):
    """Tune would start a Ray listening on every interface; building the trainable starts it through
    connect(), bound to 127.0.0.1, as a study does."""
    proc = _python("import ray\n"
                   "from eeipu_jax.runtime.tune_search import EEIPUSearcher\n"
                   "from tests.pipelines_for_tests import sleepy_small\n"
                   "searcher = EEIPUSearcher(sleepy_small(), seed=0, budget=60)\n"
                   "assert not ray.is_initialized()\n"
                   f"searcher.trainable(cache_dir={str(tmp_path / 'cache')!r})\n"
                   "print('node', ray.util.get_node_ip_address()); ray.shutdown()")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "node 127.0.0.1" in proc.stdout


@pytest.mark.slow  # starts a Ray head of its own (`ray start --head`) and joins it twice
def test_joining_a_token_cluster_without_ray_auth_mode_fails_at_once_naming_it(tmp_path):
    import socket

    with socket.socket() as s:  # a free port outside Ray's worker port range (10002-19999)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = tmp_path / "token"
    token.write_text("0123456789abcdef0123456789abcdef")
    auth = dict(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths live under it
    # a head bound to 127.0.0.1 (as connect() binds a local Ray), in this test's own temp dir;
    # stopped by ending its processes, not `ray stop`, which stops every Ray of the machine
    head = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "ray"), "start", "--head", "--block", "--port", str(port),
         "--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--include-dashboard=false",
         "--disable-usage-stats", "--temp-dir", temp],
        env=dict(env, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", **auth), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.time() < deadline and head.poll() is None, "the Ray head did not start"
                time.sleep(0.5)
        join = (f"from eeipu_jax.runtime import parallel\n"
                f"try:\n"
                f"    parallel.connect(address='127.0.0.1:{port}')\n"
                f"except parallel.ClusterAuthError as e:\n"
                f"    print('refused:', e)\n"
                f"else:\n"
                f"    import ray; print('joined', ray.cluster_resources().get('CPU')); ray.shutdown()\n")
        t0 = time.time()
        refused = _python(join)
        assert "refused: the Ray cluster at 127.0.0.1:" in refused.stdout, refused.stderr[-3000:]
        assert "RAY_AUTH_MODE=token" in refused.stdout
        assert time.time() - t0 < 60  # not Ray's 20 s of retries on top of starting Python
        assert refused.stderr.count("InvalidAuthToken") <= 2  # one probe, not a retry loop
        # a driver on this machine joining a loopback head takes the loopback address as its node IP too
        joined = _python(join, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", **auth)
        assert "joined 1.0" in joined.stdout, joined.stderr[-3000:]
    finally:
        try:
            children = psutil.Process(head.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        head.terminate()
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
        gone, alive = psutil.wait_procs(children, timeout=20)
        for p in alive:
            p.kill()
        shutil.rmtree(temp, ignore_errors=True)
