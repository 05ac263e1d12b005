"""The segmentation pipeline: normalize + augment -> U-Net -> CRF-smoothed evaluation.

The paper's "semantic segmentation" pipeline (arXiv 2411.03731), with its
stage structure and hyperparameters, on the offline ``aerial_scenes`` dataset
(:mod:`pipelines.data.aerial_scenes`: generated aerial-like images with 6-class
masks):

* **preprocessing** (``prepare``; untimed, not a BO stage): images and masks of
  the train and validation splits, images scaled to ``[0, 1]``; and the
  **pretrained U-Net** (the paper's encoder came with ImageNet weights): the
  network trained on the dataset's ``pretrain`` split, a source domain with a
  different class palette, with inputs normalized by that split's channel
  statistics; computed once per data directory and kept on disk
  (:mod:`pipelines.pretrained`);
* **stage 0, ``augment``**: per-channel normalization ``(x - mean_c) / std_c``
  with the three means and three standard deviations as hyperparameters (the
  authors tune them too), applied to both splits, and three augmented copies
  of the training set, each image flipped/rotated by a random element of the
  dihedral group (the stage's key). A pretrained network expects inputs
  normalized as in its pretraining, so these matter;
* **stage 1, ``train``**: fine-tuning of the pretrained U-Net (Flax linen) for
  a fixed number of epochs with optax AdamW under a one-cycle cosine schedule;
  hyperparameters ``batch_size``, ``peak_lr``, ``weight_decay``. The epoch
  is one ``lax.scan`` over fixed-shape batches (remainder dropped), jitted
  per batch size; to bound the number of compilations the batch size used is
  ``batch_size`` (at most the training set) rounded down to a multiple of 4. Output: the trained
  parameters (a pytree of arrays, cached with orbax) and the normalized
  validation split;
* **stage 2, ``crf``**: the U-Net's softmax on the validation images smoothed
  by a mean-field CRF with a Gaussian spatial kernel (Potts compatibility;
  hyperparameters: spatial width ``sigma``, compatibility weight ``compat``,
  unary ``confidence``); ``CRF_ITERS`` mean-field iterations, the kernel
  applied as two separable 1-D convolutions and normalized symmetrically
  (``D^-1/2 K D^-1/2``, pydensecrf's default), so ``compat`` weighs the
  neighbourhood's vote against the unary on the same scale whatever
  ``sigma`` is. Objective: validation mean IoU of the smoothed labels
  (maximize).

The authors' last code scored the model *before* CRF smoothing (so the CRF
stage's hyperparameters did not affect the objective); we score *after*
smoothing, so every stage matters.

Sizes (``size``): ``"tiny"`` (tests: 16 train / 8 validation 32x32 images,
width 4, 1 epoch, a few pretraining steps), ``"cpu"`` (default: the first 128
training and all 64 validation images of the 64x64 config, reduced to 32x32;
width 8, depth 2, 3 epochs; about 1.7 s of CPU per trial on one core),
``"gpu"`` (2048/256 128x128 images, width 32, 10 epochs).
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from eeipu_jax.space import Float, Int
from eeipu_jax.runtime.pipeline import Pipeline, Stage
from pipelines.data_parallel import shard_batch

__all__ = [
    "SegSize", "SIZES", "N_CLASSES", "CRF_ITERS", "Conv3x3", "UNet", "one_cycle", "train_unet", "init_unet",
    "pretrain_unet", "augment_copies", "normalize_and_augment", "gaussian_message", "normalized_message",
    "mean_field_step", "crf_smooth", "mean_iou", "make_pipeline", "make_tiny", "make_gpu",
]

N_CLASSES = 6
CRF_ITERS = 5
N_COPIES = 3


@dataclasses.dataclass(frozen=True)
class SegSize:
    """Sizes of one scale of the pipeline.

    Attributes:
        data_config: ``aerial_scenes`` config (``tiny``/``cpu``/``gpu``).
        width: channels of the U-Net's first level (doubled per level).
        depth: number of down-sampling levels.
        epochs: training epochs (fixed, like the authors').
        crf_radius: half-width of the CRF's truncated Gaussian kernel (static).
        downsample: integer factor the images are reduced by in ``prepare``
            (2x2 mean pooling of images, every other pixel of masks).
        n_train: training images used (the first ``n_train``; ``None``: all).
        pretrain_steps: AdamW steps of the one-off pretraining on the
            ``pretrain`` split (in ``prepare``, untimed, kept on disk); 0:
            the training starts from a random initialization.
        pretrain_batch: batch size of the pretraining.
        pretrain_lr: peak learning rate of the pretraining (one-cycle).
        im2col: compute the 3x3 convolutions as one matrix product over the
            nine shifted copies of the input (:class:`Conv3x3`), which XLA's
            CPU backend runs 4-10x faster than its convolution at these
            channel counts (measured); ``False`` uses ``lax.conv``.
        precompile: compile the training for every batch size the search
            space can produce, and the evaluation, in ``prepare`` (untimed;
            see :mod:`pipelines.compile`) instead of inside the first trial
            that uses each.
    """

    data_config: str
    width: int
    depth: int
    epochs: int
    crf_radius: int = 4
    downsample: int = 1
    n_train: int | None = None
    pretrain_steps: int = 3000
    pretrain_batch: int = 16
    pretrain_lr: float = 1e-2
    im2col: bool = True
    precompile: bool = False


SIZES = {
    "tiny": SegSize("tiny", width=4, depth=1, epochs=1, crf_radius=3, pretrain_steps=4, pretrain_batch=8),
    # One core: ~1.6 s of CPU for the fine-tuning (3 epochs of 384 augmented 32x32 images), ~1.7 s per trial.
    "cpu": SegSize("cpu", width=8, depth=2, epochs=3, crf_radius=3, downsample=2, n_train=128, pretrain_steps=3000,
                   precompile=True),
    "gpu": SegSize("gpu", width=32, depth=3, epochs=10, crf_radius=6, pretrain_steps=20_000, pretrain_batch=32,
                   pretrain_lr=3e-3, im2col=False, precompile=True),
}


# ------------------------------------------------------------------- model
class Conv3x3(nn.Module):
    """A 3x3 convolution, stride 1, zero "SAME" padding, with bias (``nn.Conv(features, (3, 3))``'s parameters).

    Attributes:
        features: output channels.
        im2col: compute it as ``patches @ kernel.reshape(9 * C, features)``
            over the nine shifted copies of the padded input (fast on XLA's
            CPU backend at small channel counts); else ``lax.conv_general_dilated``.
    """

    features: int
    im2col: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (3, 3, c, self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        if not self.im2col:
            y = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
            return y + bias
        h, w = x.shape[1:3]
        xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        patches = jnp.concatenate([xp[:, i:i + h, j:j + w] for i in range(3) for j in range(3)], axis=-1)
        return patches @ kernel.reshape(9 * c, self.features) + bias


class UNet(nn.Module):
    """A small U-Net: ``depth`` conv blocks down (max-pool), a bottleneck, and up (nearest resize + skip).

    Attributes:
        width: channels at full resolution (doubled per level).
        depth: down-sampling levels (image sides must be divisible by ``2**depth``).
        n_classes: output channels (logits).
        im2col: convolution implementation (see :class:`Conv3x3`).
    """

    width: int
    depth: int
    n_classes: int = N_CLASSES
    im2col: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        def block(h, c):
            h = nn.relu(Conv3x3(c, self.im2col)(h))
            return nn.relu(Conv3x3(c, self.im2col)(h))

        skips = []
        h = x
        for level in range(self.depth):
            h = block(h, self.width * 2**level)
            skips.append(h)
            h = nn.max_pool(h, (2, 2), strides=(2, 2))
        h = block(h, self.width * 2**self.depth)
        for level in reversed(range(self.depth)):
            b, hh, ww, c = h.shape
            h = jax.image.resize(h, (b, hh * 2, ww * 2, c), "nearest")
            h = block(jnp.concatenate([h, skips[level]], axis=-1), self.width * 2**level)
        return nn.Dense(self.n_classes, name="head")(h)  # the 1x1 convolution to class logits


def one_cycle(total_steps: int, peak_lr) -> optax.Schedule:
    """One-cycle cosine schedule (Smith & Topin 2017) as fast.ai/PyTorch's ``OneCycleLR`` defaults.

    Rises from ``peak_lr / 25`` to ``peak_lr`` over the first 30% of the steps
    (half-cosine), then anneals to ``peak_lr / 25 / 1e4``.
    """
    return optax.cosine_onecycle_schedule(total_steps, peak_lr, pct_start=0.3, div_factor=25.0, final_div_factor=1e4)


def _loss(model, params, x, y):
    logits = model.apply({"params": params}, x)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))


@functools.partial(jax.jit, static_argnames=("width", "depth", "batch", "epochs", "im2col"))
def train_unet(key, params, x, y, peak_lr, weight_decay, *, width: int, depth: int, batch: int, epochs: int,
               im2col: bool = True):
    """Train the U-Net from ``params`` with AdamW + one-cycle; returns ``(params, final epoch's mean loss)``.

    ``peak_lr`` and ``weight_decay`` are traced (no recompilation when they
    change); the batch size and epochs are static. Each epoch shuffles with a
    fresh key (from ``key``) and drops the remainder so every batch has the
    same shape. With several devices each batch is split over them
    (:mod:`pipelines.data_parallel`).
    """
    model = UNet(width, depth, im2col=im2col)
    n_batches = x.shape[0] // batch
    sched = one_cycle(n_batches * epochs, peak_lr)
    opt = optax.adamw(sched, weight_decay=weight_decay)
    state = opt.init(params)

    def step(carry, idx):
        p, s = carry
        xb, yb = shard_batch((x[idx], y[idx]))  # data-parallel over the process's devices, if several
        loss, g = jax.value_and_grad(functools.partial(_loss, model))(p, xb, yb)
        u, s = opt.update(g, s, p)
        return (optax.apply_updates(p, u), s), loss

    def epoch(carry, k):
        perm = jax.random.permutation(k, x.shape[0])[: n_batches * batch].reshape(n_batches, batch)
        carry, losses = jax.lax.scan(step, carry, perm)
        return carry, jnp.mean(losses)

    (params, _), losses = jax.lax.scan(epoch, (params, state), jax.random.split(key, epochs))
    return params, losses[-1]


def init_unet(key, sz: SegSize, image_shape) -> dict:
    """Fresh U-Net parameters for images of ``image_shape`` ``(H, W, C)``."""
    model = UNet(sz.width, sz.depth, im2col=sz.im2col)
    return model.init(key, jnp.zeros((1,) + tuple(image_shape), jnp.float32))["params"]


def pretrain_unet(x, y, sz: SegSize, seed: int = 0):
    """The one-off pretraining: ``sz.pretrain_steps`` AdamW steps (one-cycle,
    peak ``sz.pretrain_lr``, weight decay 1e-4) from a fresh initialization,
    on normalized source-domain images ``x`` and masks ``y``; whole epochs, so
    the step count is rounded up to a multiple of ``len(x) // batch``.

    Returns:
        The parameters.
    """
    batch = min(sz.pretrain_batch, len(x))
    per_epoch = len(x) // batch
    epochs = max(1, -(-sz.pretrain_steps // per_epoch))
    k_init, k_train = jax.random.split(jax.random.key(seed))
    params = init_unet(k_init, sz, x.shape[1:])
    params, _ = train_unet(k_train, params, jnp.asarray(x), jnp.asarray(y), jnp.float32(sz.pretrain_lr),
                           jnp.float32(1e-4), width=sz.width, depth=sz.depth, batch=batch, epochs=epochs,
                           im2col=sz.im2col)
    return params


# ------------------------------------------------------------ augmentation
def augment_copies(key: jax.Array, x: jax.Array, y: jax.Array, n_copies: int = N_COPIES):
    """``n_copies`` augmented copies of ``(x, y)``: each image a random dihedral transform.

    Args:
        key: PRNG key.
        x: ``(n, H, W, C)`` images (square).
        y: ``(n, H, W)`` masks.
        n_copies: number of copies.

    Returns:
        ``(n * n_copies, H, W, C)`` images and ``(n * n_copies, H, W)`` masks.
    """
    if x.shape[1] != x.shape[2]:
        raise ValueError(f"augmentation needs square images, got {x.shape[1:3]}")
    codes = jax.random.randint(key, (n_copies, x.shape[0]), 0, 8)

    def one(img, mask, code):
        def dihedral(a):
            a = jnp.where(code >= 4, jnp.flip(a, axis=1), a)
            r = code % 4
            return jax.lax.switch(r, [lambda t, k=k: jnp.rot90(t, k, axes=(0, 1)) for k in range(4)], a)
        return dihedral(img), dihedral(mask)

    xs, ys = jax.vmap(jax.vmap(one, in_axes=(0, 0, 0)), in_axes=(None, None, 0))(x, y, codes)
    return xs.reshape((-1,) + x.shape[1:]), ys.reshape((-1,) + y.shape[1:])


# ---------------------------------------------------------------------- CRF
def _gaussian_taps(sigma, radius: int) -> jax.Array:
    d = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
    return jnp.exp(-0.5 * d**2 / sigma**2)


def gaussian_message(q: jax.Array, sigma, radius: int) -> jax.Array:
    """Mean-field message ``sum_{j != i} k(i, j) q_j`` with a truncated spatial Gaussian.

    ``k(i, j) = exp(-|p_i - p_j|^2 / (2 sigma^2))`` for pixels within
    ``radius`` in both directions (zero outside the image); applied as two
    separable 1-D convolutions, the self term (``k = 1``) subtracted.

    Args:
        q: ``(H, W, L)`` label marginals of one image.
        sigma: kernel width in pixels.
        radius: static half-width of the kernel window.
    """
    taps = _gaussian_taps(sigma, radius)
    conv = lambda v: jnp.convolve(v, taps, mode="same")  # taps are symmetric
    out = jax.vmap(jax.vmap(conv, in_axes=1, out_axes=1), in_axes=2, out_axes=2)(q)  # along H
    out = jax.vmap(jax.vmap(conv, in_axes=0, out_axes=0), in_axes=2, out_axes=2)(out)  # along W
    return out - q


def normalized_message(q: jax.Array, sigma, radius: int) -> jax.Array:
    """The message with the kernel normalized symmetrically: ``D^-1/2 K D^-1/2 q``.

    ``K`` is :func:`gaussian_message`'s kernel (self term excluded) and ``D``
    the diagonal of its row sums ``K 1`` (smaller at the image border), as
    pydensecrf's default ``NORMALIZE_SYMMETRIC``: away from the border the
    message is the kernel-weighted mean of the neighbours' marginals, in
    ``[0, 1]`` whatever ``sigma`` is.
    """
    d = gaussian_message(jnp.ones(q.shape[:2] + (1,), q.dtype), sigma, radius)
    r = jax.lax.rsqrt(d)
    return gaussian_message(q * r, sigma, radius) * r


def mean_field_step(log_p: jax.Array, q: jax.Array, sigma, compat, confidence, radius: int) -> jax.Array:
    """One mean-field update of a Potts CRF with a normalized Gaussian spatial kernel.

    ``q_new = softmax(confidence * log_p + compat * message(q))`` with the
    message of :func:`normalized_message`: with the Potts compatibility
    ``mu(l, l') = [l != l']`` the pairwise energy of label ``l`` is
    ``compat * (sum_l' m_l' - m_l)``, whose first term is the same for every
    label and cancels in the softmax (Krahenbuhl & Koltun 2011).

    Args:
        log_p: ``(H, W, L)`` unary log-probabilities (the network's log-softmax).
        q: ``(H, W, L)`` current marginals.
        sigma, compat, confidence: the CRF's hyperparameters.
        radius: static kernel half-width.
    """
    return jax.nn.softmax(confidence * log_p + compat * normalized_message(q, sigma, radius), axis=-1)


def crf_smooth(logits: jax.Array, sigma, compat, confidence, *, radius: int, n_iter: int = CRF_ITERS) -> jax.Array:
    """``n_iter`` mean-field iterations from ``softmax(confidence * log_p)``; returns the marginals ``(H, W, L)``."""
    log_p = jax.nn.log_softmax(logits, axis=-1)
    q0 = jax.nn.softmax(confidence * log_p, axis=-1)
    return jax.lax.fori_loop(0, n_iter, lambda _, q: mean_field_step(log_p, q, sigma, compat, confidence, radius), q0)


def mean_iou(pred: jax.Array, target: jax.Array, n_classes: int = N_CLASSES) -> jax.Array:
    """Mean over classes of ``|pred = c and target = c| / |pred = c or target = c|``.

    Pixels of all images pool per class; classes absent from both prediction
    and target are left out of the mean.
    """
    pred = pred.reshape(-1)
    target = target.reshape(-1)
    cls = jnp.arange(n_classes)[:, None]
    inter = jnp.sum((pred[None] == cls) & (target[None] == cls), axis=1)
    union = jnp.sum((pred[None] == cls) | (target[None] == cls), axis=1)
    present = union > 0
    return jnp.sum(jnp.where(present, inter / jnp.maximum(union, 1), 0.0)) / jnp.maximum(jnp.sum(present), 1)


@functools.partial(jax.jit, static_argnames=("width", "depth", "radius", "im2col"))
def evaluate(params, x_val, y_val, sigma, compat, confidence, *, width: int, depth: int, radius: int,
             im2col: bool = True) -> dict:
    """Validation mIoU after CRF smoothing (``objective``) and before it (``miou_raw``)."""
    logits = UNet(width, depth, im2col=im2col).apply({"params": params}, x_val)
    q = jax.vmap(lambda lg: crf_smooth(lg, sigma, compat, confidence, radius=radius))(logits)
    return {
        "objective": mean_iou(jnp.argmax(q, -1), y_val),
        "miou_raw": mean_iou(jnp.argmax(logits, -1), y_val),
    }


# ------------------------------------------------------------------ pipeline
_DATA_VERSION = "1.1.0"  # aerial_scenes version whose pretrain split the pretrained U-Net saw


def _images(a, f: int):
    """uint8 ``(n, H, W, 3)`` -> float32 in ``[0, 1]``, ``f x f`` mean-pooled."""
    a = a.astype(np.float32) / 255.0
    n, h, w, c = a.shape
    return a.reshape(n, h // f, f, w // f, f, c).mean(axis=(2, 4))


def _masks(a, f: int):
    return a[:, ::f, ::f].astype(np.int32)


def _pretrained(sz: SegSize, source: dict, data_dir: str | None) -> dict:
    """The U-Net pretrained on the source-domain split, loaded from disk or computed once
    (a fresh initialization, key 0, when ``sz.pretrain_steps`` is 0)."""
    from pipelines.pretrained import load_or_pretrain, pretrained_path

    x = _images(source["image"], sz.downsample)
    if not sz.pretrain_steps:
        return init_unet(jax.random.key(0), sz, x.shape[1:])
    mean, std = x.mean(axis=(0, 1, 2)), x.std(axis=(0, 1, 2))
    tag = ("unet", sz.width, sz.depth, sz.im2col, sz.downsample, sz.pretrain_steps, sz.pretrain_batch,
           sz.pretrain_lr, sz.data_config, _DATA_VERSION, 1)
    template = init_unet(jax.random.key(0), sz, x.shape[1:])
    return load_or_pretrain(pretrained_path("unet", tag, data_dir), template,
                            lambda: pretrain_unet((x - mean) / std, _masks(source["mask"], sz.downsample), sz))


def _prepare(sz: SegSize, data_dir: str | None) -> dict:
    from pipelines.data.common import load_splits

    d = load_splits("aerial_scenes", ("train", "validation", "pretrain"), config=sz.data_config, data_dir=data_dir)
    f, n = sz.downsample, sz.n_train
    data = {
        "x_train": _images(d["train"]["image"][:n], f),
        "y_train": _masks(d["train"]["mask"][:n], f),
        "x_val": _images(d["validation"]["image"], f),
        "y_val": _masks(d["validation"]["mask"], f),
        "init": _pretrained(sz, d["pretrain"], data_dir),
    }
    if sz.precompile:
        precompile_stages(data, sz)
    return data


def train_batch(batch_size: int, n: int) -> int:
    """The batch size the training uses for ``batch_size``: at most ``n``, rounded down to a multiple of 4."""
    return min(int(batch_size), n) // 4 * 4


def precompile_stages(data: dict, sz: SegSize, batch_sizes=None) -> float:
    """Compile :func:`train_unet` for every batch the ``batch_size`` range
    produces (or for ``batch_sizes``), and :func:`normalize_and_augment` and
    :func:`evaluate` once, for the shapes of ``data`` (``prepare``'s output).
    Returns the seconds spent."""
    from eeipu_jax.runtime.pipeline import stage_key
    from pipelines.compile import precompile

    f32 = jax.ShapeDtypeStruct((), jnp.float32)
    key = jax.eval_shape(lambda: stage_key(0, 1))
    shapes = [jax.ShapeDtypeStruct(np.shape(data[k]), np.asarray(data[k]).dtype) for k in ("x_train", "y_train", "x_val")]
    rgb = jax.ShapeDtypeStruct((3,), jnp.float32)
    seconds = precompile(normalize_and_augment, [((key, *shapes, rgb, rgb), {})],
                         label=f"normalize_and_augment ({sz.data_config})")
    x, y, _ = jax.eval_shape(normalize_and_augment, key, *shapes, rgb, rgb)
    n = x.shape[0]
    lo, hi = _BATCH_RANGE
    batches = sorted({train_batch(b, n) for b in (batch_sizes or range(lo, hi + 1))} - {0})
    static = dict(width=sz.width, depth=sz.depth, epochs=sz.epochs, im2col=sz.im2col)
    params = jax.eval_shape(lambda p: p, data["init"])
    seconds += precompile(train_unet, [((key, params, x, y, f32, f32), dict(static, batch=b)) for b in batches],
                          label=f"train_unet ({sz.data_config})")
    x_val = jax.ShapeDtypeStruct(data["x_val"].shape, jnp.float32)
    y_val = jax.ShapeDtypeStruct(data["y_val"].shape, jnp.int32)
    seconds += precompile(evaluate, [((params, x_val, y_val, f32, f32, f32),
                                      dict(width=sz.width, depth=sz.depth, radius=sz.crf_radius, im2col=sz.im2col))],
                          label=f"evaluate ({sz.data_config})")
    return seconds


_BATCH_RANGE = (4, 32)  # the ``batch_size`` hyperparameter's bounds


def _normalize(x, mean, std):
    return (x - mean) / std


@jax.jit
def normalize_and_augment(key, x_train, y_train, x_val, mean, std):
    """Stage 0's computation, one compiled program (precompiled in ``prepare``):
    normalized, augmented copies of the training split and the normalized
    validation images."""
    x, y = augment_copies(key, _normalize(x_train, mean, std), y_train)
    return x, y, _normalize(x_val, mean, std)


def make_pipeline(size: str = "cpu", *, data_dir: str | None = None, name: str | None = None) -> Pipeline:
    """Build the segmentation pipeline.

    Args:
        size: ``"tiny"``, ``"cpu"`` or ``"gpu"`` (see :data:`SIZES`).
        data_dir: tfds data directory (default: ``$EEIPU_JAX_DATA_DIR`` or
            ``~/.cache/eeipu_jax/tensorflow_datasets``); also holds the
            pretrained U-Net.
        name: pipeline name (default ``"segmentation"``, ``"segmentation-<size>"`` otherwise).

    Returns:
        A three-stage :class:`~eeipu_jax.runtime.pipeline.Pipeline`.
    """
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; sizes: {sorted(SIZES)}")
    sz = SIZES[size]
    name = name or ("segmentation" if size == "cpu" else f"segmentation-{size}")

    def augment(data, p, key):
        mean = np.asarray([p["mean_r"], p["mean_g"], p["mean_b"]], np.float32)
        std = np.asarray([p["std_r"], p["std_g"], p["std_b"]], np.float32)
        if not np.all(std > 0):
            raise ValueError(f"channel standard deviations must be positive, got {std}")
        x, y, x_val = normalize_and_augment(key, data["x_train"], data["y_train"], data["x_val"], mean, std)
        return {"x": x, "y": y, "x_val": x_val, "y_val": jnp.asarray(data["y_val"]), "init": data["init"]}

    def train(data, p, key):
        n = data["x"].shape[0]
        batch = train_batch(p["batch_size"], n)
        if batch < 4:
            raise ValueError(f"batch_size {p['batch_size']} gives batches of {batch} (training set of {n}); need >= 4")
        params, loss = train_unet(key, data["init"], data["x"], data["y"], jnp.float32(p["peak_lr"]),
                                  jnp.float32(p["weight_decay"]), width=sz.width, depth=sz.depth, batch=batch,
                                  epochs=sz.epochs, im2col=sz.im2col)
        return {"params": params, "train_loss": loss, "x_val": data["x_val"], "y_val": data["y_val"]}

    def crf(out, p, key):
        del key  # deterministic
        return evaluate(out["params"], out["x_val"], out["y_val"], jnp.float32(p["sigma"]), jnp.float32(p["compat"]),
                        jnp.float32(p["confidence"]), width=sz.width, depth=sz.depth, radius=sz.crf_radius,
                        im2col=sz.im2col)

    return Pipeline(
        name=name,
        version=(f"3:{size}:{sz.data_config}@{_DATA_VERSION}:w{sz.width}d{sz.depth}e{sz.epochs}r{sz.crf_radius}"
                 f"f{sz.downsample}n{sz.n_train}:pre{sz.pretrain_steps}b{sz.pretrain_batch}lr{sz.pretrain_lr}"
                 f":{'im2col' if sz.im2col else 'conv'}:crfnorm"),
        stages=(
            Stage("augment", augment, (
                Float("mean_r", 0.2, 0.8), Float("mean_g", 0.2, 0.8), Float("mean_b", 0.2, 0.8),
                Float("std_r", 0.05, 0.5, log=True), Float("std_g", 0.05, 0.5, log=True), Float("std_b", 0.05, 0.5, log=True),
            )),
            Stage("train", train, (
                Int("batch_size", *_BATCH_RANGE),
                Float("peak_lr", 1e-3, 1e-1, log=True),
                Float("weight_decay", 1e-5, 1e-1, log=True),
            )),
            Stage("crf", crf, (
                Float("sigma", 0.5, 3.0),
                Float("compat", 0.0, 4.0),
                Float("confidence", 0.5, 3.0),
            )),
        ),
        prepare=lambda: _prepare(sz, data_dir),
        description=(f"segmentation ({size}): normalize+augment -> pretrained U-Net fine-tuned (AdamW, one-cycle) "
                     "-> mean-field CRF, val mIoU"),
    )


def make_tiny(**kwargs) -> Pipeline:
    """The segmentation pipeline at test size."""
    return make_pipeline("tiny", **kwargs)


def make_gpu(**kwargs) -> Pipeline:
    """The segmentation pipeline at the larger size."""
    return make_pipeline("gpu", **kwargs)
