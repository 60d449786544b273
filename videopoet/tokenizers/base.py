"""The one tokenizer interface shared by the video and audio tokenizers.

A tokenizer is an `nn.Module` that maps media to integer codes and back:

    codes = tok.encode(x)          # LongTensor, values in [0, tok.codebook_size)
    x_hat = tok.decode(codes)      # same layout and range as x
    tok.token_shape(input_shape)   # code-grid shape for an input shape (without batch)
    tok.vocab_size                 # number of distinct token ids it produces (all levels)

Saved as a directory (`config.json` + `model.safetensors`) with `save_pretrained(dir)` and loaded
with `Cls.from_pretrained(dir)`. Subclasses declare `config_class` (a dataclass validated in
`__post_init__`) and `kind` (used in error messages and in config.json).
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from videopoet.checkpoint import load_model_dir, load_state_strict, save_model_dir
from videopoet.config import from_dict, to_dict
from videopoet.errors import InputError, VideoPoetError


class Tokenizer(nn.Module, abc.ABC):
    config_class: ClassVar[type]
    kind: ClassVar[str]

    def __init__(self, config: Any):
        super().__init__()
        self.config = config

    # ---- the interface -------------------------------------------------------------------------
    @abc.abstractmethod
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Media -> integer codes (LongTensor)."""

    @abc.abstractmethod
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Integer codes -> media."""

    @abc.abstractmethod
    def token_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of the code grid (no batch dim) for an input of `input_shape` (no batch dim)."""

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int:
        """Number of distinct token ids this tokenizer emits (for RVQ: levels x codes per level)."""

    # ---- shared helpers ------------------------------------------------------------------------
    def check_codes(self, codes: torch.Tensor, high: int, name: str = "codes") -> None:
        """Raise InputError if `codes` is not an integer tensor with values in [0, high)."""
        if codes.dtype.is_floating_point or codes.dtype == torch.bool:
            raise InputError(f"{name}: expected an integer tensor, got {codes.dtype}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= high):
            raise InputError(
                f"{name}: values must be in [0, {high}), got [{int(codes.min())}, {int(codes.max())}]"
            )

    def save_pretrained(self, directory: str | Path, *, dtype: torch.dtype | None = None,
                        int8_prefixes: tuple[str, ...] | None = None) -> Path:
        cfg = {"kind": self.kind, **to_dict(self.config)}
        return save_model_dir(directory, cfg, self.state_dict(), dtype=dtype, int8_prefixes=int8_prefixes)

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu"):
        cfg, state = load_model_dir(directory, kind=f"{cls.kind} tokenizer")
        kind = cfg.pop("kind", cls.kind)
        if kind != cls.kind:
            raise VideoPoetError(f"{directory}: holds a {kind!r} model, expected a {cls.kind!r} tokenizer")
        model = cls(from_dict(cls.config_class, cfg, where=f"{directory}/config.json"))
        load_state_strict(model, state, where=str(directory))
        return model.to(map_location).eval()
