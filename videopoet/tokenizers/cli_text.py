"""`videopoet text ...` commands (text tokenizers): train-spm, encode."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from videopoet.cli import command


def _read_captions(path: Path) -> list[str]:
    """Captions from a .txt file (one per line) or a JSONL manifest (a "caption" key per line)."""
    import json

    from videopoet.errors import InputError, MediaError

    if not path.is_file():
        raise MediaError(path, "captions file not found")
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if path.suffix.lower() in (".jsonl", ".json"):
        out = []
        for i, ln in enumerate(lines, 1):
            try:
                rec = json.loads(ln)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{i}: not JSON ({e})") from None
            if isinstance(rec, dict) and isinstance(rec.get("caption"), str):
                out.append(rec["caption"])
        return out
    return lines


@command("text train-spm")
def train_spm_cmd(*, out: Path, captions: Path | None = None, shapes: int = 0, shapes_seed: int = 0,
                  vocab_size: int = 256, max_length: int = 64,
                  model_type: Literal["bpe", "unigram", "char", "word"] = "bpe") -> None:
    """Train a SentencePiece text tokenizer on captions (token mode, the offline default).

    Writes OUT/spm.model and OUT/config.json. The LM places ids in its text range. Prints the
    longest caption in tokens and how many captions max_length would truncate.

    Args:
        out: output folder
        captions: a .txt file (one caption per line) or a JSONL manifest with "caption" keys
        shapes: also use the captions of this many shapes-benchmark clips
        shapes_seed: seed of the shapes clips
        vocab_size: target vocabulary size (may come out smaller for a tiny corpus)
        max_length: maximum tokens per caption (longer ones are truncated, with a warning)
        model_type: SentencePiece model type
    """
    from videopoet.errors import InputError
    from videopoet.tokenizers.text import SentencePieceConfig, SentencePieceTextTokenizer

    texts = _read_captions(captions) if captions is not None else []
    if shapes > 0:
        from videopoet.data.shapes import ShapesConfig, make_audio

        cfg = ShapesConfig(size=32)
        texts += [make_audio(cfg, shapes_seed, i)[1] for i in range(shapes)]
    if not texts:
        raise InputError("no captions: give --captions FILE and/or --shapes N")
    tok = SentencePieceTextTokenizer.train(texts, SentencePieceConfig(vocab_size, max_length, model_type))
    tok.save_pretrained(out)
    lengths = [len(tok.sp.encode(t)) for t in texts]
    over = sum(n > max_length for n in lengths)
    print(f"trained on {len(texts)} captions: vocab {tok.vocab_size}, tokens per caption mean "
          f"{sum(lengths) / len(lengths):.1f}, max {max(lengths)}; {over} would be truncated at "
          f"max_length={max_length}; saved {out}")


@command("text encode")
def encode_cmd(text: str, /, *, model: Path | None = None) -> None:
    """Print the SentencePiece ids and pieces of TEXT (warns when it is truncated).

    Args:
        text: the text to tokenize
        model: SentencePiece tokenizer directory (default: the shipped one, trained on shapes captions)
    """
    from videopoet.tokenizers.text import SentencePieceTextTokenizer, default_text_tokenizer

    tok = SentencePieceTextTokenizer.from_pretrained(model) if model is not None else default_text_tokenizer()
    out = tok.encode(text)
    ids = out.ids[0][out.mask[0]].tolist()
    print(f"{len(ids)} tokens{' (truncated)' if out.truncated[0] else ''}: {ids}")
    print(" ".join(tok.sp.id_to_piece(i) for i in ids))
