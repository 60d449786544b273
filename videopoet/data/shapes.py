"""The shapes benchmark: seeded, captioned audiovisual clips with exact ground truth.

Every task (tokenizers, text/image/audio-to-video, stylization, video-to-audio, long video) can be
trained and scored on a CPU in minutes on these clips, because everything that makes a clip is known.

A clip is one or more objects (shape x colour x size) that move in one of 8 directions at one of two
speeds, bounce off the frame edges, over a textured background; optionally the camera pans and a
grey bar in front of the scene occludes part of it. Design choices:

- **Deterministic.** Clip `index` of generator `seed` is drawn from `np.random.default_rng([seed,
  index])`, so a clip does not depend on which other clips were made, or in what order.
- **Exact motion in seconds.** Positions are a closed form (constant velocity folded into the
  allowed interval), so bounce times are exact, and frames, flow and audio all come from the same
  formula. Speeds are in frame-sizes per second and frame k shows time k / fps, so `fps` only
  samples the scene: the same (seed, index) at 8 and 16 fps is the same motion. Only bounces in
  (0, (T-1)/fps] are events (visible in the frames); the tone plays on while an object is hidden.
- **Image-space physics.** Objects move and bounce in image coordinates; a camera pan only moves the
  background (an analytic, periodic texture, so any sub-pixel offset is exact). The occluding bar is
  fixed to the camera: its flow is zero.
- **Antialiased rendering** from signed distances (coverage = clip(0.5 - d, 0, 1)), vectorized over
  frames; objects have a radial shading (a highlight at the top-left) that moves with them, so
  flow is checkable inside an object. Shapes of one size have equal area; each is centred on its
  centroid, so the rendered centroid is the recorded position.
- **Audio tied to the picture** (mono, default 16 kHz): each object hums a sine whose pitch encodes
  its (shape, colour) -- `tone_frequency` -- and whose loudness encodes its size; every bounce is a
  short damped 3.2 kHz click starting at the bounce time (above every tone, so a high-pass finds it).
- **Captions** state the attributes in a fixed grammar that `parse_caption` inverts, e.g.
  "a small red circle moves slowly left and bounces, the camera pans right, a gray bar is in front".

Coordinates: positions are (x, y) = (column, row) in pixels, pixel centres at integers (the image
spans [-0.5, W-0.5]). Ground truth per clip (`ShapesClip`):
  positions (T, N, 2) float32 -- object centres;
  depth     (T, H, W) float32 -- distance of the front-most layer: 1.0 background, objects in
                                 [0.35, 0.85] (nearer is drawn on top), 0.2 the occluding bar;
  flow      (T, 2, H, W) float32 -- forward flow (dx, dy) in pixels: the pixel at p in frame t is at
                                 p + flow[t, :, p] in frame t+1; the last entry is the motion to the
                                 frame that would follow the clip, so flow is aligned with frames;
  ids       (T, H, W) int8   -- front-most layer: -1 background, i for object i, -2 the bar;
  bounce_times per object, seconds.
depth, ids and flow are hard-edged: a pixel belongs to a layer where that layer's coverage >= 0.5.

Entry points: `make_clip(config, seed, index)` (= `render(sample_spec(...))`), `make_audio` (sound
and caption only, no frames), `ShapesDataset` (torch, in memory, clip-dataset items + ground truth),
`write_shapes(out_dir, num, ...)` (mp4 + npz + manifest.jsonl; the `videopoet data shapes`
command), `parse_caption`, `tone_frequency`, and audio
probes that read attributes back from sound (`dominant_frequency`, `nearest_tone`, `click_times`)
and from pictures (`colour_tracks`), to score generated clips.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from videopoet.errors import InputError

SHAPES = ("circle", "square", "triangle", "diamond")
COLOURS = ("red", "orange", "yellow", "green", "blue", "purple")
SIZES = ("small", "medium", "large")
DIRECTIONS = ("left", "right", "up", "down", "up-left", "up-right", "down-left", "down-right")
SPEEDS = ("slowly", "quickly")
PANS = ("left", "right", "up", "down")

# RGB in [0, 1]; all strongly saturated (the background and the bar are not), so colour is separable.
COLOUR_RGB = {
    "red": (0.90, 0.15, 0.15),
    "orange": (0.95, 0.55, 0.10),
    "yellow": (0.95, 0.90, 0.15),
    "green": (0.15, 0.75, 0.20),
    "blue": (0.15, 0.35, 0.95),
    "purple": (0.65, 0.20, 0.90),
}
BAR_RGB = (0.82, 0.82, 0.82)
SIZE_RADIUS = {"small": 0.08, "medium": 0.12, "large": 0.16}  # equal-area radius, fraction of size
SPEED = {"slowly": 0.2, "quickly": 0.44}  # frame sizes per second (1.6 / 3.5 px a frame at 64 px, 8 fps)
PAN_SPEED = 0.12  # camera pan, frame sizes per second
START_MARGIN_S = 0.125  # no bounce in the first 1/8 s: the first frames move in the captioned direction
DIRECTION_VEC = {  # unit vectors in image coordinates (y down)
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
    "up-left": (-math.sqrt(0.5), -math.sqrt(0.5)),
    "up-right": (math.sqrt(0.5), -math.sqrt(0.5)),
    "down-left": (-math.sqrt(0.5), math.sqrt(0.5)),
    "down-right": (math.sqrt(0.5), math.sqrt(0.5)),
}
PAN_VEC = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
SIZE_AMPLITUDE = {"small": 0.12, "medium": 0.18, "large": 0.24}
CLICK_HZ = 3200.0
CLICK_AMPLITUDE = 0.35
CLICK_DECAY_S = 0.003
BAR_DEPTH = 0.2
BACKGROUND_DEPTH = 1.0

# Shape geometry, in units of the equal-area radius r (area = pi r^2 for every shape).
_SQUARE_HALF = math.sqrt(math.pi) / 2  # half side
_DIAMOND_HALF = math.sqrt(math.pi / 2)  # centre-to-vertex
_TRI_SIDE = math.sqrt(4 * math.pi / math.sqrt(3))
_TRI_IN = _TRI_SIDE / (2 * math.sqrt(3))  # inradius; circumradius = 2 * inradius
# (left, right, top, bottom) extent of each shape around its centroid, in units of r.
_EXTENTS = {
    "circle": (1.0, 1.0, 1.0, 1.0),
    "square": (_SQUARE_HALF,) * 4,
    "diamond": (_DIAMOND_HALF,) * 4,
    "triangle": (_TRI_SIDE / 2, _TRI_SIDE / 2, 2 * _TRI_IN, _TRI_IN),  # points up
}


def tone_frequency(shape: str, colour: str) -> float:
    """Pitch (Hz) an object hums: 220 Hz * 2^(k/8), k = shape index * 6 + colour index (220..1616 Hz).

    Neighbouring (shape, colour) pairs are 1.5 semitones (9%) apart; the highest tone stays well
    below the 3.2 kHz bounce click.
    """
    k = SHAPES.index(shape) * len(COLOURS) + COLOURS.index(colour)
    return 220.0 * 2.0 ** (k / 8.0)


# --------------------------------------------------------------------------------------- config
@dataclass
class ShapesConfig:
    """What the generator draws from. Validated on construction (bad values raise InputError).

    Args:
        size: frame height and width in pixels (32..128).
        frames: frames per clip (>= 1; any length for long-video tests).
        fps: frames per second (0..240).
        sample_rate: audio samples per second (8000..192000).
        min_objects: fewest objects per clip.
        max_objects: most objects per clip (<= 4).
        pan_prob: probability that the camera pans.
        occlusion_prob: probability that a grey bar occludes part of the scene.
    """

    size: int = 64
    frames: int = 17
    fps: float = 8.0
    sample_rate: int = 16000
    min_objects: int = 1
    max_objects: int = 2
    pan_prob: float = 0.3
    occlusion_prob: float = 0.2

    def __post_init__(self) -> None:
        for name in ("size", "frames", "sample_rate", "min_objects", "max_objects"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise InputError(f"{name} must be an integer, got {value!r}")
            setattr(self, name, int(value))
        if not 32 <= self.size <= 128:
            raise InputError(f"size must be an integer in 32..128, got {self.size!r}")
        if self.frames < 1:
            raise InputError(f"frames must be an integer >= 1, got {self.frames!r}")
        if not (isinstance(self.fps, (int, float, np.number)) and 0 < self.fps <= 240):
            raise InputError(f"fps must be in (0, 240], got {self.fps!r}")
        self.fps = float(self.fps)
        if not 8000 <= self.sample_rate <= 192000:  # 8 kHz: the 3.2 kHz bounce click must fit
            raise InputError(f"sample_rate must be in 8000..192000 Hz, got {self.sample_rate!r}")
        if not 1 <= self.min_objects <= self.max_objects <= 4:
            raise InputError(
                f"need 1 <= min_objects <= max_objects <= 4, got min_objects={self.min_objects!r}, "
                f"max_objects={self.max_objects!r}"
            )
        for name in ("pan_prob", "occlusion_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InputError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")

    @property
    def num_samples(self) -> int:
        """Audio samples per clip: round(frames / fps * sample_rate)."""
        return round(self.frames / self.fps * self.sample_rate)


# --------------------------------------------------------------------------------------- specs
@dataclass(frozen=True)
class ObjectSpec:
    shape: str
    colour: str
    size: str
    direction: str
    speed: str
    depth: float  # distance: nearer (smaller) objects are drawn on top
    start: tuple[float, float]  # (x, y) centre at frame 0, pixels
    velocity: tuple[float, float]  # (vx, vy) pixels per second before any bounce

    def attributes(self) -> dict[str, str]:
        return {k: getattr(self, k) for k in ("shape", "colour", "size", "direction", "speed")}


@dataclass(frozen=True)
class ClipSpec:
    """Everything needed to render one clip (drawn by `sample_spec`, or written by hand in tests)."""

    config: ShapesConfig
    objects: tuple[ObjectSpec, ...]
    pan: str | None = None  # camera pan direction
    bar: tuple[str, float, float] | None = None  # (orientation "vertical"/"horizontal", centre, width) px
    # Background: tint_rgb * (1 + sum of gratings (kx, ky in cycles/pixel, phase, relative amplitude)).
    # One near-grey tint times a luminance texture: the background's saturation is that of the tint
    # (< 0.12) everywhere, so the saturated objects always stand out from it.
    tint_rgb: tuple[float, float, float] = (0.45, 0.45, 0.45)
    gratings: tuple[tuple[float, float, float, float], ...] = ()


def _radius(cfg: ShapesConfig, size: str) -> float:
    return SIZE_RADIUS[size] * cfg.size


def _bounds(cfg: ShapesConfig, obj_shape: str, size: str) -> tuple[float, float, float, float]:
    """Allowed centre interval (x_lo, x_hi, y_lo, y_hi): the shape's bounding box stays in the frame."""
    r = _radius(cfg, size)
    left, right, top, bottom = (e * r for e in _EXTENTS[obj_shape])
    lo, hi = -0.5, cfg.size - 0.5
    return lo + left, hi - right, lo + top, hi - bottom


