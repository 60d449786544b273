"""Text conditioning: SentencePiece tokens (offline default) or frozen encoder embeddings (VideoPoet's).

Token mode (`SentencePieceTextTokenizer`): a SentencePiece model trained on the captions
(`videopoet text train-spm`). Ids are in [0, vocab_size); the LM places them in its text range
(`Vocabulary.text_offset + id`). No BOS/EOS/PAD inside the model: the LM's <bot_i>/<eot_i> delimit
text. Saved as a directory: `spm.model` + `config.json`.

Embedding mode (`TextEmbedder`): any `transformers` encoder (T5 family, BERT-style) loaded from a
local directory, frozen, in eval mode, returning per-token embeddings (B, max_length, D) and a mask
(B, max_length) (VideoPoet: T5-XL, <= 64 tokens, followed by a linear projection inside the LM).
`EmbeddingCache` stores each caption's embeddings on disk (safetensors, keyed by a hash of the
model's identity, max_length and the text) so training does not re-run the encoder.

Truncation is never silent: text longer than `max_length` tokens is cut, a `TextTruncationWarning`
names it, and the result carries per-item `truncated` flags; `on_overflow="error"` raises instead.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import torch

from videopoet.config import load_json, save_json
from videopoet.errors import InputError, NotAvailableError, VideoPoetError
from videopoet.io_utils import atomic_path, atomic_write_bytes

Overflow = Literal["warn", "error"]


class TextTruncationWarning(UserWarning):
    """A text was longer than the tokenizer's max_length and was truncated."""


class TextTokens(NamedTuple):
    ids: torch.Tensor  # (B, N) long, right-padded with pad_value; N = longest kept length
    mask: torch.Tensor  # (B, N) bool, True on real tokens
    truncated: list[bool]  # per item: was the text cut to max_length?


class TextEmbeddings(NamedTuple):
    embeddings: torch.Tensor  # (B, max_length, D) float32, zeros on padding
    mask: torch.Tensor  # (B, max_length) bool
    truncated: list[bool]


def _check_texts(texts: str | list[str]) -> list[str]:
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
        raise InputError("text: expected a string or a list of strings")
    return list(texts)


def _report_overflow(texts: list[str], lengths: list[int], max_length: int, on_overflow: Overflow) -> list[bool]:
    flags = [n > max_length for n in lengths]
    if any(flags):
        worst = max(range(len(texts)), key=lambda i: lengths[i])
        msg = (f"text: {sum(flags)} of {len(texts)} text(s) longer than max_length={max_length} tokens "
               f"(longest {lengths[worst]} tokens: {texts[worst][:60]!r}...)")
        if on_overflow == "error":
            raise InputError(msg)
        warnings.warn(msg + "; truncated", TextTruncationWarning, stacklevel=3)
    return flags


# ------------------------------------------------------------------------------------ token mode
@dataclass
class SentencePieceConfig:
    vocab_size: int = 256
    max_length: int = 64
    model_type: Literal["bpe", "unigram", "char", "word"] = "bpe"

    def __post_init__(self) -> None:
        if self.vocab_size < 8:
            raise InputError(f"vocab_size: expected >= 8, got {self.vocab_size}")
        if self.max_length < 1:
            raise InputError(f"max_length: expected >= 1, got {self.max_length}")


