"""Lookup-free quantization (LFQ, MAGVIT-v2, Yu et al. 2024) with a factorized entropy penalty.

Each of K latent channels is quantized to its sign, so the codebook is {-1, +1}^K (2^K codes) and
no codebook is ever looked up:

    q_k  = sign(z_k) in {-1, +1}
    code = sum_k 2^k [z_k > 0]          (channel k is bit k; channel 0 is the least significant bit)

Training terms (weights live in the training config, not here):
- entropy penalty  E_z[H(q(z))] - gamma * H(E_z[q(z)]) with q(z) = softmax over codes of
  2 * inv_temperature * <z, c> (the same soft assignment as vector-quantize-pytorch's LFQ);
- commitment       ||z - sg(q)||^2.

Memory: a dense 2^K softmax per token needs N x 2^K floats (2,560 tokens x 2^18 codes = 2.7 GB per
tensor for two 17x128x128 clips). The bits are split into groups of `group_bits` (2 x 9 bits for
K = 18) and the entropies are computed per sub-codebook of 2^group_bits codes:
- the per-sample entropy is exact (q(z) is a product over bits, hence over groups, and the entropy
  of a product distribution is the sum of the factors' entropies);
- the batch (codebook) entropy is the sum of the sub-codebooks' batch entropies, an upper bound on
  the dense H(E[q]) that is equal to it when the groups are used independently.
With one group (group_bits >= K) both terms equal the dense form; tests check that against
vector-quantize-pytorch, and that the codes equal its indices (it orders bits the other way round:
its first channel is the most significant bit, so its input is our latent with channels reversed).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


class LFQOutput(NamedTuple):
    quantized: torch.Tensor  # (B, K, ...) in {-1, +1}, straight-through gradient to z
    codes: torch.Tensor  # (B, ...) int64 in [0, 2^K)
    per_sample_entropy: torch.Tensor  # scalar, E[H(q(z))] (to be minimised)
    batch_entropy: torch.Tensor  # scalar, H(E[q(z)]) (to be maximised)
    commitment: torch.Tensor  # scalar, mean (z - sg(q))^2


def _entropy(p: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    # same clamp as vector-quantize-pytorch so the one-group case matches it exactly
    return -(p * p.clamp(min=eps).log()).sum(-1)


class LFQ(nn.Module):
    """Sign quantizer over K channels of a channel-first latent (B, K, *spatial)."""

    def __init__(self, bits: int, group_bits: int = 9, inv_temperature: float = 100.0):
        super().__init__()
        if not 1 <= bits <= 30:
            raise ValueError(f"bits must be in [1, 30], got {bits}")
        if not 1 <= group_bits <= 16:
            raise ValueError(f"group_bits must be in [1, 16], got {group_bits}")
        self.bits = bits
        self.inv_temperature = inv_temperature
        # groups of `group_bits` channels, the last one possibly smaller
        self.groups = [min(group_bits, bits - s) for s in range(0, bits, group_bits)]
        self.register_buffer("powers", 2 ** torch.arange(bits, dtype=torch.long), persistent=False)
        for i, g in enumerate(self.groups):
            # sub-codebook of group i: row j = the {-1,+1}^g vector of code j (bit k of j -> column k)
            sub = ((torch.arange(2**g)[:, None] >> torch.arange(g)) & 1).float() * 2 - 1
            self.register_buffer(f"subcodebook{i}", sub, persistent=False)

    @property
    def codebook_size(self) -> int:
        return 2**self.bits

    # ---- inference -----------------------------------------------------------------------------
    def codes(self, z: torch.Tensor) -> torch.Tensor:
        """(B, K, ...) latent -> (B, ...) int64 codes."""
        bits = (z > 0).long().movedim(1, -1)  # (B, ..., K)
        return (bits * self.powers).sum(-1)

    def codes_to_latent(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, ...) int64 codes -> (B, K, ...) latent in {-1, +1} (float32)."""
        bits = (codes.unsqueeze(-1) >> torch.arange(self.bits, device=codes.device)) & 1
        return (bits.float() * 2 - 1).movedim(-1, 1)

    # ---- training ------------------------------------------------------------------------------
    def entropies(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-sample entropy, batch entropy) of the soft code assignment, summed over groups."""
        with torch.autocast(z.device.type, enabled=False):  # fp32 even under bf16 autocast
            return self._entropies(z.movedim(1, -1).reshape(-1, self.bits).float())

    def _entropies(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # (N, K) fp32
        per_sample = flat.new_zeros(())
        batch = flat.new_zeros(())
        start = 0
        for i, g in enumerate(self.groups):
            sub = getattr(self, f"subcodebook{i}")  # (2^g, g)
            logits = 2 * self.inv_temperature * flat[:, start : start + g] @ sub.t()  # (N, 2^g)
            prob = logits.softmax(-1)
            per_sample = per_sample + _entropy(prob).mean()
            batch = batch + _entropy(prob.mean(0))
            start += g
        return per_sample, batch

    def forward(self, z: torch.Tensor) -> LFQOutput:
        """Quantize z (B, K, ...): straight-through quantized latent, codes and the loss terms."""
        if z.shape[1] != self.bits:
            raise ValueError(f"LFQ expects {self.bits} channels in dim 1, got shape {tuple(z.shape)}")
        zf = z.float()
        q = torch.where(zf > 0, 1.0, -1.0)
        quantized = zf + (q - zf).detach()
        per_sample, batch = self.entropies(zf)
        commitment = (zf - q).pow(2).mean()
        return LFQOutput(quantized.to(z.dtype), self.codes(zf), per_sample, batch, commitment)
