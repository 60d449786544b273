"""Training and validation of the learned probe (videopoet/eval/probe.py) on ground-truth shapes clips.

Training (`train_probe`) uses clips of generator seed 0 only (1-4 objects, so single- and multi-object
scenes; never an evaluation seed: `EVAL_SEEDS`), labelled with their ground truth:
- the clips themselves, degraded at random (`degrade_video`: colour gains and small hue turns,
  blur, down/up-sampling, JPEG-like 8x8 DCT quantization with chroma subsampling, noise, flicker,
  posterization, truncation to fewer frames) -- what tokenizers and generators do to pictures;
- the shipped video tokenizer's round trips (encode then decode) of the first `round_trips` clips,
  with the same ground truth, lightly degraded on top;
- for sound: the clips' audio (gain, noise, mu-law, a small pitch shift, cropping, a stray sine) and
  the shipped audio codec's round trips of the first `round_trips` clips.
Each step draws one query per clip: a colour in the clip (70%) or one it lacks (chosen in proportion
to its stray membership, so the rims a codec tints are the usual negatives). Losses: binary
cross-entropy for presence and for each tone, cross-entropy for shape, size, direction (only for
colours held by one object). AdamW with a cosine schedule over the time (or step) budget.

Validation (`validate_probe`) reads held-out clips (`shapes:N:SEED[:single|multi]`) and the shipped
tokenizers' round trips of them, and scores every attribute against the ground truth, for the learned
probe and the hand-written one (readback.py) side by side; the gate is 95% per attribute on both.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from videopoet.data import shapes as S
from videopoet.errors import InputError
from videopoet.eval.probe import (
    COLOURS,
    DIRECTIONS,
    SHAPES,
    SIZES,
    Probe,
    ProbeConfig,
    audio_input,
    band_power,
    colour_index,
    video_input,
)
from videopoet.eval.readback import TONES

EVAL_SEEDS = (7070, 7171, 4242, 4243, 5151, 5152)  # eval prompts, tokenizer eval, tokenizer selection
TRAIN_DATA_SEED = 0
TRAIN_OBJECTS = (1, 4)
GATE = 0.95
ATTRIBUTES = ("colour", "colour_exact", "shape", "size", "direction", "tone", "clicks")
CLICK_TOLERANCE_S = 0.05  # as the v2a score (videopoet.eval.tasks_eval)


# --------------------------------------------------------------------------------------- data
def _labels(attributes: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(6,) presence, (6, 3) shape/size/direction indices (-1: absent or shared colour), (24,) tones."""
    present = np.zeros(len(COLOURS), np.float32)
    attr = np.full((len(COLOURS), 3), -1, np.int64)
    count = np.zeros(len(COLOURS), int)
    tones = np.zeros(len(TONES), np.float32)
    for o in attributes["objects"]:
        k = COLOURS.index(o["colour"])
        present[k] = 1.0
        count[k] += 1
        attr[k] = (SHAPES.index(o["shape"]), SIZES.index(o["size"]), DIRECTIONS.index(o["direction"]))
        tones[TONES.index((o["shape"], o["colour"]))] = 1.0
    attr[count != 1] = -1
    return present, attr, tones


def render_pool(num: int, frames: int, *, size: int = 64, sample_rate: int = 16000) -> dict[str, np.ndarray]:
    """Clips 0..num-1 of the training generator: first `frames` frames (N, F, S, S, 3) uint8, audio
    (N, samples) float32 and labels (see `_labels`)."""
    cfg = S.ShapesConfig(size=size, sample_rate=sample_rate, min_objects=TRAIN_OBJECTS[0], max_objects=TRAIN_OBJECTS[1])
    video = np.empty((num, frames, size, size, 3), np.uint8)
    audio = np.empty((num, cfg.num_samples), np.float32)
    present = np.empty((num, len(COLOURS)), np.float32)
    attr = np.empty((num, len(COLOURS), 3), np.int64)
    tones = np.empty((num, len(TONES)), np.float32)
    for i in range(num):
        c = S.make_clip(cfg, TRAIN_DATA_SEED, i)
        video[i] = c.video[:frames]
        audio[i] = c.audio[0]
        present[i], attr[i], tones[i] = _labels(c.attributes)
    return {"video": video, "audio": audio, "present": present, "attr": attr, "tones": tones}


