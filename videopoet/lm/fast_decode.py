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
- the query is past the prefix, so the prefix-LM mask reduces to the key validity (padding).

`DecodeStep(model, cache, compile=True)` compiles the step with inductor (it fuses RMSNorm,
rotary, SwiGLU, residuals and attention and removes the per-op dispatch); if compilation fails
(no C compiler, an unsupported op) it warns once and runs the same step eagerly. Logits and
sampling stay eager: their id range changes between positions (constrained decoding) and the
sampler uses a `torch.Generator`, so the random stream is the one of eager decoding.
"""

from __future__ import annotations

import logging
import time
import warnings

import torch

from videopoet.lm.model import KVCache, PrefixLM, apply_rotary

log = logging.getLogger(__name__)

BUCKET = 256  # cache lengths are rounded up to a multiple of this (one compiled graph per bucket)


def cache_len(n: int, max_seq_len: int) -> int:
    """The static cache length for n positions: n rounded up to BUCKET, capped at max_seq_len."""
    return min(-(-n // BUCKET) * BUCKET, max_seq_len)


def decode_step(
    model: PrefixLM,
    tok: torch.Tensor,
    pos: torch.Tensor,
    kv: list[tuple[torch.Tensor, torch.Tensor]],
    valid: torch.Tensor,
) -> torch.Tensor:
    """One token per row at position `pos` -> final hidden state (R, d); writes k/v at `pos`.

    tok (R, 1) long; pos () long; kv: per layer (R, Hkv, L, D) keys and values (updated in place,
    written by index_put_ so that inductor keeps the update in place); valid (R, n) bool, the
    validity of the n = pos + 1 slots the query sees (n is a dynamic dimension when compiled).
    """
    R, n = valid.shape
    x = model.embed(tok)  # (R, 1, d)
    p = pos.view(1)
    cos, sin = model.rope_cos.index_select(0, p), model.rope_sin.index_select(0, p)  # (1, 1, D)
    hide = ~valid[:, None, None, :]  # (R, 1, 1, n)
    for i, layer in enumerate(model.layers):
        a = layer.attn
        H, Hkv, D = a.h, a.hkv, a.dh
        qkv = a.wqkv(layer.attn_norm(x)).view(R, 1, H + 2 * Hkv, D)
        qk, vn = qkv.split([H + Hkv, Hkv], 2)
        q, kn = apply_rotary(qk, cos, sin).split([H, Hkv], 2)
        ck, cv = kv[i]
        ck[:, :, p] = kn.transpose(1, 2)
        cv[:, :, p] = vn.transpose(1, 2)
        qg = q.reshape(R, Hkv, H // Hkv, 1, D) * D**-0.5  # query heads grouped by key/value head
        s = (qg * ck[:, :, None, :n]).sum(-1)  # (R, Hkv, rep, n)
        s = s.masked_fill(hide, float("-inf")).softmax(dim=-1)
        y = (s[..., None] * cv[:, :, None, :n]).sum(-2).reshape(R, 1, H * D)
        x = x + a.wo(y)
        x = x + layer.mlp(layer.mlp_norm(x))
    return model.norm(x)[:, 0]


_compiled = None  # one torch.compile wrapper per process; dynamo keys its graphs on the guards


def _compiled_step():
    global _compiled
    if _compiled is None:
        _compiled = torch.compile(decode_step, fullgraph=True)
    return _compiled


class DecodeStep:
    """Runs `decode_step` on a `KVCache` after its prefill; compiled if asked and possible."""

    _failed = False  # compilation failed once in this process: do not retry

    def __init__(self, model: PrefixLM, cache: KVCache, compile: bool):
        self.model, self.cache = model, cache
        self.compile = compile and not DecodeStep._failed
        self.fn = _compiled_step() if self.compile else decode_step
        self.pos = torch.tensor(cache.pos, dtype=torch.long, device=cache.key_valid.device)
        self.compile_seconds = 0.0
        self._first = True

    def __call__(self, tok: torch.Tensor) -> torch.Tensor:
        c = self.cache
        if c.pos >= c.max_len:
            raise IndexError(f"decode step at position {c.pos}: the cache holds {c.max_len}")
        valid = c.key_valid[:, : c.pos + 1]
        if self.compile:
            torch._dynamo.mark_dynamic(valid, 1)  # one graph for every position
        if self._first and self.compile:
            self._first = False
            t = time.perf_counter()
            try:
                h = self.fn(self.model, tok, self.pos, c.layers, valid)
            except Exception as e:  # noqa: BLE001 -- any compiler failure falls back to eager
                DecodeStep._failed = True
                warnings.warn(
                    f"torch.compile of the decoding step failed ({type(e).__name__}: {e}); decoding eagerly",
                    RuntimeWarning,
                    stacklevel=3,
                )
                self.compile, self.fn = False, decode_step
                h = self.fn(self.model, tok, self.pos, c.layers, valid)
            self.compile_seconds = time.perf_counter() - t
            log.info("decode step: first compiled call %.1f s", self.compile_seconds)
        else:
            h = self.fn(self.model, tok, self.pos, c.layers, valid)
        self.pos += 1
        c.pos += 1
        return h
