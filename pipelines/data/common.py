"""Offline datasets through tensorflow-datasets, without TensorFlow.

Every dataset of the real pipelines is a tfds ``GeneratorBasedBuilder`` that
writes the ``array_record`` file format and is read back with
``builder.as_data_source`` (random access, pure Python + array_record; no
TensorFlow). What tfds 4.9.10 needs for this, checked in its source:

* ``DatasetInfo(builder=self, features=...)`` directly in ``_info`` (the
  ``dataset_info_from_configs`` helper reads metadata files from the builder's
  package directory, which programmatically declared builders do not have);
* ``tfds.features.Tensor``/``Scalar``/``Text`` encode and decode with NumPy
  only; the writer serializes examples to ``tf.train.Example`` protos with the
  ``protobuf`` package, not TensorFlow;
* ``download_and_prepare`` with ``DownloadConfig(try_download_gcs=False)``, so
  a machine without internet never waits on a GCS probe;
* ``disable_shuffling=True``, so records keep the generator's order (the
  default shuffles by key hash);
* a ``code_path`` override: tfds locates a builder's source through the
  ``importlib_resources`` backport, which is not installed here (it is also
  needed, ``pip install importlib_resources``, before any of tfds's own
  catalog builders can be used).

What does *not* work without TensorFlow: ``tfds.load`` / ``as_dataset``
(``tf.data`` pipelines) and the ``tfrecord`` file format. This module never
uses them.

A dataset is prepared once into the data directory (``data_dir`` argument,
else the ``EEIPU_JAX_DATA_DIR`` environment variable, else
``~/.cache/eeipu_jax/tensorflow_datasets``); later loads find the files and
do not call the generator again. A name that is not one of the project's
builders is passed to ``tfds.data_source(name, ...)`` unchanged, so with
internet the same loader reads a public tfds dataset (e.g. ``"mnist"``).

Declaring a new dataset is one call::

    def splits(params):
        rng = np.random.default_rng(params["seed"])
        def gen(n):
            for _ in range(n):
                yield {"x": rng.normal(size=3).astype(np.float32), "label": int(rng.integers(2))}
        return {"train": gen(params["n"]), "test": gen(params["n"] // 4)}

    MyData = define_builder(
        "my_data",
        features=lambda p: {"x": tfds.features.Tensor(shape=(3,), dtype=np.float32),
                            "label": tfds.features.Scalar(dtype=np.int64)},
        splits=splits,
        configs={"tiny": {"n": 40, "seed": 0}, "cpu": {"n": 4000, "seed": 0}},
    )
    arrays = load_arrays(MyData, "train", config="tiny")   # {"x": (40, 3), "label": (40,)}
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

__all__ = [
    "DATA_DIR_ENV",
    "ArrayConfig",
    "ArrayBuilder",
    "DATASETS",
    "default_data_dir",
    "define_builder",
    "get_builder",
    "data_source",
    "load_arrays",
    "load_splits",
]

DATA_DIR_ENV = "EEIPU_JAX_DATA_DIR"

#: The project's builders by tfds name (filled by :class:`ArrayBuilder` subclasses).
DATASETS: dict[str, type[ArrayBuilder]] = {}


def default_data_dir() -> str:
    """``$EEIPU_JAX_DATA_DIR``, else ``~/.cache/eeipu_jax/tensorflow_datasets``."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return os.path.expanduser(env)
    return str(Path.home() / ".cache" / "eeipu_jax" / "tensorflow_datasets")


@dataclasses.dataclass(eq=False)
class ArrayConfig(tfds.core.BuilderConfig):
    """A builder config carrying the generator's parameters (sizes, seeds).

    The parameters define the data: change them only together with the
    builder's version (prepared files are keyed by name/config/version).
    """

    params: dict = dataclasses.field(default_factory=dict)


class ArrayBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of the project's builders: array_record files, generator order kept.

    Subclasses set ``name``, ``VERSION``, ``BUILDER_CONFIGS`` (of
    :class:`ArrayConfig`) and implement :meth:`features` and :meth:`splits`.
    """

    VERSION = tfds.core.Version("1.0.0")
    DESCRIPTION = ""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("name"):
            DATASETS[cls.name] = cls

    def __init__(self, *, file_format: str | None = "array_record", **kwargs):
        super().__init__(file_format=file_format, **kwargs)

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # tfds's own lookup goes through the ``importlib_resources`` backport,
        # which the environment lacks; the builder's source file is all it needs.
        return epath.Path(inspect.getfile(cls))

    @property
    def params(self) -> dict:
        """The selected config's generator parameters."""
        return dict(self.builder_config.params)

    def features(self, params: dict) -> Mapping[str, Any]:
        """The feature spec (a dict of tfds features) for ``params``."""
        raise NotImplementedError

    def splits(self, params: dict) -> Mapping[str, Iterable[dict]]:
        """Split name -> iterable of examples (dicts of NumPy values / str)."""
        raise NotImplementedError

    def _info(self) -> tfds.core.DatasetInfo:
        feats = self.features(self.params)
        if not isinstance(feats, tfds.features.FeaturesDict):
            feats = tfds.features.FeaturesDict(dict(feats))
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION or (self.__doc__ or "").strip().split("\n")[0],
            features=feats,
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # everything is generated or ships with installed packages
        return {name: self._generate_examples(examples) for name, examples in self.splits(self.params).items()}

    def _generate_examples(self, examples):
        for i, example in enumerate(examples):
            yield i, example


def define_builder(
    name: str,
    *,
    features: Mapping[str, Any] | Callable[[dict], Mapping[str, Any]],
    splits: Callable[[dict], Mapping[str, Iterable[dict]]],
    configs: Mapping[str, dict],
    version: str = "1.0.0",
    description: str = "",
    register_tfds: bool = True,
) -> type[ArrayBuilder]:
    """Declare a builder from a generator function.

    Args:
        name: tfds dataset name (snake_case; also the key in :data:`DATASETS`).
        features: dict of tfds features, or a function ``params -> dict``.
        splits: ``params -> {split: iterable of example dicts}`` (iterables are
            consumed once, when the data is prepared).
        configs: config name -> generator parameters (e.g. ``{"tiny": {...},
            "cpu": {...}}``); the first is the default.
        version: dataset version ("major.minor.patch"); bump it when the
            generator changes, so stale prepared files are not reused.
        description: one line.
        register_tfds: also register ``name`` with tfds, so
            ``tfds.data_source(name)`` finds it.

    Returns:
        The builder class.

    Raises:
        ValueError: empty configs, or a name already taken.
    """
    if not configs:
        raise ValueError(f"dataset {name!r}: at least one config is required")
    if name in DATASETS:
        raise ValueError(f"dataset {name!r} is already defined")
    feature_fn = features if callable(features) else (lambda params, f=dict(features): f)
    attrs = {
        "name": name,
        "VERSION": tfds.core.Version(version),
        "DESCRIPTION": description,
        "BUILDER_CONFIGS": [ArrayConfig(name=k, params=dict(v), description=f"{name}/{k}") for k, v in configs.items()],
        "features": lambda self, params: feature_fn(params),
        "splits": lambda self, params: splits(params),
        "__module__": __name__,
    }
    cls_name = "".join(part.title() for part in name.split("_")) + "Builder"
    return type(cls_name, (ArrayBuilder,), attrs, skip_registration=not register_tfds)


def _split_name(dataset: str, config: str | None) -> tuple[str, str | None]:
    if "/" in dataset:
        base, _, cfg = dataset.partition("/")
        if config is not None and config != cfg:
            raise ValueError(f"config given twice: {dataset!r} and config={config!r}")
        return base, cfg
    return dataset, config


