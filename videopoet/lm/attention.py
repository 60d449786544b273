"""Prefix-LM attention: one function, three backends, chosen once.

Mask semantics (one rule for every backend): query i of row b sees key j iff
    key_valid[b, j]  and  (j <= i  or  j < prefix_len[b])
i.e. the prefix attends bidirectionally, outputs attend causally, padding is never attended to.
Positions are absolute sequence positions (queries start at `q_offset` when decoding with a cache).

Backends:
- "sdpa"     torch.nn.functional.scaled_dot_product_attention with an explicit boolean mask
             (or `is_causal` / no mask when the mask is plain causal or all-visible). Default.
- "flex"     FlexAttention with a block mask built once per forward: block-sparse (it skips the
             masked blocks) only under torch.compile; in eager mode, on any device, PyTorch runs it
             as an unfused reference that materialises the scores. Opt-in, for compiled training.
- "xformers" xformers.ops.memory_efficient_attention with an additive bias (CUDA only, optional;
             imported only when chosen).
`resolve_backend("auto", device)` picks sdpa (the only one that is fast in eager mode everywhere)
and logs the choice once per device type. Unsupported combinations raise NotAvailableError.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from videopoet.errors import ConfigError, NotAvailableError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "sdpa", "flex", "xformers")


def _has_flex() -> bool:
    return importlib.util.find_spec("torch.nn.attention.flex_attention") is not None


@functools.cache
def resolve_backend(name: str, device_type: str) -> str:
    """The backend to use for `name` on `device_type`; raises for unsupported combinations."""
    if name not in BACKENDS:
        raise ConfigError(f"attention: {name!r} is not one of {list(BACKENDS)}")
    if name == "auto":
        # CUDA: FlexAttention block masks (a prefix-LM mask is block-sparse; compiled by training's
        # torch.compile); CPU: SDPA with the dense mask (FlexAttention has no CPU backward in 2.13)
        chosen = "flex" if device_type == "cuda" and _has_flex() else "sdpa"
    else:
        chosen = name
    if chosen == "flex" and not _has_flex():
        raise NotAvailableError("attention='flex' needs torch >= 2.5 (torch.nn.attention.flex_attention)")
    if chosen == "xformers":
        if device_type != "cuda":
            raise NotAvailableError(
                f"attention='xformers' needs a CUDA device (got {device_type}); use 'sdpa'"
            )
        if importlib.util.find_spec("xformers") is None:
            raise NotAvailableError("attention='xformers': xformers is not installed (pip install xformers)")
    log.info("attention backend: %s (asked for %s, device %s)", chosen, name, device_type)
    return chosen


def available_backends(device_type: str) -> list[str]:
    out = []
    for b in BACKENDS[1:]:
        try:
            resolve_backend(b, device_type)
            out.append(b)
        except NotAvailableError:
            pass
    return out


@dataclass
class Mask:
    """A prepared mask for one forward (shared by all layers)."""

    backend: str
    dense: torch.Tensor | None = None  # (B, 1, Tq, Tk) bool, True = attend
    is_causal: bool = False
    block: Any = None  # flex BlockMask
    bias: torch.Tensor | None = None  # xformers additive bias (B, 1, Tq, Tk_padded)


def make_mask(
    backend: str,
    batch: int,
    q_len: int,
    k_len: int,
    *,
    q_offset: int = 0,
    prefix_len: torch.Tensor | None = None,
    key_valid: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
) -> Mask:
    """Build the mask for queries at positions [q_offset, q_offset + q_len) over keys [0, k_len).

    prefix_len: (B,) long or None (plain causal); key_valid: (B, k_len) bool or None (all valid).
    """
    if prefix_len is not None and not torch.compiler.is_compiling() and not bool((prefix_len > q_offset).any()):
        prefix_len = None  # every query is past the prefix: causal alone says it all
    if backend == "flex":
        from torch.nn.attention.flex_attention import create_block_mask

        P = (
            prefix_len.to(device)
            if prefix_len is not None
            else torch.zeros(batch, dtype=torch.long, device=device)
        )
        kv = (
            key_valid.to(device)
            if key_valid is not None
            else torch.ones(batch, k_len, dtype=torch.bool, device=device)
        )

        def mask_mod(b, h, q, k):
            return kv[b, k] & ((k <= q + q_offset) | (k < P[b]))

        return Mask(backend, block=create_block_mask(mask_mod, batch, None, q_len, k_len, device=device))
    plain = prefix_len is None and key_valid is None
    if backend == "sdpa" and plain and q_offset == 0 and q_len == k_len:
        return Mask(backend, is_causal=True)
    if backend == "sdpa" and plain and q_len == 1 and q_offset == k_len - 1:
        return Mask(backend)  # one query at the end sees every key
    qi = torch.arange(q_offset, q_offset + q_len, device=device)[:, None]
    kj = torch.arange(k_len, device=device)[None, :]
    m = (kj <= qi)[None]  # (1, Tq, Tk)
    if prefix_len is not None:
        m = m | (kj[None] < prefix_len.to(device)[:, None, None])
    if key_valid is not None:
        m = m & key_valid.to(device)[:, None, :]
    m = m.expand(batch, q_len, k_len)[:, None]
    if backend == "xformers":
        pad = (-k_len) % 8  # xformers wants the bias's last dim aligned to 8 elements
        bias = torch.zeros(batch, 1, q_len, k_len + pad, device=device)
        bias[..., :k_len].masked_fill_(~m, float("-inf"))
        return Mask(backend, bias=bias)
    return Mask(backend, dense=m)


def _one_query(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dense: torch.Tensor | None) -> torch.Tensor:
    """Decoding one token: two small matmuls. (SDPA's fused CPU kernel has a fixed cost of a few
    hundred microseconds per call, more than the whole attention of one query.)"""
    B, H, _, D = q.shape
    Hkv = k.shape[1]
    qg = q.reshape(B, Hkv, H // Hkv, D)  # query heads grouped by their key/value head
    s = torch.matmul(qg, k.transpose(-1, -2)) * D**-0.5  # (B, Hkv, rep, Tk)
    if dense is not None:
        s = s.masked_fill(~dense.reshape(B, 1, 1, -1), float("-inf"))
    return torch.matmul(s.softmax(dim=-1), v).reshape(B, H, 1, D)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Mask) -> torch.Tensor:
    """q (B, H, Tq, D), k/v (B, Hkv, Tk, D) with H a multiple of Hkv -> (B, H, Tq, D)."""
    gqa = q.shape[1] != k.shape[1]
    if mask.backend == "sdpa" and q.shape[2] == 1 and not q.requires_grad:
        return _one_query(q, k, v, mask.dense)
    if mask.backend == "sdpa":
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask.dense, is_causal=mask.is_causal, enable_gqa=gqa
        )
    if mask.backend == "flex":
        from torch.nn.attention.flex_attention import flex_attention

        return flex_attention(q, k, v, block_mask=mask.block, enable_gqa=gqa)
    if mask.backend == "xformers":
        import xformers.ops as xops

        if gqa:
            rep = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        Tk = k.shape[2]
        bias = mask.bias.expand(q.shape[0], q.shape[1], q.shape[2], mask.bias.shape[-1])[..., :Tk]
        out = xops.memory_efficient_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=bias
        )
        return out.transpose(1, 2)
    raise NotAvailableError(f"attention backend {mask.backend!r}: unknown")
