"""``aerial_scenes``: generated aerial-like images with per-pixel class masks.

Stands in for the paper's Semantic Drone Dataset (a manual download). Each
scene is drawn from a fixed seed (the config's seed, the split and the image
index), so the data are identical on every machine. Six classes:

0 background (grass/soil texture), 1 building (rectangles), 2 tree (disks),
3 road (thick straight bands), 4 car (small rectangles, drawn on roads when
there are any), 5 roof (triangles).

Class colours come from overlapping per-class distributions; a low-frequency
illumination field multiplies the scene and Gaussian noise is added, so
per-channel normalisation and spatial smoothing both matter.

A third split, ``pretrain``, is a *source domain* for pretraining the
segmentation network (the role ImageNet plays for the paper's encoder): the
same kinds of scenes drawn with a different class palette
(:data:`SOURCE_COLOURS`: every class colour moved by about 0.2 per channel),
so a network pretrained on it transfers to ``train``/``validation`` but
gains from fine-tuning on them.

Features: ``image`` (uint8, H x W x 3), ``mask`` (uint8, H x W). Splits
``train``, ``validation`` and ``pretrain``. Configs: ``tiny`` (16/8/16
images of 32x32), ``cpu`` (256/64/1024 of 64x64), ``gpu`` (2048/256/4096 of
128x128). Version 1.1.0 added the ``pretrain`` split (``train`` and
``validation`` are the same as in 1.0.0).
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from pipelines.data.common import ArrayBuilder, ArrayConfig

__all__ = ["AerialScenes", "render_scene", "N_CLASSES", "CLASS_NAMES", "COLOURS", "SOURCE_COLOURS"]

CLASS_NAMES = ("background", "building", "tree", "road", "car", "roof")
N_CLASSES = len(CLASS_NAMES)
#: Mean RGB per class (0..1) of the target domain (``train``, ``validation``);
#: the per-image jitter in :func:`render_scene` makes them overlap.
COLOURS = np.array([
    [0.35, 0.45, 0.25],  # background
    [0.55, 0.52, 0.50],  # building
    [0.20, 0.40, 0.18],  # tree
    [0.42, 0.42, 0.44],  # road
    [0.70, 0.20, 0.20],  # car
    [0.60, 0.35, 0.28],  # roof
], dtype=np.float64)

#: Mean RGB per class of the ``pretrain`` split (source domain): ``COLOURS``
#: plus fixed offsets of about 0.2 per channel (drawn once, rounded, clipped to
#: [0, 1]); e.g. buildings turn darker and greener, roads bluer.
SOURCE_COLOURS = np.array([
    [0.35, 0.51, 0.20],  # background
    [0.37, 0.43, 0.30],  # building
    [0.21, 0.67, 0.08],  # tree
    [0.30, 0.52, 0.51],  # road
    [0.72, 0.01, 0.19],  # car
    [0.74, 0.08, 0.19],  # roof
], dtype=np.float64)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a coarse grid bilinearly upsampled."""
    grid = rng.uniform(-1.0, 1.0, size=(cells + 1, cells + 1))
    t = np.linspace(0.0, cells, size)
    i = np.minimum(t.astype(int), cells - 1)
    f = t - i
    rows = grid[i] * (1 - f)[:, None] + grid[i + 1] * f[:, None]
    return rows[:, i] * (1 - f)[None, :] + rows[:, i + 1] * f[None, :]


