"""Audio tokenizer: an EnCodec/SoundStream residual-VQ codec built on `transformers.EncodecModel`.

Design choices
- The network is Hugging Face's `EncodecModel` (SEANet encoder/decoder + LSTM + residual VQ), so the
  official 24 kHz EnCodec weights load from a local directory (`from_pretrained` detects a
  config.json whose model_type is "encodec"). Our config maps onto `EncodecConfig` one to one.
  `frontend: stft` swaps the SEANet waveform encoder for `SpectralEncoder` (a causal spectrogram
  into a small conv + LSTM stack) and `decoder: istft` the SEANet decoder for `ISTFTDecoder`
  (Vocos-style); the quantizer stays EnCodec's either way.
- Mono only. `encode` takes (B, C, S) in [-1, 1]; C > 1 is mixed down to mono (mean) — documented
  behaviour, not an error. Resampling and clipping happen when loading files (`prepare_waveform`).
- Frames: T = S // hop (hop = product of the strides). A trailing partial frame (< hop samples) is
  dropped, so 2.125 s at 16 kHz with hop 320 gives 106 frames (VideoPoet's 106 x 4 = 424 tokens);
  `decode` returns exactly T * hop samples.
- Codes are (B, L, T): L residual levels, each in [0, codebook_size). For the LM they are flattened
  level-major (all of level 0, then level 1, ...): `flatten_codes` / `unflatten_codes`, and
  `codes_to_tokens` / `tokens_to_codes` add / remove the per-level offset l * codebook_size so that
  token ids fill [0, vocab_size) with vocab_size = L * codebook_size (DESIGN.md's audio range).
- RVQ is a prefix code: `decode` accepts the first L' <= L levels (lower bitrate).
- A model built from a config (to train) gets a variance-preserving init (`_init_fresh_weights`):
  EncodecModel's own init leaves latents ~1e-3 in size and its codes collapse in the first steps.
- The model is pure. Training pieces live elsewhere: `quantize` returns straight-through latents,
  codes, per-level residuals and the commitment loss, and changes no state; EMA codebook updates,
  k-means initialisation and dead-code reset are done by the training loop (audio_train.py) on the
  codebook buffers (`codebooks()`), which are the ones `EncodecModel` stores.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from videopoet.errors import ConfigError, InputError, NotAvailableError, VideoPoetError
from videopoet.tokenizers.base import Tokenizer


# ------------------------------------------------------------------------------------------ config
@dataclass
class AudioTokenizerConfig:
    """Residual-VQ codec. Field names follow EnCodec; `strides` are the encoder's, in order."""

    sample_rate: int = 16000
    strides: tuple[int, ...] = (2, 4, 5, 8)  # hop = 320 -> 50 frames/s at 16 kHz
    num_levels: int = 4  # residual VQ levels (L)
    codebook_size: int = 1024  # codes per level (A), a power of two
    hidden_size: int = 128  # latent channels
    codebook_dim: int | None = None  # defaults to hidden_size (EncodecModel requires equality)
    num_filters: int = 32
    num_residual_layers: int = 1
    num_lstm_layers: int = 2
    kernel_size: int = 7
    last_kernel_size: int = 7
    residual_kernel_size: int = 3
    dilation_growth_rate: int = 2
    compress: int = 2
    causal: bool = True
    pad_mode: str = "reflect"
    norm_type: Literal["weight_norm", "time_group_norm"] = "weight_norm"
    use_conv_shortcut: bool = True
    # The encoder's input: "waveform" (EnCodec's SEANet on samples) or "stft" (a causal complex
    # spectrogram, hop = hop_length / frontend_substeps, window 2 x hop_length, into a small conv +
    # LSTM stack at the frame rate; `SpectralEncoder`).
    frontend: Literal["waveform", "stft"] = "waveform"
    frontend_channels: int = 256
    frontend_substeps: int = 2
    # The decoder: "seanet" (EnCodec's transposed convolutions up to the sample rate) or "istft"
    # (Vocos-style: ConvNeXt blocks at decoder_upsample x the frame rate predict a log-magnitude and a
    # phase per bin, window 4 x hop / decoder_upsample; an inverse STFT makes the samples; `ISTFTDecoder`)
    decoder: Literal["seanet", "istft"] = "seanet"
    decoder_channels: int = 192
    decoder_layers: int = 6
    decoder_upsample: int = 2
    # Residual VQ search: 1 picks each level's nearest code in turn (greedy, EnCodec's); W > 1 keeps
    # the W best partial sums per level and returns the path with the smallest final residual, a
    # closer code for the same codebooks and decoder (`rvq_beam_codes`). Chosen codes differ, so an
    # LM trained on one width's codes must be retrained for another.
    beam_width: int = 1

    def __post_init__(self) -> None:
        self.strides = tuple(int(s) for s in self.strides)
        if int(self.beam_width) != self.beam_width or self.beam_width < 1:
            raise ConfigError(f"beam_width: expected an integer >= 1, got {self.beam_width!r}")
        if self.sample_rate < 1000:
            raise ConfigError(f"sample_rate: expected >= 1000 Hz, got {self.sample_rate}")
        if not self.strides or any(s < 1 for s in self.strides):
            raise ConfigError(f"strides: expected positive integers, got {list(self.strides)}")
        if self.num_levels < 1:
            raise ConfigError(f"num_levels: expected >= 1, got {self.num_levels}")
        if self.codebook_size < 2 or self.codebook_size & (self.codebook_size - 1):
            raise ConfigError(f"codebook_size: expected a power of two >= 2, got {self.codebook_size}")
        if self.codebook_dim is None:
            self.codebook_dim = self.hidden_size
        if self.codebook_dim != self.hidden_size:
            raise ConfigError(f"codebook_dim: must equal hidden_size ({self.hidden_size}) for EncodecModel")
        for name in ("hidden_size", "num_filters", "num_residual_layers", "num_lstm_layers", "compress"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: expected >= 1, got {getattr(self, name)}")
        if self.num_filters % self.compress:
            raise ConfigError(f"num_filters ({self.num_filters}) must be divisible by compress ({self.compress})")
        if self.frontend not in ("waveform", "stft"):
            raise ConfigError(f"frontend: expected waveform or stft, got {self.frontend!r}")
        if self.frontend == "stft" and (self.frontend_channels < 1 or self.frontend_substeps < 1
                                        or self.hop_length % self.frontend_substeps):
            raise ConfigError(f"frontend_channels >= 1 and frontend_substeps >= 1 dividing the hop ({self.hop_length}); "
                              f"got {self.frontend_channels}, {self.frontend_substeps}")
        if self.decoder not in ("seanet", "istft"):
            raise ConfigError(f"decoder: expected seanet or istft, got {self.decoder!r}")
        if self.decoder == "istft" and (self.decoder_channels < 1 or self.decoder_layers < 1 or self.decoder_upsample < 1
                                        or self.hop_length % self.decoder_upsample):
            raise ConfigError(f"decoder_channels, decoder_layers >= 1 and decoder_upsample >= 1 dividing the hop "
                              f"({self.hop_length}); got {self.decoder_channels}, {self.decoder_layers}, {self.decoder_upsample}")
        if self.pad_mode not in ("reflect", "constant", "replicate"):
            raise ConfigError(f"pad_mode: expected reflect/constant/replicate, got {self.pad_mode!r}")

    @property
    def hop_length(self) -> int:
        return int(np.prod(self.strides))

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    @property
    def bits_per_second(self) -> float:
        return self.frame_rate * self.num_levels * math.log2(self.codebook_size)

    def to_hf(self):
        """The equivalent `transformers.EncodecConfig` (its quantizer count equals num_levels)."""
        from transformers import EncodecConfig

        hf_frame_rate = math.ceil(self.sample_rate / self.hop_length)
        nbits = int(math.log2(self.codebook_size))
        # num_quantizers = floor(1000 * bw / (frame_rate * nbits)); +0.5 level keeps it exact
        bandwidth = (self.num_levels + 0.5) * hf_frame_rate * nbits / 1000.0
        hf = EncodecConfig(
            target_bandwidths=[bandwidth],
            sampling_rate=self.sample_rate,
            audio_channels=1,
            normalize=False,
            hidden_size=self.hidden_size,
            num_filters=self.num_filters,
            num_residual_layers=self.num_residual_layers,
            upsampling_ratios=list(reversed(self.strides)),
            norm_type=self.norm_type,
            kernel_size=self.kernel_size,
            last_kernel_size=self.last_kernel_size,
            residual_kernel_size=self.residual_kernel_size,
            dilation_growth_rate=self.dilation_growth_rate,
            use_causal_conv=self.causal,
            pad_mode=self.pad_mode,
            compress=self.compress,
            num_lstm_layers=self.num_lstm_layers,
            codebook_size=self.codebook_size,
            codebook_dim=self.codebook_dim,
            use_conv_shortcut=self.use_conv_shortcut,
        )
        assert hf.num_quantizers == self.num_levels, (hf.num_quantizers, self.num_levels)
        return hf

    @classmethod
    def from_hf(cls, hf, num_levels: int | None = None) -> AudioTokenizerConfig:
        """Our config for an official `EncodecConfig` (mono, unnormalised, unchunked models only)."""
        if hf.audio_channels != 1 or hf.normalize or hf.chunk_length_s is not None:
            raise NotAvailableError(
                "only mono, unnormalised, unchunked EnCodec checkpoints (e.g. the 24 kHz one) are supported; "
                f"this one has audio_channels={hf.audio_channels}, normalize={hf.normalize}, "
                f"chunk_length_s={hf.chunk_length_s}"
            )
        available = hf.num_quantizers
        levels = available if num_levels is None else num_levels
        if not 1 <= levels <= available:
            raise InputError(f"num_levels: the checkpoint has {available} levels, asked for {levels}")
        return cls(
            sample_rate=hf.sampling_rate,
            strides=tuple(reversed(hf.upsampling_ratios)),
            num_levels=levels,
            codebook_size=hf.codebook_size,
            hidden_size=hf.hidden_size,
            codebook_dim=hf.codebook_dim,
            num_filters=hf.num_filters,
            num_residual_layers=hf.num_residual_layers,
            num_lstm_layers=hf.num_lstm_layers,
            kernel_size=hf.kernel_size,
            last_kernel_size=hf.last_kernel_size,
            residual_kernel_size=hf.residual_kernel_size,
            dilation_growth_rate=hf.dilation_growth_rate,
            compress=hf.compress,
            causal=hf.use_causal_conv,
            pad_mode=hf.pad_mode,
            norm_type=hf.norm_type,
            use_conv_shortcut=hf.use_conv_shortcut,
        )


# ------------------------------------------------------------------------------- flattening (LM)
def flatten_codes(codes: torch.Tensor) -> torch.Tensor:
    """(B, L, T) -> (B, L*T), level-major: all of level 0, then level 1, ..."""
    if codes.dim() != 3:
        raise InputError(f"codes: expected (B, L, T), got shape {tuple(codes.shape)}")
    return codes.reshape(codes.shape[0], -1)


def unflatten_codes(flat: torch.Tensor, num_levels: int) -> torch.Tensor:
    """Exact inverse of `flatten_codes`: (B, L*T) -> (B, L, T)."""
    if flat.dim() != 2:
        raise InputError(f"codes: expected flat (B, L*T), got shape {tuple(flat.shape)}")
    if flat.shape[1] % num_levels:
        raise InputError(f"codes: length {flat.shape[1]} is not a multiple of num_levels={num_levels}")
    return flat.reshape(flat.shape[0], num_levels, -1)


def codes_to_tokens(codes: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """(B, L, T) codes -> (B, L*T) token ids in [0, L*A): level l is offset by l*A, level-major."""
    levels = torch.arange(codes.shape[1], device=codes.device).view(1, -1, 1)
    return flatten_codes(codes + levels * codebook_size)


def tokens_to_codes(tokens: torch.Tensor, num_levels: int, codebook_size: int) -> torch.Tensor:
    """Exact inverse of `codes_to_tokens`; a token outside its level's range raises InputError."""
    codes = unflatten_codes(tokens, num_levels)
    levels = torch.arange(num_levels, device=codes.device).view(1, -1, 1)
    codes = codes - levels * codebook_size
    bad = (codes < 0) | (codes >= codebook_size)
    if bool(bad.any()):
        b, level, t = (int(i) for i in bad.nonzero()[0])
        raise InputError(
            f"tokens: position {level * codes.shape[2] + t} of item {b} holds {int(tokens[b, level * codes.shape[2] + t])}, "
            f"outside level {level}'s range [{level * codebook_size}, {(level + 1) * codebook_size})"
        )
    return codes


class QuantizedLatents(NamedTuple):
    latents: torch.Tensor  # (B, D, T) quantized, straight-through gradient to the encoder
    codes: torch.Tensor  # (B, L, T)
    residuals: list[torch.Tensor]  # L x (B, D, T), each level's input, detached (for EMA / dead codes)
    commit_loss: torch.Tensor  # scalar: sum over levels of mean ||residual - sg(code)||^2


# ------------------------------------------------------------------------------ spectral encoder
class _CausalConv(nn.Conv1d):
    """Conv1d padded on the left only: output frame t sees inputs up to t * stride + stride - 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = (self.kernel_size[0] - 1) * self.dilation[0] + 1
        return super().forward(F.pad(x, (k - self.stride[0], 0)))


class _SpectralResBlock(nn.Module):
    def __init__(self, ch: int, dilation: int):
        super().__init__()
        self.body = nn.Sequential(nn.ELU(), _CausalConv(ch, ch // 2, 3, dilation=dilation), nn.ELU(),
                                  _CausalConv(ch // 2, ch, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class SpectralEncoder(nn.Module):
    """A causal STFT front end for the codec's encoder (`frontend: stft`).

    Why: SEANet's waveform encoder must turn a tone into channel energy before its stride-4 stage
    (2 kHz, Nyquist 1 kHz); the shipped one never learned to for tones above ~950 Hz
    (benchmarks/audio_tone_trace.py). A spectrogram makes pitch a matter of which channel, which a
    linear layer reads. Frames: a Hann window of 2 x hop_length samples ending at each sub-step
    (hop_length / frontend_substeps samples; zeros before the start), so frame t of the output sees
    samples < (t + 1) * hop_length only. Input features: the complex spectrum with its magnitude
    compressed to |X|^0.3 (real and imaginary parts as channels, then |X|^0.3 itself), which keeps
    the phase for the decoder and spans a tone's 60 dB of level in ~2 decades.
    """

    def __init__(self, cfg: AudioTokenizerConfig):
        super().__init__()
        self.sub = cfg.frontend_substeps
        self.hop = cfg.hop_length // self.sub
        self.n_fft = 2 * cfg.hop_length
        self.register_buffer("window", torch.hann_window(self.n_fft, periodic=True), persistent=False)
        bins, ch = self.n_fft // 2 + 1, cfg.frontend_channels
        layers: list[nn.Module] = [_CausalConv(3 * bins, ch, 3)]
        layers += [_SpectralResBlock(ch, d) for d in (1, 3)]
        layers += [nn.ELU(), _CausalConv(ch, ch, 2 * self.sub, stride=self.sub)] if self.sub > 1 else []
        self.convs = nn.Sequential(*layers)
        self.lstm = nn.LSTM(ch, ch, num_layers=cfg.num_lstm_layers, batch_first=True)
        self.out = nn.Sequential(nn.ELU(), _CausalConv(ch, cfg.hidden_size, 3))

    def features(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, 1, S) -> (B, 3 * bins, S // sub-hop): compressed complex spectrum and its magnitude."""
        x = audio[:, 0, : audio.shape[-1] // self.hop * self.hop]
        x = F.pad(x, (self.n_fft - self.hop, 0))
        frames = x.unfold(-1, self.n_fft, self.hop) * self.window  # (B, F, n_fft)
        spec = torch.fft.rfft(frames, dim=-1)  # (B, F, bins)
        mag = spec.abs().clamp_min(1e-7)
        compressed = mag.pow(0.3)
        spec = spec * (compressed / mag)
        # the compressed magnitude too: a rotating phase makes real and imaginary parts of a steady
        # tone change sign from frame to frame, its magnitude does not
        return torch.cat([spec.real, spec.imag, compressed], dim=-1).transpose(1, 2)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, 1, S) -> (B, hidden_size, S // hop_length)."""
        h = self.convs(self.features(audio))
        h = h + self.lstm(h.transpose(1, 2))[0].transpose(1, 2)
        return self.out(h)


class _ConvNeXtBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.dw = nn.Conv1d(ch, ch, 7, padding=3, groups=ch)
        self.norm = nn.LayerNorm(ch)
        self.mlp = nn.Sequential(nn.Linear(ch, 3 * ch), nn.GELU(), nn.Linear(3 * ch, ch))
        self.scale = nn.Parameter(torch.full((ch,), 0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T)
        h = self.mlp(self.norm(self.dw(x).transpose(1, 2))) * self.scale
        return x + h.transpose(1, 2)


class ISTFTDecoder(nn.Module):
    """A Vocos-style decoder (`decoder: istft`): latents -> per-bin log-magnitude and phase -> inverse STFT.

    Why: SEANet's transposed convolutions learn low frequencies first and slowly (after 1,500 steps a
    fresh codec still outputs near-silence for the shapes tones above ~1 kHz); predicting the spectrum
    makes every frequency one output unit away. Latents are repeated `decoder_upsample` times per
    frame, mixed by a conv and ConvNeXt blocks (non-causal, kernel 7), and a linear head gives
    log-magnitudes (clamped to e^5) and phases for a Hann window of 4 x the sub-hop, as Vocos does.
    Measured after 500 steps from scratch: a steady high tone's predicted phase barely moves from
    frame to frame, so it comes back as a buzz at multiples of the 100 Hz sub-frame rate (1,357 Hz
    as 1,300 or 1,400 Hz); Vocos gets phase right through its adversarial losses. Summing predicted
    phase advances over frames instead was worse (3/24 tones against 10/24). Output: exactly
    T x hop_length samples.
    """

    def __init__(self, cfg: AudioTokenizerConfig):
        super().__init__()
        self.up = cfg.decoder_upsample
        self.hop = cfg.hop_length // self.up
        self.n_fft = 4 * self.hop
        ch, bins = cfg.decoder_channels, self.n_fft // 2 + 1
        self.register_buffer("window", torch.hann_window(self.n_fft, periodic=True), persistent=False)
        self.inp = nn.Conv1d(cfg.hidden_size, ch, 7, padding=3)
        self.blocks = nn.Sequential(*[_ConvNeXtBlock(ch) for _ in range(cfg.decoder_layers)])
        self.norm = nn.LayerNorm(ch)
        self.head = nn.Linear(ch, 2 * bins)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(B, D, T) -> (B, 1, T * hop_length)."""
        h = self.blocks(self.inp(z.repeat_interleave(self.up, dim=-1)))
        logmag, phase = self.head(self.norm(h.transpose(1, 2))).transpose(1, 2).chunk(2, dim=1)  # (B, bins, T')
        return self.synthesize(logmag, phase)

    def synthesize(self, logmag: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
        """(B, bins, T') log-magnitudes and phases -> (B, 1, T' * sub-hop) samples (centred frames)."""
        mag, phase = logmag.float().clamp(max=5.0).exp(), phase.float()  # fp32 under bf16 autocast too
        spec = torch.complex(mag * torch.cos(phase), mag * torch.sin(phase))
        audio = torch.istft(spec, self.n_fft, self.hop, window=self.window, center=True,
                            length=spec.shape[-1] * self.hop)
        return audio[:, None]


# ---------------------------------------------------------------------------------------- model
@torch.no_grad()
def rvq_beam_codes(z: torch.Tensor, codebooks: list[torch.Tensor], width: int, *, chunk: int = 4096) -> torch.Tensor:
    """Beam search over residual VQ levels: (B, D, T) latents and L codebooks (A, D) -> (B, L, T)
    codes. At each level every kept partial sum is extended by every code and the `width` with the
    smallest residual norm survive; the surviving path with the smallest final residual wins. Width 1
    is the greedy search (each level's nearest code); a wider beam usually ends closer (not always:
    the greedy path can fall out of the beam). Frames are searched `chunk` at a time (memory:
    chunk x width x A distances)."""
    b, d, t = z.shape
    flat = z.transpose(1, 2).reshape(b * t, d)
    out = torch.empty(b * t, len(codebooks), dtype=torch.long, device=z.device)
    with torch.autocast(z.device.type, enabled=False):  # distances in fp32 under any autocast
        books = [e.float() for e in codebooks]
        for s in range(0, b * t, chunk):
            x = flat[s : s + chunk].float()[:, None]  # (N, 1, D): one partial sum per vector
            n = x.shape[0]
            paths = torch.zeros(n, 1, 0, dtype=torch.long, device=z.device)
            for embed in books:
                a = embed.shape[0]
                dist = x.pow(2).sum(-1, keepdim=True) - 2 * x @ embed.t() + embed.pow(2).sum(1)  # (N, K, A)
                k = min(width, dist.shape[1] * a)
                top = dist.reshape(n, -1).topk(k, dim=1, largest=False).indices  # (N, k), ascending
                parent, code = top // a, top % a
                x = torch.gather(x, 1, parent[..., None].expand(-1, -1, d)) - embed[code]
                paths = torch.cat([torch.gather(paths, 1, parent[..., None].expand(-1, -1, paths.shape[2])),
                                   code[..., None]], 2)
            out[s : s + n] = paths[torch.arange(n, device=z.device), x.pow(2).sum(-1).argmin(1)]
    return out.view(b, t, -1).permute(0, 2, 1).contiguous()


class AudioTokenizer(Tokenizer):
    config_class = AudioTokenizerConfig
    kind = "audio"

    def __init__(self, config: AudioTokenizerConfig):
        super().__init__(config)
        from transformers import EncodecModel
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            self.model = EncodecModel(config.to_hf())
        finally:
            hf_logging.set_verbosity(verbosity)
        if config.frontend == "stft":  # SEANet's waveform encoder is not built into the state
            self.model.encoder = SpectralEncoder(config)
        if config.decoder == "istft":
            self.model.decoder = ISTFTDecoder(config)
        self._init_fresh_weights()
        # EncodecModel zero-initialises its codebooks; random codes make an untrained model usable
        # (distinct codes) and the trainer re-initialises them from data (k-means) while inited == 0.
        for cb in self.codebooks():
            cb.embed.normal_()
            cb.embed_avg.copy_(cb.embed)
            cb.cluster_size.fill_(1.0)
            cb.inited.fill_(0.0)

    @torch.no_grad()
    def _init_fresh_weights(self) -> None:
        """Variance-preserving init for a model trained from scratch (loading overwrites it).

        EncodecModel's init leaves weight-normed convs at PyTorch's default gain (~0.58 per layer),
        so latents come out ~1e-3 in size and dominated by a constant offset; the first optimizer
        steps then move that offset by more than the latents vary over time and every frame falls on
        one code. Here each conv's effective weight is N(0, 1/fan_in) and encoder biases start at 0,
        which gives latents of order 0.1 whose spread exceeds the per-step drift.
        """
        seanet_encoder = self.config.frontend == "waveform"
        parts = [self.model.encoder] if seanet_encoder else []
        parts += [self.model.decoder] if self.config.decoder == "seanet" else []
        for part in parts:
            for m in part.modules():
                if not isinstance(m, (nn.Conv1d, nn.ConvTranspose1d)):
                    continue
                wn = getattr(getattr(m, "parametrizations", None), "weight", None)
                v = wn.original1 if wn is not None else m.weight
                fan_in = v.shape[0] * v.shape[2] if isinstance(m, nn.ConvTranspose1d) else v[0].numel()
                v.normal_(0.0, 1.0 / math.sqrt(fan_in))
                if wn is not None:  # weight = g * v / ||v|| with g = ||v||: weight = v
                    wn.original0.copy_(v.norm(dim=list(range(1, v.dim())), keepdim=True))
        for m in self.model.encoder.modules() if seanet_encoder else ():
            for name, p in m.named_parameters(recurse=False):
                if name.startswith("bias"):
                    p.zero_()

    # ---- sizes ---------------------------------------------------------------------------------
    @property
    def hop_length(self) -> int:
        return self.config.hop_length

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def num_levels(self) -> int:
        return self.config.num_levels

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def vocab_size(self) -> int:
        return self.config.num_levels * self.config.codebook_size

    def num_frames(self, num_samples: int) -> int:
        return num_samples // self.hop_length

    def token_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """(C, S) -> (L, S // hop)."""
        return (self.num_levels, self.num_frames(int(input_shape[-1])))

    def codebooks(self) -> list[nn.Module]:
        """The per-level `EncodecEuclideanCodebook`s (buffers: embed, embed_avg, cluster_size, inited)."""
        return [layer.codebook for layer in self.model.quantizer.layers]

    # ---- checks --------------------------------------------------------------------------------
    def check_audio(self, audio: torch.Tensor, name: str = "audio") -> torch.Tensor:
        """Validate (B, C, S) audio in [-1, 1]; returns mono (B, 1, T*hop) float (trailing partial frame dropped)."""
        if not isinstance(audio, torch.Tensor):
            raise InputError(f"{name}: expected a torch.Tensor, got {type(audio).__name__}")
        if audio.dim() != 3:
            raise InputError(f"{name}: expected shape (B, C, S), got {tuple(audio.shape)}")
        if not audio.dtype.is_floating_point:
            raise InputError(f"{name}: expected floating-point samples in [-1, 1], got {audio.dtype}")
        if audio.shape[0] == 0 or audio.shape[1] == 0:
            raise InputError(f"{name}: empty batch or no channels, shape {tuple(audio.shape)}")
        if audio.shape[-1] < self.hop_length:
            raise InputError(
                f"{name}: {audio.shape[-1]} samples is shorter than one frame ({self.hop_length} samples "
                f"= {1000 * self.hop_length / self.sample_rate:.1f} ms at {self.sample_rate} Hz)"
            )
        if not bool(torch.isfinite(audio).all()):
            raise InputError(f"{name}: contains NaN or Inf samples")
        peak = float(audio.abs().max())
        if peak > 1.0 + 1e-4:
            raise InputError(
                f"{name}: samples must be in [-1, 1], peak is {peak:.3f} (normalise or clip; "
                "prepare_waveform clips and warns)"
            )
        if audio.shape[1] > 1:  # documented: multichannel input is mixed down to mono
            audio = audio.mean(dim=1, keepdim=True)
        frames = self.num_frames(audio.shape[-1])
        return audio[..., : frames * self.hop_length].float()

    def check_audio_codes(self, codes: torch.Tensor) -> None:
        if codes.dim() != 3:
            raise InputError(f"codes: expected (B, L, T), got shape {tuple(codes.shape)}")
        if not 1 <= codes.shape[1] <= self.num_levels:
            raise InputError(f"codes: {codes.shape[1]} levels given, this codec has 1..{self.num_levels}")
        if codes.shape[2] == 0:
            raise InputError("codes: zero frames")
        self.check_codes(codes, self.codebook_size)

    # ---- the interface -------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, C, S) float in [-1, 1] -> (B, L, S // hop) LongTensor codes."""
        audio = self.check_audio(audio)
        z = self.model.encoder(audio)  # (B, D, T)
        if self.config.beam_width > 1:
            return rvq_beam_codes(z, [cb.embed for cb in self.codebooks()], self.config.beam_width)
        codes = self.model.quantizer.encode(z)  # (L, B, T)
        return codes.transpose(0, 1).contiguous()

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, L', T) codes, L' <= L levels -> (B, 1, T * hop) float audio clamped to [-1, 1]."""
        self.check_audio_codes(codes)
        z = self.model.quantizer.decode(codes.transpose(0, 1).long())  # (B, D, T)
        return self.model.decoder(z).clamp(-1.0, 1.0)

    # ---- training path (pure: no state changes) ---------------------------------------------------
    def encode_latents(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, 1, S) -> continuous latents (B, D, S // hop), with gradients."""
        return self.model.encoder(audio)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, D, T) -> (B, 1, T * hop), unclamped, with gradients."""
        return self.model.decoder(latents)

    def quantize(self, z: torch.Tensor) -> QuantizedLatents:
        """Residual VQ of (B, D, T) latents with a straight-through estimator and commitment loss.
        Codes are chosen greedily level by level, or by a beam search when `config.beam_width` > 1."""
        books = [cb.embed for cb in self.codebooks()]
        beam = self.config.beam_width > 1
        chosen = rvq_beam_codes(z.detach(), books, self.config.beam_width) if beam else None  # (B, L, T)
        residual = z
        quantized = torch.zeros_like(z)
        codes, residuals = [], []
        commit = z.new_zeros(())
        for level, embed in enumerate(books):  # embed: (A, D)
            r = residual.detach()
            if beam:
                idx = chosen[:, level]
            else:
                with torch.autocast(r.device.type, enabled=False):  # fp32 distances under autocast too
                    flat, e = r.float().transpose(1, 2).reshape(-1, r.shape[1]), embed.float()  # (B*T, D)
                    dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ e.t() + e.pow(2).sum(1)[None]
                idx = dist.argmin(dim=1).view(r.shape[0], r.shape[2])  # (B, T)
            q = F.embedding(idx, embed).transpose(1, 2)  # (B, D, T)
            commit = commit + F.mse_loss(residual, q.detach())
            residuals.append(r)
            codes.append(idx)
            quantized = quantized + q.detach()
            residual = residual - q.detach()
        latents = z + (quantized - z).detach()  # straight-through: one STE over the whole RVQ
        return QuantizedLatents(latents, torch.stack(codes, dim=1), residuals, commit)

    def autoencode(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, 1, S) -> reconstruction without quantization (the trainer's warm-up before k-means init)."""
        return self.decode_latents(self.encode_latents(audio))

    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, QuantizedLatents]:
        """Training forward: (B, 1, S) -> (reconstruction (B, 1, S'), quantizer outputs)."""
        q = self.quantize(self.encode_latents(audio))
        return self.decode_latents(q.latents), q

    # ---- loading -------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        map_location: str | torch.device = "cpu",
        num_levels: int | None = None,
    ) -> AudioTokenizer:
        """Load our directory, or an official Hugging Face EnCodec directory (config.json with
        model_type "encodec", e.g. a local copy of the 24 kHz model). For the latter, `num_levels`
        keeps the first levels (default: all the checkpoint has; 24 kHz: 8 levels = 6 kbps)."""
        d = Path(directory)
        cfg_file = d / "config.json"
        if cfg_file.is_file():
            try:
                model_type = json.loads(cfg_file.read_text()).get("model_type")
            except (json.JSONDecodeError, AttributeError):
                model_type = None
            if model_type == "encodec":
                return cls._from_hf_dir(d, num_levels).to(map_location).eval()
        if num_levels is not None:
            raise InputError("num_levels: only applies when loading an official EnCodec directory")
        return super().from_pretrained(d, map_location)

    @classmethod
    def _from_hf_dir(cls, d: Path, num_levels: int | None) -> AudioTokenizer:
        from transformers import EncodecModel

        try:
            hf_model = EncodecModel.from_pretrained(str(d), local_files_only=True)
        except (OSError, ValueError) as e:
            raise VideoPoetError(f"{d}: cannot load the EnCodec checkpoint ({e})") from None
        config = AudioTokenizerConfig.from_hf(hf_model.config, num_levels)
        tok = cls(config)
        state = {}
        for k, v in hf_model.state_dict().items():
            if k.startswith("quantizer.layers."):
                if int(k.split(".")[2]) >= config.num_levels:
                    continue
            state["model." + k] = v
        own = tok.state_dict()
        missing = sorted(set(own) - set(state))
        if missing:
            raise VideoPoetError(f"{d}: EnCodec weights are missing {missing[:5]}")
        tok.load_state_dict({k: state[k] for k in own}, strict=True)
        for cb in tok.codebooks():
            cb.inited.fill_(1.0)
        return tok


# ------------------------------------------------------------------------------------ file input
def prepare_waveform(
    audio: np.ndarray | torch.Tensor, sample_rate: int, target_rate: int, name: str = "audio"
) -> tuple[torch.Tensor, list[str]]:
    """Any (S,) or (C, S) waveform -> (1, S') float32 mono at `target_rate`, in [-1, 1].

    Documented behaviour (each returns a note, never silently): C > 1 channels are averaged to mono;
    another sample rate is resampled; samples beyond [-1, 1] are clipped. Empty input and NaN/Inf
    raise InputError. Silent audio is valid.
    """
    from videopoet.data.media import resample_audio

    x = torch.as_tensor(np.asarray(audio, dtype=np.float32) if not isinstance(audio, torch.Tensor) else audio)
    x = x.float()
    notes: list[str] = []
    if x.dim() == 1:
        x = x[None]
    if x.dim() != 2:
        raise InputError(f"{name}: expected (S,) or (C, S) samples, got shape {tuple(x.shape)}")
    if x.shape[-1] == 0 or x.shape[0] == 0:
        raise InputError(f"{name}: empty (no samples)")
    if not bool(torch.isfinite(x).all()):
        raise InputError(f"{name}: contains NaN or Inf samples")
    if x.shape[0] > 1:
        notes.append(f"{name}: {x.shape[0]} channels mixed down to mono")
        x = x.mean(dim=0, keepdim=True)
    if sample_rate != target_rate:
        notes.append(f"{name}: resampled {sample_rate} Hz -> {target_rate} Hz")
        x = torch.as_tensor(np.asarray(resample_audio(x.numpy(), sample_rate, target_rate), dtype=np.float32))
        if x.dim() == 1:
            x = x[None]
    peak = float(x.abs().max())
    if peak > 1.0:
        notes.append(f"{name}: peak {peak:.3f} > 1, clipped to [-1, 1]")
        x = x.clamp(-1.0, 1.0)
    return x.contiguous(), notes
