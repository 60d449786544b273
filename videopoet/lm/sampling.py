"""Token sampling shared by eager decoding and the compiled decoding step.

Both paths draw one uniform number per row and position from the caller's generator and pick the
token by inverse-CDF lookup, so a seed gives the same tokens whether the step runs eagerly or is
compiled (the compiled step cannot take a `torch.Generator`, but it can take the uniforms):

    probs = softmax(filtered logits / temperature); token = first i with cdf[i] > u * cdf[-1]

A token with probability 0 (outside the legal range, or removed by top-k / top-p) is never
picked: its cdf equals its predecessor's. One uniform per row also keeps the random stream
independent of the vocabulary size (a Gumbel race would need one number per logit).
"""

from __future__ import annotations

import torch


def guided_logits(cond: torch.Tensor, uncond: torch.Tensor, scale) -> torch.Tensor:
    """Classifier-free guidance: uncond + scale * (cond - uncond)."""
    return uncond + scale * (cond - uncond)


def filter_logits(logits: torch.Tensor, temperature, top_k: int, top_p: float) -> torch.Tensor:
    """Scale by temperature (> 0) and drop what top-k / top-p exclude (set to -inf)."""
    logits = logits.float() / temperature
    n = logits.shape[-1]
    if 0 < top_k < n:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        drop = probs.cumsum(dim=-1) - probs > top_p  # keep the smallest set with mass >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def pick(
    logits: torch.Tensor,
    u: torch.Tensor | None,
    temperature,
    top_k: int = 0,
    top_p: float = 1.0,
    last: torch.Tensor | int | None = None,
) -> torch.Tensor:
    """logits (B, n), u (B,) uniforms in [0, 1) (None: greedy) -> indices (B,).

    last: the highest index that may be returned (default n - 1); it guards the one case where
    rounding puts u * total on the total itself.
    """
    if u is None:
        return logits.argmax(dim=-1)
    cdf = filter_logits(logits, temperature, top_k, top_p).softmax(dim=-1).cumsum(dim=-1)
    idx = (cdf <= u[:, None] * cdf[:, -1:]).sum(dim=-1)
    return idx.clamp_max(logits.shape[-1] - 1 if last is None else last)
