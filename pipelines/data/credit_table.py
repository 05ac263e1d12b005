"""``credit_table``: tabular binary classification for the stacking pipeline.

Stands in for the paper's Home Credit default table (a Kaggle download):

* ``tiny``: scikit-learn's bundled breast-cancer table (569 x 30, real data,
  ships inside the package), split 75/25 with a fixed permutation;
* ``cpu``: ``sklearn.datasets.make_classification`` with 8,000 rows and 40
  features (10 informative, 10 redundant), an 8% positive class like a
  default rate, 3% flipped labels, ``class_sep=0.8``, fixed seed; 75/25 split;
* ``gpu``: the same generator with 100,000 rows.

Features: ``x`` (float32, one row), ``label`` (int64, 0/1). Splits ``train``
and ``test``.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from pipelines.data.common import ArrayBuilder, ArrayConfig

__all__ = ["CreditTable", "table_arrays"]


def table_arrays(params: dict) -> tuple[np.ndarray, np.ndarray]:
    """The full table ``(x float32 (n, d), y int64 (n,))`` for a config's params."""
    from sklearn import datasets

    if params["source"] == "breast_cancer":
        x, y = datasets.load_breast_cancer(return_X_y=True)
    elif params["source"] == "make_classification":
        x, y = datasets.make_classification(
            n_samples=params["n"], n_features=params["d"], n_informative=params["informative"],
            n_redundant=params["redundant"], weights=[1.0 - params["positive"], params["positive"]],
            flip_y=params["flip_y"], class_sep=params["class_sep"], random_state=params["seed"],
        )
    else:
        raise ValueError(f"unknown source {params['source']!r}")
    return x.astype(np.float32), y.astype(np.int64)


_GEN = {"source": "make_classification", "d": 40, "informative": 10, "redundant": 10,
        "positive": 0.08, "flip_y": 0.03, "class_sep": 0.8, "seed": 0, "test_fraction": 0.25}


class CreditTable(ArrayBuilder):
    """Tabular binary classification (credit-default-like), offline."""

    name = "credit_table"
    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [
        ArrayConfig(name="tiny", params={"source": "breast_cancer", "d": 30, "seed": 0, "test_fraction": 0.25},
                    description="sklearn breast cancer, 569 x 30"),
        ArrayConfig(name="cpu", params={**_GEN, "n": 8000}, description="make_classification 8000 x 40"),
        ArrayConfig(name="gpu", params={**_GEN, "n": 100_000}, description="make_classification 100000 x 40"),
    ]

    def features(self, params):
        return {
            "x": tfds.features.Tensor(shape=(params["d"],), dtype=np.float32),
            "label": tfds.features.Scalar(dtype=np.int64),
        }

    def splits(self, params):
        x, y = table_arrays(params)
        order = np.random.default_rng(params["seed"]).permutation(len(y))
        n_test = int(round(params["test_fraction"] * len(y)))
        idx = {"train": order[n_test:], "test": order[:n_test]}
        return {s: ({"x": x[i], "label": y[i]} for i in ids) for s, ids in idx.items()}
