"""The repository's pipelines, registered by name.

Importing this module registers the concrete pipelines of this repository
with the library's registry (:mod:`eeipu_jax.runtime.registry`), so that the
experiment scripts and ``--pipeline NAME`` find them. Each entry is an import
path, imported only when the pipeline is requested. The registry's functions
are re-exported here for the scripts' convenience.
"""

from __future__ import annotations

from eeipu_jax.runtime.registry import (
    PIPELINES,
    available_pipelines,
    get_pipeline,
    import_object,
    register_pipeline,
)

__all__ = ["PIPELINES", "register_pipeline", "get_pipeline", "available_pipelines", "import_object"]

_REGISTERED = {
    "toy": "pipelines.toy:make_toy",
    "toy-small": "pipelines.toy:make_toy_small",
    "stacking": "pipelines.stacking:make_pipeline",
    "stacking-tiny": "pipelines.stacking:make_tiny",
    "stacking-gpu": "pipelines.stacking:make_gpu",
    "segmentation": "pipelines.segmentation:make_pipeline",
    "segmentation-tiny": "pipelines.segmentation:make_tiny",
    "segmentation-gpu": "pipelines.segmentation:make_gpu",
    "language": "pipelines.language:make_pipeline",
    "language-tiny": "pipelines.language:make_tiny",
    "language-gpu": "pipelines.language:make_gpu",
}
for _name, _path in _REGISTERED.items():
    # overwrite: re-importing this module (importlib.reload) re-registers the same paths
    register_pipeline(_name, _path, overwrite=True)