def sample_spec(config: ShapesConfig, seed: int, index: int) -> ClipSpec:
    """Draw clip `index` of generator `seed` (independent of every other index)."""
    if index < 0:
        raise InputError(f"index must be >= 0, got {index}")
    if seed < 0:
        raise InputError(f"seed must be >= 0, got {seed}")
    rng = np.random.default_rng([int(seed), int(index)])
    cfg = config
    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    depths = np.sort(rng.uniform(0.35, 0.85, size=n))[::-1]  # far to near: object i+1 is in front of i
    objects = []
    for i in range(n):
        shape = SHAPES[rng.integers(len(SHAPES))]
        colour = COLOURS[rng.integers(len(COLOURS))]
        size = SIZES[rng.integers(len(SIZES))]
        direction = DIRECTIONS[rng.integers(len(DIRECTIONS))]
        speed = SPEEDS[rng.integers(len(SPEEDS))]
        v = SPEED[speed] * cfg.size
        vel = (v * DIRECTION_VEC[direction][0], v * DIRECTION_VEC[direction][1])
        x_lo, x_hi, y_lo, y_hi = _bounds(cfg, shape, size)
        # start at least START_MARGIN_S of travel from the wall it heads for, so the first motion
        # is the captioned direction (a margin in seconds keeps `fps` a pure sampling rate)
        x_lo, x_hi = x_lo + max(0.0, -vel[0]) * START_MARGIN_S, x_hi - max(0.0, vel[0]) * START_MARGIN_S
        y_lo, y_hi = y_lo + max(0.0, -vel[1]) * START_MARGIN_S, y_hi - max(0.0, vel[1]) * START_MARGIN_S
        start = (float(rng.uniform(x_lo, x_hi)), float(rng.uniform(y_lo, y_hi)))
        objects.append(
            ObjectSpec(shape, colour, size, direction, speed, float(round(depths[i], 4)), start, vel)
        )
    pan = PANS[rng.integers(len(PANS))] if rng.random() < cfg.pan_prob else None
    bar = None
    if rng.random() < cfg.occlusion_prob:
        orientation = "vertical" if rng.random() < 0.5 else "horizontal"
        bar = (orientation, float(rng.uniform(0.3, 0.7) * cfg.size), max(3.0, 0.12 * cfg.size))
    grey = rng.uniform(0.38, 0.55)
    tint = tuple(float(grey * t) for t in 1.0 + rng.uniform(-0.06, 0.06, size=3))
    gratings = []
    for _ in range(4):
        theta = rng.uniform(0, 2 * math.pi)
        cycles = rng.integers(1, 5) / cfg.size  # cycles per pixel
        gratings.append(
            (
                float(cycles * math.cos(theta)),
                float(cycles * math.sin(theta)),
                float(rng.uniform(0, 2 * math.pi)),
                float(rng.uniform(0.05, 0.10)),
            )
        )
    return ClipSpec(cfg, tuple(objects), pan, bar, tint, tuple(gratings))


