"""Synthetic multi-stage pipelines (pure JAX, simulated stage costs).

These are the EEIPU paper's synthetic benchmarks, rebuilt from the authors'
public code and logs (the paper body does not give the definitions):

**Objective.** Stage ``s`` owns ``d_s`` hyperparameters in a box
``[low_s, high_s]^{d_s}`` and a test function ``f_s`` (negated BoTorch
definitions, so everything is maximized). The pipeline objective is
``y(x) = sum_s f_s(x_s[:k_s])`` where ``k_s`` is the function's dimension (2
or 3): extra parameters of a stage do not enter the objective but do enter its
cost (the authors' "high-dimensional" layouts). Stages are independent in the
objective; the pipeline structure lives in the costs and in memoization. No
observation noise.

**Stage costs.** For stage ``s`` with raw inputs ``x_s``::

    c_s(x_s) = 1 / (500 d_s) * sum_j (a_sj * g_sj(x_sj) + b_sj)^2

with ``g`` one of ``cos``, ``sin``, ``logistic(10 x)``, ``x^2`` and the
integers ``(g, a, b)`` drawn by Python's ``random`` re-seeded with
``100 s + j`` for each (stage, column): ``randint(0, 3)``, ``randint(5, 20)``,
``randint(10, 50)`` in that order -- exactly the authors' draws, so stage 0
of every pipeline has the same cost shape (``(18 x^2 + 12)^2 ...``).

**Pipelines.**

* ``synthetic3`` -- the authors' ICML-era 3-stage pipeline, fully specified:
  levy2 on [0,5]^2 -> hartmann3 on [-2,2]^3 -> beale2 on [-2,2]^2, budget 400
  (global optimum 0 + 3.86278 - 0.52334 = 3.3394). The 10-point cost-aware
  warm-up costs 67.6 +- 14.2 here over seeds 0-9 (authors' logs: 72.1).
* ``synthetic3_head`` -- the 3-stage pipeline of the authors' later ablations:
  beale2 [-2,2] -> hartmann3 [-2,2] -> branin2 [0,10], budget 200.
* ``synthetic5`` -- not published (the authors' 5-stage functions were passed
  on the command line and are unknown); our choice: levy2 [0,5]^2 ->
  hartmann3 [-2,2]^3 -> beale2 [-2,2]^2 -> ackley3 [-3,3]^3 -> michale2
  [0,5]^2 (D = 12, optimum 5.10), budget 1200. The warm-up costs 260 +- 33 (seeds 0-9) and a
  random evaluation ~60 (median), so the budget buys about as many random
  evaluations as the 3-stage budget does (~16), and the first stage is the
  expensive one, as in the 3-stage pipeline.
* ``synthetic10`` -- not published either (only its budget, 1500, and warm-up
  cost, ~718 on average, are in the logs; its best values near +44 imply
  Styblinski-Tang or Holder-table stages). Our choice: levy2 [0,5] ->
  hartmann3 -> styblinski3 [-5,0] -> levy2 -> ackley3 -> beale2 ->
  holdertable2 [5,10] -> michale2 [0,5] -> hartmann3 -> beale2 (D = 24,
  optimum 145.2), budget 1500. Its warm-up costs 596 +- 79 over seeds 0-9 (logged: 718),
  and stages 0, 2 and 3 carry most of the cost, so memoizing early stages
  matters, as the authors' large iteration gains on this pipeline suggest.
* :func:`random_pipeline` -- any number of stages K >= 2 from a seed, drawn
  from the function library with 0-2 extra cost-only parameters per stage, for
  pipelines that were never tuned against (``get_pipeline("random7_3")``).
* :func:`parse_layout` -- any layout written on a command line, e.g.
  ``"levy2[0,5]-hartmann3[-2,2]-beale2[-2,2]@400"`` (``synthetic3``): stages
  separated by ``-``, each a function of :data:`FUNCTIONS` with an optional
  ``:D`` (D >= the function's dimension hyperparameters, the extra ones
  cost-only) and an optional box ``[low,high]`` (default: the function's
  own), then an optional ``@budget`` (default 150 per stage). At least two
  stages. :func:`get_pipeline` accepts these strings wherever a pipeline name
  goes, e.g. ``python -m experiments.synthetic --set
  "pipelines=['levy2:4[0,5]-ackley3-beale2[-2,2]@300']"``.

The unit cube of the optimizer maps linearly onto each stage's box.
"""

