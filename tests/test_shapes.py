"""The shapes benchmark: determinism, and that picture, audio, captions and ground truth agree."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from videopoet.data import shapes
from videopoet.data.shapes import (
    COLOURS,
    SHAPES,
    ClipSpec,
    ObjectSpec,
    ShapesConfig,
    ShapesDataset,
    make_clip,
    parse_caption,
    render,
    tone_frequency,
)
from videopoet.errors import InputError

SINGLE = ShapesConfig(min_objects=1, max_objects=1, pan_prob=0.0, occlusion_prob=0.0)


def _saturation(frame: np.ndarray) -> np.ndarray:
    """(H, W) saturation (max - min) / max: objects are saturated, the background (< 0.12) and bar are not."""
    f = frame.astype(np.float32) / 255.0
    mx, mn = f.max(-1), f.min(-1)
    return (mx - mn) / np.maximum(mx, 1e-6)


def _object_weight(frame: np.ndarray) -> np.ndarray:
    """(H, W) soft object coverage estimated from saturation alone (antialiased rims count partly)."""
    s = _saturation(frame)
    s_obj = np.median(s[s > 0.5])
    return np.clip((s - 0.15) / (s_obj - 0.15), 0.0, 1.0)


def _merge(times: list[float], gap: float) -> list[float]:
    out: list[float] = []
    for t in sorted(times):
        if not out or t - out[-1] > gap:
            out.append(t)
    return out


# ------------------------------------------------------------------------------------ determinism
def test_same_seed_and_index_give_identical_clips_independent_of_order():
    a = make_clip(ShapesConfig(), seed=3, index=7)
    ds = ShapesDataset(10, seed=3)
    _ = ds[2]  # rendering another clip first must not change clip 7
    b = ds.clip(7)
    assert a.caption == b.caption
    np.testing.assert_array_equal(a.video, b.video)
    np.testing.assert_array_equal(a.audio, b.audio)
    np.testing.assert_array_equal(a.flow, b.flow)
    assert a.attributes == b.attributes
    c = make_clip(ShapesConfig(), seed=4, index=7)
    assert not np.array_equal(a.video, c.video)
    d = make_clip(ShapesConfig(), seed=3, index=8)
    assert not np.array_equal(a.video, d.video)


def test_fps_only_samples_the_scene():
    """The same (seed, index) at 8 and 16 fps is one motion: every other 16-fps frame is the 8-fps frame."""
    slow = make_clip(ShapesConfig(frames=17, fps=8.0, pan_prob=0.5), seed=6, index=2)
    fast = make_clip(ShapesConfig(frames=33, fps=16.0, pan_prob=0.5), seed=6, index=2)
    np.testing.assert_allclose(fast.positions[::2], slow.positions, atol=1e-4)
    np.testing.assert_array_equal(fast.video[::2], slow.video)
    bg = slow.ids[:, None].repeat(2, 1) == -1  # objects' flow is net of bounces, so compare the background
    np.testing.assert_allclose(fast.flow[::2][bg], slow.flow[bg] / 2, atol=1e-5)  # per-frame flow halves
    assert fast.bounce_times == slow.bounce_times and fast.caption == slow.caption
    assert slow.attributes["camera_pan"] == "left" and slow.flow[0, 0, 0, 0] > 0  # the scene slides right


def test_objects_first_move_in_the_captioned_direction():
    cfg = ShapesConfig(size=32, frames=2, min_objects=4, max_objects=4)
    for index in range(25):
        clip = make_clip(cfg, seed=0, index=index)
        step = clip.positions[1] - clip.positions[0]  # (N, 2)
        for o, d in zip(clip.attributes["objects"], step, strict=True):
            np.testing.assert_array_equal(
                np.sign(np.round(d, 6)), np.sign(shapes.DIRECTION_VEC[o["direction"]])
            )
            assert not o["bounce_times"]  # no bounce before 1/8 s


def test_bad_settings_raise_input_error_naming_the_field():
    with pytest.raises(InputError, match="size"):
        ShapesConfig(size=16)
    with pytest.raises(InputError, match="size"):
        ShapesConfig(size=129)
    with pytest.raises(InputError, match="frames"):
        ShapesConfig(frames=0)
    with pytest.raises(InputError, match="sample_rate"):
        ShapesConfig(sample_rate=4000)
    with pytest.raises(InputError, match="frames"):
        ShapesConfig(frames=2.5)
    assert ShapesConfig(size=np.int64(48)).size == 48 and type(ShapesConfig(size=np.int64(48)).size) is int
    with pytest.raises(InputError, match="max_objects"):
        ShapesConfig(min_objects=3, max_objects=2)
    with pytest.raises(InputError, match="num"):
        ShapesDataset(0)
    with pytest.raises(InputError, match="seed"):
        make_clip(ShapesConfig(), seed=-1)
    with pytest.raises(InputError, match="fps"):
        ShapesDataset(2, fps=0)


# ------------------------------------------------------------------------------------ audio
def test_tone_mapping_is_injective_and_in_band():
    freqs = [tone_frequency(s, c) for s in SHAPES for c in COLOURS]
    assert len(set(np.round(freqs, 3))) == len(SHAPES) * len(COLOURS)
    ratios = np.diff(np.sort(freqs)) / np.sort(freqs)[:-1]
    assert ratios.min() > 0.08  # 1.5 semitones apart: separable by ear and by an FFT
    assert max(freqs) < shapes.CLICK_HZ / 1.5


def test_nearest_tone_inverts_the_mapping_within_half_a_step():
    for s in SHAPES:
        for c in COLOURS:
            for detune in (0.97, 1.0, 1.03):  # +-3%, a third of the 9% step
                assert shapes.nearest_tone(tone_frequency(s, c) * detune) == (s, c)


@pytest.mark.parametrize("index", range(6))
def test_dominant_audio_frequency_is_the_shape_colour_tone(index):
    clip = make_clip(SINGLE, seed=11, index=index)
    obj = clip.attributes["objects"][0]
    a = clip.audio[0].astype(np.float64)
    peak = shapes.dominant_frequency(clip.audio, clip.sample_rate)
    assert abs(peak - tone_frequency(obj["shape"], obj["colour"])) < 1.0
    assert shapes.nearest_tone(peak) == (obj["shape"], obj["colour"])  # audio -> attributes
    assert obj["tone_hz"] == pytest.approx(tone_frequency(obj["shape"], obj["colour"]), abs=1e-3)
    # loudness encodes the size: the tone's amplitude (fades aside) is the size's amplitude
    mid = a[len(a) // 4 : 3 * len(a) // 4]
    assert np.sqrt(2 * np.mean(mid**2)) == pytest.approx(shapes.SIZE_AMPLITUDE[obj["size"]], rel=0.1)


def test_click_times_in_the_audio_match_the_bounce_times():
    checked = 0
    for index in range(40):
        clip = make_clip(ShapesConfig(min_objects=1, max_objects=2), seed=5, index=index)
        truth = _merge(clip.all_bounce_times, 0.02)
        if len(truth) != len(clip.all_bounce_times):
            continue  # two bounces closer than 20 ms sound as one click
        onsets = shapes.click_times(clip.audio, clip.sample_rate)
        assert len(onsets) == len(truth), (index, onsets, truth)
        np.testing.assert_allclose(onsets, truth, atol=0.004)
        checked += len(truth)
    assert checked >= 20


def test_make_audio_is_the_clips_sound_track():
    cfg = ShapesConfig(size=32, max_objects=3)
    for index in range(4):
        audio, caption = shapes.make_audio(cfg, seed=2, index=index)
        clip = make_clip(cfg, seed=2, index=index)
        np.testing.assert_array_equal(audio, clip.audio)
        assert caption == clip.caption


def test_audio_length_and_range():
    cfg = ShapesConfig(frames=9, fps=6.0, sample_rate=22050, size=32)
    clip = make_clip(cfg, 0, 0)
    assert clip.audio.shape == (1, round(9 / 6.0 * 22050)) == (1, cfg.num_samples)
    assert clip.audio.dtype == np.float32 and np.abs(clip.audio).max() <= 0.95 + 1e-6


# ------------------------------------------------------------------------------------ picture
@pytest.mark.parametrize("index", range(8))
def test_rendered_centroid_matches_recorded_position(index):
    clip = make_clip(SINGLE, seed=21, index=index)
    ys, xs = np.mgrid[0 : clip.video.shape[1], 0 : clip.video.shape[2]]
    for t in range(clip.video.shape[0]):
        w = _object_weight(clip.video[t])
        assert abs((w * xs).sum() / w.sum() - clip.positions[t, 0, 0]) < 0.3
        assert abs((w * ys).sum() / w.sum() - clip.positions[t, 0, 1]) < 0.3
        # the ground-truth segmentation covers the same pixels, up to the antialiased rim
        mask = w > 0.5
        assert (mask != (clip.ids[t] == 0)).sum() <= 0.15 * mask.sum() + 2
        far = ~ndimage.binary_dilation(clip.ids[t] != -1, iterations=2)  # background beyond the rim
        assert np.all(_saturation(clip.video[t])[far] < 0.15)
    rgb = np.asarray(shapes.COLOUR_RGB[clip.attributes["objects"][0]["colour"]])
    mean = clip.video[0][clip.ids[0] == 0].mean(0) / 255
    assert np.abs(mean / mean.max() - rgb / rgb.max()).max() < 0.05


def test_colour_tracks_read_colours_and_positions_back_from_frames():
    cfg = ShapesConfig(min_objects=1, max_objects=3, pan_prob=0.5, occlusion_prob=0.0)
    checked = 0
    for index in range(12):
        clip = make_clip(cfg, seed=13, index=index)
        colours = [o["colour"] for o in clip.attributes["objects"]]
        tracks = shapes.colour_tracks(clip.video)
        assert set(tracks) == set(colours), (index, set(tracks), colours)
        for i, c in enumerate(colours):
            if colours.count(c) > 1:
                continue
            # frames where this object is fully visible (not overlapping another one)
            alone = [
                t
                for t in range(clip.video.shape[0])
                if not any(
                    np.hypot(*(clip.positions[t, i] - clip.positions[t, j])) < 0.4 * 64
                    for j in range(len(colours))
                    if j != i
                )
            ]
            if alone:
                err = np.abs(tracks[c][alone] - clip.positions[alone, i]).max()
                assert err < 0.4, (index, c, err)
                checked += 1
    assert checked >= 8


def _hand_spec(cfg: ShapesConfig, objects: tuple[ObjectSpec, ...]) -> ClipSpec:
    """A hand-written scene over the background of a sampled one."""
    base = shapes.sample_spec(cfg, 0, 0)
    return ClipSpec(cfg, objects, tint_rgb=base.tint_rgb, gratings=base.gratings)


def test_positions_bounce_inside_the_frame_at_the_recorded_times():
    cfg = ShapesConfig(size=64, frames=33, min_objects=1, max_objects=1)
    obj = ObjectSpec("circle", "red", "medium", "right", "quickly", 0.5, (40.0, 20.0), (24.0, 0.0))
    clip = render(_hand_spec(cfg, objects=(obj,)))
    r = shapes.SIZE_RADIUS["medium"] * 64  # 7.68
    hi = 63.5 - r
    # closed form: hits the right wall at (hi - 40) / 3 frames, the left wall 2 * (hi - lo) / 3 later
    t1 = (hi - 40.0) / 3.0
    t2 = t1 + (hi - (-0.5 + r)) / 3.0
    np.testing.assert_allclose(clip.bounce_times[0], [t1 / 8.0, t2 / 8.0], atol=1e-9)
    x = clip.positions[:, 0, 0]
    assert x.min() >= -0.5 + r - 1e-4 and x.max() <= hi + 1e-4
    np.testing.assert_allclose(clip.positions[:, 0, 1], 20.0)
    step = np.diff(x)
    reversal = [
        k
        for k in range(len(step))
        if abs(step[k] - np.sign(step[k]) * 3.0) > 1e-3 or (k and np.sign(step[k]) != np.sign(step[k - 1]))
    ]
    assert set(reversal) >= {math.floor(t1), math.floor(t2)}
    assert "and bounces" in clip.caption


def test_flow_warps_frame_t_onto_t_plus_1_in_object_and_background():
    import cv2

    checked_obj = checked_bg = 0
    cfg = ShapesConfig(min_objects=1, max_objects=2, pan_prob=1.0, occlusion_prob=0.5)
    for index in range(4):
        clip = make_clip(cfg, seed=8, index=index)
        v = clip.video.astype(np.float32) / 255.0
        t_len, h, w, _ = v.shape
        gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
        for t in range(t_len - 1):
            fx, fy = gx + clip.flow[t, 0], gy + clip.flow[t, 1]
            warped = cv2.remap(v[t + 1], fx, fy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            inside = (fx >= 1) & (fx <= w - 2) & (fy >= 1) & (fy <= h - 2)
            for layer in [*range(len(clip.attributes["objects"])), -1]:
                # layer interior at t whose target is layer interior at t+1 (away from rims/occlusion)
                kernel = np.ones((5, 5), np.uint8)
                now = cv2.erode((clip.ids[t] == layer).astype(np.uint8), kernel).astype(bool)
                nxt = cv2.erode((clip.ids[t + 1] == layer).astype(np.uint8), kernel).astype(np.float32)
                region = now & inside & (cv2.remap(nxt, fx, fy, cv2.INTER_NEAREST) > 0.5)
                if region.sum() < 5:
                    continue
                err = np.abs(warped[region] - v[t][region])
                assert err.mean() < 0.01 and err.max() < 0.06, (index, t, layer, err.mean(), err.max())
                if np.hypot(clip.flow[t, 0][region], clip.flow[t, 1][region]).min() > 1.0:
                    # the content really moves: the identity warp does much worse
                    assert np.abs(v[t + 1][region] - v[t][region]).mean() > 2 * err.mean()
                checked_obj += layer >= 0
                checked_bg += layer == -1
    assert checked_obj > 20 and checked_bg > 20


def test_depth_ids_and_occluder_agree():
    cfg = ShapesConfig(min_objects=2, max_objects=3, pan_prob=0.0, occlusion_prob=1.0)
    clip = make_clip(cfg, seed=2, index=1)
    objs = clip.attributes["objects"]
    np.testing.assert_array_equal(clip.depth[clip.ids == -1], shapes.BACKGROUND_DEPTH)
    np.testing.assert_allclose(clip.depth[clip.ids == -2], shapes.BAR_DEPTH, rtol=1e-6)
    for i, o in enumerate(objs):
        np.testing.assert_allclose(clip.depth[clip.ids == i], o["depth"])
    bar = clip.ids == -2
    assert bar.any() and np.all(clip.flow[:, 0][bar] == 0) and np.all(clip.flow[:, 1][bar] == 0)
    bar_px = clip.video[ndimage.binary_erosion(bar, iterations=1)].astype(int)  # fully covered
    assert np.abs(bar_px - round(shapes.BAR_RGB[0] * 255)).max() <= 1
    # an object drawn nearer wins wherever two objects overlap (depth map is the minimum)
    assert clip.depth.min() == np.float32(shapes.BAR_DEPTH) and clip.depth.max() == shapes.BACKGROUND_DEPTH


# ------------------------------------------------------------------------------------ captions
def test_captions_parse_back_to_the_attributes():
    cfg = ShapesConfig(min_objects=1, max_objects=3, pan_prob=0.5, occlusion_prob=0.5)
    seen_pan = seen_bar = False
    for index in range(30):
        clip = make_clip(cfg, seed=9, index=index)
        parsed = parse_caption(clip.caption)
        attrs = clip.attributes
        assert len(parsed["objects"]) == len(attrs["objects"])
        for p, a in zip(parsed["objects"], attrs["objects"], strict=True):
            assert {k: p[k] for k in ("shape", "colour", "size", "direction", "speed")} == {
                k: a[k] for k in ("shape", "colour", "size", "direction", "speed")
            }
            assert p["bounces"] == bool(a["bounce_times"])
        assert parsed["camera_pan"] == attrs["camera_pan"]
        assert parsed["occluder"] == (attrs["occluder"] is not None)
        seen_pan |= parsed["camera_pan"] is not None
        seen_bar |= parsed["occluder"]
    assert seen_pan and seen_bar
    assert (
        parse_caption("a small red circle moves slowly left and bounces")["objects"][0]["shape"] == "circle"
    )
    with pytest.raises(InputError, match="grammar"):
        parse_caption("a huge red circle moves slowly left")


# ------------------------------------------------------------------------------------ dataset
def test_dataset_items_follow_the_clip_format_and_collate():
    ds = ShapesDataset(4, seed=1, size=32, frames=9, max_objects=3)
    item = ds[1]
    t_len = 9
    assert item["video"].shape == (3, t_len, 32, 32) and item["video"].dtype == torch.float32
    assert -1.0 <= item["video"].min() and item["video"].max() <= 1.0
    assert item["audio"].shape == (1, round(t_len / 8 * 16000))
    assert item["depth"].shape == (t_len, 32, 32) and item["flow"].shape == (t_len, 2, 32, 32)
    assert item["positions"].shape == (t_len, 3, 2) and item["labels"].shape == (3, 5)
    clip = ds.clip(1)
    n = len(clip.attributes["objects"])
    np.testing.assert_array_equal(item["positions"][:, :n].numpy(), clip.positions)
    assert torch.isnan(item["positions"][:, n:]).all() and (item["labels"][n:] == -1).all()
    expect = (torch.from_numpy(clip.video).permute(3, 0, 1, 2).float() / 255) * 2 - 1
    torch.testing.assert_close(item["video"], expect)
    assert int(item["bounce_counts"].sum()) == len(clip.all_bounce_times)
    assert json.loads(item["attributes"]) == clip.attributes
    assert item["caption"] == clip.caption and item["path"] == "shapes/1/000001"
    batch = torch.utils.data.default_collate([ds[i] for i in range(4)])
    assert batch["video"].shape == (4, 3, t_len, 32, 32) and len(batch["caption"]) == 4
    plain = ShapesDataset(2, seed=1, size=32, frames=9, ground_truth=False)[1]
    assert set(plain) == {"video", "audio", "caption", "path"}


def test_long_clips_and_all_sizes_render():
    cfg = ShapesConfig(size=32, frames=120, fps=24.0, pan_prob=1.0, occlusion_prob=1.0)
    long = make_clip(cfg, seed=0, index=0)
    assert long.video.shape == (120, 32, 32, 3) and long.audio.shape == (1, 80000)
    chunked = render(shapes.sample_spec(cfg, 0, 0), chunk=7)  # rendering in pieces changes nothing
    for key in ("video", "depth", "flow", "ids", "positions"):
        np.testing.assert_array_equal(getattr(chunked, key), getattr(long, key))
    big = make_clip(ShapesConfig(size=128, frames=1), seed=0, index=0)
    assert big.video.shape == (1, 128, 128, 3) and big.bounce_times == [[]] * len(big.bounce_times)


def test_rendering_is_fast():
    import time

    start = time.perf_counter()
    for i in range(20):
        make_clip(ShapesConfig(), seed=0, index=i)
    assert time.perf_counter() - start < 5.0  # ~10 ms a clip; generous for a busy 2-core machine
