"""Literature metrics with weights from a local path (nothing is downloaded; without a path the
metric raises NotAvailableError saying what it needs).

- CLIPSIM (`clipsim`): a `transformers` CLIP model directory; the mean over frames of the cosine
  between each frame's image embedding and the caption's text embedding, averaged over videos,
  reported raw (VideoPoet's MSR-VTT 0.3049 is this number). Frames are resized (bicubic, short
  side) and centre-cropped to the model's image size and normalised with CLIP's mean and std,
  here in numpy/Pillow (no torchvision, no image-processor download).
- FVD (`fvd`): the I3D Kinetics-400 network as a TorchScript file (StyleGAN-V's
  `i3d_torchscript.pt`, called with `rescale=False, resize=False, return_features=False`: the 400
  logits averaged over time, DESIGN.md "Evaluation"). Protocol written into the result: 16 frames
  per clip (the first 16; shorter clips are refused), 224x224 by squash-resize (StyleGAN-V's; the
  short-side-and-centre-crop variant scores ~10% differently), inputs in [-1, 1], Fréchet distance
  in float64 (videopoet/eval/frechet.py, `stylegan_v` or `tats`), 2,048 samples by default.
- IS (`inception_score_ucf101`): C3D trained on Sports-1M and fine-tuned on UCF-101 (101 classes;
  network and weight loading in videopoet/eval/literature_nets.py), the first 16 frames of each
  clip at 112x112, BGR, 0..255 minus the Sports-1M mean volume; IS = exp(E_x KL(p(y|x) || p(y)))
  in float64 on each of 10 consecutive splits (p(y) the split's mean prediction, 0 log 0 = 0),
  reported as mean and std over the splits (TGAN's and TGANv2's `inception_score`; MAGVIT instead
  scores 4 runs of 10,000 clips), 10,000 clips by default. The resize changes the score (by how
  much is not measured here, without the weights) and is written into the result: `tganv2` (default) squashes each frame straight to 112x112 by
  bilinear interpolation with aligned corners, as TGANv2's Chainer C3D does and StyleGAN-V's
  TorchScript export and MAGVIT's Flax port copy (MAGVIT's code is the likeliest source of
  VideoPoet's 38.44, which sits in a table with MAGVIT's numbers; an assumption, not stated);
  `tgan` resizes to 128x128 (bicubic, OpenCV) and crops the centre 112 (TGAN's evaluation
  script); `c3d` resizes to 128x171 (bilinear, OpenCV) and crops the centre 112 (rows 8:120,
  columns 29:141), the C3D reference preprocessing. Clips are squashed, never padded.
- FAD (`fad`, Kilgour et al. 2019): VGGish embeddings (128-d, before the PCA postprocessor) of
  every 0.96 s example of every clip; audio mixed to mono, resampled to 16 kHz (scipy polyphase;
  VGGish's own code uses resampy), framed in 25 ms periodic-Hann windows every 10 ms with no
  padding, |512-point FFT|, 64 mel bands over 125-7500 Hz (HTK mel, triangles in mel, no area
  normalisation), log(mel + 0.01), non-overlapping 96-frame examples (a partial one is dropped).
  Both sets' embeddings -> Gaussians with the unbiased covariance (np.cov, as the FAD reference)
  -> Fréchet distance in float64 with the symmetric eigen square root (the reference's
  Cholesky + eigvalsh computes the same trace).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from videopoet.errors import InputError, NotAvailableError

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)


def _need_dir(path: str | Path | None, what: str, hint: str) -> Path:
    if path is None:
        raise NotAvailableError(f"{what} needs its weights from a local path ({hint}); nothing is downloaded here")
    p = Path(path)
    if not p.exists():
        raise NotAvailableError(f"{what}: {p} does not exist ({hint})")
    return p


def _clip_pixels(frames: np.ndarray, size: int) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> (N, 3, size, size) float: short side to `size` (bicubic), centre crop, CLIP norm."""
    from PIL import Image

    out = []
    for f in np.asarray(frames):
        im = Image.fromarray(f)
        s = size / min(im.size)
        im = im.resize((max(size, round(im.size[0] * s)), max(size, round(im.size[1] * s))), Image.BICUBIC)
        x0, y0 = (im.size[0] - size) // 2, (im.size[1] - size) // 2
        a = np.asarray(im.crop((x0, y0, x0 + size, y0 + size)), np.float32) / 255.0
        out.append((a - CLIP_MEAN) / CLIP_STD)
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


