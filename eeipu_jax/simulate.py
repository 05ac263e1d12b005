"""Simulated BO runs on pipelines whose objective and stage costs are JAX functions.

Drivers over the same pure step (:func:`sim_step`: ``ask``, the simulated
run, ``tell``), for synthetic benchmarks:

* :func:`run_python` -- a Python loop over the jitted step (the shape of a
  real tuning run);
* :func:`run_jitted` -- the whole loop (the step and the budget check) under
  ``lax.while_loop``, over a batch of seeds (``vmap``-ed in lockstep, or
  ``lax.map``-ped one after the other on CPU). The data grow in capacity
  buckets (16, 32, 64, ...); each bucket is one jitted segment, so a run
  compiles once per (problem, method, capacity), never per iteration;
* :func:`run_async` -- ``W`` workers at once, event-driven by the simulated
  stage costs, through the host ``ask``/``tell`` with pending rows.

The first two consume keys identically and ask at the same capacities, so for
the same key they produce the same trajectory (up to float rounding of
batched vs unbatched kernels, which the tests bound). Every driver takes the
run's :class:`~eeipu_jax.config.Params` (``params``; default: the method's
defaults), the numbers a sweep varies without compiling anew.

A *problem* is any hashable object with ``objective(u)``, ``stage_costs(u)``
(``(K,)``), ``to_raw(u)`` and ``total_cost(u)`` on unit-cube points, e.g.
:class:`pipelines.synthetic.SyntheticPipeline`.

**Simulated memoization.** After every trial the simulated cache holds, under
``cache_policy="top_q"`` (the runtime's default policy), exactly the prefixes
of :func:`eeipu_jax.loop.prefix_pool`, the pool the optimizer proposes from
(the same function decides both, for every ``prefix_pool`` and
``prefix_select`` setting), or, under ``"all"``, every prefix of every
finished trial. A proposal restores its depth-``j`` prefix only if the cache
holds a prefix with the same stage ``0 .. j-1`` values (content-addressed, as
the real cache's keys are); it is then charged ``epsilon`` per restored stage
plus the true cost of the other stages, while the cost GPs learn the full
stage costs. A memoized proposal that misses runs from scratch and is charged
in full; :attr:`RunResult.proposed_depth` records what was proposed, so misses
can be counted.
"""

from __future__ import annotations

import functools
import logging
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from eeipu_jax import design as designlib
from eeipu_jax.cpu import jit
from eeipu_jax import loop
from eeipu_jax.utils import collector_paused

__all__ = ["RunResult", "AsyncResult", "warmup_design", "initial_state", "sim_step", "run_python", "run_jitted",
           "stack_params", "run_async",
           "resolve_batching", "is_cached", "check_policy"]

logger = logging.getLogger(__name__)


class RunResult(NamedTuple):
    """One run's trajectory (NumPy arrays; rows in trial order, warm-up first).

    ``eta`` and ``proposed_depth`` are NaN / -1 for warm-up rows; a BO row
    with ``proposed_depth > memo_depth`` was a cache miss.
    """

    X: np.ndarray  # (n, d) unit cube
    y: np.ndarray  # (n,)
    stage_costs: np.ndarray  # (n, K) full stage costs
    memo_depth: np.ndarray  # (n,) stages restored
    charged: np.ndarray  # (n,) cost charged to the budget
    eta: np.ndarray  # (n,) cooling exponent of the ask
    n_warmup: int
    budget: float
    n_fallback: int = 0  # BO asks whose every candidate scored non-finite (see eeipu_jax.loop)
    proposed_depth: np.ndarray | None = None  # (n,) memo depth the optimizer proposed (-1: warm-up)

    @property
    def n_misses(self) -> int:
        """Memoized proposals whose prefix the cache did not hold."""
        if self.proposed_depth is None:
            return 0
        return int(np.sum(self.proposed_depth > self.memo_depth))

    @property
    def spent(self) -> np.ndarray:
        return np.cumsum(self.charged)

    @property
    def best(self) -> np.ndarray:
        y = np.where(np.isfinite(self.y), self.y, -np.inf)
        return np.maximum.accumulate(y)

    @property
    def n_bo(self) -> int:
        return len(self.y) - self.n_warmup


