"""Video tokenizer (MAGVIT-v2 + LFQ): causality, shapes, codes, save/load, LFQ parity, bad input."""

from __future__ import annotations

import pytest
import torch

from videopoet.config import from_dict, load_yaml
from videopoet.errors import InputError
from videopoet.tokenizers.lfq import LFQ
from videopoet.tokenizers.video import VideoTokenizer, VideoTokenizerConfig


@pytest.fixture(scope="module")
def tok() -> VideoTokenizer:
    torch.manual_seed(0)
    cfg = from_dict(VideoTokenizerConfig, load_yaml("tokenizer/debug")["model"])
    return VideoTokenizer(cfg).eval()


def video(b=1, t=5, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, t, size, size, generator=g) * 2 - 1


# ------------------------------------------------------------------------------------- causality
def test_changing_later_frames_never_changes_frame0_codes(tok):
    x = video(t=17)
    y = x.clone()
    y[:, :, 1:] = video(t=16, seed=1)
    cx, cy = tok.encode(x), tok.encode(y)
    assert torch.equal(cx[:, 0], cy[:, 0])
    assert not torch.equal(cx[:, 1:], cy[:, 1:])  # the later codes do see the change


def test_frame0_latent_has_zero_gradient_from_later_frames(tok):
    x = video(t=9).requires_grad_(True)
    z = tok.encode_latent(x)  # (1, K, 3, 4, 4)
    z[:, :, 0].sum().backward()
    assert x.grad[:, :, 1:].abs().max() == 0
    assert x.grad[:, :, 0].abs().max() > 0
    # latent frame 1 sees frames 1..4 and nothing after
    x.grad = None
    tok.encode_latent(x)[:, :, 1].sum().backward()
    assert x.grad[:, :, 5:].abs().max() == 0 and x.grad[:, :, 1:5].abs().max() > 0


def test_decoder_is_causal_too(tok):
    codes = tok.encode(video(t=9))
    other = codes.clone()
    other[:, 1:] = (other[:, 1:] + 1) % tok.codebook_size
    assert torch.equal(tok.decode(codes)[:, :, 0], tok.decode(other)[:, :, 0])


def test_image_is_a_one_frame_video(tok):
    x = video(b=2, t=1)
    assert torch.equal(tok.encode(x[:, :, 0]), tok.encode(x))
    # a 9-frame video whose first frame is the image, other frames unrelated
    v = video(b=2, t=9, seed=7)
    assert not torch.equal(v[:, :, :1], x)
    v[:, :, :1] = x
    z_img, z_vid = tok.encode_latent(x[:, :, 0]), tok.encode_latent(v)[:, :, :1]
    assert z_vid.shape == z_img.shape
    torch.testing.assert_close(z_vid, z_img, rtol=0, atol=1e-5)
    sure = z_img.abs() > 1e-4  # bits whose sign a float rounding difference cannot flip
    bits_img = tok.quantizer.codes_to_latent(tok.encode(x[:, :, 0])) > 0
    bits_vid = tok.quantizer.codes_to_latent(tok.encode(v)[:, :1]) > 0
    assert torch.equal(bits_img[sure], bits_vid[sure]) and sure.float().mean() > 0.99
    assert tok.reconstruct(x[:, :, 0]).shape == (2, 3, 32, 32)


# ---------------------------------------------------------------------------------- codes/shapes
@pytest.mark.parametrize("frames,latent", [(1, 1), (5, 2), (17, 5), (33, 9)])
def test_shapes(tok, frames, latent):
    x = video(b=2, t=frames)
    codes = tok.encode(x)
    assert codes.shape == (2, latent, 4, 4) == (2, *tok.token_shape((3, frames, 32, 32)))
    assert tok.decode(codes).shape == (2, 3, frames, 32, 32)


def test_frame_count_not_1_plus_4k_is_padded_with_the_last_frame(tok):
    x = video(t=6)
    assert tok.token_shape((3, 6, 32, 32)) == (3, 4, 4)
    padded = torch.cat([x, x[:, :, -1:].expand(-1, -1, 3, -1, -1)], dim=2)
    assert torch.equal(tok.encode(x), tok.encode(padded))
    assert tok.decode(tok.encode(x)).shape[2] == 9
    assert tok.reconstruct(x).shape == x.shape