class ClipScorer:
    def __init__(self, model_dir: str | Path | None):
        p = _need_dir(model_dir, "CLIPSIM", "a transformers CLIP directory, e.g. openai/clip-vit-base-patch32 saved locally")
        from transformers import AutoTokenizer, CLIPModel

        self.model = CLIPModel.from_pretrained(str(p)).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(str(p))
        self.size = int(self.model.config.vision_config.image_size)

    @torch.no_grad()
    def __call__(self, videos: list[np.ndarray], captions: list[str]) -> dict[str, Any]:
        if len(videos) != len(captions) or not videos:
            raise InputError(f"clipsim: {len(videos)} videos and {len(captions)} captions (need the same, >= 1)")
        per_video = []
        for v, c in zip(videos, captions, strict=True):
            tok = self.tokenizer([c], padding=True, truncation=True, return_tensors="pt")
            t = self.model.get_text_features(**tok)
            i = self.model.get_image_features(pixel_values=_clip_pixels(v, self.size))
            t, i = (x.pooler_output if hasattr(x, "pooler_output") else x for x in (t, i))
            t = t / t.norm(dim=-1, keepdim=True)
            i = i / i.norm(dim=-1, keepdim=True)
            per_video.append(float((i @ t.T).mean()))
        return {"clipsim": float(np.mean(per_video)), "per_video": per_video,
                "protocol": f"mean frame-text cosine, raw; frames short side -> {self.size} bicubic + centre crop"}


def clipsim(videos: list[np.ndarray], captions: list[str], model_dir: str | Path | None) -> dict[str, Any]:
    return ClipScorer(model_dir)(videos, captions)


FVD_FRAMES, FVD_SIZE = 16, 224


def i3d_inputs(videos: list[np.ndarray]) -> torch.Tensor:
    """uint8 (T >= 16, H, W, 3) clips -> (N, 3, 16, 224, 224) in [-1, 1], squash-resized (bilinear)."""
    import torch.nn.functional as F

    xs = []
    for k, v in enumerate(videos):
        v = np.asarray(v)
        if v.ndim != 4 or v.shape[0] < FVD_FRAMES or v.shape[-1] != 3:
            raise InputError(f"fvd: video {k} must be uint8 (T >= {FVD_FRAMES}, H, W, 3), got {v.shape}")
        x = torch.from_numpy(np.ascontiguousarray(v[:FVD_FRAMES])).permute(0, 3, 1, 2).float() / 127.5 - 1
        x = F.interpolate(x, size=(FVD_SIZE, FVD_SIZE), mode="bilinear", align_corners=False)
        xs.append(x.permute(1, 0, 2, 3))
    return torch.stack(xs)


@torch.no_grad()
def i3d_features(videos: list[np.ndarray], model_path: str | Path | None, batch: int = 8) -> np.ndarray:
    p = _need_dir(model_path, "FVD", "the I3D Kinetics-400 TorchScript file i3d_torchscript.pt")
    net = torch.jit.load(str(p), map_location="cpu").eval()
    feats = []
    for i in range(0, len(videos), batch):
        x = i3d_inputs(videos[i : i + batch])
        feats.append(net(x, rescale=False, resize=False, return_features=False).float().cpu().numpy())
    return np.concatenate(feats)


