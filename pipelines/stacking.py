"""Stacking (model-ensemble) pipeline: level-0 learners with out-of-fold predictions -> meta-learner.

The EEIPU paper's "ML, model ensembles" pipeline, at CPU size. Two timed stages,
as in the paper (preprocessing is untimed and done once in ``prepare``):

* **Stage 0, ``level0``** -- four learners, each fitted with 3-fold out-of-fold
  (OOF) stacking (``KFold(3, shuffle=True, random_state=0)``): for each fold, fit
  on two thirds of the training set, predict the held-out third (its OOF column)
  and the test set (averaged over the folds). Hyperparameters and ranges are the
  authors' (``sampling-range-stacking.json``):

  ============================  ==============================================  ==============
  parameter                     learner (scikit-learn)                          range
  ============================  ==============================================  ==============
  ``n_estimators0``             ExtraTrees ``n_estimators``                     int [1, 20]
  ``learning_rate0``            gradient boosting, XGBoost's role: ``learning_rate``   [0.001, 0.999]
  ``max_depth0``                ... and ``max_depth``                           int [1, 100]
  ``n_estimators1``             RandomForest ``n_estimators``                   int [1, 20]
  ``max_depth1``                RandomForest ``max_depth``                      int [1, 100]
  ``learning_rate1``            gradient boosting, CatBoost's role: ``learning_rate`` [0.001, 0.999]
  ============================  ==============================================  ==============

  XGBoost and CatBoost are not dependencies of this project; their roles are
  played by scikit-learn's ``HistGradientBoostingClassifier`` (100 rounds, 15 at
  the tiny size; the
  CatBoost-like one with depth 6 and L2 leaf regularization 3, CatBoost's
  defaults). Output: the OOF matrix ``(n_train, 4)`` and the test matrix
  ``(n_test, 4)`` of positive-class probabilities (cached by the runtime).
* **Stage 1, ``meta``** -- L2-regularized logistic regression on the four
  meta-features, written in JAX: minimizes ``C * sum(logloss) + ||w||^2 / 2``
  (scikit-learn's convention) with optax's L-BFGS until the gradient norm is
  below ``tol`` or ``max_iter`` iterations (``C`` [0.1, 10], ``tol`` [1e-5, 1e-2]
  log scale, ``max_iter`` int [10, 300]). Objective: test ROC-AUC (maximized).

Stage 0 dominates the cost (seconds vs milliseconds), as in the paper, so
memoizing it (a candidate that keeps the level-0 hyperparameters and changes
only the meta-learner's) saves nearly a whole trial.

Data: the ``credit_table`` tfds builder (:mod:`pipelines.data.credit_table`), an
offline stand-in for the paper's Home Credit table; ``dataset="name"`` takes a
public tfds dataset with ``x``/``y``-like features instead (needs internet).
Sizes: ``cpu`` (8,000 rows, default), ``tiny`` (1,200 rows, for tests).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from eeipu_jax.space import Float, Int
from pipelines.base import Pipeline, Stage

__all__ = ["make_pipeline", "make_tiny", "roc_auc", "fit_logistic"]

N_FOLDS = 3
ROUNDS = {"cpu": 100, "tiny": 15}  # boosting rounds of the two gradient-boosting learners


def roc_auc(scores, labels) -> float:
    """ROC-AUC by the rank (Mann-Whitney) formula, ties counted as one half."""
    from scipy.stats import rankdata

    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC-AUC needs both classes in the labels")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _logistic_loss(params, x, y, c):
    z = x @ params["w"] + params["b"]
    logloss = jnp.sum(jnp.logaddexp(0.0, z) - y * z)
    return c * logloss + 0.5 * jnp.sum(params["w"] ** 2)


@jax.jit
def fit_logistic(x, y, c, tol, max_iter):
    """L2 logistic regression (scikit-learn's objective) by optax L-BFGS.

    Stops when the gradient's infinity norm is below ``tol`` or after
    ``max_iter`` iterations (both traced: one compilation for every value).

    Returns:
        ``(params, n_iter)``.
    """
    params = {"w": jnp.zeros((x.shape[1],), x.dtype), "b": jnp.zeros((), x.dtype)}
    loss = lambda p: _logistic_loss(p, x, y, c)  # noqa: E731
    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss)

    def cond(carry):
        _, state, i, gnorm = carry
        return (i < max_iter) & (gnorm > tol)

    def body(carry):
        p, state, i, _ = carry
        value, grad = value_and_grad(p, state=state)
        updates, state = opt.update(grad, state, p, value=value, grad=grad, value_fn=loss)
        p = optax.apply_updates(p, updates)
        gnorm = jnp.max(jnp.abs(jnp.concatenate([jnp.ravel(g) for g in jax.tree.leaves(jax.grad(loss)(p))])))
        return p, state, i + 1, gnorm

    init = (params, opt.init(params), jnp.asarray(0, jnp.int32), jnp.asarray(jnp.inf, x.dtype))
    p, _, n, _ = jax.lax.while_loop(cond, body, init)
    return p, n


def _learners(p: dict, seed: int, rounds: int):
    from sklearn.ensemble import ExtraTreesClassifier, HistGradientBoostingClassifier, RandomForestClassifier

    return [
        HistGradientBoostingClassifier(learning_rate=p["learning_rate0"], max_depth=int(p["max_depth0"]),
                                       max_iter=rounds, early_stopping=False, random_state=seed),
        ExtraTreesClassifier(n_estimators=int(p["n_estimators0"]), random_state=seed, n_jobs=1),
        RandomForestClassifier(n_estimators=int(p["n_estimators1"]), max_depth=int(p["max_depth1"]),
                               random_state=seed, n_jobs=1),
        HistGradientBoostingClassifier(learning_rate=p["learning_rate1"], max_depth=6, l2_regularization=3.0,
                                       max_iter=rounds, early_stopping=False, random_state=seed),
    ]


def _level0(data, p, key):
    from sklearn.model_selection import KFold

    rounds = ROUNDS[data["size"]]
    seed = int(jax.random.randint(key, (), 0, 2**31 - 1))
    x, y, xt = data["train"]["x"], data["train"]["y"], data["test"]["x"]
    oof = np.zeros((len(x), 4), np.float32)
    test = np.zeros((len(xt), 4), np.float32)
    for tr, va in KFold(N_FOLDS, shuffle=True, random_state=0).split(x):
        for j, model in enumerate(_learners(p, seed, rounds)):
            model.fit(x[tr], y[tr])
            oof[va, j] = model.predict_proba(x[va])[:, 1]
            test[:, j] += model.predict_proba(xt)[:, 1] / N_FOLDS
    return {"oof": oof, "test": test, "y": y.astype(np.float32), "y_test": data["test"]["y"].astype(np.float32)}


def _meta(level0, p, key):
    del key  # deterministic
    w, n_iter = fit_logistic(jnp.asarray(level0["oof"]), jnp.asarray(level0["y"]), jnp.float32(p["C"]),
                             jnp.float32(p["tol"]), jnp.int32(p["max_iter"]))
    scores = np.asarray(jnp.asarray(level0["test"]) @ w["w"] + w["b"])
    return {"objective": roc_auc(scores, level0["y_test"]), "n_iter": int(n_iter)}


def make_pipeline(size: str = "cpu", *, dataset: str | None = None, data_dir: str | None = None) -> Pipeline:
    """The stacking pipeline.

    Args:
        size: ``"cpu"`` (8,000 rows) or ``"tiny"`` (1,200 rows).
        dataset: a public tfds dataset name to use instead of the offline table
            (its ``features``/``label``-style columns must be exposed as ``x``/``y``).
        data_dir: tfds data directory (default: see :mod:`pipelines.data.common`).
    """
    if size not in ("cpu", "tiny"):
        raise ValueError(f"stacking: size must be 'cpu' or 'tiny', got {size!r}")

    def prepare():
        from pipelines.data.common import load_arrays
        from pipelines.data.credit_table import CreditTable

        source = dataset or CreditTable
        cfg = None if dataset else size
        out = {"size": size}
        for split in ("train", "test"):
            arrays = load_arrays(source, split, data_dir_path=data_dir, config=cfg)
            out[split] = {"x": np.asarray(arrays["x"], np.float32), "y": np.asarray(arrays["y"], np.int64)}
        return out

    stages = (
        Stage("level0", _level0, (
            Int("n_estimators0", 1, 20),
            Float("learning_rate0", 0.001, 0.999),
            Int("max_depth0", 1, 100),
            Int("n_estimators1", 1, 20),
            Int("max_depth1", 1, 100),
            Float("learning_rate1", 0.001, 0.999),
        )),
        Stage("meta", _meta, (
            Float("C", 0.1, 10.0),
            Float("tol", 1e-5, 1e-2, log=True),
            Int("max_iter", 10, 300),
        )),
    )
    name = "stacking" if size == "cpu" else f"stacking-{size}"
    return Pipeline(name=name, version=f"1-{dataset or 'credit_table'}", stages=stages, prepare=prepare,
                    description="level-0 ensemble with 3-fold OOF predictions -> JAX logistic meta-learner (ROC-AUC)")


def make_tiny() -> Pipeline:
    return make_pipeline("tiny")
