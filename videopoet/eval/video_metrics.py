"""Reconstruction metrics for the video tokenizer: PSNR, SSIM (per frame), codebook usage.

Videos are (B, 3, T, H, W) in [-1, 1] (images (B, 3, H, W) count as one frame);
they are mapped to [0, 1] before measuring, so PSNR is 10 log10(1 / MSE) on [0, 1] values.
SSIM is Wang et al. (2004): an 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, 'valid'
borders, averaged over channels, pixels and frames (the same definition as scikit-image's
`structural_similarity(..., gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
data_range=1, channel_axis=...)`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _frames(x: torch.Tensor) -> torch.Tensor:
    """-> (N, C, H, W) frames in [0, 1], float64 for stable statistics."""
    if x.dim() == 4:  # image batch
        x = x.unsqueeze(2)
    if x.dim() != 5:
        raise ValueError(f"expected (B, C, T, H, W) videos or (B, C, H, W) images, got {tuple(x.shape)}")
    return ((x.double().clamp(-1, 1) + 1) / 2).transpose(1, 2).flatten(0, 1)


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """PSNR in dB over all frames (mean squared error pooled over the whole batch)."""
    a, b = _frames(x), _frames(y)
    if a.shape != b.shape:
        raise ValueError(f"psnr: shapes differ {tuple(x.shape)} vs {tuple(y.shape)}")
    mse = float((a - b).pow(2).mean())
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


def psnr_per_frame(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    a, b = _frames(x), _frames(y)
    mse = (a - b).pow(2).mean(dim=(1, 2, 3))
    return 10 * torch.log10(1.0 / mse.clamp(min=1e-20))


def _gaussian(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    g = torch.exp(-((torch.arange(size, dtype=torch.float64) - (size - 1) / 2) ** 2) / (2 * sigma**2))
    return g / g.sum()


def ssim_per_frame(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """SSIM of each frame (N,) averaged over channels and (valid) pixels."""
    a, b = _frames(x), _frames(y)
    if a.shape != b.shape:
        raise ValueError(f"ssim: shapes differ {tuple(x.shape)} vs {tuple(y.shape)}")
    c = a.shape[1]
    if min(a.shape[-2:]) < window:
        window = min(a.shape[-2:]) | 1 if min(a.shape[-2:]) % 2 else min(a.shape[-2:]) - 1
    g = _gaussian(window, sigma)
    kh = g.view(1, 1, -1, 1).expand(c, 1, -1, 1).to(a)
    kw = g.view(1, 1, 1, -1).expand(c, 1, 1, -1).to(a)
    blur = lambda v: F.conv2d(F.conv2d(v, kh, groups=c), kw, groups=c)  # noqa: E731
    mu_a, mu_b = blur(a), blur(b)
    saa = blur(a * a) - mu_a**2
    sbb = blur(b * b) - mu_b**2
    sab = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (saa + sbb + c2))
    return s.mean(dim=(1, 2, 3))


def ssim(x: torch.Tensor, y: torch.Tensor) -> float:
    return float(ssim_per_frame(x, y).mean())


def codebook_usage(codes: torch.Tensor, codebook_size: int) -> dict[str, float]:
    """Fraction of the codebook used, perplexity exp(H(code histogram)) and its ratio to the
    codebook size, over all codes in `codes` (any shape)."""
    flat = codes.reshape(-1).long()
    if flat.numel() == 0:
        return {"usage": 0.0, "perplexity": 0.0, "perplexity_ratio": 0.0, "num_codes": 0}
    counts = torch.bincount(flat, minlength=codebook_size).double()
    p = counts[counts > 0] / flat.numel()
    ppl = float(torch.exp(-(p * p.log()).sum()))
    return {
        "usage": float((counts > 0).sum()) / codebook_size,
        "perplexity": ppl,
        "perplexity_ratio": ppl / codebook_size,
        "num_codes": int(flat.numel()),
    }


class ReconstructionMeter:
    """Accumulates PSNR/SSIM over frames and code counts over a held-out set."""

    def __init__(self, codebook_size: int):
        self.codebook_size = codebook_size
        self.psnr: list[torch.Tensor] = []
        self.ssim: list[torch.Tensor] = []
        self.codes: list[torch.Tensor] = []

    def update(self, x: torch.Tensor, x_hat: torch.Tensor, codes: torch.Tensor | None = None) -> None:
        self.psnr.append(psnr_per_frame(x, x_hat))
        self.ssim.append(ssim_per_frame(x, x_hat))
        if codes is not None:
            self.codes.append(codes.reshape(-1).cpu())

    def compute(self) -> dict[str, float]:
        out = {
            "psnr": float(torch.cat(self.psnr).mean()) if self.psnr else float("nan"),
            "ssim": float(torch.cat(self.ssim).mean()) if self.ssim else float("nan"),
            "frames": int(sum(len(p) for p in self.psnr)),
        }
        if self.codes:
            out.update(codebook_usage(torch.cat(self.codes), self.codebook_size))
        return out
