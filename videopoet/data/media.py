"""Media I/O: read and write video, audio and images; convert them to and from model tensors.

Design choices
- One reader for everything. `read_video` sniffs the file's first bytes: PNG / JPEG / GIF / WebP /
  BMP / TIFF go to Pillow (FFmpeg does not decode animated WebP; GIF disposal is handled by Pillow),
  everything else to PyAV (FFmpeg). A still image comes back as a 1-frame video.
- Streaming. Frames are decoded one at a time; frame-rate conversion (nearest frame by timestamp),
  cropping and resizing happen per frame, so a 720p file read at 8 fps and 64x64 never holds the
  full-resolution video in memory. Only frames that are kept are converted to RGB.
- Frame-rate conversion picks, for each output time t_k = start + k / fps, the decoded frame whose
  timestamp is nearest (ties go to the earlier frame, so 2x upsampling repeats each frame twice).
  Output covers [start, end) where end defaults to the end of the stream (last timestamp + one
  frame), so N frames at f fps become ceil(N * fps / f) frames.
- Audio is decoded to float32 planar at its native rate (FFmpeg does the channel down-mix when
  `mono=True`), cut to the same window as the frames, then resampled with a polyphase filter
  (`scipy.signal.resample_poly`), which gives an exact output length. With video, the audio window
  is exactly the frames' duration [start, start + T / fps); a short track is padded with zeros.
- Alpha (RGBA images, transparent GIF/WebP frames) is composited over white.
- Every bad input raises `MediaError` naming the file: missing, empty, not media, truncated or
  corrupt, no frames in the window, no audio track when audio was asked for, absurd sizes (any
  side above `MAX_SIDE`), or a decoded result above `MAX_DECODED_BYTES` (pass `size`, `end` or
  `max_frames` to read less). Bad arrays or arguments raise `InputError`.
- Writing lives in `videopoet/data/writers.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from videopoet.errors import InputError, MediaError

DEFAULT_FPS = 8.0
DEFAULT_SAMPLE_RATE = 16000
MAX_SIDE = 8192  # refuse frames or requested sizes larger than this (pixels per side)
MAX_DECODED_BYTES = 4 << 30  # refuse to hold more than 4 GiB of decoded frames
MAX_AUDIO_SECONDS = 4 * 3600  # refuse to decode more than 4 hours of audio in one call

VIDEO_EXTS = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".gif", ".mpg", ".mpeg", ".ts", ".ogv", ".flv"}
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
AUDIO_EXTS = {".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".aac"}

Crop = Literal["center", "random", "none"]


@dataclass
class VideoData:
    frames: np.ndarray  # uint8 (T, H, W, 3)
    fps: float
    audio: np.ndarray | None = None  # float32 (C, S) in [-1, 1]
    sample_rate: int | None = None

    @property
    def duration(self) -> float:
        return len(self.frames) / self.fps


@dataclass
class MediaInfo:
    """What `probe` learns from a file's header without decoding it."""

    path: str
    kind: Literal["video", "image", "audio"]  # "image" = still; animated GIF/WebP are "video"
    width: int | None
    height: int | None
    fps: float | None
    num_frames: int | None  # from the header; may be missing or approximate for some containers
    duration: float | None  # seconds
    has_audio: bool
    sample_rate: int | None


# =============================================================================== array helpers
def _check_frames(frames: Any, name: str = "frames") -> np.ndarray:
    """Validate a uint8 (T, H, W, 3) array (a single (H, W, 3) frame is promoted to T=1)."""
    if isinstance(frames, torch.Tensor):
        raise InputError(
            f"{name}: expected a numpy uint8 array (T,H,W,3), got a torch tensor; use tensor_to_video"
        )
    frames = np.asarray(frames)
    if frames.ndim == 3 and frames.shape[-1] == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise InputError(f"{name}: expected shape (T,H,W,3), got {tuple(frames.shape)}")
    if frames.dtype != np.uint8:
        raise InputError(f"{name}: expected dtype uint8, got {frames.dtype}")
    if 0 in frames.shape:
        raise InputError(f"{name}: empty array of shape {tuple(frames.shape)}")
    if max(frames.shape[1:3]) > MAX_SIDE:
        raise InputError(f"{name}: frame size {frames.shape[2]}x{frames.shape[1]} exceeds {MAX_SIDE} px")
    return frames


