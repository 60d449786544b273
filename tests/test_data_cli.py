"""`videopoet data shapes` and `videopoet quickstart`: what they write, read back and checked by value."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import yaml
from PIL import Image

from videopoet import cli
from videopoet.data.datasets import ClipDataset
from videopoet.data.media import read_video
from videopoet.data.shapes import (
    ShapesConfig,
    ShapesDataset,
    click_times,
    dominant_frequency,
    make_clip,
    nearest_tone,
    tone_frequency,
)

ARGS = ["--num", "3", "--size", "32", "--frames", "9", "--seed", "4", "--max-objects", "1", "--no-progress"]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0**2 / max(mse, 1e-12))


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    assert cli.main(["data", "shapes", "--out", str(out), *ARGS]) == 0
    return out


def test_data_shapes_writes_clips_ground_truth_and_manifest(written, capsys):
    cfg = ShapesConfig(size=32, frames=9, max_objects=1)
    lines = (written / "manifest.jsonl").read_text().splitlines()
    assert len(lines) == 3
    for i, line in enumerate(lines):
        rec = json.loads(line)
        clip = make_clip(cfg, seed=4, index=i)
        assert rec["caption"] == clip.caption and rec["attributes"] == clip.attributes
        assert rec["path"] == f"clips/{i:06d}.mp4" and rec["index"] == i and rec["seed"] == 4
        data = read_video(written / rec["path"], with_audio=True, sample_rate=16000)
        assert data.frames.shape == (9, 32, 32, 3) and data.fps == pytest.approx(8.0)
        assert _psnr(data.frames, clip.video) > 28  # H.264 at this size is close but lossy
        # the sound survives AAC: the dominant frequency is still the (shape, colour) pitch and the
        # clicks are still at the bounce times
        audio = data.audio[:, : clip.audio.shape[1]]
        peak = dominant_frequency(audio, 16000)
        obj = clip.attributes["objects"][0]
        assert abs(peak - tone_frequency(obj["shape"], obj["colour"])) < 2.0
        assert nearest_tone(peak) == (obj["shape"], obj["colour"])
        if np.all(np.diff(clip.all_bounce_times) > 0.02):
            np.testing.assert_allclose(click_times(audio, 16000), clip.all_bounce_times, atol=0.004)
        gt = np.load(written / rec["ground_truth"])
        np.testing.assert_array_equal(gt["positions"], clip.positions)
        np.testing.assert_array_equal(gt["ids"], clip.ids)
        np.testing.assert_allclose(gt["depth"], clip.depth, atol=1e-3)
        np.testing.assert_allclose(gt["flow"], clip.flow, atol=1e-2)
        np.testing.assert_allclose(gt["bounce_times"], clip.all_bounce_times)
        assert gt["labels"].shape == (1, 5)
    meta = json.loads((written / "shapes.json").read_text())
    assert meta["seed"] == 4 and meta["size"] == 32 and meta["frames"] == 9


def test_written_manifest_feeds_the_clip_dataset_like_the_in_memory_one(written):
    disk = ClipDataset(written / "manifest.jsonl", num_frames=9, fps=8.0, size=32, with_audio=True)
    mem = ShapesDataset(3, seed=4, size=32, frames=9, max_objects=1)
    assert len(disk) == 3
    a, b = disk[1], mem[1]
    assert a["caption"] == b["caption"]
    assert a["video"].shape == b["video"].shape and a["audio"].shape == b["audio"].shape
    assert (a["video"] - b["video"]).abs().mean() < 0.03


def test_same_seed_writes_the_same_manifest(written, tmp_path):
    assert cli.main(["data", "shapes", "--out", str(tmp_path), *ARGS]) == 0
    assert (tmp_path / "manifest.jsonl").read_text() == (written / "manifest.jsonl").read_text()


def test_options_from_a_config_file(tmp_path, capsys):
    cfg = tmp_path / "shapes.yaml"
    cfg.write_text(yaml.safe_dump({"num": 2, "size": 48, "frames": 3, "seed": 1, "progress": False}))
    out = tmp_path / "out"
    assert cli.main(["data", "shapes", "--config", str(cfg), "--out", str(out), "--num", "1"]) == 0
    rec = json.loads((out / "manifest.jsonl").read_text())  # one line: the flag beat the file
    assert rec["size"] == 48 and rec["frames"] == 3 and rec["seed"] == 1
    printed = capsys.readouterr().out
    assert "wrote 1 clips" in printed and str(out / "manifest.jsonl") in printed


@pytest.mark.parametrize(
    ("flags", "field"),
    [
        (["--num", "0"], "num"),
        (["--num", "1", "--size", "20"], "size"),
        (["--num", "1", "--size", "200"], "size"),
        (["--num", "1", "--frames", "0"], "frames"),
        (["--num", "1", "--max-objects", "9"], "max_objects"),
    ],
)
def test_bad_arguments_fail_in_one_line_naming_the_field(tmp_path, capsys, flags, field):
    assert cli.main(["data", "shapes", "--out", str(tmp_path / "o"), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and field in err and err.startswith("videopoet: error:")
    assert not (tmp_path / "o" / "manifest.jsonl").exists()


def test_quickstart_writes_clips_with_audio_and_a_contact_sheet(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli.main(["quickstart", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    clips = sorted((out / "shapes" / "clips").glob("*.mp4"))
    assert len(clips) == 6
    data = read_video(clips[0], with_audio=True)
    assert data.frames.shape == (17, 64, 64, 3) and data.audio is not None
    assert np.abs(data.audio).max() > 0.05  # a real sound track, not silence
    sheet = np.asarray(Image.open(out / "contact_sheet.png"))
    assert sheet.shape[0] > 6 * 64 and sheet.shape[1] > 8 * 64
    for i in range(6):
        assert make_clip(ShapesConfig(), 0, i).caption in printed
    assert str(out / "contact_sheet.png") in printed
    # the shipped tokenizers' round trip of clip 0: original | reconstruction, with decoded sound
    rec = read_video(out / "reconstruction.mp4", with_audio=True)
    assert rec.frames.shape == (17, 64, 128, 3)
    original = make_clip(ShapesConfig(), 0, 0).video.astype(float)
    assert np.abs(rec.frames[:, :, :64].astype(float) - original).mean() < 6  # left half: the clip (H.264)
    assert rec.audio is not None and np.abs(rec.audio).max() > 0.005
    m = re.search(r"video -> \(9, 16, 16\) tokens, PSNR ([\d.]+) dB, SSIM ([\d.]+); audio -> \(4, 106\) tokens", printed)
    assert m, printed
    assert float(m.group(1)) > 20 and float(m.group(2)) > 0.6  # shipped model: 26.3 dB, 0.842
    # what the probes read from clip 0 itself: its ground truth (a medium blue diamond up-left, a small red triangle right)
    assert "read back from the original:   blue diamond up-left, red triangle right; tones: blue diamond, red triangle" in printed
    assert "read back from the round trip: " in printed
    # the embedded LM on every task and a 10 s long video, every output a playable file
    for name in ("t2v", "i2v", "continue", "inpaint", "outpaint", "stylize", "v2a", "a2v", "avcont"):
        v = read_video(out / f"{name}.mp4", with_audio=name in ("v2a", "a2v", "avcont"))
        assert v.frames.shape == (17, 64, 64, 3), name
        assert name not in ("v2a", "a2v", "avcont") or np.abs(v.audio).max() > 0.001, name
    assert np.asarray(Image.open(out / "t2i.png")).shape == (64, 64, 3)
    assert read_video(out / "long.mp4").frames.shape == (80, 64, 64, 3)
    assert "long video: clip 0 continued to 10 s" in printed and "LM (embedded default): 4.8M parameters; 11 outputs" in printed
    # the index: every output beside its input, with what the probes read
    page = (out / "index.html").read_text()
    index = json.loads((out / "index.json").read_text())
    assert [e["task"] for e in index] == ["t2v", "t2i", "i2v", "continue", "inpaint", "outpaint", "stylize", "v2a",
                                          "a2v", "avcont", "extend"]
    for e in index:
        assert (out / e["output"]).is_file() and f'src="{e["output"]}"' in page
        assert all((out / i).is_file() for i in e["inputs"])
    assert index[2]["inputs"] == ["shapes/clips/000000.mp4"]
    sheet = np.asarray(Image.open(out / "tasks.png"))
    assert sheet.shape[0] > 11 * 64
