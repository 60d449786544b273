"""The prefix-LM transformer: attention pattern (through gradients), loss on outputs only, KV cache,
attention backends, factorized visual head, parity with transformers' Llama, presets, save/load."""

import math

import pytest
import torch
import torch.nn.functional as F

from videopoet.config import PRESETS_DIR
from videopoet.errors import ConfigError, InputError, NotAvailableError
from videopoet.lm.attention import available_backends, make_mask, resolve_backend
from videopoet.lm.model import KVCache, LMConfig, PrefixLM, prefix_lm_loss
from videopoet.lm.pretrained import build_lm, load_lm, load_preset, save_lm
from videopoet.lm.vocab import Vocabulary

VOCAB = Vocabulary(visual_bits=6, audio_levels=2, audio_codes=16, text_size=40)


def tiny(**kw) -> PrefixLM:
    base = dict(vocab_size=VOCAB.size, d_model=32, n_layers=2, n_heads=4, max_seq_len=128, visual_bits=6)
    base.update(kw)
    return PrefixLM(LMConfig(**base)).eval()


def dependence(model, ids, **kw) -> torch.Tensor:
    """dep[i, j] = True iff hidden state i has a non-zero gradient w.r.t. the input embedding j."""
    store = {}

    def hook(mod, inp, out):
        out.retain_grad()
        store["x"] = out

    handle = model.tok_emb.register_forward_hook(hook)
    T = ids.shape[1]
    dep = torch.zeros(T, T, dtype=torch.bool)
    for i in range(T):
        model.zero_grad()
        h = model(ids, **kw)
        h[0, i].sum().backward()
        dep[i] = store["x"].grad[0].abs().sum(-1) > 0
    handle.remove()
    return dep


def test_prefix_is_bidirectional_and_outputs_causal_through_gradients():
    model = tiny()
    T, P = 10, 4
    ids = torch.randint(0, VOCAB.size, (1, T))
    dep = dependence(model, ids, prefix_len=P)
    i, j = torch.meshgrid(torch.arange(T), torch.arange(T), indexing="ij")
    expected = (j <= i) | ((i < P) & (j < P))
    assert torch.equal(dep, expected)
    # padding (key_valid False) is seen by no other position
    valid = torch.ones(1, T, dtype=torch.bool)
    valid[0, :2] = False
    dep = dependence(model, ids, prefix_len=P, key_valid=valid)
    expected_pad = expected & (valid[0][None, :] | (i == j))
    assert torch.equal(dep, expected_pad)


def test_loss_covers_only_outputs():
    model = tiny()
    T, P = 12, 5
    ids = torch.randint(0, VOCAB.size, (2, T))
    loss_mask = torch.arange(T)[None].expand(2, T) >= P
    h = model(ids, prefix_len=P)
    loss = prefix_lm_loss(model, h, ids, loss_mask)
    logits = model.logits(h)
    ref = F.cross_entropy(logits[:, P - 1 : -1].reshape(-1, VOCAB.size), ids[:, P:].reshape(-1))
    assert torch.allclose(loss, ref, atol=1e-6)
    # changing a prefix token changes the hidden states but only through the outputs' inputs;
    # the gradient of the loss w.r.t. logits at positions before P-1 is exactly zero
    hh = h.detach().requires_grad_(True)
    prefix_lm_loss(model, hh, ids, loss_mask).backward()
    assert hh.grad[:, : P - 1].abs().max() == 0 and hh.grad[:, P - 1 :].abs().sum() > 0


