"""Presets and model directories for the LM.

A preset (configs/lm/NAME.yaml) has a `vocab:` section (Vocabulary fields) and a `model:` section
(LMConfig fields without the sizes the vocabulary determines). A saved LM is a directory:
`config.json` (LMConfig + kind), `model.safetensors`, `vocab.json`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from videopoet.checkpoint import load_model_dir, load_state_strict, save_model_dir
from videopoet.config import from_dict, load_yaml, resolve_config_path, to_dict
from videopoet.errors import ConfigError, VideoPoetError
from videopoet.lm.model import LMConfig, PrefixLM, lm_config
from videopoet.lm.vocab import Vocabulary

KIND = "prefix_lm"
VOCAB_NAME = "vocab.json"


def load_preset(name_or_path: str | Path) -> tuple[Vocabulary, LMConfig]:
    """`lm/cpu`, `cpu` or a YAML path -> (vocabulary, model config)."""
    p = str(name_or_path)
    if not Path(p).is_file() and "/" not in p:
        p = f"lm/{p}"
    path = resolve_config_path(p)
    data = load_yaml(path)
    unknown = sorted(set(data) - {"vocab", "model"})
    if unknown or "vocab" not in data or "model" not in data:
        raise ConfigError(
            f"{path}: an LM preset has exactly the sections 'vocab' and 'model' (got {sorted(data)})"
        )
    vocab = from_dict(Vocabulary, data["vocab"], where=f"{path}:vocab")
    return vocab, lm_config(vocab, data["model"], where=f"{path}:model")


def build_lm(name_or_path: str | Path, device: str | torch.device = "cpu") -> tuple[PrefixLM, Vocabulary]:
    """A freshly initialised LM for a preset (device="meta" counts parameters without memory)."""
    vocab, cfg = load_preset(name_or_path)
    with torch.device(device):
        model = PrefixLM(cfg)
    return model, vocab


def save_lm(
    directory: str | Path, model: PrefixLM, vocab: Vocabulary, *, dtype: torch.dtype | None = None
) -> Path:
    if vocab.size != model.cfg.vocab_size:
        raise VideoPoetError(
            f"save_lm: vocabulary size {vocab.size} != model vocab_size {model.cfg.vocab_size}"
        )
    d = save_model_dir(directory, {"kind": KIND, **to_dict(model.cfg)}, model.state_dict(), dtype=dtype)
    vocab.save(d / VOCAB_NAME)
    return d


def load_lm(directory: str | Path, map_location: str | torch.device = "cpu") -> tuple[PrefixLM, Vocabulary]:
    cfg, state = load_model_dir(directory, kind="LM")
    kind = cfg.pop("kind", KIND)
    if kind != KIND:
        raise VideoPoetError(f"{directory}: holds a {kind!r} model, expected the prefix LM")
    vpath = Path(directory) / VOCAB_NAME
    if not vpath.is_file():
        raise VideoPoetError(f"{directory}: not an LM directory, {VOCAB_NAME} is missing")
    vocab = Vocabulary.load(vpath)
    config = from_dict(LMConfig, cfg, where=f"{directory}/config.json")
    if config.vocab_size != vocab.size:
        raise VideoPoetError(
            f"{directory}: config vocab_size {config.vocab_size} != vocab.json size {vocab.size}"
        )
    model = PrefixLM(config)
    load_state_strict(model, state, where=str(directory))
    return model.to(map_location).eval(), vocab
