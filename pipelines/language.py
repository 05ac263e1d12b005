"""The language pipeline: T5-style teacher fine-tuning and distillation into a smaller student.

The paper's "T5 distillation" pipeline (arXiv 2411.03731), with its stage
structure and hyperparameters, on the offline ``pydoc_text`` dataset
(:mod:`pipelines.data.pydoc_text`: Python docstrings -> their first
sentence, a summarization-like seq2seq task):

* **preparation** (``prepare``; untimed, not a BO stage): the train and
  validation pairs, and two small encoder-decoders (:mod:`pipelines.t5`),
  teacher and student, *pretrained* once on the ``pretrain`` corpus split
  (paragraphs of the Python documentation) with a denoising task (a window
  of a paragraph with one span, 15% of it, replaced by a sentinel; the target
  is the window's start, uncorrupted: BART-style reconstruction, which
  teaches the byte-level copying that extractive summaries need). They play
  the roles of the paper's pretrained ``t5-small`` teacher and of a smaller
  pretrained student (the student gets half the teacher's pretraining steps).
  The parameters are saved under the data directory
  (``<data_dir>/pretrained/``, :mod:`pipelines.pretrained`), keyed by the
  model config, the pretraining settings and the data config, and loaded on
  later calls;
* **stage 0, ``preprocess``**: byte tokenization to fixed-length int arrays
  and batching (shuffled with the stage's key, remainder dropped);
  ``batch_size`` (rounded down to a multiple of 8 to bound compilations);
* **stage 1, ``teacher``**: fine-tuning of the pretrained model (AdamW,
  ``lr``, ``weight_decay``) for a fixed number of epochs;
* **stages 2-4, ``distill1..3``**: three distillation chunks, each
  ``lr``, ``temperature``, ``weight_decay``; the student (a narrower,
  shallower model) minimizes ``T^2 KL(softmax(t/T) || softmax(s/T)) +
  CE(labels)`` per target token (Hinton et al. 2015), the teacher's logits
  computed on the fly with the fine-tuned teacher. The first chunk starts
  from the pretrained student; each later chunk continues from
  the previous chunk's student parameters **and optimizer state** (AdamW
  moments and step counter; the chunk's learning rate and weight decay
  replace the previous ones through ``optax.inject_hyperparams``). The
  authors' code re-initialized the student in every chunk, which makes the
  first two chunks irrelevant to the objective; we do not copy that.
  The last chunk also evaluates: objective = ROUGE-L F1 (word level,
  lower-cased alphanumeric tokens) of the student's greedy decodes against
  the validation references (maximize).

Sizes (``size``): ``"tiny"`` (tests), ``"cpu"`` (default: about 2 s per
trial on one core), ``"gpu"``.
"""

from __future__ import annotations

import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax

from eeipu_jax.space import Float, Int
from eeipu_jax.runtime.pipeline import Pipeline, Stage
from pipelines.data_parallel import shard_batch
from pipelines.t5 import BOS, EOS, OFFSET, PAD, SENTINEL, T5, T5Config, decode_ids, encode_texts, greedy_decode, shift_right

__all__ = [
    "LangSize", "SIZES", "lcs_length", "rouge_l_f1", "rouge_l_corpus", "denoising_pairs", "pretrain_model",
    "init_opt_state", "permutation", "finetune", "distill_chunk", "precompile_stages",
    "make_pipeline", "make_tiny", "make_gpu",
]