def test_kv_cache_decoding_equals_full_forward():
    model = tiny(n_kv_heads=2)
    T, P = 14, 6
    ids = torch.randint(0, VOCAB.size, (3, T))
    valid = torch.ones(3, T, dtype=torch.bool)
    valid[1, :2] = False  # left padding in one row
    full = model.logits(model(ids, prefix_len=P, key_valid=valid))
    cache = KVCache(model.cfg, 3, T)
    steps = [model.logits(model(ids[:, :P], prefix_len=P, key_valid=valid[:, :P], cache=cache))]
    for t in range(P, T):
        steps.append(model.logits(model(ids[:, t : t + 1], cache=cache)))
    cached = torch.cat(steps, dim=1)
    assert cache.pos == T
    assert torch.allclose(cached[valid], full[valid], atol=1e-5), (cached - full)[valid].abs().max()


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_attention_backends_agree():
    torch.manual_seed(0)
    B, H, T, D = 2, 4, 16, 8
    q, k, v = torch.randn(3, B, H, T, D).unbind(0)
    kv = k[:, :2].contiguous(), v[:, :2].contiguous()  # grouped-query
    valid = torch.ones(B, T, dtype=torch.bool)
    valid[0, :3] = False
    prefix = torch.tensor([5, 9])
    backends = available_backends("cpu")
    assert "sdpa" in backends
    # reference: explicit softmax with the documented rule
    i, j = torch.arange(T)[:, None], torch.arange(T)[None]
    allowed = valid[:, None, None, :] & ((j <= i) | (j < prefix[:, None, None, None]))
    kk, vv = (x.repeat_interleave(2, 1) for x in kv)
    scores = (q @ kk.transpose(-1, -2)) / math.sqrt(D)
    ref = scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ vv
    from videopoet.lm.attention import attention

    for b in backends:
        m = make_mask(b, B, T, T, prefix_len=prefix, key_valid=valid)
        out = attention(q, *kv, m)
        assert torch.allclose(out, ref, atol=1e-5), b
        causal = attention(q, *kv, make_mask(b, B, T, T))
        assert torch.allclose(causal, F.scaled_dot_product_attention(q, kk, vv, is_causal=True), atol=1e-5), b
        # decoding: one query at the last position, with and without padded keys
        for kval in (valid, None):
            m1 = make_mask(b, B, 1, T, q_offset=T - 1, key_valid=kval)
            one = attention(q[:, :, -1:], *kv, m1)
            assert torch.allclose(
                one, ref[:, :, -1:] if kval is not None else causal[:, :, -1:], atol=1e-5
            ), b


def test_attention_backend_errors_are_clear():
    with pytest.raises(NotAvailableError, match="CUDA"):
        resolve_backend("xformers", "cpu")
    with pytest.raises(ConfigError, match="attention"):
        tiny(attention="fast")
    assert resolve_backend("auto", "cpu") == "sdpa"


def test_factorized_visual_head_is_a_product_distribution():
    model = tiny(factorized_visual=True)
    ids = torch.randint(0, VOCAB.size, (2, 9))
    h = model(ids, prefix_len=3)
    lo, hi = VOCAB.visual_range()
    vis = model.logits(h, lo, hi).log_softmax(-1)  # (2, 9, 64)
    lh, ll = model.vis_head(h).split([8, 8], dim=-1)
    c = torch.arange(64)
    prod = lh.log_softmax(-1)[..., c >> 3] + ll.log_softmax(-1)[..., c & 7]
    assert torch.allclose(vis, prod, atol=1e-5)
    # the full-vocabulary logits stitch the three ranges together
    full = model.logits(h)
    assert full.shape[-1] == VOCAB.size
    assert torch.allclose(full[..., lo:hi], model.logits(h, lo, hi))
    assert torch.allclose(full[..., hi:], model.logits(h, hi, VOCAB.size))
    # the loss of a visual target is -log p(hi) - log p(lo)
    t = torch.tensor([lo + 45])
    nll = model.token_nll(h[0, :1], t)
    assert torch.allclose(nll, -(vis[0, 0, 45]), atol=1e-5)
    # embedding: hi and lo sub-embeddings summed
    e = model.embed(torch.tensor([lo + 45]))
    assert torch.allclose(e, model.vis_emb_hi.weight[5] + model.vis_emb_lo.weight[5])


def test_text_embeddings_replace_placeholders():
    model = tiny(text_embed_dim=12)
    ids = torch.randint(0, VOCAB.size, (1, 8))
    emb = torch.randn(1, 3, 12)
    pos = torch.tensor([[2, 3, -1]])
    h1 = model(ids, prefix_len=6, text_embeds=emb, text_positions=pos)
    emb2 = emb.clone()
    emb2[0, 2] = 100.0  # an unused slot: no effect
    h2 = model(ids, prefix_len=6, text_embeds=emb2, text_positions=pos)
    assert torch.equal(h1, h2)
    emb2[0, 0] += 1.0
    h3 = model(ids, prefix_len=6, text_embeds=emb2, text_positions=pos)
    assert not torch.allclose(h1[0, 0], h3[0, 0])  # the prefix sees the text both ways
    with pytest.raises(InputError, match="text_embeds"):
        tiny()(ids, text_embeds=emb, text_positions=pos)


