"""The offline corpus: reserved families refused, the synthetic camera, the MIDI writer, photo
loading with skip-and-count, and the object-weighted tokenizer batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from videopoet.data.corpus import SourceReport, camera_clip, check_not_reserved, load_photos, write_midi
from videopoet.errors import InputError


@pytest.mark.parametrize("path", ["/usr/share/sonic-pi/samples/bd_haus.flac", "/usr/share/sounds/alsa/Front_Center.wav",
                                  "/x/site-packages/comfyui_workflow_templates/media/a.mp4"])
def test_reserved_families_are_refused(path):
    with pytest.raises(InputError, match="reserved for blind evaluation"):
        check_not_reserved(path)


def test_camera_clip_moves_over_the_photo():
    yy, xx = np.mgrid[0:200, 0:300]
    photo = np.stack([(xx * 0.8) % 256, (yy * 1.2) % 256, ((xx + yy) * 0.5) % 256], -1).astype(np.uint8)
    clips = [camera_clip(np.random.default_rng(i), photo, 9, 64) for i in range(6)]
    assert all(c.shape == (9, 64, 64, 3) and c.dtype == np.uint8 for c in clips)
    moved = [float(np.abs(c[-1].astype(int) - c[0].astype(int)).mean()) for c in clips]
    assert max(moved) > 5.0  # the camera moves in some clips
    assert np.array_equal(camera_clip(np.random.default_rng(3), photo, 9, 64), clips[3])  # seeded


def test_midi_writer_writes_a_standard_midi_file(tmp_path):
    p = write_midi(tmp_path / "a.mid", [(0, 1, 60, 100), (1, 0.5, 64, 90)], program=5, tempo_bpm=100)
    data = p.read_bytes()
    assert data[:4] == b"MThd" and data[14:18] == b"MTrk"
    n = int.from_bytes(data[18:22], "big")
    assert len(data) == 22 + n and data[-3:] == b"\xff\x2f\x00"  # end of track
    assert bytes([0xC0, 5]) in data and bytes([0x90, 60, 100]) in data and bytes([0x80, 64, 0]) in data


def test_photos_load_with_a_report():
    rep = SourceReport()
    photos = load_photos(96, report=rep)
    held = load_photos(96, held_out=True)
    assert photos and not set(photos) & set(held)
    assert all(min(p.shape[:2]) == 96 and p.shape[2] == 3 for p in photos.values())
    assert len(rep.used) == len(photos)


def test_object_weights_sit_on_the_objects():
    from videopoet.tokenizers.video_train import TokenizerData, TokenizerDataConfig

    d = TokenizerData(TokenizerDataConfig(sources=["shapes"], frames=5, size=64, crop=0, object_weight=8.0, num_shapes=8))
    x, w = d.batch_with_weights(0)
    assert x.shape == (2, 3, 5, 64, 64) and w.shape == (2, 1, 5, 64, 64)
    assert set(torch.unique(w).tolist()) == {1.0, 9.0}
    # the weighted pixels are saturated (object) pixels or their 1-pixel rim, and cover 1-20% of a frame
    frac = float((w > 1).float().mean())
    assert 0.01 < frac < 0.2
    rgb = (x + 1) / 2
    sat = (rgb.max(1).values - rgb.min(1).values) / rgb.max(1).values.clamp_min(1e-6)
    assert float(sat[w[:, 0] > 1].mean()) > 2 * float(sat[w[:, 0] == 1].mean())