def _file_digest(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()[:12]


def _cached(cache: Path | None, key: str, make: Callable[[], np.ndarray]) -> np.ndarray:
    """`make()`, or its copy saved in `cache` under `key` (round trips are deterministic)."""
    if cache is None:
        return make()
    path = Path(cache) / f"{key}.npy"
    if path.is_file():
        return np.load(path)
    out = make()
    from videopoet.io_utils import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, out)
    return out


@torch.no_grad()
def video_round_trips(videos: np.ndarray, tok, *, batch: int = 4) -> np.ndarray:
    """uint8 (N, T, H, W, 3) -> the tokenizer's encode + decode of each, uint8, same shape."""
    out = np.empty_like(videos)
    for i in range(0, len(videos), batch):
        x = torch.from_numpy(videos[i : i + batch]).permute(0, 4, 1, 2, 3).float().div(127.5).sub(1)
        y = tok.decode(tok.encode(x))[:, :, : x.shape[2]].clamp(-1, 1)
        out[i : i + batch] = ((y.permute(0, 2, 3, 4, 1).numpy() + 1) * 127.5).round().astype(np.uint8)
    return out


@torch.no_grad()
def audio_round_trips(audios: np.ndarray, codec) -> np.ndarray:
    """float32 (N, S) -> the codec's encode + decode of each, (N, S) (zero-padded or cut to S)."""
    out = np.zeros_like(audios)
    for i, a in enumerate(audios):
        y = codec.decode(codec.encode(torch.from_numpy(np.clip(a, -1, 1)).float()[None, None]))[0, 0].numpy()
        n = min(len(y), audios.shape[1])
        out[i, :n] = y[:n]
    return out


def shipped_round_trips(videos: np.ndarray | None, audios: np.ndarray | None, *, cache: Path | None = None,
                        key: str = "") -> tuple[np.ndarray | None, np.ndarray | None]:
    """Round trips through the package's shipped video tokenizer and audio codec (cached under
    `cache` by `key` and the weights' digest when a cache folder is given)."""
    from videopoet.assets import asset_dir

    rv = ra = None
    if videos is not None:
        from videopoet.tokenizers.cli_video import load_video_tokenizer

        d = _file_digest(asset_dir("video_tokenizer") / "model.safetensors")
        rv = _cached(cache, f"video_{d}_{key}_{videos.shape[0]}x{videos.shape[1]}",
                     lambda: video_round_trips(videos, load_video_tokenizer().eval()))
    if audios is not None:
        from videopoet.tokenizers.cli_audio import load_audio_tokenizer

        d = _file_digest(asset_dir("audio_tokenizer") / "model.safetensors")
        ra = _cached(cache, f"audio_{d}_{key}_{audios.shape[0]}x{audios.shape[1]}",
                     lambda: audio_round_trips(audios, load_audio_tokenizer().eval()))
    return rv, ra


