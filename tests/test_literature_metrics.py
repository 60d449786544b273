"""Literature metrics: plumbing with randomly initialised networks of the right kind, and the
clear refusal without weights (nothing is downloaded)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from videopoet.errors import InputError, NotAvailableError
from videopoet.eval.literature import clipsim, fvd, i3d_inputs


def _tiny_clip(tmp_path):
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    words = ["red", "blue", "circle", "square", "a"]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, **{w + "</w>": i + 2 for i, w in enumerate(words)}}
    for ch in "abcdefghijklmnopqrstuvwxyz":
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    cfg = CLIPConfig(text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
                                      pad_token_id=1),
                     vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                        image_size=32, patch_size=8), projection_dim=16)
    torch.manual_seed(0)
    d = tmp_path / "clip"
    CLIPModel(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def test_clipsim_is_a_mean_cosine_in_minus_one_one_and_sees_the_caption(tmp_path):
    d = _tiny_clip(tmp_path)
    rng = np.random.default_rng(0)
    videos = [rng.integers(0, 256, (4, 48, 64, 3)).astype(np.uint8) for _ in range(2)]
    a = clipsim(videos, ["a red circle", "a blue square"], d)
    assert -1 <= a["clipsim"] <= 1 and len(a["per_video"]) == 2
    b = clipsim(videos, ["a blue square", "a red circle"], d)
    assert a["per_video"] != b["per_video"]  # the text matters
    same = clipsim([videos[0], videos[0]], ["a red circle", "a red circle"], d)
    assert same["per_video"][0] == pytest.approx(same["per_video"][1])


def test_metrics_without_weights_say_so():
    with pytest.raises(NotAvailableError, match="local path"):
        clipsim([np.zeros((1, 8, 8, 3), np.uint8)], ["x"], None)
    with pytest.raises(NotAvailableError, match="i3d_torchscript.pt"):
        fvd([np.zeros((16, 8, 8, 3), np.uint8)] * 2, [np.zeros((16, 8, 8, 3), np.uint8)] * 2, None, min_samples=2)


class _StandIn(torch.nn.Module):
    """A scripted network with I3D's call signature: (N, 3, 16, 224, 224) -> (N, 400)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(3, 8, kernel_size=(4, 16, 16), stride=(4, 16, 16))
        self.fc = torch.nn.Linear(8, 400)

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False):
        return self.fc(self.conv(x).mean(dim=(2, 3, 4)))


def test_fvd_plumbing_protocol_and_refusals(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "i3d.pt"
    torch.jit.save(torch.jit.script(_StandIn()), str(path))
    rng = np.random.default_rng(0)
    real = [rng.integers(0, 256, (17, 64, 64, 3)).astype(np.uint8) for _ in range(12)]
    dark = [(r // 4).astype(np.uint8) for r in real]
    x = i3d_inputs(real[:2])
    assert x.shape == (2, 3, 16, 224, 224) and float(x.min()) >= -1 and float(x.max()) <= 1
    same = fvd(real, real, path, min_samples=8)
    far = fvd(real, dark, path, min_samples=8)
    assert abs(same["fvd"]) < 1e-6 and far["fvd"] > 1.0 and "squash-resize" in far["protocol"]
    with pytest.raises(InputError, match="2048"):
        fvd(real, real, path)
    with pytest.raises(InputError, match="T >= 16"):
        fvd([np.zeros((8, 8, 8, 3), np.uint8)] * 8, real[:8], path, min_samples=8)