def _check_audio(audio: Any, name: str = "audio") -> np.ndarray:
    """Validate float audio (C, S) (a 1-D array is promoted to C=1); returns float32."""
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().cpu().numpy()
    audio = np.asarray(audio)
    if audio.ndim == 1:
        audio = audio[None]
    if audio.ndim != 2 or audio.shape[0] > 64:
        raise InputError(f"{name}: expected shape (C,S) with few channels, got {tuple(audio.shape)}")
    if not np.issubdtype(audio.dtype, np.floating):
        raise InputError(f"{name}: expected float samples in [-1,1], got dtype {audio.dtype}")
    if not np.isfinite(audio).all():
        raise InputError(f"{name}: contains NaN or infinite samples")
    return audio.astype(np.float32, copy=False)


def _target_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    h, w = int(h), int(w)
    if not (0 < h <= MAX_SIDE and 0 < w <= MAX_SIDE):
        raise InputError(f"size: expected 1..{MAX_SIDE} pixels per side, got {size}")
    return h, w


def _crop_box(
    h: int, w: int, out_hw: tuple[int, int], mode: str, rng: np.random.Generator | None
) -> tuple[int, int, int, int]:
    """(y0, x0, ch, cw): the largest box with the target's aspect ratio, centered or at random."""
    if mode == "none":
        return 0, 0, h, w
    if mode not in ("center", "random"):
        raise InputError(f"crop: expected 'center', 'random' or 'none', got {mode!r}")
    oh, ow = out_hw
    # Largest ch x cw inside h x w with ch / cw = oh / ow.
    if h * ow >= w * oh:
        cw, ch = w, max(1, min(h, round(w * oh / ow)))
    else:
        ch, cw = h, max(1, min(w, round(h * ow / oh)))
    if mode == "random":
        rng = rng if rng is not None else np.random.default_rng()
        y0 = int(rng.integers(0, h - ch + 1))
        x0 = int(rng.integers(0, w - cw + 1))
    else:
        y0, x0 = (h - ch) // 2, (w - cw) // 2
    return y0, x0, ch, cw


