"""Synthetic pipelines: test functions, seeded stage costs, warm-up cost, layout."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eeipu_jax.design import cost_aware_design
from pipelines import synthetic as syn


@pytest.mark.parametrize(
    "key, x, value",
    [
        # known minima of the (un-negated) standard functions
        ("branin2", [math.pi, 2.275], -0.397887),
        ("branin2", [9.42478, 2.475], -0.397887),
        ("beale2", [3.0, 0.5], 0.0),
        ("hartmann3", [0.114614, 0.555649, 0.852547], 3.86278),
        ("levy2", [1.0, 1.0], 0.0),
        ("ackley3", [0.0, 0.0, 0.0], 0.0),
        ("rosenbrock2", [1.0, 1.0], 0.0),
        ("styblinski2", [-2.903534, -2.903534], 2 * 39.16599),
        ("holdertable2", [8.05502, 9.66459], 19.2085),
        ("michale2", [2.20, 1.57], 1.8013),
    ],
)
def test_functions_at_known_optima(key, x, value):
    fn, k, _ = syn.FUNCTIONS[key]
    assert float(fn(jnp.asarray(x, jnp.float32))) == pytest.approx(value, abs=2e-3)


def test_beale_value_by_hand():
    x1, x2 = 1.3, -0.7
    ref = (1.5 - x1 + x1 * x2) ** 2 + (2.25 - x1 + x1 * x2**2) ** 2 + (2.625 - x1 + x1 * x2**3) ** 2
    assert float(syn.FUNCTIONS["beale2"][0](jnp.asarray([x1, x2]))) == pytest.approx(-ref, rel=1e-5)


def test_cost_coefficients_match_the_authors_draws():
    # (g, a, b) with g in [cos, sin, logistic, poly]; rows from the published table
    assert [syn.cost_coefficients(0, j) for j in range(3)] == [(3, 18, 12), (1, 7, 26), (0, 7, 15)]
    assert [syn.cost_coefficients(1, j) for j in range(3)] == [(1, 19, 39), (1, 16, 39), (1, 16, 20)]
    assert [syn.cost_coefficients(2, j) for j in range(3)] == [(0, 11, 11), (0, 15, 36), (3, 20, 36)]
    assert syn.cost_coefficients(9, 2) == (2, 17, 40)


def test_stage_costs_of_the_3_stage_pipeline_by_hand():
    p = syn.get_pipeline("synthetic3")
    x = np.array([1.2, 3.1, -0.4, 1.5, 0.2, -1.1, 0.7])
    c = np.asarray(p.stage_costs_raw(jnp.asarray(x, jnp.float32)))
    c0 = ((18 * x[0] ** 2 + 12) ** 2 + (7 * np.sin(x[1]) + 26) ** 2) / 1000
    c1 = ((19 * np.sin(x[2]) + 39) ** 2 + (16 * np.sin(x[3]) + 39) ** 2 + (16 * np.sin(x[4]) + 20) ** 2) / 1500
    c2 = ((11 * np.cos(x[5]) + 11) ** 2 + (15 * np.cos(x[6]) + 36) ** 2) / 1000
    np.testing.assert_allclose(c, [c0, c1, c2], rtol=1e-5)
    y = float(p.objective_raw(jnp.asarray(x, jnp.float32)))
    ref = sum(float(syn.FUNCTIONS[f][0](jnp.asarray(x[s]))) for f, s in
              [("levy2", slice(0, 2)), ("hartmann3", slice(2, 5)), ("beale2", slice(5, 7))])
    assert y == pytest.approx(ref, rel=1e-6)
    assert p.optimum == pytest.approx(3.3394, abs=1e-3)


def test_layout_and_unit_mapping():
    p = syn.get_pipeline("synthetic10")
    assert p.n_stages == 10 and p.dim == sum(p.dims) and p.budget == 1500
    assert p.space.dim == p.dim and p.space.stage_of_column == p.stage_of_column
    u = np.random.default_rng(0).uniform(size=p.dim)
    raw = np.asarray(p.to_raw(jnp.asarray(u, jnp.float32)))
    np.testing.assert_allclose(raw, p.space.from_unit_array(u), rtol=1e-5, atol=1e-5)


def test_generator_and_errors():
    a, b = syn.random_pipeline(7, 3), syn.random_pipeline(7, 3)
    assert a == b and a.n_stages == 7 and a.name == "random7_3"
    assert syn.get_pipeline("random7_3") == a
    assert syn.random_pipeline(7, 4) != a
    u = jnp.full((a.dim,), 0.5)
    assert np.isfinite(float(a.objective(u))) and np.all(np.asarray(a.stage_costs(u)) > 0)
    with pytest.raises(ValueError, match="n_stages"):
        syn.random_pipeline(1, 0)
    with pytest.raises(ValueError, match="unknown synthetic pipeline"):
        syn.get_pipeline("nope")
    with pytest.raises(ValueError, match="unknown function"):
        syn.SyntheticPipeline("x", ("foo2",), (2,), ((0, 1),), 10.0)


def test_cost_aware_warmup_matches_the_logged_warmup_cost():
    """The authors' logs: warm-up cost 72.1 (61-85 over 10 trials) on the
    3-stage pipeline and 43.4 on the later 3-stage layout."""
    for name, lo, hi in [("synthetic3", 58.0, 86.0), ("synthetic3_head", 38.0, 50.0)]:
        p = syn.get_pipeline(name)
        design = jax.jit(jax.vmap(lambda k: cost_aware_design(k, 10, p.dim, p.total_cost, to_raw=p.to_raw)))
        X = design(jax.random.split(jax.random.key(0), 20))
        b0 = np.asarray(jax.vmap(jax.vmap(p.total_cost))(X)).sum(1)
        assert lo < b0.mean() < hi, (name, b0.mean())


def test_cost_aware_design_procedure_against_a_loop():
    """The jitted design equals a direct NumPy implementation of the procedure."""
    p = syn.get_pipeline("synthetic3")
    key = jax.random.key(3)
    X = np.asarray(cost_aware_design(key, 4, p.dim, p.total_cost, to_raw=p.to_raw))
    keys = jax.random.split(key, 4)
    chosen = []
    for i in range(4):
        cand = np.asarray(jax.random.uniform(keys[i], (10, p.dim)))
        cost = np.asarray(jax.vmap(p.total_cost)(jnp.asarray(cand)))
        raw = np.asarray(jax.vmap(p.to_raw)(jnp.asarray(cand)))
        alive = list(range(10))
        r = 0
        while len(alive) > 1:
            if r % 2 == 1 and chosen:
                raw_chosen = np.asarray(jax.vmap(p.to_raw)(jnp.asarray(np.array(chosen))))
                sims = {a: (raw[a] @ raw_chosen.T).max() for a in alive}
                alive.remove(max(sims, key=sims.get))
            else:
                alive.remove(max(alive, key=lambda a: cost[a]))
            r += 1
        chosen.append(cand[alive[0]])
    np.testing.assert_allclose(X, np.array(chosen), rtol=1e-6)


def test_stage_regret_splits_the_regret_by_stage(tmp_path):
    """Per-stage regrets of a run's best point add up to optimum - best y, and a
    point at a stage's known optimum has zero regret in that stage."""
    from experiments import common
    from paper_figures.stage_regret import stage_regret

    pipe = syn.get_pipeline("synthetic3")
    # Beale's optimum (3, 0.5) lies outside [-2, 2]^2; put levy2 at its optimum (1, 1)
    # and hartmann3 at its optimum, beale2 anywhere.
    x_opt = np.array([1.0, 1.0, 0.114614, 0.555649, 0.852547, 0.5, -1.0])
    x_bad = np.array([4.0, 0.5, -1.5, 1.5, -0.5, 1.0, 1.0])
    y = [float(pipe.objective_raw(jnp.asarray(x))) for x in (x_bad, x_opt)]
    trials = [dict(x=x.tolist(), y=v) for x, v in zip((x_bad, x_opt), y)]
    table = stage_regret([dict(pipeline="synthetic3", method="m", seed=0, trials=trials)])
    reg = table["synthetic3"]["m"]["mean"]
    assert reg.sum() == pytest.approx(pipe.optimum - y[1], abs=1e-4)
    assert reg[0] == pytest.approx(0.0, abs=1e-4) and reg[1] == pytest.approx(0.0, abs=1e-4)
    yv = -((1.5 - 0.5 + 0.5 * -1.0) ** 2 + (2.25 - 0.5 + 0.5 * 1.0) ** 2 + (2.625 - 0.5 + 0.5 * -1.0) ** 2)
    assert reg[2] == pytest.approx(-0.52334 - yv, abs=1e-3)
    assert table["synthetic3"]["m"]["found"][:2].tolist() == [True, True]
