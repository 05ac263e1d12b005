"""``credit_table``: an imbalanced tabular binary-classification dataset (offline stand-in).

The paper's stacking pipeline used Kaggle's Home Credit Default Risk table, which
needs credentials to download. This builder generates a table of the same kind
with scikit-learn's fixed-seed ``make_classification``: 40 standardized features
(10 informative, 10 redundant), about 8% positives (a default rate), 3% label
noise, split 75/25 into ``train`` and ``test``. Configs: ``cpu`` (8,000 rows, the
default) and ``tiny`` (1,200 rows, for tests).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

__all__ = ["CreditTable"]

N_FEATURES = 40


@dataclasses.dataclass
class CreditConfig(tfds.core.BuilderConfig):
    n_rows: int = 8000


class CreditTable(tfds.core.GeneratorBasedBuilder):
    """Imbalanced binary classification table (see module docstring)."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [CreditConfig(name="cpu", n_rows=8000), CreditConfig(name="tiny", n_rows=1200)]
    DEFAULT_CONFIG_NAME = "cpu"

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "x": tfds.features.Tensor(shape=(N_FEATURES,), dtype=np.float32),
                "y": tfds.features.Tensor(shape=(), dtype=np.int64),
            }),
            description=__doc__,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # generated offline
        from sklearn.datasets import make_classification

        x, y = make_classification(
            n_samples=self.builder_config.n_rows, n_features=N_FEATURES, n_informative=10, n_redundant=10,
            weights=[0.92, 0.08], flip_y=0.03, class_sep=0.8, random_state=0,
        )
        x = ((x - x.mean(0)) / x.std(0)).astype(np.float32)
        n_train = (3 * len(x)) // 4
        return {"train": self._generate_examples(x[:n_train], y[:n_train]),
                "test": self._generate_examples(x[n_train:], y[n_train:])}

    def _generate_examples(self, x, y):
        for i in range(len(x)):
            yield i, {"x": x[i], "y": np.int64(y[i])}