# --------------------------------------------------------------------------------------- motion
def _fold(start: float, v: float, lo: float, hi: float, t: np.ndarray) -> np.ndarray:
    """Position at times `t` (s) of a point moving at v px/s, reflected inside [lo, hi]."""
    length = hi - lo
    u = np.mod(start - lo + v * t, 2 * length)
    return lo + np.where(u <= length, u, 2 * length - u)


def _hits(start: float, v: float, lo: float, hi: float, t_max: float) -> list[float]:
    """Times (s) in (0, t_max] at which the folded motion reaches lo or hi."""
    if v == 0:
        return []
    length = hi - lo
    u0 = start - lo
    out = []
    j = math.floor(u0 / length) + 1 if v > 0 else math.ceil(u0 / length) - 1
    step = 1 if v > 0 else -1
    while True:
        t = (j * length - u0) / v
        if t > t_max + 1e-9:
            return out
        if t > 1e-9:
            out.append(t)
        j += step


def object_motion(spec: ClipSpec, num_frames: int) -> tuple[np.ndarray, list[list[float]]]:
    """Centres (num_frames, N, 2) at frames 0..num_frames-1 and bounce times (s) in (0, (T-1)/fps]."""
    cfg = spec.config
    t = np.arange(num_frames, dtype=np.float64) / cfg.fps  # frame k shows time k / fps
    pos = np.zeros((num_frames, len(spec.objects), 2), np.float64)
    bounces = []
    for i, o in enumerate(spec.objects):
        x_lo, x_hi, y_lo, y_hi = _bounds(cfg, o.shape, o.size)
        pos[:, i, 0] = _fold(o.start[0], o.velocity[0], x_lo, x_hi, t)
        pos[:, i, 1] = _fold(o.start[1], o.velocity[1], y_lo, y_hi, t)
        t_last = (cfg.frames - 1) / cfg.fps
        hits = _hits(o.start[0], o.velocity[0], x_lo, x_hi, t_last)
        hits += _hits(o.start[1], o.velocity[1], y_lo, y_hi, t_last)
        bounces.append(sorted(float(h) for h in hits))
    return pos, bounces


