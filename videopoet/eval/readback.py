"""Attribute read-back on the shapes benchmark: what a round trip (or a generated clip) still shows.

Hand-written probes, no learned weights, so they can score a tokenizer before any classifier exists:
- colour and position: `videopoet.data.shapes.colour_tracks` (saturated pixels, nearest palette hue);
- direction: the centroid's displacement over the first `DIRECTION_FRAMES` frames, cut before the
  first step that reverses the motion (a bounce), snapped to the nearest of the 8 directions;
- shape (and size): the colour's pixels in the first frame where the object is seen, matched by IoU
  against the rendered silhouettes of every (shape, size) centred at the centroid;
- tones: the energy in a +-1.5% band around each of the 24 (shape, colour) tones; the N strongest
  are read as the N objects' tones (N from the caption or the reference);
- clicks: `videopoet.data.shapes.click_times`.

`video_readback_agreement` and `audio_readback_agreement` compare a reconstruction's read-back with
the original's, object by object (objects are keyed by colour), and the original's with the ground
truth (the probe's own accuracy, which must be high for the agreement to mean anything).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from videopoet.data import shapes as S

DIRECTION_FRAMES = 5  # at most the displacement from frame 0 to frame 4 (less at a bounce)


@dataclass
class ObjectReading:
    colour: str
    shape: str | None
    size: str | None
    direction: str | None


def _direction(track: np.ndarray) -> str | None:
    """The captioned direction from a centroid track: the displacement summed over the first
    frames, up to DIRECTION_FRAMES - 1 steps, stopping before a step that reverses the x or y motion
    seen so far (a bounce), snapped to the nearest of the 8 directions."""
    ok = np.flatnonzero(np.isfinite(track[:, 0]))
    if len(ok) < 2:
        return None
    total = np.zeros(2)
    for a, b in zip(ok[:-1], ok[1:], strict=True):
        if b > ok[0] + DIRECTION_FRAMES - 1 or b - a > 1:
            break
        step = track[b] - track[a]
        if np.any((np.abs(total) > 1.0) & (np.sign(step) == -np.sign(total)) & (np.abs(step) > 0.5)):
            break  # the motion reversed: a bounce
        total = total + step
    if np.hypot(*total) < 0.5:
        return None
    names = list(S.DIRECTION_VEC)
    vecs = np.asarray([S.DIRECTION_VEC[n] for n in names])
    return names[int(np.argmax(vecs @ (total / np.hypot(*total))))]


def _coverage(shape: str, size: str, centre: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Antialiased coverage in [0, 1] of a (shape, size) centred at `centre` (as the renderer draws it)."""
    ys, xs = np.mgrid[0 : hw[0], 0 : hw[1]].astype(np.float32)
    r = S.SIZE_RADIUS[size] * min(hw)
    return np.clip(0.5 - S._signed_distance(shape, xs - centre[0], ys - centre[1], r), 0.0, 1.0)


def _colour_weight(frame: np.ndarray, colour: str) -> np.ndarray:
    """Soft membership in [0, 1] of each pixel in the colour (saturation ramp x nearest palette hue)."""
    f = frame.astype(np.float32) / 255.0
    mx, mn = f.max(-1), f.min(-1)
    sat = (mx - mn) / np.maximum(mx, 1e-6)
    names = list(S._PALETTE_HUE)
    dist = np.abs((S._hue(f)[..., None] - np.asarray([S._PALETTE_HUE[c] for c in names]) + 180.0) % 360.0 - 180.0)
    return np.clip((sat - 0.15) / 0.6, 0.0, 1.0) * (dist.argmin(-1) == names.index(colour))


SHAPE_FRAMES = 5  # silhouettes are scored on up to this many frames where the object is seen


def read_objects(video: np.ndarray) -> dict[str, ObjectReading]:
    """uint8 (T, H, W, 3) frames -> {colour: ObjectReading} for every palette colour seen."""
    from scipy import ndimage

    out = {}
    for colour, track in S.colour_tracks(video).items():
        ok = np.flatnonzero(np.isfinite(track[:, 0]))
        scores: dict[tuple[str, str], float] = {}
        for t in ok[:SHAPE_FRAMES]:
            w = _colour_weight(video[t], colour)
            lab, n = ndimage.label(w > 0.25)
            if not n:
                continue
            # the component nearest the track's centroid (another object of the same colour is apart)
            ys, xs = np.nonzero(lab)
            k = lab[ys, xs][np.argmin(np.hypot(xs - track[t, 0], ys - track[t, 1]))]
            wk = w * (lab == k)
            ys, xs = np.mgrid[0 : w.shape[0], 0 : w.shape[1]]
            centre = np.array([(wk * xs).sum(), (wk * ys).sum()]) / max(wk.sum(), 1e-6)
            for sh in S.SHAPES:
                for sz in S.SIZES:
                    cov = _coverage(sh, sz, centre, w.shape)
                    soft_iou = np.minimum(cov, wk).sum() / max(np.maximum(cov, wk).sum(), 1e-6)
                    scores[(sh, sz)] = scores.get((sh, sz), 0.0) + float(soft_iou)
        shape, size = max(scores, key=scores.get) if scores else (None, None)
        out[colour] = ObjectReading(colour, shape, size, _direction(track))
    return out


