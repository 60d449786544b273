"""Generation: KV cache = no cache, guidance, constrained decoding, seeds, sampling filters."""

import pytest
import torch
from lm_helpers import LogitsSpy

from videopoet.errors import InputError
from videopoet.lm.generate import generate, make_prompt, sample_logits, sample_task
from videopoet.lm.model import LMConfig, PrefixLM
from videopoet.lm.sequence import build_sequence, output_codes
from videopoet.lm.vocab import Vocabulary

VOCAB = Vocabulary(visual_bits=6, audio_levels=2, audio_codes=16, text_size=40)


def model(**kw):
    cfg = dict(vocab_size=VOCAB.size, d_model=32, n_layers=2, n_heads=4, max_seq_len=256, visual_bits=6)
    cfg.update(kw)
    torch.manual_seed(0)
    return PrefixLM(LMConfig(**cfg)).eval()


def prompts(texts, shapes):
    return make_prompt(
        [build_sequence(VOCAB, "avcont" if "audio" in shapes else "t2v", t, shapes) for t in texts],
        VOCAB.pad_id,
    )


def test_cached_decoding_equals_uncached_greedy():
    m = model()
    p = prompts([{"text": torch.tensor([1, 2, 3])}, {"text": torch.tensor([5])}], {"video": (2, 2, 2)})
    a = generate(m, p, temperature=0)
    b = generate(m, p, temperature=0, use_cache=False)
    assert torch.equal(a, b)
    # left padding does not change a row: row 1 alone gives the same tokens
    alone = generate(m, prompts([{"text": torch.tensor([5])}], {"video": (2, 2, 2)}), temperature=0)
    assert torch.equal(alone[0], a[1])


def test_guidance_scale_one_equals_conditional_logits():
    m = model()
    shapes = {"video": (1, 2, 3)}
    cond = prompts([{"text": torch.tensor([1, 2, 3, 4])}], shapes)
    unc = prompts([{}], shapes)  # text dropped: a shorter prefix, left-padded in the joint batch
    seen = LogitsSpy()
    a = generate(m, cond, temperature=0, logits_hook=seen)
    ref = [x.clone() for x in seen]
    seen.clear()
    b = generate(m, cond, uncond=unc, guidance_scale=1.0, temperature=0, logits_hook=seen)
    assert torch.equal(a, b)
    assert len(seen) == len(ref) == 6
    for x, y in zip(seen, ref, strict=True):
        assert torch.allclose(x, y, atol=1e-5)
    # guidance > 1 moves the logits away from the unconditional ones by the given factor
    seen.clear()
    generate(m, unc, temperature=0, logits_hook=seen)
    u0 = seen[0].clone()
    seen.clear()
    generate(m, cond, uncond=unc, guidance_scale=3.0, temperature=0, logits_hook=seen)
    assert torch.allclose(seen[0], u0 + 3.0 * (ref[0] - u0), atol=1e-4)


def test_constrained_decoding_never_emits_an_illegal_token():
    m = model()
    shapes = {"video": (1, 3, 3), "audio": (2, 5)}
    inputs = [
        {"first_frame": torch.randint(0, 64, (1, 3, 3)), "audio": torch.randint(0, 16, (2, 3))}
        for _ in range(4)
    ]
    seqs = [build_sequence(VOCAB, "avcont", x, shapes) for x in inputs]
    p = make_prompt(seqs, VOCAB.pad_id)
    out = generate(m, p, temperature=5.0, seed=0)
    lo, hi = p.legal.T
    assert bool(((out >= lo) & (out < hi)).all())
    codes = output_codes(VOCAB, seqs[0], out)  # parses without error, audio levels in range
    assert codes["video"].shape == (4, 1, 3, 3) and codes["audio"].shape == (4, 2, 5)
    # the same model sampled over the whole vocabulary at this temperature emits illegal ids
    h = m(p.ids, prefix_len=p.ids.shape[1], key_valid=p.key_valid)[:, -1]
    free = sample_logits(
        m.logits(h).repeat(50, 1), temperature=5.0, generator=torch.Generator().manual_seed(0)
    )
    lo0, hi0 = VOCAB.visual_range()
    assert ((free < lo0) | (free >= hi0)).float().mean() > 0.3


