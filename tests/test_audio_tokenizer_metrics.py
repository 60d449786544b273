"""Audio metrics, reference codecs, and the `videopoet audio` / `videopoet text` commands."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from videopoet.cli import main
from videopoet.errors import InputError
from videopoet.eval.audio_metrics import (
    mel_distance,
    mulaw_codec,
    pcm_downsample_codec,
    si_snr,
    stft_distance,
)
from videopoet.tokenizers.audio import AudioTokenizer
from videopoet.tokenizers.audio_train import load_recipe, synthetic_waveforms


@pytest.fixture(scope="module")
def x():
    return torch.stack(synthetic_waveforms(2, 1.0, 16000, 3))  # (2, 1, 16000)


def test_identical_audio_scores_perfectly(x):
    assert mel_distance(x, x) == 0.0
    assert stft_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    assert si_snr(x, x) > 60


def test_metrics_order_small_and_large_errors(x):
    g = torch.Generator().manual_seed(0)
    small = x + 0.003 * torch.randn(x.shape, generator=g)
    large = x + 0.1 * torch.randn(x.shape, generator=g)
    assert mel_distance(x, small) < mel_distance(x, large)
    assert stft_distance(x, small) < stft_distance(x, large)
    assert si_snr(x, small) > si_snr(x, large) + 10


def test_si_snr_is_scale_invariant_and_nan_for_silence(x):
    noisy = x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    assert si_snr(x, 0.3 * noisy) == pytest.approx(si_snr(x, noisy), abs=1e-3)
    assert math.isnan(si_snr(torch.zeros(1, 800), torch.randn(1, 800)))
    assert math.isnan(stft_distance(torch.zeros(1, 800), torch.randn(1, 800)))
    assert mel_distance(torch.zeros(1, 800), torch.zeros(1, 800)) == 0.0  # mel distance is defined
    noise = torch.randn(1, 16000, generator=torch.Generator().manual_seed(1))
    sine = torch.sin(torch.arange(16000) * 0.1)[None]
    assert si_snr(sine, sine + noise) == pytest.approx(10 * math.log10(0.5 / 1.0), abs=0.5)


def test_metric_input_errors(x):
    with pytest.raises(InputError, match="NaN"):
        mel_distance(x, x * float("nan"))
    with pytest.raises(InputError, match="empty"):
        si_snr(torch.zeros(0), torch.zeros(0))
    with pytest.raises(InputError, match="mono"):
        stft_distance(torch.zeros(1, 2, 100), torch.zeros(1, 2, 100))
    with pytest.raises(InputError, match="batch"):
        si_snr(torch.zeros(2, 100), torch.zeros(3, 100))


def test_reference_codecs_at_a_bit_rate(x):
    y = mulaw_codec(x, 16000, bits_per_second=1600, bits=8)  # 200 Hz x 8 bits
    assert y.shape == x.shape
    hi = mulaw_codec(x, 16000, bits_per_second=16000 * 16, bits=16)  # lossless-ish
    assert si_snr(x, hi) > 30
    assert mel_distance(x, y) > mel_distance(x, hi)
    p = pcm_downsample_codec(x, 16000, bits_per_second=16000 * 12, bits=12)
    assert si_snr(x, p) > 30


# ------------------------------------------------------------------------------------------ CLI
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    cfg = load_recipe("audio/debug").model
    d = tmp_path_factory.mktemp("codec") / "m"
    AudioTokenizer(cfg).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def wav(tmp_path_factory):
    from videopoet.data.writers import write_audio

    sr = 22050
    t = np.arange(int(0.6 * sr)) / sr
    stereo = np.stack([0.4 * np.sin(2 * math.pi * 330 * t), 0.4 * np.sin(2 * math.pi * 660 * t)]).astype(np.float32)
    p = tmp_path_factory.mktemp("in") / "stereo.wav"
    write_audio(p, stereo, sr)
    return p


def test_cli_reconstruct_prints_metrics_and_notes(model_dir, wav, tmp_path, capsys):
    assert main(["audio", "reconstruct", "--input", str(wav), "--out", str(tmp_path / "r.wav"),
                 "--model", str(model_dir)]) == 0
    out = capsys.readouterr().out
    assert "mixed down to mono" in out and "resampled 22050 Hz -> 8000 Hz" in out
    assert "mel_distance=" in out and "si_snr_db=" in out and "mu-law 8-bit" in out
    from videopoet.data.media import read_audio

    y, sr = read_audio(tmp_path / "r.wav", sample_rate=8000)
    assert sr == 8000 and abs(y.shape[-1] - 4800) <= 40


def test_cli_encode_decode_round_trip(model_dir, wav, tmp_path, capsys):
    codes = tmp_path / "c.safetensors"
    assert main(["audio", "encode", "--input", str(wav), "--out", str(codes), "--model", str(model_dir)]) == 0
    from safetensors import safe_open

    with safe_open(str(codes), framework="pt") as f:
        c = f.get_tensor("codes")
        meta = f.metadata()
    assert c.shape == (2, 120) and meta["codebook_size"] == "16" and meta["num_samples"] == "4800"
    assert main(["audio", "decode", "--input", str(codes), "--out", str(tmp_path / "d.wav"),
                 "--model", str(model_dir)]) == 0
    assert (tmp_path / "d.wav").stat().st_size > 1000


def test_cli_errors_are_one_line(model_dir, tmp_path, capsys):
    assert main(["audio", "reconstruct", "--input", str(tmp_path / "none.wav"), "--out", str(tmp_path / "o.wav"),
                 "--model", str(model_dir)]) == 2
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not safetensors")
    assert main(["audio", "decode", "--input", str(bad), "--out", str(tmp_path / "o.wav"),
                 "--model", str(model_dir)]) == 2
    err = capsys.readouterr().err
    assert "not a code file" in err


def test_cli_text_train_spm(tmp_path, capsys):
    caps = tmp_path / "captions.txt"
    caps.write_text("a red circle moves left\na blue square moves right\n" * 20)
    assert main(["text", "train-spm", "--captions", str(caps), "--shapes", "50", "--out", str(tmp_path / "spm"),
                 "--vocab-size", "64"]) == 0
    assert "0 would be truncated" in capsys.readouterr().out
    assert main(["text", "encode", "a red circle", "--model", str(tmp_path / "spm")]) == 0
    assert "tokens" in capsys.readouterr().out
