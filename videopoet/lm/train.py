"""One training step of the prefix LM: loss on the outputs only, AdamW, optional torch.compile.

`TrainStep(model, optimizer, compile=...)` runs forward + loss + backward + optimizer step on a
batch of built sequences (ids, prefix lengths, padding, loss mask; videopoet/lm/sequence.py
`collate`). What makes it faster than the obvious loop:

- `make_optimizer` builds AdamW with `fused=True` where PyTorch has the fused kernel for the
  parameters' device and dtype (CPU and CUDA, fp32/bf16): one pass over each parameter instead of
  a dozen elementwise kernels; decay applies to matrices only (not norms, embeddings or heads).
- `compile=True` compiles forward + loss (and through AOTAutograd the backward) as one graph. The
  loss is written without data-dependent shapes (`masked_lm_loss`: the NLL of every position,
  weighted by the loss mask, instead of indexing the target positions), and the inputs are checked
  eagerly before the graph, so nothing breaks it. The graph is specialised to the batch shape;
  length-grouped batches of a few shapes mean a few graphs.

Benchmarks: benchmarks/bench_lm_train.py (against transformers' LlamaForCausalLM training step).
"""

from __future__ import annotations

import logging
import warnings

import torch

from videopoet.errors import InputError
from videopoet.lm.model import PrefixLM, check_ids

log = logging.getLogger(__name__)


def make_optimizer(
    model: torch.nn.Module,
    lr: float,
    *,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    fused: bool | None = None,
) -> torch.optim.AdamW:
    """AdamW with weight decay on the >= 2-D weights except embeddings, heads and the visual pair
    bias (a table of log-odds, not a projection).

    fused: None = use the fused kernel when this PyTorch has it for the parameters' device and
    dtype; True = require it; False = PyTorch's default implementation.
    """
    decay, rest = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 and not any(k in name for k in ("emb", "head", "vis_pair")) else rest).append(p)
    groups = [
        g
        for g in ({"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0})
        if g["params"]
    ]
    if fused is False:
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=True)
    except (RuntimeError, ValueError) as e:  # no fused kernel for this device / dtype
        if fused:
            raise
        log.info("AdamW: fused kernel unavailable (%s); using the default implementation", e)
        return torch.optim.AdamW(groups, lr=lr, betas=betas)


def masked_lm_loss(
    model: PrefixLM, h: torch.Tensor, ids: torch.Tensor, loss_mask: torch.Tensor, start: int = 0
) -> torch.Tensor:
    """Mean next-token NLL over the targets in loss_mask, without data-dependent shapes.

    Equals `prefix_lm_loss` (which runs the head on the target positions only); this form runs
    the head on every position from `start` on and weights the NLL by the mask, so
    torch.compile sees static shapes. h (B, T, d), ids (B, T), loss_mask (B, T) bool (position
    t is a target predicted from t - 1), or float per-target weights (a weighted mean); start: no row has a target at positions <= start (the
    head skips the positions that only predict prefix tokens: the shortest prefix, less one).
    """
    hs, targets = h[:, start:-1], ids[:, start + 1 :]
    w = loss_mask[:, start + 1 :].to(h.dtype)
    nll = model.token_nll(hs.flatten(0, 1), targets.flatten(), dense=True).view_as(w)
    return (nll * w).sum() / w.sum()


def _loss(model, ids, prefix_len, key_valid, loss_mask, text_embeds, text_positions, start):
    h = model(
        ids,
        prefix_len=prefix_len,
        key_valid=key_valid,
        text_embeds=text_embeds,
        text_positions=text_positions,
    )
    return masked_lm_loss(model, h, ids, loss_mask, start)


class TrainStep:
    """forward + loss (outputs only) + backward + optional gradient clipping + optimizer step."""

    def __init__(
        self,
        model: PrefixLM,
        optimizer: torch.optim.Optimizer,
        *,
        compile: bool = False,
        grad_clip: float | None = None,
    ):
        self.model, self.optimizer, self.grad_clip = model, optimizer, grad_clip
        self.loss_fn = _loss
        model.backend(next(model.parameters()).device)  # resolve the attention backend eagerly
        if compile:
            self.loss_fn = torch.compile(_loss)
        self.compiled = compile

    def loss(
        self,
        ids: torch.Tensor,
        loss_mask: torch.Tensor,
        *,
        prefix_len: torch.Tensor | int | None = None,
        key_valid: torch.Tensor | None = None,
        text_embeds: torch.Tensor | None = None,
        text_positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The loss of one batch (with the autograd graph), inputs checked eagerly."""
        if ids.dim() != 2 or loss_mask.shape != ids.shape:
            raise InputError(
                f"ids {tuple(ids.shape)} / loss_mask {tuple(loss_mask.shape)}: need two equal (B, T) shapes"
            )
        check_ids(ids, self.model.cfg.vocab_size)
        if not bool(loss_mask[:, 1:].any()):
            raise InputError("loss_mask: no target positions (the loss covers outputs only)")
        if isinstance(prefix_len, int):
            prefix_len = torch.full((ids.shape[0],), prefix_len, dtype=torch.long, device=ids.device)
        if key_valid is not None and bool(key_valid.all()):
            key_valid = None  # no padding: the plain prefix-LM mask
        loss_mask = loss_mask.to(torch.bool)
        start = int(loss_mask[:, 1:].any(0).to(torch.uint8).argmax())  # the first column with a target, less one
        args = (self.model, ids, prefix_len, key_valid, loss_mask, text_embeds, text_positions, start)
        if not self.compiled:
            return self.loss_fn(*args)
        try:
            return self.loss_fn(*args)
        except Exception as e:  # noqa: BLE001 -- a compiler failure falls back to eager, once
            warnings.warn(
                f"torch.compile of the training step failed ({type(e).__name__}: {e}); training eagerly",
                RuntimeWarning,
                stacklevel=2,
            )
            self.loss_fn, self.compiled = _loss, False
            return self.loss_fn(*args)

    def __call__(self, ids: torch.Tensor, loss_mask: torch.Tensor, **kw) -> torch.Tensor:
        """One optimizer step on a batch -> the loss (detached)."""
        loss = self.loss(ids, loss_mask, **kw)
        if not torch.isfinite(loss):
            self.optimizer.zero_grad(set_to_none=True)
            raise InputError(f"training step: the loss is {float(loss.detach())} (the step was skipped)")
        loss.backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip, foreach=True)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()