def warmup_design(key, problem, config: loop.BOConfig, kind: str = "cost_aware"):
    """The shared initial design: ``"cost_aware"`` (the authors') or ``"random"``."""
    if kind == "cost_aware":
        return designlib.cost_aware_design(
            key, config.n_warmup, config.dim, problem.total_cost, to_raw=problem.to_raw, snap=config.snap
        )
    if kind == "random":
        return designlib.random_design(key, config.n_warmup, config.dim, config.snap)
    raise ValueError(f"warm-up kind must be 'cost_aware' or 'random', got {kind!r}")


_POLICIES = ("top_q", "all")


def check_policy(policy: str) -> str:
    """``policy`` if it is a known simulated cache policy, else ``ValueError`` (host side)."""
    if policy not in _POLICIES:
        raise ValueError(f"cache_policy must be 'top_q' or 'all', got {policy!r}")
    return policy


def is_cached(state: loop.BOState, config: loop.BOConfig, policy: str, x, depth):
    """Whether the simulated cache holds the depth-``depth`` prefix of ``x``.

    ``"top_q"``: the prefixes of :func:`eeipu_jax.loop.prefix_pool` (what the
    optimizer may propose); ``"all"``: the prefixes of every finished trial.
    A prefix is held if some kept row has the same stage ``0 .. depth-1``
    columns (exact equality, as a content-addressed cache key). Depth 0
    restores nothing (``False``).
    """
    check_policy(policy)
    mask = jnp.asarray(config.prefix_masks)[depth]
    same = jnp.all(jnp.where(mask[None, :], state.X == x[None, :], True), axis=1)  # (N,)
    if policy == "all":
        N = state.X.shape[0]
        held = same & (jnp.arange(N) < state.n) & ~state.failed
    else:
        pool = loop.prefix_pool(state, config)
        row = jnp.clip(depth - 1, 0, pool.source.shape[0] - 1)
        held = pool.ok[row] & same[pool.source[row]]
    return (depth > 0) & jnp.any(held)


def _simulate(state, prop, problem, config, policy):
    """Run one proposal on the simulated pipeline: ``(y, stage_costs, depth)``."""
    hit = is_cached(state, config, policy, prop.x, prop.memo_depth)
    depth = jnp.where(hit, prop.memo_depth, 0)
    return problem.objective(prop.x), problem.stage_costs(prop.x), depth


def _init_run(key, budget, params, problem, config, kind, capacity):
    """:func:`_init_run_jit`, the state marked with ``config``'s space (the
    compiled program is shared by configs of spaces of the same shape)."""
    state, key = _init_run_jit(key, budget, params, problem, config, kind, capacity)
    return state._replace(space_id=jnp.full_like(state.space_id, config.space_id)), key


@functools.partial(jit, static_argnames=("problem", "config", "kind", "capacity"))
def _init_run_jit(key, budget, params, problem, config, kind, capacity):
    """The state after the warm-up design is told, and the key of the BO loop
    (``budget`` and ``params`` traced: one compile for every setting)."""
    k_design, k_loop = jax.random.split(key)
    X0 = warmup_design(k_design, problem, config, kind)
    state = loop.empty(config, budget, params, loop.capacity_for(config.n_warmup + 1, capacity))

    def body(i, s):
        x = X0[i]
        return loop.tell_traced(s, x, problem.objective(x), problem.stage_costs(x), 0)

    state = jax.lax.fori_loop(0, config.n_warmup, body, state)
    return state, k_loop


def initial_state(key, problem, config: loop.BOConfig, budget: float | None = None, *,
                  params: loop.Params | None = None, warmup: str = "cost_aware", capacity: int = 32):
    """``(state, key)``: the state once the warm-up design is told (every method
    of a seed shares it: it depends on the key and the problem only), and the
    key of the BO loop that follows. What every driver here starts from."""
    budget = float(problem.budget if budget is None else budget)
    return _init_run(key, budget, _params(config, params), problem, config, warmup, capacity)


def _params(config, params):
    """The run's params, validated, as float32 arrays (host side)."""
    p = loop.default_params(config) if params is None else loop.check_params(params, config.method_def)
    return jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), p)


