"""`videopoet tokenizer ...` commands (video tokenizer): train, reconstruct, encode, decode.

Code files are safetensors with one int32 tensor "codes" (B, t, h, w) and metadata (fps, the input's
frame count and size, the tokenizer's bits), so `decode` can restore the frame count and rate.
"""

from __future__ import annotations

from pathlib import Path

from videopoet.cli import command


def load_video_tokenizer(model: Path | None = None):
    """The tokenizer in `model`, or the package's shipped default when `model` is None."""
    from videopoet.assets import asset_dir
    from videopoet.tokenizers.video import VideoTokenizer

    return VideoTokenizer.from_pretrained(model if model is not None else asset_dir("video_tokenizer"))


def _read_input(tok, path: Path, frames: int, size: int | None, fps: float):
    """Media file -> ((1, 3, T, H, W) tensor in [-1, 1], fps). `frames` 0 = all frames."""
    import math

    from videopoet.data.media import read_video, video_to_tensor
    from videopoet.errors import InputError

    if frames < 0:
        raise InputError(f"--frames must be >= 0, got {frames}")
    s = tok.config.spatial_compression
    size = tok.config.resolution if size is None else size
    if size <= 0 or size % s:
        raise InputError(f"--size must be a positive multiple of {s}, got {size}")
    data = read_video(path, fps=fps if fps > 0 else None, size=size, crop="center", max_frames=frames or None)
    fps_out = data.fps if data.fps and math.isfinite(data.fps) else 8.0
    return video_to_tensor(data.frames).unsqueeze(0), fps_out


def _write_output(out: Path, video, fps: float) -> Path:
    """(1, 3, T, H, W) in [-1, 1] -> a video file (or an image file for a 1-frame .png/.jpg output)."""
    from videopoet.data.media import tensor_to_video
    from videopoet.data.writers import write_image, write_video

    frames = tensor_to_video(video)
    if out.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"):
        return write_image(out, frames[0])
    return write_video(out, frames, fps)


@command("tokenizer train")
def train_cmd(*, config: Path, out: Path = Path("runs/video_tokenizer"), resume: bool = False,
              overrides: list[str] | None = None) -> None:
    """Train the video tokenizer (MAGVIT-v2 + LFQ) from a preset or YAML config.

    Writes OUT/checkpoints/step_N/ (atomic, the last few kept), OUT/log.jsonl and, at the end,
    OUT/model/ (EMA weights) for use with --model.

    Args:
        config: YAML config or preset name (tokenizer/debug, tokenizer/cpu, tokenizer/magvit2-128)
        out: output folder for checkpoints, logs and the final model
        resume: continue from the latest checkpoint in OUT (exact resume)
    """
    from videopoet.tokenizers.video_train import train

    model_dir = train(config, out, overrides, resume=resume)
    print(f"saved {model_dir}")


@command("tokenizer reconstruct")
def reconstruct_cmd(*, input: Path, out: Path, model: Path | None = None, frames: int = 17,
                    size: int | None = None, fps: float = 8.0, side_by_side: bool = False) -> None:
    """Encode and decode a video or image, write the reconstruction, print PSNR/SSIM.

    Args:
        input: a video or image file
        out: output file (.mp4/.webm/.gif; .png for an image)
        model: tokenizer directory (default: the shipped cpu tokenizer)
        frames: frames to read from the input (0 = all); counts that are not 1 + 4k are padded
            by repeating the last frame and trimmed again after decoding
        size: square frame size (centre crop + resize; default: the model's training resolution)
        fps: frame rate to sample the input at (0 = native)
        side_by_side: write the input and the reconstruction next to each other
    """
    import torch

    from videopoet.eval.video_metrics import psnr, ssim

    tok = load_video_tokenizer(model)
    x, fps_out = _read_input(tok, input, frames, size, fps)
    with torch.no_grad():
        codes = tok.encode(x)
        x_hat = tok.decode(codes)[:, :, : x.shape[2]]
    shown = torch.cat([x, x_hat], dim=-1) if side_by_side else x_hat
    _write_output(out, shown, fps_out)
    print(f"frames {x.shape[2]}  size {x.shape[3]}x{x.shape[4]}  tokens {tuple(codes.shape[1:])}  "
          f"PSNR {psnr(x, x_hat):.2f} dB  SSIM {ssim(x, x_hat):.4f}  -> {out}")


