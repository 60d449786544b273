"""Scores for generated outputs on the shapes benchmark, per task, and long-video drift.

Held-out prompts come from shapes clips of a seed never used in training (`shapes:N:SEED`; the
shipped LM trained on seed 0): each job carries the clip's caption, its frames and sound, and its
ground truth. Every score is read from the output by the probes of videopoet/eval/readback.py
(colour, shape, direction of each object; tone identity; click times), which read 100% / ~95% /
100% of the ground-truth clips right (their validation is in tests/test_tokenizer_eval.py), or is a
signal measure against the ground truth:

- t2v, a2v: attribute accuracy, per object of the prompt (colour seen, shape, direction), with
  `colour_exact` (seen, and no colour the prompt lacks: noise that shows every colour scores 0)
  and `all_three` (colour_exact, shape and direction right);
- t2i: colour and shape of the first frame;
- i2v: the first frame's objects kept (colour, shape) and the ground truth's direction;
- continue: identity and direction in the new frames (from the last context frame on) against the
  probes' reading of the ground truth's same frames, PSNR of the new frames against the truth;
- inpaint, outpaint: PSNR inside and outside the regenerated region against the ground truth,
  and inside it for the baseline of copying the nearest unmasked codes (`psnr_region_copy`);
- stylize: motion agreement: cosine similarity of the output's optical flow with the structure's;
- v2a: tone identity (the N strongest tones vs the objects' tones; `tone_shape` and `tone_colour`:
  the object's shape, or colour, is that of one of those tones, since a tone encodes both) and the
  share of the picture's bounces (ground-truth click times) with a click within 50 ms;
- avcont: colour kept, tone kept;
- every task with video output: `fd_probe`, a Fréchet distance between the outputs and the
  ground-truth clips in the space of the probes' readings (an in-domain FVD; `probe_features`).
`probe` (every scorer's keyword, default "hand"): "hand" reads with the hand-written probes above;
"learned" with the shipped learned probe (videopoet/eval/probe.py, validated by `videopoet eval
validate-probe`), or a probe directory. With a learned probe, a colour the prompt lacks counts
against `colour_exact` when the probe reads an object of that colour.
`drift` gives the long-video measures: per chunk, PSNR/SSIM against the first chunk, identity
(colours and shapes read in the chunk that the first chunk has), and flicker (mean absolute
frame-to-frame change at the seams between chunks vs inside them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from videopoet.data import shapes as S
from videopoet.eval.readback import _truth, compare_readings, read_objects, read_tones

TASKS = ("t2v", "t2i", "i2v", "continue", "inpaint", "outpaint", "stylize", "v2a", "a2v", "avcont")
CLICK_TOLERANCE_S = 0.05


@dataclass
class Job:
    """One held-out prompt: the ground-truth clip it was made from."""

    index: int
    caption: str
    video: np.ndarray  # uint8 (T, H, W, 3)
    audio: np.ndarray  # float32 (S,)
    attributes: dict
    flow: np.ndarray | None = None
    depth: np.ndarray | None = None


def shapes_jobs(spec: str, *, frames: int = 17, size: int = 64, fps: float = 8.0, sample_rate: int = 16000) -> list[Job]:
    """`shapes:N[:SEED[:single|multi]]` -> jobs (SEED 7070 by default; 1-2 objects as in training,
    single: one, multi: 2-4)."""
    from videopoet.eval.tokenizer_eval import parse_shapes_spec

    n, seed, lo, hi = parse_shapes_spec(spec, 7070, "--prompts")
    cfg = S.ShapesConfig(size=size, frames=frames, fps=fps, sample_rate=sample_rate, min_objects=lo, max_objects=hi)
    jobs = []
    for i in range(n):
        c = S.make_clip(cfg, seed, i)
        jobs.append(Job(i, c.caption, c.video, np.asarray(c.audio[0], np.float32), c.attributes, c.flow, c.depth))
    return jobs


def _readers(probe: str):
    """(read_objects, read_tones) for `probe` ("hand", "learned" or a probe directory)."""
    if probe == "hand":
        return read_objects, read_tones
    from videopoet.eval.probe import readers

    return readers(probe)


def _attr_scores(truth_attrs: dict, frames: np.ndarray, fields=("colour", "shape", "direction"),
                 probe: str = "hand") -> dict[str, Any]:
    """Per object of the prompt: colour seen, shape, direction; `exact`: the clip shows no colour
    the prompt does not have, as an object would show it (`_persistent_colours`, or an object the
    learned probe reads; a clip of every colour gets no credit: `colour_exact` needs both);
    `spurious`: how many such colours (0 on every ground-truth clip)."""
    truth = _truth(truth_attrs)
    seen = _readers(probe)[0](frames)
    got = compare_readings(truth, seen, sorted(truth))
    shown = set(_persistent_colours(frames)) if probe == "hand" else set(seen)
    spurious = len(shown - {o["colour"] for o in truth_attrs["objects"]})
    out: dict[str, Any] = {f: got[f] for f in fields}
    out["colour_exact"] = [c and spurious == 0 for c in got["colour"]]
    out["spurious"] = float(spurious)
    return out


def _persistent_colours(frames: np.ndarray, *, share: float = 0.2) -> list[str]:
    """Colours an object would show: tracked in at least half of the frames, with at least `share`
    of the strongest colour's pixel weight. The tokenizer's round trip tints a few rim pixels
    (an orange object's edge reads yellow in some frames); those do not count as another object."""
    from videopoet.eval.readback import _colour_weight

    v = np.asarray(frames)
    tracks = S.colour_tracks(v)
    weight = {c: float(sum(_colour_weight(f, c).sum() for f in v)) for c in tracks}
    top = max(weight.values(), default=0.0)
    return [c for c, tr in tracks.items()
            if np.isfinite(tr[:, 0]).sum() * 2 >= len(v) and weight[c] >= share * top and top > 0]


def _psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    d = (a.astype(np.float64) - b.astype(np.float64)) ** 2
    if mask is not None:
        d = d[np.broadcast_to(mask[..., None], d.shape)]
    mse = float(d.mean()) if d.size else math.nan
    return 10 * math.log10(255.0**2 / max(mse, 255.0**2 * 1e-10))  # identical: 100 dB


def _flow_agreement(frames: np.ndarray, flow: np.ndarray) -> float:
    """Mean cosine similarity between the output's Farneback flow and the reference flow, over
    pixels where the reference moves (> 0.5 px/frame)."""
    from videopoet.data.structure import farneback_flow

    got = farneback_flow(frames)[: len(flow) - 1]
    ref = flow[: len(got)]
    moving = np.hypot(ref[:, 0], ref[:, 1]) > 0.5
    if not moving.any():
        return math.nan
    dot = (got * ref).sum(1)
    norm = np.hypot(got[:, 0], got[:, 1]) * np.hypot(ref[:, 0], ref[:, 1]) + 1e-6
    return float((dot / norm)[moving].mean())


def score(task: str, job: Job, result, extra: dict[str, Any] | None = None, *,
          probe: str = "hand") -> dict[str, list[float] | float]:
    """One output's scores: {name: list of per-object booleans as floats, or a number}; `probe`
    chooses the readers (module docstring)."""
    extra = extra or {}
    read_objects_, read_tones_ = _readers(probe)
    f = result.frames
    out: dict[str, Any] = {}
    if task in ("t2v", "a2v"):
        out.update(_attr_scores(job.attributes, f, probe=probe))
    elif task == "t2i":
        out.update(_attr_scores(job.attributes, f, ("colour", "shape"), probe=probe))
    elif task == "i2v":
        out.update(_attr_scores(job.attributes, f, probe=probe))
    elif task == "continue":
        # read from the last context frame on (the context itself is the input), against the
        # probes' reading of the ground truth's same frames (a bounce may have turned it)
        n_ctx = extra.get("context_frames", 5)
        truth = _truth(job.attributes)
        ref, got = read_objects_(job.video[n_ctx - 1 :]), read_objects_(f[n_ctx - 1 :])
        cmp = compare_readings({c: r for c, r in ref.items() if c in truth}, got, sorted(truth))
        out.update({k: cmp[k] for k in ("colour", "shape", "direction")})
        out["psnr_new"] = _psnr(f[n_ctx:], job.video[n_ctx : len(f)])
    elif task in ("inpaint", "outpaint"):
        region = extra["region"]  # (T, H, W) bool, True = regenerated
        out["psnr_region"] = _psnr(f, job.video, region)
        out["psnr_kept"] = _psnr(f, job.video, ~region)
        if "copy_baseline" in extra:  # the nearest unmasked codes copied into the region, decoded
            out["psnr_region_copy"] = _psnr(extra["copy_baseline"], job.video, region)
        out.update(_attr_scores(job.attributes, f, ("colour",), probe=probe))
    elif task == "stylize":
        out["flow_agreement"] = _flow_agreement(f, job.flow)
    if task in ("v2a", "avcont") and result.audio is not None:
        tones = {(o["shape"], o["colour"]) for o in job.attributes["objects"]}
        got = read_tones_(result.audio, result.sample_rate, len(tones))
        out["tone"] = [t in got for t in tones]
        # a tone is (shape, colour): which half of it came out right (chance with one object: 1/4, 1/6)
        shapes_read, colours_read = {g[0] for g in got}, {g[1] for g in got}
        out["tone_shape"] = [t[0] in shapes_read for t in tones]
        out["tone_colour"] = [t[1] in colours_read for t in tones]
        if task == "v2a":
            truth = S.click_times(job.audio, result.sample_rate)
            clicks = S.click_times(result.audio, result.sample_rate)
            out["clicks"] = [bool(len(clicks)) and float(np.min(np.abs(clicks - t))) <= CLICK_TOLERANCE_S for t in truth]
    if task == "avcont":
        out.update(_attr_scores(job.attributes, f, ("colour",), probe=probe))
    return {k: [float(x) for x in v] if isinstance(v, list) else float(v) for k, v in out.items()}


def summarize(per_job: list[dict[str, Any]]) -> dict[str, float]:
    """Mean of each score over jobs (per-object lists pooled: accuracy over objects)."""
    pool: dict[str, list[float]] = {}
    for s in per_job:
        for k, v in s.items():
            pool.setdefault(k, []).extend(v if isinstance(v, list) else [v])
    out = {k: float(np.nanmean(v)) if len(v) and not all(math.isnan(x) for x in v) else math.nan for k, v in pool.items()}
    if all(k in out for k in ("colour_exact", "shape", "direction")):
        rows = [s for s in per_job if all(k in s for k in ("colour_exact", "shape", "direction"))]
        allv = [a and b and c for s in rows for a, b, c in zip(s["colour_exact"], s["shape"], s["direction"], strict=True)]
        out["all_three"] = float(np.mean(allv)) if allv else math.nan
    return out


# ------------------------------------------------------------------------------- in-domain Fréchet
def probe_features(frames: np.ndarray) -> np.ndarray:
    """A clip -> (9,) features the probes read: the share of pixels of each palette colour (6), the
    objects' mean centroid speed (px/frame), the mean absolute frame-to-frame change and the number
    of colours seen. The in-domain Fréchet distance (`fd_probe`) is computed between the
    generated clips' and the ground-truth clips' features."""
    from videopoet.eval.readback import _colour_weight

    v = np.asarray(frames)
    share = [float(np.mean([_colour_weight(f, c).mean() for f in v])) for c in S.COLOURS]
    tracks = S.colour_tracks(v)
    speeds = []
    for tr in tracks.values():
        d = np.hypot(*np.diff(tr, axis=0).T)
        speeds += [float(x) for x in d if np.isfinite(x)]
    change = float(np.abs(np.diff(v.astype(np.float32), axis=0)).mean()) if len(v) > 1 else 0.0
    return np.array(share + [float(np.mean(speeds)) if speeds else 0.0, change, float(len(tracks))], np.float64)


def fd_probe(generated: list[np.ndarray], real: list[np.ndarray]) -> float:
    """Fréchet distance between Gaussians of `probe_features` (float64; a small ridge keeps the
    covariances of a dozen clips well conditioned)."""
    from videopoet.eval.frechet import frechet_distance, gaussian_stats

    if min(len(generated), len(real)) < 2:
        return math.nan
    a = np.stack([probe_features(v) for v in generated])
    b = np.stack([probe_features(v) for v in real])
    (m1, s1), (m2, s2) = gaussian_stats(a), gaussian_stats(b)
    ridge = 1e-6 * np.eye(a.shape[1])
    return float(frechet_distance(m1, s1 + ridge, m2, s2 + ridge))


# ------------------------------------------------------------------------------------------- drift
def drift(chunks: list[np.ndarray], *, probe: str = "hand") -> dict[str, list[float] | float]:
    """Long-video drift from the chunks of a chained continuation (chunk 0 = the input clip)."""
    from videopoet.data.media import video_to_tensor
    from videopoet.eval.video_metrics import ssim

    read_objects_ = _readers(probe)[0]
    first = chunks[0]
    ref_objects = read_objects_(first)
    per_psnr, per_ssim, ident = [], [], []
    for c in chunks:
        n = min(len(c), len(first))
        a, b = c[:n], first[-n:] if len(c) < len(first) else first[:n]
        per_psnr.append(_psnr(a, b))
        per_ssim.append(float(ssim(video_to_tensor(a)[None], video_to_tensor(b)[None])))
        got = read_objects_(c)
        if ref_objects:
            keep = [c_ in got and (ref_objects[c_].shape is None or got[c_].shape == ref_objects[c_].shape)
                    for c_ in ref_objects]
            ident.append(float(np.mean(keep)))
        else:
            ident.append(math.nan)
    video = np.concatenate(chunks).astype(np.float32)
    diffs = np.abs(np.diff(video, axis=0)).mean(axis=(1, 2, 3))  # diffs[i]: frame i -> i + 1
    seams = np.cumsum([len(c) for c in chunks])[:-1] - 1
    inside = np.setdiff1d(np.arange(len(diffs)), seams)
    return {
        "chunk_psnr_vs_first": per_psnr,
        "chunk_ssim_vs_first": per_ssim,
        "chunk_identity": ident,
        "flicker_seam": float(diffs[seams].mean()) if len(seams) else math.nan,
        "flicker_inside": float(diffs[inside].mean()) if len(inside) else math.nan,
    }
