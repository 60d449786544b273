"""Sampling from the prefix LM: KV cache, constrained decoding, classifier-free guidance.

- Prompts are left-padded so every row's prefix ends at the same position; padding is masked out
  of attention (rotary embeddings are relative, so the shift does not change the result).
- Every output position has a legal id range [lo, hi) from the sequence layout (visual codes,
  audio level l codes, or one forced marker token). Only the logits of that range are computed,
  so an illegal token can never be emitted and forced markers cost no head matmul.
- Classifier-free guidance runs conditional and unconditional rows in one batch:
  logits = uncond + scale * (cond - uncond); both rows are then fed the same sampled token.
- Temperature (0 = greedy), top-k, top-p; a seed makes sampling reproducible. Each position
  draws one uniform per row from the seeded generator, and the token is found by inverse-CDF
  lookup (videopoet/lm/sampling.py), on every path.
- `compile=True` runs the decoding steps, logits and sampling included, through a shape-static
  step compiled with torch.compile (videopoet/lm/fast_decode.py); same tokens as eager decoding
  with the same seed (the compiled step masks full-vocabulary logits to the legal range instead
  of computing only that range). Compiling costs 5-22 s on a small CPU, so the default
  (`compile=None`) compiles only when it pays: a step already compiled in this process for the
  same model, rows, cache bucket and sampling settings, or at least `AUTO_COMPILE_STEPS` new
  positions when the blocks cannot run as one C++ call (`fast_decode.fused_blocks_usable`).
  When they can, eager decoding uses that call too and compiling saves ~0.35 ms per step at
  batch 1 and nothing measurable at batch 8 (benchmarks/RESULTS.md): it would pay only after
  ~15,000-50,000 steps, so it is not automatic.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from collections.abc import Sequence as Seq
from contextlib import ExitStack
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from videopoet.errors import InputError
from videopoet.lm import kernels
from videopoet.lm.fast_decode import (
    FUSED_STEPS_PER_CALL,
    DecodeStep,
    Sampling,
    cache_len,
    decode_matches_forward,
    fused_blocks_usable,
)
from videopoet.lm.model import KVCache, PrefixLM
from videopoet.lm.sampling import guided_logits, pick
from videopoet.lm.sequence import Sequence, build_sequence, output_codes, stack_text_embeds
from videopoet.lm.tasks import get_task
from videopoet.lm.vocab import Vocabulary

# compile=None compiles from this many generated positions on when the fused C++ blocks cannot
# run the model (no AVX-512, adapters or hooks, other head sizes). cpu preset, one thread, op by
# op: compiling takes ~22 s with a cold inductor cache (~14 s warm) and saves ~1.8 ms per step at
# batch 1 and ~3.3 ms at batch 8, so it pays from ~7,000-12,000 steps cold (benchmarks/RESULTS.md).
# Later calls with the same model, rows, cache bucket and sampling settings (guidance on/off,
# greedy, top-k, top-p: part of the graph) reuse the graph and always compile (for free).
AUTO_COMPILE_STEPS = 8192
_compiled_keys: set[tuple] = set()  # (id(model), rows, cache length, Sampling) compiled here


@dataclass
class Prompt:
    """A batch of prefixes (left-padded) and the legal ranges of the positions to generate."""

    ids: torch.Tensor  # (B, P)
    key_valid: torch.Tensor  # (B, P) bool
    legal: torch.Tensor  # (T_out, 2) [lo, hi) per generated position, shared by all rows
    text_embeds: torch.Tensor | None = None  # (B, N, D)
    text_positions: torch.Tensor | None = None  # (B, N), -1 = none
    forced: torch.Tensor | None = None  # (B, T_out) ids pinned per row, -1 = sample (None: none pinned)

    @property
    def batch(self) -> int:
        return int(self.ids.shape[0])


def make_prompt(seqs: Seq[Sequence], pad_id: int) -> Prompt:
    """Left-pad the prefixes of sequences built for generation (outputs given as shapes)."""
    if not seqs:
        raise InputError("make_prompt: no sequences")
    legal = seqs[0].legal[seqs[0].prefix_len :]
    for i, s in enumerate(seqs):
        if not torch.equal(s.legal[s.prefix_len :], legal):
            raise InputError(
                f"sequence {i}: its output layout differs from sequence 0 (one layout per batch)"
            )
    P = max(s.prefix_len for s in seqs)
    ids = torch.full((len(seqs), P), pad_id, dtype=torch.long)
    valid = torch.zeros(len(seqs), P, dtype=torch.bool)
    for b, s in enumerate(seqs):
        ids[b, P - s.prefix_len :] = s.ids[: s.prefix_len]
        valid[b, P - s.prefix_len :] = True
    emb, pos = stack_text_embeds(list(seqs), offsets=[P - s.prefix_len for s in seqs])
    forced = torch.full((len(seqs), legal.shape[0]), -1, dtype=torch.long)
    free = legal[:, 1] - legal[:, 0] > 1  # marker positions are forced by their legal range already
    for b, s in enumerate(seqs):
        if s.known is not None:
            k = s.known[s.prefix_len :] & free
            forced[b, k] = s.ids[s.prefix_len :][k]
    return Prompt(ids, valid, legal.clone(), emb, pos, forced if bool((forced >= 0).any()) else None)


def _join(a: Prompt, b: Prompt, pad_id: int) -> Prompt:
    """Stack two prompts' rows (conditional, then unconditional), left-padding to one length."""
    if not torch.equal(a.legal, b.legal):
        raise InputError("uncond: its output layout differs from the conditional prompt's")
    P = max(a.ids.shape[1], b.ids.shape[1])

    def lpad(x, value):
        return torch.nn.functional.pad(x, (P - x.shape[1], 0), value=value)

    ids = torch.cat([lpad(a.ids, pad_id), lpad(b.ids, pad_id)])
    valid = torch.cat([lpad(a.key_valid, False), lpad(b.key_valid, False)])
    emb = pos = None
    if a.text_embeds is not None or b.text_embeds is not None:
        D = (a.text_embeds if a.text_embeds is not None else b.text_embeds).shape[-1]
        N = max(x.text_embeds.shape[1] for x in (a, b) if x.text_embeds is not None)
        embs, poss = [], []
        for x in (a, b):
            shift = P - x.ids.shape[1]
            e = torch.zeros(x.batch, N, D) if x.text_embeds is None else x.text_embeds
            p = torch.full((x.batch, N), -1) if x.text_positions is None else x.text_positions
            e = torch.nn.functional.pad(e, (0, 0, 0, N - e.shape[1]))
            p = torch.nn.functional.pad(torch.where(p >= 0, p + shift, p), (0, N - p.shape[1]), value=-1)
            embs.append(e)
            poss.append(p)
        emb, pos = torch.cat(embs), torch.cat(poss)
    return Prompt(ids, valid, a.legal, emb, pos, a.forced)


