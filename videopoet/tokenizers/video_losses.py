"""Losses for training the video tokenizer (kept apart from the model, which stays pure).

- `TokenizerLossConfig`: weights of reconstruction, LFQ entropy/commitment, GAN, LeCAM, perceptual.
- `Discriminator3D`: a StyleGAN-like 3D conv discriminator (residual blocks, stride-2 downsampling,
  time downsampled only while there is time left), works for videos and 1-frame images.
- hinge / non-saturating GAN losses, LeCAM regularization (Tseng et al. 2021) with EMA anchors.
- GAN weight: `scheduled` (0 before `disc_start`, then a linear ramp to `gan_weight`) or `adaptive`
  (VQGAN: ||dL_rec/dW|| / ||dL_gan/dW|| on the decoder's last layer, times `gan_weight`).
- `PerceptualLoss`: LPIPS-style distance on VGG16 features, built only when the user supplies the
  weights (a safetensors file with torchvision's `features.N.weight/bias` names; optional `lin{i}`
  per-layer channel weights). Nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from videopoet.errors import ConfigError, NotAvailableError


@dataclass
class TokenizerLossConfig:
    recon: Literal["l1", "l2"] = "l1"
    recon_weight: float = 1.0
    entropy_weight: float = 0.1  # on E[H(q(z))] - gamma * H(E[q(z)])
    diversity_gamma: float = 1.0
    commitment_weight: float = 0.25
    gan: Literal["hinge", "non_saturating"] = "hinge"
    gan_weight: float = 0.1
    gan_weighting: Literal["scheduled", "adaptive"] = "scheduled"
    disc_start: int = 2000  # generator step at which the discriminator is switched on
    disc_ramp: int = 500  # steps of linear ramp of the GAN weight (scheduled weighting)
    disc_channels: int = 64
    disc_levels: int = 4
    # "global": one logit per clip (features averaged first); "patch": one logit per location of
    # the last feature map (PatchGAN), so the decoder gets local feedback on small objects' edges.
    disc_head: Literal["global", "patch"] = "global"
    lecam_weight: float = 0.001
    lecam_decay: float = 0.999
    perceptual_weight: float = 0.0
    perceptual_weights: str | None = None  # path to VGG16 weights (safetensors); required if weight > 0
    # Re-encoding consistency: the encoder, run again on the reconstruction, should give the same
    # bits (a logistic loss on each re-encoded latent against its code bit's sign). Chained long
    # video re-encodes decoded frames chunk after chunk; a round trip that changes codes compounds
    # (benchmarks/RESULTS.md, session 16). Meant for decoder fine-tuning (train.trainable=decoder).
    cycle_weight: float = 0.0
    cycle_scale: float = 2.0  # the logistic's slope on the latent
    # Temporal locality: where no pixel of a latent cell (or of its 8 neighbours) changed between
    # two latent frames, every bit should keep its sign from the frame before (a logistic loss on
    # the later latent against the earlier one's sign). Without it a small moving object flips
    # low-margin bits all over the frame (benchmarks/code_locality.py: 46% of changed codes two or
    # more cells from any changed pixel), and each flip is a guess the LM cannot learn.
    locality_weight: float = 0.0
    locality_scale: float = 2.0
    locality_threshold: float = 8 / 127.5  # a pixel "changed" above this (8 of 255, in [-1, 1] units)

    def __post_init__(self):
        for name in ("recon_weight", "entropy_weight", "commitment_weight", "gan_weight", "lecam_weight", "perceptual_weight",
                     "cycle_weight", "cycle_scale", "locality_weight", "locality_scale", "locality_threshold"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.disc_start < 0 or self.disc_ramp < 0:
            raise ValueError("disc_start and disc_ramp must be >= 0")
        if not 0 <= self.lecam_decay < 1:
            raise ValueError(f"lecam_decay must be in [0, 1), got {self.lecam_decay}")
        if self.disc_head not in ("global", "patch"):
            raise ValueError(f"disc_head must be 'global' or 'patch', got {self.disc_head!r}")
        if self.disc_levels < 1 or self.disc_channels < 1:
            raise ValueError("disc_levels and disc_channels must be >= 1")
        if self.perceptual_weight > 0 and not self.perceptual_weights:
            raise ValueError("perceptual_weight > 0 needs perceptual_weights (a VGG16 safetensors file you supply)")

    @property
    def use_gan(self) -> bool:
        return self.gan_weight > 0


# ----------------------------------------------------------------------------------- discriminator
class _DiscBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv3d(cin, cin, 3, padding=1)
        self.conv2 = nn.Conv3d(cin, cout, 3, padding=1)
        self.skip = nn.Conv3d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.conv1(x), 0.2)
        h = F.leaky_relu(self.conv2(h), 0.2)
        t = 2 if x.shape[2] > 1 else 1  # downsample time only while there is time to downsample
        down = lambda v: F.avg_pool3d(v, (t, 2, 2), ceil_mode=True)  # noqa: E731
        return (down(h) + down(self.skip(x))) / 2**0.5


class Discriminator3D(nn.Module):
    """(B, 3, T, H, W) in [-1, 1] -> logits: (B,) with the global head, (B, T' * H' * W') with the
    patch head (one per location of the last feature map). T = 1 (images) works too."""

    def __init__(self, channels: int = 64, levels: int = 4, in_channels: int = 3, head: str = "global"):
        super().__init__()
        widths = [channels * min(2**i, 4) for i in range(levels + 1)]
        self.patch = head == "patch"
        self.conv_in = nn.Conv3d(in_channels, widths[0], 3, padding=1)
        self.blocks = nn.Sequential(*(_DiscBlock(widths[i], widths[i + 1]) for i in range(levels)))
        if self.patch:
            self.head = nn.Sequential(nn.LeakyReLU(0.2), nn.Conv3d(widths[-1], widths[-1], 1), nn.LeakyReLU(0.2),
                                      nn.Conv3d(widths[-1], 1, 1))
        else:
            self.head = nn.Sequential(nn.LeakyReLU(0.2), nn.Linear(widths[-1], widths[-1]), nn.LeakyReLU(0.2),
                                      nn.Linear(widths[-1], 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(F.leaky_relu(self.conv_in(x), 0.2))
        if self.patch:
            return self.head(h).flatten(1)
        return self.head(h.mean(dim=(2, 3, 4))).squeeze(-1)


def static_cells(x: torch.Tensor, latent_frames: int, temporal: int, spatial: int, threshold: float) -> torch.Tensor:
    """(B, t - 1, h, w) bool: latent cells of frames 1 .. t-1 whose pixels, and their 8 neighbours',
    did not change since latent frame j - 1 began. Latent frame j >= 1 covers video frames
    c(j-1)+1 .. cj and frame 0 covers frame 0 (causal), so the changes into frames
    max(1, c(j-2)+1) .. cj count (the encoder also sees the earlier frame's content)."""
    b, _, T, H, W = x.shape
    if T < 2 or latent_frames < 2:
        return torch.zeros(b, 0, H // spatial, W // spatial, dtype=torch.bool, device=x.device)
    moved = ((x[:, :, 1:] - x[:, :, :-1]).abs().amax(1) > threshold).float()  # (B, T-1, H, W): change into frame f = i+1
    cells = F.max_pool2d(moved, spatial)  # (B, T-1, h, w)
    # the window of latent frame j starts at or before frame T - 1, so it is never empty
    out = [cells[:, max(0, temporal * (j - 2)) : min(temporal * j, T - 1)].amax(1) for j in range(1, latent_frames)]
    near = F.max_pool2d(torch.stack(out, 1), 3, stride=1, padding=1)
    return near == 0


def locality_loss(z: torch.Tensor, static: torch.Tensor, scale: float) -> tuple[torch.Tensor, float]:
    """mean over the static cells' bits of softplus(-scale * z_j * sign(z_{j-1})), the earlier sign
    held fixed; and the share of those bits that flip (0 where there is no static cell)."""
    if not static.any():  # also when there is no pair of latent frames
        return z.sum() * 0.0, 0.0
    zf = z.float()
    prev, cur = zf[:, :, :-1].detach().sign(), zf[:, :, 1:]
    w = static.unsqueeze(1).to(zf.dtype)  # (B, 1, t-1, h, w)
    n = w.sum() * z.shape[1]
    loss = (F.softplus(-scale * prev * cur) * w).sum() / n
    flips = float((((cur > 0) != (prev > 0)).to(zf.dtype) * w).sum() / n)
    return loss, flips


def d_loss(kind: str, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    if kind == "hinge":
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    return F.softplus(-real).mean() + F.softplus(fake).mean()


def g_loss(kind: str, fake: torch.Tensor) -> torch.Tensor:
    if kind == "hinge":
        return -fake.mean()
    return F.softplus(-fake).mean()


class LeCAM(nn.Module):
    """LeCAM regularization: keeps D(real) near the EMA of D(fake) and vice versa.
    The EMAs are buffers (saved in checkpoints); `update` is called once per discriminator step."""

    def __init__(self, decay: float = 0.999):
        super().__init__()
        self.decay = decay
        self.register_buffer("ema_real", torch.zeros(()))
        self.register_buffer("ema_fake", torch.zeros(()))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def update(self, real: torch.Tensor, fake: torch.Tensor) -> None:
        r, f = real.mean().float(), fake.mean().float()
        if not bool(self.initialized):
            self.ema_real.copy_(r)
            self.ema_fake.copy_(f)
            self.initialized.fill_(True)
        else:
            self.ema_real.lerp_(r, 1 - self.decay)
            self.ema_fake.lerp_(f, 1 - self.decay)

    def forward(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        return F.relu(real - self.ema_fake).pow(2).mean() + F.relu(self.ema_real - fake).pow(2).mean()


def gan_weight(cfg: TokenizerLossConfig, step: int) -> float:
    """Scheduled GAN weight at generator step `step` (0 before disc_start, then a linear ramp)."""
    if not cfg.use_gan or step < cfg.disc_start:
        return 0.0
    if cfg.disc_ramp == 0:
        return cfg.gan_weight
    return cfg.gan_weight * min(1.0, (step - cfg.disc_start + 1) / cfg.disc_ramp)


def adaptive_weight(rec_loss: torch.Tensor, gan_loss: torch.Tensor, last_layer: torch.Tensor, max_weight: float = 1e4) -> torch.Tensor:
    """VQGAN's balance: ||grad rec|| / ||grad gan|| w.r.t. the decoder's last weight (detached)."""
    g_rec = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_gan = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
    return (g_rec.norm() / (g_gan.norm() + 1e-4)).clamp(0, max_weight).detach()


# -------------------------------------------------------------------------------------- perceptual
_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
_TAPS = {3, 8, 15, 22, 29}  # indices (torchvision numbering) of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3


class PerceptualLoss(nn.Module):
    """LPIPS-style distance on frozen VGG16 features; frames are compared as images."""

    def __init__(self, weights_path: str):
        super().__init__()
        from safetensors.torch import load_file

        layers, cin = [], 3
        for v in _VGG16:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU()]
                cin = v
        self.features = nn.Sequential(*layers)
        try:
            state = load_file(weights_path)
        except FileNotFoundError:
            raise NotAvailableError(f"{weights_path}: perceptual loss weights not found (VGG16 safetensors)") from None
        except Exception as e:
            raise ConfigError(f"{weights_path}: cannot read perceptual weights ({e})") from None
        feats = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
        try:
            self.features.load_state_dict(feats, strict=True)
        except RuntimeError as e:
            raise ConfigError(f"{weights_path}: not VGG16 weights with torchvision names ({str(e)[:200]})") from None
        self.lins = [state.get(f"lin{i}") for i in range(len(_TAPS))]
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        self.requires_grad_(False)

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        h, out = ((x + 1) / 2 - self.mean) / self.std, []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in _TAPS:
                out.append(h / (h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x, y: (B, 3, T, H, W) in [-1, 1] -> mean distance."""
        flat = lambda v: v.transpose(1, 2).flatten(0, 1)  # noqa: E731
        total = x.new_zeros(())
        for i, (a, b) in enumerate(zip(self._taps(flat(x)), self._taps(flat(y)), strict=True)):
            d = (a - b).pow(2)
            w = self.lins[i]
            d = (d * w.to(d).view(1, -1, 1, 1)).sum(1) if w is not None else d.sum(1)
            total = total + d.mean()
        return total