def _llama_pair(n_kv_heads):
    from transformers import LlamaConfig, LlamaForCausalLM

    lc = LlamaConfig(
        vocab_size=300, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=n_kv_heads, max_position_embeddings=128, rms_norm_eps=1e-5, rope_theta=10000.0,
        tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
    )  # fmt: skip
    ref = LlamaForCausalLM(lc).eval()
    ours = PrefixLM(
        LMConfig(
            vocab_size=300,
            d_model=64,
            n_layers=2,
            n_heads=4,
            n_kv_heads=n_kv_heads,
            mlp_hidden=160,
            max_seq_len=128,
        )
    ).eval()
    sd = ref.state_dict()
    new = {
        "tok_emb.weight": sd["model.embed_tokens.weight"],
        "norm.weight": sd["model.norm.weight"],
        "head.weight": sd["lm_head.weight"],
    }
    for i in range(2):
        p = f"model.layers.{i}."
        new[f"layers.{i}.attn.wqkv.weight"] = torch.cat([sd[p + f"self_attn.{n}_proj.weight"] for n in "qkv"])
        new[f"layers.{i}.attn.wo.weight"] = sd[p + "self_attn.o_proj.weight"]
        new[f"layers.{i}.mlp.w13.weight"] = torch.cat(
            [sd[p + "mlp.gate_proj.weight"], sd[p + "mlp.up_proj.weight"]]
        )
        new[f"layers.{i}.mlp.w2.weight"] = sd[p + "mlp.down_proj.weight"]
        new[f"layers.{i}.attn_norm.weight"] = sd[p + "input_layernorm.weight"]
        new[f"layers.{i}.mlp_norm.weight"] = sd[p + "post_attention_layernorm.weight"]
    ours.load_state_dict(new, strict=True)
    return ref, ours


@pytest.mark.parametrize("n_kv_heads", [4, 2])
def test_parity_with_transformers_llama(n_kv_heads):
    ref, ours = _llama_pair(n_kv_heads)
    for p in ref.parameters():  # non-trivial norm weights too
        if p.dim() == 1:
            torch.nn.init.uniform_(p, 0.5, 1.5)
    ours.load_state_dict({**ours.state_dict(), **{
        f"layers.{i}.{a}.weight": ref.state_dict()[f"model.layers.{i}.{b}.weight"]
        for i in range(2) for a, b in (("attn_norm", "input_layernorm"), ("mlp_norm", "post_attention_layernorm"))
    }, "norm.weight": ref.state_dict()["model.norm.weight"]})  # fmt: skip
    ids = torch.randint(0, 300, (2, 40))
    with torch.no_grad():
        expected = ref(input_ids=ids).logits
        got = ours.logits(ours(ids))
    assert expected.abs().max() > 0.1
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()


def test_every_preset_parses_and_paper_sizes_match():
    names = sorted(p.stem for p in (PRESETS_DIR / "lm").glob("*.yaml"))
    assert {"debug", "cpu", "300m", "1b", "8b"} <= set(names)
    target = {"300m": 300e6, "1b": 1e9, "8b": 8e9, "cpu": 15e6}
    for name in names:
        model, vocab = build_lm(name, device="meta")
        assert model.cfg.vocab_size == vocab.size
        n = model.num_params()
        if name in target:  # paper sizes within 6%
            assert abs(n / target[name] - 1) < 0.06, (name, n)
    vocab, cfg = load_preset("lm/300m")
    assert cfg.factorized_visual and vocab.visual_bits == 18 and cfg.text_embed_dim == 2048


def test_save_load_round_trip(tmp_path):
    model, vocab = build_lm("debug")
    model.eval()
    save_lm(tmp_path / "lm", model, vocab)
    assert (tmp_path / "lm" / "vocab.json").is_file()
    loaded, v2 = load_lm(tmp_path / "lm")
    assert v2 == vocab
    ids = torch.randint(0, vocab.size, (1, 10))
    assert torch.equal(loaded.logits(loaded(ids, prefix_len=3)), model.logits(model(ids, prefix_len=3)))
    (tmp_path / "lm" / "vocab.json").unlink()
    with pytest.raises(Exception, match="vocab.json"):
        load_lm(tmp_path / "lm")


def test_input_checks():
    model = tiny()
    with pytest.raises(InputError, match="ids"):
        model(torch.tensor([[VOCAB.size]]))
    with pytest.raises(ConfigError, match="n_heads"):
        LMConfig(vocab_size=10, d_model=30, n_heads=4)


