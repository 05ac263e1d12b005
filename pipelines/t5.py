"""A small T5-style encoder-decoder transformer (Flax linen) and a byte tokenizer.

Pre-norm blocks (RMSNorm, as T5), learned absolute position embeddings (T5's
relative position buckets are left out at this size), shared input/output
token embedding, no biases. Used by :mod:`pipelines.language` for the teacher
and the student.

Tokenizer: UTF-8 bytes shifted by 4, with ``PAD = 0``, ``BOS = 1`` (decoder
start), ``EOS = 2``, ``SENTINEL = 3`` (the masked span of the pretraining
task); vocabulary of 260.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["PAD", "BOS", "EOS", "SENTINEL", "OFFSET", "VOCAB", "T5Config", "T5", "encode_texts", "decode_ids", "greedy_decode"]

PAD, BOS, EOS, SENTINEL = 0, 1, 2, 3
OFFSET = 4
VOCAB = 256 + OFFSET


@dataclasses.dataclass(frozen=True)
class T5Config:
    """Model sizes (static).

    Attributes:
        d_model: width.
        n_heads: attention heads (divides ``d_model``).
        n_layers: encoder layers (and as many decoder layers).
        d_ff: feed-forward width.
        src_len: source length in tokens.
        tgt_len: target length in tokens (including EOS).
    """

    d_model: int
    n_heads: int
    n_layers: int
    d_ff: int
    src_len: int
    tgt_len: int

    def __post_init__(self):
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")


def encode_texts(texts, length: int, *, eos: bool = True) -> np.ndarray:
    """``(n, length)`` int32 byte ids (+OFFSET), EOS appended, truncated/padded with PAD."""
    out = np.zeros((len(texts), length), np.int32)
    for i, t in enumerate(texts):
        ids = [b + OFFSET for b in str(t).encode("utf-8")][: length - int(eos)]
        if eos:
            ids.append(EOS)
        out[i, : len(ids)] = ids
    return out


def decode_ids(ids) -> str:
    """Text of one id row, stopping at the first EOS/PAD (invalid UTF-8 replaced)."""
    out = []
    for t in np.asarray(ids).tolist():
        if t in (PAD, EOS):
            break
        if t >= OFFSET:
            out.append(t - OFFSET)
    return bytes(out).decode("utf-8", errors="replace")


class _Block(nn.Module):
    cfg: T5Config
    cross: bool
    causal: bool

    @nn.compact
    def __call__(self, x, mask, enc=None, enc_mask=None):
        c = self.cfg
        attn = functools.partial(nn.MultiHeadDotProductAttention, num_heads=c.n_heads, use_bias=False)
        h = nn.RMSNorm()(x)
        m = mask[:, None, None, :]
        if self.causal:
            m = m & nn.make_causal_mask(mask, dtype=bool)
        x = x + attn()(h, h, mask=m)
        if self.cross:
            h = nn.RMSNorm()(x)
            x = x + attn()(h, enc, mask=enc_mask[:, None, None, :])
        h = nn.RMSNorm()(x)
        h = nn.Dense(c.d_ff, use_bias=False)(h)
        return x + nn.Dense(c.d_model, use_bias=False)(nn.relu(h))


class T5(nn.Module):
    """Encoder-decoder: ``__call__(src, tgt_in) -> logits (B, tgt_len, VOCAB)``."""

    cfg: T5Config

    def setup(self):
        c = self.cfg
        self.embed = nn.Embed(VOCAB, c.d_model, embedding_init=nn.initializers.normal(1.0))
        self.src_pos = self.param("src_pos", nn.initializers.normal(0.02), (c.src_len, c.d_model))
        self.tgt_pos = self.param("tgt_pos", nn.initializers.normal(0.02), (c.tgt_len, c.d_model))
        self.enc = [_Block(c, cross=False, causal=False) for _ in range(c.n_layers)]
        self.dec = [_Block(c, cross=True, causal=True) for _ in range(c.n_layers)]
        self.enc_norm = nn.RMSNorm()
        self.dec_norm = nn.RMSNorm()

    def encode(self, src):
        mask = src != PAD
        x = self.embed(src) + self.src_pos[: src.shape[1]]
        for blk in self.enc:
            x = blk(x, mask)
        return self.enc_norm(x), mask

    def decode(self, enc, enc_mask, tgt_in):
        # Decoder positions are never masked as keys beyond causality (PAD targets are masked in the loss).
        mask = jnp.ones(tgt_in.shape, bool)
        y = self.embed(tgt_in) + self.tgt_pos[: tgt_in.shape[1]]
        for blk in self.dec:
            y = blk(y, mask, enc, enc_mask)
        y = self.dec_norm(y)
        return self.embed.attend(y) / jnp.sqrt(self.cfg.d_model)

    def __call__(self, src, tgt_in):
        enc, enc_mask = self.encode(src)
        return self.decode(enc, enc_mask, tgt_in)


def shift_right(tgt: jax.Array) -> jax.Array:
    """Decoder inputs: BOS followed by the target without its last token."""
    return jnp.concatenate([jnp.full(tgt.shape[:-1] + (1,), BOS, tgt.dtype), tgt[..., :-1]], axis=-1)


@functools.partial(jax.jit, static_argnames=("cfg",))
def greedy_decode(params, src: jax.Array, *, cfg: T5Config) -> jax.Array:
    """Greedy decoding of ``tgt_len`` tokens with ``lax.fori_loop`` (fixed length, no cache).

    Returns:
        ``(B, tgt_len)`` int32 token ids (continue past EOS; :func:`decode_ids` stops there).
    """
    model = T5(cfg)
    enc, enc_mask = model.apply({"params": params}, src, method=T5.encode)
    buf = jnp.full((src.shape[0], cfg.tgt_len), PAD, jnp.int32)

    def body(i, out):
        logits = model.apply({"params": params}, enc, enc_mask, shift_right(out), method=T5.decode)
        tok = jnp.argmax(logits[:, i], axis=-1).astype(jnp.int32)
        return out.at[:, i].set(tok)

    return jax.lax.fori_loop(0, cfg.tgt_len, body, buf)
