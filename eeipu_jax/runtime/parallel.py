"""Parallel trials on Ray: where a study's trials run when W of them run at once.

This module owns the placement of a :class:`~eeipu_jax.runtime.study.Study`'s
workers on Ray (``study.optimize(workers=W, address=...)``); everything else
about a trial (asking with pending rows, single flight, telling, records,
checkpoints, the cache keep-set) is the :class:`~eeipu_jax.runtime.driver.TrialDriver`'s,
the same driver a serial study runs.

* **Ray.** ``ray`` is an optional dependency (``pip install 'eeipu-jax[ray]'``),
  imported only here and only when a parallel study runs (:func:`require_ray`).
  :func:`connect` joins the cluster at ``address`` or, without one, starts a
  local Ray bound to the loopback interface only (no dashboard; the node's IP
  is ``127.0.0.1``, so the GCS, raylet, object manager and worker ports listen
  on localhost: Ray has no authentication a network could rely on). A Ray
  already initialized in the process is used as it is.
* **Placement** (:class:`RayExecutor`). W actors
  (:class:`~eeipu_jax.runtime.driver.TrialWorker`), each with the resources of
  one trial (:class:`TrialResources`: ``num_cpus``, ``num_gpus``; Ray gives a
  GPU actor its own ``CUDA_VISIBLE_DEVICES``, so JAX in it sees only its
  device), reserved at once as one placement group of W bundles. Without an
  ``address`` (a local Ray) a trial reserves ``min(1, CPUs / W)`` CPUs by
  default, so W may exceed the machine's cores: trials often wait on I/O, a
  sleep or a GPU rather than compute. When the group cannot be placed within
  ``placement_timeout`` seconds (a cluster without the GPUs asked for, too
  few CPUs for the CPUs asked for), the study stops with a
  :class:`PlacementError` naming what was asked for and what the cluster has,
  before any trial runs; it never waits silently. An actor keeps the pipeline
  prepared and the stages' jitted functions compiled from trial to trial. All
  workers read and write one stage cache directory, which on a cluster must
  be a path every node sees (a shared POSIX filesystem: the cache's writes
  are atomic renames, its reads verify checksums).
* **Faults.** A worker that dies mid-trial (its process killed, its node
  lost) is given back to the driver as a failed trial (recorded once,
  charged its wall seconds so far) and replaced by a new actor in the same
  bundle; the study goes on. A killed driver loses only the trials in flight
  (never recorded, so never duplicated): on resume the checkpoint and
  ``trials.jsonl`` restore every finished trial and new trials are proposed.

Budget: trials are dispatched while the budget is not spent; those in flight
when it runs out finish and are recorded, so a parallel run may overshoot by
up to ``W - 1`` trials more than a sequential one. The first ``n_warmup``
told trials are random, and trials asked while fewer than ``n_warmup`` are
told are random too, so up to ``n_warmup + W - 1`` random trials run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import re
from collections.abc import Mapping
from typing import Any

from eeipu_jax.runtime.cache import StageCache
from eeipu_jax.runtime.driver import Executor, Flight, Outcome, RunSpec, TrialWorker
from eeipu_jax.runtime.pipeline import PrepareError
from eeipu_jax.runtime.settings import ConfigError

__all__ = ["require_ray", "connect", "check_address", "TrialResources", "RayExecutor", "PlacementError",
           "ClusterAuthError", "PLACEMENT_TIMEOUT"]

logger = logging.getLogger(__name__)

#: Seconds a parallel study waits for its workers to be placed before it stops with a
#: :class:`PlacementError` (a local Ray places them in well under a second; a cluster's
#: autoscaler may need minutes to add a node: raise it there).
PLACEMENT_TIMEOUT = 120.0

RAY_EXTRA = "pip install 'eeipu-jax[ray]' (ray[tune]==2.60.0)"


def require_ray():
    """The ``ray`` module.

    Raises:
        ImportError: Ray is not installed, with the command that installs it.
    """
    try:
        import ray
    except ImportError:
        raise ImportError(f"parallel studies (workers > 1, address) run on Ray, which is not installed: {RAY_EXTRA}") from None
    return ray


@contextlib.contextmanager
def _loopback_node(ray):
    """Make a Ray started in the block take ``127.0.0.1`` as its node IP.

    Ray resolves a requested loopback node IP to the machine's routable one
    unless clusters are disabled (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``,
    read once at import into ``ray._private.ray_constants``), in which case it
    uses the loopback address and every server binds to it. Both the module
    constant (this process) and the variable (the processes Ray starts) are
    set for the block only.
    """
    from ray._private import ray_constants

    name = ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR
    old_env, old_const = os.environ.get(name), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[name] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = old_const
        if old_env is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old_env


class ClusterAuthError(ConfigError):
    """The Ray cluster to join requires token authentication this process is not set up for."""


#: JAX's warning when a process that initialized its backend forks (``xla_bridge._at_fork``).
_FORK_WARNING = r"os\.fork\(\) was called"


@contextlib.contextmanager
def _fork_exec_warning_silenced():
    """Silence JAX's ``os.fork() was called ... deadlock`` warning for the block only.

    Ray starts its processes (GCS, raylet, agents) with ``subprocess.Popen(...,
    preexec_fn=...)``, and CPython runs the ``os.register_at_fork`` hooks, JAX's
    among them, only for a fork with ``preexec_fn``. The child runs Ray's
    ``preexec_fn`` (it blocks SIGINT and asks the kernel to end it with its
    parent) and then ``exec``s the Ray binary: no JAX code, and no lock of
    JAX's threads, runs in it, so the deadlock the warning foresees cannot
    happen. Only that warning, of the Ray start only, is silenced.
    """
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_FORK_WARNING, category=RuntimeWarning)
        yield


def _check_cluster_auth(address: str) -> None:
    """Refuse, at once and on one line, to join a cluster that requires token authentication when
    this process does not use it (``RAY_AUTH_MODE`` is not ``token``).

    ``ray start --head`` turns token authentication on when a token exists
    (``~/.ray/auth_token``, ``RAY_AUTH_TOKEN_PATH``); ``ray.init(address=HOST:PORT)``
    turns it on only when ``RAY_AUTH_MODE=token`` is set, and otherwise retries
    for about 20 s, logging ``InvalidAuthToken`` every second, before it fails.
    One request to the cluster's GCS tells: it answers an unauthenticated
    client with an :class:`ray.exceptions.AuthenticationError` at once. Any
    other outcome (no cluster there, a network error) is left to ``ray.init``.
    """
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "token" or address == "auto" or address.startswith("ray://"):
        return
    from ray._raylet import GcsClient
    from ray.exceptions import AuthenticationError

    try:
        GcsClient(address=address)
    except AuthenticationError:
        raise ClusterAuthError(
            f"the Ray cluster at {address} requires token authentication: set RAY_AUTH_MODE=token in this "
            "process's environment, with the cluster's token in ~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or "
            "RAY_AUTH_TOKEN (docs/parallel.md, 'Joining a cluster safely')") from None
    except Exception:  # noqa: BLE001 - unreachable, refused...: ray.init says what it says
        return


def connect(address: str | None = None, *, num_cpus: float | None = None, num_gpus: float | None = None) -> bool:
    """Make sure this process is connected to Ray.

    Args:
        address: a running cluster's address (``"host:6379"``, ``"auto"``);
            ``None`` starts a local Ray on this machine, bound to localhost,
            without a dashboard.
        num_cpus: logical CPUs of a local Ray (default: the machine's cores).
        num_gpus: GPUs of a local Ray (default: those Ray detects).

    Returns:
        ``True`` if this call started or joined Ray, ``False`` if the process
        was connected already (its Ray is used as it is).

    Raises:
        ClusterAuthError: the cluster at ``address`` requires token
            authentication and ``RAY_AUTH_MODE=token`` is not set here (a
            :class:`ConfigError`: the command line prints it on one line).
    """
    ray = require_ray()
    if ray.is_initialized():
        return False
    # The repository root (where `pipelines`, `experiments` and `tests` import
    # from) travels to the workers, which unpickle pipelines by reference.
    env = {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH")) if p)}}
    if address is not None:
        _check_cluster_auth(address)
        with _fork_exec_warning_silenced():
            ray.init(address=address, runtime_env=env, include_dashboard=False, log_to_driver=True)
        return True
    with _loopback_node(ray), _fork_exec_warning_silenced():
        ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, _node_ip_address="127.0.0.1",
                 runtime_env=env)
    return True


_ADDRESS = re.compile(r"(?:ray://)?(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?):(\d{1,5})")


def check_address(address) -> str:
    """A Ray cluster address as :func:`connect` takes it: ``"auto"``, ``HOST:PORT`` or
    ``ray://HOST:PORT`` (checked before anything starts or is written).

    Raises:
        ValueError: anything else, e.g. a port that is not a number in 1..65535.
    """
    if isinstance(address, str) and address == "auto":
        return address
    m = _ADDRESS.fullmatch(address) if isinstance(address, str) else None
    if m is None or not 1 <= int(m.group(1)) <= 65535:
        raise ValueError(f"expected a Ray cluster address: 'auto', HOST:PORT or ray://HOST:PORT (a port in "
                         f"1..65535), got {address!r}")
    return address


class PlacementError(ConfigError):
    """A parallel study's workers could not be placed on the Ray cluster in time."""


#: Ray resource names a trial sets with their own options, not as custom resources.
_OWN_OPTIONS = {"CPU": "num_cpus", "GPU": "num_gpus"}
_NOT_CUSTOM = ("memory", "object_store_memory")


def _amount(name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v >= 0):
        raise ValueError(f"{name} must be a non-negative finite number, got {v!r}")
    return float(v)  # as recorded in the summary: 1 and 1.0 alike


@dataclasses.dataclass(frozen=True)
class TrialResources:
    """What one trial (one worker actor) reserves on the cluster.

    Attributes:
        num_cpus: logical CPUs; ``None`` (default): ``min(1, CPUs / W)`` on a
            local Ray (no ``address``), so more workers than cores can run
            (trials that sleep, wait on I/O or on a GPU need no core each),
            1 on a cluster joined by address.
        num_gpus: GPUs (0 or 1: one trial per GPU; JAX in the worker then sees
            only that device).
        custom: Ray custom resources by name, e.g. ``{"TPU": 4}`` (the TPU
            chips of a host, as Ray's TPU nodes advertise them); passed to the
            actor's ``.options(resources=...)`` and to its placement bundle.
    """

    num_cpus: float | None = None
    num_gpus: float = 0.0
    custom: Mapping[str, float] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.num_cpus is not None:
            object.__setattr__(self, "num_cpus", _amount("num_cpus", self.num_cpus))
        object.__setattr__(self, "num_gpus", _amount("num_gpus", self.num_gpus))
        if not isinstance(self.custom, Mapping):
            raise ValueError(f"custom resources must be a dict of name -> amount, got {self.custom!r}")
        custom = {}
        for name, v in self.custom.items():
            if not isinstance(name, str) or not name.strip():
                raise ValueError(f"a custom resource name must be a non-empty string, got {name!r}")
            if name in _OWN_OPTIONS:
                raise ValueError(f"{name} is reserved with {_OWN_OPTIONS[name]}, not as a custom resource")
            if name in _NOT_CUSTOM or name.startswith(("num_", "node:")):
                raise ValueError(f"unknown trial resource {name!r}: trial resources take num_cpus, num_gpus and "
                                 "custom Ray resources such as TPU")
            custom[name] = _amount(f"custom resource {name!r}", v)
        object.__setattr__(self, "custom", custom)

    @classmethod
    def of(cls, spec) -> "TrialResources":
        """Resources from ``None`` (the defaults), a :class:`TrialResources` or a dict with
        ``num_cpus`` and/or ``num_gpus``, its other keys naming custom Ray resources
        (``{"num_cpus": 1, "TPU": 4}``).

        Raises:
            ValueError: a key that is no resource name (not a string, ``CPU``/``GPU``, an unknown
                ``num_*`` option), or a negative or non-finite amount.
        """
        if spec is None:
            return cls()
        if isinstance(spec, cls):
            return spec
        if isinstance(spec, Mapping):
            own = {k: v for k, v in spec.items() if k in ("num_cpus", "num_gpus")}
            return cls(**own, custom={k: v for k, v in spec.items() if k not in own})
        raise ValueError(f"trial resources must be a dict with num_cpus/num_gpus and custom resources, got {spec!r}")

    def resolved(self, workers: int, cluster_cpus: float, local: bool) -> "TrialResources":
        """These resources with ``num_cpus`` decided (see the attribute): on a local Ray, a share of
        its CPUs rounded down to Ray's resolution (1e-4), so that W shares fit."""
        if self.num_cpus is not None:
            return self
        cpus = min(1.0, math.floor(1e4 * cluster_cpus / workers) / 1e4) if local else 1.0
        return dataclasses.replace(self, num_cpus=cpus)

    def bundle(self) -> dict[str, float]:
        """One trial's placement-group bundle (Ray's resource names; zero amounts left out)."""
        return {k: float(v) for k, v in (("CPU", self.num_cpus), ("GPU", self.num_gpus), *self.custom.items()) if v}

    def actor_options(self) -> dict:
        """The options of a trial's actor (``ActorClass.options(**...)``), placement aside."""
        options = dict(num_cpus=self.num_cpus, num_gpus=self.num_gpus)
        if self.custom:
            options["resources"] = dict(self.custom)
        return options

    def describe(self) -> dict[str, float]:
        """``num_cpus``, ``num_gpus`` and each custom resource: the summary's ``resources``."""
        return {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus, **self.custom}


def _resource_text(resources: Mapping[str, float]) -> str:
    """``"2 CPU, 0 GPU"``: the CPUs and GPUs of a Ray resource dict, and any custom resource."""
    shown = {"CPU": resources.get("CPU", 0.0), "GPU": resources.get("GPU", 0.0)}
    shown.update({k: v for k, v in resources.items() if k not in shown and not k.startswith("node:")
                  and k not in ("memory", "object_store_memory") and not k.startswith("accelerator_type")})
    return ", ".join(f"{v:g} {k}" for k, v in shown.items())


@contextlib.contextmanager
def _prepare_errors(ray):
    """A worker's :class:`PrepareError` as this process's, on one line (Ray's error carries the
    worker's traceback in its message)."""
    try:
        yield
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, PrepareError):
            raise PrepareError(str(e.cause)) from None
        raise