class SentencePieceTextTokenizer:
    """Captions -> SentencePiece ids in [0, vocab_size) (id 0 is <unk>)."""

    kind = "text_spm"
    MODEL_NAME = "spm.model"

    def __init__(self, model_proto: bytes, max_length: int = 64):
        import sentencepiece as spm

        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.model_proto = model_proto
        self.max_length = int(max_length)
        if self.max_length < 1:
            raise InputError(f"max_length: expected >= 1, got {max_length}")

    @property
    def vocab_size(self) -> int:
        return int(self.sp.get_piece_size())

    @classmethod
    def train(cls, captions: list[str], config: SentencePieceConfig | None = None) -> SentencePieceTextTokenizer:
        """Train on `captions`. The vocabulary may come out smaller than asked when the captions have
        fewer distinct pieces (a fixed-grammar corpus); `vocab_size` then reports the real size."""
        import io

        import sentencepiece as spm

        cfg = config or SentencePieceConfig()
        captions = [c.strip() for c in _check_texts(captions) if c.strip()]
        if not captions:
            raise InputError("captions: no non-empty captions to train on")
        buf = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(captions), model_writer=buf, vocab_size=cfg.vocab_size,
                model_type=cfg.model_type, character_coverage=1.0, hard_vocab_limit=False,
                unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1, num_threads=1, minloglevel=2,
            )
        except RuntimeError as e:
            raise InputError(f"captions: SentencePiece training failed ({e})") from None
        return cls(buf.getvalue(), cfg.max_length)

    def encode(self, texts: str | list[str], on_overflow: Overflow = "warn", pad_value: int = 0) -> TextTokens:
        """Texts -> TextTokens (ids right-padded with `pad_value`, mask, truncated flags)."""
        texts = _check_texts(texts)
        pieces = [self.sp.encode(t, out_type=int) for t in texts]
        flags = _report_overflow(texts, [len(p) for p in pieces], self.max_length, on_overflow)
        pieces = [p[: self.max_length] for p in pieces]
        n = max([len(p) for p in pieces] + [1])
        ids = torch.full((len(texts), n), pad_value, dtype=torch.long)
        mask = torch.zeros((len(texts), n), dtype=torch.bool)
        for i, p in enumerate(pieces):
            ids[i, : len(p)] = torch.tensor(p, dtype=torch.long)
            mask[i, : len(p)] = True
        return TextTokens(ids, mask, flags)

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        bad = [i for i in ids if not 0 <= int(i) < self.vocab_size]
        if bad:
            raise InputError(f"text ids: {bad[:5]} outside [0, {self.vocab_size})")
        return self.sp.decode([int(i) for i in ids])

    def save_pretrained(self, directory: str | Path) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(d / self.MODEL_NAME, self.model_proto)
        save_json({"kind": self.kind, "max_length": self.max_length, "vocab_size": self.vocab_size},
                  d / "config.json")
        return d

    @classmethod
    def from_pretrained(cls, directory: str | Path, max_length: int | None = None) -> SentencePieceTextTokenizer:
        d = Path(directory)
        if not (d / cls.MODEL_NAME).is_file() or not (d / "config.json").is_file():
            raise VideoPoetError(f"{d}: not a SentencePiece text tokenizer directory (needs {cls.MODEL_NAME} + config.json)")
        cfg = load_json(d / "config.json")
        if cfg.get("kind") != cls.kind:
            raise VideoPoetError(f"{d}: holds a {cfg.get('kind')!r} model, expected {cls.kind!r}")
        return cls((d / cls.MODEL_NAME).read_bytes(), max_length or int(cfg.get("max_length", 64)))


def default_text_tokenizer() -> SentencePieceTextTokenizer:
    """The SentencePiece model shipped with the package (trained on shapes captions)."""
    from videopoet.assets import asset_dir

    return SentencePieceTextTokenizer.from_pretrained(asset_dir("text_spm"))