from __future__ import annotations

import dataclasses
import math
import random as pyrandom
import re

import jax
import jax.numpy as jnp
import numpy as np

from eeipu_jax.space import Float, SearchSpace, StageSpace

__all__ = [
    "FUNCTIONS",
    "SyntheticPipeline",
    "cost_coefficients",
    "get_pipeline",
    "parse_layout",
    "random_pipeline",
    "PIPELINES",
]


# ----------------------------------------------------------- test functions
# Each takes a (k,) raw vector and returns the *negated* BoTorch function.
def _branin(x):
    x1, x2 = x[0], x[1]
    b, c, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)
    return -((x2 - b * x1**2 + c * x1 - 6) ** 2 + 10 * (1 - t) * jnp.cos(x1) + 10)


def _michalewicz(x, m=10):
    i = jnp.arange(1, x.shape[0] + 1)
    return jnp.sum(jnp.sin(x) * jnp.sin(i * x**2 / math.pi) ** (2 * m))


def _styblinski_tang(x):
    return -0.5 * jnp.sum(x**4 - 16 * x**2 + 5 * x)


def _beale(x):
    x1, x2 = x[0], x[1]
    return -((1.5 - x1 + x1 * x2) ** 2 + (2.25 - x1 + x1 * x2**2) ** 2 + (2.625 - x1 + x1 * x2**3) ** 2)


def _ackley(x, a=20.0, b=0.2, c=2 * math.pi):
    d = x.shape[0]
    return -(
        -a * jnp.exp(-b * jnp.sqrt(jnp.sum(x**2) / d + 1e-30))
        - jnp.exp(jnp.sum(jnp.cos(c * x)) / d)
        + a
        + math.e
    )


_H3_ALPHA = np.array([1.0, 1.2, 3.0, 3.2])
_H3_A = np.array([[3.0, 10, 30], [0.1, 10, 35], [3.0, 10, 30], [0.1, 10, 35]])
_H3_P = 1e-4 * np.array([[3689, 1170, 2673], [4699, 4387, 7470], [1091, 8732, 5547], [381, 5743, 8828]])


def _hartmann3(x):
    inner = jnp.sum(_H3_A * (x[None, :] - _H3_P) ** 2, axis=1)
    return jnp.sum(_H3_ALPHA * jnp.exp(-inner))


def _rosenbrock(x):
    return -jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (x[:-1] - 1) ** 2)


def _levy(x):
    w = 1.0 + (x - 1.0) / 4.0
    first = jnp.sin(math.pi * w[0]) ** 2
    mid = jnp.sum((w[:-1] - 1) ** 2 * (1 + 10 * jnp.sin(math.pi * w[:-1] + 1) ** 2))
    last = (w[-1] - 1) ** 2 * (1 + jnp.sin(2 * math.pi * w[-1]) ** 2)
    return -(first + mid + last)


def _holder_table(x):
    x1, x2 = x[0], x[1]
    return jnp.abs(jnp.sin(x1) * jnp.cos(x2) * jnp.exp(jnp.abs(1 - jnp.sqrt(x1**2 + x2**2) / math.pi)))


# key -> (function, dimension used by the objective, default per-dimension box)
FUNCTIONS = {
    "branin2": (_branin, 2, (0.0, 10.0)),
    "michale2": (_michalewicz, 2, (0.0, 5.0)),
    "styblinski2": (_styblinski_tang, 2, (-5.0, 0.0)),
    "beale2": (_beale, 2, (-2.0, 2.0)),
    "ackley3": (_ackley, 3, (-3.0, 3.0)),
    "hartmann3": (_hartmann3, 3, (-2.0, 2.0)),
    "styblinski3": (_styblinski_tang, 3, (-5.0, 0.0)),
    "rosenbrock2": (_rosenbrock, 2, (0.0, 5.0)),
    "levy2": (_levy, 2, (0.0, 5.0)),
    "holdertable2": (_holder_table, 2, (5.0, 10.0)),
}