@dataclasses.dataclass(frozen=True)
class LangSize:
    """Sizes of one scale of the pipeline.

    Attributes:
        data_config: ``pydoc_text`` config.
        teacher: teacher model config.
        student: student model config (same lengths).
        n_train: training pairs used (at most).
        n_val: validation pairs used (at most).
        pretrain_steps: denoising steps of the teacher's one-off pretraining.
        student_pretrain_steps: the same for the student (0: the student
            starts from a random initialization, as in the authors' code).
        pretrain_batch: batch size of the pretraining.
        pretrain_lr: AdamW learning rate of the pretraining (constant).
        teacher_epochs: fine-tuning epochs of the teacher.
        chunk_epochs: epochs of each distillation chunk.
        precompile: compile the teacher fine-tuning and the distillation
            chunk for every batch size the search space can produce, and the
            decoding, in ``prepare`` (untimed; see :mod:`pipelines.compile`)
            instead of inside the first trial that uses each.
    """

    data_config: str
    teacher: T5Config
    student: T5Config
    n_train: int
    n_val: int
    pretrain_steps: int
    pretrain_batch: int
    teacher_epochs: int
    chunk_epochs: int
    student_pretrain_steps: int = 0
    pretrain_lr: float = 2e-3
    precompile: bool = False


SIZES = {
    "tiny": LangSize("tiny", T5Config(32, 2, 1, 64, 64, 24), T5Config(16, 2, 1, 32, 64, 24),
                     n_train=64, n_val=16, pretrain_steps=10, pretrain_batch=16, teacher_epochs=1, chunk_epochs=1,
                     student_pretrain_steps=5),
    # 80-byte sources and 64-byte targets (63 bytes + EOS: the whole first sentence for ~75% of the pairs);
    # one core: teacher ~0.6 s, each chunk ~0.3 s, decoding the 116 validation pairs ~0.3 s.
    "cpu": LangSize("cpu", T5Config(64, 4, 2, 128, 80, 64), T5Config(32, 2, 1, 64, 80, 64),
                    n_train=512, n_val=100_000, pretrain_steps=6000, pretrain_batch=32, teacher_epochs=1,
                    chunk_epochs=1, student_pretrain_steps=3000, precompile=True),
    "gpu": LangSize("gpu", T5Config(256, 4, 4, 1024, 512, 96), T5Config(128, 4, 2, 512, 512, 96),
                    n_train=100_000, n_val=100_000, pretrain_steps=20_000, pretrain_batch=64, teacher_epochs=5,
                    chunk_epochs=3, student_pretrain_steps=10_000, pretrain_lr=1e-3, precompile=True),
}


# ------------------------------------------------------------------ ROUGE-L
def lcs_length(a: list, b: list) -> int:
    """Length of the longest common subsequence of two token lists (dynamic programming, NumPy rows)."""
    if not a or not b:
        return 0
    prev = np.zeros(len(b) + 1, np.int64)
    bb = np.asarray(b, dtype=object)
    for x in a:
        match = np.concatenate([[0], np.where(bb == x, prev[:-1] + 1, 0)])
        cur = np.maximum(match, prev)
        # left-to-right running max gives max(cur[j], cur[j-1]) chains
        cur = np.maximum.accumulate(cur)
        prev = cur
    return int(prev[-1])


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def rouge_l_f1(candidate: str, reference: str) -> float:
    """Sentence ROUGE-L F1 (Lin 2004, beta = 1) on lower-cased alphanumeric word tokens."""
    c, r = _words(candidate), _words(reference)
    lcs = lcs_length(c, r)
    if lcs == 0:
        return 0.0
    p, q = lcs / len(c), lcs / len(r)
    return 2 * p * q / (p + q)


def rouge_l_corpus(candidates, references) -> float:
    """Mean sentence ROUGE-L F1."""
    if len(candidates) != len(references) or not len(candidates):
        raise ValueError(f"need equally many candidates and references (got {len(candidates)}, {len(references)})")
    return float(np.mean([rouge_l_f1(c, r) for c, r in zip(candidates, references)]))