def _resize(img: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Resize one (H, W, 3) uint8 frame: area filter when shrinking, bicubic when enlarging."""
    import cv2

    oh, ow = out_hw
    h, w = img.shape[:2]
    if (h, w) == (oh, ow):
        return np.ascontiguousarray(img)
    interp = cv2.INTER_AREA if oh <= h and ow <= w else cv2.INTER_CUBIC
    return cv2.resize(np.ascontiguousarray(img), (ow, oh), interpolation=interp)


class _FrameTransform:
    """Crop + resize applied to each frame; the crop box is fixed on the first frame seen."""

    def __init__(self, size: int | tuple[int, int] | None, crop: str, rng: np.random.Generator | None):
        self.out_hw = None if size is None else _target_hw(size)
        self.crop, self.rng, self.box = crop, rng, None
        if crop not in ("center", "random", "none"):
            raise InputError(f"crop: expected 'center', 'random' or 'none', got {crop!r}")

    def __call__(self, img: np.ndarray) -> np.ndarray:  # (H, W, 3) -> (h, w, 3)
        if self.out_hw is None:
            return img
        if self.box is None:
            self.box = _crop_box(img.shape[0], img.shape[1], self.out_hw, self.crop, self.rng)
        y0, x0, ch, cw = self.box
        return _resize(img[y0 : y0 + ch, x0 : x0 + cw], self.out_hw)


class _FrameSelector:
    """Streaming nearest-frame sampling at `fps` over [t0, t1); `fps=None` keeps every frame in the window.

    `push(ts, frame)` in timestamp order, then `finish(end_ts)` with the stream's end time. Frames are
    opaque here (decoded frames, converted lazily by the caller's `convert`), and each output slot holds
    a reference, so a frame chosen twice (upsampling) is converted once.
    """

    def __init__(self, fps: float | None, t0: float, t1: float, max_out: int):
        self.fps, self.t0, self.t1, self.max_out = fps, t0, t1, max_out
        self.k = 0
        self.prev: tuple[float, Any] | None = None
        self.out: list[Any] = []

    def _target(self) -> float:
        return self.t0 + self.k / self.fps  # type: ignore[operator]

    @property
    def done(self) -> bool:
        if len(self.out) >= self.max_out:
            return True
        return self.fps is not None and self._target() >= self.t1 - 1e-9

    def push(self, ts: float, frame: Any) -> None:
        if self.fps is None:  # native rate: keep frames inside the window
            if self.t0 - 1e-6 <= ts < self.t1 - 1e-9 and len(self.out) < self.max_out:
                self.out.append(frame)
            return
        while not self.done:
            t = self._target()
            if ts < t - 1e-9:
                break
            if self.prev is not None and (t - self.prev[0]) <= (ts - t) + 1e-9:  # ties: the earlier frame
                self.out.append(self.prev[1])
            else:
                self.out.append(frame)
            self.k += 1
        self.prev = (ts, frame)

    def finish(self, end_ts: float) -> None:
        if self.fps is None or self.prev is None:
            return
        while not self.done and self._target() < end_ts - 1e-9:
            self.out.append(self.prev[1])
            self.k += 1

    def past_window(self, ts: float) -> bool:
        """True once nothing at or after `ts` can change the output."""
        if self.fps is None:
            return ts >= self.t1 - 1e-9 or len(self.out) >= self.max_out
        return self.done


# =============================================================================== files
_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")


def _check_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise MediaError(path, "no such file")
    if path.is_dir():
        raise MediaError(path, "is a directory, not a media file")
    try:
        size = path.stat().st_size
    except OSError as e:
        raise MediaError(path, f"cannot read: {e.strerror or e}") from None
    if size == 0:
        raise MediaError(path, "empty file (0 bytes)")
    return path


def _is_pillow_file(path: Path) -> bool:
    """Sniff the first bytes: formats that Pillow handles (stills, GIF, animated WebP)."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise MediaError(path, f"cannot read: {e.strerror or e}") from None
    if head.startswith(_IMAGE_MAGIC):
        return True
    return head[:4] == b"RIFF" and head[8:12] == b"WEBP"


def _av_error(path: Path, e: BaseException) -> MediaError:
    msg = str(e).strip() or type(e).__name__
    return MediaError(path, f"cannot decode (not a media file, truncated or corrupt): {msg}")


# --------------------------------------------------------------------------- Pillow
def _pil_to_rgb(im: Any) -> np.ndarray:
    """A Pillow image (any mode) -> uint8 (H, W, 3); 16-bit greyscale is scaled, alpha over white."""
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        g = np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=-1)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(bg, rgba).convert("RGB"))
    return np.asarray(im.convert("RGB"))


def _open_pillow(path: Path) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(path)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise MediaError(path, f"not a readable image: {e}") from None
    w, h = im.size
    if w <= 0 or h <= 0 or max(w, h) > MAX_SIDE:
        im.close()
        raise MediaError(path, f"image size {w}x{h} outside 1..{MAX_SIDE} px")
    return im


def _pillow_frames(path: Path) -> tuple[Any, int]:
    im = _open_pillow(path)
    return im, int(getattr(im, "n_frames", 1) or 1)


def read_image(path: str | Path) -> np.ndarray:
    """Read a still image (png/jpg/webp/bmp/tiff; first frame of an animation) -> uint8 (H, W, 3)."""
    path = _check_file(path)
    if not _is_pillow_file(path):  # e.g. a video: its first frame
        return read_video(path, max_frames=1).frames[0]
    im = _open_pillow(path)
    try:
        im.load()
        return _pil_to_rgb(im).copy()
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise MediaError(path, f"cannot decode image (truncated or corrupt): {e}") from None
    finally:
        im.close()


def _read_pillow_video(
    path: Path, sel: _FrameSelector, transform: _FrameTransform, fps: float | None
) -> tuple[np.ndarray, float]:
    """Decode a still or animated image through Pillow -> (frames (T,h,w,3), fps)."""
    im, n = _pillow_frames(path)
    try:
        if n <= 1:  # a still image is a 1-frame video, whatever fps was asked
            im.load()
            return transform(_pil_to_rgb(im))[None].copy(), float(fps or DEFAULT_FPS)
        # One pass: seek + load gives each frame's duration (WebP sets it only on load); a 0 or missing
        # duration plays at 10 fps, as browsers do. Frames are converted as they come (animations are
        # small) and only chosen ones are kept.
        t, kept_bytes, seen = 0.0, 0, 0
        for i in range(n):
            if sel.past_window(t):
                break
            im.seek(i)
            im.load()
            seen += 1
            arr = transform(_pil_to_rgb(im))
            before = len(sel.out)
            sel.push(t, arr)
            kept_bytes += sum(f.nbytes for f in sel.out[before:])
            if kept_bytes > MAX_DECODED_BYTES:
                raise MediaError(path, "decoded animation would exceed 4 GiB; pass size, end or max_frames")
            d = im.info.get("duration") or 0
            t += (d if d > 10 else 100) / 1000.0
        sel.finish(t)
        if not sel.out:
            raise MediaError(path, f"no frames in the requested window (animation is {t:.2f} s long)")
        return np.stack(sel.out), float(fps or seen / t)
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise MediaError(path, f"cannot decode image (truncated or corrupt): {e}") from None
    finally:
        im.close()


