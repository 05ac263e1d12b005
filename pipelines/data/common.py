"""Prepare-once, load-as-arrays access to tensorflow-datasets builders, without TensorFlow.

The real pipelines read their data through tfds: a builder (a
:class:`tfds.core.GeneratorBasedBuilder` subclass shipped in this package, or a
public tfds dataset name when the machine has internet) is prepared once into a
data directory in the ``array_record`` file format and read back with tfds's
random-access data sources (``builder.as_data_source``), which need neither
TensorFlow nor ``tf.data``. A second load finds the prepared files and does not
run the generator again.

The data directory is, in order: the ``data_dir`` argument, ``$EEIPU_JAX_DATA_DIR``,
or ``~/.cache/eeipu_jax/tensorflow_datasets``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

__all__ = ["data_dir", "load_arrays"]


def data_dir(path: str | None = None) -> str:
    """The directory prepared datasets live in (created if missing)."""
    path = path or os.environ.get("EEIPU_JAX_DATA_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "eeipu_jax", "tensorflow_datasets")
    os.makedirs(path, exist_ok=True)
    return path


def load_arrays(builder: Any, split: str, *, data_dir_path: str | None = None, config: str | None = None) -> dict:
    """All examples of one split as a dict of stacked NumPy arrays.

    Args:
        builder: a tfds builder class (e.g. :class:`pipelines.data.credit_table.CreditTable`)
            or the name of a public tfds dataset (``"name"`` or ``"name/config"``;
            needs internet the first time).
        split: split name (``"train"``, ``"test"``, ...).
        data_dir_path: data directory (see :func:`data_dir`).
        config: builder config name (e.g. ``"tiny"``), for builder classes.

    Returns:
        ``{feature: array}`` with the examples stacked along axis 0.

    Raises:
        ValueError: unknown split or config.
    """
    import tensorflow_datasets as tfds

    root = data_dir(data_dir_path)
    if isinstance(builder, str):
        b = tfds.builder(builder, data_dir=root, file_format="array_record")
    else:
        if config is not None and config not in {c.name for c in builder.BUILDER_CONFIGS}:
            raise ValueError(f"{builder.__name__}: unknown config {config!r}; "
                             f"known: {[c.name for c in builder.BUILDER_CONFIGS]}")
        b = builder(data_dir=root, config=config, file_format="array_record")
    if not b.is_prepared():
        b.download_and_prepare()
    if split not in b.info.splits:
        raise ValueError(f"{b.name}: unknown split {split!r}; known: {sorted(b.info.splits)}")
    source = b.as_data_source(split=split)
    examples = [source[i] for i in range(len(source))]
    return {k: np.stack([np.asarray(e[k]) for e in examples]) for k in examples[0]}
