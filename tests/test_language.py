"""The language pipeline: ROUGE-L against hand and brute-force values, distillation loss
against NumPy, one trial, memoized restarts, optimizer state carried across chunks,
failed trials inside a tuning run."""

import dataclasses
import itertools
import json

import numpy as np
import pytest

from eeipu_jax import Study
from eeipu_jax.runtime.cache import CachePolicy, StageCache
from eeipu_jax.runtime.pipeline import Stage
from eeipu_jax.runtime.runner import Runner
from tests.pipelines_for_tests import fail_on_call
from pipelines.language import SIZES, denoising_pairs, distill_loss, lcs_length, make_tiny, rouge_l_f1
from pipelines.registry import get_pipeline
from pipelines.t5 import EOS, OFFSET, SENTINEL, T5Config, decode_ids, encode_texts

SMALL_BO = (("n_random", 64), ("mc_samples", 64), ("n_refine", 0), ("n_per_prefix", 8))
C1 = {"lr": 3e-3, "temperature": 2.0, "weight_decay": 1e-4}
C2 = {"lr": 1e-3, "temperature": 4.0, "weight_decay": 1e-3}
P1 = {"preprocess": {"batch_size": 16}, "teacher": {"lr": 1e-3, "weight_decay": 1e-4},
      "distill1": C1, "distill2": C1, "distill3": C1}


pytestmark = pytest.mark.usefixtures("module_data_dir")  # tfds data prepared once per module


def _lcs_brute(a, b):
    for k in range(min(len(a), len(b)), 0, -1):
        subs = set(itertools.combinations(b, k))
        if any(s in subs for s in itertools.combinations(a, k)):
            return k
    return 0


def test_rouge_l_hand_example_and_brute_force_lcs():
    # LCS("the cat sat on the mat", "the cat is on the mat") = "the cat on the mat" (5 words): P = R = 5/6.
    assert rouge_l_f1("The cat sat on the mat.", "the cat is on the mat") == pytest.approx(5 / 6)
    # P = 2/3, R = 2/4 -> F = 2PR/(P+R) = 4/7
    assert rouge_l_f1("a b c", "a x c y") == pytest.approx(4 / 7)
    assert rouge_l_f1("", "a b") == 0.0 and rouge_l_f1("x y", "a b") == 0.0
    rng = np.random.default_rng(0)
    for _ in range(40):
        a = list(rng.choice(list("abcd"), size=rng.integers(0, 8)))
        b = list(rng.choice(list("abcd"), size=rng.integers(0, 8)))
        assert lcs_length(a, b) == _lcs_brute(a, b), (a, b)


def test_tokenizer_round_trip():
    ids = encode_texts(["héllo", "a longer text"], 8)
    assert ids.shape == (2, 8) and ids[0, 6] == 2  # 'héllo' is 6 bytes, then EOS
    assert decode_ids(ids[0]) == "héllo" and decode_ids(ids[1]) == "a longe"


def test_denoising_pairs_reconstruct_a_window_with_one_span_masked():
    cfg = T5Config(16, 2, 1, 32, 40, 24)
    texts = ["The quick brown fox jumps over the lazy dog and keeps running far away.", "short text here"]
    src, tgt = denoising_pairs(texts, cfg, np.random.default_rng(0))
    assert src.shape == (2, 40) and tgt.shape == (2, 24)
    for text, s_row, t_row in zip(texts, src, tgt):
        s_ids = [int(v) for v in s_row if v != 0]
        assert s_ids.count(SENTINEL) == 1
        at = s_ids.index(SENTINEL)
        t_ids = [int(v) for v in t_row if v != 0]
        assert t_ids[-1] == EOS
        window = bytes(v - OFFSET for v in t_ids[:-1])
        # the target is a stretch of the text starting at a word boundary, and the source is
        # the same window with one span (15% of it) replaced by the sentinel
        start = text.encode().find(window)
        assert start == 0 or text.encode()[start - 1:start] == b" "
        full = text.encode()[start:start + 40]
        span = round(0.15 * len(full))
        assert bytes(v - OFFSET for v in s_ids[:at]) + full[at:at + span] + bytes(v - OFFSET for v in s_ids[at + 1:]) == full
        assert window == full[:23]


