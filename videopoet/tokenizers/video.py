"""MAGVIT-v2 video tokenizer: causal 3D CNN encoder/decoder + lookup-free quantization.

Design choices (Yu et al., "Language Model Beats Diffusion", ICLR 2024; as used by VideoPoet):
- Every 3D convolution is causal in time: k_t - 1 frames of padding before (the first frame,
  replicated), none after. So frame 0 is encoded alone, an image is a 1-frame video, and a clip of
  1 + c*k frames maps to 1 + k latent frames (c = temporal compression): 17 -> 5 at c = 4.
- Downsampling by strided causal convolutions (spatial stride 2 in the first log2(s) levels,
  temporal stride 2 in the last log2(c) levels that downsample); upsampling by depth-to-space
  (a convolution to C * p_t * p_s^2 channels, then a reshape), dropping the first p_t - 1 output
  frames so that latent frame 0 still decodes to exactly one frame.
- GroupNorm statistics are taken per frame (FrameGroupNorm): a GroupNorm over (T, H, W) would let
  later frames change frame 0's features and break causality.
- The decoder's GroupNorms are adaptive: scale and shift are predicted from the quantized latent,
  resized causally to the feature map (latent frame 0 -> frame 0, latent frame j -> its c frames).
- LFQ with K bits (videopoet.tokenizers.lfq): 2^K codes, code = sum_k 2^k [z_k > 0].

Input conventions: video (B, 3, T, H, W) or image (B, 3, H, W), float in [-1, 1]; H and W must be
multiples of the spatial compression. A frame count that is not 1 + c*k is padded at the end by
repeating the last frame up to the next 1 + c*k (the extra frames only touch the last latent
frame); `decode` returns 1 + c*(t - 1) frames and `reconstruct` trims back to the input length.

The model is pure: losses (GAN, LeCAM, perceptual, weights of the LFQ terms) are in video_losses.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from videopoet.errors import InputError
from videopoet.tokenizers.base import Tokenizer
from videopoet.tokenizers.lfq import LFQ


@dataclass
class VideoTokenizerConfig:
    """MAGVIT-v2 sizes. Presets: configs/tokenizer/{debug,cpu,magvit2-128}.yaml (model section)."""

    in_channels: int = 3
    channels: int = 128  # base width; level i has channels * channel_mults[i]
    channel_mults: tuple[int, ...] = (1, 2, 2, 4)
    num_res_blocks: int = 4  # per level (encoder and decoder) and in the middle
    temporal_compression: int = 4  # power of 2
    spatial_compression: int = 8  # power of 2
    bits: int = 18  # K: LFQ codebook size 2^K
    entropy_group_bits: int = 9  # sub-codebook size 2^g for the entropy terms
    inv_temperature: float = 100.0  # LFQ soft assignment for the entropy terms
    norm_groups: int = 32
    frames: int = 17  # nominal clip length used in training (1 + c*k)
    resolution: int = 128  # nominal frame size used in training

    def __post_init__(self):
        self.channel_mults = tuple(self.channel_mults)
        for name in ("in_channels", "channels", "num_res_blocks", "norm_groups", "frames", "resolution"):
            if getattr(self, name) < (0 if name == "num_res_blocks" else 1):
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not self.channel_mults or min(self.channel_mults) < 1:
            raise ValueError(f"channel_mults must be a non-empty list of positive ints, got {self.channel_mults}")
        for name in ("temporal_compression", "spatial_compression"):
            v = getattr(self, name)
            if v < 1 or v & (v - 1):
                raise ValueError(f"{name} must be a power of 2, got {v}")
        downs = max(self.num_temporal_down, self.num_spatial_down)
        if downs > len(self.channel_mults) - 1:
            raise ValueError(
                f"{downs} downsampling steps need at least {downs + 1} levels in channel_mults, "
                f"got {len(self.channel_mults)}"
            )
        for m in self.channel_mults:
            if (self.channels * m) % self.norm_groups:
                raise ValueError(f"channels*mult = {self.channels * m} is not divisible by norm_groups={self.norm_groups}")
        if not 1 <= self.bits <= 30:
            raise ValueError(f"bits must be in [1, 30], got {self.bits}")
        if not 1 <= self.entropy_group_bits <= 16:
            raise ValueError(f"entropy_group_bits must be in [1, 16], got {self.entropy_group_bits}")
        if (self.frames - 1) % self.temporal_compression:
            raise ValueError(f"frames must be 1 + {self.temporal_compression}*k, got {self.frames}")
        if self.resolution % self.spatial_compression:
            raise ValueError(f"resolution must be a multiple of {self.spatial_compression}, got {self.resolution}")

    @property
    def num_temporal_down(self) -> int:
        return int(math.log2(self.temporal_compression))

    @property
    def num_spatial_down(self) -> int:
        return int(math.log2(self.spatial_compression))

    def down_strides(self) -> list[tuple[int, int]]:
        """(temporal, spatial) stride after each level but the last: spatial first, temporal last."""
        n = len(self.channel_mults) - 1
        return [
            (2 if i >= n - self.num_temporal_down else 1, 2 if i < self.num_spatial_down else 1) for i in range(n)
        ]


class VideoTokenizerOutput(NamedTuple):
    reconstruction: torch.Tensor  # (B, 3, T', H, W), not clamped
    codes: torch.Tensor  # (B, t, h, w)
    per_sample_entropy: torch.Tensor
    batch_entropy: torch.Tensor
    commitment: torch.Tensor
    latent: torch.Tensor | None = None  # (B, K, t, h, w), the encoder's output before quantization


# ------------------------------------------------------------------------------------------ layers
class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm with statistics per frame (over channels-in-group x H x W, not over time), so
    normalization cannot leak later frames into earlier ones."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T, H, W)
        b, t = x.shape[0], x.shape[2]
        y = super().forward(rearrange(x, "b c t h w -> (b t) c h w"))
        return rearrange(y, "(b t) c h w -> b c t h w", b=b, t=t)


class CausalConv3d(nn.Module):
    """3D conv, causal in time (first frame replicated k_t - 1 times before), 'same' spatial padding."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: tuple[int, int] = (1, 1)):
        super().__init__()
        self.kernel = kernel
        self.conv = nn.Conv3d(cin, cout, kernel, stride=(stride[0], stride[1], stride[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T, H, W)
        k = self.kernel
        if k > 1:
            x = torch.cat([x[:, :, :1].expand(-1, -1, k - 1, -1, -1), x], dim=2)
            x = F.pad(x, (k // 2, (k - 1) // 2, k // 2, (k - 1) // 2), mode="constant")
        return self.conv(x)


def causal_resize(z: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
    """Resize a latent (B, K, t, h, w) to (T, H, W) = (1 + r*(t-1), h*s, w*s) by repetition:
    latent frame 0 -> frame 0, latent frame j >= 1 -> frames r*(j-1)+1 .. r*j."""
    t, T = z.shape[2], size[0]
    if T != t:
        r = (T - 1) // max(t - 1, 1)
        z = torch.cat([z[:, :, :1], z[:, :, 1:].repeat_interleave(r, dim=2)], dim=2)
    if z.shape[3:] != size[1:]:
        z = F.interpolate(z, size=size, mode="nearest")
    return z


class AdaptiveGroupNorm(nn.Module):
    """GroupNorm whose scale and shift are predicted from the quantized latent (MAGVIT-v2 decoder)."""

    def __init__(self, channels: int, groups: int, cond_channels: int):
        super().__init__()
        self.norm = FrameGroupNorm(groups, channels, affine=False)
        self.to_scale_shift = nn.Conv3d(cond_channels, 2 * channels, 1)
        nn.init.zeros_(self.to_scale_shift.weight)
        nn.init.zeros_(self.to_scale_shift.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.to_scale_shift(causal_resize(cond, tuple(x.shape[2:]))).chunk(2, dim=1)
        return self.norm(x) * (1 + scale) + shift


class ResBlock(nn.Module):
    """norm -> SiLU -> causal conv, twice, plus a (1x1x1 projected) skip. Adaptive norms if cond_channels."""

    def __init__(self, cin: int, cout: int, groups: int, cond_channels: int = 0):
        super().__init__()
        self.adaptive = cond_channels > 0
        norm = (lambda c: AdaptiveGroupNorm(c, groups, cond_channels)) if self.adaptive else (lambda c: FrameGroupNorm(groups, c))
        self.norm1, self.conv1 = norm(cin), CausalConv3d(cin, cout)
        self.norm2, self.conv2 = norm(cout), CausalConv3d(cout, cout)
        self.skip = nn.Conv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def _norm(self, norm: nn.Module, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        return norm(x, cond) if self.adaptive else norm(x)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self._norm(self.norm1, x, cond)))
        h = self.conv2(F.silu(self._norm(self.norm2, h, cond)))
        return self.skip(x) + h


class DepthToSpaceUpsample(nn.Module):
    """Causal conv to C * pt * ps^2 channels, depth-to-space, drop the first pt - 1 frames."""

    def __init__(self, channels: int, stride: tuple[int, int]):
        super().__init__()
        self.pt, self.ps = stride
        self.conv = CausalConv3d(channels, channels * self.pt * self.ps * self.ps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = rearrange(self.conv(x), "b (c pt ph pw) t h w -> b c (t pt) (h ph) (w pw)", pt=self.pt, ph=self.ps, pw=self.ps)
        return x[:, :, self.pt - 1 :]


# ------------------------------------------------------------------------------ encoder / decoder
class Encoder(nn.Module):
    def __init__(self, cfg: VideoTokenizerConfig):
        super().__init__()
        widths = [cfg.channels * m for m in cfg.channel_mults]
        strides = cfg.down_strides()
        self.conv_in = CausalConv3d(cfg.in_channels, widths[0])
        self.blocks = nn.ModuleList()
        cin = widths[0]
        for i, w in enumerate(widths):
            for _ in range(cfg.num_res_blocks):
                self.blocks.append(ResBlock(cin, w, cfg.norm_groups))
                cin = w
            if i < len(strides) and strides[i] != (1, 1):
                self.blocks.append(CausalConv3d(w, w, stride=strides[i]))
        for _ in range(cfg.num_res_blocks):
            self.blocks.append(ResBlock(cin, cin, cfg.norm_groups))
        self.norm_out = FrameGroupNorm(cfg.norm_groups, cin)
        self.conv_out = CausalConv3d(cin, cfg.bits, kernel=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B,3,T,H,W) -> (B,K,t,h,w)
        h = self.conv_in(x)
        for block in self.blocks:
            h = block(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: VideoTokenizerConfig):
        super().__init__()
        widths = [cfg.channels * m for m in cfg.channel_mults]
        strides = cfg.down_strides()
        k, g = cfg.bits, cfg.norm_groups
        cin = widths[-1]
        self.conv_in = CausalConv3d(k, cin)
        self.blocks = nn.ModuleList(ResBlock(cin, cin, g, k) for _ in range(cfg.num_res_blocks))
        for i in reversed(range(len(widths))):
            for _ in range(cfg.num_res_blocks):
                self.blocks.append(ResBlock(cin, widths[i], g, k))
                cin = widths[i]
            if i > 0 and strides[i - 1] != (1, 1):
                self.blocks.append(DepthToSpaceUpsample(cin, strides[i - 1]))
        self.norm_out = AdaptiveGroupNorm(cin, g, k)
        self.conv_out = CausalConv3d(cin, cfg.in_channels)

    def forward(self, zq: torch.Tensor) -> torch.Tensor:  # (B,K,t,h,w) -> (B,3,T,H,W)
        h = self.conv_in(zq)
        for block in self.blocks:
            h = block(h, zq) if isinstance(block, ResBlock) else block(h)
        return self.conv_out(F.silu(self.norm_out(h, zq)))


# ------------------------------------------------------------------------------------ the model
class VideoTokenizer(Tokenizer):
    """MAGVIT-v2: encode(video) -> codes (B, t, h, w) in [0, 2^K); decode(codes) -> video in [-1, 1]."""

    config_class = VideoTokenizerConfig
    kind = "video"

    def __init__(self, config: VideoTokenizerConfig):
        super().__init__(config)
        self.encoder = Encoder(config)
        self.quantizer = LFQ(config.bits, config.entropy_group_bits, config.inv_temperature)
        self.decoder = Decoder(config)

    # ---- shapes and input checks ---------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return 2**self.config.bits

    @property
    def codebook_size(self) -> int:
        return 2**self.config.bits

    def padded_frames(self, frames: int) -> int:
        """The frame count actually encoded: the next 1 + c*k >= frames."""
        c = self.config.temporal_compression
        return 1 + c * math.ceil((frames - 1) / c)

    def token_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """(3, T, H, W) video or (3, H, W) image -> (t, h, w) with t = 1 + ceil((T - 1) / c)."""
        if len(input_shape) == 3:
            input_shape = (input_shape[0], 1, *input_shape[1:])
        if len(input_shape) != 4:
            raise InputError(f"input_shape: expected (C, T, H, W) or (C, H, W), got {tuple(input_shape)}")
        _, T, H, W = input_shape
        self._check_spatial(H, W)
        s, c = self.config.spatial_compression, self.config.temporal_compression
        return (1 + math.ceil((T - 1) / c), H // s, W // s)

    def _check_spatial(self, H: int, W: int) -> None:
        s = self.config.spatial_compression
        if H % s or W % s or H < s or W < s:
            raise InputError(f"video: height and width must be positive multiples of {s}, got {H}x{W} (resize or crop)")

    def prepare(self, video: torch.Tensor) -> torch.Tensor:
        """Check a video/image batch and bring it to (B, 3, 1 + c*k, H, W): images get T = 1, other
        frame counts are padded at the end by repeating the last frame."""
        if not isinstance(video, torch.Tensor) or not video.is_floating_point():
            raise InputError(f"video: expected a float tensor in [-1, 1], got {getattr(video, 'dtype', type(video))}")
        if video.dim() == 4:
            video = video.unsqueeze(2)
        if video.dim() != 5:
            raise InputError(f"video: expected (B, 3, T, H, W) or an image batch (B, 3, H, W), got {tuple(video.shape)}")
        B, C, T, H, W = video.shape
        if C != self.config.in_channels:
            raise InputError(f"video: expected {self.config.in_channels} channels in dim 1, got {C} (shape {tuple(video.shape)})")
        if T < 1:
            raise InputError("video: has no frames")
        self._check_spatial(H, W)
        if not torch.isfinite(video.detach()).all():
            raise InputError("video: contains NaN or infinite values")
        lo, hi = float(video.detach().min()), float(video.detach().max())
        if lo < -1.0 - 1e-3 or hi > 1.0 + 1e-3:
            raise InputError(f"video: values must be in [-1, 1], got [{lo:.3g}, {hi:.3g}] (scale uint8 as x/127.5 - 1)")
        pad = self.padded_frames(T) - T
        if pad:
            video = torch.cat([video, video[:, :, -1:].expand(-1, -1, pad, -1, -1)], dim=2)
        return video.to(self.encoder.conv_in.conv.weight.dtype)

    # ---- the interface -------------------------------------------------------------------------
    def encode_latent(self, video: torch.Tensor) -> torch.Tensor:
        """Continuous (pre-quantization) latent (B, K, t, h, w)."""
        return self.encoder(self.prepare(video))

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) or (B, 3, H, W) in [-1, 1] -> codes (B, t, h, w) int64 in [0, 2^K)."""
        return self.quantizer.codes(self.encode_latent(video))

    def decode_latent(self, zq: torch.Tensor) -> torch.Tensor:
        return self.decoder(zq)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, t, h, w) -> video (B, 3, 1 + c*(t-1), H, W) in [-1, 1]."""
        if not isinstance(codes, torch.Tensor) or codes.dim() != 4:
            raise InputError(f"codes: expected a (B, t, h, w) integer tensor, got {getattr(codes, 'shape', type(codes))}")
        self.check_codes(codes, self.codebook_size)
        zq = self.quantizer.codes_to_latent(codes.long()).to(self.decoder.conv_in.conv.weight.dtype)
        return self.decoder(zq).clamp(-1, 1)

    @torch.no_grad()
    def reconstruct(self, video: torch.Tensor) -> torch.Tensor:
        """encode + decode, trimmed to the input's frame count; images come back as (B, 3, H, W)."""
        out = self.decode(self.encode(video))
        if video.dim() == 4:
            return out[:, :, 0]
        return out[:, :, : video.shape[2]]

    def forward(self, video: torch.Tensor) -> VideoTokenizerOutput:
        """Training pass: reconstruction (not clamped), codes and the LFQ loss terms."""
        z = self.encode_latent(video)
        q = self.quantizer(z)
        return VideoTokenizerOutput(self.decoder(q.quantized), q.codes, q.per_sample_entropy, q.batch_entropy,
                                    q.commitment, z)