# --------------------------------------------------------------------------------------- rendering
def _signed_distance(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Signed distance (px, negative inside) to a shape of equal-area radius r centred at the origin.

    Polygons use the max of their edge half-plane distances: exact on and inside the boundary, which
    is all the 1-pixel antialiasing ramp needs.
    """
    if shape == "circle":
        return np.sqrt(dx * dx + dy * dy) - r
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) - _SQUARE_HALF * r
    if shape == "diamond":
        return (np.abs(dx) + np.abs(dy) - _DIAMOND_HALF * r) * math.sqrt(0.5)
    if shape == "triangle":  # points up (negative y); edge normals: down, and +-120 degrees from it
        s = math.sqrt(3) / 2
        d = np.maximum(dy, np.maximum(s * dx - 0.5 * dy, -s * dx - 0.5 * dy))
        return d - _TRI_IN * r
    raise InputError(f"unknown shape {shape!r} (choose from {', '.join(SHAPES)})")


@dataclass
class ShapesClip:
    """A rendered clip with its ground truth (formats in the module docstring)."""

    video: np.ndarray  # (T, H, W, 3) uint8
    audio: np.ndarray  # (1, S) float32 in [-1, 1]
    caption: str
    attributes: dict[str, Any]  # JSON-able: objects (attributes, depth, tone, bounce times), pan, bar
    positions: np.ndarray  # (T, N, 2) float32
    depth: np.ndarray  # (T, H, W) float32
    flow: np.ndarray  # (T, 2, H, W) float32
    ids: np.ndarray  # (T, H, W) int8
    bounce_times: list[list[float]] = field(default_factory=list)  # per object, seconds
    fps: float = 8.0
    sample_rate: int = 16000

    @property
    def all_bounce_times(self) -> list[float]:
        return sorted(t for ts in self.bounce_times for t in ts)


def _background(spec: ClipSpec, offsets: np.ndarray) -> np.ndarray:
    """Background frames (T, H, W, 3) float32: the world texture seen with camera offsets (T, 2)."""
    s = spec.config.size
    grid = np.arange(s, dtype=np.float64)
    lum = np.ones((len(offsets), s, s), np.float32)  # (T, H, W) relative luminance
    for kx, ky, phase, amp in spec.gratings:
        px = 2 * math.pi * kx * (grid[None, None, :] + offsets[:, 0, None, None]) + phase  # (T, 1, W)
        py = 2 * math.pi * ky * (grid[None, :, None] + offsets[:, 1, None, None])  # (T, H, 1)
        # cos(px + py) = cos px cos py - sin px sin py: transcendentals on rows and columns only
        cx, sx = (amp * np.cos(px)).astype(np.float32), (amp * np.sin(px)).astype(np.float32)
        cy, sy = np.cos(py).astype(np.float32), np.sin(py).astype(np.float32)
        lum += cx * cy - sx * sy
    return lum[..., None] * np.asarray(spec.tint_rgb, np.float32)


def _render_frames(
    spec: ClipSpec, pos: np.ndarray, pan: np.ndarray, frames: range
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Frames `frames` (a range of F indices): video uint8 (F, H, W, 3), depth (F, H, W), ids (F, H, W),
    flow (F, 2, H, W). `pos` (T + 1, N, 2) are centres at every frame and the one after the clip;
    `pan` (2,) is the camera velocity in pixels per frame."""
    cfg, s = spec.config, spec.config.size
    idx = np.arange(frames.start, frames.stop)
    f_len = len(idx)
    img = _background(spec, idx[:, None] * pan[None, :])  # (F, H, W, 3); camera at k * pan
    depth = np.full((f_len, s, s), BACKGROUND_DEPTH, np.float32)
    ids = np.full((f_len, s, s), -1, np.int8)
    flow = np.empty((f_len, 2, s, s), np.float32)
    flow[:, 0] = -pan[0]  # the background moves against the camera
    flow[:, 1] = -pan[1]
    grid = np.arange(s, dtype=np.float32)

    # Objects, far to near (spec order is far to near; sort anyway for hand-written specs).
    order = sorted(range(len(spec.objects)), key=lambda i: -spec.objects[i].depth)
    for i in order:
        o = spec.objects[i]
        r = _radius(cfg, o.size)
        p = pos[idx, i].astype(np.float32)  # (F, 2)
        dx = grid[None, None, :] - p[:, 0, None, None]  # (F, 1, W)
        dy = grid[None, :, None] - p[:, 1, None, None]  # (F, H, 1)
        dx, dy = np.broadcast_arrays(dx, dy)  # (F, H, W)
        cov = np.clip(0.5 - _signed_distance(o.shape, dx, dy, r), 0.0, 1.0)  # (F, H, W)
        touched = cov > 0  # shade and blend only the pixels the object covers (a few % of the frame)
        c, ox, oy = cov[touched], dx[touched], dy[touched]  # (P,)
        # lit from the top-left: brightness falls off with distance from a highlight point, so every
        # translation changes the pixels (flow is checkable inside the object)
        shade = 1.0 - 0.35 * np.clip(np.hypot(ox + 0.4 * r, oy + 0.4 * r) / (1.8 * r), 0.0, 1.0)  # (P,)
        colour = shade[:, None] * np.asarray(COLOUR_RGB[o.colour], np.float32)  # (P, 3)
        under = img[touched]  # (P, 3)
        img[touched] = under + c[:, None] * (colour - under)
        inside = cov >= 0.5
        ids[inside] = i
        depth[inside] = o.depth
        disp = (pos[idx + 1, i] - pos[idx, i]).astype(np.float32)  # (F, 2) motion to the next frame
        flow[:, 0][inside] = np.broadcast_to(disp[:, 0, None, None], inside.shape)[inside]
        flow[:, 1][inside] = np.broadcast_to(disp[:, 1, None, None], inside.shape)[inside]

    if spec.bar is not None:  # fixed to the camera: same place in every frame, zero flow
        orientation, centre, width = spec.bar
        cov1 = np.clip(0.5 - (np.abs(grid - centre) - width / 2), 0.0, 1.0)  # (W,) or (H,)
        cov = np.broadcast_to(
            cov1[None, None, :] if orientation == "vertical" else cov1[None, :, None], (f_len, s, s)
        )
        img += cov[..., None] * (np.asarray(BAR_RGB, np.float32) - img)
        inside = cov >= 0.5
        ids[inside] = -2
        depth[inside] = BAR_DEPTH
        flow[:, 0][inside] = 0.0
        flow[:, 1][inside] = 0.0
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8), depth, ids, flow


