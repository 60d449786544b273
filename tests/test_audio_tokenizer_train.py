"""Audio codec training: losses fall, exact resume, atomic pruned checkpoints, codebook upkeep, losses, CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from videopoet.tokenizers.audio import AudioTokenizer
from videopoet.tokenizers.audio_losses import (
    HighBandEnergyLoss,
    HighBandEnvelopeLoss,
    MultiResolutionSTFTLoss,
    MultiScaleMelLoss,
    MultiScaleSTFTDiscriminator,
    feature_matching_loss,
    hinge_discriminator_loss,
    hinge_generator_loss,
    mel_filterbank,
)
from videopoet.tokenizers.audio_train import (
    build_corpus,
    init_codebooks,
    latest_checkpoint,
    load_recipe,
    refresh_dead_codes,
    sample_batch,
    synthetic_waveforms,
    train_audio_tokenizer,
    update_codebooks,
)


def quiet(*_):
    pass


def debug_recipe(*overrides):
    return load_recipe("audio/debug", list(overrides))


# ------------------------------------------------------------------------------------------ loop
@pytest.mark.slow
def test_short_training_run_losses_fall(tmp_path):
    torch.set_num_threads(1)
    r = debug_recipe("train.max_steps=60", "train.log_every=1", "train.adv_start_step=1000",
                     "train.ckpt_every=1000", "data.synthetic_clips=4")
    out = train_audio_tokenizer(r, tmp_path / "run", log=quiet)
    recs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in recs] == list(range(1, 61))
    first = np.mean([x["mel"] + x["stft"] for x in recs[:10]])
    last = np.mean([x["mel"] + x["stft"] for x in recs[-10:]])
    assert last < 0.85 * first, (first, last)
    assert all(x["perplexity0"] > 1.5 for x in recs[-10:])  # the codebook did not collapse
    tok = AudioTokenizer.from_pretrained(out)
    assert tok.codebooks()[0].inited.item() == 1.0


def test_gan_and_exact_resume(tmp_path):
    """Two runs to step 6 (GAN from step 2, the transient and band-energy losses on), one interrupted at step 3, end bit-identical."""
    torch.set_num_threads(1)
    common = ["train.adv_start_step=2", "train.ckpt_every=3", "train.log_every=1", "data.synthetic_clips=3",
              "train.w_transient=5.0", "train.w_band_energy=1.0"]
    a = train_audio_tokenizer(debug_recipe("train.max_steps=6", *common), tmp_path / "a", log=quiet)
    train_audio_tokenizer(debug_recipe("train.max_steps=3", *common), tmp_path / "b", log=quiet)
    b = train_audio_tokenizer(debug_recipe("train.max_steps=6", *common), tmp_path / "b", log=quiet)
    sa, sb = AudioTokenizer.from_pretrained(a).state_dict(), AudioTokenizer.from_pretrained(b).state_dict()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    from safetensors.torch import load_file

    da = load_file(str(latest_checkpoint(tmp_path / "a") / "discriminator.safetensors"))
    db = load_file(str(latest_checkpoint(tmp_path / "b") / "discriminator.safetensors"))
    assert all(torch.equal(da[k], db[k]) for k in da)
    recs = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["transient"] > 0 for r in recs)
    assert "disc" in recs[-1] and "feat" in recs[-1] and "disc" not in recs[0]


def test_checkpoints_are_pruned_and_loadable(tmp_path):
    r = debug_recipe("train.max_steps=5", "train.ckpt_every=1", "train.keep_checkpoints=2",
                     "train.adv_start_step=100", "data.synthetic_clips=2")
    train_audio_tokenizer(r, tmp_path / "run", log=quiet)
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert ckpts == ["step_0000004", "step_0000005"]  # no temp dirs left, older ones pruned
    tok = AudioTokenizer.from_pretrained(tmp_path / "run" / "checkpoints" / "step_0000005")
    assert tok.num_levels == 2
    state = json.loads((tmp_path / "run" / "checkpoints" / "step_0000005" / "trainer_state.json").read_text())
    assert state["step"] == 5 and state["recipe"]["model"]["codebook_size"] == 16


def test_late_learning_rates_replace_the_base_ones_from_their_step(tmp_path):
    from videopoet.errors import ConfigError

    r = debug_recipe("train.max_steps=4", "train.ckpt_every=2", "train.keep_checkpoints=2", "train.warmup_steps=1",
                     "train.adv_start_step=0", "train.lr=0.001", "train.disc_lr=0.002", "train.lr_late_step=3",
                     "train.lr_late=0.0002", "train.disc_lr_late=0.0004", "data.synthetic_clips=2")
    train_audio_tokenizer(r, tmp_path / "run", log=quiet)
    lrs = {}
    for step in (2, 4):  # the state after steps 0-1 (base rates), and after steps 2-3 (step 3: late)
        st = json.loads((tmp_path / "run" / "checkpoints" / f"step_{step:07d}" / "trainer_state.json").read_text())
        lrs[step] = (st["optimizer_g_groups"][0]["lr"], st["optimizer_d_groups"][0]["lr"])
    assert lrs[2] == pytest.approx((0.001, 0.002)) and lrs[4] == pytest.approx((0.0002, 0.0004))
    with pytest.raises(ConfigError, match="lr_late"):
        debug_recipe("train.lr_late=0")


def test_resume_refuses_a_different_model(tmp_path):
    from videopoet.errors import ConfigError

    train_audio_tokenizer(debug_recipe("train.max_steps=1", "data.synthetic_clips=2"), tmp_path / "r", log=quiet)
    with pytest.raises(ConfigError, match="different model"):
        train_audio_tokenizer(debug_recipe("train.max_steps=2", "model.codebook_size=32",
                                           "data.synthetic_clips=2"), tmp_path / "r", log=quiet)


def test_decoder_only_fine_tuning_keeps_every_code(tmp_path):
    """trainable=decoder from a trained codec: encoder and codebooks bit-identical (so the codes an LM
    was trained on stay valid), the decoder moved."""
    from videopoet.errors import ConfigError

    torch.set_num_threads(1)
    start = train_audio_tokenizer(debug_recipe("train.max_steps=2", "data.synthetic_clips=2"), tmp_path / "s", log=quiet)
    tuned = train_audio_tokenizer(debug_recipe(f"train.init_from={start}", "train.trainable=decoder", "train.max_steps=4",
                                               "train.adv_start_step=2", "data.synthetic_clips=2"), tmp_path / "t", log=quiet)
    a, b = AudioTokenizer.from_pretrained(start), AudioTokenizer.from_pretrained(tuned)
    sa, sb = a.state_dict(), b.state_dict()
    frozen = [k for k in sa if not k.startswith("model.decoder.")]
    assert any("codebook" in k for k in frozen) and any(k.startswith("model.encoder.") for k in frozen)
    assert all(torch.equal(sa[k], sb[k]) for k in frozen)
    assert any(not torch.equal(sa[k], sb[k]) for k in sa if k.startswith("model.decoder."))
    x = synthetic_waveforms(1, 0.25, 8000, seed=5)[0][None]
    assert torch.equal(a.encode(x), b.encode(x))
    with pytest.raises(ConfigError, match="needs train.init_from"):
        debug_recipe("train.trainable=decoder")
    with pytest.raises(ConfigError, match="differs from this recipe"):
        train_audio_tokenizer(debug_recipe(f"train.init_from={start}", "model.codebook_size=32", "train.max_steps=1"),
                              tmp_path / "u", log=quiet)


def test_refit_codebooks_fits_the_latents_closer_and_is_level_by_level():
    """k-means on many latents from codebooks that fit them badly: the residual after every level
    falls below the old codebooks' and below the level before; every code is used; the saved
    statistics are those of the new codebooks."""
    from videopoet.tokenizers.audio_train import refit_codebooks

    torch.manual_seed(0)
    tok = AudioTokenizer(load_recipe("audio/debug").model).eval()  # 2 levels x 16 codes, 8 channels
    g = torch.Generator().manual_seed(1)
    centres = torch.randn(40, 8, generator=g) * 2
    z = centres[torch.randint(0, 40, (4000,), generator=g)] + 0.1 * torch.randn(4000, 8, generator=g)
    for cb in tok.codebooks():  # a bad start: every code near the origin
        cb.embed.copy_(0.01 * torch.randn(cb.embed.shape, generator=g))

    def residual_after_each_level():
        r, out = z.clone(), []
        for cb in tok.codebooks():
            r = r - cb.embed[torch.cdist(r, cb.embed).argmin(1)]
            out.append(float(r.pow(2).mean()))
        return out

    before = residual_after_each_level()
    stats = refit_codebooks(tok, z, iters=10)
    after = residual_after_each_level()
    assert [round(s["residual_energy"], 5) for s in stats] == [round(a, 5) for a in after]
    assert after[0] < 0.5 * before[0] and after[1] < after[0] and after[1] < 0.5 * before[1]
    assert all(s["codes_used"] == 16 for s in stats)
    cb = tok.codebooks()[0]
    assert float(cb.cluster_size.sum()) == 4000 and torch.allclose(cb.embed_avg, cb.embed * cb.cluster_size[:, None])


def test_refit_codebooks_command_writes_a_loadable_codec_with_the_beam(tmp_path):
    from videopoet.cli import main

    torch.manual_seed(0)
    start = train_audio_tokenizer(debug_recipe("train.max_steps=2", "data.synthetic_clips=2"), tmp_path / "s", log=quiet)
    rc = main(["audio", "refit-codebooks", "--model", str(start), "--config", "audio/debug", "--out", str(tmp_path / "r"),
               "--batches", "20", "--iters", "3", "--beam", "4", "--set", "data.synthetic_clips=2"])
    assert rc in (0, None)
    a, b = AudioTokenizer.from_pretrained(start), AudioTokenizer.from_pretrained(tmp_path / "r")
    assert b.config.beam_width == 4
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa if "codebook" not in k)  # encoder, decoder kept
    assert any(not torch.equal(sa[k], sb[k]) for k in sa if "codebook" in k)
    info = json.loads((tmp_path / "r" / "training.json").read_text())
    assert info["latent_frames"] == 20 * 2 * 50 and len(info["levels"]) == 2  # batches x batch x 0.25 s at 200 frames/s
    assert info["levels"][1]["residual_energy"] <= info["levels"][0]["residual_energy"]


# ------------------------------------------------------------------------------------- data
def test_batches_are_a_function_of_the_step():
    r = debug_recipe("data.synthetic_clips=3")
    corpus = build_corpus(r.data, 8000, log=quiet)
    a = sample_batch(corpus, 7, 4, 800, seed=0)
    assert a.shape == (4, 1, 800) and float(a.abs().max()) <= 1.0
    assert torch.equal(a, sample_batch(corpus, 7, 4, 800, seed=0))
    assert not torch.equal(a, sample_batch(corpus, 8, 4, 800, seed=0))
    assert len(corpus.heldout) == 4 and len(corpus.train) == 3


def test_shapes_clips_with_up_to_four_sounding_objects():
    from videopoet.data.shapes import ShapesConfig, make_audio

    two = build_corpus(debug_recipe("data.sources=[shapes]", "data.shapes_clips=12").data, 8000, log=quiet)
    four = build_corpus(debug_recipe("data.sources=[shapes]", "data.shapes_clips=12", "data.shapes_max_objects=4").data,
                        8000, log=quiet)
    counts = [make_audio(ShapesConfig(size=32, sample_rate=8000, max_objects=4), 0, i)[1].count(" moves ") for i in range(12)]
    assert max(counts) >= 3 and len(four.train) == len(two.train) == 12
    # the clips with 3-4 objects are what the 4-object setting adds: their sound differs
    assert any(not torch.equal(a, b) for a, b in zip(two.train, four.train, strict=True))
    from videopoet.errors import ConfigError

    with pytest.raises(ConfigError, match="data.shapes_max_objects"):
        debug_recipe("data.sources=[shapes]", "data.shapes_max_objects=5")


def test_real_recordings_keep_a_held_out_tail(tmp_path):
    from videopoet.data.writers import write_audio

    t = np.arange(3 * 8000) / 8000
    write_audio(tmp_path / "long.wav", (0.5 * np.sin(2 * math.pi * 300 * t))[None].astype(np.float32), 8000)
    write_audio(tmp_path / "short.wav", np.zeros((1, 4000), np.float32), 8000)
    r = debug_recipe("data.sources=[]", f"data.files=['{tmp_path}/long.wav','{tmp_path}/short.wav']")
    corpus = build_corpus(r.data, 8000, log=quiet)
    assert [x.shape[-1] for x in corpus.train] == [18000, 4000]  # 3 s split 75/25; 0.5 s kept whole
    assert [x.shape[-1] for x in corpus.heldout] == [6000]
    assert "held-out" in corpus.heldout_names[0]


# ---------------------------------------------------------------------------------- codebooks
def test_kmeans_init_and_dead_code_reset():
    torch.manual_seed(0)
    tok = AudioTokenizer(debug_recipe().model)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 8, 50) * 3 + 10  # far from the random initial codes
    init_codebooks(tok, z, 5, g)
    cb = tok.codebooks()[0]
    assert cb.inited.item() == 1.0 and float(cb.cluster_size.sum()) == 100.0
    assert float(cb.embed.mean()) == pytest.approx(10.0, abs=1.0)  # centroids inside the data
    cb.cluster_size[3] = 0.0
    cb.embed[3] = -100.0  # a dead code far away
    dead = refresh_dead_codes(tok, z, threshold=0.5, g=g)
    assert dead[0] >= 1 and float(cb.embed[3].mean()) > 0  # re-seeded from the batch
    assert float(cb.cluster_size[3]) == 0.5


def test_ema_update_moves_codes_to_their_members():
    torch.manual_seed(0)
    tok = AudioTokenizer(debug_recipe().model)
    cb = tok.codebooks()[0]
    r = torch.full((1, 8, 4), 2.0)
    codes = torch.zeros(1, 2, 4, dtype=torch.long)
    before = (cb.embed[0] - 2.0).abs().mean()
    stats = update_codebooks(tok, [r, r], codes, decay=0.5)
    assert (cb.embed[0] - 2.0).abs().mean() < before
    assert stats["perplexity0"] == pytest.approx(1.0)


def test_quantize_is_pure_and_straight_through():
    torch.manual_seed(0)
    tok = AudioTokenizer(debug_recipe().model)
    before = {k: v.clone() for k, v in tok.state_dict().items()}
    z = torch.randn(2, 8, 10, requires_grad=True)
    q = tok.quantize(z)
    (q.latents.sum() + q.commit_loss).backward()
    assert z.grad is not None and bool((z.grad != 0).all())
    assert all(torch.equal(before[k], v) for k, v in tok.state_dict().items())
    assert q.codes.shape == (2, 2, 10) and len(q.residuals) == 2


# ------------------------------------------------------------------------------------ losses
def test_mel_filterbank_is_triangular_and_covers_the_band():
    fb = mel_filterbank(16000, 512, 40)
    assert fb.shape == (40, 257) and float(fb.min()) >= 0
    assert bool((fb.sum(0)[3:-3] > 0).all())  # every bin but the edges is covered
    peaks = fb.argmax(1)
    assert bool((peaks[1:] >= peaks[:-1]).all())


def test_losses_are_zero_for_identical_audio_and_grow_with_error():
    x = torch.stack(synthetic_waveforms(2, 0.25, 8000, 0))
    mel, st = MultiScaleMelLoss(8000, 5, 9), MultiResolutionSTFTLoss((128, 256))
    assert float(mel(x, x)) == pytest.approx(0.0, abs=1e-6)
    assert float(st(x, x)) == pytest.approx(0.0, abs=1e-6)
    small, big = x + 0.01 * torch.randn_like(x), x + 0.1 * torch.randn_like(x)
    assert float(mel(small, x)) < float(mel(big, x)) and float(st(small, x)) < float(st(big, x))


def test_high_band_envelope_loss_charges_a_missing_click_and_ignores_the_tones():
    sr = 16000
    t = torch.arange(4000) / sr
    tone = 0.2 * torch.sin(2 * math.pi * 440 * t)
    click = torch.zeros(4000)
    tc = torch.arange(192) / sr
    click[1000:1192] = 0.35 * torch.exp(-tc / 0.003) * torch.sin(2 * math.pi * 3200 * tc)
    x = (tone + click)[None, None]
    loss = HighBandEnvelopeLoss(sr, cutoff_hz=2600.0)
    assert float(loss(x, x)) == 0.0
    # the tone alone (the click dropped) costs; the click at a third of its level costs less
    no_click, quiet_click = tone[None, None], (tone + click / 3)[None, None]
    assert float(loss(no_click, x)) > float(loss(quiet_click, x)) > 0.01 * float(loss(no_click, x))
    # a 440 Hz tone's level is below the cutoff: changing it barely moves the loss
    assert float(loss((0.5 * tone + click)[None, None], x)) < 0.05 * float(loss(no_click, x))
    # a click 10 ms late is as wrong as a missing one or more (8 ms windows, 2 ms hop)
    late = torch.roll(click, 160)
    assert float(loss((tone + late)[None, None], x)) > 0.9 * float(loss(no_click, x))
    with pytest.raises(ValueError, match="cutoff_hz"):
        HighBandEnvelopeLoss(sr, cutoff_hz=9000.0)


def test_high_band_energy_loss_is_the_log_gain_of_the_band_per_frame():
    sr = 16000
    g = torch.Generator().manual_seed(0)
    t = torch.arange(8000) / sr
    fade = torch.ones(8000)  # faded in and out: the frames at the ends see no step
    fade[:320], fade[-320:] = torch.linspace(0, 1, 320) ** 2, torch.linspace(1, 0, 320) ** 2
    tone = 0.2 * torch.sin(2 * math.pi * 440 * t) * fade
    clicks = torch.zeros(8000)
    tc = torch.arange(192) / sr
    for k in (1000, 4000, 6500):
        clicks[k : k + 192] = 0.35 * torch.exp(-tc / 0.003) * torch.sin(2 * math.pi * 3200 * tc)
    x = (tone + clicks)[None, None]
    loss = HighBandEnergyLoss(sr, cutoff_hz=2600.0)
    assert float(loss(x, x)) == 0.0
    # the band at 10% of its energy (amplitude x sqrt(0.1)) and at 2.5x cost about alike: a log ratio.
    # Every frame near a click is charged |log 0.1| = 2.30 or log 2.5 = 0.92; floored quiet frames less
    quiet = loss((tone + clicks * 0.1**0.5)[None, None], x)
    loud = loss((tone + clicks * 2.5**0.5)[None, None], x)
    assert 0.2 < float(quiet) < 2.31 and 0.08 < float(loud) < 0.92
    assert float(quiet) / float(loud) == pytest.approx(math.log(10) / math.log(2.5), rel=0.25)
    # the same ratio costs the same at any level: the term does not shrink with a quiet band
    assert float(loss(0.1 * (tone + clicks * 0.1**0.5)[None, None], 0.1 * x)) == pytest.approx(float(quiet), rel=1e-3)
    # a 440 Hz tone is below the cutoff: doubling it leaves the loss near zero
    assert float(loss((2 * tone + clicks)[None, None], x)) < 0.02 * float(quiet)
    # noise far below the clicks in the silent frames sits under the floor: it costs little
    hiss = 1e-4 * torch.randn(8000, generator=g)
    assert float(loss((tone + clicks + hiss)[None, None], x)) < 0.05 * float(quiet)
    with pytest.raises(ValueError, match="cutoff_hz"):
        HighBandEnergyLoss(sr, cutoff_hz=9000.0)


def test_discriminator_and_gan_losses():
    d = MultiScaleSTFTDiscriminator((128, 64), channels=4)
    x = torch.randn(2, 1, 2000) * 0.1
    logits, feats = d(x)
    assert len(logits) == 2 and len(feats) == 2 and len(feats[0]) == 5
    assert logits[0].shape[:2] == (2, 1)
    assert float(feature_matching_loss(feats, feats).detach()) == 0.0
    ones, minus = [torch.ones(3)], [-torch.ones(3)]
    assert float(hinge_discriminator_loss(ones, minus)) == 0.0  # confident and right
    assert float(hinge_generator_loss(ones)) == 0.0
    assert float(hinge_discriminator_loss(minus, ones)) == 4.0