def test_text_embedding_mode_traces_without_graph_breaks():
    cfg = LMConfig(vocab_size=300, d_model=32, n_layers=1, n_heads=4, max_seq_len=64, text_embed_dim=12)
    m = PrefixLM(cfg)
    ids = torch.randint(0, 300, (2, 16))
    emb = torch.randn(2, 5, 12)
    pos = torch.tensor([[2, 3, 4, 5, 6], [2, 3, 4, -1, -1]])
    m.backend(ids.device)  # resolved (and logged) once, eagerly, as TrainStep does
    out = torch._dynamo.explain(lambda i, e, p: m(i, prefix_len=8, text_embeds=e, text_positions=p))(ids, emb, pos)
    assert out.graph_break_count == 0, out.break_reasons
    # the embeddings land where the positions say, replacing the token embedding there
    x = m.embed(ids)
    with torch.no_grad():
        proj = m.text_proj(emb)
        h_ref = x.clone()
        for b in range(2):
            for n in range(5):
                if pos[b, n] >= 0:
                    h_ref[b, pos[b, n]] = proj[b, n]
    captured = {}
    def keep(mod, args):
        captured["x"] = args[0].detach()

    handle = m.layers[0].register_forward_pre_hook(keep)
    m(ids, prefix_len=8, text_embeds=emb, text_positions=pos)
    handle.remove()
    torch.testing.assert_close(captured["x"], h_ref)


def test_pair_bias_makes_the_low_factor_depend_on_the_high_one():
    """visual_pair_bias: p(code) = p(hi | h) p(lo | h, hi) with lo logits ll + B[hi]; B = 0 is the
    independent head, and the full logits, the loss and the saved model agree with that definition."""
    torch.manual_seed(0)
    indep = tiny(factorized_visual=True)
    model = tiny(factorized_visual=True, visual_pair_bias=True)
    assert torch.count_nonzero(model.vis_pair) == 0  # zero at init, after reset_parameters
    model.load_state_dict({**indep.state_dict(), "vis_pair": torch.zeros(8, 8)})
    ids = torch.randint(0, VOCAB.size, (2, 9))
    h = model(ids, prefix_len=3)
    lo, hi = VOCAB.visual_range()
    assert torch.allclose(model.logits(h, lo, hi).log_softmax(-1), indep.logits(h, lo, hi).log_softmax(-1), atol=1e-5)
    with torch.no_grad():
        model.vis_pair.copy_(torch.randn(8, 8) * 3)
    B = model.vis_pair.detach()
    vis = model.logits(h, lo, hi)
    assert torch.allclose(vis.logsumexp(-1), torch.zeros(2, 9), atol=1e-5)  # already log-probabilities
    lh, ll = model.vis_head(h).split([8, 8], dim=-1)
    c = torch.arange(64)
    want = lh.log_softmax(-1)[..., c >> 3] + (ll[..., None, :] + B).log_softmax(-1)[..., c >> 3, c & 7]
    assert torch.allclose(vis, want, atol=1e-5)
    assert not torch.allclose(vis.log_softmax(-1), indep.logits(h, lo, hi).log_softmax(-1), atol=1e-2)
    t = torch.tensor([lo + 45, lo + 2])
    nll = model.token_nll(h[0, :2], t)
    assert torch.allclose(nll, -torch.stack([vis[0, 0, 45], vis[0, 1, 2]]), atol=1e-5)
    assert torch.allclose(model.token_nll(h[0, :2], t, dense=True), nll, atol=1e-6)
    assert torch.equal(model.visual_lo_logits(ll[0, :2], torch.tensor([5, 0])), ll[0, :2] + B[[5, 0]])
    with pytest.raises(ConfigError, match="visual_pair_bias"):
        tiny(visual_pair_bias=True)  # needs the factorized head


def test_pair_bias_is_saved_and_loaded(tmp_path):
    torch.manual_seed(0)
    model = tiny(factorized_visual=True, visual_pair_bias=True)
    with torch.no_grad():
        model.vis_pair.normal_()
    save_lm(tmp_path / "lm", model, VOCAB)
    back, _ = load_lm(tmp_path / "lm")
    assert back.cfg.visual_pair_bias and torch.equal(back.vis_pair, model.vis_pair)