def fvd(real: list[np.ndarray], fake: list[np.ndarray], model_path: str | Path | None, *,
        protocol: str = "stylegan_v", min_samples: int = 2048) -> dict[str, Any]:
    """FVD between two sets of clips; fewer than `min_samples` per set is refused (the protocol's
    2,048; pass a smaller number knowingly, and report it)."""
    from videopoet.eval.frechet import frechet_distance_features

    if min(len(real), len(fake)) < min_samples:
        raise InputError(f"fvd: {len(real)} real and {len(fake)} generated clips; the protocol uses "
                         f">= {min_samples} each (min_samples= to override, and report it)")
    fr, ff = i3d_features(real, model_path), i3d_features(fake, model_path)
    return {"fvd": frechet_distance_features(fr, ff, protocol=protocol), "samples": [len(real), len(fake)],
            "protocol": f"I3D K400 logits (400-d, averaged over time), first {FVD_FRAMES} frames, squash-resize "
                        f"to {FVD_SIZE}x{FVD_SIZE}, inputs in [-1, 1], Frechet in float64 ({protocol})"}


# ------------------------------------------------------------------------------------- IS (C3D)

IS_FRAMES, IS_SIZE = 16, 112
C3DResize = Literal["tganv2", "tgan", "c3d"]
# resize -> (resized (H, W), OpenCV interpolation, crop top, crop left); tganv2 resizes in torch
_OPENCV_RESIZE = {"tgan": ((128, 128), "INTER_CUBIC", 8, 8), "c3d": ((128, 171), "INTER_LINEAR", 8, 29)}
C3D_HINT = "C3D fine-tuned on UCF-101 (101 classes) as .safetensors, .pt or .npz, with its Sports-1M mean"


def c3d_inputs(videos: list[np.ndarray], resize: C3DResize = "tganv2") -> torch.Tensor:
    """uint8 RGB (T >= 16, H, W, 3) clips -> (N, 3, 16, 112, 112) float32, BGR, 0..255 (the first 16
    frames; C3D subtracts its mean itself)."""
    import torch.nn.functional as F

    if resize not in ("tganv2", *_OPENCV_RESIZE):
        raise InputError(f"is: resize must be tganv2, tgan or c3d, got {resize!r}")
    xs = []
    for k, v in enumerate(videos):
        v = np.asarray(v)
        if v.ndim != 4 or v.shape[0] < IS_FRAMES or v.shape[-1] != 3:
            raise InputError(f"is: video {k} must be uint8 (T >= {IS_FRAMES}, H, W, 3), got {v.shape}")
        x = v[:IS_FRAMES].astype(np.float32)
        if resize == "tganv2":
            t = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=(IS_SIZE, IS_SIZE), mode="bilinear",
                              align_corners=True)
        else:
            import cv2

            (h, w), interp, top, left = _OPENCV_RESIZE[resize]
            x = np.stack([cv2.resize(f, (w, h), interpolation=getattr(cv2, interp)) for f in x])
            t = torch.from_numpy(np.ascontiguousarray(x[:, top : top + IS_SIZE, left : left + IS_SIZE]))
            t = t.permute(0, 3, 1, 2)
        xs.append(t.flip(1).permute(1, 0, 2, 3))  # RGB -> BGR, (3, 16, 112, 112)
    return torch.stack(xs).contiguous()


@torch.no_grad()
def c3d_probabilities(videos: list[np.ndarray], model_path: str | Path | None, *, mean_path: str | Path | None = None,
                      resize: C3DResize = "tganv2", batch: int = 8) -> np.ndarray:
    """(N, 101) float64 softmax of C3D's UCF-101 logits."""
    from videopoet.eval.literature_nets import load_c3d

    net = load_c3d(_need_dir(model_path, "IS", C3D_HINT), mean_path)
    out = []
    for i in range(0, len(videos), batch):
        out.append(torch.softmax(net(c3d_inputs(videos[i : i + batch], resize)).double(), dim=-1).numpy())
    return np.concatenate(out)