# ------------------------------------------------------------------ costs
def cost_coefficients(stage: int, dim: int) -> tuple[int, int, int]:
    """``(g index, a, b)`` of stage ``stage``, column ``dim`` (the authors' draws).

    ``g`` indexes ``[cos, sin, logistic(10 x), x^2]``.
    """
    rng = pyrandom.Random(100 * stage + dim)
    return rng.randint(0, 3), rng.randint(5, 20), rng.randint(10, 50)


def _g(idx, x):
    return jnp.select(
        [idx == 0, idx == 1, idx == 2],
        [jnp.cos(x), jnp.sin(x), jax.nn.sigmoid(10.0 * x)],
        x**2,
    )


# --------------------------------------------------------------- pipeline
@dataclasses.dataclass(frozen=True)
class SyntheticPipeline:
    """A synthetic K-stage pipeline (hashable; usable as a static jit argument).

    Attributes:
        name: identifier.
        functions: test-function key of each stage (see :data:`FUNCTIONS`).
        dims: number of hyperparameters of each stage (>= the function's dimension).
        boxes: ``(low, high)`` box of each stage (applies to each of its columns).
        budget: the default total budget (cost units).
    """

    name: str
    functions: tuple[str, ...]
    dims: tuple[int, ...]
    boxes: tuple[tuple[float, float], ...]
    budget: float

    def __post_init__(self):
        K = len(self.functions)
        if K < 1 or len(self.dims) != K or len(self.boxes) != K:
            raise ValueError(f"pipeline {self.name!r}: functions, dims and boxes must have one entry per stage")
        for s, (f, d, (lo, hi)) in enumerate(zip(self.functions, self.dims, self.boxes)):
            if f not in FUNCTIONS:
                raise ValueError(f"pipeline {self.name!r}, stage {s}: unknown function {f!r}; known: {sorted(FUNCTIONS)}")
            if d < FUNCTIONS[f][1]:
                raise ValueError(f"pipeline {self.name!r}, stage {s}: {f} needs >= {FUNCTIONS[f][1]} dims, got {d}")
            if not lo < hi:
                raise ValueError(f"pipeline {self.name!r}, stage {s}: empty box {(lo, hi)}")
        if not self.budget > 0:
            raise ValueError(f"pipeline {self.name!r}: budget must be positive, got {self.budget}")

    # ------------------------------------------------------------ layout
    @property
    def n_stages(self) -> int:
        return len(self.functions)

    @property
    def dim(self) -> int:
        return sum(self.dims)

    @property
    def stage_of_column(self) -> tuple[int, ...]:
        return tuple(s for s, d in enumerate(self.dims) for _ in range(d))

    @property
    def space(self) -> SearchSpace:
        return SearchSpace(
            [
                StageSpace(f"stage{s}", [Float(f"x{j}", float(lo), float(hi)) for j in range(d)])
                for s, (d, (lo, hi)) in enumerate(zip(self.dims, self.boxes))
            ]
        )

    def _columns(self):
        lo = np.concatenate([[b[0]] * d for d, b in zip(self.dims, self.boxes)])
        hi = np.concatenate([[b[1]] * d for d, b in zip(self.dims, self.boxes)])
        return lo, hi

    def to_raw(self, u):
        """Unit cube -> raw hyperparameters (JAX-traceable)."""
        lo, hi = self._columns()
        return jnp.asarray(lo, u.dtype) + u * jnp.asarray(hi - lo, u.dtype)

    @property
    def stage_optima(self) -> tuple[float, ...]:
        """Best value of each stage's function inside its box (NaN where not tabulated)."""
        return tuple(_STAGE_OPTIMA.get((f, tuple(float(v) for v in b)), float("nan"))
                     for f, b in zip(self.functions, self.boxes))

    @property
    def optimum(self) -> float:
        """Best objective value inside the boxes (the sum of :attr:`stage_optima`)."""
        return float(sum(self.stage_optima))

    # ------------------------------------------------------ evaluations
    def stage_values_raw(self, x):
        """``(K,)`` per-stage objective terms of raw hyperparameters ``x (D,)``."""
        out = []
        start = 0
        for f, d in zip(self.functions, self.dims):
            fn, k, _ = FUNCTIONS[f]
            out.append(fn(x[start : start + k]))
            start += d
        return jnp.stack(out)

    def objective_raw(self, x):
        """Objective of raw hyperparameters ``x (D,)`` (the sum of the stage terms)."""
        return jnp.sum(self.stage_values_raw(x))

    def stage_costs_raw(self, x):
        """``(K,)`` stage costs of raw hyperparameters ``x (D,)``."""
        out = []
        start = 0
        for s, d in enumerate(self.dims):
            coef = np.array([cost_coefficients(s, j) for j in range(d)])
            xs = x[start : start + d]
            terms = (coef[:, 1] * _g(jnp.asarray(coef[:, 0]), xs) + coef[:, 2]) ** 2
            out.append(jnp.sum(terms) / (500.0 * d))
            start += d
        return jnp.stack(out)

    def objective(self, u):
        """Objective of a unit-cube point."""
        return self.objective_raw(self.to_raw(u))

    def stage_costs(self, u):
        """Stage costs of a unit-cube point."""
        return self.stage_costs_raw(self.to_raw(u))

    def total_cost(self, u):
        return jnp.sum(self.stage_costs(u))