def sample_logits(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    u: torch.Tensor | None = None,
) -> torch.Tensor:
    """logits (B, n) -> sampled indices (B,). temperature 0 = greedy; top_k 0 / top_p 1 = off.

    u (B,): the uniforms to sample with (drawn from `generator` when not given); see
    videopoet/lm/sampling.py.
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    if u is None:
        u = torch.rand(logits.shape[0], generator=generator, device=logits.device)
    return pick(logits, u, _as_tensor(temperature, logits.device), top_k, top_p)


def _as_tensor(x: float, device) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32, device=device)


@torch.no_grad()
def generate(
    model: PrefixLM,
    prompt: Prompt,
    *,
    uncond: Prompt | None = None,
    guidance_scale: float | tuple[float, float] = 1.0,
    guidance_ramp: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int | None = None,
    use_cache: bool = True,
    progress: bool = False,
    pad_id: int = 0,
    compile: bool | None = None,
    logits_hook: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Generate the positions described by `prompt.legal` -> ids (B, T_out).

    uncond: the unconditional prompt (same rows, e.g. text dropped) for classifier-free guidance
    with `guidance_scale`: one scale, or (high, low) scales for the two sub-tokens of a factorized
    visual head (each factor guided and sampled on its own, the low one given the sampled high
    one: with independent factors the joint distribution is their product, so equal scales give
    the same distribution as one scale; with the pair bias (LMConfig.visual_pair_bias) one scale
    guides the joint log-probabilities and a pair guides p(hi) and then p(lo | hi); top-k / top-p
    then filter each factor). guidance_ramp: the scale grows linearly from 1 at the
    first generated position to the given value at the last. `prompt.forced` pins ids per row
    (inpainting's unmasked codes, i2v's first frame, an output prefix): those positions are fed
    the pinned id and their uniform is drawn but unused, so the other positions sample as they
    would. use_cache=False recomputes the whole sequence each step (reference / benchmark only).
    compile: True/False, or None = only when it pays (see the module docstring); it applies to
    cached decoding with one guidance scale, no ramp and nothing pinned. logits_hook(t, logits):
    called with the (guided) logits (B, hi - lo) of every sampled position t, before temperature
    and filtering.
    """
    if temperature < 0 or not 0 < top_p <= 1 or top_k < 0:
        raise InputError(
            f"sampling: need temperature >= 0, 0 < top_p <= 1, top_k >= 0 (got {temperature}, {top_p}, {top_k})"
        )
    B = prompt.batch
    pair = isinstance(guidance_scale, (tuple, list))
    if pair and (len(guidance_scale) != 2 or not model.n_visual):
        raise InputError("guidance_scale: (high, low) sub-token scales need a factorized visual head and two values")
    simple = not pair and not guidance_ramp and prompt.forced is None  # the compiled step's case
    if uncond is not None and uncond.batch != B:
        raise InputError(f"uncond: {uncond.batch} rows, the prompt has {B}")
    rows = _join(prompt, uncond, pad_id) if uncond is not None else prompt
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    ids = rows.ids.to(device)
    valid = rows.key_valid.to(device)
    emb = rows.text_embeds.to(device, dtype) if rows.text_embeds is not None else None
    pos = rows.text_positions.to(device) if rows.text_positions is not None else None
    R, P = ids.shape
    if rows.legal.shape[0] == 0:
        return torch.empty(B, 0, dtype=torch.long, device=device)
    legal_t = rows.legal.to(device)
    legal = [(int(lo), int(hi)) for lo, hi in rows.legal.tolist()]
    T_out = len(legal)
    gen = None
    if seed is not None:
        gen = torch.Generator(device=device)
        gen.manual_seed(seed)
    greedy = temperature == 0
    scales = tuple(float(g) for g in guidance_scale) if pair else (float(guidance_scale),) * 2
    temp_t, scale_t = _as_tensor(temperature, device), _as_tensor(scales[0], device)
    forced = prompt.forced.to(device) if prompt.forced is not None else None
    pinned = [False] * T_out if forced is None else (forced >= 0).all(0).tolist()  # whole column pinned
    vis_range = (model.cfg.visual_offset, model.cfg.visual_offset + model.n_visual) if model.n_visual else None
    how = Sampling(batch=B, guided=uncond is not None, greedy=greedy, top_k=top_k, top_p=float(top_p))

    # one uniform per row and position, sampled or forced, drawn up front: the same stream on
    # every path (eager, compiled, with or without a cache)
    u_all = None if greedy else torch.rand(T_out, B, generator=gen, device=device)
    us = [None] * T_out if greedy else u_all.unbind(0)
    u_lo = None if greedy or not pair else torch.rand(T_out, B, generator=gen, device=device).unbind(0)

    def scale_at(t, k):
        g = scales[k]
        return 1 + (g - 1) * t / max(1, T_out - 1) if guidance_ramp else g

    def eager_token(h, t, u):  # the token of position t from hidden states h (R, d), eagerly
        lo, hi = legal[t]
        if hi - lo == 1:
            return torch.full((B,), lo, dtype=torch.long, device=device)
        if pinned[t]:
            return forced[:, t]
        if pair and (lo, hi) == vis_range and logits_hook is None:  # factor by factor
            lh, ll = model.visual_factor_logits(h)
            if uncond is not None:
                lh, ll = guided_logits(lh[:B], lh[B:], scale_at(t, 0)), guided_logits(ll[:B], ll[B:], scale_at(t, 1))
                # (with the pair bias B[hi] both rows' low logits get the same B[hi]: it cancels in
                # the guided difference and is added once below)
            c_hi = pick(lh, u, temp_t, top_k, top_p)
            ll = model.visual_lo_logits(ll, c_hi)  # the low factor given the sampled high one
            tok = (c_hi << model.lo_bits | pick(ll, u_lo[t] if u_lo else None, temp_t, top_k, top_p)) + lo
        else:
            logits = model.logits(h, lo, hi)
            if uncond is not None:
                logits = guided_logits(logits[:B], logits[B:], scale_at(t, 0))
            if logits_hook is not None:
                logits_hook(t, logits)
            tok = pick(logits, u, temp_t, top_k, top_p) + lo
        return tok if forced is None else torch.where(forced[:, t] >= 0, forced[:, t], tok)

    kw = dict(prefix_len=P, key_valid=valid, text_embeds=emb, text_positions=pos)
    step = eager_step = None
    K = 1  # positions per compiled call
    if use_cache:
        if device.type == "cpu":
            kernels.available()  # decoding starts here: build / load the C++ kernels (once per machine)
        fused = fused_blocks_usable(model, R) and decode_matches_forward(model, True, R)
        # with the fused blocks a compiled call decodes K positions; the last call's extra
        # positions (discarded) need room in the cache
        K_compiled = FUSED_STEPS_PER_CALL if fused and P + T_out + FUSED_STEPS_PER_CALL - 1 <= model.cfg.max_seq_len else 1
        L = cache_len(P + T_out + K_compiled - 1, model.cfg.max_seq_len)
        key = (id(model), R, L, how)
        if compile is None:
            compile = simple and (key in _compiled_keys or (T_out >= AUTO_COMPILE_STEPS and not fused))
        if compile and not simple:
            raise InputError("compile=True: the compiled step takes one guidance scale, no ramp and no pinned ids")
        cache = KVCache(model.cfg, R, L if compile else P + T_out, device=device, dtype=dtype)
        h = model(ids, cache=cache, **kw)[:, -1]
        if compile and T_out > 1:
            step = DecodeStep(model, cache, compile=True)
            K = K_compiled
        elif T_out > 1 and fused:
            eager_step = DecodeStep(model, cache, compile=False)  # all blocks in one C++ call
    else:
        seq, seq_valid = ids, valid
        h = model(seq, **kw)[:, -1]
    bar = tqdm(total=T_out, disable=not progress, desc="generate", unit="tok")
    tok = eager_token(h, 0, us[0])
    toks = [tok]
    bar.update()
    feed = tok.repeat(R // B)  # (R,): conditional and unconditional rows get the same token
    if step is not None:  # per call: K legal ranges and uniforms (the last call padded), not views
        pad = K - 1 - (T_out - 2) % K
        legal_pad = torch.cat([legal_t, legal_t[-1:].expand(pad, 2)])
        legal_calls = [c.clone() for c in legal_pad[1:].split(K)]
        u_calls = [None] * len(legal_calls)
        if not greedy:
            u_pad = torch.cat([u_all, u_all.new_full((pad, B), 0.5)])
            u_calls = [c.clone() for c in u_pad[1:].split(K)]
    t = 1
    with ExitStack() as fast:
        while t < T_out:
            if step is not None:  # decode, guide and sample K positions in one (compiled) graph
                args = (feed, legal_calls[(t - 1) // K], u_calls[(t - 1) // K], temp_t, scale_t, how)
                try:
                    new, feed, logits = step.sample(*args)
                except RuntimeError as e:  # a guard did fail after all: check guards again
                    if "skip_guard_eval_unsafe" not in str(e):
                        raise
                    fast.close()
                    new, feed, logits = step.sample(*args)
                if step.compile and t == 1:
                    _compiled_keys.add(key)
                    # The graph for this call's shapes and sampling settings now exists and the
                    # remaining calls differ only in the dynamic length: skip re-checking the
                    # guards (~0.1-0.2 ms per call); a hook runs with the guards back on.
                    fast.enter_context(torch.compiler.set_stance("default", skip_guard_eval_unsafe=True))
                for j in range(min(K, T_out - t)):
                    lo, hi = legal[t]
                    if logits_hook is not None and hi - lo > 1:
                        with torch.compiler.set_stance("default"):
                            logits_hook(t, logits[j][:, lo:hi])
                    toks.append(new[j])
                    bar.update()
                    t += 1
            else:
                if eager_step is not None:
                    h = eager_step(feed[:, None])
                elif use_cache:
                    h = model(feed[:, None], cache=cache)[:, -1]
                else:
                    seq = torch.cat([seq, feed[:, None]], dim=1)
                    seq_valid = torch.cat([seq_valid, torch.ones(R, 1, dtype=torch.bool, device=device)], dim=1)
                    h = model(seq, **{**kw, "key_valid": seq_valid})[:, -1]
                tok = eager_token(h, t, us[t])
                feed = tok.repeat(R // B)
                toks.append(tok)
                bar.update()
                t += 1
    bar.close()
    return torch.stack(toks, dim=1)


def sample_task(
    model: PrefixLM,
    vocab: Vocabulary,
    task: str,
    inputs: Seq[Mapping[str, torch.Tensor]],
    output_shapes: Mapping[str, tuple[int, ...]],
    *,
    guidance_scale: float = 1.0,
    res: str | None = None,
    **sampling,
) -> dict[str, torch.Tensor]:
    """Build the prompts of `task` for each input dict, generate, and return the output codes
    {name: (B, *shape)}. With guidance_scale != 1 the unconditional rows drop the text input."""
    spec = get_task(task)
    seqs = [build_sequence(vocab, spec, x, output_shapes, res=res) for x in inputs]
    prompt = make_prompt(seqs, vocab.pad_id)
    uncond = None
    if guidance_scale != 1.0:
        text = {p.name for p in spec.prefix if p.modality == "text"} | {"text_mask"}
        if not any(k in x for x in inputs for k in text):
            raise InputError(f"guidance_scale={guidance_scale}: task {task} has no text input to drop")
        useqs = [
            build_sequence(vocab, spec, {k: v for k, v in x.items() if k not in text}, output_shapes, res=res)
            for x in inputs
        ]
        uncond = make_prompt(useqs, vocab.pad_id)
    ids = generate(
        model, prompt, uncond=uncond, guidance_scale=guidance_scale, pad_id=vocab.pad_id, **sampling
    )
    return output_codes(vocab, seqs[0], ids.cpu())
