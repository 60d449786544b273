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
from videopoet.lm.tasks import SOURCES, TASKS

NUM_SPECIAL = 256

# The special-token table: explicit ids, append-only. A token's id never changes and no id is
# reused: a new task, source, resolution or duration gets the next free id at the end, so models
# and token shards written before it stay valid. (Before this table the ids were derived from the
# task list's order, and adding one task moved <task:t2v> from 23 to 24.) A retired token keeps its
# id and is simply never written (e.g. <task:uncond>: unconditional video is t2v without text).
SPECIAL_TABLE: tuple[tuple[int, str], ...] = (
    (0, "<pad>"), (1, "<bos>"), (2, "<eos>"), (3, "<mask>"), (4, "<text_emb>"),
    (5, "<bot_i>"), (6, "<eot_i>"), (7, "<bov_i>"), (8, "<eov_i>"), (9, "<boa_i>"), (10, "<eoa_i>"),
    (11, "<bov_o>"), (12, "<eov_o>"), (13, "<boa_o>"), (14, "<eoa_o>"),
    (15, "<source:first_frame>"), (16, "<source:structure>"),
    (17, "<res:128x128>"), (18, "<res:128x224>"), (19, "<res:224x128>"), (20, "<res:256x256>"),
    (21, "<res:64x64>"), (22, "<res:32x32>"),
    (23, "<task:t2v>"), (24, "<task:t2i>"), (25, "<task:uncond>"), (26, "<task:i2v>"),
    (27, "<task:frame_pred>"), (28, "<task:inpaint>"), (29, "<task:outpaint>"), (30, "<task:stylize>"),
    (31, "<task:v2a>"), (32, "<task:a2v>"), (33, "<task:avcont>"),
    # output duration in frames, written beside the resolution (the paper signals 17 vs 41 frames)
    (34, "<frames:1>"), (35, "<frames:5>"), (36, "<frames:9>"), (37, "<frames:17>"), (38, "<frames:33>"),
    (39, "<frames:41>"),
    (40, "<source:anchor>"),  # long video: the first chunk's first frame as a second visual source
)  # fmt: skip

BASE_SPECIAL = tuple(name for _, name in SPECIAL_TABLE[:15])
RESOLUTIONS = tuple(name[5:-1] for _, name in SPECIAL_TABLE if name.startswith("<res:"))
DURATIONS = tuple(int(name[8:-1]) for _, name in SPECIAL_TABLE if name.startswith("<frames:"))


def default_special_tokens() -> tuple[str, ...]:
    """The names of SPECIAL_TABLE in id order (position = id)."""
    ids = [i for i, _ in SPECIAL_TABLE]
    assert ids == list(range(len(ids))), "SPECIAL_TABLE ids must be 0, 1, 2, ... in order"
    names = tuple(name for _, name in SPECIAL_TABLE)
    needed = {f"<source:{s}>" for s in SOURCES} | {f"<task:{t.token}>" for t in TASKS.values()}
    missing = sorted(needed - set(names))
    assert not missing, f"append these to SPECIAL_TABLE (new ids at the end): {missing}"
    return names


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
        """The id of a task's task token (tasks may share one: t2i and uncond write <task:t2v>)."""
        from videopoet.lm.tasks import get_task

        return self.id(f"<task:{get_task(task).token}>")

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

    def check_same(self, other: Vocabulary, mine: str, theirs: str) -> None:
        """Raise ConfigError naming both files when two vocabularies differ (a model's and its
        shards', say): the same id would mean different tokens."""
        if self == other:
            return
        diffs = []
        for f in ("visual_bits", "audio_levels", "audio_codes", "text_size"):
            if getattr(self, f) != getattr(other, f):
                diffs.append(f"{f} {getattr(self, f)} vs {getattr(other, f)}")
        a, b = self.special_tokens, other.special_tokens
        for i in range(max(len(a), len(b))):
            x = a[i] if i < len(a) else "(none)"
            y = b[i] if i < len(b) else "(none)"
            if x != y:
                diffs.append(f"special id {i}: {x} vs {y}")
                break
        raise ConfigError(f"vocabularies differ between {mine} and {theirs}: {'; '.join(diffs)}")

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