def test_codes_in_range_deterministic_and_int64(tok):
    x = video(b=2, t=5)
    a, b = tok.encode(x), tok.encode(x.clone())
    assert a.dtype == torch.int64 and torch.equal(a, b)
    assert int(a.min()) >= 0 and int(a.max()) < tok.vocab_size == 2**tok.config.bits


def test_decode_of_encode_uses_the_codes_bits(tok):
    codes = torch.randint(0, tok.codebook_size, (1, 2, 4, 4), generator=torch.Generator().manual_seed(0))
    z = tok.quantizer.codes_to_latent(codes)
    assert torch.equal(tok.quantizer.codes(z), codes)
    with torch.no_grad():
        out = tok.decode(codes)
        torch.testing.assert_close(out, tok.decode_latent(z).clamp(-1, 1), rtol=0, atol=0)
        # flipping one bit of one code changes the decoded pixels, and only from that latent frame on
        flipped = codes.clone()
        flipped[0, 1, 2, 2] ^= 1 << (tok.config.bits - 1)
        diff = (tok.decode(flipped) - out).abs()
    assert diff[:, :, :1].max() == 0  # latent frame 0 decodes to frame 0 alone (causal)
    assert diff[:, :, 1:].max() > 1e-3
    # decode(encode(x)) is what reconstruct returns
    x = video(t=5)
    with torch.no_grad():
        torch.testing.assert_close(tok.decode(tok.encode(x)), tok.reconstruct(x), rtol=0, atol=0)


def test_save_load_gives_identical_codes_and_reconstructions(tok, tmp_path):
    x = video(t=5)
    tok.save_pretrained(tmp_path / "m")
    loaded = VideoTokenizer.from_pretrained(tmp_path / "m")
    assert loaded.config == tok.config
    assert torch.equal(loaded.encode(x), tok.encode(x))
    assert torch.equal(loaded.decode(tok.encode(x)), tok.decode(tok.encode(x)))


# ------------------------------------------------------------------------------------- LFQ parity
def test_lfq_codes_and_entropies_agree_with_vector_quantize_pytorch():
    vqp = pytest.importorskip("vector_quantize_pytorch")
    torch.manual_seed(0)
    k = 10
    z = torch.randn(2, k, 3, 4, 4) * 0.05  # small values: soft assignments far from one-hot
    ours = LFQ(k, group_bits=k)(z)
    ref = vqp.LFQ(dim=k, codebook_size=2**k, entropy_loss_weight=1.0, commitment_loss_weight=1.0).train()
    # vector-quantize-pytorch makes its first channel the most significant bit: reverse the channels
    out, (per_sample, batch, commit) = ref(z.flip(1), return_loss_breakdown=True)
    assert torch.equal(out.indices, ours.codes)
    assert torch.equal(out.quantized.flip(1), ours.quantized)
    torch.testing.assert_close(ours.per_sample_entropy, per_sample, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.batch_entropy, batch, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.commitment, commit)


def test_factorized_entropy_exact_per_sample_and_upper_bound_on_batch():
    torch.manual_seed(0)
    z = torch.randn(4, 12, 2, 3, 3) * 0.02
    dense = LFQ(12, group_bits=12).entropies(z)
    fact = LFQ(12, group_bits=4).entropies(z)
    torch.testing.assert_close(fact[0], dense[0], rtol=1e-4, atol=1e-4)  # exact up to the log clamp
    assert fact[1] >= dense[1] - 1e-5
    # K = 18 in 2 x 2^9 sub-codebooks: memory linear in N * 2^9, not N * 2^18
    big = LFQ(18, group_bits=9)
    assert big.groups == [9, 9] and big.subcodebook0.shape == (512, 9)
    ps, be = big.entropies(torch.randn(1, 18, 5, 16, 16, requires_grad=True))
    assert torch.isfinite(ps) and 0 < be <= 18 * torch.log(torch.tensor(2.0)) + 1e-4


def test_lfq_straight_through_gradient():
    z = torch.randn(1, 6, 2, 2, 2, requires_grad=True)
    out = LFQ(6, group_bits=3)(z)
    out.quantized.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))


