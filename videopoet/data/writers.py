"""Media writers: mp4/mov/mkv (H.264 + AAC), webm (VP9 + Opus), gif/webp (Pillow), wav, images and
PNG contact sheets.

Writing is atomic (temp file + rename). H.264 yuv420p needs even sizes, so odd ones are padded by
repeating the last row / column. Frames are uint8 (T, H, W, 3); audio float32 (C, S) in [-1, 1],
checked by the same validators as the readers in `media.py`.
"""

from __future__ import annotations

import wave
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from videopoet.data.media import MAX_SIDE, _check_audio, _check_frames, resample_audio
from videopoet.errors import InputError, MediaError
from videopoet.io_utils import atomic_path


def _even_pad(frames: np.ndarray) -> np.ndarray:
    """Pad (T, H, W, 3) to even H and W by repeating the last row / column (H.264 yuv420p needs even)."""
    t, h, w, _ = frames.shape
    ph, pw = h % 2, w % 2
    if ph or pw:
        frames = np.pad(frames, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
    return frames


def _rate(fps: float) -> Fraction:
    if not (fps and 0 < float(fps) <= 1000):
        raise InputError(f"fps: expected a rate in (0, 1000], got {fps}")
    return Fraction(float(fps)).limit_denominator(1001)


def write_video(
    path: str | Path,
    frames: np.ndarray,
    fps: float,
    *,
    audio: np.ndarray | None = None,
    sample_rate: int | None = None,
) -> Path:
    """Write uint8 (T, H, W, 3) frames. The extension picks the format: .mp4/.mov/.mkv (H.264 yuv420p,
    + AAC audio), .webm (VP9, + Opus audio), .gif and .webp (Pillow, no audio). Returns the path."""
    path = Path(path)
    frames = _check_frames(frames)
    ext = path.suffix.lower()
    if ext == ".gif":
        if audio is not None:
            raise InputError(f"{path}: GIF cannot hold audio")
        return write_gif(path, frames, fps)
    if ext == ".webp":
        if audio is not None:
            raise InputError(f"{path}: WebP cannot hold audio")
        return _write_pillow_animation(path, frames, fps, "WEBP")
    codecs = {".mp4": ("libx264", "aac"), ".mov": ("libx264", "aac"), ".mkv": ("libx264", "aac"),
              ".m4v": ("libx264", "aac"), ".webm": ("libvpx-vp9", "libopus")}  # fmt: skip
    if ext not in codecs:
        raise InputError(
            f"{path}: unsupported video extension {ext!r} (use .mp4, .webm, .mkv, .mov, .gif or .webp)"
        )
    rate = _rate(fps)
    if audio is not None:
        audio = _check_audio(audio)
        if sample_rate is None or not (1000 <= int(sample_rate) <= 384000):
            raise InputError(f"sample_rate: expected 1000..384000 Hz with audio, got {sample_rate}")
        if audio.shape[0] > 2:
            audio = audio.mean(axis=0, keepdims=True)
        if ext == ".webm" and int(sample_rate) not in (8000, 12000, 16000, 24000, 48000):
            audio = resample_audio(audio, int(sample_rate), 48000)
            sample_rate = 48000
    vcodec, acodec = codecs[ext]
    frames = _even_pad(frames) if vcodec == "libx264" else frames
    import av

    try:
        with atomic_path(path) as tmp:
            fmt = {".mkv": "matroska", ".webm": "webm", ".mov": "mov"}.get(ext, "mp4")
            opts = {"movflags": "+faststart"} if fmt in ("mp4", "mov") else {}
            with av.open(str(tmp), mode="w", format=fmt, container_options=opts) as out:
                vs = out.add_stream(vcodec, rate=rate)
                vs.width, vs.height = frames.shape[2], frames.shape[1]
                vs.pix_fmt = "yuv420p"
                if vcodec == "libx264":
                    vs.options = {"crf": "18", "preset": "medium"}
                else:
                    vs.options = {"crf": "30", "b": "0", "deadline": "good", "cpu-used": "4"}
                astream = None
                if audio is not None:
                    astream = out.add_stream(acodec, rate=int(sample_rate))
                    astream.layout = "mono" if audio.shape[0] == 1 else "stereo"
                for i, img in enumerate(frames):
                    vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
                    vf.pts = i
                    vf.time_base = Fraction(1) / rate
                    out.mux(vs.encode(vf))
                out.mux(vs.encode(None))
                if astream is not None:
                    _encode_audio(out, astream, audio, int(sample_rate))
    except av.FFmpegError as e:
        raise MediaError(path, f"cannot write video: {e}") from None
    return path


def _encode_audio(out: Any, stream: Any, audio: np.ndarray, sr: int) -> None:
    """Encode (C, S) float32 audio in frames of the encoder's frame size."""
    import av

    audio = np.clip(audio, -1.0, 1.0).astype(np.float32)
    layout = "mono" if audio.shape[0] == 1 else "stereo"
    n = stream.codec_context.frame_size or 1024
    for s0 in range(0, audio.shape[1], n):
        chunk = np.ascontiguousarray(audio[:, s0 : s0 + n])
        af = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
        af.sample_rate = sr
        af.pts = s0
        af.time_base = Fraction(1, sr)
        out.mux(stream.encode(af))
    out.mux(stream.encode(None))


def write_audio(path: str | Path, audio: np.ndarray, sample_rate: int) -> Path:
    """Write (C, S) float audio in [-1, 1] as 16-bit PCM .wav (values are clipped). Returns the path."""
    path = Path(path)
    audio = _check_audio(audio)
    if path.suffix.lower() != ".wav":
        raise InputError(f"{path}: write_audio writes .wav (16-bit PCM)")
    if not (1000 <= int(sample_rate) <= 384000):
        raise InputError(f"sample_rate: expected 1000..384000 Hz, got {sample_rate}")
    pcm = np.round(np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2")  # (C, S)
    with atomic_path(path) as tmp:
        with wave.open(str(tmp), "wb") as w:
            w.setnchannels(audio.shape[0])
            w.setsampwidth(2)
            w.setframerate(int(sample_rate))
            w.writeframes(np.ascontiguousarray(pcm.T).tobytes())  # interleaved (S, C)
    return path


def _durations_ms(n: int, fps: float, step: int) -> list[int]:
    """Per-frame durations in ms, rounded to `step` ms without drift (frame k starts at k / fps)."""
    starts = [round(k * 1000.0 / fps / step) * step for k in range(n + 1)]
    return [max(step, b - a) for a, b in zip(starts[:-1], starts[1:], strict=True)]


def _write_pillow_animation(path: Path, frames: np.ndarray, fps: float, fmt: str) -> Path:
    from PIL import Image

    fps = float(_rate(fps))
    step = 10 if fmt == "GIF" else 1  # GIF stores centiseconds
    images = [Image.fromarray(f) for f in frames]
    kwargs: dict[str, Any] = {"format": fmt}
    if len(images) > 1:
        kwargs.update(
            save_all=True, append_images=images[1:], duration=_durations_ms(len(images), fps, step), loop=0
        )
    if fmt == "WEBP":
        kwargs.update(quality=90, method=4)
    if fmt == "GIF":
        kwargs.update(optimize=False, disposal=1)
    try:
        with atomic_path(path) as tmp:
            images[0].save(tmp, **kwargs)
    except (OSError, ValueError) as e:
        raise MediaError(path, f"cannot write {fmt}: {e}") from None
    return path


def write_gif(path: str | Path, frames: np.ndarray, fps: float) -> Path:
    """Write (T, H, W, 3) uint8 frames as a looping GIF (per-frame palette; 10 ms timing steps)."""
    return _write_pillow_animation(Path(path), _check_frames(frames), fps, "GIF")


def write_image(path: str | Path, image: np.ndarray) -> Path:
    """Write one uint8 (H, W, 3) frame as png/jpg/webp (by extension)."""
    from PIL import Image

    path = Path(path)
    img = _check_frames(image)[0]
    fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP"}.get(
        path.suffix.lower()
    )
    if fmt is None:
        raise InputError(f"{path}: unsupported image extension (use .png, .jpg, .webp or .bmp)")
    with atomic_path(path) as tmp:
        Image.fromarray(img).save(tmp, format=fmt, **({"quality": 95} if fmt in ("JPEG", "WEBP") else {}))
    return path


def write_contact_sheet(
    path: str | Path,
    clips: list[np.ndarray],
    *,
    columns: int | None = None,
    max_frames: int = 8,
    labels: list[str] | None = None,
) -> Path:
    """A PNG grid for previews: one row per clip, frames across (evenly spaced over the clip).

    `columns` frames per row (default: min(max_frames, longest clip)). Clips of different sizes sit
    top-left in cells of the largest size on a grey background; `labels` go above each row.
    """
    from PIL import Image, ImageDraw

    path = Path(path)
    if not clips:
        raise InputError("clips: expected at least one clip")
    clips = [_check_frames(c, f"clips[{i}]") for i, c in enumerate(clips)]
    if labels is not None and len(labels) != len(clips):
        raise InputError(f"labels: expected {len(clips)} labels, got {len(labels)}")
    ncol = int(columns) if columns else min(int(max_frames), max(len(c) for c in clips))
    if ncol < 1:
        raise InputError(f"columns: expected >= 1, got {ncol}")
    ch = max(c.shape[1] for c in clips)
    cw = max(c.shape[2] for c in clips)
    pad, label_h = 2, (12 if labels else 0)
    width = ncol * (cw + pad) + pad
    height = len(clips) * (ch + pad + label_h) + pad
    if max(width, height) > 4 * MAX_SIDE:
        raise InputError(f"contact sheet of {width}x{height} px is too large; pass fewer clips or frames")
    sheet = np.full((height, width, 3), 128, np.uint8)
    for r, clip in enumerate(clips):
        idx = np.unique(np.round(np.linspace(0, len(clip) - 1, min(ncol, len(clip)))).astype(int))
        y = pad + r * (ch + pad + label_h) + label_h
        for c, i in enumerate(idx):
            x = pad + c * (cw + pad)
            f = clip[i]
            sheet[y : y + f.shape[0], x : x + f.shape[1]] = f
    img = Image.fromarray(sheet)
    if labels:
        draw = ImageDraw.Draw(img)
        for r, text in enumerate(labels):
            draw.text((pad, pad + r * (ch + pad + label_h) - 1), str(text), fill=(255, 255, 255))
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return path