def test_seed_reproducible_and_rows_differ():
    m = model()
    p = prompts([{"text": torch.tensor([1, 2])}] * 3, {"video": (2, 2, 2)})
    a = generate(m, p, seed=7, temperature=1.5)
    b = generate(m, p, seed=7, temperature=1.5)
    c = generate(m, p, seed=8, temperature=1.5)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a[0], a[1])  # same prompt, independent samples per row


def test_sampling_filters():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.9]])
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_logits(logits, top_k=2, generator=g) for _ in range(200)])
    assert set(draws.flatten().tolist()) == {1, 3}
    draws = torch.stack([sample_logits(logits, top_p=0.01, generator=g) for _ in range(50)])
    assert set(draws.flatten().tolist()) == {1}
    assert sample_logits(logits, temperature=0).tolist() == [1]
    # top_p keeps the smallest set whose mass reaches p
    p = logits.softmax(-1)[0]
    keep = float(p[1] + p[3]) - 1e-3
    draws = torch.stack([sample_logits(logits, top_p=keep, generator=g) for _ in range(200)])
    assert set(draws.flatten().tolist()) == {1, 3}
    with pytest.raises(InputError):
        generate(model(), prompts([{}], {"video": (1, 1, 1)}), top_p=0)


def test_inverse_cdf_sampler_draws_the_softmax_distribution():
    """20,000 draws (one uniform each) match softmax(logits / T) within 5 standard errors;
    a token outside the legal range (-inf) or of probability 0 is never drawn."""
    from videopoet.lm.sampling import pick

    logits = torch.tensor([1.0, 0.0, 2.0, -1.0, float("-inf"), 0.5])
    n = 20_000
    u = torch.rand(n, generator=torch.Generator().manual_seed(0))
    for temperature in (1.0, 0.5, 2.0):
        draws = pick(logits.expand(n, -1), u, torch.tensor(temperature), last=5)
        freq = torch.bincount(draws, minlength=6).double() / n
        p = (logits / temperature).softmax(-1).double()
        se = (p * (1 - p) / n).sqrt()
        assert bool(((freq - p).abs() <= 5 * se + 1e-12).all()), (temperature, freq, p)
        assert int((draws == 4).sum()) == 0
    # u * total landing on the total itself (what rounding can give for u just below 1): the
    # legal range ends at `last`, and no later (illegal, probability 0) id is returned
    legal_only = torch.tensor([[1.0, 0.0, 2.0, -1.0, float("-inf"), float("-inf")]])
    assert pick(legal_only, torch.tensor([1.0]), torch.tensor(1.0), last=3).item() == 3


def test_sample_task_with_guidance_and_text_embeddings():
    v = Vocabulary(visual_bits=6, audio_levels=2, audio_codes=16, text_size=0)
    m2 = PrefixLM(
        LMConfig(vocab_size=v.size, d_model=32, n_layers=2, n_heads=4, max_seq_len=256, text_embed_dim=8)
    ).eval()
    inputs = [
        {"text": torch.randn(4, 8)},
        {"text": torch.randn(6, 8), "text_mask": torch.tensor([1, 1, 1, 0, 0, 0]).bool()},
    ]
    seen = {}
    out = sample_task(m2, v, "t2v", inputs, {"video": (2, 2, 2)}, guidance_scale=2.0, seed=0, top_k=8,
                      logits_hook=lambda t, lg: seen.setdefault(t, lg.clone()))
    assert out["video"].shape == (2, 2, 2, 2)
    # the first position's logits are uncond + 2 (cond - uncond), the unconditional rows being the
    # same prompts with the text left out (one encoding of "no text")
    lo, hi = v.visual_range()
    for b, x in enumerate(inputs):
        c = build_sequence(v, "t2v", x, {"video": (2, 2, 2)})
        u = build_sequence(v, "t2v", {}, {"video": (2, 2, 2)})
        with torch.no_grad():
            def first(s):
                emb = None if s.text_embeds is None else s.text_embeds[None]
                pos = None if s.text_positions is None else s.text_positions[None]
                h = m2(s.ids[None, : s.prefix_len], prefix_len=s.prefix_len, text_embeds=emb, text_positions=pos)
                return m2.logits(h[:, -1], lo, hi)[0]
            want = first(u) + 2.0 * (first(c) - first(u))
        torch.testing.assert_close(seen[0][b], want, rtol=1e-4, atol=1e-4)
    # the text embedding matters: other text, other greedy video
    a = sample_task(m2, v, "t2v", inputs[:1], {"video": (2, 2, 2)}, temperature=0)
    b = sample_task(m2, v, "t2v", [{"text": torch.randn(4, 8) * 3}], {"video": (2, 2, 2)}, temperature=0)
    assert not torch.equal(a["video"], b["video"])


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_every_attention_backend_generates_the_same_tokens():
    from videopoet.lm.attention import available_backends

    base = model()
    shapes = {"video": (1, 2, 2)}
    p = prompts([{"text": torch.tensor([1, 2, 3])}, {}], shapes)  # left padding in row 1
    expected = generate(base, p, temperature=0)
    # without the cache every position is a full forward through the backend (with the cache, the
    # fused decoding op does the steps after the prefill whatever the backend)
    expected_full = generate(base, p, temperature=0, use_cache=False)
    assert torch.equal(expected_full, expected)
    for backend in available_backends("cpu"):
        other = model(attention=backend)
        other.load_state_dict(base.state_dict())
        assert torch.equal(generate(other, p, temperature=0), expected), backend
        assert torch.equal(generate(other, p, temperature=0, use_cache=False), expected_full), backend