# --------------------------------------------------------------------------- PyAV
def _open_av(path: Path) -> Any:
    import av

    try:
        return av.open(str(path), mode="r", metadata_errors="ignore", timeout=30.0)
    except (av.FFmpegError, OSError, ValueError, EOFError, UnicodeDecodeError) as e:
        raise _av_error(path, e) from None


def _stream_fps(stream: Any) -> float | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate and float(rate) > 0:
            return float(rate)
    return None


def _decode_av(
    path: Path,
    *,
    want_video: bool,
    want_audio: bool,
    sel: _FrameSelector | None,
    transform: _FrameTransform | None,
    start: float,
    end: float | None,
    mono: bool,
) -> tuple[list[np.ndarray], float | None, np.ndarray | None, int | None, float]:
    """One demux pass over a file. Returns (frames, native fps, audio (C,S) float32 at native rate
    starting at `start`, native sample rate, end of the video stream in seconds relative to its origin)."""
    import av

    container = _open_av(path)
    try:
        vstream = container.streams.video[0] if container.streams.video else None
        astream = container.streams.audio[0] if container.streams.audio else None
        if vstream is None and astream is None:
            raise MediaError(path, "not a media file (no video or audio stream found)")
        if want_video and vstream is None:
            raise MediaError(path, "has no video stream (an audio-only file)")
        if want_audio and astream is None:
            raise MediaError(path, "has no audio track (audio was asked for)")
        native_fps = None
        if vstream is not None and want_video:
            cc = vstream.codec_context
            if cc.width and cc.height and max(cc.width, cc.height) > MAX_SIDE:
                raise MediaError(path, f"video size {cc.width}x{cc.height} exceeds {MAX_SIDE} px")
            vstream.thread_type = "AUTO"
            native_fps = _stream_fps(vstream)
        streams = [s for s, w in ((vstream, want_video), (astream, want_audio)) if w and s is not None]
        # Time origin: the first stream's start time (else the first decoded frame's time), so audio
        # and video share one clock and `start` counts from the beginning of the file.
        ref = streams[0]
        origin = float(ref.start_time * ref.time_base) if ref.start_time is not None else None

        if start > 2.0:  # seek near the window; frames before it are decoded and dropped below
            try:
                container.seek(int((start + (origin or 0.0) - 1.0) / ref.time_base), stream=ref, backward=True)
            except av.FFmpegError:
                container.seek(0, stream=ref)

        video_done = not want_video
        last_ts, frame_dur = None, 1.0 / (native_fps or 25.0)
        vframes_seen, kept_bytes = 0, 0
        cached: tuple[Any, np.ndarray] | None = None  # the last converted (decoded frame, array)

        def convert(f: Any) -> np.ndarray:
            nonlocal cached, kept_bytes
            if cached is None or cached[0] is not f:
                cached = (f, _convert_frame(f, transform))
                kept_bytes += cached[1].nbytes
                if kept_bytes > MAX_DECODED_BYTES:
                    raise MediaError(path, "decoded video would exceed 4 GiB; pass size, end or max_frames")
            return cached[1]

        a_chunks: list[np.ndarray] = []
        a_first: float | None = None
        a_samples, a_rate, resampler = 0, None, None
        if want_audio:
            a_rate = int(astream.codec_context.sample_rate or astream.rate)
            layout = "mono" if mono else astream.layout.name
            resampler = av.AudioResampler(format="fltp", layout=layout, rate=a_rate)
        a_end = end  # for video + audio with no `end`, known once the frames are done

        # demux() ends with empty packets that flush each decoder, so no frame is lost at the end.
        for packet in container.demux(streams):
            is_video = want_video and packet.stream is vstream
            if is_video and video_done:
                continue
            for frame in packet.decode():
                if origin is None:
                    origin = frame.time if frame.time is not None else 0.0
                if is_video:
                    vframes_seen += 1
                    ts = (frame.time - origin) if frame.time is not None else (vframes_seen - 1) * frame_dur
                    if last_ts is not None and ts <= last_ts - 1e-9:  # broken timestamps: keep decode order
                        ts = last_ts + frame_dur
                    if sel.past_window(ts):
                        video_done = True
                        break
                    last_ts = ts
                    before = len(sel.out)
                    sel.push(ts, frame)
                    sel.out[before:] = [convert(f) for f in sel.out[before:]]
                else:
                    if a_first is None:
                        a_first = (frame.time - origin) if frame.time is not None else 0.0
                    for f in resampler.resample(frame):
                        a_chunks.append(f.to_ndarray().astype(np.float32, copy=False))
                        a_samples += a_chunks[-1].shape[1]
                    if a_samples > MAX_AUDIO_SECONDS * a_rate:
                        raise MediaError(path, f"audio longer than {MAX_AUDIO_SECONDS} s; pass end")
            if want_video and not video_done and sel.done:
                video_done = True
            if want_video and video_done and want_audio and a_end is None:
                a_end = start + len(sel.out) / (sel.fps or native_fps or DEFAULT_FPS)
            audio_done = not want_audio or (
                a_end is not None and a_first is not None and a_first + a_samples / a_rate >= a_end + 0.05
            )
            if video_done and audio_done:
                break
        if resampler is not None:
            for f in resampler.resample(None):
                a_chunks.append(f.to_ndarray().astype(np.float32, copy=False))

        frames: list[np.ndarray] = []
        video_end = 0.0
        if want_video:
            video_end = (last_ts + frame_dur) if last_ts is not None else 0.0
            before = len(sel.out)
            sel.finish(video_end)  # repeats the last frame up to the stream's end
            sel.out[before:] = [convert(f) for f in sel.out[before:]]
            frames = sel.out
            if vframes_seen == 0:
                raise MediaError(path, "contains no decodable video frames")
            _check_not_truncated(path, container, vstream, origin, video_end, frame_dur, sel, video_done)
            if not frames:
                raise MediaError(path, f"no frames in the requested window (video is {video_end:.2f} s long)")

        audio = None
        if want_audio:
            if not a_chunks:
                raise MediaError(path, "audio track contains no decodable samples")
            audio = np.concatenate(a_chunks, axis=1)
            # Align to `start` on the shared clock: drop samples before it, pad zeros if the track starts late.
            offset = round(((a_first or 0.0) - start) * a_rate)
            if offset > 0:
                audio = np.concatenate([np.zeros((audio.shape[0], offset), np.float32), audio], axis=1)
            elif offset < 0:
                audio = audio[:, -offset:]
            # Drop the encoder's padding past the track's declared end (AAC pads to 1024-sample frames).
            if astream.duration is not None and astream.start_time is not None:
                track_end = float((astream.start_time + astream.duration) * astream.time_base) - origin
                audio = audio[:, : max(1, round((track_end - start) * a_rate))]
        return frames, native_fps, audio, a_rate, video_end
    except (av.FFmpegError, EOFError) as e:
        raise _av_error(path, e) from None
    finally:
        container.close()


