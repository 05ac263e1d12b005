"""Search space: unit-cube round trips and clear errors."""

import numpy as np
import pytest

from eeipu_jax.space import Categorical, Float, Int, SearchSpace, SpaceError, StageSpace


def make_space():
    return SearchSpace(
        [
            StageSpace("prep", [Int("batch_size", 8, 64), Categorical("norm", ("none", "z", "minmax"))]),
            StageSpace("train", [Float("lr", 1e-4, 1e-1, log=True), Float("wd", 0.0, 0.5)]),
            StageSpace("eval", [Int("k", 1, 3)]),
        ]
    )


def test_shapes_and_prefix_masks():
    s = make_space()
    assert s.dim == 5 and s.n_stages == 3
    assert s.stage_of_column == (0, 0, 1, 1, 2)
    np.testing.assert_array_equal(s.prefix_mask(0), [0, 0, 0, 0, 0])
    np.testing.assert_array_equal(s.prefix_mask(2), [1, 1, 1, 1, 0])
    assert s.keys[2] == "train__lr"
    assert s.stage_slices[1] == slice(2, 4)


def test_round_trip_config_unit_config():
    s = make_space()
    cfg = {"prep": {"batch_size": 8, "norm": "minmax"}, "train": {"lr": 1e-3, "wd": 0.25}, "eval": {"k": 3}}
    u = s.to_unit(cfg)
    assert np.all((u >= 0) & (u <= 1))
    back = s.from_unit(u)
    assert back["prep"] == {"batch_size": 8, "norm": "minmax"}
    assert back["eval"] == {"k": 3}
    assert back["train"]["lr"] == pytest.approx(1e-3, rel=1e-9)
    assert back["train"]["wd"] == pytest.approx(0.25, rel=1e-12)
    # flat keys are accepted too
    flat = {f"{st}__{k}": v for st, d in cfg.items() for k, v in d.items()}
    np.testing.assert_allclose(s.to_unit(flat), u)


def test_unit_round_trip_and_bins():
    s = make_space()
    rng = np.random.default_rng(0)
    u = rng.uniform(size=(200, s.dim))
    snapped = s.snap(u)
    # snapping is idempotent and unit -> raw -> unit returns the snapped point
    np.testing.assert_allclose(s.snap(snapped), snapped)
    np.testing.assert_allclose(s.to_unit_array(s.from_unit_array(snapped)), snapped, atol=1e-12)
    # every integer gets an equal share of the cube: counts of 57 bins ~ uniform
    raw = s.from_unit_array(rng.uniform(size=(57_000, s.dim)))
    counts = np.bincount(raw[:, 0].astype(int) - 8, minlength=57)
    assert counts.min() > 800 and counts.max() < 1200
    assert set(np.unique(raw[:, 4])) == {1.0, 2.0, 3.0}
    # log-float: u = 0.5 is the geometric mean
    assert s.params[2]._from_unit(np.array(0.5), np) == pytest.approx(np.sqrt(1e-4 * 1e-1))


def test_jax_path_matches_numpy():
    import jax.numpy as jnp

    s = make_space()
    u = np.random.default_rng(1).uniform(size=(50, s.dim))
    np.testing.assert_allclose(np.asarray(s.from_unit_array(jnp.asarray(u))), s.from_unit_array(u), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(s.snap(jnp.asarray(u))), s.snap(u), atol=1e-6)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: Float("lr", 1.0, 0.5), "'lr'.*low"),
        (lambda: Float("lr", 0.0, 1.0, log=True), "'lr'.*log scale"),
        (lambda: Float("lr", 0.0, float("nan")), "'lr'.*high"),
        (lambda: Int("n", 1.5, 4), "'n'.*low must be an integer"),
        (lambda: Int("n", 3, 3), "'n'.*low"),
        (lambda: Categorical("c", ("a",)), "'c'.*at least 2"),
        (lambda: Categorical("c", ("a", "a")), "'c'.*duplicate"),
        (lambda: StageSpace("s", [Float("a", 0, 1), Float("a", 0, 2)]), "duplicate parameter name 'a'"),
        (lambda: SearchSpace([StageSpace("s", [Float("a", 0, 1)]), StageSpace("s", [Float("b", 0, 1)])]),
         "duplicate stage"),
        (lambda: Float("a__b", 0, 1), "'__'"),
        (lambda: StageSpace("s", []), "no parameters"),
    ],
)
def test_bad_definitions_name_the_field(make, match):
    with pytest.raises(SpaceError, match=match):
        make()


def test_bad_configs_name_the_field():
    s = make_space()
    good = {"prep": {"batch_size": 8, "norm": "z"}, "train": {"lr": 1e-3, "wd": 0.1}, "eval": {"k": 1}}
    with pytest.raises(SpaceError, match="unknown parameter.*prep__bs"):
        s.to_unit({**good, "prep": {"bs": 8, "norm": "z"}})
    with pytest.raises(SpaceError, match="unknown stage 'bogus'"):
        s.to_unit({**good, "bogus": {"x": 1}})
    with pytest.raises(SpaceError, match="missing parameter.*eval__k"):
        s.to_unit({k: v for k, v in good.items() if k != "eval"})
    with pytest.raises(SpaceError, match="'batch_size'.*outside"):
        s.to_unit({**good, "prep": {"batch_size": 65, "norm": "z"}})
    with pytest.raises(SpaceError, match="'batch_size'.*integer"):
        s.to_unit({**good, "prep": {"batch_size": 8.5, "norm": "z"}})
    with pytest.raises(SpaceError, match="'norm'.*not one of"):
        s.to_unit({**good, "prep": {"batch_size": 8, "norm": "l2"}})
    with pytest.raises(SpaceError, match="shape"):
        s.from_unit(np.zeros(3))
