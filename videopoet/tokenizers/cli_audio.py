"""`videopoet audio ...` commands (audio tokenizer): train, refit-codebooks, reconstruct, encode, decode.

Code files are safetensors with one int32 tensor "codes" (L, T) (levels x frames, not flattened) and
metadata: sample_rate, hop_length, num_levels, codebook_size, num_samples (of the encoded input) and
source. `decode` checks them against the model. Input files may be any audio file or a video's audio
track; other sample rates are resampled, stereo / multichannel audio is mixed down to mono (ffmpeg's
standard downmix, as for training data) and samples beyond [-1, 1] are clipped — each printed as a note.
"""

from __future__ import annotations

from pathlib import Path

from videopoet.cli import command


def load_audio_tokenizer(model: Path | None = None):
    """The codec in `model` (ours, or an official Hugging Face EnCodec directory), or the shipped default."""
    from videopoet.assets import asset_dir
    from videopoet.tokenizers.audio import AudioTokenizer

    return AudioTokenizer.from_pretrained(model if model is not None else asset_dir("audio_tokenizer"))


def load_audio_file(path: Path, sample_rate: int, seconds: float = 0.0):
    """A file -> ((1, 1, S) tensor at `sample_rate`, notes). `seconds` > 0 keeps only the start."""
    import av

    from videopoet.data.media import probe, read_audio
    from videopoet.errors import InputError, MediaError
    from videopoet.tokenizers.audio import prepare_waveform

    info = probe(path)
    if not info.has_audio:
        raise MediaError(path, "has no audio track")
    with av.open(str(path)) as container:
        channels = int(container.streams.audio[0].codec_context.channels or 1)
    src_rate = int(info.sample_rate or sample_rate)
    # ffmpeg's standard downmix (as for training data), at the file's own rate; resampled below
    audio, sr = read_audio(path, sample_rate=src_rate, mono=True, end=seconds if seconds > 0 else None)
    if audio.shape[-1] == 0:
        raise InputError(f"{path}: the audio track is empty")
    x, notes = prepare_waveform(audio, sr, sample_rate, name=str(path))
    if channels > 1:
        notes.insert(0, f"{path}: {channels} channels mixed down to mono (ffmpeg's standard downmix)")
    return x[None], notes


@command("audio train")
def train_cmd(*, config: Path = Path("audio/cpu"), out: Path = Path("runs/audio_tokenizer"), resume: bool = True,
              overrides: list[str] | None = None) -> None:
    """Train the audio codec (EnCodec-style residual VQ) from a preset or YAML config.

    Writes OUT/checkpoints/step_N/ (atomic; the last few kept; each is also a loadable tokenizer
    directory), OUT/metrics.jsonl and, at the end, OUT/tokenizer/ for use with --model.

    Args:
        config: YAML config or preset name (audio/debug, audio/cpu, audio/videopoet)
        out: output folder for checkpoints, logs and the final tokenizer
        resume: continue from the latest checkpoint in OUT if there is one (exact resume)
    """
    from videopoet.tokenizers.audio_train import load_recipe, recipe_summary, train_audio_tokenizer

    recipe = load_recipe(config, overrides)
    print(recipe_summary(recipe), flush=True)
    export = train_audio_tokenizer(recipe, out, resume=resume, log=lambda s: print(s, flush=True))
    print(f"saved {export}")


@command("audio refit-codebooks")
def refit_cmd(*, out: Path, model: Path | None = None, config: Path = Path("audio/cpu"), batches: int = 500,
              iters: int = 25, beam: int = 0, seed: int = 7, threads: int = 1, overrides: list[str] | None = None) -> None:
    """Refit a codec's residual-VQ codebooks by k-means on many latents of its training data; the
    encoder and decoder are kept. Writes OUT (a tokenizer directory) with training.json.

    The codes change: an LM trained on the old codes must be given the new ones (`videopoet audio
    reencode`) and trained on them.

    Args:
        out: the tokenizer directory to write
        model: the codec to refit (default: the shipped one)
        config: the training preset whose data section says what to fit on (--set data.X=... changes it)
        batches: training batches of latents to fit on (the preset's batch size and segment length)
        iters: k-means iterations per level
        beam: the saved codec's RVQ search width (config beam_width; 0 keeps the model's)
        seed: seed of the batches drawn
        threads: torch CPU threads
    """
    from videopoet.tokenizers.audio_train import refit_codec

    refit_codec(out, model=model, config=config, overrides=overrides, batches=batches, iters=iters, beam=beam,
                seed=seed, threads=threads, log=lambda s: print(s, flush=True))
    print(f"saved {out}")


