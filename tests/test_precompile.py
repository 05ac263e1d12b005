"""Precompiling a pipeline's stage functions in ``prepare``: afterwards the
trials run without compiling them again (checked through JAX's compile log),
while a shape that was not precompiled still compiles (so the check can fail).

Each test starts from empty in-process compilation caches
(``jax.clear_caches``): otherwise what it sees in the compile log would depend
on which shapes earlier tests in the same process happened to compile. (XLA
logs "Finished XLA compilation" also when an executable comes from the
persistent cache, so that cache does not hide compilations.)"""

import logging
import re

import jax
import pytest

from eeipu_jax.runtime.cache import CachePolicy, StageCache, stage_cache_key
from eeipu_jax.runtime.pipeline import stage_key
from pipelines import language, segmentation

pytestmark = pytest.mark.usefixtures("module_data_dir")

_NAMES = ("normalize_and_augment", "train_unet", "evaluate", "permutation", "init_opt_state", "finetune", "distill_chunk",
          "greedy_decode")


@pytest.fixture
def compile_log(caplog):
    """The names of the jitted pipeline functions compiled while the test runs."""
    jax.clear_caches()  # compilations of earlier tests must not count as precompiled
    jax.config.update("jax_log_compiles", True)
    caplog.set_level(logging.DEBUG, logger="jax")

    def names():
        found = []
        for rec in caplog.records:
            m = re.search(r"Finished XLA compilation of jit\((\w+)\)", rec.getMessage())
            if m and m.group(1) in _NAMES:
                found.append(m.group(1))
        caplog.clear()
        return found

    yield names
    jax.config.update("jax_log_compiles", False)


def _run(pipeline, data, params, upto=None):
    out = data
    for j, stage in enumerate(pipeline.stages[:upto]):
        out = stage.fn(out, params[stage.name], stage_key(0, j))
    return out


def test_segmentation_precompiled_trial_does_not_compile(compile_log, tmp_path):
    pipe = segmentation.make_tiny()
    data = pipe.prepare()
    compile_log()
    seconds = segmentation.precompile_stages(data, segmentation.SIZES["tiny"], batch_sizes=[8])
    assert seconds > 0
    assert sorted(set(compile_log())) == ["evaluate", "normalize_and_augment", "train_unet"]
    params = {
        "augment": dict(mean_r=0.5, mean_g=0.4, mean_b=0.3, std_r=0.2, std_g=0.2, std_b=0.2),
        "train": dict(batch_size=9, peak_lr=0.01, weight_decay=1e-4),  # used as 8
        "crf": dict(sigma=1.0, compat=1.0, confidence=1.0),
    }
    _run(pipe, data, params)
    assert compile_log() == []
    # A memoized trial: the first stage's output restored from the stage cache.
    cache = StageCache(str(tmp_path / "cache"), CachePolicy("all"))
    first = pipe.stages[0].name
    meta = dict(pipeline=pipe.name, version=pipe.version, stage=0, seed=0, params={first: params[first]},
                prefix_costs=[1.0])
    key = stage_cache_key(pipe.name, pipe.version, 0, {first: params[first]}, 0)
    assert cache.save(key, _run(pipe, data, params, upto=1), meta) > 0
    restored, _ = cache.restore(key)
    for j in (1, 2):
        restored = pipe.stages[j].fn(restored, params[pipe.stages[j].name], stage_key(0, j))
    assert compile_log() == []
    params["train"]["batch_size"] = 12  # not precompiled
    _run(pipe, data, params, upto=2)
    assert compile_log() == ["train_unet"]


@pytest.mark.slow  # the segmentation test checks the same mechanism in the default run
def test_language_precompiled_trial_does_not_compile(compile_log):
    pipe = language.make_tiny()
    data = pipe.prepare()
    compile_log()
    language.precompile_stages(data, language.SIZES["tiny"], batch_sizes=[16])
    assert sorted(set(compile_log())) == ["distill_chunk", "finetune", "greedy_decode", "init_opt_state", "permutation"]
    chunk = dict(lr=1e-3, temperature=2.0, weight_decay=1e-4)
    params = {"preprocess": dict(batch_size=16), "teacher": dict(lr=1e-4, weight_decay=1e-4),
              "distill1": chunk, "distill2": chunk, "distill3": chunk}
    out = _run(pipe, data, params)
    assert 0.0 <= float(out["objective"]) <= 1.0
    assert compile_log() == []
    params["preprocess"]["batch_size"] = 24  # not precompiled
    _run(pipe, data, params, upto=2)
    assert compile_log() == ["finetune"]
