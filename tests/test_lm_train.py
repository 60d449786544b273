"""The prefix-LM training step: the static-shape loss equals the indexed one, the optimizer, the
step learns, bad batches are refused, and the compiled step gives the eager losses."""

import warnings

import pytest
import torch

from videopoet.errors import InputError
from videopoet.lm.model import LMConfig, PrefixLM, prefix_lm_loss
from videopoet.lm.train import TrainStep, make_optimizer, masked_lm_loss
from videopoet.lm.vocab import Vocabulary

VOCAB = Vocabulary(visual_bits=6, audio_levels=2, audio_codes=16, text_size=40)


def tiny(seed=0, **kw) -> PrefixLM:
    torch.manual_seed(seed)
    base = dict(
        vocab_size=VOCAB.size, d_model=32, n_layers=2, n_heads=4, max_seq_len=64,
        visual_bits=6, visual_offset=VOCAB.visual_offset,
    )  # fmt: skip
    return PrefixLM(LMConfig(**{**base, **kw}))


def batch(B=3, T=20, P=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB.size, (B, T), generator=g)
    ids[:, P:] = torch.randint(*VOCAB.visual_range(), (B, T - P), generator=g)  # mostly visual outputs
    ids[:, -1] = 3  # and a non-visual target
    loss_mask = (torch.arange(T) >= P)[None].expand(B, T).clone()
    return ids, loss_mask, P


@pytest.mark.parametrize("factorized", [False, True])
def test_masked_loss_equals_indexed_loss(factorized):
    m = tiny(factorized_visual=factorized)
    ids, loss_mask, P = batch()
    loss_mask[1, P : P + 4] = False  # rows with different numbers of targets
    h = m(ids, prefix_len=P)
    a, b = masked_lm_loss(m, h, ids, loss_mask), prefix_lm_loss(m, h, ids, loss_mask)
    assert torch.allclose(a, b, atol=1e-6)
    assert torch.allclose(masked_lm_loss(m, h, ids, loss_mask, start=P - 1), b, atol=1e-6)  # head skips the prefix
    ga = torch.autograd.grad(a, h, retain_graph=True)[0]
    gb = torch.autograd.grad(b, h)[0]
    assert torch.allclose(ga, gb, atol=1e-7)
    assert float(ga[:, : P - 1].abs().sum()) == 0.0  # the prefix predicts nothing


def test_optimizer_is_fused_and_decays_matrices_only():
    m = tiny()
    opt = make_optimizer(m, 1e-3, weight_decay=0.1)
    assert opt.defaults["fused"] is True  # this PyTorch has the fused CPU kernel
    decay = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    names = {n for n, p in m.named_parameters() if id(p) in decay}
    assert names and all(n.endswith(("wqkv.weight", "wo.weight", "w13.weight", "w2.weight")) for n in names)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(m.parameters()))
    assert make_optimizer(m, 1e-3, fused=False).defaults["fused"] is None
    paired = tiny(factorized_visual=True, visual_pair_bias=True)
    groups = make_optimizer(paired, 1e-3, weight_decay=0.1).param_groups
    no_decay = {id(p) for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    assert id(paired.vis_pair) in no_decay  # a table of log-odds, not a projection: not decayed


def test_train_step_learns_and_refuses_bad_batches():
    m = tiny()
    step = TrainStep(m, make_optimizer(m, 3e-3), grad_clip=1.0)
    ids, loss_mask, P = batch()
    losses = [float(step(ids, loss_mask, prefix_len=P)) for _ in range(30)]
    assert losses[-1] < 0.5 * losses[0]
    with pytest.raises(InputError, match="ids: values must be in"):
        step(ids + VOCAB.size, loss_mask, prefix_len=P)
    with pytest.raises(InputError, match="loss_mask: no target positions"):
        step(ids, torch.zeros_like(loss_mask), prefix_len=P)
    with pytest.raises(InputError, match="loss_mask"):
        step(ids, loss_mask[:, 1:], prefix_len=P)
    before = [p.clone() for p in m.parameters()]
    m.layers[0].attn.wo.weight.data[0, 0] = float("nan")
    with pytest.raises(InputError, match="the loss is nan"):
        step(ids, loss_mask, prefix_len=P)
    m.layers[0].attn.wo.weight.data[0, 0] = dict(zip([n for n, _ in m.named_parameters()], before, strict=True))[
        "layers.0.attn.wo.weight"][0, 0]
    # the refused step was not applied: every parameter is what it was, and no gradient is left
    assert all(torch.equal(p, b) for p, b in zip(m.parameters(), before, strict=True))
    assert all(p.grad is None for p in m.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("factorized", [False, True])
def test_compiled_step_gives_the_eager_losses(factorized):
    """Same init, same batches (with padding and per-row prefixes): equal losses step by step."""
    pytest.importorskip("torch._inductor")
    ids, loss_mask, P = batch(B=4, T=24)
    key_valid = torch.ones_like(ids, dtype=torch.bool)
    key_valid[2, :3] = False  # a left-padded row
    prefix = torch.tensor([P, P, P + 2, P - 1])
    runs = []
    for compile in (False, True):
        m = tiny(factorized_visual=factorized)
        step = TrainStep(m, make_optimizer(m, 1e-3), compile=compile)
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # no silent fallback to eager
            runs.append(
                [float(step(ids, loss_mask, prefix_len=prefix, key_valid=key_valid)) for _ in range(4)]
            )
        assert step.compiled == compile
    assert runs[0] == pytest.approx(runs[1], abs=2e-5)
    assert runs[0][-1] < runs[0][0]
