"""`videopoet tokenizer reconstruct|encode|decode|train` on a tiny model; clear errors for bad media."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from videopoet import cli
from videopoet.config import from_dict, load_yaml
from videopoet.tokenizers.video import VideoTokenizer, VideoTokenizerConfig


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tok") / "model"
    VideoTokenizer(from_dict(VideoTokenizerConfig, load_yaml("tokenizer/debug")["model"])).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    from videopoet.data.writers import write_video

    t = np.arange(12)[:, None, None, None]
    yy, xx = np.mgrid[0:48, 0:48]
    frames = np.zeros((12, 48, 48, 3), np.uint8)
    frames[..., 0] = (xx * 5) % 256
    frames[..., 1] = (yy * 5) % 256
    frames[..., 2] = (t[..., 0] * 20) % 256
    return write_video(tmp_path_factory.mktemp("media") / "clip.mp4", frames, fps=8)


def run(capsys, *args):
    rc = cli.main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_reconstruct_prints_psnr_ssim_and_writes_side_by_side(capsys, tmp_path, model_dir, clip):
    from videopoet.data.media import read_video

    out = tmp_path / "rec.mp4"
    rc, stdout, err = run(capsys, "tokenizer", "reconstruct", "--input", clip, "--out", out, "--model", model_dir,
                          "--frames", 6, "--size", 32, "--side-by-side")
    assert rc == 0, err
    assert "PSNR" in stdout and "SSIM" in stdout and "tokens (3, 4, 4)" in stdout
    v = read_video(out)
    assert v.frames.shape == (6, 32, 64, 3)  # 6 frames kept (padded to 9 inside, trimmed back)


def test_encode_decode_round_trip_through_a_code_file(capsys, tmp_path, model_dir, clip):
    from safetensors import safe_open

    from videopoet.data.media import read_video

    codes = tmp_path / "c.safetensors"
    rc, _, err = run(capsys, "tokenizer", "encode", "--input", clip, "--out", codes, "--model", model_dir,
                     "--frames", 5, "--size", 32)
    assert rc == 0, err
    with safe_open(str(codes), framework="pt") as f:
        c = f.get_tensor("codes")
        assert f.metadata()["frames"] == "5"
    assert c.shape == (1, 2, 4, 4) and int(c.max()) < 64
    rc, _, err = run(capsys, "tokenizer", "decode", "--codes", codes, "--out", tmp_path / "d.mp4", "--model", model_dir)
    assert rc == 0, err
    assert read_video(tmp_path / "d.mp4").frames.shape == (5, 32, 32, 3)
    tok = VideoTokenizer.from_pretrained(model_dir)
    ref = tok.decode(c.long())  # the file decodes to exactly the model's decode
    assert ref.shape == (1, 3, 5, 32, 32)


def test_bad_media_and_bad_codes_are_one_line_errors(capsys, tmp_path, model_dir):
    from safetensors.torch import save_file

    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all")
    rc, _, err = run(capsys, "tokenizer", "reconstruct", "--input", junk, "--out", tmp_path / "o.mp4", "--model", model_dir)
    assert rc == 2 and "junk.mp4" in err and "Traceback" not in err
    rc, _, err = run(capsys, "tokenizer", "encode", "--input", tmp_path / "missing.mp4", "--out", tmp_path / "c", "--model", model_dir)
    assert rc == 2 and "missing.mp4" in err
    bad = tmp_path / "bad.safetensors"
    save_file({"codes": torch.full((1, 2, 4, 4), 999, dtype=torch.int32)}, str(bad))
    rc, _, err = run(capsys, "tokenizer", "decode", "--codes", bad, "--out", tmp_path / "o.mp4", "--model", model_dir)
    assert rc == 2 and "[0, 64)" in err
    rc, _, err = run(capsys, "tokenizer", "decode", "--codes", junk, "--out", tmp_path / "o.mp4", "--model", model_dir)
    assert rc == 2 and "junk.mp4" in err


def test_train_command_writes_a_loadable_model(capsys, tmp_path):
    rc, stdout, err = run(capsys, "tokenizer", "train", "--config", "tokenizer/debug", "--out", tmp_path,
                          "--set", "train.max_steps=2")
    assert rc == 0, err
    assert VideoTokenizer.from_pretrained(tmp_path / "model").config.bits == 6
    rc, _, err = run(capsys, "tokenizer", "train", "--config", "tokenizer/debug", "--out", tmp_path / "x",
                     "--set", "model.bits=0")
    assert rc == 2 and "bits" in err


def test_shipped_default_tokenizer_loads_and_round_trips():
    from videopoet.tokenizers.cli_video import load_video_tokenizer
    from videopoet.tokenizers.video_train import load_train_config

    tok = load_video_tokenizer()
    # the shipped model is the `cpu` preset's model (its vocabulary is the LM cpu preset's visual range)
    assert tok.config == load_train_config("tokenizer/cpu").model
    assert tok.config.bits == 18 and tok.token_shape((3, 17, 64, 64)) == (9, 16, 16)
    x = torch.zeros(1, 3, 17, 64, 64)
    codes = tok.encode(x)
    assert codes.shape == (1, 9, 16, 16) and tok.decode(codes).shape == (1, 3, 17, 64, 64)


@pytest.mark.slow
def test_end_to_end_train_then_reconstruct_improves_psnr(capsys, tmp_path, clip, model_dir):
    """Train the debug tokenizer for a minute through the CLI, then reconstruct a held-out clip."""
    import re

    rc, _, err = run(capsys, "tokenizer", "train", "--config", "tokenizer/debug", "--out", tmp_path / "run",
                     "--set", "train.max_steps=150", "--set", "loss.disc_start=100")
    assert rc == 0, err

    def rec_psnr(model):
        rc, out, err = run(capsys, "tokenizer", "reconstruct", "--input", clip, "--out", tmp_path / "r.mp4",
                           "--model", model, "--frames", 5, "--size", 32)
        assert rc == 0, err
        return float(re.search(r"PSNR ([\d.]+) dB", out).group(1))

    assert rec_psnr(tmp_path / "run" / "model") > rec_psnr(model_dir) + 1.5  # 6 bits per 4x8x8: coarse