def sim_step(key, state, problem, config, policy):
    """One BO iteration on a simulated pipeline, pure and traceable: ask, run
    the proposal (:func:`is_cached` decides what it restores), tell.

    Returns:
        ``(state, proposal)``.
    """
    prop, state = loop.ask_traced(key, state, config)
    y, costs, depth = _simulate(state, prop, problem, config, policy)
    return loop.tell_traced(state, prop.x, y, costs, depth), prop


_sim_step = jit(sim_step, static_argnames=("problem", "config", "policy"))


def _done(state, max_trials):
    return (state.spent >= state.budget) | (state.n >= max_trials)


# ------------------------------------------------------------ Python driver
def run_python(
    key,
    problem,
    config: loop.BOConfig,
    budget: float | None = None,
    *,
    params: loop.Params | None = None,
    cache_policy: str = "top_q",
    warmup: str = "cost_aware",
    max_trials: int = 1000,
    capacity: int = 32,
    callback=None,
) -> RunResult:
    """One simulated run with a Python loop over the jitted :func:`sim_step`.

    Args:
        key: PRNG key of the run (the warm-up design and every ask derive from it).
        problem: the simulated pipeline.
        config: BO settings (method, warm-up size, ...).
        budget: total budget (default ``problem.budget``).
        params: the run's numbers (default: the method's defaults); a
            memoized stage is charged ``params.epsilon``.
        cache_policy: ``"top_q"`` or ``"all"``.
        warmup: ``"cost_aware"`` or ``"random"`` initial design.
        max_trials: hard cap on trials (warm-up included).
        capacity: initial capacity (rows); doubles when full. Each capacity
            compiles ``ask`` once.
        callback: optional ``f(state, proposal)`` after each BO trial (progress bars).

    Returns:
        The :class:`RunResult`.
    """
    budget = float(problem.budget if budget is None else budget)
    check_policy(cache_policy)
    state, key = _init_run(key, budget, _params(config, params), problem, config, warmup, capacity)
    trace = [(np.nan, -1.0)] * config.n_warmup  # (eta, proposed memo depth) per trial
    while not bool(_done(state, max_trials)):
        state = loop.ensure_capacity(state)
        key, sub = jax.random.split(key)
        with collector_paused():
            state, prop = _sim_step(sub, state, problem, config, cache_policy)
        trace.append((float(prop.eta), float(prop.memo_depth)))
        if bool(prop.fallback):
            logger.warning(
                "trial %d: every candidate scored non-finite (score %s); proposed a uniform random point",
                int(state.n) - 1, float(prop.score),
            )
        if callback is not None:
            callback(state, prop)
    return _result(state, np.asarray(trace), config.n_warmup)


def _result(state, trace, n_warmup) -> RunResult:
    """``trace``: ``(>= n, 2)`` rows of (eta, proposed memo depth) per trial."""
    n = int(state.n)
    return RunResult(
        X=np.asarray(state.X[:n]),
        y=loop.objective_values(state),
        stage_costs=np.asarray(state.stage_costs[:n]),
        memo_depth=np.asarray(state.memo_depth[:n]),
        charged=np.asarray(state.charged[:n]),
        eta=np.asarray(trace[:n, 0], np.float64),
        n_warmup=n_warmup,
        budget=float(state.budget),
        n_fallback=int(state.n_fallback),
        proposed_depth=np.where(np.arange(n) < n_warmup, -1, trace[:n, 1]).astype(np.int32),
    )


# ------------------------------------------------------------ jitted driver
def _grow_batched(state, trace, capacity):
    grown = jax.vmap(lambda s: loop.grow(s, capacity))(state)
    pad = capacity - trace.shape[1]
    return grown, jnp.concatenate([trace, jnp.full((trace.shape[0], pad, 2), jnp.nan, trace.dtype)], axis=1)


