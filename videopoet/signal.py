"""Signal features shared by the tokenizer losses and the evaluation metrics (below both, so that
neither imports the other): HTK mel filterbanks, a Hann-window STFT, magnitudes, mel spectrograms.
No audio library is needed.
"""

from __future__ import annotations

import torch
from torch import nn


def hz_to_mel(f: torch.Tensor) -> torch.Tensor:
    return 2595.0 * torch.log10(1.0 + f / 700.0)


def mel_to_hz(m: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None) -> torch.Tensor:
    """(n_mels, n_fft // 2 + 1) triangular filters on the HTK mel scale, each normalised to unit area
    in mel (Slaney-style), so levels are comparable across window sizes."""
    fmax = sample_rate / 2 if fmax is None else fmax
    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    mels = torch.linspace(hz_to_mel(torch.tensor(fmin)).item(), hz_to_mel(torch.tensor(fmax)).item(), n_mels + 2,
                          dtype=torch.float64)
    edges = mel_to_hz(mels)
    lower, center, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs[None] - lower) / (center - lower)
    down = (upper - freqs[None]) / (upper - center)
    fb = torch.clamp(torch.minimum(up, down), min=0.0)
    fb = fb * (2.0 / (upper - lower))  # Slaney normalisation: constant energy per filter
    return fb.float()


def stft(x: torch.Tensor, n_fft: int, hop: int, win: int | None = None) -> torch.Tensor:
    """(B, 1, S) or (B, S) -> complex (B, n_fft // 2 + 1, frames), Hann window, centred."""
    x = x.reshape(-1, x.shape[-1])
    win = n_fft if win is None else win
    window = torch.hann_window(win, device=x.device, dtype=x.dtype)
    return torch.stft(x, n_fft, hop_length=hop, win_length=win, window=window, center=True,
                      pad_mode="reflect" if x.shape[-1] > n_fft // 2 else "constant", return_complex=True)


def magnitude(spec: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    return (spec.real.pow(2) + spec.imag.pow(2) + eps).sqrt()


class MelSpectrogram(nn.Module):
    """(B, 1, S) -> (B, n_mels, frames) mel magnitudes."""

    def __init__(self, sample_rate: int, n_fft: int, hop: int, n_mels: int):
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        self.register_buffer("fb", mel_filterbank(sample_rate, n_fft, n_mels), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fb @ magnitude(stft(x, self.n_fft, self.hop))
