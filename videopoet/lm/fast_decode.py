"""A one-token decoding step for the prefix LM with one graph for every position, optionally
`torch.compile`d.

`PrefixLM.forward` with a `KVCache` is general (any number of new tokens, padding, text
embeddings, prefix masks) and checks its inputs, so each decoding step costs dozens of small
eager PyTorch calls plus Python. After the prefix, every step is the same computation, which this
module exploits:

- the cache is the preallocated `KVCache` (per layer (R, Hkv, L, D)), L rounded up to a bucket of
  `BUCKET` positions so calls with nearby lengths reuse one compiled graph;
- the position is a 0-d tensor (not a Python int) and the new key/value is written with
  index_put_ (inductor keeps it in place: no copy of the cache per step);
- attention reads the n = pos + 1 filled slots; n is the one dynamic dimension of the graph
  (`mark_dynamic` on the (R, n) key-validity input), so there is no recompilation per step and
  no work on empty slots (attending over all L slots with a mask was 20-40% slower at batch 8:
  reading the cache is a third of a step there);
- the query is past the prefix, so the prefix-LM mask reduces to the key validity (padding);
- `sample_steps` continues the same graph with the logits over the whole vocabulary, the legal
  range of the position as a mask (a tensor: one graph for visual, audio-level and marker
  positions), classifier-free guidance, temperature / top-k / top-p and the draw itself, from
  uniforms the caller takes from its `torch.Generator` (videopoet/lm/sampling.py): the same
  tokens as eager decoding with the same seed, and no eager sampling kernels between steps.

When the C++ kernels are built (AVX2 or AVX-512) and the blocks are plain (videopoet/lm/kernels,
`fused_blocks_usable`), every block of the step, the final norm and a dense head run in one
call, `decode_layers`: one OpenMP parallel region for the whole step instead of ~60 separate
calls per token (each its own fork and join, output allocation and argument checks). The graph
around it is then only the embedding and the sampling, so the cost of calling a compiled graph
counts: `sample_steps` decodes `FUSED_STEPS_PER_CALL` positions per call, each fed the token the
previous one sampled. Otherwise the blocks run op by op as below, one position per call.

`DecodeStep(model, cache, compile=True)` compiles the step with inductor (it fuses RMSNorm,
rotary, SwiGLU, residuals, attention and sampling and removes the per-op dispatch); if
compilation fails (no C compiler, an unsupported op) it warns once and runs the same step
eagerly. Each distinct `Sampling` (rows, guidance on/off, greedy, top-k, top-p) is its own graph.
`generate(compile=False)` also decodes through an eager `DecodeStep` when `decode_layers` can
run the model.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass

import torch

from videopoet.lm import kernels
from videopoet.lm.kernels import linear
from videopoet.lm.model import KVCache, PrefixLM
from videopoet.lm.sampling import guided_logits, pick

log = logging.getLogger(__name__)

BUCKET = 256  # cache lengths are rounded up to a multiple of this (one compiled graph per bucket)
# positions per compiled call when the blocks run as one C++ call (`decode_layers`): the rest of a
# call (dynamo, the graph's wrapper, embedding, sampling) was ~0.3-0.4 ms a step against ~1.05 ms
# in the op at batch 1; four steps per call took a step from 1.57-1.73 to 1.31-1.38 ms. Op by op
# the graph is ~60 calls per step, so it stays at one (four would quadruple its compile time).
FUSED_STEPS_PER_CALL = 4


def cache_len(n: int, max_seq_len: int) -> int:
    """The static cache length for n positions: n rounded up to BUCKET, capped at max_seq_len."""
    return min(-(-n // BUCKET) * BUCKET, max_seq_len)


def rotary_halves(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """`apply_rotary` with rotate-half written as a concatenation of the two halves: the same
    values, but inductor loads each half with contiguous vector loads, where `roll`'s modulo
    index became a scalar gather repeated for every cached key the query meets."""
    h = x.shape[-1] // 2
    return torch.addcmul(x * cos, torch.cat([x[..., h:], x[..., :h]], dim=-1), sin)


# the Block mathematics decode_step and decode_layers implement (videopoet.lm.model.BLOCK_ARCH)
DECODE_ARCH = "pre-RMSNorm / fused-QKV GQA attention / rotary (rotate-half) / SwiGLU / no biases: v1"
_parity: dict[tuple[int, bool, int], bool] = {}


def arch_supported() -> bool:
    from videopoet.lm.model import BLOCK_ARCH

    return BLOCK_ARCH == DECODE_ARCH


@torch.no_grad()
def decode_matches_forward(model: PrefixLM, fused: bool, rows: int = 1, atol: float = 1e-3) -> bool:
    """One-time check (cached per model object, path and row count) that decoding three tokens
    one at a time gives the hidden states of the model's own forward on those tokens."""
    key = (id(model), fused, rows)
    if key in _parity:
        return _parity[key]
    from videopoet.lm.model import KVCache

    g = torch.Generator().manual_seed(0)
    w = model.norm.weight
    ids = torch.randint(0, model.cfg.vocab_size, (rows, 3), generator=g).to(w.device)
    ref = model(ids)  # causal, no cache: Block.forward
    cache = KVCache(model.cfg, rows, 8, device=w.device, dtype=w.dtype)
    kv = cache.layers
    outs = []
    for t in range(3):
        valid = torch.ones(rows, t + 1, dtype=torch.bool, device=w.device)
        outs.append(decode_step(model, ids[:, t : t + 1], torch.tensor(t, device=w.device), kv, valid, fused=fused,
                                vis_next=cache.vis_next))
    got = torch.stack(outs, 1)
    ok = bool(torch.allclose(got, ref, atol=atol, rtol=1e-3))
    if not ok:
        import warnings

        warnings.warn(f"decoding step ({'fused C++' if fused else 'op by op'}) disagrees with the model's forward "
                      f"(max diff {float((got - ref).abs().max()):.2e}); not using it", RuntimeWarning, stacklevel=3)
    _parity[key] = ok
    return ok