@command("tokenizer encode")
def encode_cmd(*, input: Path, out: Path, model: Path | None = None, frames: int = 17,
               size: int | None = None, fps: float = 8.0) -> None:
    """Encode a video or image into a code file (safetensors: "codes" (1, t, h, w) + metadata).

    Args:
        input: a video or image file
        out: the code file to write (.safetensors)
        model: tokenizer directory (default: the shipped cpu tokenizer)
        frames: frames to read (0 = all)
        size: square frame size (default: the model's training resolution)
        fps: frame rate to sample the input at (0 = native)
    """
    import torch
    from safetensors.torch import save_file

    from videopoet.io_utils import atomic_path

    tok = load_video_tokenizer(model)
    x, fps_out = _read_input(tok, input, frames, size, fps)
    with torch.no_grad():
        codes = tok.encode(x)
    meta = {"fps": str(fps_out), "frames": str(x.shape[2]), "height": str(x.shape[3]), "width": str(x.shape[4]),
            "bits": str(tok.config.bits), "source": str(input)}
    with atomic_path(out) as tmp:
        save_file({"codes": codes.to(torch.int32).contiguous()}, str(tmp), metadata=meta)
    print(f"codes {tuple(codes.shape)} in [0, {tok.codebook_size}) -> {out}")


@command("tokenizer decode")
def decode_cmd(*, codes: Path, out: Path, model: Path | None = None, fps: float = 0.0) -> None:
    """Decode a code file (from `tokenizer encode`) into a video or image.

    Args:
        codes: code file (.safetensors with a "codes" tensor (B, t, h, w) or (t, h, w))
        out: output file (.mp4/.webm/.gif; .png for one frame)
        model: tokenizer directory (default: the shipped cpu tokenizer)
        fps: output frame rate (0 = the rate stored in the code file, else 8)
    """
    import torch
    from safetensors import safe_open

    from videopoet.errors import InputError, MediaError

    tok = load_video_tokenizer(model)
    try:
        with safe_open(str(codes), framework="pt") as f:
            meta = f.metadata() or {}
            if "codes" not in f.keys():
                raise InputError(f"{codes}: no 'codes' tensor in the file (keys: {list(f.keys())})")
            c = f.get_tensor("codes")
    except FileNotFoundError:
        raise MediaError(codes, "code file not found") from None
    except InputError:
        raise
    except Exception as e:  # safetensors' own errors for corrupt files
        raise MediaError(codes, f"cannot read code file ({e})") from None
    if "bits" in meta and int(meta["bits"]) != tok.config.bits:
        raise InputError(f"{codes}: codes were made with {meta['bits']} bits, the model has {tok.config.bits}")
    if c.dim() == 3:
        c = c.unsqueeze(0)
    with torch.no_grad():
        video = tok.decode(c.long())
    if "frames" in meta:
        video = video[:, :, : int(meta["frames"])]
    rate = fps if fps > 0 else float(meta.get("fps", 8.0))
    for i in range(video.shape[0]):
        target = out if video.shape[0] == 1 else out.with_name(f"{out.stem}_{i}{out.suffix}")
        _write_output(target, video[i : i + 1], rate)
    print(f"video {tuple(video.shape[1:])} -> {out}")


@command("tokenizer eval")
def eval_cmd(*, data: str = "shapes:40", model: Path | None = None, frames: int = 17, size: int | None = None,
             json: bool = False) -> None:
    """Reconstruction metrics of the video tokenizer over a data set, with the bicubic baseline beside.

    Prints PSNR, SSIM, code usage and perplexity for the tokenizer and for 4x bicubic down/up-sampling
    of the same frames; on shapes data also the colour / shape / direction read-back of every object
    from the round trip against the original's (videopoet.eval.readback).

    Args:
        data: shapes:N[:SEED[:single|multi]] (default seed 4242, never trained on), heldout (carphone
            and the held-out photos under a camera move), or a folder / JSONL manifest of media
        model: tokenizer directory (default: the shipped cpu tokenizer)
        frames: frames per clip
        size: square frame size (default: the model's training resolution)
        json: print the full result as JSON instead of a table
    """
    from videopoet.eval.tokenizer_eval import run_and_print

    tok = load_video_tokenizer(model)
    run_and_print(tok, data, audio=False, as_json=json, frames=frames, size=size or tok.config.resolution)