@functools.partial(jit, static_argnames=("problem", "config", "policy", "max_trials", "batching", "mesh"))
def _segment(state, key, trace, problem, config, policy, max_trials, batching, mesh=None):
    """Run BO iterations of every run until done or the capacity is full.

    ``batching="vmap"`` runs the batch in lockstep as one batched program
    (every step costs the whole batch until the slowest run stops);
    ``"map"`` runs them one after the other inside the same compiled program
    (``lax.map``), each for its own number of steps. With a ``mesh`` (a
    1-D mesh of devices named ``"runs"``), each device runs the same program
    on its own share of the batch (``jax.shard_map``), the shares side by
    side: under ``"map"`` a run executes the program it executes on one
    device, so the results do not depend on the number of devices (equal to
    1e-5 in the tests under XLA's default compile options; with the library's
    CPU options, :mod:`eeipu_jax.cpu`, the partitioned program may round a
    few ulps differently, which a run can amplify).
    """

    def one(state, key, trace):
        N = state.X.shape[0]

        def cond(c):
            s, _, _ = c
            return ~_done(s, max_trials) & (s.n < N)

        def body(c):
            s, k, e = c
            # Under vmap this body also runs for seeds that are already done
            # (the loop keeps their old carry), and a batched fit runs as many
            # Adam steps as its slowest member: a seed that stopped on a
            # refit step would make every later step of the batch refit, and
            # on a cold one, cold. Finished seeds therefore compute a
            # (discarded) step with no refit due (or a warm one, when every
            # ask refits).
            finished = _done(s, max_trials) | (s.n >= N)
            s = s._replace(n_fit=jnp.where(finished, s.n, s.n_fit),
                           n_refits=jnp.where(finished, jnp.ones_like(s.n_refits), s.n_refits))
            k, sub = jax.random.split(k)
            i = s.n
            s, prop = sim_step(sub, s, problem, config, policy)
            e = e.at[i].set(jnp.stack([prop.eta, prop.memo_depth.astype(e.dtype)]))
            return s, k, e

        return jax.lax.while_loop(cond, body, (state, key, trace))

    def local(state, key, trace):
        if batching == "vmap":
            return jax.vmap(one)(state, key, trace)
        return jax.lax.map(lambda a: one(*a), (state, key, trace))

    if mesh is None:
        return local(state, key, trace)
    from jax.sharding import PartitionSpec

    spec = PartitionSpec("runs")
    return jax.shard_map(local, mesh=mesh, in_specs=spec, out_specs=spec, check_vma=False)(state, key, trace)


def resolve_batching(batching: str) -> str:
    """``"map"`` or ``"vmap"`` for a ``batching`` argument of :func:`run_jitted`."""
    if batching == "auto":
        return "map" if jax.default_backend() == "cpu" else "vmap"
    if batching not in ("map", "vmap"):
        raise ValueError(f"batching must be 'auto', 'map' or 'vmap', got {batching!r}")
    return batching