def _check_not_truncated(
    path: Path,
    container: Any,
    vstream: Any,
    origin: float,
    video_end: float,
    frame_dur: float,
    sel: _FrameSelector,
    stopped_early: bool,
) -> None:
    """Raise if the stream ran out well before the end its header declares, inside the asked window.

    FFmpeg reads a cut file (moov atom at the front) without error and just stops; the header's
    duration tells us frames are missing. Tolerance: 2 frames, or 0.5 s + 10% when only the container's
    duration is known (it may include a longer audio track).
    """
    if stopped_early:
        return
    if vstream.duration is not None:
        declared = float(vstream.duration * vstream.time_base) + (
            float(vstream.start_time * vstream.time_base) - origin if vstream.start_time is not None else 0.0
        )
        tol = 2 * frame_dur
    elif container.duration is not None:
        declared = container.duration / 1e6
        tol = 0.5 + 0.1 * declared
    else:
        return
    wanted_end = min(declared, sel.t1)
    if wanted_end - video_end > tol:
        raise MediaError(
            path,
            f"truncated: the header declares {declared:.2f} s of video but decoding stops at {video_end:.2f} s",
        )


def _convert_frame(frame: Any, transform: _FrameTransform | None) -> np.ndarray:
    if isinstance(frame, np.ndarray):
        return frame
    img = frame.to_ndarray(format="rgb24")  # (H, W, 3)
    return transform(img) if transform is not None else img