# Best value of each (negated) test function inside the boxes used here.
_STAGE_OPTIMA = {
    ("levy2", (0.0, 5.0)): 0.0,
    ("hartmann3", (-2.0, 2.0)): 3.86278,
    ("beale2", (-2.0, 2.0)): -0.52334,
    ("branin2", (0.0, 10.0)): -0.397887,
    ("ackley3", (-3.0, 3.0)): 0.0,
    ("styblinski2", (-5.0, 0.0)): 78.33234,
    ("styblinski3", (-5.0, 0.0)): 117.49851,
    ("holdertable2", (5.0, 10.0)): 19.2085,
    ("michale2", (0.0, 5.0)): 1.8013,
    ("rosenbrock2", (0.0, 5.0)): 0.0,
}


def _pipe(name, functions, budget, dims=None, boxes=None):
    dims = dims or tuple(FUNCTIONS[f][1] for f in functions)
    boxes = boxes or tuple(FUNCTIONS[f][2] for f in functions)
    return SyntheticPipeline(name, tuple(functions), tuple(dims), tuple(tuple(b) for b in boxes), float(budget))


PIPELINES = {
    p.name: p
    for p in [
        _pipe("synthetic3", ["levy2", "hartmann3", "beale2"], 400),
        _pipe("synthetic3_head", ["beale2", "hartmann3", "branin2"], 200),
        _pipe("synthetic5", ["levy2", "hartmann3", "beale2", "ackley3", "michale2"], 1200),
        _pipe(
            "synthetic10",
            ["levy2", "hartmann3", "styblinski3", "levy2", "ackley3",
             "beale2", "holdertable2", "michale2", "hartmann3", "beale2"],
            1500,
        ),
    ]
}


def get_pipeline(name: str) -> SyntheticPipeline:
    """A named synthetic pipeline, ``random<K>_<seed>`` (e.g. ``random7_3``) or a
    layout string (:func:`parse_layout`, e.g. ``"levy2[0,5]-beale2[-2,2]@200"``)."""
    if not isinstance(name, str):
        raise ValueError(f"a synthetic pipeline is a name or a layout string, got {name!r}")
    if name in PIPELINES:
        return PIPELINES[name]
    if name.startswith("random") and "_" in name:
        k, seed = name[len("random") :].split("_", 1)
        if k.isdigit() and seed.isdigit():
            return random_pipeline(int(k), int(seed))
    if any(c in name for c in "-[@:"):
        return parse_layout(name)
    raise ValueError(
        f"unknown synthetic pipeline {name!r}; known: {sorted(PIPELINES)}, 'random<K>_<seed>' or a layout "
        "such as 'levy2[0,5]-hartmann3[-2,2]-beale2[-2,2]@400'"
    )


_STAGE = re.compile(r"(?P<f>[a-z_]+[0-9]+)(?::(?P<d>[0-9]+))?(?:\[(?P<lo>[^,\[\]]+),(?P<hi>[^,\[\]]+)\])?")


def _split_outside_brackets(text: str, sep: str) -> list[str]:
    parts, depth, cur = [], 0, []
    for c in text:
        depth += c == "["
        depth -= c == "]"
        if c == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
    parts.append("".join(cur))
    return parts