# ------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "bad,match",
    [
        (torch.zeros(1, 4, 5, 32, 32), "channels"),
        (torch.full((1, 3, 5, 32, 32), 1.5), r"\[-1, 1\]"),
        (torch.full((1, 3, 5, 32, 32), float("nan")), "NaN"),
        (torch.zeros(1, 3, 5, 30, 32), "multiples of 8"),
        (torch.zeros(1, 3, 5, 32, 32, dtype=torch.uint8), "float"),
        (torch.zeros(3, 32, 32), r"\(B, 3, T, H, W\)"),
    ],
)
def test_bad_video_raises_input_error(tok, bad, match):
    with pytest.raises(InputError, match=match):
        tok.encode(bad)


@pytest.mark.parametrize(
    "codes,match",
    [
        (torch.full((1, 2, 4, 4), 64), r"\[0, 64\)"),
        (torch.full((1, 2, 4, 4), -1), r"\[0, 64\)"),
        (torch.zeros(1, 2, 4, 4), "integer"),
        (torch.zeros(2, 4, 4, dtype=torch.long), r"\(B, t, h, w\)"),
    ],
)
def test_bad_codes_raise_input_error(tok, codes, match):
    with pytest.raises(InputError, match=match):
        tok.decode(codes)


# --------------------------------------------------------------------------------------- configs
def test_config_validation():
    with pytest.raises(ValueError, match="power of 2"):
        VideoTokenizerConfig(temporal_compression=3)
    with pytest.raises(ValueError, match="levels"):
        VideoTokenizerConfig(channel_mults=(1, 2), spatial_compression=8)
    with pytest.raises(ValueError, match="norm_groups"):
        VideoTokenizerConfig(channels=10, norm_groups=32)


@pytest.mark.parametrize("preset, temporal, spatial", [("debug", 4, 8), ("cpu", 2, 4), ("cpu_t4", 4, 4), ("magvit2-128", 4, 8)])
def test_presets_parse(preset, temporal, spatial):
    from videopoet.tokenizers.video_train import load_train_config

    cfg = load_train_config(f"tokenizer/{preset}")
    assert cfg.model.temporal_compression == temporal and cfg.model.spatial_compression == spatial


def test_paper_preset_shape_and_parameter_count_on_meta_device():
    from videopoet.tokenizers.video_train import load_train_config

    cfg = load_train_config("tokenizer/magvit2-128").model
    assert (cfg.resolution, cfg.frames, cfg.bits, cfg.channels, cfg.channel_mults, cfg.num_res_blocks) == (
        128, 17, 18, 128, (1, 2, 2, 4), 4)
    with torch.device("meta"):
        model = VideoTokenizer(cfg)
    assert model.token_shape((3, 17, 128, 128)) == (5, 16, 16)  # 1,280 tokens
    assert model.token_shape((3, 17, 128, 224)) == (5, 16, 28)
    assert model.vocab_size == 262_144
    n_enc = sum(p.numel() for p in model.encoder.parameters())
    n_dec = sum(p.numel() for p in model.decoder.parameters())
    assert (n_enc, n_dec) == (144_879_506, 226_135_043)  # 371.0M in all


def test_cpu_preset_is_small_enough_to_ship():
    from videopoet.tokenizers.video_train import load_train_config

    cfg = load_train_config("tokenizer/cpu").model
    with torch.device("meta"):
        n = sum(p.numel() for p in VideoTokenizer(cfg).parameters())
    assert n * 2 < 8e6  # fp16 bytes: 6.8 MB for the 32-channel K = 18 preset (the whole default stays within ~25-50 MB)


def test_lfq_entropy_terms_stay_fp32_under_bf16_autocast():
    """The entropy terms (and their gradients) are computed in fp32 even inside a bf16 autocast
    region (a matmul there would run in bf16: ~12% error in the entropy gradient)."""
    q = LFQ(18, 9, 1.0)
    z = torch.randn(1, 18, 512, 1, generator=torch.Generator().manual_seed(0))
    grads = []
    for autocast in (False, True):
        zz = z.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            ps, be = q.entropies(zz)
        (ps - be).backward()
        grads.append(zz.grad)
        assert ps.dtype == be.dtype == torch.float32
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-8)