def render(spec: ClipSpec, *, chunk: int = 64) -> ShapesClip:
    """Render frames, audio and ground truth for `spec`, `chunk` frames at a time (bounded memory)."""
    cfg = spec.config
    t_len, s = cfg.frames, cfg.size
    pos_ext, bounces = object_motion(spec, t_len + 1)  # one extra frame for the last flow entry
    pan = np.asarray(PAN_VEC[spec.pan], np.float64) * PAN_SPEED * s / cfg.fps if spec.pan else np.zeros(2)
    video = np.empty((t_len, s, s, 3), np.uint8)
    depth = np.empty((t_len, s, s), np.float32)
    ids = np.empty((t_len, s, s), np.int8)
    flow = np.empty((t_len, 2, s, s), np.float32)
    for a in range(0, t_len, chunk):
        b = min(t_len, a + chunk)
        video[a:b], depth[a:b], ids[a:b], flow[a:b] = _render_frames(spec, pos_ext, pan, range(a, b))
    pos = pos_ext[:t_len]
    audio = _audio(spec, bounces)
    attributes = {
        "objects": [
            {
                **o.attributes(),
                "depth": o.depth,
                "tone_hz": round(tone_frequency(o.shape, o.colour), 3),
                "bounce_times": [round(b, 6) for b in bounces[i]],
            }
            for i, o in enumerate(spec.objects)
        ],
        "camera_pan": spec.pan,
        "occluder": None
        if spec.bar is None
        else {"orientation": spec.bar[0], "center": round(spec.bar[1], 3), "width": round(spec.bar[2], 3)},
        "size": s,
        "frames": t_len,
        "fps": cfg.fps,
        "sample_rate": cfg.sample_rate,
    }
    return ShapesClip(
        video,
        audio,
        caption_for(spec, bounces),
        attributes,
        pos.astype(np.float32),
        depth,
        flow,
        ids,
        bounces,
        cfg.fps,
        cfg.sample_rate,
    )


