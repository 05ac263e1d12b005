"""Memoization off by name (``<method>_nomemo``), ``top_q = 0`` refused with a pointer to it, and
synthetic pipeline layouts written on the command line."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from eeipu_jax import loop, methods, simulate
from pipelines.synthetic import FUNCTIONS, PIPELINES, get_pipeline, parse_layout

SMALL = dict(n_random=64, mc_samples=64, n_refine=2, refine_steps=5, n_per_prefix=8)


def test_nomemo_resolves_to_the_same_method_without_memoization():
    for name in methods.registered():
        base, off = methods.get_method(name), methods.get_method(f"{name}_NoMemo")
        assert off.name == f"{name}_nomemo" and not off.memoize
        assert (off.score, off.cost_model, off.propose, off.init, off.params) == (
            base.score, base.cost_model, base.propose, base.init, base.params)
    assert methods.get_method("eeipu").memoize  # the registry entry itself is untouched
    with pytest.raises(ValueError, match="_nomemo"):
        methods.get_method("eeipu_nomemo_nomemo")
    with pytest.raises(ValueError, match="unknown method"):
        methods.get_method("nope_nomemo")


@pytest.mark.slow  # two full synthetic runs compiled (~45 s); test_study covers _nomemo through a Study
def test_eeipu_nomemo_never_memoizes_and_otherwise_runs_exactly_like_eeipu_at_depth_0():
    """eeipu_nomemo scores candidates with EEIPU's acquisition at memo depth 0 only, which is
    MS_CArBO's formula (stage-wise cost GPs, cooling, no prefixes): the two runs must agree
    trial for trial, while eeipu itself memoizes on the same problem and key."""
    problem = get_pipeline("synthetic3")
    key = jax.random.key(3)
    runs = {}
    for method in ("eeipu_nomemo", "ms_carbo", "eeipu"):
        config = loop.BOConfig.from_space(problem.space, method=method, **SMALL)
        runs[method] = simulate.run_python(key, problem, config, budget=1e9, max_trials=24)
    off = runs["eeipu_nomemo"]
    assert len(off.y) == 24 and np.all(off.memo_depth == 0)
    np.testing.assert_array_equal(off.X, runs["ms_carbo"].X)
    np.testing.assert_array_equal(off.y, runs["ms_carbo"].y)
    np.testing.assert_array_equal(off.eta, runs["ms_carbo"].eta)
    assert np.any(runs["eeipu"].memo_depth > 0)  # the suffix matters: eeipu memoizes here


def test_top_q_zero_is_refused_with_a_pointer_to_nomemo(tmp_path, capsys):
    from experiments import synthetic

    code = synthetic.main(["--config", "synthetic_smoke", "--out", str(tmp_path / "res"), "--workers", "1",
                           "--set", "bo={'top_q': 0}"])
    err = capsys.readouterr().err
    assert code == 2 and "bo.top_q=0" in err and "eeipu_nomemo" in err
    assert not (tmp_path / "res").exists()


# ----------------------------------------------------------------- layouts
def test_the_papers_pipeline_written_as_a_layout_is_synthetic3():
    p = parse_layout("levy2[0,5]-hartmann3[-2,2]-beale2[-2,2]@400")
    q = PIPELINES["synthetic3"]
    assert (p.functions, p.dims, p.boxes, p.budget) == (q.functions, q.dims, q.boxes, q.budget)
    assert p.name == "levy2[0,5]-hartmann3[-2,2]-beale2[-2,2]@400"
    u = np.linspace(0.1, 0.9, 7, dtype=np.float32)
    assert float(p.objective(u)) == float(q.objective(u))


def test_layout_defaults_extra_dimensions_and_spaces():
    p = get_pipeline(" levy2:4[0, 5] - ackley3 ")  # spaces ignored; get_pipeline parses layouts
    assert p.functions == ("levy2", "ackley3") and p.dims == (4, 3)
    assert p.boxes == ((0.0, 5.0), FUNCTIONS["ackley3"][2]) and p.budget == 300.0  # 150 per stage
    assert p.name == "levy2:4[0,5]-ackley3[-3,3]@300"
    assert p.space.stage_of_column == (0, 0, 0, 0, 1, 1, 1)
    # Columns past the function's dimension change the cost, not the objective.
    u = np.full(7, 0.3, np.float32)
    v = u.copy()
    v[3] = 0.9
    assert float(p.objective(u)) == float(p.objective(v))
    assert float(p.stage_costs(u)[0]) != float(p.stage_costs(v)[0])
    assert get_pipeline(p.name) == p  # the canonical name parses back to the same pipeline


@pytest.mark.parametrize(
    "layout, message",
    [
        ("levy2", "unknown synthetic pipeline"),
        ("levy2-", "stage 1 ''"),
        ("levy2@400", "at least two stages"),
        ("foo2-levy2", "unknown function 'foo2'"),
        ("levy2[5,0]-beale2", "empty box"),
        ("levy2[0,inf]-beale2", "finite"),
        ("levy2[0,x]-beale2", "not a number"),
        ("levy2[0;5]-beale2", "is not 'function'"),
        ("levy2:1-beale2", "needs at least 2 hyperparameters"),
        ("levy2-beale2@0", "budget must be positive"),
        ("levy2-beale2@x", "budget 'x' is not a number"),
        ("levy2-beale2@1@2", "more than one"),
    ],
)
def test_bad_layouts_are_refused_with_the_part_named(layout, message):
    with pytest.raises(ValueError, match=__import__("re").escape(message)):
        get_pipeline(layout)


def test_synthetic_cli_accepts_a_layout_and_refuses_a_bad_one(tmp_path, capsys):
    from experiments import common, synthetic

    cfg = common.load_checked_config("synthetic_smoke", [
        "pipelines=['levy2:4[0,5]-hartmann3[-2,2]-ackley3-beale2[-2,2]@600']",
        "methods=['eeipu','eeipu_nomemo']",
    ])
    synthetic.check_config(cfg)  # the README's layout example is a valid config
    code = synthetic.main(["--config", "synthetic_smoke", "--out", str(tmp_path / "res"), "--workers", "1",
                           "--set", "pipelines=['levy2[5,0]-beale2']"])
    err = capsys.readouterr().err
    assert code == 2 and "empty box" in err and err.count("\n") == 1
    assert not (tmp_path / "res").exists()
