"""The stacking (model-ensemble) pipeline: level-0 learners -> logistic meta-learner.

The paper's "ML, model ensembles" pipeline (arXiv 2411.03731; the authors'
``stacking/modelling.py``), with its stage structure and hyperparameters:

* **preprocessing** (``prepare``; untimed, not a BO stage, like the authors'):
  the ``credit_table`` dataset (:mod:`pipelines.data.credit_table`, prepared
  once through tfds), features standardized with the training statistics, a
  fixed shuffled 3-fold split of the training rows (seed 0);
* **stage 0, ``level0``** (the expensive stage): four learners, each with
  3-fold out-of-fold (OOF) predictions on the training rows and the
  fold-averaged prediction on the test rows:

  - ``hgb`` (the authors' XGBoost): scikit-learn ``HistGradientBoostingClassifier``
    (logistic loss), ``learning_rate0``, ``max_depth0``;
  - ``et``: ``ExtraTreesClassifier``, ``n_estimators0``;
  - ``rf``: ``RandomForestClassifier``, ``n_estimators1``, ``max_depth1``;
  - ``mlp`` (the authors' CatBoost, a fourth learner whose learning rate is
    tuned): a one-hidden-layer JAX MLP trained full-batch with Adam at
    ``lr = 0.1 * learning_rate1``;

  output: the OOF matrix ``(n_train, 4)``, the test matrix ``(n_test, 4)`` and
  the labels (cached by the runner with orbax);
* **stage 1, ``meta``**: L2 logistic regression in JAX on the four
  meta-features, scikit-learn's convention (mean log-loss plus
  ``||w||^2 / (2 C n)``, intercept unpenalized), L-BFGS (optax) until the
  largest gradient entry is below ``tol`` or ``max_iter`` iterations;
  ``C``, ``tol``, ``max_iter``. Objective: ROC-AUC on the test rows (maximize).

Sizes (``size``): ``"tiny"`` (tests: 427/142 rows, milliseconds to a second
per trial), ``"cpu"`` (default: 6,000/2,000 rows x 40 features, a few seconds
per trial on one core), ``"gpu"``/``"paper"`` (75,000/25,000 rows, more
boosting rounds and a wider MLP).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.ensemble import ExtraTreesClassifier, HistGradientBoostingClassifier, RandomForestClassifier

from eeipu_jax.space import Float, Int
from eeipu_jax.runtime.pipeline import Pipeline, Stage

__all__ = ["StackingSize", "SIZES", "make_pipeline", "make_tiny", "roc_auc", "fit_logistic", "meta_objective", "level0_learners"]

LEARNERS = ("hgb", "et", "rf", "mlp")


@dataclasses.dataclass(frozen=True)
class StackingSize:
    """Sizes of one scale of the pipeline.

    Attributes:
        data_config: ``credit_table`` config (``tiny``/``cpu``/``gpu``).
        hgb_iter: boosting rounds of the gradient-boosted trees.
        mlp_hidden: hidden units of the MLP learner.
        mlp_steps: full-batch Adam steps of the MLP learner.
        n_folds: folds of the out-of-fold predictions.
    """

    data_config: str
    hgb_iter: int
    mlp_hidden: int
    mlp_steps: int
    n_folds: int = 3


SIZES = {
    "tiny": StackingSize("tiny", hgb_iter=10, mlp_hidden=16, mlp_steps=30),
    "cpu": StackingSize("cpu", hgb_iter=100, mlp_hidden=32, mlp_steps=200),
    "gpu": StackingSize("gpu", hgb_iter=200, mlp_hidden=128, mlp_steps=400),
}
SIZES["paper"] = SIZES["gpu"]


# ------------------------------------------------------------------ metrics
@jax.jit
def roc_auc(y_true: jax.Array, score: jax.Array) -> jax.Array:
    """ROC-AUC by the rank formula (Mann-Whitney U), ties given average ranks.

    Args:
        y_true: ``(n,)`` labels in {0, 1} (both present).
        score: ``(n,)`` scores, larger = more positive.

    Returns:
        The area under the ROC curve (NaN if one class is absent).
    """
    score = jnp.asarray(score, jnp.float32)
    pos = jnp.asarray(y_true) > 0
    s = jnp.sort(score)
    # average 1-based rank of each value among ties
    rank = 0.5 * (jnp.searchsorted(s, score, side="left") + jnp.searchsorted(s, score, side="right") + 1)
    n_pos = jnp.sum(pos)
    n_neg = pos.shape[0] - n_pos
    u = jnp.sum(jnp.where(pos, rank, 0.0)) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


# ------------------------------------------------------------- meta-learner
@jax.jit
def fit_logistic(x: jax.Array, y: jax.Array, C, tol, max_iter) -> tuple[jax.Array, jax.Array]:
    """L2 logistic regression with scikit-learn's ``lbfgs`` conventions.

    Minimizes ``mean_i logloss(y_i, w.x_i + b) + ||w||^2 / (2 C n)`` with optax
    L-BFGS (zoom line search) until ``max |grad| <= tol`` or ``max_iter``
    iterations. ``C``, ``tol`` and ``max_iter`` are traced (one compile).

    Returns:
        ``(coef (d + 1,), n_iter)``, the intercept last.
    """
    x = jnp.asarray(x, jnp.float32)
    y = jnp.asarray(y, jnp.float32)
    n, d = x.shape
    xb = jnp.concatenate([x, jnp.ones((n, 1), x.dtype)], axis=1)
    penalty = jnp.concatenate([jnp.ones(d, x.dtype), jnp.zeros(1, x.dtype)])

    def loss(w):
        z = xb @ w
        return jnp.mean(jax.nn.softplus(z) - y * z) + jnp.sum(penalty * w * w) / (2.0 * C * n)

    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss)
    grad_fn = jax.grad(loss)

    def cond(carry):
        _, _, it, gmax = carry
        return (it < max_iter) & (gmax > tol)

    def body(carry):
        w, state, it, _ = carry
        value, grad = value_and_grad(w, state=state)
        updates, state = opt.update(grad, state, w, value=value, grad=grad, value_fn=loss)
        w = optax.apply_updates(w, updates)
        return w, state, it + 1, jnp.max(jnp.abs(grad_fn(w)))

    w0 = jnp.zeros(d + 1, x.dtype)
    init = (w0, opt.init(w0), jnp.int32(0), jnp.max(jnp.abs(grad_fn(w0))))
    w, _, it, _ = jax.lax.while_loop(cond, body, init)
    return w, it


@jax.jit
def meta_objective(train_meta, train_y, test_meta, test_y, C, tol, max_iter) -> dict:
    """Fit the meta-learner; ``{"objective": test ROC-AUC, "train_auc", "n_iter"}``."""
    w, n_iter = fit_logistic(train_meta, train_y, C, tol, max_iter)
    return {
        "objective": roc_auc(test_y, jnp.asarray(test_meta, jnp.float32) @ w[:-1] + w[-1]),
        "train_auc": roc_auc(train_y, jnp.asarray(train_meta, jnp.float32) @ w[:-1] + w[-1]),
        "n_iter": n_iter,
    }


# ------------------------------------------------------------ level-0 learners
@functools.partial(jax.jit, static_argnames=("hidden", "steps"))
def _mlp_fit_predict(key, x, y, x_eval, lr, *, hidden: int, steps: int):
    """One-hidden-layer MLP, full-batch Adam on the log-loss; probabilities on ``x_eval``."""
    k1, k2 = jax.random.split(key)
    d = x.shape[1]
    params = {
        "w1": jax.random.normal(k1, (d, hidden), x.dtype) / math.sqrt(d),
        "b1": jnp.zeros((hidden,), x.dtype),
        "w2": jax.random.normal(k2, (hidden,), x.dtype) / math.sqrt(hidden),
        "b2": jnp.zeros((), x.dtype),
    }

    def logits(p, inp):
        return jnp.tanh(inp @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]

    def loss(p):
        z = logits(p, x)
        return jnp.mean(jax.nn.softplus(z) - y * z)

    opt = optax.adam(lr)

    def step(_, carry):
        p, s = carry
        g = jax.grad(loss)(p)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s

    params, _ = jax.lax.fori_loop(0, steps, step, (params, opt.init(params)))
    return jax.nn.sigmoid(logits(params, x_eval))


def level0_learners(size: StackingSize, p: dict, seed: int, key: jax.Array) -> dict:
    """``name -> fit_predict(x_train, y_train, x_eval) -> P(y=1 | x_eval)`` for the four learners."""

    def sk(model):
        def fit_predict(x, y, x_eval):
            return model.fit(x, y).predict_proba(x_eval)[:, 1]
        return fit_predict

    def mlp(x, y, x_eval):
        out = _mlp_fit_predict(key, jnp.asarray(x), jnp.asarray(y, jnp.float32), jnp.asarray(x_eval),
                               jnp.float32(0.1 * p["learning_rate1"]), hidden=size.mlp_hidden, steps=size.mlp_steps)
        return np.asarray(out)

    return {
        "hgb": sk(HistGradientBoostingClassifier(
            learning_rate=p["learning_rate0"], max_depth=int(p["max_depth0"]), max_iter=size.hgb_iter,
            max_leaf_nodes=None, early_stopping=False, random_state=seed)),
        "et": sk(ExtraTreesClassifier(n_estimators=int(p["n_estimators0"]), random_state=seed, n_jobs=1)),
        "rf": sk(RandomForestClassifier(n_estimators=int(p["n_estimators1"]), max_depth=int(p["max_depth1"]),
                                        random_state=seed, n_jobs=1)),
        "mlp": mlp,
    }


# --------------------------------------------------------------- the pipeline
def _prepare(size: StackingSize, data_dir: str | None) -> dict:
    from pipelines.data import load_arrays

    train = load_arrays("credit_table", "train", config=size.data_config, data_dir=data_dir)
    test = load_arrays("credit_table", "test", config=size.data_config, data_dir=data_dir)
    mean = train["x"].mean(axis=0)
    std = train["x"].std(axis=0) + 1e-6
    fold = np.random.default_rng(0).permutation(len(train["label"])) % size.n_folds
    data = {
        "x_train": ((train["x"] - mean) / std).astype(np.float32),
        "y_train": train["label"].astype(np.int32),
        "x_test": ((test["x"] - mean) / std).astype(np.float32),
        "y_test": test["label"].astype(np.int32),
        "fold": fold.astype(np.int32),
    }
    _compile_ahead(size, data)
    return data


def _compile_ahead(size: StackingSize, data: dict) -> None:
    """Compile the jitted pieces for this data's shapes, untimed.

    Stage costs should measure compute, not one-off XLA compilation (which
    would otherwise be charged to whichever trial happens to come first and
    depend on the state of the persistent compilation cache).
    """
    x, y, fold = data["x_train"], data["y_train"], data["fold"]
    key = jax.random.key(0)
    int(jax.random.randint(key, (), 0, 2**31 - 1))  # the eager op level0 uses to derive its seed
    for f in range(size.n_folds):
        tr, va = fold != f, fold == f
        x_eval = np.concatenate([x[va], data["x_test"]])
        _mlp_fit_predict(key, jnp.asarray(x[tr]), jnp.asarray(y[tr], jnp.float32), jnp.asarray(x_eval),
                         jnp.float32(1e-3), hidden=size.mlp_hidden, steps=size.mlp_steps).block_until_ready()
    k = len(LEARNERS)
    out = meta_objective(np.zeros((len(y), k), np.float32), y, np.zeros((len(data["y_test"]), k), np.float32),
                         data["y_test"], jnp.float32(1.0), jnp.float32(1e-4), jnp.int32(1))
    jax.block_until_ready(out)


def make_pipeline(size: str = "cpu", *, data_dir: str | None = None, name: str | None = None) -> Pipeline:
    """Build the stacking pipeline.

    Args:
        size: ``"tiny"``, ``"cpu"``, ``"gpu"`` or ``"paper"`` (see :data:`SIZES`).
        data_dir: tfds data directory (default: ``$EEIPU_JAX_DATA_DIR`` or
            ``~/.cache/eeipu_jax/tensorflow_datasets``).
        name: pipeline name (default ``"stacking"``, ``"stacking-<size>"`` for
            other sizes).

    Returns:
        A two-stage :class:`~eeipu_jax.runtime.Pipeline`.
    """
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; sizes: {sorted(SIZES)}")
    sz = SIZES[size]
    name = name or ("stacking" if size == "cpu" else f"stacking-{size}")

    def level0(data, p, key):
        seed = int(jax.random.randint(key, (), 0, 2**31 - 1))
        learners = level0_learners(sz, p, seed, key)
        x, y, fold = data["x_train"], data["y_train"], data["fold"]
        oof = np.zeros((len(y), len(LEARNERS)), np.float32)
        test = np.zeros((len(data["y_test"]), len(LEARNERS)), np.float32)
        for f in range(sz.n_folds):
            tr, va = fold != f, fold == f
            x_eval = np.concatenate([x[va], data["x_test"]])
            for j, lname in enumerate(LEARNERS):
                pred = learners[lname](x[tr], y[tr], x_eval)
                oof[va, j] = pred[: va.sum()]
                test[:, j] += pred[va.sum():] / sz.n_folds
        return {"train_meta": oof, "train_y": y, "test_meta": test, "test_y": data["y_test"]}

    def meta(feats, p, key):
        del key  # deterministic
        return meta_objective(feats["train_meta"], feats["train_y"], feats["test_meta"], feats["test_y"],
                              jnp.float32(p["C"]), jnp.float32(p["tol"]), jnp.int32(p["max_iter"]))

    return Pipeline(
        name=name,
        version=f"1:{size}:{sz.data_config}:h{sz.hgb_iter}:m{sz.mlp_hidden}x{sz.mlp_steps}:f{sz.n_folds}",
        stages=(
            Stage("level0", level0, (
                Int("n_estimators0", 1, 20),
                Float("learning_rate0", 0.001, 0.999, log=True),
                Int("max_depth0", 1, 12),
                Int("n_estimators1", 1, 20),
                Int("max_depth1", 1, 32),
                Float("learning_rate1", 0.001, 0.999, log=True),
            )),
            Stage("meta", meta, (
                Float("C", 0.1, 10.0, log=True),
                Float("tol", 1e-5, 1e-2, log=True),
                Int("max_iter", 10, 300),
            )),
        ),
        prepare=lambda: _prepare(sz, data_dir),
        description=f"stacking ({size}): 4 level-0 learners with 3-fold OOF -> JAX logistic regression, test ROC-AUC",
    )


def make_tiny(**kwargs) -> Pipeline:
    """The stacking pipeline at test size."""
    return make_pipeline("tiny", **kwargs)


def make_gpu(**kwargs) -> Pipeline:
    """The stacking pipeline at the larger size."""
    return make_pipeline("gpu", **kwargs)