# =============================================================================== reading
def _check_window(start: float | None, end: float | None) -> tuple[float, float | None]:
    start = 0.0 if start is None else float(start)
    if not math.isfinite(start) or start < 0:
        raise InputError(f"start: expected seconds >= 0, got {start}")
    if end is not None:
        end = float(end)
        if not end > start:
            raise InputError(f"end: expected end > start, got start={start}, end={end}")
    return start, end


def read_video(
    path: str | Path,
    *,
    fps: float | None = None,
    size: int | tuple[int, int] | None = None,
    crop: Crop = "center",
    start: float | None = None,
    end: float | None = None,
    max_frames: int | None = None,
    with_audio: bool = False,
    sample_rate: int = DEFAULT_SAMPLE_RATE,
    mono: bool = True,
    rng: np.random.Generator | None = None,
) -> VideoData:
    """Read a video, animated GIF/WebP or still image -> `VideoData`.

    Args:
        fps: output frame rate (nearest frame by timestamp); None keeps the native rate.
        size: output size; an int gives a square, (H, W) a rectangle; None keeps the native size.
        crop: "center" / "random" crop to the target aspect ratio before resizing; "none" just resizes.
        start, end: window in seconds; `end` None reads to the end of the stream.
        max_frames: at most this many output frames.
        with_audio: also return the audio track over the frames' span; MediaError when there is none.
        sample_rate, mono: audio output rate and channel mix.
        rng: numpy Generator for the random crop.
    """
    path = _check_file(path)
    start, end = _check_window(start, end)
    if fps is not None and not (0 < float(fps) <= 1000):
        raise InputError(f"fps: expected a rate in (0, 1000], got {fps}")
    if max_frames is not None and int(max_frames) < 1:
        raise InputError(f"max_frames: expected >= 1, got {max_frames}")
    if sample_rate is None or not (1000 <= int(sample_rate) <= 384000):
        raise InputError(f"sample_rate: expected 1000..384000 Hz, got {sample_rate}")
    transform = _FrameTransform(size, crop, rng)
    cap = int(max_frames) if max_frames is not None else 10**9
    t1 = math.inf if end is None else end
    sel = _FrameSelector(None if fps is None else float(fps), start, t1, cap)

    if _is_pillow_file(path):
        if with_audio:
            raise MediaError(path, "has no audio track (an image or animation; audio was asked for)")
        frames, out_fps = _read_pillow_video(path, sel, transform, fps)
        return VideoData(frames=frames, fps=out_fps)

    frame_list, native_fps, audio, a_rate, _ = _decode_av(
        path,
        want_video=True,
        want_audio=with_audio,
        sel=sel,
        transform=transform,
        start=start,
        end=end,
        mono=mono,
    )
    out_fps = float(fps) if fps is not None else float(native_fps or DEFAULT_FPS)
    frames = np.stack(frame_list)  # (T, h, w, 3)
    out_audio, out_sr = None, None
    if with_audio:
        out_sr = int(sample_rate)
        n_out = round(len(frames) / out_fps * out_sr)
        audio = resample_audio(audio, a_rate, out_sr)
        out_audio = fit_length(audio, n_out)
    return VideoData(frames=frames, fps=out_fps, audio=out_audio, sample_rate=out_sr)


def fit_length(audio: np.ndarray, n: int) -> np.ndarray:
    """Trim or zero-pad (C, S) audio to exactly n samples (the end is cut or padded)."""
    if audio.shape[1] >= n:
        return np.ascontiguousarray(audio[:, :n])
    return np.concatenate([audio, np.zeros((audio.shape[0], n - audio.shape[1]), np.float32)], axis=1)