def _number(text: str, what: str, layout: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise ValueError(f"layout {layout!r}: {what} {text!r} is not a number") from None
    if not math.isfinite(v):
        raise ValueError(f"layout {layout!r}: {what} must be finite, got {text!r}")
    return v


def parse_layout(text: str, budget_per_stage: float = 150.0) -> SyntheticPipeline:
    """A synthetic pipeline from a compact layout string (see the module docstring).

    ``"levy2[0,5]-hartmann3[-2,2]-beale2[-2,2]@400"`` is ``synthetic3``;
    ``"levy2:4[0,5]-ackley3"`` has a first stage with 4 hyperparameters (the
    last 2 enter only its cost), ackley3 on its default box, and a budget of
    ``budget_per_stage`` per stage. The pipeline's name is the layout written
    canonically (every box and the budget explicit).

    Raises:
        ValueError: the string does not parse, names an unknown function, has
            fewer than two stages, an empty or non-finite box, fewer
            hyperparameters than the function needs, or a budget that is not
            a positive finite number; the message names the part.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"a layout must be a non-empty string, got {text!r}")
    layout = text.replace(" ", "")
    at = _split_outside_brackets(layout, "@")
    if len(at) > 2:
        raise ValueError(f"layout {text!r}: more than one '@budget'")
    budget = None
    if len(at) == 2:
        budget = _number(at[1], "budget", text)
        if budget <= 0:
            raise ValueError(f"layout {text!r}: the budget must be positive, got {at[1]!r}")
    functions, dims, boxes = [], [], []
    for i, part in enumerate(_split_outside_brackets(at[0], "-")):
        m = _STAGE.fullmatch(part)
        if m is None:
            raise ValueError(
                f"layout {text!r}: stage {i} {part!r} is not 'function', 'function:D', 'function[low,high]' "
                "or 'function:D[low,high]'"
            )
        f = m["f"]
        if f not in FUNCTIONS:
            raise ValueError(f"layout {text!r}: stage {i}: unknown function {f!r}; known: {sorted(FUNCTIONS)}")
        d = int(m["d"]) if m["d"] else FUNCTIONS[f][1]
        if d < FUNCTIONS[f][1]:
            raise ValueError(f"layout {text!r}: stage {i}: {f} needs at least {FUNCTIONS[f][1]} hyperparameters, got {d}")
        if m["lo"] is None:
            lo, hi = FUNCTIONS[f][2]
        else:
            lo, hi = _number(m["lo"], "a box bound", text), _number(m["hi"], "a box bound", text)
            if not lo < hi:
                raise ValueError(f"layout {text!r}: stage {i}: empty box [{m['lo']},{m['hi']}] (low must be < high)")
        functions.append(f)
        dims.append(d)
        boxes.append((lo, hi))
    if len(functions) < 2:
        raise ValueError(f"layout {text!r}: a pipeline needs at least two stages separated by '-'")
    budget = budget_per_stage * len(functions) if budget is None else budget

    def stage_text(f, d, box):
        extra = f":{d}" if d != FUNCTIONS[f][1] else ""
        return f"{f}{extra}[{box[0]:g},{box[1]:g}]"

    name = "-".join(stage_text(*t) for t in zip(functions, dims, boxes)) + f"@{budget:g}"
    return _pipe(name, functions, budget, dims=dims, boxes=boxes)


def random_pipeline(n_stages: int, seed: int, budget_per_stage: float = 150.0) -> SyntheticPipeline:
    """A fresh K-stage pipeline drawn from the function library.

    Each stage gets a random test function with its default box and 0-2 extra
    cost-only parameters; the budget is ``budget_per_stage * K``.

    Args:
        n_stages: K >= 2.
        seed: seed of the draw (NumPy), so pipelines are reproducible.
        budget_per_stage: budget scale.
    """
    if n_stages < 2:
        raise ValueError(f"n_stages must be >= 2, got {n_stages}")
    rng = np.random.default_rng(seed)
    keys = sorted(FUNCTIONS)
    functions = [keys[i] for i in rng.integers(0, len(keys), n_stages)]
    dims = [FUNCTIONS[f][1] + int(rng.integers(0, 3)) for f in functions]
    return _pipe(f"random{n_stages}_{seed}", functions, budget_per_stage * n_stages, dims=dims)
