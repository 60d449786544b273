"""The shape-static (optionally compiled) decoding step gives what eager decoding gives."""

import warnings

import pytest
import torch
from lm_helpers import LogitsSpy

from videopoet.lm import fast_decode as FD
from videopoet.lm import generate as G
from videopoet.lm.generate import generate, make_prompt
from videopoet.lm.model import KVCache, LMConfig, PrefixLM
from videopoet.lm.sequence import build_sequence
from videopoet.lm.vocab import Vocabulary

VOCAB = Vocabulary(visual_bits=6, audio_levels=2, audio_codes=16, text_size=40)
SHAPES = {"video": (2, 2, 2)}
AV_SHAPES = {"video": (1, 2, 2), "audio": (2, 3)}  # visual, audio-level and forced-marker positions


def model(**kw):
    """Head size 6 by default: no attention kernel takes it, so the step runs op by op; d_model=64
    (head size 16) runs the fused C++ blocks where the kernels are built."""
    torch.manual_seed(0)
    cfg = dict(vocab_size=VOCAB.size, d_model=24, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=512)
    return PrefixLM(LMConfig(**{**cfg, **kw})).eval()


def prompts(batch, text=True, task="i2v"):
    seqs = []
    for b in range(batch):
        g = torch.Generator().manual_seed(b)
        x = {"first_frame": torch.randint(0, 64, (1, 2, 2), generator=g)}
        if task == "avcont":
            x["audio"] = torch.randint(0, 16, (2, 1 + b % 3), generator=g)  # rows of different lengths
        elif text:
            x["text"] = torch.randint(0, 40, (1 + b % 3,), generator=g)
        seqs.append(build_sequence(VOCAB, task, x, AV_SHAPES if task == "avcont" else SHAPES))
    return make_prompt(seqs, VOCAB.pad_id)


def check_same(m, batch, task="i2v", **kw):
    """Compiled decoding gives the tokens and logits of eager decoding through PrefixLM.forward
    (op by op: not the fused C++ blocks, which the compiled step uses when it can)."""
    ref_logits, logits = LogitsSpy(), LogitsSpy()
    uncond = prompts(batch, text=False) if "guidance_scale" in kw else None
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(G, "fused_blocks_usable", lambda *a: False)
        ref = generate(m, prompts(batch, task=task), uncond=uncond, compile=False, logits_hook=ref_logits, **kw)
    out = generate(m, prompts(batch, task=task), uncond=uncond, compile=True, logits_hook=logits, **kw)
    assert torch.equal(out, ref)
    assert len(logits) == len(ref_logits) > 0
    for a, b in zip(logits, ref_logits, strict=True):
        assert torch.allclose(a, b, atol=1e-4, rtol=0)
    lo, hi = prompts(batch, task=task).legal.T  # constrained: every token in its legal range
    assert bool(((out >= lo) & (out < hi)).all())


def test_cache_len_buckets():
    assert FD.cache_len(1, 2048) == FD.BUCKET and FD.cache_len(FD.BUCKET, 2048) == FD.BUCKET
    assert FD.cache_len(FD.BUCKET + 1, 2048) == 2 * FD.BUCKET
    assert FD.cache_len(2000, 2048) == 2048 and FD.cache_len(300, 300) == 300


@pytest.mark.parametrize("d_model", [24, 64])  # head size 6: op by op; 16: the fused C++ blocks
@pytest.mark.parametrize("factorized", [False, True])
def test_static_step_equals_forward_with_padding(factorized, d_model):
    """The step itself (eager): same hidden states as PrefixLM.forward on a left-padded batch."""
    m = model(factorized_visual=factorized, visual_offset=VOCAB.visual_offset, visual_bits=6, d_model=d_model)
    p = prompts(3)
    R, P = p.ids.shape
    toks = torch.randint(VOCAB.visual_range()[0], VOCAB.visual_range()[1], (R, 5))
    with torch.no_grad():
        a, b = KVCache(m.cfg, R, P + 5), KVCache(m.cfg, R, FD.cache_len(P + 5, m.cfg.max_seq_len))
        for c in (a, b):
            m(p.ids, cache=c, prefix_len=P, key_valid=p.key_valid)
        step = FD.DecodeStep(m, b, compile=False)
        for t in range(5):
            ref = m(toks[:, t : t + 1], cache=a)[:, -1]
            assert torch.allclose(step(toks[:, t : t + 1]), ref, atol=1e-5)
    assert b.pos == a.pos == P + 5


@pytest.mark.parametrize("d_model", [24, 64])
def test_several_positions_per_call_equal_one_at_a_time(d_model):
    """`DecodeStep.sample` over K positions (the token of each fed to the next) gives the tokens,
    logits and cache of K calls of one position each."""
    m = model(d_model=d_model)
    p = prompts(2)
    R, P = p.ids.shape
    V = VOCAB.size
    legal = torch.tensor([[0, V], list(VOCAB.visual_range()), [5, 6]])  # full, visual, forced
    u = torch.rand(3, R, generator=torch.Generator().manual_seed(0))
    how = FD.Sampling(batch=R, guided=False, greedy=False, top_k=7)
    t1, s1 = torch.tensor(1.0), torch.tensor(1.0)
    outs = []
    for split in (False, True):
        with torch.no_grad():
            c = KVCache(m.cfg, R, P + 8)
            m(p.ids, cache=c, prefix_len=P, key_valid=p.key_valid)
            step, feed = FD.DecodeStep(m, c, compile=False), torch.full((R,), 300)
            if split:
                toks, logits = [], []
                for j in range(3):
                    tk, feed, lg = step.sample(feed, legal[j : j + 1], u[j : j + 1], t1, s1, how)
                    toks.append(tk)
                    logits.append(lg)
                outs.append((torch.cat(toks), torch.cat(logits), c))
            else:
                tk, _, lg = step.sample(feed, legal, u, t1, s1, how)
                outs.append((tk, lg, c))
    (a, la, ca), (b, lb, cb) = outs
    assert a.shape == (3, R) and torch.equal(a, b)
    assert bool((a[2] == 5).all())  # the forced position
    torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-5)
    assert ca.pos == cb.pos == P + 3
    for a_kv, b_kv in zip(ca.layers, cb.layers, strict=True):
        for x, y in zip(a_kv, b_kv, strict=True):  # keys, values
            torch.testing.assert_close(x[:, :, : P + 3], y[:, :, : P + 3], rtol=1e-5, atol=1e-6)