def test_pinned_output_codes_are_kept_and_the_rest_samples_as_before():
    from videopoet.lm.generate import generate, make_prompt
    from videopoet.lm.pretrained import build_lm
    from videopoet.lm.sequence import build_sequence, output_codes

    torch.manual_seed(0)
    model, vocab = build_lm("debug")
    model.eval()
    text = torch.tensor([5, 6, 7])
    free = build_sequence(vocab, "t2v", {"text": text}, {"video": (2, 3, 3)})
    want = torch.full((2, 3, 3), -1)
    want[0] = torch.arange(9).reshape(3, 3) % vocab.visual_size  # frame 0 pinned (as in i2v)
    want[1, 1, 1] = 7  # and one code of frame 1
    pinned = build_sequence(vocab, "t2v", {"text": text}, {"video": want})
    assert pinned.known is not None and int(pinned.known[pinned.prefix_len :].sum()) == 10 + 2  # + <eov_o><eos>
    assert torch.equal(free.legal, pinned.legal)
    kw = dict(temperature=1.0, seed=3, pad_id=vocab.pad_id)
    both_free = output_codes(vocab, free, generate(model, make_prompt([free, free], vocab.pad_id), **kw))["video"]
    p = make_prompt([pinned, free], vocab.pad_id)  # row 1 has nothing pinned
    assert p.forced is not None and int((p.forced[1] >= 0).sum()) == 0
    out = output_codes(vocab, pinned, generate(model, p, **kw))["video"]
    assert torch.equal(out[0][want >= 0], want[want >= 0])
    # rows are independent and draw the same uniforms: the free row is what it is without pinning
    assert torch.equal(out[1], both_free[1]) and not torch.equal(out[0], both_free[0])
    with pytest.raises(InputError, match="compile=True"):
        generate(model, p, compile=True, **kw)


def test_sub_token_guidance_with_equal_scales_picks_what_one_scale_picks():
    vocab = Vocabulary(visual_bits=6, audio_levels=0, text_size=16)
    torch.manual_seed(0)
    model = PrefixLM(LMConfig(vocab_size=vocab.size, d_model=32, n_layers=1, n_heads=2, max_seq_len=64,
                              factorized_visual=True, visual_bits=6, visual_offset=vocab.visual_offset)).eval()
    s = build_sequence(vocab, "t2v", {"text": torch.tensor([1, 2, 3])}, {"video": (1, 3, 3)})
    u = build_sequence(vocab, "t2v", {}, {"video": (1, 3, 3)})
    prompt, uncond = make_prompt([s], vocab.pad_id), make_prompt([u], vocab.pad_id)
    kw = dict(uncond=uncond, temperature=0, pad_id=vocab.pad_id, compile=False)
    one = generate(model, prompt, guidance_scale=3.0, **kw)
    two = generate(model, prompt, guidance_scale=(3.0, 3.0), **kw)
    # greedy: the argmax of a sum of independent factors is the pair of the factors' argmaxes
    assert torch.equal(one, two)
    ramp = generate(model, prompt, guidance_scale=3.0, guidance_ramp=True, **kw)
    first = generate(model, prompt, guidance_scale=1.0, **kw)
    assert int(ramp[0, 0]) == int(first[0, 0])  # the ramp starts at scale 1
    sampled = generate(model, prompt, guidance_scale=(3.0, 1.5), temperature=1.0, seed=0, uncond=uncond,
                       pad_id=vocab.pad_id)
    lo, hi = vocab.visual_range()
    assert bool(((sampled[0, :9] >= lo) & (sampled[0, :9] < hi)).all())
    debug = PrefixLM(LMConfig(vocab_size=vocab.size, d_model=32, n_layers=1, n_heads=2, max_seq_len=64)).eval()
    with pytest.raises(InputError, match="sub-token scales"):
        generate(debug, prompt, uncond=uncond, guidance_scale=(2.0, 2.0))