@command("audio reconstruct")
def reconstruct_cmd(*, input: Path, out: Path, model: Path | None = None, levels: int = 0, seconds: float = 0.0,
                    baseline: bool = True, visqol: bool = False) -> None:
    """Encode and decode an audio file (or a video's audio track), write OUT.wav, print metrics.

    Metrics: mel distance and multi-resolution STFT distance (lower is better), SI-SNR in dB (higher
    is better), optionally ViSQOL; with --baseline also for mu-law 8-bit PCM at the codec's bit rate.

    Args:
        input: an audio or video file
        out: output audio file (.wav)
        model: codec directory (ours or an official EnCodec directory; default: the shipped codec)
        levels: decode with only the first N residual levels (0 = all; fewer = lower bit rate)
        seconds: only the first S seconds of the input (0 = all)
        baseline: also score a mu-law 8-bit codec at the same bit rate on the same audio
        visqol: also compute ViSQOL (needs the optional visqol-python package)
    """
    import math

    import torch

    from videopoet.data.writers import write_audio
    from videopoet.errors import InputError
    from videopoet.eval.audio_metrics import all_metrics, mulaw_codec

    tok = load_audio_tokenizer(model)
    x, notes = load_audio_file(input, tok.sample_rate, seconds)
    for n in notes:
        print(f"note: {n}")
    if levels < 0 or levels > tok.num_levels:
        raise InputError(f"--levels must be in 0..{tok.num_levels}, got {levels}")
    use = levels or tok.num_levels
    codes = tok.encode(x)
    with torch.no_grad():
        y = tok.decode(codes[:, :use])
    ref = x[..., : y.shape[-1]]
    write_audio(out, y[0].numpy(), tok.sample_rate)
    bps = tok.config.frame_rate * use * math.log2(tok.codebook_size)
    print(f"{input}: {ref.shape[-1] / tok.sample_rate:.2f} s -> {codes.shape[-1]} frames x {use} levels "
          f"= {codes.shape[-1] * use} tokens ({bps / 1000:g} kbps); wrote {out}")
    rows = [("codec", all_metrics(ref, y, tok.sample_rate, with_visqol=visqol))]
    if baseline:
        b = mulaw_codec(ref, tok.sample_rate, bps, bits=8)
        rows.append((f"mu-law 8-bit @ {bps / 8:g} Hz", all_metrics(ref, b, tok.sample_rate, with_visqol=visqol)))
    for name, m in rows:
        print(f"{name:>24s}: " + "  ".join(
            f"{k}={'n/a (silent reference)' if math.isnan(v) else f'{v:.3f}'}" for k, v in m.items()))


@command("audio encode")
def encode_cmd(*, input: Path, out: Path, model: Path | None = None, seconds: float = 0.0) -> None:
    """Encode an audio file (or a video's audio track) to a code file (safetensors, codes (L, T)).

    Args:
        input: an audio or video file
        out: output code file (.safetensors)
        model: codec directory (default: the shipped codec)
        seconds: only the first S seconds of the input (0 = all)
    """
    import torch
    from safetensors.torch import save_file

    from videopoet.io_utils import atomic_path

    tok = load_audio_tokenizer(model)
    x, notes = load_audio_file(input, tok.sample_rate, seconds)
    for n in notes:
        print(f"note: {n}")
    codes = tok.encode(x)[0].to(torch.int32).contiguous()
    meta = {"sample_rate": str(tok.sample_rate), "hop_length": str(tok.hop_length),
            "num_levels": str(tok.num_levels), "codebook_size": str(tok.codebook_size),
            "num_samples": str(x.shape[-1]), "source": str(input)}
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        save_file({"codes": codes}, str(tmp), metadata=meta)
    print(f"{input}: codes {tuple(codes.shape)} (levels x frames) -> {out}")


@command("audio decode")
def decode_cmd(*, input: Path, out: Path, model: Path | None = None) -> None:
    """Decode a code file written by `videopoet audio encode` to audio.

    Args:
        input: code file (.safetensors with "codes" (L, T))
        out: output audio file (.wav)
        model: codec directory (default: the shipped codec); must match the code file
    """
    from safetensors import safe_open

    from videopoet.data.writers import write_audio
    from videopoet.errors import InputError, MediaError

    tok = load_audio_tokenizer(model)
    try:
        with safe_open(str(input), framework="pt") as f:
            meta = f.metadata() or {}
            codes = f.get_tensor("codes")
    except Exception as e:  # safetensors has its own error types
        raise MediaError(input, f"not a code file ({e})") from None
    for key, want in (("codebook_size", tok.codebook_size), ("sample_rate", tok.sample_rate),
                      ("hop_length", tok.hop_length)):
        if key in meta and int(meta[key]) != want:
            raise InputError(f"{input}: written by a codec with {key}={meta[key]}, this one has {want}")
    if codes.dim() == 2:
        codes = codes[None]
    y = tok.decode(codes.long())
    write_audio(out, y[0].numpy(), tok.sample_rate)
    print(f"{input}: {tuple(codes.shape[1:])} codes -> {y.shape[-1] / tok.sample_rate:.2f} s -> {out}")


@command("audio eval")
def eval_cmd(*, data: str = "shapes:24::single", model: Path | None = None, json: bool = False) -> None:
    """Reconstruction metrics of the audio codec over a data set, with baselines beside it.

    Prints log-mel L1 (1024-point window, hop 256, 64 mel bands, natural log), mel and
    multi-resolution STFT distances and SI-SNR for the codec, mu-law at the codec's bit rate and
    1 kHz / 4 kHz low-passes; on shapes data also tone identity and click timing (10 ms) read back.

    Args:
        data: shapes:N[:SEED[:single|multi]] (default seed 4242, never trained on), heldout (the
            audio corpus files the codec trainer holds out), or a folder / JSONL manifest of audio
        model: codec directory (default: the shipped cpu codec)
        json: print the full result as JSON instead of a table
    """
    from videopoet.eval.tokenizer_eval import run_and_print

    run_and_print(load_audio_tokenizer(model), data, audio=True, as_json=json)