def _truth(attributes: dict) -> dict[str, ObjectReading]:
    """Ground-truth readings keyed by colour (of objects whose colour is unique in the clip)."""
    objs = attributes["objects"]
    counts: dict[str, int] = {}
    for o in objs:
        counts[o["colour"]] = counts.get(o["colour"], 0) + 1
    return {o["colour"]: ObjectReading(o["colour"], o["shape"], o["size"], o["direction"])
            for o in objs if counts[o["colour"]] == 1}


FIELDS = ("colour", "shape", "direction")


def compare_readings(ref: dict[str, ObjectReading], est: dict[str, ObjectReading], colours: list[str]) -> dict[str, list[bool]]:
    """Per object (colour in `colours`), does `est` read the same colour / shape / direction as `ref`?"""
    res: dict[str, list[bool]] = {f: [] for f in FIELDS}
    for c in colours:
        r, e = ref.get(c), est.get(c)
        res["colour"].append(r is not None and e is not None)
        res["shape"].append(r is not None and e is not None and r.shape == e.shape)
        res["direction"].append(r is not None and e is not None and r.direction == e.direction)
    return res


def video_readback_agreement(originals: list[np.ndarray], reconstructions: list[np.ndarray],
                             attributes: list[dict]) -> dict[str, float]:
    """Fractions over objects: probe vs ground truth on the originals ("probe_*"), and round trip vs
    original ("agree_*"). Objects that share a colour with another object in the clip are skipped."""
    probe: dict[str, list[bool]] = {f: [] for f in FIELDS}
    agree: dict[str, list[bool]] = {f: [] for f in FIELDS}
    for v, v_hat, attrs in zip(originals, reconstructions, attributes, strict=True):
        truth = _truth(attrs)
        colours = sorted(truth)
        ro, rr = read_objects(v), read_objects(v_hat)
        for f, vals in compare_readings(truth, ro, colours).items():
            probe[f] += vals
        for f, vals in compare_readings(ro, rr, colours).items():
            agree[f] += vals
    n = len(probe["colour"])
    out: dict[str, float] = {"objects": float(n)}
    for f in FIELDS:
        out[f"probe_{f}"] = float(np.mean(probe[f])) if n else math.nan
        out[f"agree_{f}"] = float(np.mean(agree[f])) if n else math.nan
    out["agree_all"] = float(np.mean([a and b and c for a, b, c in zip(*(agree[f] for f in FIELDS), strict=True)])) if n else math.nan
    return out


# ------------------------------------------------------------------------------------------- audio
TONES = [(s, c) for s in S.SHAPES for c in S.COLOURS]


def tone_energies(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """(24,) energy of (S,) audio within +-1.5% of each (shape, colour) tone (half the 9% spacing)."""
    a = np.asarray(audio, np.float64).reshape(-1)
    spec = np.abs(np.fft.rfft(a * np.hanning(len(a)))) ** 2
    freqs = np.fft.rfftfreq(len(a), 1.0 / sample_rate)
    out = np.empty(len(TONES))
    for i, (s, c) in enumerate(TONES):
        f = S.tone_frequency(s, c)
        out[i] = spec[(freqs >= f * 0.985) & (freqs <= f * 1.015)].sum()
    return out


def read_tones(audio: np.ndarray, sample_rate: int, n: int) -> set[tuple[str, str]]:
    e = tone_energies(audio, sample_rate)
    return {TONES[i] for i in np.argsort(-e)[:n]}


def audio_readback_agreement(originals: list[np.ndarray], reconstructions: list[np.ndarray], attributes: list[dict],
                             sample_rate: int, *, tolerance_s: float = 0.010) -> dict[str, float]:
    """Tone identity per object (reconstruction's N strongest tones vs the ground truth's tones, and
    the probe on the originals), and clicks: the share of the original's clicks that the
    reconstruction has within `tolerance_s`, with the median timing error of those matched."""
    probe_t, agree_t, matched, errors, n_clicks = [], [], 0, [], 0
    for a, a_hat, attrs in zip(originals, reconstructions, attributes, strict=True):
        tones = {(o["shape"], o["colour"]) for o in attrs["objects"]}
        n = len(tones)
        got_o, got_r = read_tones(a, sample_rate, n), read_tones(a_hat, sample_rate, n)
        probe_t += [t in got_o for t in tones]
        agree_t += [t in got_r for t in tones]
        c_o, c_r = S.click_times(a, sample_rate), S.click_times(a_hat, sample_rate)
        n_clicks += len(c_o)
        for t in c_o:
            if len(c_r):
                d = float(np.min(np.abs(c_r - t)))
                if d <= tolerance_s:
                    matched += 1
                    errors.append(d)
    return {
        "objects": float(len(probe_t)),
        "probe_tone": float(np.mean(probe_t)) if probe_t else math.nan,
        "agree_tone": float(np.mean(agree_t)) if agree_t else math.nan,
        "clicks": float(n_clicks),
        "clicks_within_tol": matched / n_clicks if n_clicks else math.nan,
        "click_error_ms_median": 1000 * float(np.median(errors)) if errors else math.nan,
    }
