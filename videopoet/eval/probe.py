"""A learned in-domain probe for the shapes benchmark: reads each object's colour, shape, size and
direction from frames, and the objects' tones from sound.

Trained on ground-truth clips only (videopoet/eval/probe_train.py), validated on held-out ground
truth and on the shipped tokenizers' round trips of it before it scores anything. It has the same
interface as the hand-written probes of videopoet/eval/readback.py (`read_objects`, `read_tones`),
so the evaluation can use either (`probe="hand"|"learned"|DIR` in videopoet/eval/run.py).

Design choices:
- **Objects are keyed by colour**, as in readback.py (the six palette colours are far apart in hue).
  A query is (clip, colour): the network sees the frames plus that colour's soft membership mask
  (`colour_membership`: saturation ramp x nearest palette hue, the same rule as readback's), so it
  looks at one object and the others are context. Colours with (almost) no membership anywhere are
  not queried at all: they read as absent.
- **Video network** (`VideoProbe`): three views of the query, concatenated into one MLP with heads
  for presence (is an object of this colour in the clip), shape (4), size (3) and direction (8:
  every shapes object moves, none is static). (1) The scene: a small 3D CNN over the clip at half
  resolution, pooled over space (mask-weighted mean and max) but not over time, so the first motion
  (the captioned direction; later frames may show a bounce) stays readable. (2) The object: a 2D CNN
  over a `crop` x `crop` window at full resolution that follows the colour's centroid frame by frame
  (`object_track`: two-pass, stray pixels far away do not pull it), flattened (position-aware: the
  silhouette is centred) and averaged over the frames where the colour is seen -- a first version
  without this view, global pooling only, did not learn shape in 900 steps (loss stuck at ln 4).
  (3) The centroid track (position, mass per frame). The first `frames` frames are read at `size` x
  `size` (shorter clips are zero-padded, a validity channel marks the real frames; other sizes are
  resized); a single frame gets no direction.
- **Audio network** (`AudioProbe`): the clip's power spectrum (Hann window, whole clip) max-pooled
  into log-frequency bands (`audio_bins_per_octave` per octave, centred so that every (shape, colour)
  tone falls on a band centre, `audio_offset` bands below 220 Hz), as log10 power, relative to the
  loudest band and absolute. A dilated 1D CNN over bands; each tone's logit is read at its own band
  (shared weights: pitch-equivariant) plus a global term (for cues a codec moves elsewhere).
  Multi-label: `read_tones(audio, sr, n)` returns the n tones with the highest logits.
- Click times stay with the hand-written detector (`videopoet.data.shapes.click_times`).

Tensor shapes (B queries, F = config.frames, S = config.size, C = config.crop, K = audio bands):
  video input   (B, 5, F, S, S): RGB in [-1, 1], the queried colour's membership in [0, 1], validity;
  scene view    (B, 5, F, S/2, S/2) -> (B, c2, F', S/16, S/16), F' = ceil(F / 2);
  object view   (B * F, 5, C, C) crops -> (B * F, c2, C/8, C/8) -> (B, F, c2) -> mean, max over seen frames;
  track         (B, F, 4): centre x, y (relative to the frame), log mass, seen;
  video output  `VideoLogits`: presence (B,), shape (B, 4), size (B, 3), direction (B, 8);
  audio input   (B, 2, K): relative and absolute log band power; audio output (B, 24) tone logits.

A probe directory holds config.json and model.safetensors (`Probe.save_pretrained`, float16 when
shipped, `Probe.from_pretrained`); the package ships one in videopoet/assets/probe (`load_probe`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from videopoet.data import shapes as S
from videopoet.errors import ConfigError, InputError
from videopoet.eval.readback import TONES, ObjectReading

COLOURS = S.COLOURS
SHAPES = S.SHAPES
SIZES = S.SIZES
DIRECTIONS = S.DIRECTIONS
# index of each direction's mirror image (left <-> right): the mirrored clip's logit for it is the
# original clip's logit for the direction itself
MIRRORED_DIRECTIONS = [DIRECTIONS.index(d.replace("left", "_").replace("right", "left").replace("_", "right"))
                       for d in DIRECTIONS]
MIN_MEMBERSHIP = 4.0  # a colour with less soft membership than this (pixels, summed over frames) is not queried


@dataclass
class ProbeConfig:
    """Sizes of the learned probe (defaults: the shipped one).

    Args:
        size: frame height and width the video network reads (inputs are resized to it).
        frames: frames read from the start of a clip (fewer: zero-padded, marked invalid).
        channels: widths of the scene and object CNNs' three stages.
        crop: side of the window (pixels at `size`) that follows the queried colour's centroid.
        hidden: width of the MLP over the pooled features.
        audio_bins: log-frequency bands of the audio input.
        audio_bins_per_octave: bands per octave (tones are 1/8 octave apart: a multiple of 8).
        audio_offset: bands below the lowest tone (220 Hz); band j is centred at 220 * 2^((j - offset) / bpo) Hz.
        audio_channels: width of the audio CNN.
        presence_threshold: probability above which a queried colour reads as an object.
        mirror: read each clip and its left-right mirror image and average the two readings' logits
            (the mirror's directions swapped back: every shape and size is its own mirror image, and
            no training clip was mirrored, so the second view is a second opinion, not a copy).
    """

    size: int = 64
    frames: int = 9
    channels: tuple[int, ...] = (16, 32, 64)
    crop: int = 32
    hidden: int = 128
    audio_bins: int = 120
    audio_bins_per_octave: int = 24
    audio_offset: int = 21
    audio_channels: int = 32
    presence_threshold: float = 0.5
    mirror: bool = False

    def __post_init__(self) -> None:
        self.channels = tuple(self.channels)
        for name in ("size", "frames", "crop", "hidden", "audio_bins", "audio_bins_per_octave", "audio_offset", "audio_channels"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise ConfigError(f"probe config: {name} must be an integer, got {v!r}")
            setattr(self, name, int(v))
        if not 16 <= self.size <= 256 or self.size % 16:
            raise ConfigError(f"probe config: size must be a multiple of 16 in 16..256, got {self.size}")
        if not 8 <= self.crop <= self.size or self.crop % 8:
            raise ConfigError(f"probe config: crop must be a multiple of 8 in 8..size, got {self.crop}")
        if not 2 <= self.frames <= 64:
            raise ConfigError(f"probe config: frames must be in 2..64, got {self.frames}")
        if len(self.channels) != 3 or any(isinstance(c, bool) or not isinstance(c, int) or c < 4 or c % 4 for c in self.channels):
            raise ConfigError(f"probe config: channels must be 3 positive multiples of 4, got {self.channels}")
        if self.hidden < 8 or self.audio_channels < 4:
            raise ConfigError("probe config: hidden must be >= 8 and audio_channels >= 4")
        if self.audio_bins_per_octave < 8 or self.audio_bins_per_octave % 8:
            raise ConfigError(f"probe config: audio_bins_per_octave must be a multiple of 8, got {self.audio_bins_per_octave}")
        if self.audio_offset < 0 or self.tone_bins[-1] >= self.audio_bins:
            raise ConfigError(f"probe config: the tones need bands {self.tone_bins[0]}..{self.tone_bins[-1]}, "
                              f"but audio_offset={self.audio_offset}, audio_bins={self.audio_bins}")
        if not isinstance(self.mirror, bool):
            raise ConfigError(f"probe config: mirror must be true or false, got {self.mirror!r}")
        if not 0.0 < self.presence_threshold < 1.0:
            raise ConfigError(f"probe config: presence_threshold must be in (0, 1), got {self.presence_threshold}")

    @property
    def time_steps(self) -> int:
        """Frames left after the one temporal stride of 2 (padding 1, kernel 3)."""
        return (self.frames - 1) // 2 + 1

    @property
    def tone_bins(self) -> list[int]:
        """The band of each of the 24 tones (order of readback.TONES: k = shape * 6 + colour)."""
        step = self.audio_bins_per_octave // 8
        return [self.audio_offset + step * k for k in range(len(TONES))]

    def band_centres(self) -> np.ndarray:
        """(audio_bins,) centre frequencies in Hz."""
        j = np.arange(self.audio_bins, dtype=np.float64)
        return 220.0 * 2.0 ** ((j - self.audio_offset) / self.audio_bins_per_octave)


# ------------------------------------------------------------------------------------------ inputs
def _nearest_palette_table(steps: int = 3600) -> torch.Tensor:
    """(steps,) palette index of the hue nearest to each 360/steps-degree step (circular distance)."""
    hues = np.arange(steps) * 360.0 / steps
    palette = np.asarray([S._PALETTE_HUE[c] for c in COLOURS])
    dist = np.abs((hues[:, None] - palette[None] + 180.0) % 360.0 - 180.0)
    return torch.from_numpy(dist.argmin(1))


_NEAREST = _nearest_palette_table()


def colour_index(video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 3, T, H, W) RGB in [0, 1] -> (palette index of the nearest hue (B, T, H, W) long,
    saturation weight clip((saturation - 0.15) / 0.6, 0, 1) (B, T, H, W)): the rule of
    readback._colour_weight and shapes.colour_tracks (hue looked up at 0.1 degree steps)."""
    mx, mn = video.amax(1), video.amin(1)  # (B, T, H, W)
    sat = (mx - mn) / mx.clamp_min(1e-6)
    weight = ((sat - 0.15) / 0.6).clamp(0.0, 1.0)
    r, g, b = video.unbind(1)
    hue = torch.rad2deg(torch.atan2(math.sqrt(3) * (g - b), 2 * r - g - b)) % 360.0
    steps = len(_NEAREST)
    idx = _NEAREST[(hue * (steps / 360.0)).long().clamp(0, steps - 1)]
    return idx, weight