def run_jitted(
    keys,
    problem,
    config: loop.BOConfig,
    budget: float | None = None,
    *,
    params: loop.Params | None = None,
    cache_policy: str = "top_q",
    warmup: str = "cost_aware",
    max_trials: int = 1000,
    capacity: int = 32,
    on_segment=None,
    batching: str = "auto",
    devices=None,
    concurrent: bool | None = None,
) -> list[RunResult]:
    """Simulated runs for a batch of keys (one per run), fully jitted: a sweep of
    seeds, or of seeds x settings, as one compiled program per capacity.

    Arguments as in :func:`run_python`; ``keys`` has a leading run axis of
    length ``B``. ``params`` is one :class:`~eeipu_jax.config.Params` shared by
    every run, or a batch of them (:func:`stack_params`: every leaf with a
    leading axis of length ``B``): the floats are traced, so a sweep over
    ``epsilon``, the cooling or a method's params runs in the same program as
    a sweep over seeds. ``on_segment(n_done, n_total)`` is called after each
    capacity segment.

    ``batching`` says how the runs share the compiled loop: ``"vmap"``
    (lockstep, one batched program: the choice for an accelerator, which runs
    the batch in parallel), ``"map"`` (one run after the other, each for its
    own number of steps: on a CPU core, where a batch is no faster than its
    members in turn, this avoids paying for the slowest run's iterations on
    every run) or ``"auto"`` (``"map"`` on CPU, ``"vmap"`` elsewhere). They
    give the same trajectories up to float rounding (batched and unbatched
    kernels round differently, which can make a long run drift apart).

    ``devices``: the devices to shard the batch over (default: every device
    of the default backend). With ``D > 1`` devices the batch is split into
    ``D`` equal shards on a one-axis mesh (padded with copies of the last run,
    which are dropped), each device runs its shard (in lockstep under
    ``"vmap"``, one run after the other under ``"map"``), and the results do
    not depend on ``D`` beyond float rounding.

    ``concurrent``: whether the devices run their shards at the same time,
    as one program sharded over a mesh (``jax.shard_map``), or one device
    after the other, each running the one-device program on its shard.
    Default: at the same time on accelerators, one after the other on a CPU,
    where several (simulated) CPU devices share XLA's CPU thread pool and
    jaxlib's batched LAPACK kernels can deadlock in it when the devices run
    at once (README, "Accelerators"); one after the other gives each run
    the program it runs on one device.

    Returns:
        One :class:`RunResult` per key.
    """
    budget = float(problem.budget if budget is None else budget)
    if max_trials <= config.n_warmup:
        raise ValueError(f"max_trials ({max_trials}) must exceed n_warmup ({config.n_warmup})")
    batching = resolve_batching(batching)
    check_policy(cache_policy)
    keys = jnp.asarray(keys)
    B = keys.shape[0]
    p = _batched_params(config, params, B)
    devices = list(jax.devices() if devices is None else devices)
    D = max(1, min(len(devices), B))
    pad = (-B) % D
    if pad:  # equal shards: repeat the last run, dropped from the results
        keys = jnp.concatenate([keys, jnp.repeat(keys[-1:], pad, axis=0)])
        p = jax.tree.map(lambda a: jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)]), p)
    init = jax.vmap(lambda k, q: _init_run(k, budget, q, problem, config, warmup, capacity))
    state, keys = init(keys, p)
    N = state.X.shape[1]
    trace = jnp.full((B + pad, N, 2), jnp.nan, jnp.float32)  # (eta, proposed memo depth) per trial
    if concurrent is None:
        concurrent = devices[0].platform != "cpu"
    mesh = _mesh(devices[:D]) if D > 1 and concurrent else None
    shard = _sharder(mesh) if mesh is not None else (lambda tree: tree)
    state, keys, trace = shard((state, keys, trace))

    def segment(state, keys, trace):
        args = (problem, config, cache_policy, max_trials, batching)
        if D == 1 or mesh is not None:
            return _segment(state, keys, trace, *args, mesh)
        return _one_device_after_another(devices[:D], lambda *t: _segment(*t, *args, None), (state, keys, trace))

    while True:
        with collector_paused():
            state, keys, trace = segment(state, keys, trace)
        done = np.asarray(_done(state, max_trials))[:B]
        if on_segment is not None:
            on_segment(int(done.sum()), B)
        if done.all():
            break
        state, trace = shard(_grow_batched(state, trace, 2 * state.X.shape[1]))
    trace = np.asarray(trace)
    fallbacks = np.asarray(state.n_fallback)[:B]
    if fallbacks.any():
        logger.warning(
            "%d of %d runs had asks whose every candidate scored non-finite (uniform random points "
            "proposed instead): counts %s", int((fallbacks > 0).sum()), B, fallbacks.tolist(),
        )
    return [
        _result(jax.tree.map(lambda a: a[i], state), trace[i], config.n_warmup) for i in range(B)
    ]


def stack_params(params: list) -> loop.Params:
    """A batch of :class:`~eeipu_jax.config.Params` (one per run of
    :func:`run_jitted`) as one pytree with a leading run axis (validated)."""
    if not params:
        raise ValueError("stack_params needs at least one Params")
    structures = {jax.tree.structure(q) for q in params}
    if len(structures) != 1:
        raise ValueError("every Params of a sweep must have the same structure (the same method's params)")
    return jax.tree.map(lambda *a: np.asarray(a, np.float32), *params)


def _batched_params(config, params, B: int):
    """``params`` for ``B`` runs: one validated Params broadcast, or a batch checked run by run."""
    if params is None or np.ndim(jax.tree.leaves(params)[0]) == 0:
        p = _params(config, params)
        return jax.tree.map(lambda a: jnp.broadcast_to(a, (B,)), p)
    leaves = jax.tree.leaves(params)
    if any(np.shape(a) != (B,) for a in leaves):
        raise ValueError(f"batched params need a leading axis of {B} (one per key) on every leaf, got shapes "
                         f"{sorted({np.shape(a) for a in leaves})}")
    for i in range(B):  # each run's settings validated like a single run's
        _params(config, jax.tree.map(lambda a: float(np.asarray(a)[i]), params))
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)


