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
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
