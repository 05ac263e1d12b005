"""Datasets of the real pipelines, prepared offline through tensorflow-datasets.

Importing this package registers the project's builders (``credit_table``,
``aerial_scenes``, ``pydoc_text``) with tfds and with :data:`DATASETS`. Load a
split with :func:`load_arrays`; see :mod:`pipelines.data.common` for the
data directory, the TensorFlow-free path through tfds and how to declare a
new dataset.
"""

from pipelines.data.aerial_scenes import AerialScenes
from pipelines.data.common import (
    DATA_DIR_ENV,
    DATASETS,
    ArrayBuilder,
    ArrayConfig,
    data_source,
    default_data_dir,
    define_builder,
    get_builder,
    load_arrays,
    load_splits,
)
from pipelines.data.credit_table import CreditTable
from pipelines.data.pydoc_text import PydocText

__all__ = [
    "DATA_DIR_ENV", "DATASETS", "ArrayBuilder", "ArrayConfig", "data_source", "default_data_dir",
    "define_builder", "get_builder", "load_arrays", "load_splits",
    "CreditTable", "AerialScenes", "PydocText",
]
