"""Losses and the discriminator for training the audio codec (pure modules, no state changes).

EnCodec's recipe (Défossez et al. 2022), which upstream never released as training code:
- reconstruction: time-domain L1, multi-scale mel loss (windows 2^5..2^11 at 24 kHz; scaled here to
  the codec's sample rate), plus a multi-resolution STFT loss (spectral convergence + log magnitude);
- adversarial: a multi-scale STFT discriminator (MS-STFTD) on complex spectrograms (real and
  imaginary parts as two channels), hinge losses, and an L1 feature-matching loss normalised by the
  mean magnitude of the real features;
- the commitment loss comes from the quantizer (`AudioTokenizer.quantize`).

Mel filterbanks and STFTs come from videopoet/signal.py (HTK mel scale, triangular filters; no audio library).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# the spectrogram features live below both the losses and the metrics (re-exported for callers)
from videopoet.signal import MelSpectrogram, hz_to_mel, magnitude, mel_filterbank, mel_to_hz, stft  # noqa: F401

_weight_norm = getattr(nn.utils.parametrizations, "weight_norm", nn.utils.weight_norm)


# ----------------------------------------------------------------------------------------- losses
class MultiScaleMelLoss(nn.Module):
    """Sum over window sizes 2^i (i in [min_exp, max_exp]) of L1(mel) + L1(log mel), hop = window/4.

    EnCodec uses i = 5..11 at 24 kHz; the number of mel bins is capped by the window size.
    """

    def __init__(self, sample_rate: int, min_exp: int = 5, max_exp: int = 11, n_mels: int = 64, log_floor: float = 1e-5):
        super().__init__()
        self.log_floor = log_floor
        self.mels = nn.ModuleList(
            MelSpectrogram(sample_rate, 2**i, max(2**i // 4, 1), min(n_mels, 2 ** (i - 1)))
            for i in range(min_exp, max_exp + 1)
        )

    def forward(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        loss = x.new_zeros(())
        for mel in self.mels:
            a, b = mel(x_hat), mel(x)
            f = self.log_floor
            loss = loss + F.l1_loss(a, b) + F.l1_loss(torch.log(a.clamp_min(f)), torch.log(b.clamp_min(f)))
        return loss / len(self.mels)


class MultiResolutionSTFTLoss(nn.Module):
    """Mean over resolutions of spectral convergence + L1 of log magnitudes (Parallel WaveGAN).

    `log_floor` is added to the magnitudes inside the log. With the default (none beyond 1e-7), the
    empty bins of a pure tone dominate: silence scores better than the tone with -40 dB of noise
    (measured on a shapes tone), so a codec learns to mute tones. A floor of 0.1 (STFT magnitudes of
    [-1, 1] audio) keeps a noisy correct tone cheaper than silence or a tone 9% off pitch."""

    def __init__(self, fft_sizes: tuple[int, ...] = (256, 512, 1024), log_floor: float = 0.0):
        super().__init__()
        self.fft_sizes = tuple(fft_sizes)
        self.log_floor = log_floor

    def forward(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        loss = x.new_zeros(())
        for n in self.fft_sizes:
            a, b = magnitude(stft(x_hat, n, n // 4)), magnitude(stft(x, n, n // 4))
            sc = torch.linalg.norm(b - a) / torch.linalg.norm(b).clamp_min(1e-7)
            loss = loss + sc + F.l1_loss(torch.log(a + self.log_floor), torch.log(b + self.log_floor))
        return loss / len(self.fft_sizes)


class HighBandEnvelopeLoss(nn.Module):
    """L1 between the short-window magnitudes of the band above `cutoff_hz` (linear, not log).

    Aimed at transients: a 3 ms click at 3.2 kHz is a small part of a long-window spectrogram and of
    the log terms (whose floors make a quiet click cost little), so a codec trained on the
    reconstruction losses above brings clicks back at a fraction of their level once several tones
    share the bitrate (measured: 0.04-0.20 of the high-passed amplitude on 2-4 object clips). Here an
    8 ms window with a 2 ms hop sees each click as its own frames, and the linear magnitude charges a
    missing click in proportion to its loudness (a 0.35-amplitude click peaks near 11 here).
    """

    def __init__(self, sample_rate: int, cutoff_hz: float = 2600.0, n_fft: int = 128, hop: int = 32):
        super().__init__()
        if not 0 < cutoff_hz < sample_rate / 2:
            raise ValueError(f"cutoff_hz: must lie inside (0, {sample_rate / 2}), got {cutoff_hz}")
        self.n_fft, self.hop = n_fft, hop
        self.first_bin = int(math.ceil(cutoff_hz * n_fft / sample_rate))

    def forward(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        a = magnitude(stft(x_hat, self.n_fft, self.hop))[:, self.first_bin :]
        b = magnitude(stft(x, self.n_fft, self.hop))[:, self.first_bin :]
        return F.l1_loss(a, b)


class HighBandEnergyLoss(nn.Module):
    """L1 between the log energies of the band above `cutoff_hz`, per 20 ms frame: the band's gain.

    The failure it targets (benchmarks/audio_click_energy.py): at codec checkpoints that lose the
    shapes clips' clicks, the whole band above 2.6 kHz goes quiet (about 10% of the original energy
    around each click), and elsewhere a codec fills it with noise (2.5x). A log ratio charges both
    alike and does not shrink with the band's level, unlike the linear HighBandEnvelopeLoss, which
    is a small share of a loss dominated by the adversarial terms. Frames far quieter than the
    clip's band (below `rel_floor` of its mean frame energy) are floored, so silence does not
    turn noise-floor differences into large log ratios.
    """

    def __init__(self, sample_rate: int, cutoff_hz: float = 2600.0, frame_seconds: float = 0.02,
                 rel_floor: float = 0.01):
        super().__init__()
        if not 0 < cutoff_hz < sample_rate / 2:
            raise ValueError(f"cutoff_hz: must lie inside (0, {sample_rate / 2}), got {cutoff_hz}")
        if not rel_floor > 0:
            raise ValueError(f"rel_floor: must be > 0, got {rel_floor}")
        self.n_fft = max(16, int(round(frame_seconds * sample_rate)))
        self.hop = self.n_fft // 2
        self.first_bin = int(math.ceil(cutoff_hz * self.n_fft / sample_rate))
        self.rel_floor = rel_floor

    def band_energy(self, x: torch.Tensor) -> torch.Tensor:
        """(B, frames) energy above the cutoff."""
        return magnitude(stft(x, self.n_fft, self.hop))[:, self.first_bin :].pow(2).sum(1)

    def forward(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        e_hat, e = self.band_energy(x_hat.float()), self.band_energy(x.float())
        floor = self.rel_floor * e.mean(-1, keepdim=True) + 1e-8
        return F.l1_loss(torch.log(e_hat + floor), torch.log(e + floor))


def hinge_discriminator_loss(real_logits: list[torch.Tensor], fake_logits: list[torch.Tensor]) -> torch.Tensor:
    loss = real_logits[0].new_zeros(())
    for r, f in zip(real_logits, fake_logits, strict=False):
        loss = loss + F.relu(1 - r).mean() + F.relu(1 + f).mean()
    return loss / len(real_logits)


def hinge_generator_loss(fake_logits: list[torch.Tensor]) -> torch.Tensor:
    return sum(F.relu(1 - f).mean() for f in fake_logits) / len(fake_logits)


def feature_matching_loss(real_feats: list[list[torch.Tensor]], fake_feats: list[list[torch.Tensor]]) -> torch.Tensor:
    """Mean over discriminators and layers of |f_real - f_fake|_1 / mean |f_real| (EnCodec's L_feat)."""
    terms = []
    for rs, fs in zip(real_feats, fake_feats, strict=False):
        for r, f in zip(rs, fs, strict=False):
            r = r.detach()
            terms.append(F.l1_loss(f, r) / r.abs().mean().clamp_min(1e-5))
    return torch.stack(terms).mean()


# ---------------------------------------------------------------------------------- discriminator
class STFTDiscriminator(nn.Module):
    """One scale of MS-STFTD: complex STFT (2 channels) -> 2D convs, dilated in time, strided in frequency."""

    def __init__(self, n_fft: int, channels: int = 32, dilations: tuple[int, ...] = (1, 2, 4)):
        super().__init__()
        self.n_fft, self.hop = n_fft, n_fft // 4
        convs = [_weight_norm(nn.Conv2d(2, channels, (3, 9), padding=(1, 4)))]
        for d in dilations:  # input layout (B, C, T, F): dilate time, stride frequency by 2
            convs.append(_weight_norm(nn.Conv2d(channels, channels, (3, 9), stride=(1, 2), dilation=(d, 1),
                                                padding=(d, 4))))
        convs.append(_weight_norm(nn.Conv2d(channels, channels, (3, 3), padding=(1, 1))))
        self.convs = nn.ModuleList(convs)
        self.out = _weight_norm(nn.Conv2d(channels, 1, (3, 3), padding=(1, 1)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        spec = stft(x, self.n_fft, self.hop)  # (B, F, T) complex
        h = torch.stack([spec.real, spec.imag], dim=1).transpose(2, 3)  # (B, 2, T, F)
        feats = []
        for conv in self.convs:
            h = F.leaky_relu(conv(h), 0.2)
            feats.append(h)
        return self.out(h), feats


class MultiScaleSTFTDiscriminator(nn.Module):
    """MS-STFTD: one STFTDiscriminator per FFT size. forward -> (logits per scale, features per scale)."""

    def __init__(self, fft_sizes: tuple[int, ...] = (1024, 512, 256), channels: int = 32):
        super().__init__()
        self.discs = nn.ModuleList(STFTDiscriminator(n, channels) for n in fft_sizes)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
        logits, feats = [], []
        for d in self.discs:
            lg, fs = d(x)
            logits.append(lg)
            feats.append(fs)
        return logits, feats


def scaled_mel_exponents(sample_rate: int) -> tuple[int, int]:
    """EnCodec's window range 2^5..2^11 at 24 kHz, shifted to keep the same durations at `sample_rate`."""
    shift = round(math.log2(sample_rate / 24000))
    return max(5 + shift, 3), max(11 + shift, 5)
