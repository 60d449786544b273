"""`videopoet data ...` commands."""

from __future__ import annotations

from pathlib import Path

from videopoet.cli import command


@command("data shapes")
def data_shapes(
    *,
    out: Path,
    num: int,
    size: int = 64,
    frames: int = 17,
    fps: float = 8.0,
    sample_rate: int = 16000,
    seed: int = 0,
    min_objects: int = 1,
    max_objects: int = 2,
    pan_prob: float = 0.3,
    occlusion_prob: float = 0.2,
    progress: bool = True,
) -> None:
    """Write the shapes benchmark: captioned clips with audio and exact ground truth.

    Each clip is OUT/clips/NNNNNN.mp4 (H.264 + AAC) with OUT/clips/NNNNNN.npz (positions, depth,
    flow, ids, bounce times, labels); OUT/manifest.jsonl lists them with captions and attributes.
    Clip i depends only on (seed, i).

    Args:
        out: output folder (created; files of the same names are replaced).
        num: number of clips.
        size: frame height and width in pixels (32..128).
        frames: frames per clip (any length >= 1).
        fps: frames per second.
        sample_rate: audio sample rate in Hz.
        seed: generator seed.
        min_objects: fewest moving objects per clip (1..4).
        max_objects: most moving objects per clip (1..4).
        pan_prob: probability that the camera pans (0..1).
        occlusion_prob: probability that a grey bar occludes part of the scene (0..1).
        progress: show a progress bar.
    """
    from videopoet.data.shapes import ShapesConfig, write_shapes
    from videopoet.errors import InputError

    if not isinstance(num, int) or num <= 0:
        raise InputError(f"--num must be a positive integer, got {num!r}")
    cfg = ShapesConfig(
        size=size,
        frames=frames,
        fps=fps,
        sample_rate=sample_rate,
        min_objects=min_objects,
        max_objects=max_objects,
        pan_prob=pan_prob,
        occlusion_prob=occlusion_prob,
    )
    manifest = write_shapes(out, num, cfg, seed=seed, progress=progress)
    print(
        f"wrote {num} clips ({size}x{size}, {frames} frames at {fps:g} fps, audio at {sample_rate} Hz, "
        f"seed {seed}) to {out}/clips"
    )
    print(f"manifest: {manifest}")
