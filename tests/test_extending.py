"""docs/extending.md's worked example, run as written: a user's stateful method in a
file outside the package, registered and run through a Study, a simulator and a
2-worker parallel study on Ray."""

import os
import pathlib
import re
import sys

import jax
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "extending.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"```python\n(.*?)```", DOC, re.S)


def _block(start: str) -> str:
    found = [b for b in BLOCKS if b.lstrip().startswith(start)]
    assert len(found) == 1, (start, len(found))
    return found[0]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """The document's directory: my_methods.py beside the scripts; the repository
    (pipelines) importable here and on Ray's workers."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    (tmp_path / "my_methods.py").write_text(_block('"""EEIPU with an exploration margin'), encoding="utf-8")
    sys.modules.pop("my_methods", None)
    yield tmp_path
    sys.modules.pop("my_methods", None)


def test_the_package_never_mentions_the_example():
    hits = [p for p in (ROOT / "eeipu_jax").rglob("*.py") if "eeipu_xi" in p.read_text(encoding="utf-8")]
    assert hits == []


def test_the_margin_decays_with_the_proposals(in_tmp):
    """The example's state counts proposals and its margin is xi0 * decay^t:
    checked through the pure ask against a hand computation."""
    import my_methods  # noqa: F401
    from eeipu_jax import loop
    from eeipu_jax.methods import get_method
    from pipelines.synthetic import get_pipeline

    pipe = get_pipeline("synthetic3")
    config, params = loop.configure(pipe.space, "eeipu_xi", n_warmup=3, n_random=64, mc_samples=64,
                                    n_refine=1, refine_steps=2, xi0=2.0, decay=0.5)
    method = get_method("eeipu_xi")
    state = loop.init(config, 100.0, params)
    key = jax.random.key(0)
    rng = np.random.default_rng(0)
    for t in range(6):
        key, sub = jax.random.split(key)
        prop, state = loop.ask(sub, state, config)
        bo_asks = max(0, t - 2)
        assert int(state.method_state["proposals"]) == bo_asks
        if bo_asks:  # the margin this ask used: what prepare computes from the state before it
            acq, _ = method.prepare(loop.acquisition_state(sub, state, config)[0], state, config)
            assert float(acq.extra) == pytest.approx(2.0 * 0.5 ** bo_asks)
        x = np.asarray(prop.x)
        state = loop.tell(state, x, float(pipe.objective(x)), np.asarray(pipe.stage_costs(x)), 0)
        rng.uniform()
    with pytest.raises(ValueError, match="decay <= 1"):
        loop.set_params(state, config, decay=1.5)


def test_the_documented_study_and_simulator_run_as_written(in_tmp):
    exec(compile(_block("import my_methods  # registers \"eeipu_xi\"\nfrom eeipu_jax import Study\n\nstudy = "
                        "Study.create(\"runs/xi\""), "extending.md:study", "exec"), {})
    from eeipu_jax import Study

    study = Study.load("runs/xi")
    assert study.method == "eeipu_xi" and len(study.trials) == 8
    bo_trials = [t for t in study.trials if not t.warmup]
    assert len(bo_trials) == 4 and all(np.isfinite(t.score) for t in bo_trials)  # proposed by its score
    ns = {}
    exec(compile(_block("import jax\nimport my_methods"), "extending.md:simulate", "exec"), ns)
    run = ns["run"]
    assert len(run.y) == 12 and run.n_bo == 7


def test_the_documented_parallel_study_runs_as_written(in_tmp):
    pytest.importorskip("ray")
    from eeipu_jax.runtime import parallel
    from eeipu_jax.runtime.records import read_trials

    started = parallel.connect(num_cpus=2)  # a local Ray of the reference machine's size
    try:
        ns = {}
        exec(compile(_block("import my_methods  # registers \"eeipu_xi\"\nfrom eeipu_jax import Study\n\n"
                            "study = Study.create(\"runs/xi-w2\""), "extending.md:parallel", "exec"), ns)
    finally:
        if started:
            import ray

            ray.shutdown()
    assert ns["summary"]["parallel"]["workers"] == 2
    records = read_trials(os.path.join("runs", "xi-w2", "trials.jsonl"))
    assert len(records) == 8 and {r["worker"] for r in records} == {0, 1}
    assert all(np.isfinite(r["score"]) and not r["fallback"] for r in records if not r["warmup"])