def test_distill_loss_matches_numpy():
    rng = np.random.default_rng(2)
    s, t = rng.normal(size=(2, 3, 5)), rng.normal(size=(2, 3, 5)) * 2
    tgt = np.array([[1, 4, 0], [2, 0, 0]])
    T = 3.0

    def log_softmax(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    lt, ls = log_softmax(t / T), log_softmax(s / T)
    kl = (np.exp(lt) * (lt - ls)).sum(-1)
    ce = -np.take_along_axis(log_softmax(s), tgt[..., None], -1)[..., 0]
    mask = tgt != 0
    expected = ((T**2 * kl + ce) * mask).sum() / mask.sum()
    got = distill_loss(s.astype(np.float32), t.astype(np.float32), tgt, T)
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_one_trial_end_to_end_and_optimizer_state_carried():
    pipe = get_pipeline("language-tiny")
    res = Runner(pipe, seed=0).run(P1, keep_outputs=True)
    assert res.ok, res.error
    pre = res.outputs[0]
    assert pre["src"].shape == (4, 16, 64) and pre["tgt"].shape == (4, 16, 24)
    steps = 4 * SIZES["tiny"].chunk_epochs
    assert int(res.outputs[2]["opt_state"].count) == steps
    assert int(res.outputs[3]["opt_state"].count) == 2 * steps
    assert 0.0 <= res.objective <= 1.0 and np.isfinite(res.metrics["distill_loss"])
    assert np.all(res.stage_costs > 0)


def _recording(pipe, seen):
    """``pipe`` whose distill2 stage records the step counter of the optimizer state it receives."""
    st = pipe.stages[3]

    def fn(data, p, key):
        seen.append(int(data["opt_state"].count))
        return st.fn(data, p, key)

    return dataclasses.replace(pipe, stages=pipe.stages[:3] + (Stage(st.name, fn, st.params),) + pipe.stages[4:])


def test_memoized_restart_equals_full_run_and_restores_optimizer_state(tmp_path):
    seen = []
    pipe = _recording(make_tiny(), seen)
    first = Runner(pipe, seed=3, cache=StageCache(tmp_path / "cache", CachePolicy("all"))).run(P1)
    assert first.ok and first.memo_depth == 0
    P2 = {**P1, "distill2": C2, "distill3": C2}
    memo = Runner(pipe, seed=3, cache=StageCache(tmp_path / "cache", CachePolicy("all"))).run(P2)
    assert memo.ok and memo.memo_depth == 3  # preprocess, teacher, distill1 restored from orbax
    # chunk 2's input (restored from the cache) carries chunk 1's AdamW step counter
    assert seen == [4, 4]
    scratch = Runner(pipe, seed=3).run(P2)
    assert scratch.ok and scratch.memo_depth == 0
    assert memo.objective == scratch.objective
    assert memo.metrics["distill_loss"] == scratch.metrics["distill_loss"]
    assert memo.metrics["distill_loss"] != first.metrics["distill_loss"]


def failing_tiny():
    """language-tiny whose teacher stage raises on its second call (an injected bad trial)."""
    return fail_on_call(make_tiny(), 1, name="language-tiny-failing")


@pytest.mark.slow
def test_failed_stage_is_a_failed_trial_and_the_run_goes_on(tmp_path):
    study = Study.create(str(tmp_path / "run"), "tests.test_language:failing_tiny", "ei", 1e6, 0, n_warmup=3,
                         bo=dict(SMALL_BO))
    summary = study.optimize(4)
    lines = [json.loads(s) for s in (tmp_path / "run" / "trials.jsonl").read_text().splitlines()]
    assert [r["status"] for r in lines] == ["ok", "failed", "ok", "ok"]
    assert "injected failure" in lines[1]["error"] and lines[1]["failed_stage"] == 1
    assert summary["n_trials"] == 4 and summary["n_failed"] == 1
