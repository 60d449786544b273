"""The learned shapes probe (videopoet/eval/probe.py): config checks, save/load, its inputs, a tiny
training run, the shipped probe on held-out ground truth, the evaluation option and the commands."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from videopoet.data import shapes as S
from videopoet.errors import ConfigError, InputError
from videopoet.eval.probe import (
    Probe,
    ProbeConfig,
    audio_input,
    band_power,
    colour_membership,
    frames_tensor,
    load_probe,
    video_input,
)
from videopoet.eval.readback import TONES, _colour_weight

TINY = dict(size=32, frames=5, channels=(8, 8, 16), crop=16, hidden=16, audio_channels=8)
UNUSED_SEED = 9090  # neither training (0) nor an evaluation seed


@pytest.mark.parametrize("bad", [dict(frames=1), dict(size=60), dict(channels=(16, 32)), dict(channels=(16, 30, 64)),
                                 dict(audio_bins_per_octave=12), dict(audio_offset=60), dict(crop=12), dict(presence_threshold=1.0),
                                 dict(hidden=True)])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ConfigError):
        ProbeConfig(**bad)


def test_config_derives_tone_bands():
    c = ProbeConfig()
    assert c.time_steps == 5 and c.channels == (16, 32, 64)
    assert c.tone_bins[:3] == [21, 24, 27] and c.tone_bins[-1] == 21 + 3 * 23
    # every tone sits on its band's centre
    centres = c.band_centres()
    for (shape, colour), b in zip(TONES, c.tone_bins, strict=True):
        assert centres[b] == pytest.approx(S.tone_frequency(shape, colour), rel=1e-9)


def test_membership_matches_the_hand_written_rule():
    clip = S.make_clip(S.ShapesConfig(max_objects=4), UNUSED_SEED, 3)
    x = torch.from_numpy(clip.video[:4]).permute(3, 0, 1, 2).float().div(255)[None]
    m = colour_membership(x)[0].numpy()  # (6, T, H, W)
    for k, c in enumerate(S.COLOURS):
        ref = np.stack([_colour_weight(f, c) for f in clip.video[:4]])
        assert np.abs(m[k] - ref).max() < 1e-5
    assert m.sum(0).max() <= 1.0 + 1e-6  # a pixel belongs to one colour at most


def test_inputs_pad_short_clips_and_resize():
    cfg = ProbeConfig(**TINY)
    video = np.full((2, 48, 48, 3), 200, np.uint8)
    x, valid = frames_tensor(video, cfg)
    assert x.shape == (1, 3, 5, 32, 32) and valid.tolist() == [[1, 1, 0, 0, 0]]
    assert torch.allclose(x[0, :, :2], torch.tensor(200 / 255)) and x[0, :, 2:].abs().max() == 0
    inp = video_input(x, torch.ones(1, 5, 32, 32), valid)
    assert inp.shape == (1, 5, 5, 32, 32) and inp[0, 4, :, 0, 0].tolist() == [1, 1, 0, 0, 0]
    assert inp[0, 3, 3].abs().max() == 0  # padding frames carry no membership


def test_band_power_reads_a_tone_at_its_band():
    cfg = ProbeConfig()
    sr = 16000
    t = np.arange(34000) / sr
    f = S.tone_frequency("triangle", "blue")
    lp = band_power(0.2 * np.sin(2 * math.pi * f * t), sr, cfg)
    k = cfg.tone_bins[TONES.index(("triangle", "blue"))]
    assert int(lp.argmax()) == k
    assert lp[k] == pytest.approx(math.log10(0.2**2 / 4), abs=0.02)  # a sine of amplitude A: A^2 / 4
    x = audio_input(torch.from_numpy(lp)[None].float())
    assert x.shape == (1, 2, cfg.audio_bins) and float(x[0, 0].max()) == 0.0


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(1)
    p = Probe(ProbeConfig(**TINY))
    clip = S.make_clip(S.ShapesConfig(), UNUSED_SEED, 0)
    colours, before = p.object_logits(clip.video)
    tones = p.tone_logits(clip.audio, 16000)
    p.save_pretrained(tmp_path / "p")
    q = Probe.from_pretrained(tmp_path / "p")
    assert q.config == p.config
    colours2, after = q.object_logits(clip.video)
    assert colours2 == colours and all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert np.array_equal(q.tone_logits(clip.audio, 16000), tones)
    p.save_pretrained(tmp_path / "h", dtype=torch.float16)  # the shipped format: close, not equal
    h = Probe.from_pretrained(tmp_path / "h")
    assert np.abs(h.tone_logits(clip.audio, 16000) - tones).max() < 0.05


def test_tiny_training_reduces_the_loss(tmp_path):
    import torch.nn.functional as F

    from videopoet.eval.probe_train import _audio_batch, _video_batch, render_pool, train_probe, video_losses

    cfg = ProbeConfig(**TINY)
    info = train_probe(tmp_path / "p", clips=12, round_trips=0, max_steps=120, batch=8, lr=5e-3, seed=0, config=cfg,
                       log=lambda m: None)
    assert info["steps"] == 120 and info["history"][-1]["step"] == 120
    trained = Probe.from_pretrained(tmp_path / "p")
    assert trained.config == cfg
    torch.manual_seed(0)
    initial = Probe(cfg)  # train_probe's initialization (seeded the same way)
    pool = render_pool(12, cfg.frames, size=cfg.size)
    rng = np.random.default_rng(5)
    xv, present, attr = _video_batch(pool, None, 32, rng, cfg)
    xa, ta = _audio_batch(pool, None, 32, rng, cfg, 16000)

    def losses(p):
        with torch.no_grad():
            v = float(sum(video_losses(p.video(xv), present, attr).values()))
            return v, float(F.binary_cross_entropy_with_logits(p.audio(xa), ta))

    (v0, a0), (v1, a1) = losses(initial), losses(trained)
    # measured on the training clips: video 5.34 -> 1.76, audio 0.78 -> 0.09
    assert v1 < 0.8 * v0 and a1 < 0.6 * a0, (v0, v1, a0, a1)


def test_training_refuses_nothing_to_do(tmp_path):
    from videopoet.eval.probe_train import train_probe

    with pytest.raises(InputError):
        train_probe(tmp_path, clips=4, round_trips=5)
    with pytest.raises(InputError, match="audio_round_trips"):
        train_probe(tmp_path, clips=4, round_trips=0, audio_round_trips=5)


def test_audio_round_trips_are_counted_apart_from_the_video_ones(tmp_path):
    from videopoet.eval.probe_train import train_probe

    cfg = ProbeConfig(**TINY)
    info = train_probe(tmp_path / "p", clips=6, round_trips=0, audio_round_trips=2, max_steps=2, batch=4, config=cfg,
                       cache=tmp_path / "cache", log=lambda m: None)
    assert info["data"]["round_trips"] == 0 and info["data"]["audio_round_trips"] == 2
    cached = sorted(f.name for f in (tmp_path / "cache").iterdir())
    # 2 clips of 17 frames at 8 fps (2.125 s) at 16 kHz, no video file
    assert len(cached) == 1 and cached[0].startswith("audio_") and cached[0].endswith("_2x34000.npy"), cached


@pytest.fixture(scope="module")
def unused_clips():
    cfg = S.ShapesConfig()  # 1-2 objects
    return [S.make_clip(cfg, UNUSED_SEED, i) for i in range(16)]


def test_shipped_probe_reads_ground_truth_of_an_unused_seed(unused_clips):
    from videopoet.eval.probe_train import score_readers

    p = load_probe("learned")
    got = score_readers(p.read_objects, p.read_tones, [c.video for c in unused_clips],
                        [c.audio[0] for c in unused_clips], [c.attributes for c in unused_clips])
    assert got["objects"] >= 20  # 22 objects; measured 100% on every attribute
    for a in ("colour", "colour_exact", "shape", "size", "direction", "tone"):
        assert got[a] >= 0.9, (a, got)


def test_shipped_probe_reads_nothing_in_a_blank_clip_and_no_direction_in_an_image(unused_clips):
    p = load_probe("learned")
    assert p.read_objects(np.full((9, 64, 64, 3), 120, np.uint8)) == {}
    one = p.read_objects(unused_clips[0].video[:1])
    assert one and all(r.direction is None for r in one.values())


def test_mirror_reading_is_the_same_for_a_clip_and_its_mirror_image_with_directions_swapped(unused_clips):
    from videopoet.eval.probe import MIRRORED_DIRECTIONS

    base = load_probe("learned")
    p = base.with_mirror(True)
    assert p.config.mirror and not base.config.mirror
    v = unused_clips[1].video
    colours, a = p.object_logits(v)
    colours_m, b = p.object_logits(np.ascontiguousarray(v[:, :, ::-1]))
    assert colours == colours_m and len(colours) >= 1
    for name in ("presence", "shape", "size"):
        assert torch.allclose(getattr(a, name), getattr(b, name), atol=1e-4), name
    assert torch.allclose(a.direction, b.direction[:, MIRRORED_DIRECTIONS], atol=1e-4)
    # and it differs from the single reading (a second opinion, not a copy)
    _, single = base.object_logits(v)
    assert not torch.allclose(single.shape, a.shape, atol=1e-3)
    got = p.read_objects(v)
    want = {o["colour"]: o for o in unused_clips[1].attributes["objects"]}
    assert set(got) == set(want) and all(got[c].direction == want[c]["direction"] for c in got)


def test_eval_scores_with_the_learned_probe(unused_clips):
    from videopoet.eval.run import validate_probes
    from videopoet.eval.tasks_eval import Job

    jobs = [Job(i, c.caption, c.video, c.audio[0], c.attributes) for i, c in enumerate(unused_clips[:6])]
    learned = validate_probes("t2v", jobs, probe="learned")
    hand = validate_probes("t2v", jobs)
    assert learned["probe"] == "learned" and hand["probe"] == "hand"
    assert learned["ground_truth"] >= 0.9 and hand["ground_truth"] >= 0.9
    assert validate_probes("v2a", jobs, probe="learned")["ground_truth_scores"]["tone"] == 1.0


def test_validation_table_beside_the_hand_written_probes():
    from videopoet.eval.probe_train import ATTRIBUTES, format_validation, validate_probe

    r = validate_probe(load_probe("learned"), f"shapes:4:{UNUSED_SEED}:single", round_trip=False)
    assert set(r) >= {"learned", "hand", "gate", "passed"} and list(r["learned"]) == ["original"]
    assert r["learned"]["original"]["objects"] == 4 and set(r["gate"]) == set(ATTRIBUTES)
    table = format_validation([r])
    assert "learned original" in table and "hand original" in table and "clicks" in table
    with pytest.raises(InputError):  # the training seed is refused
        validate_probe(load_probe("learned"), "shapes:4:0", round_trip=False)


@pytest.mark.parametrize("cmd,flags", [("train-probe", ["--clips", "--round-trips", "--minutes", "--seed", "--cache",
                                                          "--frames", "--audio-round-trips", "--mirror"]),
                                       ("validate-probe", ["--data", "--probe", "--json", "--no-round-trip", "--mirror"])])
def test_cli_help(cmd, flags, capsys):
    from videopoet import cli

    with pytest.raises(SystemExit) as e:
        cli.main(["eval", cmd, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for f in flags:
        assert f in out