def test_pair_bias_samples_only_the_pairs_it_allows():
    """With visual_pair_bias the low sub-token is drawn given the high one: a table that allows only
    lo == hi gives only such codes, with one guidance scale (the joint), a pair of scales (factor
    by factor) or none; the same weights without the table draw other pairs too."""
    vocab = Vocabulary(visual_bits=6, audio_levels=0, text_size=16)
    torch.manual_seed(0)
    cfg = dict(vocab_size=vocab.size, d_model=32, n_layers=1, n_heads=2, max_seq_len=64, factorized_visual=True,
               visual_bits=6, visual_offset=vocab.visual_offset)
    indep = PrefixLM(LMConfig(**cfg)).eval()
    paired = PrefixLM(LMConfig(**cfg, visual_pair_bias=True)).eval()
    paired.load_state_dict({**indep.state_dict(), "vis_pair": torch.full((8, 8), -40.0).fill_diagonal_(0.0)})
    s = build_sequence(vocab, "t2v", {"text": torch.tensor([1, 2, 3])}, {"video": (1, 4, 4)})
    u = build_sequence(vocab, "t2v", {}, {"video": (1, 4, 4)})
    prompt, uncond = make_prompt([s, s], vocab.pad_id), make_prompt([u, u], vocab.pad_id)
    lo, hi = vocab.visual_range()

    def codes(m, **kw):
        out = generate(m, prompt, temperature=1.0, pad_id=vocab.pad_id, compile=False, **kw)
        c = out[:, :16] - lo
        assert bool(((c >= 0) & (c < 64)).all())
        return c

    for seed in range(3):
        for kw in ({}, {"uncond": uncond, "guidance_scale": 2.5}, {"uncond": uncond, "guidance_scale": (2.5, 1.5)}):
            c = codes(paired, seed=seed, **kw)
            assert torch.equal(c >> 3, c & 7), kw
    c = torch.cat([codes(indep, seed=seed) for seed in range(3)])
    assert (c >> 3 != c & 7).float().mean() > 0.5  # independent halves: mostly other pairs


def _positions_model(vocab, **kw):
    torch.manual_seed(0)
    cfg = dict(vocab_size=vocab.size, d_model=64, n_layers=2, n_heads=2, max_seq_len=128, factorized_visual=True,
               visual_bits=6, visual_offset=vocab.visual_offset, mask_id=vocab.id("<mask>"))
    cfg.update(kw)
    return PrefixLM(LMConfig(**cfg)).eval()