def fused_blocks_usable(model: PrefixLM, rows: int) -> bool:
    """Whether `decode_layers` (every block of a step in one C++ call) can run this model at
    `rows` rows: the kernels built (AVX2 or AVX-512), fp32 CPU weights, a head size the attention
    kernels take, at most `kernels.MAX_ROWS` rows, no gradient, and plain blocks (RMSNorm and bias-free
    Linear modules without hooks: an adapter or an FSDP wrapper needs its modules to run, so the
    step then goes op by op). The caches are the model's dtype (generate makes them so; the op
    refuses others)."""
    w = model.norm.weight
    D = model.cfg.head_dim
    if not (
        arch_supported()
        and kernels.loaded()
        and w is not None
        and w.device.type == "cpu"
        and w.dtype == torch.float32
        and rows <= kernels.MAX_ROWS
        and kernels.attention_head_ok(D)
        and not (torch.is_grad_enabled() and any(p.requires_grad for p in model.parameters()))
    ):
        return False
    eps = model.cfg.norm_eps
    mods: list[torch.nn.Module] = [model.norm]
    for layer in model.layers:
        mods += [layer.attn_norm, layer.mlp_norm, layer.attn.wqkv, layer.attn.wo, layer.mlp.w13, layer.mlp.w2]
    return all(
        (type(m) is torch.nn.RMSNorm and m.weight is not None and m.eps == eps)
        or (type(m) is torch.nn.Linear and m.bias is None and m.weight.dtype == torch.float32)
        for m in mods
    ) and not any(m._forward_hooks or m._forward_pre_hooks for m in mods)


def _fused_head(model: PrefixLM) -> torch.Tensor | None:
    """The head weight decode_layers can apply itself (one dense head, no hooks), else None."""
    if model.n_visual:  # the factorized visual head: model.logits
        return None
    if model.head is not None and (
        type(model.head) is not torch.nn.Linear or model.head._forward_hooks or model.head._forward_pre_hooks
    ):
        return None
    return model._head_weight()


