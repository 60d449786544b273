"""The C++ decoding kernels (videopoet/lm/kernels): values, dispatch and fallbacks.

On an AVX-512 CPU the last test runs this whole file again with VIDEOPOET_KERNELS_WIDTH=8, so
the AVX2 versions are checked too."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from videopoet.lm import kernels
from videopoet.lm.generate import Prompt, generate
from videopoet.lm.model import PrefixLM, lm_config
from videopoet.lm.vocab import Vocabulary

needs_kernels = pytest.mark.skipif(not kernels.available(), reason="small-M kernel not built on this machine")


@needs_kernels
@pytest.mark.parametrize("M", [1, 2, 3, 7, 8, 9, 15, 16, 17, 24])
@pytest.mark.parametrize("N,K", [(1152, 384), (384, 1024), (37, 64), (100, 48), (5, 33), (16, 16)])
def test_small_linear_equals_f_linear(M, N, K):
    g = torch.Generator().manual_seed(M * 1000 + N + K)
    x, w = torch.randn(M, K, generator=g), torch.randn(N, K, generator=g)
    y = torch.ops.videopoet.small_linear(x, w)
    assert y.shape == (M, N)
    # float32 sums of K products in another order: relative error ~ sqrt(K) * 2^-24
    torch.testing.assert_close(y, F.linear(x, w), rtol=1e-5, atol=1e-5 * K**0.5)


@needs_kernels
def test_small_linear_strided_and_batched_inputs():
    g = torch.Generator().manual_seed(0)
    w_full = torch.randn(2 * 64, 96, generator=g)
    w = w_full[::2]  # rows with a stride: made contiguous by the op
    x = torch.randn(2, 3, 96 * 2, generator=g)[..., ::2]  # (2, 3, 96) non-contiguous, 6 rows
    y = torch.ops.videopoet.small_linear(x, w)
    assert y.shape == (2, 3, 64)
    torch.testing.assert_close(y, F.linear(x, w), rtol=1e-5, atol=1e-4)
    assert torch.ops.videopoet.small_linear(torch.empty(0, 96), w).shape == (0, 64)


@needs_kernels
def test_small_linear_refuses_wrong_inputs():
    with pytest.raises(RuntimeError, match="float32"):
        torch.ops.videopoet.small_linear(torch.randn(2, 8, dtype=torch.float64), torch.randn(4, 8))
    with pytest.raises(RuntimeError, match=r"x \(\.\.\., K\) and w \(N, K\)"):
        torch.ops.videopoet.small_linear(torch.randn(2, 8), torch.randn(4, 9))


def test_linear_dispatch(monkeypatch):
    """`kernels.linear` uses the kernel only for 2..16 fp32 rows without gradient; otherwise the
    module itself runs (its hooks included) or F.linear."""
    calls = []
    monkeypatch.setattr(kernels, "available", lambda: True)
    monkeypatch.setattr(
        torch.ops.videopoet,
        "small_linear",
        lambda x, w: calls.append(x.shape) or F.linear(x, w),
        raising=False,
    )
    lin = torch.nn.Linear(8, 4, bias=False)
    hooked = []
    lin.register_forward_hook(lambda *a: hooked.append(1))
    with torch.no_grad():
        kernels.linear(torch.randn(3, 8), lin)  # used
        kernels.linear(torch.randn(1, 8), lin)  # one row: MKL's GEMV is as fast
        kernels.linear(torch.randn(17, 8), lin)  # too many rows
        kernels.linear(torch.randn(2, 8).double(), lin.double())  # not fp32
        lin.float()
        kernels.linear(torch.randn(2, 2, 8), lin.weight)  # 4 rows through a bare weight: used
    kernels.linear(torch.randn(2, 8), lin)  # gradients wanted (lin.weight requires grad)
    assert calls == [(3, 8), (2, 2, 8)]
    assert len(hooked) == 4  # every call that did not use the kernel went through the module


def test_linear_falls_back_when_unavailable(monkeypatch):
    monkeypatch.setattr(kernels, "_state", {"ok": False})
    x, w = torch.randn(4, 8), torch.randn(3, 8)
    with torch.no_grad():
        assert torch.equal(kernels.linear(x, w), F.linear(x, w))
    assert kernels.vector_width() == 0


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setattr(kernels, "_state", {})
    monkeypatch.setenv("VIDEOPOET_KERNELS", "0")
    assert not kernels.available()


def _lm(**kw):
    vocab = Vocabulary(visual_bits=6, audio_levels=2, audio_codes=16, text_size=32)
    cfg = lm_config(vocab, {**dict(d_model=64, n_layers=2, n_heads=4, mlp_hidden=128, max_seq_len=256), **kw})
    torch.manual_seed(0)
    return PrefixLM(cfg).eval(), vocab


@needs_kernels
def test_decoding_with_kernels_matches_pytorch(monkeypatch):
    """The model's logits and greedy decoding are the same with and without the kernel."""
    model, vocab = _lm()
    ids = torch.randint(0, vocab.size, (4, 20))
    prompt = Prompt(ids, torch.ones_like(ids, dtype=torch.bool), torch.tensor([[0, vocab.size]] * 12))
    used, fused = [], []
    real, real_layers = torch.ops.videopoet.small_linear, torch.ops.videopoet.decode_layers
    monkeypatch.setattr(
        torch.ops.videopoet, "small_linear", lambda x, w: used.append(1) or real(x, w), raising=False
    )
    monkeypatch.setattr(
        torch.ops.videopoet, "decode_layers", lambda *a: fused.append(1) or real_layers(*a), raising=False
    )
    with torch.no_grad():
        h_k = model(ids)[:, -1]
        logits_k = model.logits(h_k)
        out_k = generate(model, prompt, temperature=0, compile=False)
    assert used  # the 4-row decoding steps went through the kernel
    assert len(fused) == 3 + 11  # the one-time parity check (3 tokens), then every step after the first
    monkeypatch.setattr(kernels, "_state", {"ok": False})
    with torch.no_grad():
        h = model(ids)[:, -1]
        logits = model.logits(h)
        out = generate(model, prompt, temperature=0, compile=False)
    torch.testing.assert_close(logits_k, logits, rtol=1e-5, atol=1e-5)
    assert torch.equal(out_k, out)


