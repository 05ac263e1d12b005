"""Pretrained parameters of the real pipelines, computed once and kept on disk.

The segmentation and language pipelines start their timed stages from
pretrained networks (the paper's U-Net encoder came with ImageNet weights, its
T5 teacher was the pretrained ``t5-small``). Here the pretraining runs in the
pipeline's untimed ``prepare()``, on the dataset's pretraining split, and the
parameters are written to ``<data_dir>/pretrained/<name>-<hash>.msgpack``
(flax msgpack; the hash covers everything that determines them), so every
later process, and every tuning run on the machine, loads them instead.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from typing import Any, Callable

from flax import serialization

__all__ = ["pretrained_path", "load_or_pretrain"]

logger = logging.getLogger(__name__)


def pretrained_path(name: str, tag: Any, data_dir: str | None = None) -> str:
    """``<data_dir>/pretrained/<name>-<16 hex digits of sha256(repr(tag))>.msgpack``."""
    from pipelines.data.common import default_data_dir

    digest = hashlib.sha256(repr(tag).encode()).hexdigest()[:16]
    return os.path.join(data_dir or default_data_dir(), "pretrained", f"{name}-{digest}.msgpack")


def load_or_pretrain(path: str, template: Any, pretrain: Callable[[], Any]) -> Any:
    """The parameters stored at ``path`` (restored into ``template``'s structure),
    or ``pretrain()``'s result, written there first.

    The file is written to a temporary name and renamed (atomic on POSIX), so
    concurrent processes never read a partial file; two processes that both
    miss compute the same parameters and the last rename wins.
    """
    if os.path.exists(path):
        with open(path, "rb") as f:
            return serialization.from_bytes(template, f.read())
    t0 = time.perf_counter()
    params = pretrain()
    logger.info("pretrained %s in %.1f s", os.path.basename(path), time.perf_counter() - t0)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(serialization.to_bytes(params))
    os.replace(tmp, path)
    return params
