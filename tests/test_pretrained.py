"""The on-disk store of pretrained parameters: computed once, then loaded (same values, no recomputation)."""

import numpy as np

from pipelines.pretrained import load_or_pretrain, pretrained_path


def test_load_or_pretrain_computes_once_and_loads_after(tmp_path):
    calls = []

    def pretrain():
        calls.append(1)
        return {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": {"c": np.float32(2.5) * np.ones(2, np.float32)}}

    template = {"w": np.zeros((2, 3), np.float32), "b": {"c": np.zeros(2, np.float32)}}
    path = pretrained_path("net", ("net", 3, "cpu"), str(tmp_path))
    assert path.startswith(str(tmp_path / "pretrained" / "net-")) and path.endswith(".msgpack")
    assert pretrained_path("net", ("net", 4, "cpu"), str(tmp_path)) != path  # the tag is in the name
    first = load_or_pretrain(path, template, pretrain)
    second = load_or_pretrain(path, template, pretrain)
    assert calls == [1]
    np.testing.assert_array_equal(second["w"], np.arange(6).reshape(2, 3))
    np.testing.assert_array_equal(second["b"]["c"], [2.5, 2.5])
    np.testing.assert_array_equal(first["w"], second["w"])
    assert [p.name for p in (tmp_path / "pretrained").iterdir()] == [path.rsplit("/", 1)[1]]  # no temporary left