def _one_device_after_another(devices, fn, tree):
    """``fn(*tree)`` on each device's equal share of the batch (the leading
    axis), one device after the other (each waits for the previous one), the
    results gathered on the first device."""
    m = jax.tree.leaves(tree)[0].shape[0] // len(devices)
    outs = []
    for i, device in enumerate(devices):
        share = jax.device_put(jax.tree.map(lambda a: a[i * m:(i + 1) * m], tree), device)
        out = jax.block_until_ready(fn(*share))
        outs.append(jax.device_put(out, devices[0]))
    return jax.tree.map(lambda *a: jnp.concatenate(a), *outs)


def _mesh(devices):
    """A 1-D mesh over ``devices``, its axis named ``"runs"``."""
    from jax.sharding import Mesh

    return Mesh(np.asarray(devices), ("runs",))


def _sharder(mesh):
    """Put a batched pytree on ``mesh``'s devices, split along its leading axis."""
    from jax.sharding import NamedSharding, PartitionSpec

    def put(tree):
        return jax.tree.map(lambda a: jax.device_put(a, NamedSharding(mesh, PartitionSpec("runs"))), tree)

    return put


# ------------------------------------------------------ asynchronous driver
class AsyncResult(NamedTuple):
    """One simulated asynchronous run (NumPy arrays; rows in the order the
    trials were started, warm-up first).

    Times are simulated: a stage takes its cost, a restored stage
    ``epsilon``, and a trial that reuses the prefix of a running trial waits
    until that trial has computed it (``wait``).
    """

    X: np.ndarray  # (n, d) unit cube
    y: np.ndarray  # (n,) objective
    start: np.ndarray  # (n,) time the trial was given to a worker
    end: np.ndarray  # (n,) time it finished
    wait: np.ndarray  # (n,) time it waited for a running trial's prefix
    memo_depth: np.ndarray  # (n,) stages restored
    proposed_depth: np.ndarray  # (n,) depth proposed (-1: warm-up)
    from_pending: np.ndarray  # (n,) bool: the prefix came from a trial still running at ask time
    charged: np.ndarray  # (n,) cost charged to the budget (epsilon per restored stage + the rest)
    worker: np.ndarray  # (n,) worker that ran it
    n_warmup: int
    budget: float

    @property
    def n_misses(self) -> int:
        return int(np.sum(self.proposed_depth > self.memo_depth))

    def best_at(self, t) -> float:
        """Best objective among the trials finished by time ``t``."""
        done = self.end <= t
        return float(np.max(self.y[done])) if done.any() else -np.inf


@functools.lru_cache(maxsize=None)
def _problem_fns(problem):
    return jit(problem.objective), jit(problem.stage_costs)


