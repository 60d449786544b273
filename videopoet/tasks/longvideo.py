"""Long video by chained continuation, streamed to the output as it is made.

Each step decodes nothing it has not shown yet and re-encodes, from pixels, the last
`1 + (k - 1) * temporal_compression` frames written so far as a fresh clip (k = the context
latent frames of frame prediction, 2 for the shipped models: 5 frames, 0.6 s at 8 fps). A causal
tokenizer encodes a clip's first frame alone, so the tail tokens of a generated sequence are not
what the LM saw as context in training; the re-encoded tail is. The LM writes the clip's remaining
latent frames; the context and the new codes are decoded together (the decoder is causal too, so
the new frames follow on from the context), and only the new frames are appended.

Drift control (DESIGN.md "Long video"): the first chunk's first latent frame is given to every
step as `<source:anchor>` (the LM was trained with a clean anchor beside a context whose codes are
partly replaced, so it learns to restore what drifted); `anchor=False` gives the naive chain.
Measured with videopoet/eval/drift.py (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from videopoet.errors import InputError


def extend_chunks(pipe, video: Any, seconds: float, *, prompt: str | None = None, anchor: bool = True,
                  seed: int | None = 0, anchor_guidance: bool | None = None, **kw) -> Iterator[np.ndarray]:
    """Yield uint8 (n, H, W, 3) frame chunks: first the input video, then each continuation, until
    `seconds` of video have been yielded in all (the input counts; the last chunk is cut)."""
    s = pipe.settings
    if not seconds > 0:
        raise InputError(f"--seconds: expected > 0, got {seconds}")
    notes: list[str] = []
    tc = pipe.vt.config.temporal_compression
    n_ctx = 1 + (s.context_frames - 1) * tc
    v = pipe._video(video, "video", notes)
    if len(v) < n_ctx:
        raise InputError(f"video: needs at least {n_ctx} frames to continue from, got {len(v)}")
    target = int(round(seconds * s.fps))
    text = pipe._text(prompt)
    anchor_codes = pipe.encode_video(v[:1])[:1] if anchor else None
    yield v
    done, tail, step = len(v), v[-n_ctx:], 0
    while done < target:
        ctx = pipe.encode_video(tail)
        new_codes, _ = pipe._continue_codes(ctx, text, anchor_codes, notes, None,
                                            None if seed is None else seed + step, dict(kw),
                                            anchor_guidance=anchor_guidance)
        frames = pipe.decode_video(torch.cat([ctx, new_codes]))[n_ctx : s.frames][: target - done]
        yield frames
        done += len(frames)
        tail = np.concatenate([tail, frames])[-n_ctx:]
        step += 1


class StreamWriter:
    """Frames appended chunk by chunk to a fragmented MP4 (H.264): the file plays while it grows,
    and memory does not grow with the length."""

    def __init__(self, path: str | Path, fps: float, size: tuple[int, int]):
        import av

        from videopoet.data.writers import _rate

        self.path = Path(path)
        if self.path.suffix.lower() not in (".mp4", ".mov", ".m4v"):
            raise InputError(f"{self.path}: streaming writes .mp4")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rate = _rate(fps)
        self.out = av.open(str(self.path), mode="w", format="mp4",
                           container_options={"movflags": "frag_keyframe+empty_moov+default_base_moof"},
                           options={"flush_packets": "1"})
        self.stream = self.out.add_stream("libx264", rate=self.rate)
        h, w = size
        self.stream.width, self.stream.height = w + w % 2, h + h % 2
        self.stream.pix_fmt = "yuv420p"
        # no look-ahead (zerolatency): each frame's packet comes out when it goes in; every chunk
        # starts with a keyframe, which closes the fragment of the chunk before
        self.stream.options = {"crf": "18", "preset": "medium", "tune": "zerolatency"}
        self.n = 0

    def write(self, frames: np.ndarray) -> None:
        from fractions import Fraction

        import av

        from videopoet.data.writers import _even_pad

        for k, img in enumerate(_even_pad(frames)):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            vf.pts, vf.time_base = self.n, Fraction(1) / self.rate
            if k == 0:
                vf.pict_type = av.video.frame.PictureType.I
            self.out.mux(self.stream.encode(vf))
            self.n += 1

    def close(self) -> None:
        self.out.mux(self.stream.encode(None))
        self.out.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def extend(pipe, video: Any, seconds: float, out: str | Path | None = None, *, prompt: str | None = None,
           anchor: bool = True, seed: int | None = 0, on_chunk: Callable[[int, np.ndarray], None] | None = None,
           keep: bool = True, quiet: bool = False, **kw) -> np.ndarray | None:
    """Continue `video` to `seconds` of video. out: an .mp4 written as the chunks come (streamed);
    on_chunk(i, frames) is called for each chunk; keep=False returns None instead of every frame
    (for long outputs: memory then stays flat)."""
    writer = None
    kept: list[np.ndarray] = []
    try:
        for i, frames in enumerate(extend_chunks(pipe, video, seconds, prompt=prompt, anchor=anchor, seed=seed, **kw)):
            if writer is None and out is not None:
                writer = StreamWriter(out, pipe.settings.fps, frames.shape[1:3])
            if writer is not None:
                writer.write(frames)
            if on_chunk is not None:
                on_chunk(i, frames)
            if keep:
                kept.append(frames)
            if not quiet and i:
                print(f"extend: chunk {i}, {sum(len(k) for k in kept) if keep else '?'} frames", file=sys.stderr)
    finally:
        if writer is not None:
            writer.close()
    return np.concatenate(kept) if keep else None