# -------------------------------------------------------------------------------- embedding mode
class TextEmbedder(torch.nn.Module):
    """A frozen `transformers` text encoder from a local directory -> per-token embeddings + mask."""

    def __init__(self, model_dir: str | Path, max_length: int = 64, device: str | torch.device = "cpu"):
        super().__init__()
        d = Path(model_dir)
        if not d.is_dir() or not (d / "config.json").is_file():
            raise NotAvailableError(
                f"{d}: no local text encoder there (a transformers model directory with config.json); "
                "weights are never downloaded — save one with save_pretrained and pass its path"
            )
        from transformers import AutoConfig, AutoModel, AutoTokenizer, T5EncoderModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        try:
            config = AutoConfig.from_pretrained(str(d), local_files_only=True)
            self.tokenizer = AutoTokenizer.from_pretrained(str(d), local_files_only=True)
            if getattr(config, "is_encoder_decoder", False) and config.model_type in ("t5", "mt5", "umt5"):
                self.encoder = T5EncoderModel.from_pretrained(str(d), local_files_only=True)
            else:
                self.encoder = AutoModel.from_pretrained(str(d), local_files_only=True)
        except (OSError, ValueError) as e:
            raise VideoPoetError(f"{d}: cannot load the text encoder ({e})") from None
        finally:
            hf_logging.enable_progress_bar()
        if getattr(self.encoder.config, "is_encoder_decoder", False) and hasattr(self.encoder, "get_encoder"):
            self.encoder = self.encoder.get_encoder()
        self.encoder.requires_grad_(False).eval().to(device)
        self.model_dir = d
        self.max_length = int(max_length)
        if self.max_length < 1:
            raise InputError(f"max_length: expected >= 1, got {max_length}")
        self.embed_dim = int(getattr(config, "d_model", None) or config.hidden_size)
        self.identity = _model_identity(d, self.max_length)

    def train(self, mode: bool = True) -> TextEmbedder:  # frozen: always eval
        super().train(False)
        return self

    @torch.no_grad()
    def forward(self, texts: str | list[str], on_overflow: Overflow = "warn") -> TextEmbeddings:
        texts = _check_texts(texts)
        full = self.tokenizer(texts, add_special_tokens=True)["input_ids"]
        flags = _report_overflow(texts, [len(x) for x in full], self.max_length, on_overflow)
        enc = self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        device = next(self.encoder.parameters()).device
        mask = enc["attention_mask"].to(device)
        out = self.encoder(input_ids=enc["input_ids"].to(device), attention_mask=mask).last_hidden_state
        mask = mask.bool()
        return TextEmbeddings(out.float() * mask[..., None], mask, flags)


def _model_identity(d: Path, max_length: int) -> str:
    h = hashlib.sha256()
    h.update((d / "config.json").read_bytes())
    for f in sorted(d.iterdir()):
        if f.is_file() and f.suffix in (".safetensors", ".bin", ".json", ".model"):
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}".encode())
    h.update(f"max_length={max_length}".encode())
    return h.hexdigest()[:16]


class EmbeddingCache:
    """On-disk cache of per-caption embeddings: DIR/<model identity>/<sha256(text)>.safetensors holding
    the unpadded (n, D) float16 embeddings. `embed(texts)` fills misses with the embedder in one batch."""

    def __init__(self, directory: str | Path, embedder: TextEmbedder):
        self.embedder = embedder
        self.root = Path(directory) / embedder.identity
        self.root.mkdir(parents=True, exist_ok=True)
        self.hits = 0
        self.misses = 0

    def _path(self, text: str) -> Path:
        return self.root / (hashlib.sha256(text.encode("utf-8")).hexdigest() + ".safetensors")

    def embed(self, texts: str | list[str], on_overflow: Overflow = "warn") -> TextEmbeddings:
        from safetensors.torch import load_file, save_file

        texts = _check_texts(texts)
        L, D = self.embedder.max_length, self.embedder.embed_dim
        emb = torch.zeros(len(texts), L, D)
        mask = torch.zeros(len(texts), L, dtype=torch.bool)
        flags = [False] * len(texts)
        todo = []
        for i, t in enumerate(texts):
            p = self._path(t)
            if p.is_file():
                data = load_file(str(p))
                n = data["embeddings"].shape[0]
                emb[i, :n] = data["embeddings"].float()
                mask[i, :n] = True
                flags[i] = bool(data["truncated"].item())
                self.hits += 1
            else:
                todo.append(i)
        if todo:
            self.misses += len(todo)
            out = self.embedder([texts[i] for i in todo], on_overflow=on_overflow)
            for j, i in enumerate(todo):
                n = int(out.mask[j].sum())
                emb[i, :n] = out.embeddings[j, :n].cpu().half().float()  # same values as a later cache hit
                mask[i, :n] = True
                flags[i] = out.truncated[j]
                with atomic_path(self._path(texts[i])) as tmp:
                    save_file({"embeddings": out.embeddings[j, :n].cpu().half().contiguous(),
                               "truncated": torch.tensor(int(out.truncated[j]))}, str(tmp))
        elif any(flags):
            n_trunc = sum(flags)
            msg = f"text: {n_trunc} of {len(texts)} cached text(s) were truncated to max_length={L} tokens"
            if on_overflow == "error":
                raise InputError(msg)
            warnings.warn(msg, TextTruncationWarning, stacklevel=2)
        return TextEmbeddings(emb, mask, flags)
