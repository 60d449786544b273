"""Media I/O: round trips with values, resampling, crops, animations, images and every bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from videopoet.data import media as M
from videopoet.data import writers as Wr
from videopoet.errors import InputError, MediaError, VideoPoetError

pytestmark = pytest.mark.timeout(60)  # a hang on a bad file fails the test instead of stalling CI

FPS, T, H, W, SR = 20, 40, 48, 64, 16000


def grey_ramp(t: int = T, h: int = H, w: int = W) -> np.ndarray:
    """Frame i is flat grey at level 10 + 5 i: the frame index survives lossy coding (±3 levels)."""
    levels = (10 + 5 * np.arange(t)).astype(np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (t, h, w, 3)).copy()


def frame_index(frames: np.ndarray) -> np.ndarray:
    return np.round((frames.reshape(len(frames), -1).mean(axis=1) - 10) / 5).astype(int)


def sine(seconds: float, freq: float = 440.0, sr: int = SR) -> np.ndarray:
    t = np.arange(round(seconds * sr)) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t))[None].astype(np.float32)  # (1, S)


def close_audio(a: np.ndarray, b: np.ndarray) -> bool:
    """Lossy-coded audio matches: RMS error < 0.02 and no time offset (cross-correlation peaks at 0)."""
    assert a.shape == b.shape
    lags = range(-8, 9)
    corr = [float(np.dot(a[0, 50:-50], np.roll(b[0], lag)[50:-50])) for lag in lags]
    return float(np.sqrt(np.mean((a - b) ** 2))) < 0.02 and lags[int(np.argmax(corr))] == 0


def peak_hz(audio: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(audio[0]))
    return float(np.fft.rfftfreq(audio.shape[1], 1 / sr)[spec.argmax()])


@pytest.fixture(scope="module")
def av_file(tmp_path_factory) -> tuple:
    """A 2 s, 20 fps, 64x48 mp4 with a 440 Hz mono AAC track at 16 kHz."""
    path = tmp_path_factory.mktemp("media") / "clip.mp4"
    Wr.write_video(path, grey_ramp(), FPS, audio=sine(T / FPS), sample_rate=SR)
    return path, grey_ramp(), sine(T / FPS)


# =============================================================================== round trips
def test_write_read_video_with_audio(av_file):
    path, frames, audio = av_file
    v = M.read_video(path, with_audio=True, sample_rate=SR)
    assert v.frames.shape == (T, H, W, 3) and v.frames.dtype == np.uint8
    assert v.fps == pytest.approx(FPS)
    assert np.abs(v.frames.astype(int) - frames).max() <= 3
    assert v.sample_rate == SR and v.audio.shape == (1, T * SR // FPS)  # exactly the frames' duration
    assert close_audio(v.audio, audio)  # AAC priming is compensated: no offset
    info = M.probe(path)
    assert (info.kind, info.width, info.height, info.num_frames, info.has_audio) == ("video", W, H, T, True)
    assert info.duration == pytest.approx(2.0, abs=0.01) and info.fps == pytest.approx(FPS)


def test_read_audio_of_video_and_wav(av_file, tmp_path):
    path, _, audio = av_file
    a, sr = M.read_audio(path, sample_rate=SR)
    assert sr == SR and a.shape == (1, 2 * SR)  # encoder padding past the declared end is dropped
    assert close_audio(a, audio)
    stereo = np.concatenate([audio, -audio * 0.5])
    wav = Wr.write_audio(tmp_path / "s.wav", stereo, SR)
    b, _ = M.read_audio(wav, sample_rate=SR, mono=False)
    assert b.shape == (2, 2 * SR) and np.abs(b - stereo).max() <= 1 / 32767 + 1e-6
    mono, _ = M.read_audio(wav, sample_rate=SR)
    assert mono.shape == (1, 2 * SR) and np.abs(mono).max() < 0.3  # FFmpeg's downmix of x and -x/2


def test_webm_round_trip(tmp_path):
    path = Wr.write_video(tmp_path / "c.webm", grey_ramp(10), 10, audio=sine(1.0), sample_rate=SR)
    v = M.read_video(path, with_audio=True)
    assert v.frames.shape == (10, H, W, 3) and v.fps == pytest.approx(10)
    assert (frame_index(v.frames) == np.arange(10)).all()
    assert peak_hz(v.audio, SR) == pytest.approx(440, abs=2)


def test_odd_sizes_are_padded_for_h264(tmp_path):
    frames = np.random.default_rng(0).integers(0, 255, (3, 47, 63, 3)).astype(np.uint8)
    frames[:] = frames[:, :1, :1]  # flat frames: exact after coding
    v = M.read_video(Wr.write_video(tmp_path / "odd.mp4", frames, 8))
    assert v.frames.shape == (3, 48, 64, 3)
    assert np.abs(v.frames[:, :47, :63].astype(int) - frames).max() <= 3


# =============================================================================== resampling
def test_resample_fps_nearest_by_timestamp():
    idx = M.resample_fps(np.arange(25), 25, 8)
    assert idx.tolist() == [0, 3, 6, 9, 12, 16, 19, 22]  # 3.125 k rounded, ties to the earlier frame
    assert M.resample_fps(np.arange(4), 4, 8).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert len(M.resample_fps(np.arange(132), 25, 8)) == math.ceil(132 * 8 / 25)


def test_read_video_fps_and_window(av_file):
    path, _, audio = av_file
    v = M.read_video(path, fps=8)
    assert v.fps == 8 and len(v.frames) == 16  # ceil(40 * 8 / 20)
    assert frame_index(v.frames).tolist() == M.resample_fps(np.arange(T), FPS, 8).tolist()
    up = M.read_video(path, fps=40, max_frames=10)
    assert frame_index(up.frames).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    w = M.read_video(path, start=0.5, end=1.0, with_audio=True)
    assert frame_index(w.frames).tolist() == list(range(10, 20))
    assert w.audio.shape == (1, SR // 2) and close_audio(w.audio, audio[:, SR // 2 : SR])


def test_seek_into_a_longer_video(tmp_path):
    path = Wr.write_video(tmp_path / "long.mp4", grey_ramp(45, 16, 16), 10, audio=sine(4.5), sample_rate=SR)
    v = M.read_video(path, start=3.0, end=3.5, with_audio=True)  # past 2 s: seeks instead of decoding all
    assert frame_index(v.frames).tolist() == [30, 31, 32, 33, 34]
    assert v.audio.shape == (1, SR // 2) and close_audio(v.audio, sine(4.5)[:, 3 * SR : 3 * SR + SR // 2])
    assert frame_index(M.read_video(path, fps=5, start=2.5, max_frames=3).frames).tolist() == [25, 27, 29]


def test_audio_resampling(av_file):
    path, _, _ = av_file
    a, sr = M.read_audio(path, sample_rate=8000, start=0.5, end=1.5)
    assert sr == 8000 and a.shape == (1, 8000)
    assert peak_hz(a, sr) == pytest.approx(440, abs=1.5)
    x = sine(1.0, 1000.0, 48000)
    y = M.resample_audio(x, 48000, 16000)
    assert y.shape == (1, 16000) and peak_hz(y, 16000) == pytest.approx(1000, abs=1.5)
    assert np.abs(y - sine(1.0, 1000.0, 16000))[:, 100:-100].max() < 0.01


# =============================================================================== crops
def test_crop_resize_modes():
    frames = np.zeros((2, 20, 40, 3), np.uint8)
    frames[:] = (np.arange(40) * 5).astype(np.uint8)[None, None, :, None]  # column x has value 5 x
    c = M.crop_resize(frames, 20)
    assert c.shape == (2, 20, 20, 3) and c[0, 0, :, 0].tolist() == list(range(50, 150, 5))  # columns 10..29
    r = M.crop_resize(frames, 20, mode="random", rng=np.random.default_rng(3))
    x0 = r[0, 0, 0, 0] // 5
    assert 0 <= x0 <= 20 and r[0, 0, :, 0].tolist() == list(range(5 * x0, 5 * x0 + 100, 5))
    assert (r[0] == r[1]).all()  # one crop box for all frames
    n = M.crop_resize(frames, (10, 10), mode="none")
    assert n.shape == (2, 10, 10, 3) and n[0, 0, 0, 0] < 20 and n[0, 0, -1, 0] > 175  # whole width kept
    assert M.crop_resize(frames[0], (10, 20)).shape == (10, 20, 3)  # one frame in, one frame out
    with pytest.raises(InputError):
        M.crop_resize(frames, 10000)


def test_read_video_crops_and_sizes(av_file):
    path, _, _ = av_file
    assert M.read_video(path, size=32, max_frames=2).frames.shape == (2, 32, 32, 3)
    assert M.read_video(path, size=(16, 40), crop="none", max_frames=2).frames.shape == (2, 16, 40, 3)
    with pytest.raises(InputError):
        M.read_video(path, crop="diagonal")


def test_sample_clip():
    frames = np.arange(10)
    clip, s = M.sample_clip(frames, 4, start=3)
    assert s == 3 and clip.tolist() == [3, 4, 5, 6]
    clip, s = M.sample_clip(frames, 4, rng=np.random.default_rng(0))
    assert clip.tolist() == list(range(s, s + 4))
    clip, s = M.sample_clip(frames[:3], 5)
    assert s == 0 and clip.tolist() == [0, 1, 2, 2, 2]  # short input: last frame repeated
    with pytest.raises(InputError):
        M.sample_clip(frames, 4, start=8)


# =============================================================================== animations and images
@pytest.mark.parametrize("ext", [".gif", ".webp"])
def test_animated_gif_and_webp(tmp_path, ext):
    frames = grey_ramp(12, 24, 32)
    path = Wr.write_video(tmp_path / f"a{ext}", frames, 10)
    info = M.probe(path)
    assert info.kind == "video" and info.num_frames == 12 and info.fps == pytest.approx(10)
    v = M.read_video(path)
    assert v.frames.shape == (12, 24, 32, 3) and v.fps == pytest.approx(10)
    assert frame_index(v.frames).tolist() == list(range(12))
    v5 = M.read_video(path, fps=5, size=16)
    assert v5.frames.shape == (6, 16, 16, 3) and frame_index(v5.frames).tolist() == [0, 2, 4, 6, 8, 10]
    with pytest.raises(MediaError, match="no audio"):
        M.read_video(path, with_audio=True)


def test_gif_timing_without_drift(tmp_path):
    path = Wr.write_gif(tmp_path / "g.gif", grey_ramp(16, 8, 8), 8)  # 125 ms frames: GIF stores 12/13 cs
    v = M.read_video(path, fps=8)
    assert len(v.frames) == 16 and frame_index(v.frames).tolist() == list(range(16))


def test_images_are_one_frame_videos(tmp_path):
    img = np.random.default_rng(0).integers(0, 255, (30, 40, 3)).astype(np.uint8)
    png = Wr.write_image(tmp_path / "i.png", img)
    assert (M.read_image(png) == img).all()
    v = M.read_video(png, fps=8, size=20)
    assert v.frames.shape == (1, 20, 20, 3) and v.fps == 8
    assert (M.read_video(png).frames[0] == img).all()
    jpg = Wr.write_image(tmp_path / "i.jpg", np.full((30, 40, 3), 77, np.uint8))
    assert np.abs(M.read_image(jpg).astype(int) - 77).max() <= 2
    webp = Wr.write_image(tmp_path / "i.webp", np.full((30, 40, 3), 200, np.uint8))
    assert M.probe(webp).kind == "image" and M.read_video(webp).frames.shape == (1, 30, 40, 3)


def test_alpha_and_16bit_images(tmp_path):
    from PIL import Image

    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[:2, :, 3] = 255  # top half opaque black, bottom half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = M.read_image(tmp_path / "a.png")
    assert (out[:2] == 0).all() and (out[2:] == 255).all()  # transparent -> white
    Image.fromarray(np.full((4, 4), 65535 // 2, np.uint16)).save(tmp_path / "g16.png")
    assert np.abs(M.read_image(tmp_path / "g16.png").astype(int) - 128).max() <= 1


# =============================================================================== tensors
def test_tensor_conversions_round_trip():
    frames = np.random.default_rng(0).integers(0, 256, (3, 5, 6, 3)).astype(np.uint8)
    x = M.video_to_tensor(frames)
    assert x.shape == (3, 3, 5, 6) and x.dtype == torch.float32
    assert (
        x.min() >= -1
        and x.max() <= 1
        and float(x[0, 0, 0, 0]) == pytest.approx(frames[0, 0, 0, 0] / 127.5 - 1)
    )
    assert (M.tensor_to_video(x) == frames).all()
    assert (M.tensor_to_video(x[None]) == frames).all()
    assert M.tensor_to_video(torch.full((3, 1, 2, 2), 5.0)).max() == 255  # clamped
    a = np.stack([np.full(8, 0.5), np.full(8, -0.1)]).astype(np.float32)
    t = M.audio_to_tensor(a)
    assert t.shape == (1, 8) and torch.allclose(t, torch.full((1, 8), 0.2))
    assert M.tensor_to_audio(torch.full((1, 1, 4), 3.0)).tolist() == [[1.0] * 4]
    for bad in (
        torch.zeros(2, 3, 1, 2, 2),
        torch.zeros(4, 1, 2, 2),
        torch.zeros(3, 1, 2, 2, dtype=torch.long),
    ):
        with pytest.raises(InputError):
            M.tensor_to_video(bad)
    with pytest.raises(InputError):
        M.video_to_tensor(frames.astype(np.float32))
    with pytest.raises(InputError):
        M.audio_to_tensor(np.array([0.0, np.nan]))


def test_contact_sheet(tmp_path):
    a = grey_ramp(8, 10, 12)
    b = np.full((2, 6, 6, 3), 250, np.uint8)
    path = Wr.write_contact_sheet(tmp_path / "s.png", [a, b], max_frames=4, labels=["ramp", "flat"])
    sheet = M.read_image(path)
    pad, lab = 2, 12
    assert sheet.shape == (2 * (10 + pad + lab) + pad, 4 * (12 + pad) + pad, 3)
    # row 0: frames 0, 2, 5, 7 (evenly spaced); row 1: both frames of b, rest grey
    for c, i in enumerate([0, 2, 5, 7]):
        x = pad + c * (12 + pad)
        assert (sheet[pad + lab + 5, x + 5] == 10 + 5 * i).all()
    y1 = pad + (10 + pad + lab) + lab
    assert (sheet[y1 + 2, pad + 2] == 250).all() and (sheet[y1 + 2, pad + 2 * (12 + pad) + 2] == 128).all()


# =============================================================================== bad input
@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, av_file) -> dict:
    d = tmp_path_factory.mktemp("bad")
    good = av_file[0].read_bytes()
    rng = np.random.default_rng(0)
    (d / "empty.mp4").write_bytes(b"")
    (d / "text.mp4").write_text("hello\n" * 100)
    (d / "random.mkv").write_bytes(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    (d / "cut_half.mp4").write_bytes(good[: len(good) // 2])  # header intact, frames missing
    (d / "cut_head.mp4").write_bytes(good[:3000])
    corrupt = bytearray(good)
    corrupt[len(good) // 3 : len(good) // 3 + 2000] = rng.integers(0, 256, 2000, dtype=np.uint8).tobytes()
    (d / "corrupt.mp4").write_bytes(bytes(corrupt))
    for name, frames in (("g.gif", grey_ramp(6, 16, 16)), ("w.webp", grey_ramp(6, 16, 16))):
        data = Wr.write_video(d / name, frames, 8).read_bytes()
        (d / f"cut_{name}").write_bytes(data[: len(data) // 2])
    img = Wr.write_image(d / "i.png", np.random.default_rng(1).integers(0, 255, (32, 32, 3)).astype(np.uint8))
    (d / "cut_i.png").write_bytes(img.read_bytes()[:200])
    from PIL import Image

    Image.new("L", (9000, 2)).save(d / "wide.png")
    Wr.write_video(d / "silent.mp4", grey_ramp(4), 8)
    Wr.write_audio(d / "tone.wav", sine(0.5), SR)
    (d / "folder.mp4").mkdir()
    return {p.name: p for p in d.iterdir()}


@pytest.mark.parametrize(
    "name, pattern",
    [
        ("missing.mp4", "no such file"),
        ("folder.mp4", "directory"),
        ("empty.mp4", "empty file"),
        ("text.mp4", "cannot decode"),
        ("random.mkv", "not a media file|cannot decode"),
        ("cut_half.mp4", "truncated"),
        ("cut_head.mp4", "cannot decode"),
        ("corrupt.mp4", "cannot decode"),
        ("cut_g.gif", "truncated"),
        ("cut_w.webp", "not a readable image|truncated"),
        ("cut_i.png", "truncated|not a readable"),
        ("wide.png", "exceeds|outside"),
        ("tone.wav", "no video stream"),
    ],
)
def test_bad_files_raise_media_error_naming_the_file(bad_files, tmp_path, name, pattern):
    path = bad_files.get(name, tmp_path / name)
    with pytest.raises(MediaError, match=pattern) as err:
        M.read_video(path, fps=8, size=16)
    assert str(path) in str(err.value) and err.value.path == str(path)
    assert isinstance(err.value, VideoPoetError)  # the CLI prints it as one line, no traceback


def test_missing_audio_and_empty_windows(bad_files):
    with pytest.raises(MediaError, match="no audio track"):
        M.read_video(bad_files["silent.mp4"], with_audio=True)
    with pytest.raises(MediaError, match="no audio track"):
        M.read_audio(bad_files["silent.mp4"])
    with pytest.raises(MediaError, match="no audio track"):
        M.read_audio(bad_files["i.png"])
    with pytest.raises(MediaError, match="no frames in the requested window"):
        M.read_video(bad_files["silent.mp4"], start=5.0)
    with pytest.raises(InputError):
        M.read_video(bad_files["silent.mp4"], start=1.0, end=0.5)
    with pytest.raises(InputError):
        M.read_video(bad_files["silent.mp4"], max_frames=0)


def test_bad_arrays_and_extensions(tmp_path):
    with pytest.raises(InputError):
        Wr.write_video(tmp_path / "x.mp4", np.zeros((2, 8, 8), np.uint8), 8)
    with pytest.raises(InputError):
        Wr.write_video(tmp_path / "x.avi", grey_ramp(2, 8, 8), 8)
    with pytest.raises(InputError):
        Wr.write_video(tmp_path / "x.mp4", grey_ramp(2, 8, 8), 0)
    with pytest.raises(InputError):
        Wr.write_audio(tmp_path / "x.wav", np.zeros(10, np.int16), SR)
    assert not list(tmp_path.iterdir())  # nothing half-written