# ----------------------------------------------------------------- training
def _masked_ce(logits, tgt):
    mask = (tgt != PAD).astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, tgt)
    return jnp.sum(ce * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def _adamw():
    return optax.inject_hyperparams(optax.adamw)(learning_rate=0.0, weight_decay=0.0)


@jax.jit
def init_opt_state(params):
    """A fresh AdamW state for ``params`` (jitted, so ``prepare`` can compile it)."""
    return _adamw().init(params)


@functools.partial(jax.jit, static_argnames=("n",))
def permutation(key, *, n: int):
    """``jax.random.permutation(key, n)``, jitted (compiled in ``prepare``)."""
    return jax.random.permutation(key, n)


def _with_hyper(state, lr, wd):
    hp = dict(state.hyperparams)
    hp["learning_rate"] = jnp.asarray(lr, jnp.float32)
    hp["weight_decay"] = jnp.asarray(wd, jnp.float32)
    return state._replace(hyperparams=hp)


@functools.partial(jax.jit, static_argnames=("cfg", "epochs"))
def finetune(params, src, tgt, lr, wd, *, cfg: T5Config, epochs: int):
    """Cross-entropy training over the batches ``src (nb, B, Ls)``, ``tgt (nb, B, Lt)`` for ``epochs``.

    Returns:
        ``(params, mean loss of the last epoch)``.
    """
    model = T5(cfg)
    opt = _adamw()
    state = _with_hyper(opt.init(params), lr, wd)

    def step(carry, batch):
        p, s = carry
        s_, t_ = shard_batch(batch)  # data-parallel over the process's devices, if several
        loss, g = jax.value_and_grad(lambda q: _masked_ce(model.apply({"params": q}, s_, shift_right(t_)), t_))(p)
        u, s = opt.update(g, s, p)
        return (optax.apply_updates(p, u), s), loss

    def epoch(carry, _):
        carry, losses = jax.lax.scan(step, carry, (src, tgt))
        return carry, jnp.mean(losses)

    (params, _), losses = jax.lax.scan(epoch, (params, state), None, length=epochs)
    return params, losses[-1]


def distill_loss(student_logits, teacher_logits, tgt, temperature):
    """Per-token ``T^2 KL(teacher_T || student_T) + CE(student, labels)``, averaged over non-PAD targets."""
    mask = (tgt != PAD).astype(jnp.float32)
    log_t = jax.nn.log_softmax(teacher_logits / temperature, axis=-1)
    log_s = jax.nn.log_softmax(student_logits / temperature, axis=-1)
    kl = jnp.sum(jnp.exp(log_t) * (log_t - log_s), axis=-1)
    ce = optax.softmax_cross_entropy_with_integer_labels(student_logits, tgt)
    return jnp.sum((temperature**2 * kl + ce) * mask) / jnp.maximum(jnp.sum(mask), 1.0)


@functools.partial(jax.jit, static_argnames=("teacher_cfg", "student_cfg", "epochs"))
def distill_chunk(student, opt_state, teacher, src, tgt, lr, wd, temperature, *, teacher_cfg: T5Config,
                  student_cfg: T5Config, epochs: int):
    """One distillation chunk continuing ``(student, opt_state)``; returns ``(student, opt_state, loss)``."""
    t_model, s_model = T5(teacher_cfg), T5(student_cfg)
    opt = _adamw()
    state = _with_hyper(opt_state, lr, wd)

    def step(carry, batch):
        p, s = carry
        s_, t_ = shard_batch(batch)
        dec_in = shift_right(t_)
        t_logits = jax.lax.stop_gradient(t_model.apply({"params": teacher}, s_, dec_in))
        loss, g = jax.value_and_grad(
            lambda q: distill_loss(s_model.apply({"params": q}, s_, dec_in), t_logits, t_, temperature))(p)
        u, s = opt.update(g, s, p)
        return (optax.apply_updates(p, u), s), loss

    def epoch(carry, _):
        carry, losses = jax.lax.scan(step, carry, (src, tgt))
        return carry, jnp.mean(losses)

    (student, state), losses = jax.lax.scan(epoch, (student, state), None, length=epochs)
    return student, state, losses[-1]


def init_params(key, cfg: T5Config):
    """Fresh parameters of a model with ``cfg``."""
    return T5(cfg).init(key, jnp.zeros((1, cfg.src_len), jnp.int32), jnp.zeros((1, cfg.tgt_len), jnp.int32))["params"]


# -------------------------------------------------------------- pretraining
def denoising_pairs(texts, cfg: T5Config, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Denoising pairs (BART-style reconstruction) from a text corpus.

    For each text: a window of ``cfg.src_len`` bytes starting at a random
    word boundary (or at the start); the source is the window with one span
    of 15% of its bytes replaced by ``SENTINEL``; the target is the window's
    first ``cfg.tgt_len - 1`` bytes, uncorrupted, then ``EOS``.

    Returns:
        ``(src (n, src_len), tgt (n, tgt_len))`` int32 ids.
    """
    src = np.zeros((len(texts), cfg.src_len), np.int32)
    tgt = np.zeros((len(texts), cfg.tgt_len), np.int32)
    for i, t in enumerate(texts):
        b = str(t).encode("utf-8")
        start = int(rng.integers(0, max(1, len(b) - cfg.src_len // 2)))
        if start > 0:  # move to the next word's start (keep the window long enough)
            space = b.find(b" ", start)
            start = space + 1 if 0 <= space < len(b) - 8 else 0
        ids = [x + OFFSET for x in b[start:start + cfg.src_len]]
        s = list(ids)
        if len(ids) > 8:
            span = max(1, round(0.15 * len(ids)))
            at = int(rng.integers(0, len(ids) - span + 1))
            s = ids[:at] + [SENTINEL] + ids[at + span:]
        y = ids[: cfg.tgt_len - 1] + [EOS]
        src[i, : len(s)] = s
        tgt[i, : len(y)] = y
    return src, tgt


def pretrain_model(texts, cfg: T5Config, steps: int, batch: int, lr: float, seed: int = 0):
    """Denoising pretraining (:func:`denoising_pairs`, fresh windows and spans
    each pass over the corpus) of a fresh model with ``cfg``: ``steps``
    AdamW steps (constant ``lr``, weight decay 1e-4, optimizer restarted
    every pass). Returns the parameters."""
    rng = np.random.default_rng(seed)
    texts = list(texts)
    params = init_params(jax.random.key(seed), cfg)
    done = 0
    while done < steps:
        src, tgt = denoising_pairs(texts, cfg, rng)
        k = min(max(1, len(src) // batch), steps - done)
        perm = rng.permutation(len(src))[: k * batch]
        if len(perm) < k * batch:  # corpus smaller than a batch: sample with replacement
            perm = rng.integers(0, len(src), k * batch)
        perm = perm.reshape(k, batch)
        params, _ = finetune(params, jnp.asarray(src[perm]), jnp.asarray(tgt[perm]), lr, 1e-4, cfg=cfg, epochs=1)
        done += k
    return params


def _pretrained(sz: LangSize, cfg: T5Config, steps: int, seed: int, data_dir: str | None, corpus) -> dict:
    from pipelines.pretrained import load_or_pretrain, pretrained_path

    tag = ("t5-denoise", cfg, steps, sz.pretrain_batch, sz.pretrain_lr, seed, sz.data_config, 2)
    return load_or_pretrain(pretrained_path("t5", tag, data_dir), init_params(jax.random.key(0), cfg),
                            lambda: pretrain_model(corpus, cfg, steps, sz.pretrain_batch, sz.pretrain_lr, seed))


def _prepare(sz: LangSize, data_dir: str | None) -> dict:
    from pipelines.data.common import load_splits

    d = load_splits("pydoc_text", ("train", "validation", "pretrain"), config=sz.data_config, data_dir=data_dir)
    cfg = sz.teacher
    train, val = d["train"], d["validation"]
    data = {
        "train_src": train["source"][: sz.n_train],
        "train_tgt": train["target"][: sz.n_train],
        "val_src": encode_texts(val["source"][: sz.n_val], cfg.src_len),
        "val_tgt": encode_texts(val["target"][: sz.n_val], cfg.tgt_len),
        "teacher_init": _pretrained(sz, sz.teacher, sz.pretrain_steps, 0, data_dir, d["pretrain"]["source"]),
    }
    if sz.student_pretrain_steps:
        data["student_init"] = _pretrained(sz, sz.student, sz.student_pretrain_steps, 1, data_dir,
                                           d["pretrain"]["source"])
    if sz.precompile:
        precompile_stages(data, sz)
    return data


_BATCH_RANGE = (8, 64)  # the ``batch_size`` hyperparameter's bounds


def train_batch(batch_size: int, n: int) -> int:
    """The batch size used for ``batch_size``: at most ``n``, rounded down to a multiple of 8."""
    return min(int(batch_size), n) // 8 * 8


def precompile_stages(data: dict, sz: LangSize, batch_sizes=None) -> float:
    """Compile :func:`finetune` and :func:`distill_chunk` for every batch the
    ``batch_size`` range produces (or for ``batch_sizes``), and the shuffling
    permutation, the first chunk's optimizer initialization and the greedy
    decoding once, for the shapes of ``data`` (``prepare``'s output).

    The first chunk's optimizer state is freshly initialized (weakly typed
    hyperparameters), the later chunks' comes out of the previous chunk or
    the stage cache: all three forms are compiled (identical ones once).

    Returns:
        The seconds spent.
    """
    from eeipu_jax.runtime.pipeline import stage_key
    from pipelines.compile import precompile

    tc, sc = sz.teacher, sz.student
    n = len(data["train_src"])
    lo, hi = _BATCH_RANGE
    batches = sorted({train_batch(b, n) for b in (batch_sizes or range(lo, hi + 1))} - {0})
    f32 = jax.ShapeDtypeStruct((), jnp.float32)

    def strong(tree):
        return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)

    teacher = jax.eval_shape(lambda t: t, data["teacher_init"])
    if "student_init" in data:
        student0 = jax.eval_shape(lambda t: t, data["student_init"])
    else:
        student0 = jax.eval_shape(lambda k: init_params(k, sc), stage_key(0, 2))
    opt0 = jax.eval_shape(init_opt_state, student0)
    chunk_static = dict(teacher_cfg=tc, student_cfg=sc, epochs=sz.chunk_epochs)
    fine, chunks = [], []
    student1 = None
    for b in batches:
        src = jax.ShapeDtypeStruct((n // b, b, tc.src_len), jnp.int32)
        tgt = jax.ShapeDtypeStruct((n // b, b, tc.tgt_len), jnp.int32)
        fine.append(((teacher, src, tgt, f32, f32), dict(cfg=tc, epochs=sz.teacher_epochs)))
        student1, opt1, _ = jax.eval_shape(functools.partial(distill_chunk, **chunk_static),
                                           student0, opt0, teacher, src, tgt, f32, f32, f32)
        forms = {repr(f): f for f in ((student0, opt0), (student1, opt1), (strong(student1), strong(opt1)))}
        chunks += [((st, op, teacher, src, tgt, f32, f32, f32), chunk_static) for st, op in forms.values()]
    key = jax.eval_shape(lambda: stage_key(0, 0))
    seconds = precompile(permutation, [((key,), dict(n=n))], label=f"permutation ({sz.data_config})")
    seconds += precompile(init_opt_state, [((student0,), {})], label=f"init_opt_state ({sz.data_config})")
    seconds += precompile(finetune, fine, label=f"finetune ({sz.data_config})")
    seconds += precompile(distill_chunk, chunks, label=f"distill_chunk ({sz.data_config})")
    val_src = jax.ShapeDtypeStruct(np.shape(data["val_src"]), jnp.int32)
    seconds += precompile(greedy_decode, [((student1, val_src), dict(cfg=sc))], label=f"greedy_decode ({sz.data_config})")
    return seconds


# ------------------------------------------------------------------ pipeline
def make_pipeline(size: str = "cpu", *, data_dir: str | None = None, name: str | None = None) -> Pipeline:
    """Build the language (T5-style distillation) pipeline.

    Args:
        size: ``"tiny"``, ``"cpu"`` or ``"gpu"`` (see :data:`SIZES`).
        data_dir: tfds data directory (also holds the pretrained teacher).
        name: pipeline name (default ``"language"``, ``"language-<size>"`` otherwise).

    Returns:
        A five-stage :class:`~eeipu_jax.runtime.pipeline.Pipeline`.
    """
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; sizes: {sorted(SIZES)}")
    sz = SIZES[size]
    name = name or ("language" if size == "cpu" else f"language-{size}")
    tc, sc = sz.teacher, sz.student

    def preprocess(data, p, key):
        n = len(data["train_src"])
        batch = train_batch(p["batch_size"], n)
        if batch < 8:
            raise ValueError(f"batch_size {p['batch_size']} gives batches of {batch} ({n} training pairs); need >= 8")
        src = encode_texts(data["train_src"], tc.src_len)
        tgt = encode_texts(data["train_tgt"], tc.tgt_len)
        nb = n // batch
        perm = np.asarray(permutation(key, n=n))[: nb * batch].reshape(nb, batch)
        out = {"src": jnp.asarray(src[perm]), "tgt": jnp.asarray(tgt[perm]), "val_src": jnp.asarray(data["val_src"]),
               "val_tgt": jnp.asarray(data["val_tgt"]), "teacher": data["teacher_init"]}
        if "student_init" in data:
            out["student_init"] = data["student_init"]
        return out

    def teacher(data, p, key):
        del key  # starts from the pretrained parameters; batches already shuffled
        params, loss = finetune(data["teacher"], data["src"], data["tgt"], jnp.float32(p["lr"]),
                                jnp.float32(p["weight_decay"]), cfg=tc, epochs=sz.teacher_epochs)
        return {**data, "teacher": params, "teacher_loss": loss}

    def chunk(index: int):
        def fn(data, p, key):
            if index == 0:
                student = data["student_init"] if "student_init" in data else init_params(key, sc)
                opt_state = init_opt_state(student)
            else:
                student, opt_state = data["student"], data["opt_state"]
            student, opt_state, loss = distill_chunk(
                student, opt_state, data["teacher"], data["src"], data["tgt"], jnp.float32(p["lr"]),
                jnp.float32(p["weight_decay"]), jnp.float32(p["temperature"]),
                teacher_cfg=tc, student_cfg=sc, epochs=sz.chunk_epochs)
            out = {k: v for k, v in data.items() if k not in ("teacher_loss", "student_init")}
            out.update(student=student, opt_state=opt_state, distill_loss=loss)
            if index < 2:
                return out
            decoded = np.asarray(greedy_decode(student, data["val_src"], cfg=sc))
            cands = [decode_ids(r) for r in decoded]
            refs = [decode_ids(r) for r in np.asarray(data["val_tgt"])]
            return {"objective": rouge_l_corpus(cands, refs), "distill_loss": loss}
        return fn

    def chunk_params():
        return (Float("lr", 1e-4, 1e-2, log=True), Float("temperature", 1.0, 8.0), Float("weight_decay", 1e-5, 1e-1, log=True))

    return Pipeline(
        name=name,
        version=(f"2:{size}:{sz.data_config}:{tc}:{sc}:{sz.n_train}:{sz.n_val}:denoise{sz.pretrain_steps}"
                 f"/{sz.student_pretrain_steps}b{sz.pretrain_batch}lr{sz.pretrain_lr}:{sz.teacher_epochs}:{sz.chunk_epochs}"),
        stages=(
            Stage("preprocess", preprocess, (Int("batch_size", *_BATCH_RANGE),)),
            Stage("teacher", teacher, (Float("lr", 1e-5, 3e-3, log=True), Float("weight_decay", 1e-5, 1e-1, log=True))),
            Stage("distill1", chunk(0), chunk_params()),
            Stage("distill2", chunk(1), chunk_params()),
            Stage("distill3", chunk(2), chunk_params()),
        ),
        prepare=lambda: _prepare(sz, data_dir),
        description=f"language ({size}): tokenize -> fine-tune T5-style teacher -> 3 distillation chunks, val ROUGE-L",
    )


def make_tiny(**kwargs) -> Pipeline:
    """The language pipeline at test size."""
    return make_pipeline("tiny", **kwargs)


def make_gpu(**kwargs) -> Pipeline:
    """The language pipeline at the larger size."""
    return make_pipeline("gpu", **kwargs)