def test_static_step_falls_back_to_eager_when_compile_fails(monkeypatch):
    def broken(name):
        def fn(*a, **k):
            raise RuntimeError("no C compiler")

        return fn

    monkeypatch.setattr(FD, "_compiled_fn", broken)
    monkeypatch.setattr(FD.DecodeStep, "_failed", False)
    m = model()
    ref = generate(m, prompts(2), seed=3, compile=False)
    with pytest.warns(RuntimeWarning, match="decoding eagerly"):
        out = generate(m, prompts(2), seed=3, compile=True)
    assert torch.equal(out, ref)
    assert FD.DecodeStep._failed  # not retried in this process
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(generate(m, prompts(2), seed=3, compile=True), ref)


def test_auto_compile_rule(monkeypatch):
    calls = []
    real = FD.DecodeStep.__init__

    def spy(self, model, cache, compile):
        calls.append(compile)
        real(self, model, cache, compile=False)  # count the decision, skip the compilation

    monkeypatch.setattr(FD.DecodeStep, "__init__", spy)
    m = model()
    generate(m, prompts(1), seed=0)  # a few positions: not worth compiling
    assert calls == []
    monkeypatch.setattr(G, "AUTO_COMPILE_STEPS", 10)
    generate(m, prompts(1), seed=0)
    assert calls == [True]
    # below the threshold, only a graph already compiled for these rows, cache bucket and
    # sampling settings is used
    monkeypatch.setattr(G, "AUTO_COMPILE_STEPS", 10**9)
    monkeypatch.setattr(G, "_compiled_keys", set())
    p = prompts(1)
    L = FD.cache_len(p.ids.shape[1] + p.legal.shape[0], m.cfg.max_seq_len)
    G._compiled_keys.add((id(m), 1, L, FD.Sampling(batch=1, guided=False, greedy=False)))
    generate(m, p, seed=0, temperature=0.5)
    assert calls == [True, True]
    generate(m, p, seed=0, top_k=3)  # another graph: not compiled for a short generation
    generate(m, prompts(2), seed=0)  # other rows
    assert calls == [True, True]
    # a model the fused C++ blocks can run decodes eagerly through them: never compiled by default
    m16 = model(d_model=64)
    monkeypatch.setattr(G, "AUTO_COMPILE_STEPS", 10)
    with torch.no_grad():
        fused = FD.fused_blocks_usable(m16, 1)
    generate(m16, prompts(1), seed=0)
    assert calls == [True, True, not fused]  # fused: an eager step (compile=False)


@pytest.mark.slow
def test_compiled_decoding_gives_the_eager_tokens_and_logits(monkeypatch):
    """torch.compile'd steps: batch 1 and 8, guidance, constrained ranges, sampling with a seed;
    a second call with the same shapes and sampling filters (other seed, temperature, guidance
    scale, legal ranges, prompt length) does not recompile."""
    pytest.importorskip("torch._inductor")
    monkeypatch.setattr(FD.DecodeStep, "_failed", False)
    m = model()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a compile failure would fall back silently
        check_same(m, 1, guidance_scale=2.0, seed=0, temperature=1.0)
        check_same(m, 8, guidance_scale=3.0, seed=1, top_k=5)
        check_same(m, 8, guidance_scale=1.5, temperature=0)
        check_same(m, 8, task="avcont", seed=2, temperature=2.0)  # audio-level ranges
        m16 = model(d_model=64)  # head size 16: the fused C++ blocks in the graph, where available
        with torch.no_grad():
            fused = FD.fused_blocks_usable(m16, 16)  # batch 8 with guidance
        if fused:
            check_same(m16, 1, seed=0, temperature=1.0)
            check_same(m16, 8, guidance_scale=3.0, seed=1, top_p=0.9)
    torch._dynamo.config.error_on_recompile = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # a RecompileError would fall back with a warning
            g = dict(compile=True, top_k=5)
            generate(m, prompts(8), uncond=prompts(8, text=False), guidance_scale=2.0, seed=2, temperature=0.7, **g)
            generate(m, prompts(8), uncond=prompts(8), guidance_scale=1.2, seed=3, **g)
            if fused:  # the graph of several positions per call: other lengths and settings too
                g = dict(compile=True, top_p=0.9)
                generate(m16, prompts(8), uncond=prompts(8, text=False), guidance_scale=2.0, seed=4, temperature=0.5, **g)
                generate(m16, prompts(8, task="avcont"), uncond=prompts(8, task="avcont"), guidance_scale=1.5, seed=5, **g)
    finally:
        torch._dynamo.config.error_on_recompile = False