def colour_membership(video: torch.Tensor) -> torch.Tensor:
    """(B, 3, T, H, W) RGB in [0, 1] -> (B, 6, T, H, W) soft membership of each palette colour."""
    idx, weight = colour_index(video)
    return torch.zeros(idx.shape[0], len(COLOURS), *idx.shape[1:]).scatter_(1, idx[:, None], weight[:, None])


def video_input(video: torch.Tensor, membership: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Assemble the network input from RGB (B, 3, F, S, S) in [0, 1], the queried colour's
    membership (B, F, S, S) and frame validity (B, F) -> (B, 5, F, S, S)."""
    b, _, f, h, w = video.shape
    v = valid.to(video)[:, None, :, None, None]
    return torch.cat([(video * 2 - 1) * v, membership[:, None] * v, v.expand(b, 1, f, h, w)], 1)


def frames_tensor(video: np.ndarray | torch.Tensor, config: ProbeConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (T, H, W, 3) frames -> ((1, 3, F, S, S) float in [0, 1], (1, F) validity): the first
    `frames` frames, resized to `size` (bilinear, antialiased), zero-padded when T < frames."""
    v = torch.as_tensor(np.asarray(video))
    if v.dim() != 4 or v.shape[-1] != 3 or v.shape[0] < 1:
        raise InputError(f"probe: expected uint8 frames (T, H, W, 3), got shape {tuple(v.shape)}")
    x = v[: config.frames].permute(3, 0, 1, 2).float().div(255.0)  # (3, T, H, W)
    t = x.shape[1]
    if x.shape[-2:] != (config.size, config.size):
        x = F.interpolate(x.transpose(0, 1), size=(config.size, config.size), mode="bilinear",
                          antialias=True, align_corners=False).transpose(0, 1).clamp(0, 1)
    out = torch.zeros(1, 3, config.frames, config.size, config.size)
    out[0, :, :t] = x
    valid = torch.zeros(1, config.frames)
    valid[0, :t] = 1.0
    return out, valid


def band_power(audio: np.ndarray, sample_rate: int, config: ProbeConfig) -> np.ndarray:
    """(S,) audio -> (audio_bins,) log10 power per log-frequency band: the Hann-windowed power
    spectrum (a sine of amplitude A peaks at A^2 / 4), max-pooled over each band (edges halfway,
    in log frequency, between band centres; a band narrower than the FFT's resolution takes the
    nearest FFT bin)."""
    a = np.asarray(audio, np.float64).reshape(-1)
    if len(a) < 64:
        raise InputError(f"probe: audio of {len(a)} samples is too short (need >= 64)")
    win = np.hanning(len(a))
    p = np.abs(np.fft.rfft(a * win)) ** 2 / win.sum() ** 2
    df = sample_rate / len(a)
    centres = config.band_centres()
    half = 2.0 ** (0.5 / config.audio_bins_per_octave)
    out = np.full(config.audio_bins, -10.0)
    for j, fc in enumerate(centres):
        lo, hi = math.ceil(fc / half / df), math.floor(fc * half / df)
        if hi < lo:
            lo = hi = round(fc / df)
        if lo < len(p):
            out[j] = math.log10(float(p[lo : min(hi, len(p) - 1) + 1].max()) + 1e-10)
    return out


def audio_input(log_power: torch.Tensor) -> torch.Tensor:
    """(B, K) log10 band power -> (B, 2, K): relative to the loudest band, and absolute."""
    rel = (log_power - log_power.amax(1, keepdim=True)) / 4.0
    return torch.stack([rel, (log_power + 5.0) / 3.0], 1)


# ------------------------------------------------------------------------------------------ modules
class VideoLogits(NamedTuple):
    presence: torch.Tensor  # (B,)
    shape: torch.Tensor  # (B, 4)
    size: torch.Tensor  # (B, 3)
    direction: torch.Tensor  # (B, 8)


def _conv3d(cin: int, cout: int, stride: tuple[int, int, int]) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(cin, cout, 3, stride, 1), nn.GroupNorm(4, cout), nn.GELU())