def read_audio(
    path: str | Path,
    *,
    sample_rate: int = DEFAULT_SAMPLE_RATE,
    mono: bool = True,
    start: float | None = None,
    end: float | None = None,
) -> tuple[np.ndarray, int]:
    """Read audio (wav/flac/mp3/ogg/..., or a video file's audio track) -> ((C, S) float32, sample_rate).

    `end` None reads to the end of the track; a window past the end of the track is zero-padded.
    """
    path = _check_file(path)
    start, end = _check_window(start, end)
    if not (1000 <= int(sample_rate) <= 384000):
        raise InputError(f"sample_rate: expected 1000..384000 Hz, got {sample_rate}")
    if _is_pillow_file(path):
        raise MediaError(path, "has no audio track (an image; audio was asked for)")
    _, _, audio, a_rate, _ = _decode_av(
        path, want_video=False, want_audio=True, sel=None, transform=None, start=start, end=end, mono=mono
    )
    if end is not None:
        audio = fit_length(audio, round((end - start) * a_rate))
    audio = resample_audio(audio, a_rate, int(sample_rate))
    if end is not None:
        audio = fit_length(audio, round((end - start) * int(sample_rate)))
    return audio, int(sample_rate)


def probe(path: str | Path) -> MediaInfo:
    """Header facts about a media file (no full decode). Raises MediaError for unreadable files."""
    path = _check_file(path)
    if _is_pillow_file(path):
        im, n = _pillow_frames(path)
        try:
            if n <= 1:
                return MediaInfo(str(path), "image", im.size[0], im.size[1], None, 1, None, False, None)
            total = 0.0
            for i in range(n):
                im.seek(i)
                im.load()  # WebP sets the frame's duration on load
                d = im.info.get("duration") or 0
                total += (d if d > 10 else 100) / 1000.0
            return MediaInfo(str(path), "video", im.size[0], im.size[1], n / total, n, total, False, None)
        except (OSError, ValueError, SyntaxError, EOFError) as e:
            raise MediaError(path, f"cannot decode image (truncated or corrupt): {e}") from None
        finally:
            im.close()
    container = _open_av(path)
    try:
        v = container.streams.video[0] if container.streams.video else None
        a = container.streams.audio[0] if container.streams.audio else None
        if v is None and a is None:
            raise MediaError(path, "has no video or audio stream")
        duration = None
        s = v if v is not None else a
        if s.duration is not None:
            duration = float(s.duration * s.time_base)
        elif container.duration is not None:
            duration = container.duration / 1e6
        if v is None:
            sr = int(a.codec_context.sample_rate or a.rate)
            return MediaInfo(str(path), "audio", None, None, None, None, duration, True, sr)
        fps = _stream_fps(v)
        n = int(v.frames) if v.frames else (round(duration * fps) if duration and fps else None)
        cc = v.codec_context
        sr = int(a.codec_context.sample_rate or a.rate) if a is not None else None
        return MediaInfo(str(path), "video", cc.width, cc.height, fps, n, duration, a is not None, sr)
    finally:
        container.close()


# =============================================================================== array transforms
def resample_fps(frames: np.ndarray, src_fps: float, dst_fps: float) -> np.ndarray:
    """Nearest-frame resampling of (T, ...) frames by timestamp: frame i is at i / src_fps; output k at
    k / dst_fps for every k with k / dst_fps < T / src_fps (so ceil(T * dst / src) frames)."""
    if not (src_fps > 0 and dst_fps > 0):
        raise InputError(f"fps: expected positive rates, got src={src_fps}, dst={dst_fps}")
    frames = np.asarray(frames)
    t = len(frames)
    if t == 0:
        raise InputError("frames: empty")
    sel = _FrameSelector(float(dst_fps), 0.0, math.inf, 10**9)
    for i in range(t):
        sel.push(i / src_fps, i)
    sel.finish(t / src_fps)
    return frames[np.asarray(sel.out, dtype=np.int64)]


def resample_audio(audio: np.ndarray, src_sr: int, dst_sr: int) -> np.ndarray:
    """Polyphase resampling of (C, S) float audio; output length is ceil(S * dst / src)."""
    from scipy.signal import resample_poly

    audio = _check_audio(audio)
    src_sr, dst_sr = int(src_sr), int(dst_sr)
    if src_sr <= 0 or dst_sr <= 0:
        raise InputError(f"sample rate: expected positive rates, got src={src_sr}, dst={dst_sr}")
    if src_sr == dst_sr:
        return audio
    g = math.gcd(src_sr, dst_sr)
    up, down = dst_sr // g, src_sr // g
    if audio.shape[1] == 0:
        return audio
    return resample_poly(audio, up, down, axis=1).astype(np.float32)


