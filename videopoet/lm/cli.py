"""`videopoet lm ...`, `videopoet tokenize` and `videopoet audio reencode` commands."""

from __future__ import annotations

from pathlib import Path

from videopoet.cli import command


@command("tokenize")
def tokenize_cmd(*, data: str, out: Path, video_model: Path | None = None, audio_model: Path | None = None,
                 text_model: Path | None = None, frames: int = 17, size: int = 64, fps: float = 8.0, batch: int = 8,
                 part_size: int = 256, structure: bool = True, progress: bool = True) -> None:
    """Tokenize a data set once into token shards for LM training.

    Writes OUT/parts/*/ (int32 codes + int64 offsets per bucket, finished parts renamed into place),
    OUT/index.json, OUT/vocab.json and OUT/tokenizers/. Rerun the same command after an interruption:
    finished parts are kept and the rest is redone. Bad media are skipped, counted and listed. Under
    torchrun or SLURM every process takes a disjoint share of the items.

    Args:
        data: shapes:N[:SEED] (the shapes benchmark) or a folder / JSONL manifest of media
        out: the shard directory to write
        video_model: video tokenizer directory (default: the shipped one)
        audio_model: audio codec directory (default: the shipped one)
        text_model: SentencePiece directory (token mode; default: the shipped one), or a local transformers text encoder directory such as T5 (embedding mode: float16 embeddings are stored and the LM's projection takes the encoder's width)
        frames: frames per clip (images are 1-frame items)
        size: square frame size
        fps: frame rate clips are sampled at
        batch: clips encoded per tokenizer call
        part_size: items per part (the unit kept on resume)
        structure: also store structure codes (flow + depth/edges) for stylization
        progress: show a progress bar
    """
    from videopoet.data.tokenize import tokenize

    rep = tokenize(data, out, video_model=video_model, audio_model=audio_model, text_model=text_model,
                   frames=frames, size=size, fps=fps, batch=batch, part_size=part_size, structure=structure,
                   progress=progress)
    print(rep.summary())
    print(f"shards: {out}")


@command("audio reencode")
def audio_reencode_cmd(*, shards: Path, out: Path, model: Path | None = None, batch: int = 16,
                       progress: bool = True) -> None:
    """Copy LM token shards with their audio codes made again by another audio codec.

    The visual, structure and text codes and the metadata are copied; every item's sound is made
    again from its source (a shapes clip from its seed and number, a media file from its path and
    clip start) and encoded by MODEL. For a new audio codec this costs an audio pass instead
    of a full tokenization. Items whose sound cannot be made again are skipped, counted and listed.
    Rerun the same command after an interruption: finished parts are kept.

    Args:
        shards: the shard directory to copy (from `videopoet tokenize`)
        out: the new shard directory
        model: audio codec directory (default: the shipped one)
        batch: clips encoded per codec call
        progress: show a progress bar
    """
    from videopoet.data.tokenize import reencode_audio

    rep = reencode_audio(shards, out, audio_model=model, batch=batch, progress=progress)
    print(rep.summary())
    print(f"shards: {out}")


@command("lm train")
def train_cmd(*, config: Path, resume: bool = False, init_from: Path | None = None,
              overrides: list[str] | None = None) -> None:
    """Pretrain the prefix LM on token shards (a task mixture, length-bucketed batches, Fabric).

    Writes OUT/checkpoints/step_N/ (atomic; the last few kept), OUT/metrics.csv, TensorBoard logs
    and OUT/model/ (config.json, model.safetensors, vocab.json) at the end.

    Args:
        config: YAML config or preset name (train/debug, train/cpu)
        resume: continue from the newest checkpoint in the run's output folder (exact resume)
        init_from: start from this LM or checkpoint directory's weights (task adaptation)
    """
    from videopoet.lm.pretrain import train

    out = train(config, overrides, resume=resume, init_from=init_from)
    print(f"saved {out}")
