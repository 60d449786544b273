"""Tokenizer evaluation: log-mel L1, attribute read-back probes and the eval commands, on cases with
known answers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from videopoet.data.shapes import ShapesDataset
from videopoet.eval.audio_metrics import log_mel_l1
from videopoet.eval.readback import audio_readback_agreement, read_objects, video_readback_agreement


@pytest.fixture(scope="module")
def clips():
    ds = ShapesDataset(24, seed=4242, ground_truth=False, min_objects=1, max_objects=2)
    return [ds.clip(i) for i in range(24)]


def test_log_mel_l1_known_values():
    rng = np.random.default_rng(0)
    x = (0.3 * rng.standard_normal(16000)).astype(np.float32)
    assert log_mel_l1(x, x) == 0.0
    # doubling the amplitude multiplies every band's power by 4: |log 4| where power >> 1e-5
    assert log_mel_l1(x, 2 * x) == pytest.approx(math.log(4), abs=0.01)
    # a 1 kHz low-pass empties the bands above it (floor 1e-5): a large distance
    from videopoet.eval.tokenizer_eval import lowpass

    assert log_mel_l1(x, lowpass(x, 16000, 1000.0)) > 3.0


def test_video_probe_reads_the_ground_truth_and_catches_changes(clips):
    videos = [c.video for c in clips]
    attrs = [c.attributes for c in clips]
    same = video_readback_agreement(videos, videos, attrs)
    assert same["probe_colour"] == 1.0 and same["probe_direction"] >= 0.95 and same["probe_shape"] >= 0.9
    assert same["agree_all"] == 1.0 and same["objects"] >= 20
    # mirrored left-right: colours stay, horizontal motion reverses
    flipped = video_readback_agreement(videos, [v[:, :, ::-1] for v in videos], attrs)
    assert flipped["agree_colour"] == 1.0
    horizontal = sum(any(d in o["direction"] for d in ("left", "right")) for a in attrs for o in a["objects"]
                     if sum(p["colour"] == o["colour"] for p in a["objects"]) == 1)
    assert flipped["agree_direction"] <= 1 - 0.9 * horizontal / flipped["objects"]
    # red painted green: that colour's objects are lost
    v = clips[0].video.copy()
    obj = clips[0].attributes["objects"][0]
    got = read_objects(v)
    assert obj["colour"] in got and got[obj["colour"]].shape == obj["shape"]
    grey = v.mean(-1, keepdims=True).repeat(3, -1).astype(np.uint8)
    assert read_objects(grey) == {}


def test_audio_probe_tones_and_clicks(clips):
    audios = [c.audio[0] for c in clips]
    attrs = [c.attributes for c in clips]
    same = audio_readback_agreement(audios, audios, attrs, 16000)
    assert same["probe_tone"] == 1.0 and same["agree_tone"] == 1.0
    assert same["clicks"] > 10 and same["clicks_within_tol"] == 1.0 and same["click_error_ms_median"] == 0.0
    late = [np.concatenate([np.zeros(320, np.float32), a[:-320]]) for a in audios]  # 20 ms later
    shifted = audio_readback_agreement(audios, late, attrs, 16000)
    assert shifted["agree_tone"] == 1.0 and shifted["clicks_within_tol"] == 0.0
    from videopoet.eval.tokenizer_eval import lowpass

    low = audio_readback_agreement(audios, [lowpass(a, 16000, 1000.0) for a in audios], attrs, 16000)
    assert low["clicks_within_tol"] == 0.0  # the 3.2 kHz clicks are gone


def _debug_video_tokenizer(tmp_path):
    import torch

    from videopoet.config import from_dict, load_yaml
    from videopoet.tokenizers.video import VideoTokenizer, VideoTokenizerConfig

    torch.manual_seed(0)
    d = tmp_path / "vt"
    VideoTokenizer(from_dict(VideoTokenizerConfig, load_yaml("tokenizer/debug")["model"])).save_pretrained(d)
    return d


def test_tokenizer_eval_command(capsys, tmp_path):
    from videopoet import cli

    model = _debug_video_tokenizer(tmp_path)
    rc = cli.main(["tokenizer", "eval", "--data", "shapes:3", "--model", str(model), "--size", "32", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert out["items"] == 3 and set(out) >= {"tokenizer", "bicubic"}
    assert out["bicubic"]["psnr"] > out["tokenizer"]["psnr"]  # an untrained tokenizer loses to bicubic
    assert 0 <= out["tokenizer"]["readback"]["agree_colour"] <= 1
    assert cli.main(["tokenizer", "eval", "--data", str(tmp_path / "missing"), "--model", str(model)]) == 2
    assert "missing" in capsys.readouterr().err
    assert cli.main(["tokenizer", "eval", "--data", "shapes:x", "--model", str(model)]) == 2
    assert "shapes:N" in capsys.readouterr().err