def render_scene(rng: np.random.Generator, size: int, colours: np.ndarray = COLOURS) -> tuple[np.ndarray, np.ndarray]:
    """One scene: ``(image uint8 (size, size, 3), mask uint8 (size, size))``.

    Args:
        rng: the scene's generator (layout, colour jitter, noise).
        size: image side in pixels.
        colours: ``(N_CLASSES, 3)`` mean RGB per class (:data:`COLOURS`, or
            :data:`SOURCE_COLOURS` for the source domain).
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    mask = np.zeros((size, size), np.uint8)
    s = size / 64.0
    for _ in range(rng.integers(0, 3)):  # roads: thick bands at a random angle
        ang = rng.uniform(0, np.pi)
        c = rng.uniform(0.2, 0.8, size=2) * size
        dist = np.abs((xx - c[0]) * np.sin(ang) - (yy - c[1]) * np.cos(ang))
        mask[dist < rng.uniform(2.5, 4.5) * s] = 3
    for _ in range(rng.integers(1, 4)):  # buildings
        h, w = rng.uniform(8, 18, size=2) * s
        y0, x0 = rng.uniform(0, size - h), rng.uniform(0, size - w)
        mask[(yy >= y0) & (yy < y0 + h) & (xx >= x0) & (xx < x0 + w)] = 1
    for _ in range(rng.integers(0, 3)):  # roofs: triangles
        c = rng.uniform(0.1, 0.9, size=2) * size
        r = rng.uniform(5, 10) * s
        inside = (yy - c[1] < r) & (yy - c[1] > -r) & (np.abs(xx - c[0]) < (yy - c[1] + r) / 2)
        mask[inside] = 5
    for _ in range(rng.integers(1, 6)):  # trees: disks
        c = rng.uniform(0, 1, size=2) * size
        r = rng.uniform(2.5, 6) * s
        mask[(xx - c[0]) ** 2 + (yy - c[1]) ** 2 < r * r] = 2
    road = np.argwhere(mask == 3)
    for _ in range(rng.integers(0, 4)):  # cars: small rectangles, on a road if any
        y0, x0 = road[rng.integers(len(road))] if len(road) else rng.uniform(0, size, size=2)
        h, w = (rng.uniform(2, 3.5) * s, rng.uniform(3.5, 5) * s)[:: 1 if rng.uniform() < 0.5 else -1]
        mask[(yy >= y0) & (yy < y0 + h) & (xx >= x0) & (xx < x0 + w)] = 4
    colours = np.clip(colours + rng.normal(0, 0.06, size=colours.shape), 0, 1)
    img = colours[mask]
    img += 0.08 * _smooth_noise(rng, size, 8)[..., None]  # texture
    img *= (1.0 + 0.25 * _smooth_noise(rng, size, 2))[..., None]  # illumination
    img += rng.normal(0, 0.05, size=img.shape)
    img *= rng.uniform(0.7, 1.3, size=3)  # per-image colour cast
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8), mask


class AerialScenes(ArrayBuilder):
    """Generated aerial-like scenes with 6-class segmentation masks."""

    name = "aerial_scenes"
    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.1.0": "pretrain split (source-domain palette)", "1.0.0": "train and validation"}
    BUILDER_CONFIGS = [
        ArrayConfig(name="tiny", params={"size": 32, "train": 16, "validation": 8, "pretrain": 16, "seed": 0}),
        ArrayConfig(name="cpu", params={"size": 64, "train": 256, "validation": 64, "pretrain": 1024, "seed": 0}),
        ArrayConfig(name="gpu", params={"size": 128, "train": 2048, "validation": 256, "pretrain": 4096, "seed": 0}),
    ]

    def features(self, params):
        n = params["size"]
        return {
            "image": tfds.features.Tensor(shape=(n, n, 3), dtype=np.uint8),
            "mask": tfds.features.Tensor(shape=(n, n), dtype=np.uint8),
        }

    def splits(self, params):
        def gen(split_id: int, count: int, colours: np.ndarray = COLOURS):
            for i in range(count):
                image, mask = render_scene(np.random.default_rng([params["seed"], split_id, i]), params["size"], colours)
                yield {"image": image, "mask": mask}

        return {"train": gen(0, params["train"]), "validation": gen(1, params["validation"]),
                "pretrain": gen(2, params["pretrain"], SOURCE_COLOURS)}