class RayExecutor(Executor):
    """W :class:`~eeipu_jax.runtime.driver.TrialWorker` actors on Ray: placement, remote calls, faults.

    Args:
        workers: actors (trials at once).
        resources: what each reserves.
        address: the cluster to join (``None``: a local Ray).
        placement_timeout: seconds to wait for the actors to be placed.
    """

    concurrent = True

    def __init__(self, workers: int, resources: TrialResources, address: str | None,
                 placement_timeout: float = PLACEMENT_TIMEOUT):
        self.workers = workers
        self.asked = resources
        self.resources = resources
        self.address = address
        self.placement_timeout = placement_timeout
        self._ray = None
        self._group = None
        self._actors: list = []
        self._running: dict[Any, Flight] = {}  # ObjectRef -> flight
        self._worker_stats: list[dict] = []

    # ------------------------------------------------------------ placing
    def start(self, spec: RunSpec, cache: StageCache) -> None:
        """Connect, reserve W bundles (or stop with :class:`PlacementError`), start and warm the actors."""
        ray = self._ray = require_ray()
        connect(self.address)
        self.resources = self.asked.resolved(self.workers, ray.cluster_resources().get("CPU", 0.0),
                                             local=self.address is None)
        self._spec = spec
        self._actor_cls = ray.remote(TrialWorker)
        bundle = self.resources.bundle()
        if bundle:  # an empty bundle is refused by Ray; actors reserving nothing place anywhere at once
            self._group = self._place([bundle] * self.workers)
        self._actors = [self._new_actor(slot) for slot in range(self.workers)]
        with _prepare_errors(ray):
            ray.get([a.warm.remote() for a in self._actors])  # every worker prepared before the first trial

    def _place(self, bundles: list[dict]):
        from ray.util.placement_group import placement_group, remove_placement_group

        ray = self._ray
        group = placement_group(bundles, strategy="PACK")
        ready, _ = ray.wait([group.ready()], timeout=self.placement_timeout)
        if ready:
            return group
        remove_placement_group(group)
        per = self.resources.describe()
        total = {k: v * self.workers for k, v in bundles[0].items()}
        raise PlacementError(
            f"could not place {self.workers} trial workers of {per} each ({_resource_text(total)} in all) within "
            f"{self.placement_timeout:g} s: the Ray cluster has {_resource_text(ray.cluster_resources())} "
            f"({_resource_text(ray.available_resources())} free now). Ask for fewer workers or less per trial "
            "(workers=, resources= / --workers, --worker-cpus, --worker-gpus, --worker-resources), or wait longer "
            "(placement_timeout= / --placement-timeout)"
        )

    def _new_actor(self, slot: int):
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        options = dict(self.resources.actor_options(), max_restarts=0)
        if self._group is not None:  # slot i lives in bundle i: a replacement reuses its reservation
            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                self._group, placement_group_bundle_index=slot)
        return self._actor_cls.options(**options).remote(**self._spec.worker_kwargs())

    def _replace(self, slot: int) -> None:
        self._actors[slot] = self._new_actor(slot)
        self._actors[slot].warm.remote()  # runs before its next trial (an actor runs its calls in order)

    # ------------------------------------------------------------ running
    def submit(self, flight: Flight) -> None:
        self._running[self._actors[flight.slot].run.remote(flight.proposed, flight.params, flight.deadline)] = flight

    def wait(self) -> tuple[Flight, Outcome]:
        ray = self._ray
        ready, _ = ray.wait(list(self._running), num_returns=1)
        flight = self._running.pop(ready[0])
        try:
            with _prepare_errors(ray):  # a replaced worker's prepare() failed
                return flight, Outcome(ray.get(ready[0]))
        except ray.exceptions.RayActorError as e:
            error = f"worker {flight.slot} died during the trial ({type(e).__name__}: {str(e).splitlines()[0]})"
            logger.warning("%s; it is recorded as failed and the worker replaced", error)
            self._replace(flight.slot)
            return flight, Outcome(None, error=error, replaced=True)

    def commit(self, flight: Flight, write: bool) -> tuple[tuple, float, bool]:
        ray = self._ray
        try:
            saved, seconds = ray.get(self._actors[flight.slot].commit.remote(flight.proposed, write))
            return tuple(saved), seconds, False
        except ray.exceptions.RayActorError as e:  # died after the trial: its result stands, uncached
            logger.warning("worker %d died before writing the stage outputs of its trial (proposed %d; %s); "
                           "replaced", flight.slot, flight.proposed, type(e).__name__)
            self._replace(flight.slot)
            return (), 0.0, True

    def close(self) -> None:
        ray = self._ray
        if ray is None:
            return
        for a in self._actors:
            with contextlib.suppress(Exception):
                self._worker_stats.append(ray.get(a.stats.remote(), timeout=30))
        for a in self._actors:
            ray.kill(a)
        self._actors = []
        if self._group is not None:
            from ray.util.placement_group import remove_placement_group

            remove_placement_group(self._group)
            self._group = None

    def cache_stats(self, cache: StageCache, final: bool) -> dict | None:
        """At the end only (the workers' counters live in their processes)."""
        return {"driver": cache.stats.to_dict(), "workers": self._worker_stats} if final else None

    def describe(self) -> dict:
        return {"workers": self.workers, "resources": self.resources.describe()}
