"""Model directories: weight-only int8 storage."""

from __future__ import annotations

import pytest
import torch

from videopoet.checkpoint import WEIGHTS_NAME, dequantize_int8, load_model_dir, quantize_int8
from videopoet.errors import VideoPoetError
from videopoet.lm.pretrained import build_lm, load_lm, save_lm


def test_int8_rows_round_trip_within_half_a_step():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(64, 96, generator=g) * torch.linspace(0.01, 3, 64)[:, None]  # rows of very different size
    q, scale = quantize_int8(v)
    assert q.dtype == torch.int8 and scale.dtype == torch.float16 and scale.shape == (64,)
    err = (dequantize_int8(q, scale) - v).abs().amax(dim=1)
    step = v.abs().amax(dim=1) / 127
    assert bool((err <= 0.5 * step * 1.01 + 1e-3 * step).all())  # +fp16 rounding of the scale
    assert int(q.abs().max()) == 127


def test_an_int8_lm_directory_is_about_half_of_float16_and_predicts_alike(tmp_path):
    torch.manual_seed(0)
    model, vocab = build_lm("debug")
    save_lm(tmp_path / "fp16", model, vocab, dtype=torch.float16)
    save_lm(tmp_path / "int8", model, vocab, dtype=torch.int8)
    size = lambda d: (tmp_path / d / WEIGHTS_NAME).stat().st_size  # noqa: E731
    assert size("int8") < 0.62 * size("fp16")
    a, _ = load_lm(tmp_path / "fp16")
    b, _ = load_lm(tmp_path / "int8")
    assert next(b.parameters()).dtype == torch.float32
    ids = torch.randint(0, vocab.size, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        pa, pb = (m.logits(m(ids)).float().log_softmax(-1) for m in (a, b))
    # same predictions up to quantization noise: KL(fp16 || int8) per position
    kl = (pa.exp() * (pa - pb)).sum(-1)
    assert float(kl.mean()) < 1e-3


def test_a_scale_without_its_codes_is_refused(tmp_path):
    from safetensors.torch import save_file

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    save_file({"w::scale": torch.ones(3, dtype=torch.float16), "w": torch.ones(3, 4)}, str(tmp_path / "m" / WEIGHTS_NAME))
    with pytest.raises(VideoPoetError, match="w::scale has no matching int8 tensor"):
        load_model_dir(tmp_path / "m")
