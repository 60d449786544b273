"""The unified LM vocabulary: special/task tokens, visual codes, audio codes, text tokens.

    [0, 256)                  special and task tokens (names stored, so ids survive new tasks)
    [256, 256 + 2^K)          visual codes (LFQ with K bits)
    [..., + L*A)              audio codes, level l at offset l*A (A codes per RVQ level)
    [..., + S)                text tokens (SentencePiece ids; S = 0 in text-embedding mode)

Built from plain numbers, or from the tokenizers with `Vocabulary.from_tokenizers`, and saved as
`vocab.json` next to the LM weights.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from videopoet.config import from_dict, load_json, save_json
from videopoet.errors import ConfigError, InputError
from videopoet.tasks.specs import SOURCES, TASKS

NUM_SPECIAL = 256

BASE_SPECIAL = (
    "<pad>", "<bos>", "<eos>", "<mask>", "<text_emb>",
    "<bot_i>", "<eot_i>", "<bov_i>", "<eov_i>", "<boa_i>", "<eoa_i>",
    "<bov_o>", "<eov_o>", "<boa_o>", "<eoa_o>",
)  # fmt: skip
RESOLUTIONS = ("128x128", "128x224", "224x128", "256x256", "64x64", "32x32")


def default_special_tokens() -> tuple[str, ...]:
    return (
        BASE_SPECIAL
        + tuple(f"<source:{s}>" for s in SOURCES)
        + tuple(f"<res:{r}>" for r in RESOLUTIONS)
        + tuple(f"<task:{t}>" for t in TASKS)
    )


@dataclass(frozen=True)
class Vocabulary:
    visual_bits: int  # K: the video tokenizer emits 2^K codes
    audio_levels: int = 0  # L: RVQ levels
    audio_codes: int = 0  # A: codes per level
    text_size: int = 0  # S: text tokens (0 in text-embedding mode)
    special_tokens: tuple[str, ...] = field(default_factory=default_special_tokens)

    def __post_init__(self):
        if not 1 <= self.visual_bits <= 24:
            raise ConfigError(f"vocab.visual_bits: must be in [1, 24], got {self.visual_bits}")
        for name in ("audio_levels", "audio_codes", "text_size"):
            if getattr(self, name) < 0:
                raise ConfigError(f"vocab.{name}: must be >= 0, got {getattr(self, name)}")
        if (self.audio_levels == 0) != (self.audio_codes == 0):
            raise ConfigError("vocab: audio_levels and audio_codes must both be 0 or both > 0")
        sp = tuple(self.special_tokens)
        object.__setattr__(self, "special_tokens", sp)
        if len(sp) > NUM_SPECIAL:
            raise ConfigError(f"vocab.special_tokens: at most {NUM_SPECIAL}, got {len(sp)}")
        if len(set(sp)) != len(sp):
            raise ConfigError("vocab.special_tokens: duplicate names")
        missing = [t for t in BASE_SPECIAL if t not in sp]
        if missing:
            raise ConfigError(f"vocab.special_tokens: missing {missing}")
        object.__setattr__(self, "_ids", {t: i for i, t in enumerate(sp)})

    # ---- ranges ----------------------------------------------------------------------------------
    @property
    def visual_size(self) -> int:
        return 1 << self.visual_bits

    @property
    def visual_offset(self) -> int:
        return NUM_SPECIAL

    @property
    def audio_offset(self) -> int:
        return self.visual_offset + self.visual_size

    @property
    def audio_size(self) -> int:
        return self.audio_levels * self.audio_codes

    @property
    def text_offset(self) -> int:
        return self.audio_offset + self.audio_size

    @property
    def size(self) -> int:
        return self.text_offset + self.text_size

    def visual_range(self) -> tuple[int, int]:
        return self.visual_offset, self.audio_offset

    def audio_level_range(self, level: int) -> tuple[int, int]:
        if not 0 <= level < self.audio_levels:
            raise InputError(f"audio level {level}: the vocabulary has {self.audio_levels} levels")
        lo = self.audio_offset + level * self.audio_codes
        return lo, lo + self.audio_codes

    def text_range(self) -> tuple[int, int]:
        return self.text_offset, self.size

    # ---- special tokens --------------------------------------------------------------------------
    def id(self, token: str) -> int:
        try:
            return self._ids[token]  # type: ignore[attr-defined]
        except KeyError:
            raise InputError(f"token {token!r}: not in this vocabulary's special tokens") from None

    def task_id(self, task: str) -> int:
        return self.id(f"<task:{task}>")

    def has(self, token: str) -> bool:
        return token in self._ids  # type: ignore[attr-defined]

    @property
    def pad_id(self) -> int:
        return self.id("<pad>")

    def token_name(self, i: int) -> str:
        """A readable name for id `i` (for debugging and error messages)."""
        if 0 <= i < len(self.special_tokens):
            return self.special_tokens[i]
        if i < NUM_SPECIAL:
            return f"<unused:{i}>"
        if i < self.audio_offset:
            return f"v{i - self.visual_offset}"
        if i < self.text_offset:
            level, code = divmod(i - self.audio_offset, self.audio_codes)
            return f"a{level}:{code}"
        if i < self.size:
            return f"t{i - self.text_offset}"
        return f"<out-of-range:{i}>"

    # ---- save / load / build ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
            for f in dataclasses.fields(self)
        }

    def save(self, path: str | Path) -> None:
        save_json(self.to_dict(), path)

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        return from_dict(cls, load_json(path), where=str(path))

    @classmethod
    def from_tokenizers(cls, video_tok: Any, audio_tok: Any = None, text_tok: Any = None) -> Vocabulary:
        """Read the sizes from the tokenizers (duck-typed: `.vocab_size` and/or `.config` fields).

        video: vocab_size = 2^K (or a config field such as `lfq_bits`); audio: RVQ levels and codes
        per level from its config (or vocab_size = L*A with one of them known); text: a SentencePiece
        model / tokenizer with `vocab_size` (token mode), or None / an embedding model (embedding mode).
        """
        bits = _first_attr(video_tok, ("visual_bits", "lfq_bits", "num_bits", "codebook_bits", "bits", "K"))
        if bits is None:
            size = _vocab_size(video_tok)
            if size is None or size & (size - 1):
                raise ConfigError(f"video tokenizer: cannot read its number of LFQ bits (vocab_size={size})")
            bits = int(math.log2(size))
        levels = codes = 0
        if audio_tok is not None:
            levels = (
                _first_attr(
                    audio_tok, ("num_levels", "levels", "n_levels", "num_quantizers", "n_q", "rvq_levels")
                )
                or 0
            )
            codes = (
                _first_attr(audio_tok, ("codebook_size", "codes_per_level", "num_codes", "codes", "bins"))
                or 0
            )
            total = _vocab_size(audio_tok)
            if total and levels and not codes:
                codes = total // levels
            elif total and codes and not levels:
                levels = total // codes
            if not (levels and codes):
                raise ConfigError("audio tokenizer: cannot read its RVQ levels and codes per level")
        text_size = 0
        if text_tok is not None and not _first_attr(text_tok, ("embed_dim", "hidden_size", "d_model")):
            text_size = _vocab_size(text_tok) or 0
            if text_size == 0 and hasattr(text_tok, "get_piece_size"):
                text_size = int(text_tok.get_piece_size())
        return cls(
            visual_bits=int(bits), audio_levels=int(levels), audio_codes=int(codes), text_size=int(text_size)
        )


def _first_attr(obj: Any, names: tuple[str, ...]) -> int | None:
    for holder in (obj, getattr(obj, "config", None)):
        if holder is None:
            continue
        for n in names:
            v = holder.get(n) if isinstance(holder, dict) else getattr(holder, n, None)
            if isinstance(v, int) and not isinstance(v, bool) and v > 0:
                return v
    return None


def _vocab_size(obj: Any) -> int | None:
    v = getattr(obj, "vocab_size", None)
    if callable(v):
        v = v()
    return int(v) if isinstance(v, int) and v > 0 else None