def test_visual_positions_decode_the_same_on_every_path():
    """An LM with visual position embeddings (large, random) gives the same greedy tokens with and
    without a KV cache, op by op or in the fused step, and through the step that samples several
    positions per call (compiled in production, eager here); rows padded differently agree with
    each row alone. The same weights without the tables decode other tokens."""
    from videopoet.lm import kernels
    from videopoet.lm.fast_decode import DecodeStep, Sampling
    from videopoet.lm.model import KVCache

    vocab = Vocabulary(visual_bits=6, audio_levels=0, text_size=16)
    m = _positions_model(vocab, visual_positions=(3, 2, 3))
    with torch.no_grad():
        for p in m.vis_pos_emb:
            p.normal_(std=2.0)
    plain = _positions_model(vocab)
    plain.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("vis_pos_emb")})
    frame = torch.arange(6).view(1, 2, 3)
    seqs = [build_sequence(vocab, "i2v", {"first_frame": frame, "text": torch.tensor(t)}, {"video": (3, 2, 3)})
            for t in ([1, 2, 3], [4])]
    prompt = make_prompt(seqs, vocab.pad_id)
    kw = dict(temperature=0, pad_id=vocab.pad_id, compile=False)
    ref = generate(m, prompt, use_cache=False, **kw)
    assert torch.equal(generate(m, prompt, **kw), ref)
    assert torch.equal(generate(m, make_prompt(seqs[1:], vocab.pad_id), **kw)[0], ref[1])
    assert not torch.equal(generate(plain, prompt, **kw), ref)
    if kernels.available():  # the fused C++ step against the forward, on ids that start visual runs
        from videopoet.lm.fast_decode import decode_matches_forward

        with torch.no_grad():
            assert decode_matches_forward(m, True, 2) and decode_matches_forward(m, False, 2)
    # the multi-position sampling step, fed after a prefill of the prompt
    R = prompt.batch
    cache = KVCache(m.cfg, R, 128)
    with torch.no_grad():
        h = m(prompt.ids, prefix_len=prompt.ids.shape[1], key_valid=prompt.key_valid, cache=cache)[:, -1]
        first = m.logits(h, *prompt.legal[0].tolist()).argmax(-1) + int(prompt.legal[0, 0])
        step = DecodeStep(m, cache, compile=False)
        legal = prompt.legal[1:].clone()
        toks, _, _ = step.sample(first.clone(), legal, None, torch.tensor(1.0), torch.tensor(1.0),
                                 Sampling(batch=R, guided=False, greedy=True))
    assert torch.equal(torch.cat([first[None], toks]).T, ref)


def test_visual_run_index_places_each_code_in_its_grid():
    vocab = Vocabulary(visual_bits=6, audio_levels=0, text_size=16)
    m = _positions_model(vocab, visual_positions=(2, 2, 3))
    v, mask = vocab.visual_offset, vocab.id("<mask>")
    ids = torch.tensor([[1, v, v + 5, mask, 2, v + 1, v + 2, v + 3, v + 4, v + 5, v + 6, v + 7, v + 8, v + 9, v + 10,
                         v + 11, v + 12, v + 13]])
    idx, nxt = m.visual_run_index(ids)
    assert idx.tolist() == [[-1, 0, 1, 2, -1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]]
    assert nxt.tolist() == [13]
    # a continuation picks up where the cache left off; a non-visual token starts over
    idx2, nxt2 = m.visual_run_index(torch.tensor([[v, 2, v]]), nxt)
    assert idx2.tolist() == [[13, -1, 0]] and nxt2.tolist() == [1]
    with torch.no_grad():
        et, ey, ex = m.vis_pos_emb
        et.copy_(torch.arange(2.0)[:, None] * 100)
        ey.copy_(torch.arange(2.0)[:, None] * 10)
        ex.copy_(torch.arange(3.0)[:, None])
    e = m.visual_position_embedding(torch.tensor([-1, 0, 4, 6, 11, 13]), torch.float32)[:, 0]
    # (t, y, x): none, (0,0,0), (0,1,1), (1,0,0), (1,1,2), frames past T share the last: (1,0,1)
    assert e.tolist() == [0.0, 0.0, 11.0, 100.0, 112.0, 101.0]


def test_zero_visual_positions_leave_the_lm_unchanged():
    """`train.visual_positions` adds zero tables to a trained LM: its outputs do not change."""
    from videopoet.lm.pretrain import with_visual_positions

    vocab = Vocabulary(visual_bits=6, audio_levels=0, text_size=16)
    base = _positions_model(vocab)
    new = with_visual_positions(base, (3, 2, 3)).eval()
    assert new.cfg.visual_positions == (3, 2, 3) and new.vis_pos_emb is not None
    s = build_sequence(vocab, "t2v", {"text": torch.tensor([1, 2])}, {"video": (3, 2, 3)})
    with torch.no_grad():
        assert torch.equal(new(s.ids[None]), base(s.ids[None]))
    with pytest.raises(Exception, match="visual_positions"):
        with_visual_positions(base, (3, 2))
