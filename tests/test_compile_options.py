"""The XLA options the library compiles its programs with (eeipu_jax.cpu.jit):
who gets them, how a user turns them off, and that they change a BO step only at
float rounding (against the same step compiled with XLA's defaults)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eeipu_jax import cpu, loop
from eeipu_jax.space import Float, SearchSpace, StageSpace


def _installed_jaxlib() -> tuple[int, ...]:
    import jaxlib.version

    return tuple(int("".join(c for c in p if c.isdigit()) or 0) for p in jaxlib.version.__version__.split(".")[:3])


# jaxlib 0.11.1 removed the classic emitters' switch: from there on only -O1 is set.
EMITTERS_KNOWN = _installed_jaxlib() < (0, 11, 1)
FAST = {"xla_cpu_use_fusion_emitters": False, "xla_backend_optimization_level": 1} if EMITTERS_KNOWN else {
    "xla_backend_optimization_level": 1}


@pytest.fixture
def env(monkeypatch):
    for var in ("EEIPU_JAX_FAST_COMPILE", "XLA_FLAGS", "JAX_PLATFORMS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(cpu, "_has_gpu_plugin", lambda: False)
    return monkeypatch


def test_the_options_are_the_fast_cpu_set_by_default(env):
    assert cpu.compiler_options() == FAST


@pytest.mark.parametrize("version, kept", [
    ((0, 10, 2), {"xla_cpu_use_fusion_emitters", "xla_backend_optimization_level"}),
    ((0, 11, 0), {"xla_cpu_use_fusion_emitters", "xla_backend_optimization_level"}),
    ((0, 11, 1), {"xla_backend_optimization_level"}),
    ((0, 12, 1), {"xla_backend_optimization_level"}),
])
def test_an_option_the_installed_xla_removed_is_not_passed(monkeypatch, version, kept):
    """Passed to jaxlib >= 0.11.1, the emitters' switch fails every compilation
    ("No such compile option"); in XLA_FLAGS it aborts the process."""
    monkeypatch.setattr(cpu, "_jaxlib_version", lambda: version)
    wanted = {"xla_cpu_use_fusion_emitters": False, "xla_backend_optimization_level": 1}
    assert set(cpu.known_options(wanted)) == kept


def test_the_installed_jaxlib_release_is_read_without_starting_jax():
    assert cpu._jaxlib_version() == _installed_jaxlib()


def test_every_option_passed_compiles_on_the_installed_xla():
    """The options the library and the tests pass are ones this XLA accepts (a removed
    one raises here, as it would at a user's first ask)."""
    for options in (cpu.FAST_CPU_COMPILE, cpu.XLA_CPU_DEFAULTS):
        assert float(jax.jit(lambda x: x * 2, compiler_options=options)(jnp.float32(1.5))) == 3.0


@pytest.mark.parametrize("value", ["0", "off", "False", "no"])
def test_eeipu_jax_fast_compile_off_gives_xlas_defaults(env, value):
    env.setenv("EEIPU_JAX_FAST_COMPILE", value)
    assert cpu.compiler_options() is None


def test_an_option_the_user_sets_in_xla_flags_is_left_to_the_user(env):
    env.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=3")
    assert cpu.compiler_options() == ({"xla_cpu_use_fusion_emitters": False} if EMITTERS_KNOWN else None)
    if EMITTERS_KNOWN:  # a jaxlib without the flag aborts the process on it
        env.setenv("XLA_FLAGS", "--xla_cpu_use_fusion_emitters=true --xla_backend_optimization_level=2")
        assert cpu.compiler_options() is None


def test_nothing_is_set_on_an_accelerator(env):
    env.setenv("JAX_PLATFORMS", "cuda")
    assert cpu.compiler_options() is None
    env.delenv("JAX_PLATFORMS")
    env.setattr(cpu, "_has_gpu_plugin", lambda: True)
    assert cpu.compiler_options() is None


def test_jit_compiles_with_the_options_and_only_its_own_functions():
    def f(x):
        return jnp.tanh(jnp.exp(x) * 2).sum()

    x = jnp.linspace(0.0, 1.0, 1000)
    ours = cpu.jit(f).lower(x).compile().as_text()
    # The test processes carry the options in XLA_FLAGS (conftest.py), where
    # compiler_options() leaves them to the flags; explicit options override flags.
    fast = jax.jit(f, compiler_options=cpu.FAST_CPU_COMPILE).lower(x).compile().as_text()
    default = jax.jit(f, compiler_options=cpu.XLA_CPU_DEFAULTS).lower(x).compile().as_text()
    if EMITTERS_KNOWN:  # -O1 against -O2 alone is the same HLO; the emitters differ in it
        assert fast != default
    fast_in_use = bool(cpu.compiler_options()) or "--xla_cpu_use_fusion_emitters=false" in os.environ.get("XLA_FLAGS", "")
    assert ours == (fast if fast_in_use else default)  # XLA's defaults under EEIPU_JAX_FAST_COMPILE=0
    want = np.tanh(np.exp(np.linspace(0.0, 1.0, 1000)) * 2).sum()
    np.testing.assert_allclose(float(cpu.jit(f)(x)), want, rtol=1e-5)


def _state(cfg, space, n, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.uniform(size=(n, space.dim))
    y = -np.sum((X - 0.3) ** 2, axis=1) + 0.1 * np.sin(7 * X[:, 0])
    costs = np.stack([1 + 3 * X[:, :2].mean(1), 1 + 3 * X[:, 2:4].mean(1), 1 + 3 * X[:, 4:].mean(1)], 1)
    state = loop.init(cfg, budget=1e9, capacity=loop.capacity_for(n + 1))
    for xi, yi, ci in zip(X, y, costs):
        state = loop.tell(state, xi, float(yi), ci, 0)
    return state


@pytest.mark.parametrize("method", ["eeipu", "ei"])
def test_a_bo_step_agrees_with_the_one_compiled_with_xlas_defaults(method):
    """One ask from the same state and key, compiled with the library's options
    and with XLA's: the fitted hyperparameters, the posterior factors and the
    proposal agree to float32 rounding (a short run then amplifies ulps, which
    is why tests/data/pinned_trajectories.npz was recorded anew)."""
    space = SearchSpace([StageSpace(f"s{k}", [Float(f"x{j}", 0.0, 1.0) for j in cols])
                         for k, cols in enumerate([(0, 1), (2, 3), (4, 5)])])
    cfg = loop.BOConfig.from_space(space, method=method, n_warmup=5, n_random=128, n_per_prefix=16,
                                   mc_samples=256, refine_steps=10)
    state = loop.canonicalize(_state(cfg, space, 24))
    key = jax.random.key(3)
    default = jax.jit(loop.ask_traced, static_argnames=("config",), compiler_options=cpu.XLA_CPU_DEFAULTS)
    ours = jax.jit(loop.ask_traced, static_argnames=("config",), compiler_options=cpu.FAST_CPU_COMPILE)
    (p0, s0), (p1, s1) = default(key, state, cfg), ours(key, state, cfg)
    for a, b in zip(jax.tree.leaves(s0.gp_params), jax.tree.leaves(s1.gp_params)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(np.asarray(s1.chol), np.asarray(s0.chol), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(np.asarray(p1.x), np.asarray(p0.x), atol=1e-3)
    np.testing.assert_allclose(float(p1.score), float(p0.score), rtol=1e-3, atol=1e-4)
    assert int(p1.memo_depth) == int(p0.memo_depth)