def crop_resize(
    frames: np.ndarray,
    size: int | tuple[int, int],
    *,
    mode: Crop = "center",
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Crop (T, H, W, 3) (or one (H, W, 3) frame) to the target aspect ratio and resize to `size`.

    "center" and "random" take the largest box with the target's aspect ratio (random: one position for
    all frames); "none" resizes the whole frame (the aspect ratio may change).
    """
    single = np.asarray(frames).ndim == 3
    frames = _check_frames(frames)
    transform = _FrameTransform(size, mode, rng)
    out = np.stack([transform(f) for f in frames])
    return out[0] if single else out


def sample_clip(
    frames: np.ndarray, num_frames: int, *, rng: np.random.Generator | None = None, start: int | None = None
) -> tuple[np.ndarray, int]:
    """A window of `num_frames` consecutive frames -> (clip, start index).

    `start` given: that window (InputError if it does not fit). Otherwise a random start when `rng` is
    given, else 0. Inputs shorter than `num_frames` are padded by repeating the last frame (start 0),
    so short animations still give full-length clips.
    """
    frames = np.asarray(frames)
    num_frames = int(num_frames)
    if num_frames < 1:
        raise InputError(f"num_frames: expected >= 1, got {num_frames}")
    t = len(frames)
    if t == 0:
        raise InputError("frames: empty")
    if t < num_frames:
        if start not in (None, 0):
            raise InputError(f"start: {start} does not fit {num_frames} frames in a {t}-frame video")
        pad = np.repeat(frames[-1:], num_frames - t, axis=0)
        return np.concatenate([frames, pad], axis=0), 0
    if start is None:
        start = int(rng.integers(0, t - num_frames + 1)) if rng is not None else 0
    start = int(start)
    if not 0 <= start <= t - num_frames:
        raise InputError(f"start: {start} does not fit {num_frames} frames in a {t}-frame video")
    return frames[start : start + num_frames], start


# =============================================================================== tensors
def video_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float32 (3, T, H, W) in [-1, 1]."""
    frames = _check_frames(frames)
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2)  # (3, T, H, W)
    return x.float().div_(127.5).sub_(1.0).contiguous()


def tensor_to_video(x: torch.Tensor) -> np.ndarray:
    """(3, T, H, W) or (1, 3, T, H, W) float in [-1, 1] -> uint8 (T, H, W, 3); values are clamped."""
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(np.asarray(x))
    if x.ndim == 5:
        if x.shape[0] != 1:
            raise InputError(f"video tensor: batch of {x.shape[0]}; pass one video (B=1) at a time")
        x = x[0]
    if x.ndim != 4 or x.shape[0] != 3:
        raise InputError(f"video tensor: expected (3,T,H,W) or (1,3,T,H,W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise InputError(f"video tensor: expected floats in [-1,1], got dtype {x.dtype}")
    x = x.detach().float().cpu().nan_to_num(0.0).clamp(-1.0, 1.0)
    return ((x + 1.0) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).contiguous().numpy()


def audio_to_tensor(audio: np.ndarray) -> torch.Tensor:
    """(C, S) or (S,) float audio -> float32 (1, S), channels averaged (mono mix)."""
    audio = _check_audio(audio)
    return torch.from_numpy(np.ascontiguousarray(audio.mean(axis=0, keepdims=True, dtype=np.float32)))


def tensor_to_audio(x: torch.Tensor) -> np.ndarray:
    """(1, S), (S,) or (1, 1, S) float tensor -> float32 (1, S) clamped to [-1, 1]."""
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(np.asarray(x))
    if x.ndim == 3:
        if x.shape[0] != 1:
            raise InputError(f"audio tensor: batch of {x.shape[0]}; pass one clip (B=1) at a time")
        x = x[0]
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or x.shape[0] > 64:
        raise InputError(f"audio tensor: expected (1,S), (C,S) or (1,1,S), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise InputError(f"audio tensor: expected floats in [-1,1], got dtype {x.dtype}")
    return x.detach().float().cpu().nan_to_num(0.0).clamp(-1.0, 1.0).numpy()