# --------------------------------------------------------------------------------------- degradations
def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, C, H, W)."""
    r = max(1, math.ceil(2.5 * sigma))
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    n, c, h, w = x.shape
    y = F.pad(x.reshape(n * c, 1, h, w), (r, r, r, r), mode="replicate")
    y = F.conv2d(F.conv2d(y, k.view(1, 1, 1, -1)), k.view(1, 1, -1, 1))
    return y.reshape(n, c, h, w)


def _dct_matrix(n: int = 8) -> torch.Tensor:
    k = torch.arange(n, dtype=torch.float32)
    d = torch.cos(math.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d  # orthonormal: d @ d.T = I


_DCT = _dct_matrix()
_RAMP = 1.0 + (torch.arange(8)[:, None] + torch.arange(8)[None, :]).float()  # coarser at high frequency


def _jpeg_like(x: torch.Tensor, step: float, chroma_subsample: bool) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 1], H and W multiples of 8 -> YCbCr, optional 2x chroma
    subsampling, 8x8 DCT coefficients rounded to `step` x a frequency ramp (x2 on chroma), back."""
    m = torch.tensor([[0.299, 0.587, 0.114], [-0.1687, -0.3313, 0.5], [0.5, -0.4187, -0.0813]])
    y = torch.einsum("ij,njhw->nihw", m, x)
    if chroma_subsample:
        c = F.avg_pool2d(y[:, 1:], 2)
        y = torch.cat([y[:, :1], F.interpolate(c, scale_factor=2, mode="bilinear", align_corners=False)], 1)
    n, _, h, w = y.shape
    blocks = y.reshape(n, 3, h // 8, 8, w // 8, 8).permute(0, 1, 2, 4, 3, 5)  # (n, 3, h/8, w/8, 8, 8)
    coef = _DCT @ blocks @ _DCT.T
    q = step * _RAMP * torch.tensor([1.0, 2.0, 2.0]).view(1, 3, 1, 1, 1, 1)
    blocks = _DCT.T @ (torch.round(coef / q) * q) @ _DCT
    y = blocks.permute(0, 1, 2, 4, 3, 5).reshape(n, 3, h, w)
    return torch.einsum("ij,njhw->nihw", torch.linalg.inv(m), y)


def degrade_video(x: torch.Tensor, rng: np.random.Generator, strength: float = 1.0) -> tuple[torch.Tensor, int]:
    """One clip (3, F, H, W) RGB in [0, 1] -> (a degraded copy, frames kept valid). Each
    degradation is applied with probability x `strength`."""
    def p(prob: float) -> bool:
        return rng.random() < prob * strength

    _, f, h, w = x.shape
    y = x.transpose(0, 1).clone()  # (F, 3, H, W)
    if p(0.5):  # colour: per-channel gains, brightness and contrast, saturation, a small hue turn
        gains = torch.from_numpy(rng.uniform(0.92, 1.08, 3)).float().view(1, 3, 1, 1)
        y = (y * gains - 0.5) * rng.uniform(0.85, 1.15) + 0.5 + rng.uniform(-0.06, 0.06)
        lum = (y * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        y = lum + (y - lum) * rng.uniform(0.75, 1.15)
        a = math.radians(rng.uniform(-8, 8))  # rotate chroma around the grey axis
        k = torch.full((3,), 1 / math.sqrt(3))
        kx = torch.tensor([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
        rot = torch.eye(3) + math.sin(a) * kx + (1 - math.cos(a)) * kx @ kx  # Rodrigues
        y = torch.einsum("ij,fjhw->fihw", rot, y)
    if p(0.4):
        y = _blur(y, rng.uniform(0.3, 1.3))
    if p(0.3):  # down- and up-sampling
        s = rng.uniform(1.5, 4.0)
        small = F.interpolate(y, size=(max(8, round(h / s)), max(8, round(w / s))), mode="bilinear", antialias=True,
                              align_corners=False)
        y = F.interpolate(small, size=(h, w), mode=str(rng.choice(["bilinear", "bicubic"])), align_corners=False)
    if p(0.3) and h % 8 == 0 and w % 8 == 0:
        y = _jpeg_like(y.clamp(0, 1), rng.uniform(0.01, 0.06), bool(rng.random() < 0.5))
    if p(0.4):
        y = y + torch.randn_like(y) * rng.uniform(0.005, 0.04)
    if p(0.2):  # flicker
        y = y + torch.from_numpy(rng.uniform(-0.03, 0.03, (f, 1, 1, 1))).float()
    if p(0.15):  # posterize
        levels = float(2 ** rng.integers(4, 7))
        y = torch.round(y.clamp(0, 1) * levels) / levels
    valid = f
    if p(0.1):
        valid = int(rng.integers(1, f))
    return y.clamp(0, 1).transpose(0, 1), valid


def degrade_audio(a: np.ndarray, rng: np.random.Generator, sample_rate: int, strength: float = 1.0) -> np.ndarray:
    """(S,) float -> a degraded copy: gain, a small pitch shift, cropping, a stray sine, noise, mu-law."""
    def p(prob: float) -> bool:
        return rng.random() < prob * strength

    y = np.asarray(a, np.float64) * rng.uniform(0.25, 1.6)
    n = len(y)
    if p(0.3):  # resample by up to 1% (pitch moves, within half a band)
        r = rng.uniform(0.99, 1.01)
        y = np.interp(np.arange(n) * r, np.arange(n), y, right=0.0)
    if p(0.3):
        m = int(n * rng.uniform(0.4, 1.0))
        s0 = int(rng.integers(0, n - m + 1))
        y = y[s0 : s0 + m]
    if p(0.2):  # a weak sine between two tones
        k = rng.uniform(-4, 28)
        fr = 220.0 * 2 ** ((math.floor(k) + 0.5) / 8)
        y = y + rng.uniform(0.01, 0.05) * np.sin(2 * math.pi * fr * np.arange(len(y)) / sample_rate + rng.uniform(0, 6.3))
    if p(0.4):
        y = y + rng.standard_normal(len(y)) * rng.uniform(0.001, 0.02)
    y = np.clip(y, -1, 1)
    if p(0.3):  # mu-law, 8 bits
        mu = 255.0
        c = np.round(np.sign(y) * np.log1p(mu * np.abs(y)) / math.log1p(mu) * 127.5) / 127.5
        y = np.sign(c) * ((1 + mu) ** np.abs(c) - 1) / mu
    return y.astype(np.float32)


# --------------------------------------------------------------------------------------- training
def _video_batch(pool: dict, rt: np.ndarray | None, batch: int, rng: np.random.Generator, config: ProbeConfig):
    n = len(pool["video"])
    xs, valids, clip = [], [], []
    for _ in range(batch):
        from_rt = rt is not None and rng.random() < 0.5  # half the draws are round trips
        i = int(rng.integers(0, len(rt) if from_rt else n))
        src = rt[i] if from_rt else pool["video"][i]
        x = torch.from_numpy(src).permute(3, 0, 1, 2).float().div(255.0)  # (3, F, S, S)
        x, v = degrade_video(x, rng, 0.5 if from_rt else 1.0)
        xs.append(x)
        valids.append(v)
        clip.append(i)
    x = torch.stack(xs)  # (B, 3, F, S, S)
    valid = (torch.arange(config.frames)[None] < torch.tensor(valids)[:, None]).float()
    idx, weight = colour_index(x)  # (B, F, S, S) each
    weight = weight * valid[:, :, None, None]
    mass = torch.zeros(batch, len(COLOURS)).scatter_add_(1, idx.flatten(1), weight.flatten(1)).numpy()  # (B, 6)
    colour, present, attr = [], [], []
    for b, i in enumerate(clip):
        pres = pool["present"][i]
        absent = np.flatnonzero(pres == 0)
        if rng.random() < 0.7 or not len(absent):
            k = int(rng.choice(np.flatnonzero(pres)))
        else:
            w = mass[b, absent] + 1.0
            k = int(rng.choice(absent, p=w / w.sum()))
        colour.append(k)
        present.append(pres[k])
        a = pool["attr"][i, k].copy()
        if valids[b] < 2:
            a[2] = -1  # one frame: no direction
        attr.append(a)
    sel = weight * (idx == torch.tensor(colour)[:, None, None, None])  # (B, F, S, S)
    return video_input(x, sel, valid), torch.tensor(present), torch.from_numpy(np.stack(attr))


def _audio_batch(pool: dict, rt: np.ndarray | None, batch: int, rng: np.random.Generator, config: ProbeConfig,
                 sample_rate: int):
    n = len(pool["audio"])
    feats, targets = [], []
    for _ in range(batch):
        i = int(rng.integers(0, n))
        if rt is not None and rng.random() < 0.5:
            i = int(rng.integers(0, len(rt)))
            a = degrade_audio(rt[i], rng, sample_rate, 0.5)
        else:
            a = degrade_audio(pool["audio"][i], rng, sample_rate)
        feats.append(band_power(a, sample_rate, config))
        targets.append(pool["tones"][i])
    return audio_input(torch.from_numpy(np.stack(feats)).float()), torch.from_numpy(np.stack(targets))


def video_losses(out, present: torch.Tensor, attr: torch.Tensor) -> dict[str, torch.Tensor]:
    """Presence (binary cross-entropy) and shape / size / direction (cross-entropy where known)."""
    losses = {"presence": F.binary_cross_entropy_with_logits(out.presence, present)}
    for j, (name, logits) in enumerate((("shape", out.shape), ("size", out.size), ("direction", out.direction))):
        known = attr[:, j] >= 0
        losses[name] = F.cross_entropy(logits[known], attr[known, j]) if known.any() else logits.sum() * 0
    return losses


def train_probe(out_dir: str | Path, *, clips: int = 2000, round_trips: int = 300, seed: int = 0, threads: int = 1,
                minutes: float = 8.0, max_steps: int | None = None, batch: int = 32, lr: float = 2e-3,
                config: ProbeConfig | None = None, cache: str | Path | None = None, command: str | None = None,
                log: Callable[[str], None] | None = None, audio_round_trips: int | None = None) -> dict[str, Any]:
    """Train a probe on clips 0..clips-1 of shapes generator seed 0 (1-4 objects) and the shipped
    tokenizers' round trips of the first `round_trips` of them (of the first `audio_round_trips`
    through the audio codec; None: as many); save it (float16) in `out_dir` with training.json.
    Stops after `minutes` of training steps (data preparation not counted) or `max_steps`. `seed` seeds initialization, degradations and sampling (the data is always seed 0)."""
    log = log or (lambda m: print(m, file=sys.stderr))
    audio_round_trips = round_trips if audio_round_trips is None else audio_round_trips
    if clips < 1 or not 0 <= round_trips <= clips or not 0 <= audio_round_trips <= clips:
        raise InputError(f"train-probe: need clips >= 1 and 0 <= round_trips, audio_round_trips <= clips, "
                         f"got {clips}, {round_trips}, {audio_round_trips}")
    if minutes <= 0 and max_steps is None:
        raise InputError("train-probe: minutes must be > 0 (or give max_steps)")
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 1])
    config = config or ProbeConfig()
    sr = 16000
    t0 = time.time()
    pool = render_pool(clips, config.frames, size=config.size, sample_rate=sr)
    t_render = time.time() - t0
    rt_v = rt_a = None
    key = f"train{TRAIN_DATA_SEED}_{TRAIN_OBJECTS[0]}-{TRAIN_OBJECTS[1]}"
    if round_trips or audio_round_trips:
        rt_v, rt_a = shipped_round_trips(pool["video"][:round_trips] if round_trips else None,
                                         pool["audio"][:audio_round_trips] if audio_round_trips else None,
                                         cache=Path(cache) if cache else None, key=key)
    t_prep = time.time() - t0
    log(f"train-probe: {clips} clips rendered in {t_render:.0f} s, {round_trips} video / {audio_round_trips} audio round trips; "
        f"data ready in {t_prep:.0f} s")

    model = Probe(config).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    budget = minutes * 60.0
    warmup = 50 if max_steps is None else max(1, min(50, max_steps // 10))  # steps of linear warm-up
    t1 = time.time()
    step, history = 0, []
    run: dict[str, float] | None = None  # running means of the losses
    while True:
        elapsed = time.time() - t1
        progress = step / max_steps if max_steps is not None else elapsed / budget
        if progress >= 1.0 or (max_steps is None and elapsed >= budget):
            break
        warm = min(1.0, (step + 1) / warmup)
        for g in opt.param_groups:
            g["lr"] = lr * warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))
        xv, present, attr = _video_batch(pool, rt_v, batch, rng, config)
        parts = video_losses(model.video(xv), present, attr)
        lv = sum(parts.values())
        xa, ta = _audio_batch(pool, rt_a, max(8, batch // 2), rng, config, sr)
        la = F.binary_cross_entropy_with_logits(model.audio(xa), ta)
        opt.zero_grad(set_to_none=True)
        (lv + la).backward()
        opt.step()
        step += 1
        now = {"video_loss": lv.item(), "audio_loss": la.item(), **{k: v.item() for k, v in parts.items()}}
        run = now if run is None else {k: 0.95 * run[k] + 0.05 * now[k] for k in now}
        if step % 50 == 0 or step == 1:
            history.append({"step": step, "seconds": round(time.time() - t1, 1), **{k: round(v, 4) for k, v in run.items()}})
            log(f"train-probe: step {step}  " + "  ".join(f"{k} {v:.3f}" for k, v in run.items())
                + f"  ({time.time() - t1:.0f} s)")
    train_s = time.time() - t1
    if run is not None and (not history or history[-1]["step"] != step):
        history.append({"step": step, "seconds": round(train_s, 1), **{k: round(v, 4) for k, v in run.items()}})
    model.eval()
    out = Path(out_dir)
    model.save_pretrained(out, dtype=torch.float16)
    info = {
        "what": "the learned shapes probe (videopoet/eval/probe.py): colour/shape/size/direction per object, tones",
        "command": command,
        "data": {"generator_seed": TRAIN_DATA_SEED, "clips": clips, "objects": list(TRAIN_OBJECTS),
                 "frames_read": config.frames, "round_trips": round_trips, "audio_round_trips": audio_round_trips,
                 "round_trip_models": "the shipped video tokenizer and audio codec (videopoet/assets)",
                 "round_trip_cache": str(cache) if cache else None,
                 "never_used_seeds": list(EVAL_SEEDS)},
        "seed": seed, "threads": threads, "batch": batch, "lr": lr, "steps": step,
        "seconds": {"data": round(t_prep, 1), "train": round(train_s, 1), "total": round(time.time() - t0, 1)},
        "final_running_loss": run,
        "history": history,
        "weights_dtype": "float16",
    }
    from videopoet.config import save_json

    save_json(info, out / "training.json")
    return info


# --------------------------------------------------------------------------------------- validation
def _clip_set(spec: str) -> tuple[list[S.ShapesClip], str]:
    from videopoet.eval.tokenizer_eval import EVAL_SEED, parse_shapes_spec

    n, seed, lo, hi = parse_shapes_spec(spec, EVAL_SEED)
    if seed == TRAIN_DATA_SEED:
        raise InputError(f"--data {spec}: seed {seed} is the probe's training data; validate on another seed")
    cfg = S.ShapesConfig(min_objects=lo, max_objects=hi)
    return [S.make_clip(cfg, seed, i) for i in range(n)], f"{n} shapes clips (seed {seed}, {lo}-{hi} objects)"


def score_readers(read_objects, read_tones, videos, audios, attributes, *, spurious_colours=None,
                  sample_rate: int = 16000) -> dict[str, float]:
    """Accuracy of one pair of readers against the ground truth, per attribute: colour (the
    object's colour read), colour_exact (and no colour the clip lacks), shape, size, direction (per
    object with a colour of its own), tone (per distinct tone: among the N strongest), clicks (per
    bounce: a click within 50 ms, hand-written detector)."""
    from videopoet.eval.readback import _truth

    res: dict[str, list[bool]] = {a: [] for a in ATTRIBUTES}
    for v, a, attrs in zip(videos, audios, attributes, strict=True):
        truth = _truth(attrs)
        got = read_objects(v)
        colours = set(spurious_colours(v)) if spurious_colours is not None else set(got)
        clean = not (colours - {o["colour"] for o in attrs["objects"]})
        for c, t in truth.items():
            g = got.get(c)
            res["colour"].append(g is not None)
            res["colour_exact"].append(g is not None and clean)
            for f in ("shape", "size", "direction"):
                res[f].append(g is not None and getattr(g, f) == getattr(t, f))
        tones = {(o["shape"], o["colour"]) for o in attrs["objects"]}
        read = read_tones(a, sample_rate, len(tones))
        res["tone"] += [t in read for t in tones]
        clicks = S.click_times(a, sample_rate)
        for tb in sorted(t for o in attrs["objects"] for t in o["bounce_times"]):
            res["clicks"].append(bool(len(clicks)) and float(np.min(np.abs(clicks - tb))) <= CLICK_TOLERANCE_S)
    out = {k: float(np.mean(v)) if v else math.nan for k, v in res.items()}
    out["objects"] = float(len(res["shape"]))
    out["tones"] = float(len(res["tone"]))
    out["bounces"] = float(len(res["clicks"]))
    return out


def validate_probe(probe: Probe, spec: str = "shapes:40:4242:single", *, round_trip: bool = True, hand: bool = True,
                   cache: str | Path | None = None) -> dict[str, Any]:
    """The learned probe (and the hand-written one) on held-out ground truth and on the shipped
    tokenizers' round trips of it: {"learned"/"hand": {"original"/"round_trip": {attribute: accuracy}},
    "gate": {attribute: passes on both}, "passed": every gated attribute passes}. Clicks use the
    hand-written detector in both columns."""
    from videopoet.eval import readback
    from videopoet.eval.tasks_eval import _persistent_colours

    clips, description = _clip_set(spec)
    attrs = [c.attributes for c in clips]
    sets = {"original": (np.stack([c.video for c in clips]), np.stack([c.audio[0] for c in clips]))}
    if round_trip:
        sets["round_trip"] = shipped_round_trips(*sets["original"], cache=Path(cache) if cache else None,
                                                 key=spec.replace(":", "_"))
    readers = {"learned": (probe.read_objects, probe.read_tones, None)}
    if hand:
        readers["hand"] = (readback.read_objects, readback.read_tones, _persistent_colours)
    out: dict[str, Any] = {"data": spec, "description": description, "clips": len(clips), "threshold": GATE}
    for name, (ro, rt, spur) in readers.items():
        out[name] = {s: score_readers(ro, rt, v, a, attrs, spurious_colours=spur) for s, (v, a) in sets.items()}
    out["gate"] = {a: all(out["learned"][s][a] >= GATE for s in sets) for a in ATTRIBUTES}
    out["passed"] = all(out["gate"].values())
    return out


def format_validation(results: list[dict[str, Any]]) -> str:
    """A plain-text table: one row per attribute, learned and hand-written columns per data set."""
    lines = []
    for r in results:
        sets = [s for s in ("original", "round_trip") if s in r["learned"]]
        cols = [(p, s) for p in ("learned", "hand") if p in r for s in sets]
        lines.append(f"{r['data']}: {r['description']}; {int(r['learned']['original']['objects'])} objects, "
                     f"{int(r['learned']['original']['tones'])} tones, {int(r['learned']['original']['bounces'])} bounces")
        head = f"{'attribute':<13}" + "".join(f"{p + ' ' + s.replace('_', '-'):>22}" for p, s in cols) + f"{'gate':>7}"
        lines.append(head)
        for a in ATTRIBUTES:
            cells = "".join(f"{r[p][s][a]:>22.3f}" for p, s in cols)
            lines.append(f"{a:<13}{cells}{'pass' if r['gate'][a] else 'FAIL':>7}")
        lines.append(f"gate (>= {GATE:.0%} on every attribute, learned probe, all data): "
                     f"{'passed' if r['passed'] else 'not passed'}")
        lines.append("")
    return "\n".join(lines).rstrip()


def write_validation(directory: str | Path, results: list[dict[str, Any]]) -> None:
    """Add the validation figures to the probe directory's training.json."""
    from videopoet.config import load_json, save_json

    path = Path(directory) / "training.json"
    info = load_json(path) if path.is_file() else {}
    info["validation"] = {r["data"]: {k: r[k] for k in ("description", "learned", "hand", "gate", "passed") if k in r}
                          for r in results}
    save_json(json.loads(json.dumps(info)), path)
