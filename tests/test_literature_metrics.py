"""Literature metrics: plumbing with randomly initialised networks of the right kind, and the
clear refusal without weights (nothing is downloaded)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from videopoet.errors import InputError, NotAvailableError, VideoPoetError
from videopoet.eval.literature import clipsim, fad, fvd, i3d_inputs, inception_score_ucf101


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
    with pytest.raises(NotAvailableError, match="C3D fine-tuned on UCF-101"):
        inception_score_ucf101([np.zeros((16, 8, 8, 3), np.uint8)], None, min_samples=1)
    with pytest.raises(NotAvailableError, match="nowhere.pt does not exist"):
        inception_score_ucf101([np.zeros((16, 8, 8, 3), np.uint8)], "nowhere.pt", min_samples=1)
    with pytest.raises(NotAvailableError, match="VGGish"):
        fad([np.zeros(16000)] * 2, [np.zeros(16000)] * 2, None)


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


# ---------------------------------------------------------------- Inception Score (C3D, UCF-101)


def test_inception_score_known_answers():
    from videopoet.eval.literature import inception_score

    assert inception_score(np.full((40, 101), 1 / 101), splits=10) == pytest.approx((1.0, 0.0), abs=1e-12)
    assert inception_score(np.eye(7), splits=1)[0] == pytest.approx(7.0, rel=1e-12)  # 7 sure, distinct classes
    assert inception_score(np.eye(12)[[0, 1, 2] * 4], splits=1)[0] == pytest.approx(3.0, rel=1e-12)
    # by hand: p(y) = (3/4, 1/4); KL = log(4/3) and (1/2) log(4/3); IS = exp(3/4 log(4/3))
    assert inception_score(np.array([[1.0, 0.0], [0.5, 0.5]]), splits=1)[0] == pytest.approx((4 / 3) ** 0.75, rel=1e-12)
    # splits are consecutive chunks: an all-uniform half (IS 1) and a two-class half (IS 2)
    probs = np.concatenate([np.full((2, 4), 0.25), np.eye(4)[[0, 1]]])
    assert inception_score(probs, splits=2) == pytest.approx((1.5, 0.5), rel=1e-12)
    with pytest.raises(InputError, match="summing to 1"):
        inception_score(np.full((4, 3), 0.5))
    with pytest.raises(InputError, match="3 samples cannot make 10 splits"):
        inception_score(np.eye(3))


def _tiny_c3d():
    from videopoet.eval.literature_nets import C3D

    torch.manual_seed(0)
    net = C3D(widths=(4, 4, 8, 8, 8), hidden=16).eval()
    net.mean.copy_(torch.rand(net.mean.shape) * 120)
    return net


def _clips(n, t=16, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (t, 40, 56, 3)).astype(np.uint8) for _ in range(n)]


def test_c3d_inputs_are_bgr_112_whatever_the_resize():
    from videopoet.eval.literature import c3d_inputs

    red = [np.full((17, 40, 50, 3), (255, 0, 0), np.uint8)]
    for resize in ("tganv2", "tgan", "c3d"):
        x = c3d_inputs(red, resize)
        assert x.shape == (1, 3, 16, 112, 112)
        assert torch.allclose(x[0, :, :, 20, 30].T, torch.tensor([0.0, 0.0, 255.0]).expand(16, 3), atol=1e-3)
    with pytest.raises(InputError, match="tganv2, tgan or c3d"):
        c3d_inputs(red, "squash")
    with pytest.raises(InputError, match="T >= 16"):
        c3d_inputs(_clips(1, t=8), "tganv2")


def test_c3d_mean_volume_takes_c3ds_centre_crop():
    from videopoet.eval.literature_nets import c3d_mean_volume

    cols = torch.arange(171.0).expand(1, 3, 16, 128, 171)  # Caffe's blob shape, columns numbered
    m = c3d_mean_volume(cols, "here")
    assert m.shape == (3, 16, 112, 112) and float(m[0, 0, 0, 0]) == 29 and float(m[0, 0, 0, -1]) == 140
    assert torch.equal(c3d_mean_volume(torch.tensor([1.0, 2.0, 3.0]), "here")[:, 5, 7, 9], torch.tensor([1.0, 2, 3]))
    with pytest.raises(VideoPoetError, match="here: the C3D mean has shape"):
        c3d_mean_volume(torch.zeros(3, 16, 64, 64), "here")


def test_c3d_weights_load_back_from_safetensors_pt_and_npz(tmp_path):
    from safetensors.torch import save_file

    from videopoet.eval.literature import c3d_inputs, c3d_probabilities
    from videopoet.eval.literature_nets import load_c3d

    net = _tiny_c3d()
    clips = _clips(3)
    with torch.no_grad():
        want = torch.softmax(net(c3d_inputs(clips)).double(), -1).numpy()
    assert want.shape == (3, 101) and np.allclose(want.sum(1), 1.0)
    st = tmp_path / "c3d.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(st))
    got = c3d_probabilities(clips, st)
    assert np.allclose(got, want, rtol=1e-5, atol=1e-9) and np.array_equal(got, c3d_probabilities(clips, st))

    # c3d-pytorch names under a wrapper, fc8 renamed, and the mean in a separate TGAN-style file
    sd = {k: v for k, v in net.state_dict().items() if k != "mean"}
    renamed = {"module." + k.replace("conv1a", "conv1").replace("conv2a", "conv2").replace("fc8", "fc8_ucf101"): v
               for k, v in sd.items()}
    pt = tmp_path / "c3d.pt"
    torch.save({"state_dict": renamed, "epoch": 3}, pt)
    full = torch.zeros(1, 3, 16, 128, 171)
    full[..., 8:120, 29:141] = net.mean
    np.savez(tmp_path / "mean2.npz", mean=full.numpy())
    assert np.allclose(c3d_probabilities(clips, pt, mean_path=tmp_path / "mean2.npz"), want, rtol=1e-5, atol=1e-9)
    with pytest.raises(NotAvailableError, match="holds no C3D input mean"):
        load_c3d(pt)

    # Chainer's npz names (conv1a/W, conv1a/b) with the mean inside
    npz = tmp_path / "c3d.npz"
    np.savez(npz, **{k.replace(".weight", "/W").replace(".bias", "/b"): v.numpy() for k, v in net.state_dict().items()})
    assert np.allclose(c3d_probabilities(clips, npz), want, rtol=1e-5, atol=1e-9)


def test_c3d_wrong_weights_name_the_file(tmp_path):
    from safetensors.torch import save_file

    from videopoet.eval.literature_nets import C3D, load_c3d

    sd = {k: v.contiguous() for k, v in _tiny_c3d().state_dict().items()}
    bad = tmp_path / "wrong_keys.safetensors"
    save_file({k.replace("conv3b", "conv3c"): v for k, v in sd.items()}, str(bad))
    with pytest.raises(VideoPoetError, match=r"wrong_keys\.safetensors: the keys do not match C3D.*conv3b\.weight"):
        load_c3d(bad)
    sports = tmp_path / "sports1m.safetensors"
    save_file({k: v.contiguous() for k, v in C3D(widths=(4, 4, 8, 8, 8), hidden=16, classes=487).state_dict().items()},
              str(sports))
    with pytest.raises(VideoPoetError, match=r"sports1m\.safetensors: fc8 has 487 classes.*101"):
        load_c3d(sports)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not weights")
    with pytest.raises(VideoPoetError, match=r"junk\.pt: cannot read weights"):
        load_c3d(junk)


def test_inception_score_through_c3d_is_one_when_the_network_ignores_its_input(tmp_path):
    from safetensors.torch import save_file

    from videopoet.eval.literature import inception_score_ucf101

    net = _tiny_c3d()
    with torch.no_grad():
        net.fc8.weight.zero_()
        net.fc8.bias.copy_(torch.linspace(-2, 2, 101))  # every clip gets the same p(y|x)
    path = tmp_path / "c3d.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    clips = _clips(4, t=17)
    r = inception_score_ucf101(clips, path, splits=2, min_samples=4)
    assert r["is"] == pytest.approx(1.0, abs=1e-9) and r["is_std"] == pytest.approx(0.0, abs=1e-9)
    assert r["samples"] == 4 and "tganv2" in r["protocol"] and "aligned corners" in r["protocol"]
    assert "128x171" in inception_score_ucf101(clips, path, splits=1, min_samples=4, resize="c3d")["protocol"]
    with pytest.raises(InputError, match="10000"):
        inception_score_ucf101(clips, path)


# ------------------------------------------------------------------------- FAD (VGGish)


def test_vggish_front_end_known_values():
    from videopoet.eval.literature import vggish_examples, vggish_log_mel, vggish_mel_matrix

    # the mel weights from VGGish's definition, written independently: 1127 ln(1 + f / 700), triangles in mel
    def mel(f):
        return 1127.0 * np.log1p(np.asarray(f, np.float64) / 700.0)

    edges = np.linspace(mel(125.0), mel(7500.0), 66)
    spec_mel = mel(np.linspace(0.0, 8000.0, 257))
    ref = np.stack([np.clip(np.minimum((spec_mel - edges[i]) / (edges[i + 1] - edges[i]),
                                       (edges[i + 2] - spec_mel) / (edges[i + 2] - edges[i + 1])), 0, None)
                    for i in range(64)], axis=1)
    ref[0] = 0.0
    assert np.allclose(vggish_mel_matrix(), ref, rtol=1e-9, atol=1e-12)

    assert np.allclose(vggish_log_mel(np.zeros(16000)), np.log(0.01))  # silence: log of the offset
    t = np.arange(3 * 16000) / 16000
    tone = 0.5 * np.sin(2 * np.pi * 1000.0 * t)
    centres_hz = 700.0 * np.expm1(edges[1:-1] / 1127.0)
    assert set(vggish_log_mel(tone).argmax(1)) == {int(np.abs(centres_hz - 1000.0).argmin())}
    # 25 ms windows every 10 ms, no padding; 96-frame examples, the partial one dropped
    assert vggish_log_mel(np.zeros(16000)).shape == (98, 64)
    assert [len(vggish_examples(np.zeros(n), 16000)) for n in (15599, 15600, 48000)] == [0, 1, 3]
    # other rates are resampled to 16 kHz first; stereo is mixed to mono; int16 is scaled
    tone48 = 0.5 * np.sin(2 * np.pi * 1000.0 * np.arange(3 * 48000) / 48000)
    assert np.allclose(vggish_examples(tone48, 48000), vggish_examples(tone, 16000), atol=0.05)
    assert np.allclose(vggish_examples(np.stack([tone, tone]), 16000), vggish_examples(tone, 16000))
    pcm = (tone * 32767).astype(np.int16)
    assert np.allclose(vggish_examples(pcm, 16000), vggish_examples(pcm / 32768.0, 16000))


def _tiny_vggish():
    from videopoet.eval.literature_nets import VGGish

    torch.manual_seed(0)
    net = VGGish(widths=(4, 8, 8, 8), hidden=128).eval()
    with torch.no_grad():  # random weights barely separate inputs: scale the embedding so distances are O(1)
        net.fc2.weight.mul_(1000.0)
    return net


def test_vggish_weights_load_back_from_torchvggish_and_tf_names(tmp_path):
    from videopoet.eval.literature import vggish_embeddings, vggish_examples
    from videopoet.eval.literature_nets import load_vggish

    net = _tiny_vggish()
    rng = np.random.default_rng(0)
    clips = [rng.normal(0, 0.1, 16000 * 2) for _ in range(2)]
    with torch.no_grad():
        want = net(torch.from_numpy(np.concatenate([vggish_examples(c, 16000) for c in clips]))[:, None]).double()
    assert want.shape == (4, 128)  # 2 s -> 2 examples per clip

    order = ["features.0", "features.3", "features.6", "features.8", "features.11", "features.13",
             "embeddings.0", "embeddings.2", "embeddings.4"]
    ours = ["conv1", "conv2", "conv3_1", "conv3_2", "conv4_1", "conv4_2", "fc1_1", "fc1_2", "fc2"]
    sd = net.state_dict()
    tv = {f"{o}.{p}": sd[f"{n}.{p}"] for o, n in zip(order, ours, strict=True) for p in ("weight", "bias")}
    tv["pproc._pca_matrix"] = torch.eye(128)  # the PCA postprocessor is not part of FAD's embedding
    torch.save(tv, tmp_path / "vggish.pth")
    got = vggish_embeddings(clips, tmp_path / "vggish.pth", 16000)
    assert np.allclose(got, want.numpy(), rtol=1e-5, atol=1e-7)
    assert np.array_equal(got, vggish_embeddings(clips, tmp_path / "vggish.pth", 16000))

    # TF variable names and layouts (HWIO kernels, (in, out) matrices), as exported to numpy
    scope = {"conv3_1": "conv3/conv3_1", "conv3_2": "conv3/conv3_2", "conv4_1": "conv4/conv4_1",
             "conv4_2": "conv4/conv4_2", "fc1_1": "fc1/fc1_1", "fc1_2": "fc1/fc1_2"}
    tf = {}
    for n in ours:
        w = sd[f"{n}.weight"]
        tf[f"vggish/{scope.get(n, n)}/weights"] = (w.permute(2, 3, 1, 0) if w.dim() == 4 else w.T).numpy()
        tf[f"vggish/{scope.get(n, n)}/biases"] = sd[f"{n}.bias"].numpy()
    np.savez(tmp_path / "vggish_tf.npz", **tf)
    assert np.allclose(vggish_embeddings(clips, tmp_path / "vggish_tf.npz", 16000), want.numpy(), rtol=1e-5, atol=1e-7)

    del tv["embeddings.4.bias"]
    torch.save(tv, tmp_path / "vggish_cut.pth")
    with pytest.raises(VideoPoetError, match=r"vggish_cut\.pth: the keys do not match VGGish.*fc2\.bias"):
        load_vggish(tmp_path / "vggish_cut.pth")


def test_fad_is_zero_against_itself_and_grows_with_a_shift(tmp_path):
    from safetensors.torch import save_file

    from videopoet.eval.literature import fad

    path = tmp_path / "vggish.safetensors"
    save_file({k: v.contiguous() for k, v in _tiny_vggish().state_dict().items()}, str(path))
    rng = np.random.default_rng(0)
    real = [rng.normal(0, 0.1, 16000 * 20) for _ in range(8)]  # 160 examples of 0.96 s
    t = np.arange(16000 * 20) / 16000
    same = fad(real, real, path)
    assert same["examples"] == [160, 160] and same["clips"] == [8, 8] and abs(same["fad"]) < 1e-5
    shifted = [fad(real, [r + a * np.sin(2 * np.pi * 440.0 * t) for r in real], path)["fad"] for a in (0.02, 0.1, 0.5)]
    assert 0.01 < shifted[0] < shifted[1] < shifted[2]  # a 440 Hz tone added at growing amplitudes
    redraw = [rng.normal(0, 0.1, 16000 * 20) for _ in range(8)]  # the same noise drawn again
    assert fad(real, redraw, path)["fad"] < shifted[1]
    with pytest.raises(InputError, match="need >= 2"):
        fad(real, [np.zeros(8000)], path)
