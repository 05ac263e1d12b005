"""The real-pipeline comparison script on the tiny stacking pipeline."""

import json
import os

import numpy as np
import pytest

from experiments import common


@pytest.mark.slow  # two spawned tuning runs with their JAX compilations: minutes on 2 cores
def test_real_comparison_end_to_end(tmp_path, monkeypatch):
    from experiments import real

    monkeypatch.setenv("EEIPU_JAX_DATA_DIR", str(tmp_path / "tfds"))
    out = str(tmp_path / "res")
    table = real.main(["--config", "real_cpu", "--out", out, "--workers", "1", "--no-figures",
                       "--set", "pipelines=['stacking-tiny']", "--set", "methods=['ei','eeipu']",
                       "--set", "seeds=1", "--set", "budget=12.0", "--set", "n_warmup=3"])
    runs = common.read_runs(os.path.join(out, "runs"))
    assert {(r["method"], r["seed"]) for r in runs} == {("ei", 0), ("eeipu", 0)}
    for r in runs:
        trials = r["trials"]
        spent = [t["spent"] for t in trials]
        assert spent[-1] >= 12.0 > spent[-2]  # stopped by the wall-clock budget
        assert sum(t["warmup"] for t in trials) == 3
        # The results file is the tuning run's trials.jsonl, trial for trial.
        with open(os.path.join(out, "tuning", "stacking-tiny", r["method"], "seed0", "trials.jsonl")) as f:
            recs = [json.loads(line) for line in f if line.strip()]
        assert [t["y"] for t in trials] == [rec["y"] for rec in recs]
        assert [t["memo_depth"] for t in trials] == [rec["memo_depth"] for rec in recs]
        np.testing.assert_allclose(spent[-1], sum(rec["charged"] for rec in recs))
    assert all(t["memo_depth"] == 0 for r in runs if r["method"] == "ei" for t in r["trials"])
    row = table["stacking-tiny"]["eeipu"]
    assert row["seeds"] == 1 and row["iterations"] >= 1
    with open(os.path.join(out, "summary.md")) as f:
        assert "paper: +103%" in f.read()