def _audio(spec: ClipSpec, bounces: list[list[float]]) -> np.ndarray:
    """(1, S) float32: one sine per object (pitch = shape/colour, loudness = size) + a click per bounce."""
    cfg = spec.config
    n = cfg.num_samples
    t = np.arange(n, dtype=np.float64) / cfg.sample_rate
    out = np.zeros(n, np.float64)
    for o in spec.objects:
        out += SIZE_AMPLITUDE[o.size] * np.sin(2 * math.pi * tone_frequency(o.shape, o.colour) * t)
    ramp = min(n // 2, int(0.01 * cfg.sample_rate))  # 10 ms fades: no click at the clip edges
    if ramp > 0:
        fade = 0.5 - 0.5 * np.cos(np.linspace(0, math.pi, ramp))
        out[:ramp] *= fade
        out[n - ramp :] *= fade[::-1]
    click_len = int(8 * CLICK_DECAY_S * cfg.sample_rate)
    tc = np.arange(click_len) / cfg.sample_rate
    click = CLICK_AMPLITUDE * np.exp(-tc / CLICK_DECAY_S) * np.sin(2 * math.pi * CLICK_HZ * tc)
    for tb in (b for bs in bounces for b in bs):
        start = round(tb * cfg.sample_rate)
        if start < n:
            end = min(n, start + click_len)
            out[start:end] += click[: end - start]
    peak = np.abs(out).max(initial=0.0)
    if peak > 0.95:
        out *= 0.95 / peak
    return out.astype(np.float32)[None, :]


# --------------------------------------------------------------------------------------- audio probes
def dominant_frequency(audio: np.ndarray, sample_rate: int) -> float:
    """Frequency (Hz) of the strongest spectral peak of (S,) or (C, S) audio (Hann window, channels mixed)."""
    a = np.asarray(audio, np.float64).reshape(-1, np.shape(audio)[-1]).mean(0)
    spec = np.abs(np.fft.rfft(a * np.hanning(len(a))))
    spec[0] = 0.0
    return float(np.fft.rfftfreq(len(a), 1.0 / sample_rate)[spec.argmax()])


def nearest_tone(frequency: float) -> tuple[str, str]:
    """The (shape, colour) whose tone is nearest to `frequency` in pitch (audio -> attributes)."""
    pairs = [(s, c) for s in SHAPES for c in COLOURS]
    return min(pairs, key=lambda p: abs(math.log(tone_frequency(*p) / max(frequency, 1e-6))))


def click_times(
    audio: np.ndarray, sample_rate: int, *, threshold: float = 0.1, min_gap: float = 0.02
) -> np.ndarray:
    """Onset times (s) of bounce clicks in (S,) or (C, S) audio: high-pass above every tone
    (2.6 kHz), then peaks of the magnitude at least `threshold` high and `min_gap` s apart."""
    from scipy import signal

    env = np.abs(click_band(audio, sample_rate))
    peaks, _ = signal.find_peaks(env, height=threshold, distance=max(1, int(min_gap * sample_rate)))
    return peaks / sample_rate


def click_band(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """(S,) float64: (S,) or (C, S) audio, channels mixed, high-passed above every tone (2.6 kHz,
    6th-order Butterworth, zero phase): what `click_times` finds its peaks in."""
    from scipy import signal

    a = np.asarray(audio, np.float64).reshape(-1, np.shape(audio)[-1]).mean(0)
    sos = signal.butter(6, 2600.0, "highpass", fs=sample_rate, output="sos")
    return signal.sosfiltfilt(sos, a)


# --------------------------------------------------------------------------------------- video probe
def _hue(rgb: np.ndarray) -> np.ndarray:
    """Hue in degrees [0, 360) of (..., 3) RGB."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return np.degrees(np.arctan2(math.sqrt(3) * (g - b), 2 * r - g - b)) % 360.0


_PALETTE_HUE = {c: float(_hue(np.asarray(rgb))) for c, rgb in COLOUR_RGB.items()}


def colour_tracks(video: np.ndarray, *, min_pixels: float | None = None) -> dict[str, np.ndarray]:
    """Where each palette colour is in uint8 (T, H, W, 3) frames (video -> attributes and motion).

    Pixels are weighted by saturation (background, bar: ~0; object: 1; antialiased rims in between)
    and assigned to the palette colour of nearest hue (mixing with the near-grey background keeps the
    hue). Returns {colour: (T, 2) float (x, y) centroid, NaN in frames with less than `min_pixels` of
    weight (default: a quarter of a small object, so antialiased mixes where two objects touch do not
    count)} for every colour seen in some frame; objects of the same colour share one track.
    """
    from scipy import ndimage

    f = np.asarray(video, np.float32) / 255.0  # (T, H, W, 3)
    if min_pixels is None:
        min_pixels = 0.25 * math.pi * (SIZE_RADIUS["small"] * min(f.shape[1:3])) ** 2
    mx, mn = f.max(-1), f.min(-1)
    sat = (mx - mn) / np.maximum(mx, 1e-6)  # (T, H, W)
    weight = np.clip((sat - 0.15) / (0.75 - 0.15), 0.0, 1.0)
    names = list(_PALETTE_HUE)
    dist = np.abs((_hue(f)[..., None] - np.asarray([_PALETTE_HUE[c] for c in names]) + 180.0) % 360.0 - 180.0)
    nearest = dist.argmin(-1)  # (T, H, W) palette index
    ys, xs = np.mgrid[0 : f.shape[1], 0 : f.shape[2]]
    tracks = {}
    for k, name in enumerate(names):
        w = weight * (nearest == k)  # (T, H, W)
        total = w.sum((1, 2))  # (T,)
        # an object has a core: colour-k pixels whose 3x3 neighbourhood is colour k too (a 1-pixel
        # antialiased seam where two objects overlap mixes their hues into a third colour, no core)
        core = ndimage.binary_erosion(w > 0.5, structure=np.ones((1, 3, 3), bool)).any((1, 2))  # (T,)
        total[~core] = 0.0
        if not (total >= min_pixels).any():
            continue
        with np.errstate(invalid="ignore", divide="ignore"):
            x = (w * xs).sum((1, 2)) / total
            y = (w * ys).sum((1, 2)) / total
        track = np.stack([x, y], -1)  # (T, 2)
        track[total < min_pixels] = np.nan
        tracks[name] = track
    return tracks


# --------------------------------------------------------------------------------------- captions
def caption_for(spec: ClipSpec, bounces: list[list[float]]) -> str:
    """The clip's caption: one clause per object, then the camera and the occluder (see parse_caption)."""
    clauses = []
    for o, b in zip(spec.objects, bounces, strict=True):
        clauses.append(
            f"a {o.size} {o.colour} {o.shape} moves {o.speed} {o.direction}" + (" and bounces" if b else "")
        )
    if spec.pan:
        clauses.append(f"the camera pans {spec.pan}")
    if spec.bar is not None:
        clauses.append("a gray bar is in front")
    return ", ".join(clauses)


_OBJECT_RE = re.compile(
    rf"^a ({'|'.join(SIZES)}) ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)}) moves ({'|'.join(SPEEDS)}) "
    rf"({'|'.join(DIRECTIONS)})( and bounces)?$"
)


def parse_caption(caption: str) -> dict[str, Any]:
    """Invert `caption_for`: {"objects": [{shape, colour, size, direction, speed, bounces}], "camera_pan",
    "occluder" (bool)}. Raises InputError on text outside the grammar."""
    objects, pan, bar = [], None, False
    for clause in caption.strip().split(", "):
        m = _OBJECT_RE.match(clause)
        if m:
            size, colour, shape, speed, direction, bounce = m.groups()
            objects.append(
                {
                    "shape": shape,
                    "colour": colour,
                    "size": size,
                    "direction": direction,
                    "speed": speed,
                    "bounces": bounce is not None,
                }
            )
        elif clause.startswith("the camera pans ") and clause[16:] in PANS:
            pan = clause[16:]
        elif clause == "a gray bar is in front":
            bar = True
        else:
            raise InputError(f"caption clause {clause!r} is not in the shapes grammar")
    return {"objects": objects, "camera_pan": pan, "occluder": bar}


def make_clip(config: ShapesConfig | None = None, seed: int = 0, index: int = 0) -> ShapesClip:
    """Sample and render clip `index` of generator `seed`."""
    return render(sample_spec(config or ShapesConfig(), seed, index))


def make_audio(config: ShapesConfig | None = None, seed: int = 0, index: int = 0) -> tuple[np.ndarray, str]:
    """Only the sound track (1, S) float32 and caption of clip `index` (no frames rendered): for audio work."""
    spec = sample_spec(config or ShapesConfig(), seed, index)
    _, bounces = object_motion(spec, 1)
    return _audio(spec, bounces), caption_for(spec, bounces)


def labels(attributes: dict[str, Any], max_objects: int) -> np.ndarray:
    """(max_objects, 5) int64 class indices (shape, colour, size, direction, speed); -1 rows pad."""
    out = np.full((max_objects, 5), -1, np.int64)
    for i, o in enumerate(attributes["objects"][:max_objects]):
        out[i] = (
            SHAPES.index(o["shape"]),
            COLOURS.index(o["colour"]),
            SIZES.index(o["size"]),
            DIRECTIONS.index(o["direction"]),
            SPEEDS.index(o["speed"]),
        )
    return out


def _config_from(config: ShapesConfig | None, options: dict[str, Any]) -> ShapesConfig:
    if config is None:
        return ShapesConfig(**options)
    return dataclasses.replace(config, **options) if options else config


# --------------------------------------------------------------------------------------- dataset
class ShapesDataset(Dataset):
    """In-memory shapes clips (rendered on access, deterministic in (seed, index)).

    Items use the clip-dataset format -- "video" (3, T, H, W) float in [-1, 1], "audio" (1, S) float in
    [-1, 1] with S = round(T / fps * sample_rate), "caption" str, "path" str ("shapes/SEED/INDEX") --
    plus, when `ground_truth` is on, keys that batch with the default collate:
      "labels"       (max_objects, 5) long: shape, colour, size, direction, speed indices (-1 pads);
      "positions"    (T, max_objects, 2) float: (x, y) centres in pixels (NaN pads);
      "depth"        (T, H, W) float; "flow" (T, 2, H, W) float; "ids" (T, H, W) long (module docstring);
      "bounce_counts" (T,) long: bounces in the interval (t-1, t] frames (always 0 at t = 0);
      "attributes"   str: JSON of the full attributes (exact bounce times, tones, pan, occluder).
    `clip(index)` returns the structured `ShapesClip` instead.

    Args:
        num: number of clips.
        config: generator settings (default ShapesConfig()); keyword `options` override its fields.
        seed: generator seed.
        ground_truth: add the ground-truth keys (off for plain tokenizer training: less to collate).
    """

    def __init__(
        self,
        num: int,
        config: ShapesConfig | None = None,
        *,
        seed: int = 0,
        ground_truth: bool = True,
        **options: Any,
    ):
        if isinstance(num, bool) or not isinstance(num, (int, np.integer)) or num <= 0:
            raise InputError(f"num must be a positive integer, got {num!r}")
        self.num = int(num)
        self.config = _config_from(config, options)
        self.seed = int(seed)
        self.ground_truth = ground_truth

    def __len__(self) -> int:
        return self.num

    def clip(self, index: int) -> ShapesClip:
        if not -self.num <= index < self.num:
            raise IndexError(f"index {index} out of range for {self.num} clips")
        return make_clip(self.config, self.seed, index % self.num)

    def __getitem__(self, index: int) -> dict[str, Any]:
        import torch

        from videopoet.data.media import audio_to_tensor, video_to_tensor

        index = int(index)
        c = self.clip(index)
        item: dict[str, Any] = {
            "video": video_to_tensor(c.video),  # (3, T, H, W) in [-1, 1]
            "audio": audio_to_tensor(c.audio),  # (1, S)
            "caption": c.caption,
            "path": f"shapes/{self.seed}/{index % self.num:06d}",
        }
        if self.ground_truth:
            m = self.config.max_objects
            t_len = c.video.shape[0]
            pos = np.full((t_len, m, 2), np.nan, np.float32)
            pos[:, : c.positions.shape[1]] = c.positions
            counts = np.zeros(t_len, np.int64)
            for tb in c.all_bounce_times:
                counts[min(t_len - 1, math.ceil(tb * c.fps - 1e-6))] += 1
            item.update(
                {
                    "labels": torch.from_numpy(labels(c.attributes, m)),
                    "positions": torch.from_numpy(pos),
                    "depth": torch.from_numpy(c.depth),
                    "flow": torch.from_numpy(c.flow),
                    "ids": torch.from_numpy(c.ids.astype(np.int64)),
                    "bounce_counts": torch.from_numpy(counts),
                    "attributes": json.dumps(c.attributes),
                }
            )
        return item


# --------------------------------------------------------------------------------------- writer
def write_shapes(
    out_dir: str | Path,
    num: int,
    config: ShapesConfig | None = None,
    *,
    seed: int = 0,
    progress: bool = False,
    **options: Any,
) -> Path:
    """Write `num` clips to `out_dir`; returns the manifest path.

    Layout: clips/NNNNNN.mp4 (H.264 + AAC audio), clips/NNNNNN.npz (ground truth: positions, depth,
    flow, ids, bounce_times, bounce_object, labels), manifest.jsonl (one line per clip: "path",
    "caption", "attributes", "ground_truth", "index", "seed", "frames", "fps", "sample_rate", "size";
    paths are relative to the manifest's folder) and shapes.json (the generator config and seed).
    Every file is written atomically; the manifest last, so a folder with a manifest is complete.
    """
    from videopoet.data.writers import write_video
    from videopoet.io_utils import atomic_path, atomic_write_text

    if isinstance(num, bool) or not isinstance(num, (int, np.integer)) or num <= 0:
        raise InputError(f"num must be a positive integer, got {num!r}")
    cfg = _config_from(config, options)
    out = Path(out_dir)
    (out / "clips").mkdir(parents=True, exist_ok=True)
    lines = []
    indices: Any = range(num)
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc="shapes", unit="clip")
    for i in indices:
        c = make_clip(cfg, seed, i)
        name = f"clips/{i:06d}"
        write_video(out / f"{name}.mp4", c.video, cfg.fps, audio=c.audio, sample_rate=cfg.sample_rate)
        bounce_obj = [j for j, ts in enumerate(c.bounce_times) for _ in ts]
        bounce_t = [t for ts in c.bounce_times for t in ts]
        with atomic_path(out / f"{name}.npz") as tmp, open(tmp, "wb") as f:
            np.savez_compressed(
                f,
                positions=c.positions,
                depth=c.depth.astype(np.float16),
                flow=c.flow.astype(np.float16),
                ids=c.ids,
                bounce_times=np.asarray(bounce_t, np.float64),
                bounce_object=np.asarray(bounce_obj, np.int64),
                labels=labels(c.attributes, len(c.attributes["objects"])),
            )
        lines.append(
            json.dumps(
                {
                    "path": f"{name}.mp4",
                    "caption": c.caption,
                    "attributes": c.attributes,
                    "ground_truth": f"{name}.npz",
                    "index": i,
                    "seed": seed,
                    "frames": cfg.frames,
                    "fps": cfg.fps,
                    "sample_rate": cfg.sample_rate,
                    "size": cfg.size,
                }
            )
        )
    atomic_write_text(
        out / "shapes.json",
        json.dumps({"seed": seed, "num": num, **dataclasses.asdict(cfg)}, indent=2) + "\n",
    )
    manifest = out / "manifest.jsonl"
    atomic_write_text(manifest, "\n".join(lines) + "\n")
    return manifest