def _conv2d(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(4, cout), nn.GELU())


def object_track(membership: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the queried colour is: membership (B, F, S, S), validity (B, F) -> (centres (B, F, 2)
    (x, y) pixels, mass (B, F) pixels). Two passes: the weighted centroid, then the centroid of the
    membership within S/4 of it (stray pixels far away do not pull it). Frames where the colour is
    not seen (mass < 1) take the mean centre of the frames where it is (the frame's centre if none)."""
    b, f, s, _ = membership.shape
    grid = torch.arange(s, dtype=membership.dtype)
    m = membership * valid[:, :, None, None]
    centre = torch.full((b, f, 2), (s - 1) / 2, dtype=m.dtype)
    for radius in (None, s / 4):
        if radius is not None:
            d2 = (grid[None, None, None, :] - centre[..., 0, None, None]) ** 2 + (grid[None, None, :, None] - centre[..., 1, None, None]) ** 2
            w = m * (d2 <= radius**2)
        else:
            w = m
        mass = w.sum((2, 3))
        cx = (w * grid[None, None, None, :]).sum((2, 3)) / mass.clamp_min(1e-6)
        cy = (w * grid[None, None, :, None]).sum((2, 3)) / mass.clamp_min(1e-6)
        seen = (mass >= 1.0).to(m.dtype)  # (B, F)
        fill_x = (cx * seen).sum(1, keepdim=True) / seen.sum(1, keepdim=True).clamp_min(1)
        fill_y = (cy * seen).sum(1, keepdim=True) / seen.sum(1, keepdim=True).clamp_min(1)
        none = seen.sum(1, keepdim=True) == 0
        fill_x = torch.where(none, torch.full_like(fill_x, (s - 1) / 2), fill_x)
        fill_y = torch.where(none, torch.full_like(fill_y, (s - 1) / 2), fill_y)
        centre = torch.stack([torch.where(seen > 0, cx, fill_x), torch.where(seen > 0, cy, fill_y)], -1)
    return centre, mass


def crop_frames(x: torch.Tensor, centre: torch.Tensor, crop: int) -> torch.Tensor:
    """(B, C, F, S, S) and centres (B, F, 2) -> (B * F, C, crop, crop) windows centred on the
    centres (bilinear, zeros outside the frame)."""
    b, c, f, s, _ = x.shape
    frames = x.transpose(1, 2).reshape(b * f, c, s, s)
    offs = torch.arange(crop, dtype=x.dtype) - (crop - 1) / 2
    px = centre[..., 0].reshape(-1, 1) + offs[None]  # (B * F, crop)
    py = centre[..., 1].reshape(-1, 1) + offs[None]
    gx, gy = (2 * px + 1) / s - 1, (2 * py + 1) / s - 1  # align_corners=False coordinates
    grid = torch.stack([gx[:, None, :].expand(-1, crop, -1), gy[:, :, None].expand(-1, -1, crop)], -1)
    return F.grid_sample(frames, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class VideoProbe(nn.Module):
    """(B, 5, F, S, S) -> VideoLogits for the queried colour (see the module docstring).

    Three views of the query, concatenated into one MLP: the scene (a 3D CNN over the clip at half
    resolution: motion, context), the object (a 2D CNN over a crop x crop window that follows the
    colour's centroid at full resolution: its silhouette, averaged over the frames where it is seen)
    and the centroid track itself (position and mass per frame: the first motion is the direction).
    """

    def __init__(self, config: ProbeConfig):
        super().__init__()
        c0, c1, c2 = config.channels
        self.crop = config.crop
        self.scene = nn.Sequential(
            _conv3d(5, c0, (1, 2, 2)),  # (c0, F, S/4, S/4) from the half-resolution clip
            _conv3d(c0, c1, (2, 2, 2)),  # (c1, F', S/8, S/8), F' = config.time_steps
            _conv3d(c1, c2, (1, 2, 2)),  # (c2, F', S/16, S/16)
        )
        self.object = nn.Sequential(
            _conv2d(5, c0, 1),  # (c0, crop, crop)
            _conv2d(c0, c1, 2),  # (c1, crop/2, crop/2)
            _conv2d(c1, c2, 2),  # (c2, crop/4, crop/4)
            _conv2d(c2, c2, 2),  # (c2, crop/8, crop/8)
            nn.Flatten(), nn.Linear(c2 * (config.crop // 8) ** 2, c2), nn.GELU(),  # position-aware: (c2,)
        )
        n_in = 2 * c2 * config.time_steps + 2 * c2 + 4 * config.frames
        self.mlp = nn.Sequential(nn.Linear(n_in, config.hidden), nn.GELU(), nn.Linear(config.hidden, config.hidden), nn.GELU())
        self.heads = nn.Linear(config.hidden, 1 + len(SHAPES) + len(SIZES) + len(DIRECTIONS))

    def forward(self, x: torch.Tensor) -> VideoLogits:
        b, _, f, s, _ = x.shape
        valid = x[:, 4, :, 0, 0]  # (B, F)
        # scene: mask-weighted mean and max over space, per time step
        h = self.scene(F.avg_pool3d(x, (1, 2, 2)))  # (B, c2, F', s', s')
        m = F.adaptive_avg_pool3d(x[:, 3:4], h.shape[2:])  # (B, 1, F', s', s')
        w = m / m.sum((3, 4), keepdim=True).clamp_min(1e-3)
        scene = torch.cat([(h * w).sum((3, 4)), h.amax((3, 4))], 1).flatten(1)  # (B, 2 c2 F')
        # object: crops that follow the centroid, mean and max over the frames where it is seen
        centre, mass = object_track(x[:, 3], valid)  # (B, F, 2), (B, F)
        seen = valid * (mass >= 1.0)  # (B, F)
        o = self.object(crop_frames(x, centre, self.crop)).view(b, f, -1)  # (B, F, c2)
        o_mean = (o * seen[..., None]).sum(1) / seen.sum(1, keepdim=True).clamp_min(1)
        o_max = (o - 1e4 * (1 - seen[..., None])).amax(1).clamp_min(-10.0)  # (B, c2); -10 if never seen
        # track: centre relative to the frame, log mass, seen flag
        track = torch.cat([(centre + 0.5) / s - 0.5, torch.log1p(mass)[..., None] / 6, seen[..., None]], -1)
        track = track * valid[..., None]  # (B, F, 4)
        out = self.heads(self.mlp(torch.cat([scene, o_mean, o_max, track.flatten(1)], 1)))  # (B, 16)
        i = np.cumsum([1, len(SHAPES), len(SIZES)])
        return VideoLogits(out[:, 0], out[:, i[0] : i[1]], out[:, i[1] : i[2]], out[:, i[2] :])


class AudioProbe(nn.Module):
    """(B, 2, K) band features -> (B, 24) tone logits (see the module docstring)."""

    def __init__(self, config: ProbeConfig):
        super().__init__()
        c = config.audio_channels
        self.convs = nn.Sequential(
            nn.Conv1d(2, c, 5, padding=2), nn.GELU(),
            nn.Conv1d(c, c, 5, padding=4, dilation=2), nn.GELU(),
            nn.Conv1d(c, c, 5, padding=8, dilation=4), nn.GELU(),
        )
        self.register_buffer("tone_bins", torch.tensor(config.tone_bins), persistent=False)
        self.local = nn.Linear(c, 1)  # shared over tones, read at each tone's band
        self.glob = nn.Linear(2 * c, len(TONES))  # from mean and max over bands

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.convs(x)  # (B, c, K)
        at_tones = h[:, :, self.tone_bins].transpose(1, 2)  # (B, 24, c)
        g = torch.cat([h.mean(2), h.amax(2)], 1)  # (B, 2c)
        return self.local(at_tones)[..., 0] + self.glob(g)  # (B, 24)


class Probe(nn.Module):
    """The video and audio probes, with the readback.py interface for evaluation."""

    def __init__(self, config: ProbeConfig | None = None):
        super().__init__()
        self.config = config or ProbeConfig()
        self.video = VideoProbe(self.config)
        self.audio = AudioProbe(self.config)

    # ------------------------------------------------------------------------------- reading
    @torch.no_grad()
    def object_logits(self, video: np.ndarray) -> tuple[list[str], VideoLogits | None]:
        """uint8 (T, H, W, 3) -> (the colours queried, their logits). Colours with less than
        MIN_MEMBERSHIP pixels of membership over the frames read are not queried."""
        x, valid = frames_tensor(video, self.config)
        memb = colour_membership(x)[0]  # (6, F, S, S)
        colours = [c for k, c in enumerate(COLOURS) if float(memb[k].sum()) >= MIN_MEMBERSHIP]
        if not colours:
            return [], None
        idx = [COLOURS.index(c) for c in colours]
        n = len(idx)
        inp = video_input(x.expand(n, -1, -1, -1, -1), memb[idx], valid.expand(n, -1))
        if self.config.mirror:
            inp = torch.cat([inp, inp.flip(-1)])
        was = self.training
        self.eval()
        out = self.video(inp)
        self.train(was)
        if self.config.mirror:
            out = VideoLogits(*((t[:n] + t[n:, MIRRORED_DIRECTIONS] if name == "direction" else t[:n] + t[n:]) / 2
                                for name, t in zip(VideoLogits._fields, out, strict=True)))
        return colours, out

    def read_objects(self, video: np.ndarray) -> dict[str, ObjectReading]:
        """uint8 (T, H, W, 3) frames -> {colour: ObjectReading} for every colour read as an object
        (direction None for a single frame)."""
        colours, out = self.object_logits(video)
        if out is None:
            return {}
        moving = len(video) >= 2
        res = {}
        for i, c in enumerate(colours):
            if float(torch.sigmoid(out.presence[i])) > self.config.presence_threshold:
                res[c] = ObjectReading(c, SHAPES[int(out.shape[i].argmax())], SIZES[int(out.size[i].argmax())],
                                       DIRECTIONS[int(out.direction[i].argmax())] if moving else None)
        return res

    @torch.no_grad()
    def tone_logits(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """(S,) or (C, S) audio (channels mixed) -> (24,) tone logits (order of readback.TONES)."""
        a = np.asarray(audio, np.float64)
        a = a.reshape(-1, a.shape[-1]).mean(0)
        lp = torch.from_numpy(band_power(a, sample_rate, self.config)).float()[None]
        was = self.training
        self.eval()
        out = self.audio(audio_input(lp))[0].numpy()
        self.train(was)
        return out

    def read_tones(self, audio: np.ndarray, sample_rate: int, n: int) -> set[tuple[str, str]]:
        """The n (shape, colour) tones the probe finds most likely in the audio."""
        return {TONES[i] for i in np.argsort(-self.tone_logits(audio, sample_rate))[:n]}

    def with_mirror(self, mirror: bool) -> Probe:
        """A copy of this probe that reads with (or without) the mirror image (ProbeConfig.mirror)."""
        from dataclasses import replace

        other = Probe(replace(self.config, mirror=mirror))
        other.load_state_dict(self.state_dict())
        return other.eval()

    # ------------------------------------------------------------------------------- files
    def save_pretrained(self, directory: str | Path, *, dtype: torch.dtype | None = None) -> Path:
        from videopoet.checkpoint import save_model_dir
        from videopoet.config import to_dict

        return save_model_dir(directory, {"kind": "probe", **to_dict(self.config)}, self.state_dict(), dtype=dtype)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> Probe:
        from videopoet.checkpoint import load_model_dir, load_state_strict
        from videopoet.config import from_dict

        cfg, state = load_model_dir(directory, kind="probe")
        kind = cfg.pop("kind", "probe")
        if kind != "probe":
            raise ConfigError(f"{directory}: holds a {kind!r} model, expected a probe")
        model = cls(from_dict(ProbeConfig, cfg, where=f"{directory}/config.json"))
        load_state_strict(model, state, where=str(directory))
        return model.eval()


_LOADED: dict[str, Probe] = {}


def load_probe(name: str | Path = "learned") -> Probe:
    """"learned": the shipped probe (videopoet/assets/probe); otherwise a probe directory. Cached."""
    key = str(name)
    if key not in _LOADED:
        if key == "learned":
            from videopoet.assets import asset_dir

            _LOADED[key] = Probe.from_pretrained(asset_dir("probe"))
        else:
            _LOADED[key] = Probe.from_pretrained(Path(key))
    return _LOADED[key]


def readers(probe: str | Path = "hand"):
    """(read_objects, read_tones) of the hand-written probes ("hand"), the shipped learned probe
    ("learned") or a probe directory."""
    if str(probe) == "hand":
        from videopoet.eval import readback

        return readback.read_objects, readback.read_tones
    p = load_probe(probe)
    return p.read_objects, p.read_tones