def inception_score(probs: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """(N, C) class probabilities -> (mean, std) over `splits` consecutive chunks of
    exp(mean_x KL(p(y|x) || p(y))), p(y) the chunk's mean prediction; float64, 0 log 0 = 0, std as numpy's."""
    from scipy.special import xlogy

    p = np.asarray(probs, np.float64)
    if p.ndim != 2 or not np.isfinite(p).all() or (p < 0).any() or not np.allclose(p.sum(1), 1.0, atol=1e-4):
        raise InputError(f"inception_score: expected (N, C) rows of probabilities summing to 1, got {p.shape}")
    n = len(p)
    if splits < 1 or n < splits:
        raise InputError(f"inception_score: {n} samples cannot make {splits} splits")
    scores = []
    for i in range(splits):
        part = p[i * n // splits : (i + 1) * n // splits]
        kl = xlogy(part, part) - xlogy(part, part.mean(0, keepdims=True))
        scores.append(np.exp(kl.sum(1).mean()))
    return float(np.mean(scores)), float(np.std(scores))


def inception_score_ucf101(videos: list[np.ndarray], model_path: str | Path | None, *,
                           mean_path: str | Path | None = None, resize: C3DResize = "tganv2", splits: int = 10,
                           min_samples: int = 10_000) -> dict[str, Any]:
    """The UCF-101 Inception Score of generated clips; fewer than `min_samples` is refused (the
    protocol's 10,000; pass a smaller number knowingly, and report it)."""
    _need_dir(model_path, "IS", C3D_HINT)
    if len(videos) < min_samples:
        raise InputError(f"is: {len(videos)} clips; the protocol uses >= {min_samples} "
                         "(min_samples= to override, and report it)")
    mean, std = inception_score(c3d_probabilities(videos, model_path, mean_path=mean_path, resize=resize), splits)
    how = {"tganv2": "squash to 112x112 (bilinear, aligned corners)",
           "tgan": "squash to 128x128 (bicubic) + centre crop 112", "c3d": "squash to 128x171 (bilinear) + centre crop 112"}
    return {"is": mean, "is_std": std, "samples": len(videos), "splits": splits,
            "protocol": f"C3D UCF-101 (101 classes), first {IS_FRAMES} frames, {resize}: {how[resize]}, BGR minus the "
                        f"Sports-1M mean, {splits} splits, float64"}


# ----------------------------------------------------------------------------------- FAD (VGGish)

VGGISH_RATE, VGGISH_WIN, VGGISH_HOP, VGGISH_FFT = 16000, 400, 160, 512  # 25 ms windows every 10 ms
VGGISH_MELS, VGGISH_FMIN, VGGISH_FMAX, VGGISH_LOG_OFFSET = 64, 125.0, 7500.0, 0.01
VGGISH_EXAMPLE = 96  # frames per example: 0.96 s, non-overlapping
VGGISH_HINT = "the VGGish weights (TF vggish_model.ckpt converted, or torchvggish's .pth) as .safetensors, .pt or .npz"


@functools.cache
def vggish_mel_matrix() -> np.ndarray:
    """(257, 64) VGGish mel weights: HTK mel, triangles interpolated in mel (not Hz) between bands
    spaced evenly over 125-7500 Hz, no area normalisation, the DC bin zeroed. Written here rather
    than taken from videopoet/signal.py, whose filterbank has Slaney-normalised triangles in Hz."""
    from videopoet.signal import hz_to_mel

    def mel(f):
        return hz_to_mel(torch.as_tensor(f, dtype=torch.float64)).numpy()

    bins = mel(np.linspace(0, VGGISH_RATE / 2, VGGISH_FFT // 2 + 1))[:, None]
    edges = np.linspace(mel(VGGISH_FMIN), mel(VGGISH_FMAX), VGGISH_MELS + 2)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    w = np.maximum(0.0, np.minimum((bins - lower) / (center - lower), (upper - bins) / (upper - center)))
    w[0] = 0.0
    w.flags.writeable = False
    return w


def vggish_log_mel(wave: np.ndarray) -> np.ndarray:
    """16 kHz mono (S,) -> (frames, 64) log-mel, float64. Frames start every 160 samples and are not
    centred or padded (videopoet/signal.py's STFT is centred, so it is not used)."""
    x = np.asarray(wave, np.float64)
    n = 1 + (len(x) - VGGISH_WIN) // VGGISH_HOP if len(x) >= VGGISH_WIN else 0
    idx = np.arange(VGGISH_WIN)[None] + VGGISH_HOP * np.arange(n)[:, None]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(VGGISH_WIN) / VGGISH_WIN)  # periodic Hann
    spec = np.abs(np.fft.rfft(x[idx] * window, VGGISH_FFT))
    return np.log(spec @ vggish_mel_matrix() + VGGISH_LOG_OFFSET)


def vggish_examples(clip: np.ndarray, sample_rate: int) -> np.ndarray:
    """One clip, (S,) or (C, S) float in [-1, 1] (int16 is scaled) -> (E, 96, 64) float32 examples."""
    from videopoet.data.media import resample_audio

    a = np.asarray(clip)
    a = a / 32768.0 if a.dtype == np.int16 else a.astype(np.float64)
    if a.ndim not in (1, 2) or a.shape[-1] == 0 or not np.isfinite(a).all():
        raise InputError(f"fad: a clip must be finite (S,) or (C, S) audio, got {a.shape}")
    mono = a.mean(0) if a.ndim == 2 else a
    if sample_rate != VGGISH_RATE:
        mono = resample_audio(mono[None].astype(np.float32), sample_rate, VGGISH_RATE)[0]
    m = vggish_log_mel(mono)
    e = len(m) // VGGISH_EXAMPLE
    return m[: e * VGGISH_EXAMPLE].reshape(e, VGGISH_EXAMPLE, VGGISH_MELS).astype(np.float32)


@torch.no_grad()
def _embed(net: torch.nn.Module, clips: list[np.ndarray], sample_rate: int, batch: int = 64) -> np.ndarray:
    ex = [vggish_examples(c, sample_rate) for c in clips]
    ex = np.concatenate(ex) if ex else np.zeros((0, VGGISH_EXAMPLE, VGGISH_MELS), np.float32)
    out = [net(torch.from_numpy(ex[i : i + batch])[:, None]).double().numpy() for i in range(0, len(ex), batch)]
    return np.concatenate(out) if out else np.zeros((0, 0))


def vggish_embeddings(clips: list[np.ndarray], model_path: str | Path | None, sample_rate: int) -> np.ndarray:
    """(E, 128) float64 embeddings of every 0.96 s example of every clip, in order."""
    from videopoet.eval.literature_nets import load_vggish

    return _embed(load_vggish(_need_dir(model_path, "FAD", VGGISH_HINT)), clips, sample_rate)


def fad(real: list[np.ndarray], fake: list[np.ndarray], model_path: str | Path | None, *,
        sample_rate: int = 16000) -> dict[str, Any]:
    """Fréchet Audio Distance between two sets of clips at `sample_rate` (the module docstring)."""
    from videopoet.eval.frechet import frechet_distance, gaussian_stats
    from videopoet.eval.literature_nets import load_vggish

    net = load_vggish(_need_dir(model_path, "FAD", VGGISH_HINT))
    er, ef = _embed(net, real, sample_rate), _embed(net, fake, sample_rate)
    if min(len(er), len(ef)) < 2:
        raise InputError(f"fad: {len(er)} real and {len(ef)} generated 0.96 s examples; need >= 2 each "
                         "(a clip shorter than 0.975 s gives none)")
    # the symmetric eigen square root ("tats" in frechet.py) on the unbiased covariances, as the FAD reference
    d = frechet_distance(*gaussian_stats(er, unbiased=True), *gaussian_stats(ef, unbiased=True), protocol="tats")
    return {"fad": d, "examples": [len(er), len(ef)], "clips": [len(real), len(fake)],
            "protocol": "VGGish 128-d (no PCA), 16 kHz mono, 0.96 s examples of 96 x 64 log-mel (25/10 ms, "
                        "125-7500 Hz, log(mel + 0.01)), unbiased covariance, Frechet in float64"}
