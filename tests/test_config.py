"""Strict config loading, overrides, presets, atomic writes and model directories."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from videopoet.checkpoint import load_model_dir, load_state_strict, save_model_dir
from videopoet.config import (
    PRESETS_DIR,
    apply_overrides,
    from_dict,
    load_json,
    load_yaml,
    resolve_config_path,
    save_json,
    to_dict,
)
from videopoet.errors import ConfigError, VideoPoetError
from videopoet.io_utils import atomic_path


@dataclasses.dataclass
class Inner:
    width: int = 4
    scale: float = 1.0


@dataclasses.dataclass
class Outer:
    name: str
    inner: Inner = dataclasses.field(default_factory=Inner)
    mults: tuple[int, ...] = (1, 2)
    mode: str = "a"

    def __post_init__(self):
        if self.inner.width <= 0:
            raise ValueError(f"inner.width must be > 0, got {self.inner.width}")


def test_from_dict_builds_nested_and_converts():
    cfg = from_dict(Outer, {"name": "x", "inner": {"width": 8, "scale": 2}, "mults": [1, 2, 4]})
    assert cfg.inner == Inner(width=8, scale=2.0) and isinstance(cfg.inner.scale, float)
    assert cfg.mults == (1, 2, 4)
    assert to_dict(cfg) == {"name": "x", "inner": {"width": 8, "scale": 2.0}, "mults": [1, 2, 4], "mode": "a"}


@pytest.mark.parametrize(
    "data, needle",
    [
        ({"name": "x", "bogus": 1}, "bogus"),
        ({"name": "x", "inner": {"widht": 3}}, "widht"),
        ({"name": "x", "inner": {"width": "big"}}, "cfg.inner.width"),
        ({"name": "x", "inner": {"width": 0}}, "inner.width must be > 0"),
        ({}, "name"),
    ],
)
def test_from_dict_errors_name_the_field(data, needle):
    with pytest.raises(ConfigError) as e:
        from_dict(Outer, data, where="cfg")
    assert needle in str(e.value)


def test_overrides_parse_values_and_do_not_mutate():
    base = {"train": {"lr": 1e-3, "steps": 10}}
    out = apply_overrides(base, ["train.steps=20", "train.name=run1", "model.dim=64"])
    assert out == {"train": {"lr": 1e-3, "steps": 20, "name": "run1"}, "model": {"dim": 64}}
    assert base["train"]["steps"] == 10
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_overrides(base, ["nonsense"])


def test_every_shipped_preset_parses_as_yaml():
    presets = sorted(PRESETS_DIR.rglob("*.yaml"))
    for p in presets:
        assert isinstance(load_yaml(p), dict), p
        name = str(p.relative_to(PRESETS_DIR).with_suffix(""))
        assert resolve_config_path(name) == p


def test_unknown_preset_lists_the_known_ones(tmp_path):
    with pytest.raises(ConfigError, match="no such config file or preset"):
        resolve_config_path(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(bad)


def test_atomic_write_keeps_old_file_when_writer_fails(tmp_path):
    target = tmp_path / "f.json"
    save_json({"v": 1}, target)
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("crash mid-write")
    assert load_json(target) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]  # no temp file left behind


def test_atomic_write_gives_normal_file_mode(tmp_path):
    import os

    umask = os.umask(0o022)
    try:
        save_json({"v": 1}, tmp_path / "f.json")
        save_model_dir(tmp_path / "m", {}, {"w": torch.zeros(2)})  # safetensors replaces its file
    finally:
        os.umask(umask)
    for f in (tmp_path / "f.json", tmp_path / "m" / "config.json", tmp_path / "m" / "model.safetensors"):
        assert f.stat().st_mode & 0o777 == 0o644, f


def test_model_dir_round_trip_and_errors(tmp_path):
    m = torch.nn.Linear(3, 2)
    d = save_model_dir(tmp_path / "m", {"in": 3, "out": 2}, m.state_dict())
    cfg, state = load_model_dir(d)
    assert cfg == {"in": 3, "out": 2}
    m2 = torch.nn.Linear(3, 2)
    load_state_strict(m2, state, where=str(d))
    assert torch.equal(m2.weight, m.weight)
    # fp16 storage is cast back to the module's dtype on load
    d16 = save_model_dir(tmp_path / "m16", {}, m.state_dict(), dtype=torch.float16)
    _, s16 = load_model_dir(d16)
    assert s16["weight"].dtype == torch.float16
    load_state_strict(m2, s16, where="m16")
    assert m2.weight.dtype == torch.float32 and torch.allclose(m2.weight, m.weight, atol=1e-3)
    with pytest.raises(VideoPoetError, match="directory not found"):
        load_model_dir(tmp_path / "missing")
    (d / "model.safetensors").unlink()
    with pytest.raises(VideoPoetError, match="model.safetensors is missing"):
        load_model_dir(d)
    with pytest.raises(VideoPoetError, match="shapes do not match"):
        load_state_strict(torch.nn.Linear(4, 2), state, where="x")


def test_corrupt_weights_are_reported_with_the_file(tmp_path):
    d = save_model_dir(tmp_path / "m", {}, {"w": torch.zeros(2)})
    (d / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(VideoPoetError) as e:
        load_model_dir(d)
    assert str(Path(d / "model.safetensors")) in str(e.value)