def get_builder(
    dataset: str | type[ArrayBuilder] | tfds.core.DatasetBuilder,
    *,
    config: str | None = None,
    data_dir: str | os.PathLike | None = None,
    prepare: bool = True,
) -> tfds.core.DatasetBuilder:
    """A (prepared) builder: a project builder class or name, or a tfds name.

    Args:
        dataset: builder class/instance, a name in :data:`DATASETS`, or any tfds
            name (``"name"`` or ``"name/config"``).
        config: config name (default: the builder's first config).
        data_dir: data directory (default: :func:`default_data_dir`).
        prepare: generate/download the files if they are missing.
    """
    if isinstance(dataset, tfds.core.DatasetBuilder):
        builder = dataset
    else:
        data_dir = str(data_dir) if data_dir is not None else default_data_dir()
        if isinstance(dataset, str):
            name, config = _split_name(dataset, config)
            cls = DATASETS.get(name)
            if cls is None:
                kwargs = {"config": config} if config else {}
                builder = tfds.builder(name, data_dir=data_dir, file_format="array_record", **kwargs)
                if prepare:
                    builder.download_and_prepare()
                return builder
        elif isinstance(dataset, type) and issubclass(dataset, tfds.core.DatasetBuilder):
            cls = dataset
        else:
            raise TypeError(f"expected a builder class, builder or dataset name, got {dataset!r}")
        if config is not None and config not in cls.builder_configs:
            raise ValueError(f"dataset {cls.name!r} has no config {config!r}; configs: {sorted(cls.builder_configs)}")
        builder = cls(config=config, data_dir=data_dir)
    if prepare:
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(try_download_gcs=False)
        )
    return builder


def data_source(
    dataset: str | type[ArrayBuilder] | tfds.core.DatasetBuilder,
    split: str,
    *,
    config: str | None = None,
    data_dir: str | os.PathLike | None = None,
):
    """A random-access source of one split (``len(src)``, ``src[i]`` -> example dict).

    Project builders are prepared through their class; any other name goes
    through ``tfds.data_source(name, split=split, ...)`` (needs internet the
    first time, untested here).
    """
    if isinstance(dataset, str) and _split_name(dataset, config)[0] not in DATASETS:
        name, config = _split_name(dataset, config)
        kwargs = {"config": config} if config else {}
        return tfds.data_source(
            name, split=split,
            data_dir=str(data_dir) if data_dir is not None else default_data_dir(),
            builder_kwargs=kwargs,
        )
    builder = get_builder(dataset, config=config, data_dir=data_dir)
    if split not in builder.info.splits:
        raise ValueError(f"dataset {builder.name!r} has no split {split!r}; splits: {sorted(builder.info.splits)}")
    return builder.as_data_source(split=split)


def _to_array(values: list) -> np.ndarray:
    first = values[0]
    if isinstance(first, bytes):
        return np.asarray([v.decode("utf-8") for v in values])
    if isinstance(first, str):
        return np.asarray(values)
    return np.stack([np.asarray(v) for v in values])


def load_arrays(
    dataset: str | type[ArrayBuilder] | tfds.core.DatasetBuilder,
    split: str,
    *,
    config: str | None = None,
    data_dir: str | os.PathLike | None = None,
    chunk: int = 4096,
) -> dict[str, np.ndarray]:
    """One split as a dict of stacked NumPy arrays (text as ``str`` arrays).

    Args:
        dataset: see :func:`get_builder`.
        split: split name (tfds slicing like ``"train[:10%]"`` works for tfds names).
        config: config name.
        data_dir: data directory.
        chunk: records read per ``__getitems__`` call.

    Returns:
        ``{feature: array}`` with the example index as the leading axis
        (features must be flat: no nested dicts).
    """
    src = data_source(dataset, split, config=config, data_dir=data_dir)
    n = len(src)
    if n == 0:
        raise ValueError(f"split {split!r} of {dataset!r} is empty")
    records: list = []
    getitems = getattr(src, "__getitems__", None)
    for start in range(0, n, chunk):
        keys = list(range(start, min(n, start + chunk)))
        records.extend(getitems(keys) if getitems is not None else [src[k] for k in keys])
    out = {}
    for key in records[0]:
        if isinstance(records[0][key], dict):
            raise ValueError(f"feature {key!r} is nested; load_arrays needs flat features")
        out[key] = _to_array([r[key] for r in records])
    return out


def load_splits(
    dataset: str | type[ArrayBuilder] | tfds.core.DatasetBuilder,
    splits: Iterable[str],
    *,
    config: str | None = None,
    data_dir: str | os.PathLike | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """:func:`load_arrays` for several splits: ``{split: {feature: array}}``."""
    return {s: load_arrays(dataset, s, config=config, data_dir=data_dir) for s in splits}
