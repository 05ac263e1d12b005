"""Offline tfds datasets: array_record files, TF-free reads, reuse of prepared files."""

import os
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from pipelines.data import DATA_DIR_ENV, DATASETS, default_data_dir, define_builder, get_builder, load_arrays
from pipelines.data.aerial_scenes import COLOURS, N_CLASSES, SOURCE_COLOURS, render_scene
from pipelines.data.pydoc_text import first_sentence

CALLS = {"n": 0}


def _counting_splits(params):
    CALLS["n"] += 1
    rng = np.random.default_rng(params["seed"])
    x = rng.normal(size=(params["n"], 3)).astype(np.float32)
    return {
        "train": ({"x": x[i], "label": i % 2, "text": f"row {i}"} for i in range(params["n"])),
        "test": ({"x": -x[i], "label": 1, "text": "t"} for i in range(2)),
    }


Counting = define_builder(
    "eeipu_test_counting",
    features={"x": tfds.features.Tensor(shape=(3,), dtype=np.float32),
              "label": tfds.features.Scalar(dtype=np.int64), "text": tfds.features.Text()},
    splits=_counting_splits,
    configs={"tiny": {"n": 7, "seed": 3}, "other": {"n": 2, "seed": 0}},
    description="test dataset",
)


def test_tensorflow_not_needed():
    assert "tensorflow" not in sys.modules


def test_define_builder_roundtrip_and_reuse(tmp_path):
    CALLS["n"] = 0
    a = load_arrays(Counting, "train", config="tiny", data_dir=tmp_path)
    expected = np.random.default_rng(3).normal(size=(7, 3)).astype(np.float32)
    np.testing.assert_array_equal(a["x"], expected)  # generator order kept
    np.testing.assert_array_equal(a["label"], np.arange(7) % 2)
    assert list(a["text"]) == [f"row {i}" for i in range(7)]
    assert CALLS["n"] == 1
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert any(p.name.endswith(".array_record-00000-of-00001") for p in files)
    mtimes = {p: p.stat().st_mtime_ns for p in files}
    # Second load (fresh builder, by name): files reused, generator not called again.
    b = load_arrays("eeipu_test_counting/tiny", "train", data_dir=tmp_path)
    np.testing.assert_array_equal(a["x"], b["x"])
    assert CALLS["n"] == 1
    assert {p: p.stat().st_mtime_ns for p in files} == mtimes
    assert len(load_arrays(Counting, "test", config="tiny", data_dir=tmp_path)["x"]) == 2
    assert CALLS["n"] == 1
    # tfds itself finds the registered builder (tfds.data_source by name).
    src = tfds.data_source("eeipu_test_counting/tiny", split="train", data_dir=str(tmp_path),
                           builder_kwargs={"file_format": "array_record"})
    assert len(src) == 7 and src[2]["text"] == b"row 2"
    assert CALLS["n"] == 1


def test_bad_names(tmp_path):
    with pytest.raises(ValueError, match="no config"):
        get_builder(Counting, config="huge", data_dir=tmp_path)
    with pytest.raises(ValueError, match="no split"):
        load_arrays(Counting, "validation", config="tiny", data_dir=tmp_path)
    with pytest.raises(ValueError, match="already defined"):
        define_builder("eeipu_test_counting", features={}, splits=_counting_splits, configs={"a": {}})


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "d"))
    assert default_data_dir() == str(tmp_path / "d")
    monkeypatch.delenv(DATA_DIR_ENV)
    assert default_data_dir().endswith(os.path.join(".cache", "eeipu_jax", "tensorflow_datasets"))


def test_credit_table_tiny_is_breast_cancer(tmp_path):
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    order = np.random.default_rng(0).permutation(569)
    train = load_arrays("credit_table", "train", config="tiny", data_dir=tmp_path)
    test = load_arrays("credit_table", "test", config="tiny", data_dir=tmp_path)
    assert train["x"].shape == (427, 30) and test["x"].shape == (142, 30)
    np.testing.assert_allclose(test["x"], x[order[:142]].astype(np.float32))
    np.testing.assert_array_equal(train["label"], y[order[142:]])


def test_aerial_scenes_tiny(tmp_path):
    train = load_arrays("aerial_scenes", "train", config="tiny", data_dir=tmp_path)
    val = load_arrays("aerial_scenes", "validation", config="tiny", data_dir=tmp_path)
    assert train["image"].shape == (16, 32, 32, 3) and train["image"].dtype == np.uint8
    assert val["mask"].shape == (8, 32, 32) and val["mask"].max() < N_CLASSES
    image, mask = render_scene(np.random.default_rng([0, 1, 5]), 32)
    np.testing.assert_array_equal(val["image"][5], image)
    np.testing.assert_array_equal(val["mask"][5], mask)
    assert len(np.unique(train["mask"])) >= 4  # several classes present


def test_aerial_scenes_pretrain_split_is_the_source_domain(tmp_path):
    pre = load_arrays("aerial_scenes", "pretrain", config="tiny", data_dir=tmp_path)
    assert pre["image"].shape == (16, 32, 32, 3) and pre["mask"].max() < N_CLASSES
    image, mask = render_scene(np.random.default_rng([0, 2, 3]), 32, SOURCE_COLOURS)
    np.testing.assert_array_equal(pre["image"][3], image)
    np.testing.assert_array_equal(pre["mask"][3], mask)
    # same layout as the target palette would give, different colours
    target_image, target_mask = render_scene(np.random.default_rng([0, 2, 3]), 32, COLOURS)
    np.testing.assert_array_equal(target_mask, mask)
    assert np.abs(target_image.astype(int) - image.astype(int)).mean() > 5


def test_pydoc_text_tiny(tmp_path):
    splits = {s: load_arrays("pydoc_text", s, config="tiny", data_dir=tmp_path)
              for s in ("train", "validation", "test", "pretrain")}
    assert [len(splits[s]["source"]) for s in ("train", "validation", "test", "pretrain")] == [64, 16, 16, 64]
    tr = splits["train"]
    for src, tgt in zip(tr["source"], tr["target"]):
        assert src.startswith(tgt) and len(src) > len(tgt)
    assert not set(tr["name"]) & set(splits["validation"]["name"])
    assert first_sentence("Return the sum.  More text here.\n\nOther.") == "Return the sum."
    assert "pydoc_text" in DATASETS