def decode_step(
    model: PrefixLM,
    tok: torch.Tensor,
    pos: torch.Tensor,
    kv: list[tuple[torch.Tensor, torch.Tensor]],
    valid: torch.Tensor,
    logits: bool = False,
    fused: bool | None = None,
    vis_next: torch.Tensor | None = None,
) -> torch.Tensor:
    """One token per row at position `pos` -> final hidden state (R, d), or with logits=True the
    logits over the whole vocabulary (R, V); writes k/v at `pos`.

    tok (R, 1) long; pos () long; kv: per layer (R, Hkv, L, D) keys and values (updated in place,
    written by index_put_ so that inductor keeps the update in place); valid (R, n) bool, the
    validity of the n = pos + 1 slots the query sees (n is a dynamic dimension when compiled).
    fused: whether to run `decode_layers` (None: `fused_blocks_usable`, which takes ~0.1-0.2 ms of
    Python, so `DecodeStep` decides once per call of `generate`).
    vis_next (R,) long: the KV cache's visual-run state (`KVCache.vis_next`), required by an LM with
    visual position embeddings and updated in place.
    """
    R, n = valid.shape
    vis_idx = None
    if model.vis_pos_emb is not None:
        if vis_next is None:
            raise ValueError("decode_step: this LM has visual position embeddings; pass vis_next (KVCache.vis_next)")
        vis_idx, nxt = model.visual_run_index(tok, vis_next)
        vis_next.copy_(nxt)
    x = model.embed(tok, vis_idx)  # (R, 1, d)
    if fused_blocks_usable(model, R) if fused is None else fused:  # the blocks (and head): one C++ call
        head = _fused_head(model) if logits else None
        weights = [
            m.weight
            for b in model.layers
            for m in (b.attn_norm, b.attn.wqkv, b.attn.wo, b.mlp_norm, b.mlp.w13, b.mlp.w2)
        ] + [model.norm.weight]
        out = torch.ops.videopoet.decode_layers(
            x.view(R, -1),
            weights,
            [t for pair in kv for t in pair],
            valid,
            model.rope_cos,
            model.rope_sin,
            model.cfg.norm_eps,
            model.cfg.n_heads,
            head,
        )
        return model.logits(out) if logits and head is None else out
    p = pos.view(1)
    cos, sin = model.rope_cos.index_select(0, p), model.rope_sin.index_select(0, p)  # (1, 1, D)
    hide = ~valid[:, None, None, :]  # (R, 1, 1, n)
    for i, layer in enumerate(model.layers):
        a = layer.attn
        H, Hkv, D = a.h, a.hkv, a.dh
        qkv = linear(layer.attn_norm(x), a.wqkv).view(R, 1, H + 2 * Hkv, D)
        qk, vn = qkv.split([H + Hkv, Hkv], 2)
        q, kn = rotary_halves(qk, cos, sin).split([H, Hkv], 2)
        ck, cv = kv[i]
        ck[:, :, p] = kn.transpose(1, 2)
        cv[:, :, p] = vn.transpose(1, 2)
        if kernels.attention_usable(q, ck):  # one pass over the n cached keys and values
            y = torch.ops.videopoet.decode_attention(q.reshape(R, H, D), ck, cv, valid).view(R, 1, H * D)
        else:
            qg = q.reshape(R, Hkv, H // Hkv, 1, D) * D**-0.5  # query heads grouped by kv head
            s = (qg * ck[:, :, None, :n]).sum(-1)  # (R, Hkv, rep, n)
            s = s.masked_fill(hide, float("-inf")).softmax(dim=-1)
            y = (s[..., None] * cv[:, :, None, :n]).sum(-2).reshape(R, 1, H * D)
        x = x + linear(y, a.wo)
        x = x + layer.mlp(layer.mlp_norm(x))
    h = model.norm(x)[:, 0]
    return model.logits(h) if logits else h


@dataclass(frozen=True)
class Sampling:
    """What the fused decode-and-sample step does after the hidden state (static per `generate`
    call: each distinct value is its own compiled graph)."""

    batch: int  # B output rows; the step runs R = B or 2 B (guidance: conditional, unconditional)
    guided: bool
    greedy: bool
    top_k: int = 0
    top_p: float = 1.0


def sample_steps(
    model: PrefixLM,
    tok: torch.Tensor,
    pos: torch.Tensor,
    kv: list[tuple[torch.Tensor, torch.Tensor]],
    valid: torch.Tensor,
    legal: torch.Tensor,
    u: torch.Tensor | None,
    temperature: torch.Tensor,
    scale: torch.Tensor,
    how: Sampling,
    fused: bool | None = None,
    vis_next: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each of the K = legal.shape[0] positions pos, ..., pos + K - 1: `decode_step`, then the
    logits, guidance and sampling, the sampled token fed to the next position; in one graph.

    tok (R,): the tokens fed to the first position (not a view: the next call's `tok` is this
    call's output, and dynamo guards views through their base); valid (R, n + K - 1): the slot
    validity the last position sees; legal (K, 2) long: the [lo, hi) id range of each position;
    u (K, B) uniforms (None when greedy); temperature, scale: 0-d float tensors (tensors, so that
    new values do not recompile).

    Returns the tokens (K, B), the next call's input (R,) (the last tokens repeated for the
    unconditional rows), and the guided logits over the whole vocabulary (K, B, V), -inf outside
    [lo, hi): one graph serves every range (visual, audio levels, forced markers), at the cost of
    the head rows outside the range.
    """
    K = legal.shape[0]
    n = valid.shape[1] - K + 1
    ids = torch.arange(model.cfg.vocab_size, device=tok.device)
    toks, out_logits = [], []
    for j in range(K):
        logits = decode_step(
            model, tok[:, None], pos + j, kv, valid[:, : n + j], logits=True, fused=fused, vis_next=vis_next
        )
        if how.guided:
            logits = guided_logits(logits[: how.batch], logits[how.batch :], scale)
        lo, hi = legal[j, 0], legal[j, 1]
        logits = logits.masked_fill((ids < lo) | (ids >= hi), float("-inf"))
        nxt = pick(logits, None if u is None else u[j], temperature, how.top_k, how.top_p, last=hi - 1)
        tok = nxt.repeat(tok.shape[0] // how.batch)
        toks.append(nxt)
        out_logits.append(logits)
    return torch.stack(toks), tok, torch.stack(out_logits)


_compiled: dict[str, object] = {}  # one torch.compile wrapper per function and process


def _compiled_fn(name: str):
    if name not in _compiled:
        fn = {"decode": decode_step, "sample": sample_steps}[name]
        # cpp_wrapper: the graph's kernel calls are made from generated C++, not Python (~8% per
        # step at 1 and 8 rows on 2 threads; about 10 s more compilation)
        _compiled[name] = torch.compile(fn, fullgraph=True, options={"cpp_wrapper": True})
    return _compiled[name]


class DecodeStep:
    """Runs `decode_step` (`step(tok)` -> hidden states) or `sample_steps` (`step.sample(...)` ->
    next tokens) on a `KVCache` after its prefill; compiled if asked and possible."""

    _failed = False  # compilation failed once in this process: do not retry

    def __init__(self, model: PrefixLM, cache: KVCache, compile: bool):
        self.model, self.cache = model, cache
        self.compile = compile and not DecodeStep._failed
        kernels.available()  # build/load the kernels now, not inside a compiled trace
        rows = cache.key_valid.shape[0]
        self.fused = fused_blocks_usable(model, rows) and decode_matches_forward(model, True, rows)  # once
        self.pos = torch.tensor(cache.pos, dtype=torch.long, device=cache.key_valid.device)
        self.compile_seconds = 0.0
        self._first = True

    def _run(self, name: str, tok: torch.Tensor, *rest, steps: int = 1):
        c = self.cache
        if c.pos + steps > c.max_len:
            raise IndexError(f"decode steps at positions {c.pos}..{c.pos + steps - 1}: the cache holds {c.max_len}")
        valid = c.key_valid[:, : c.pos + steps]

        def call(fn):
            return fn(self.model, tok, self.pos, c.layers, valid, *rest, fused=self.fused, vis_next=c.vis_next)

        eager = decode_step if name == "decode" else sample_steps
        if not self.compile:
            out = call(eager)
        elif not self._first:  # the graph's n is already dynamic: no need to mark it again
            out = call(_compiled_fn(name))
        else:
            self._first = False
            torch._dynamo.mark_dynamic(valid, 1)  # one graph for every position
            t = time.perf_counter()
            try:
                out = call(_compiled_fn(name))
            except Exception as e:  # noqa: BLE001 -- any compiler failure falls back to eager
                DecodeStep._failed = True
                warnings.warn(
                    f"torch.compile of the decoding step failed ({type(e).__name__}: {e}); decoding eagerly",
                    RuntimeWarning,
                    stacklevel=4,
                )
                self.compile = False
                out = call(eager)
            self.compile_seconds = time.perf_counter() - t
            log.info("decode step: first compiled call %.1f s", self.compile_seconds)
        self.pos += steps
        c.pos += steps
        return out

    def __call__(self, tok: torch.Tensor) -> torch.Tensor:
        """tok (R, 1) -> final hidden states (R, d)."""
        return self._run("decode", tok)

    def sample(
        self,
        tok: torch.Tensor,
        legal: torch.Tensor,
        u: torch.Tensor | None,
        temperature: torch.Tensor,
        scale: torch.Tensor,
        how: Sampling,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Feed tok (R,), sample the next K = legal.shape[0] positions (legal (K, 2), u (K, B) or
        None) -> (tokens (K, B), next feed (R,), logits (K, B, V))."""
        return self._run("sample", tok, legal, u, temperature, scale, how, steps=legal.shape[0])