@needs_kernels
@pytest.mark.slow
def test_kernel_inside_compiled_graph():
    """The op traces into a fullgraph torch.compile with the C++ wrapper (as the decoding step
    is compiled) and gives the eager values."""
    w = torch.randn(256, 64)

    def f(x):
        return torch.relu(kernels.linear(x, w)) * 2

    x = torch.randn(8, 64)
    with torch.no_grad():
        got = torch.compile(f, fullgraph=True, options={"cpp_wrapper": True})(x)
    torch.testing.assert_close(got, torch.relu(F.linear(x, w)) * 2, rtol=1e-5, atol=1e-5)


needs_attention = pytest.mark.skipif(
    not kernels.available(), reason="decode kernels not built on this machine (AVX2 or AVX-512 needed)"
)


@needs_attention
@pytest.mark.parametrize(
    "R,H,Hkv,D,L,n",
    [(8, 6, 6, 64, 256, 130), (2, 4, 2, 32, 64, 1), (3, 8, 2, 128, 512, 17), (1, 6, 6, 64, 256, 256)],
)
def test_decode_attention_equals_sdpa(R, H, Hkv, D, L, n):
    """One query per row against the first n cache slots, with padding and grouped kv heads."""
    g = torch.Generator().manual_seed(n)
    q, k, v = (torch.randn(s, generator=g) for s in ((R, H, D), (R, Hkv, L, D), (R, Hkv, L, D)))
    valid = torch.rand(R, L, generator=g) > 0.3
    valid[:, n - 1] = True  # the query's own slot
    k[:, :, n:] = float("nan")  # slots past n are never read
    y = torch.ops.videopoet.decode_attention(q, k, v, valid[:, :n])
    kk = k[:, :, :n].repeat_interleave(H // Hkv, 1)
    vv = v[:, :, :n].repeat_interleave(H // Hkv, 1)
    ref = F.scaled_dot_product_attention(q[:, :, None], kk, vv, attn_mask=valid[:, None, None, :n])[:, :, 0]
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=2e-6)


@needs_attention
def test_decode_attention_refuses_wrong_inputs():
    q, k = torch.randn(2, 4, 64), torch.randn(2, 4, 32, 64)
    with pytest.raises(RuntimeError, match="shapes"):
        torch.ops.videopoet.decode_attention(q, k, k, torch.ones(2, 33, dtype=torch.bool))  # n > L
    with pytest.raises(RuntimeError, match="no kernel for head size 12"):
        torch.ops.videopoet.decode_attention(torch.randn(2, 4, 12), k[..., :12], k[..., :12], torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(RuntimeError, match="bool valid"):
        torch.ops.videopoet.decode_attention(q, k, k, torch.ones(2, 3))


@needs_attention
def test_decode_step_attention_kernel_matches_reductions(monkeypatch):
    """The eager decoding step gives the same hidden states with the attention kernel as with
    the reductions it replaces."""
    from videopoet.lm import fast_decode
    from videopoet.lm.fast_decode import decode_step
    from videopoet.lm.model import KVCache

    monkeypatch.setattr(fast_decode, "fused_blocks_usable", lambda *a: False)  # op by op
    model, vocab = _lm()
    ids = torch.randint(0, vocab.size, (3, 20))
    valid = torch.ones(3, 21, dtype=torch.bool)
    valid[0, :5] = False  # a left-padded row

    def run():
        cache = KVCache(model.cfg, 3, 64)
        with torch.no_grad():
            model(ids, cache=cache, key_valid=valid[:, :20])
            return decode_step(model, ids[:, -1:], torch.tensor(20), cache.layers, valid)

    used = []
    real = torch.ops.videopoet.decode_attention
    monkeypatch.setattr(
        torch.ops.videopoet, "decode_attention", lambda *a: used.append(1) or real(*a), raising=False
    )
    with_kernel = run()
    assert len(used) == model.cfg.n_layers
    monkeypatch.setattr(kernels, "attention_usable", lambda q, k: False)
    torch.testing.assert_close(with_kernel, run(), rtol=1e-5, atol=1e-5)


def _prefilled(model, vocab, R, L=64, P=20):
    """A KV cache after a left-padded prefix of P tokens (row 0 padded), slots past P + 1 NaN."""
    from videopoet.lm.model import KVCache

    g = torch.Generator().manual_seed(R)
    ids = torch.randint(0, vocab.size, (R, P + 1), generator=g)
    valid = torch.ones(R, P + 1, dtype=torch.bool)
    valid[0, :5] = False
    cache = KVCache(model.cfg, R, L)
    with torch.no_grad():
        model(ids[:, :P], cache=cache, key_valid=valid[:, :P])
    for k, v in cache.layers:  # never read: the step sees only the first P + 1 slots
        k[:, :, P + 1 :] = float("nan")
        v[:, :, P + 1 :] = float("nan")
    return cache, ids[:, P:], valid


@needs_attention
@pytest.mark.parametrize(
    "kw",
    [{}, dict(n_kv_heads=2), dict(mlp_hidden=40, tie_embeddings=True), dict(factorized_visual=True)],
    ids=["plain", "grouped-kv", "odd-hidden-tied", "factorized"],
)
@pytest.mark.parametrize("R", [1, 3])
def test_decode_layers_equals_the_op_by_op_step(kw, R, monkeypatch):
    """All the blocks in one C++ call (and the head, unless factorized) give the hidden states,
    logits and cache writes of the op-by-op step: grouped kv heads, an MLP width the AVX-512
    tiles do not divide, tied embeddings, padding, NaN in the slots past the position."""
    from videopoet.lm import fast_decode

    model, vocab = _lm(**kw)
    calls = []
    real = torch.ops.videopoet.decode_layers
    monkeypatch.setattr(
        torch.ops.videopoet, "decode_layers", lambda *a: calls.append(a[-1] is not None) or real(*a), raising=False
    )
    usable = fast_decode.fused_blocks_usable
    for logits in (False, True):
        out = {}
        for fused in (True, False):
            monkeypatch.setattr(fast_decode, "fused_blocks_usable", usable if fused else lambda *a: False)
            cache, tok, valid = _prefilled(model, vocab, R)
            with torch.no_grad():
                y = fast_decode.decode_step(model, tok, torch.tensor(20), cache.layers, valid, logits=logits)
            out[fused] = (y, cache.layers)
        (y, kv), (ref, ref_kv) = out[True], out[False]
        assert y.shape == ((R, vocab.size) if logits else (R, 64))
        torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
        for (k, v), (rk, rv) in zip(kv, ref_kv, strict=True):
            torch.testing.assert_close(k[:, :, :21], rk[:, :, :21], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(v[:, :, :21], rv[:, :, :21], rtol=1e-5, atol=1e-6)
    head_fused = "factorized" not in str(kw)
    assert calls == [False, head_fused]  # once per fused step; the head inside unless factorized


@needs_attention
def test_decode_layers_used_only_for_plain_blocks_without_gradients():
    from videopoet.lm.fast_decode import fused_blocks_usable

    model, _ = _lm()
    with torch.no_grad():
        assert fused_blocks_usable(model, 2)
        assert not fused_blocks_usable(model, kernels.MAX_ROWS + 1)
        hook = model.layers[1].mlp.w13.register_forward_hook(lambda *a: None)  # e.g. an adapter
        assert not fused_blocks_usable(model, 2)
        hook.remove()
        model.layers[0].attn_norm.eps = 1e-3  # one eps for the whole model
        assert not fused_blocks_usable(model, 2)
        model.layers[0].attn_norm.eps = model.cfg.norm_eps
        assert fused_blocks_usable(model, 2)
        assert not fused_blocks_usable(_lm(n_heads=16)[0], 2)  # head size 4: no attention kernel
        assert not fused_blocks_usable(model.double(), 2)
        unscaled = _lm()[0]
        unscaled.norm = torch.nn.RMSNorm(64, eps=unscaled.cfg.norm_eps, elementwise_affine=False)
        assert not fused_blocks_usable(unscaled, 2)  # the op takes a weight for every norm
    assert not fused_blocks_usable(model.float(), 2)  # gradients wanted: the modules run


@needs_attention
def test_decode_layers_refuses_wrong_inputs():
    model, _ = _lm()
    kv = [t for pair in _prefilled(model, _lm()[1], 1)[0].layers for t in pair]
    w = [m.weight.detach() for b in model.layers for m in (b.attn_norm, b.attn.wqkv, b.attn.wo, b.mlp_norm, b.mlp.w13, b.mlp.w2)]
    w.append(model.norm.weight.detach())
    x, valid = torch.randn(1, 64), torch.ones(1, 21, dtype=torch.bool)
    cos, sin = model.rope_cos, model.rope_sin

    def call(**kw):
        a = dict(x=x, weights=w, caches=kv, valid=valid, cos=cos, sin=sin, eps=1e-5, n_heads=4, head=None)
        a.update(kw)
        return torch.ops.videopoet.decode_layers(*a.values())

    assert call().shape == (1, 64)
    assert call(head=model.head.weight.detach()).shape == (1, model.cfg.vocab_size)
    with pytest.raises(RuntimeError, match="6 weights per block"):
        call(weights=w[:-1])
    with pytest.raises(RuntimeError, match="wqkv has shape"):
        call(weights=[w[0], w[1][:-16], *w[2:]])
    with pytest.raises(RuntimeError, match="contiguous float32"):
        call(weights=[w[0], w[1].double(), *w[2:]])
    with pytest.raises(RuntimeError, match="valid slots"):
        call(valid=torch.ones(1, 65, dtype=torch.bool))  # more slots than the cache holds
    with pytest.raises(RuntimeError, match="head has shape"):
        call(head=torch.randn(10, 32))


def test_vector_width_follows_the_environment():
    if os.environ.get("VIDEOPOET_KERNELS_WIDTH") == "8" and kernels.available():
        assert kernels.vector_width() == 8


@pytest.mark.skipif(
    os.environ.get("VIDEOPOET_KERNELS_WIDTH") == "8" or kernels.vector_width() != 16,
    reason="needs an AVX-512 CPU (where the AVX2 kernels are not the default)",
)
def test_this_file_passes_with_the_avx2_kernels():
    """The AVX2 + FMA kernels (what most CPUs without AVX-512 run) give the same values: every
    test above, in a fresh process with VIDEOPOET_KERNELS_WIDTH=8."""
    root = Path(__file__).resolve().parent.parent
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-m", "not slow", "-p", "no:cacheprovider", __file__],
        cwd=root,
        env={**os.environ, "VIDEOPOET_KERNELS_WIDTH": "8"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and " failed" not in r.stdout


def test_a_forward_never_builds_the_kernels_and_the_fused_path_is_gated(monkeypatch):
    """Training and evaluation forwards use the kernels only once decoding has loaded them, and
    the fused step is used only for the Block architecture it implements, after a parity check."""
    from videopoet.lm import fast_decode

    model, vocab = _lm()
    calls = []
    monkeypatch.setattr(kernels, "_state", {})
    monkeypatch.setattr(kernels, "_load", lambda: calls.append(1) or False)
    with torch.no_grad():
        model(torch.randint(0, vocab.size, (4, 20)))  # a no-grad forward with 4 rows
    assert calls == [] and not kernels.loaded()
    monkeypatch.undo()
    if kernels.available():
        torch.set_grad_enabled(False)
        assert fast_decode.fused_blocks_usable(model, 1)
        assert fast_decode.decode_matches_forward(model, True) and fast_decode.decode_matches_forward(model, False)
        monkeypatch.setattr(fast_decode, "DECODE_ARCH", "something else")
        assert not fast_decode.fused_blocks_usable(model, 1)
        torch.set_grad_enabled(True)