def run_async(
    key,
    problem,
    config: loop.BOConfig,
    budget: float | None = None,
    workers: int = 2,
    *,
    params: loop.Params | None = None,
    cache_policy: str = "top_q",
    warmup: str = "cost_aware",
    max_trials: int = 1000,
    capacity: int = 32,
) -> AsyncResult:
    """A simulated asynchronous run: ``workers`` trials at once, event-driven
    by the simulated stage costs, so the price of asynchrony can be measured
    without a cluster.

    The warm-up design is run first (its trials spread over the workers);
    BO starts once it is all told. Then each time a worker frees up, the
    finished trial is told and the worker asks with the running trials as
    :class:`eeipu_jax.loop.Pending` rows (capacity ``workers``). A memoized
    proposal whose prefix is a told trial's restores it from the simulated
    cache (:func:`is_cached`, a miss runs from scratch); one whose prefix is a
    running trial's (``source >= N``) waits until that trial has computed
    the prefix's last stage, then restores it (single flight: the prefix is
    computed once). A trial is charged ``epsilon`` per restored stage plus
    the cost of the others; no new trial starts once the spent plus the
    charges of the running trials reach the budget.

    Args:
        key: PRNG key of the run.
        problem: the simulated pipeline (as for :func:`run_python`).
        config: BO settings.
        budget: summed-cost budget (default ``problem.budget``).
        workers: concurrent trials ``W >= 1``.
        params: the run's numbers (default: the method's defaults);
            ``params.epsilon`` is the price and simulated duration of a
            restored stage.
        cache_policy: simulated cache of told trials, ``"top_q"`` or ``"all"``.
        warmup: ``"cost_aware"`` or ``"random"`` initial design.
        max_trials: hard cap on trials started (warm-up included).
        capacity: initial state capacity.

    Returns:
        An :class:`AsyncResult`.
    """
    import heapq

    workers = int(workers)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    budget = float(problem.budget if budget is None else budget)
    check_policy(cache_policy)
    objective, costs_fn = _problem_fns(problem)
    K, d = config.n_stages, config.dim
    k_design, key = jax.random.split(key)
    design = list(np.asarray(warmup_design(k_design, problem, config, warmup)))
    params = loop.default_params(config) if params is None else params
    state = loop.init(config, budget, params, capacity=capacity)
    epsilon = float(params.epsilon)
    trials = []  # dicts, in start order
    running = {}  # worker -> trial index
    slots = [None] * workers  # pending slot -> trial index (a trial keeps its slot while it runs)
    events = []  # (end, seq, worker)
    free = list(range(workers))
    now = 0.0

    def committed():
        return sum(trials[i]["charged"] for i in running.values())

    def start(worker, x, depth, proposed, source_trial, wait_until):
        x = np.asarray(x, np.float32)
        y = float(objective(x))
        c = np.asarray(costs_fn(x), np.float64)
        begin = max(now, wait_until)
        durations = np.where(np.arange(K) < depth, epsilon, c)
        stage_end = begin + np.cumsum(durations)
        t = dict(x=x, y=y, costs=c, depth=depth, proposed=proposed, from_pending=source_trial is not None,
                 start=now, wait=begin - now, end=float(stage_end[-1]), stage_end=stage_end,
                 charged=float(np.sum(durations)), worker=worker)
        trials.append(t)
        running[worker] = len(trials) - 1
        slots[slots.index(None)] = len(trials) - 1
        heapq.heappush(events, (t["end"], len(trials), worker))

    while True:
        while free and len(trials) < max_trials and float(state.spent) + committed() < budget:
            if design:
                start(free.pop(0), design.pop(0), 0, -1, None, now)
                continue
            if int(state.n) < config.n_warmup:
                break  # the warm-up is still running: BO starts once it is told
            worker = free.pop(0)
            live = [i for i in slots if i is not None]
            pend = loop.pending_from(
                np.array([trials[i]["x"] for i in live], np.float32).reshape(-1, d),
                [trials[i]["depth"] for i in live], workers, d,
            )
            # pending slot p of the ask -> trial index (live trials packed in slot order)
            slot_trial = dict(enumerate(live))
            key, sub = jax.random.split(key)
            # Nothing running: the single-worker step (so workers=1 is run_python's run).
            prop, state = loop.ask(sub, state, config, pend if live else None)
            N = state.X.shape[0]
            x, j, src = np.asarray(prop.x), int(prop.memo_depth), int(prop.source)
            if j > 0 and src >= N:
                r = trials[slot_trial[src - N]]
                start(worker, x, j, j, r, float(r["stage_end"][j - 1]))
            elif j > 0 and bool(is_cached(state, config, cache_policy, jnp.asarray(x), j)):
                start(worker, x, j, j, None, now)
            else:
                start(worker, x, 0, j, None, now)
        if not events:
            break
        now, _, worker = heapq.heappop(events)
        i = running.pop(worker)
        slots[slots.index(i)] = None
        free.append(worker)
        t = trials[i]
        # The default charge (epsilon per restored stage + the others' costs) is t["charged"].
        state = loop.tell(state, t["x"], t["y"], t["costs"], t["depth"])

    return AsyncResult(
        X=np.array([t["x"] for t in trials]),
        y=np.array([t["y"] for t in trials]),
        start=np.array([t["start"] for t in trials]),
        end=np.array([t["end"] for t in trials]),
        wait=np.array([t["wait"] for t in trials]),
        memo_depth=np.array([t["depth"] for t in trials], np.int32),
        proposed_depth=np.array([t["proposed"] for t in trials], np.int32),
        from_pending=np.array([t["from_pending"] for t in trials]),
        charged=np.array([t["charged"] for t in trials]),
        worker=np.array([t["worker"] for t in trials], np.int32),
        n_warmup=config.n_warmup,
        budget=budget,
    )
