"""Structure videos for stylization: motion and shape as a 3-channel clip the video tokenizer encodes.

VideoPoet conditions stylization on optical flow and depth. Here a structure video packs, per
frame, three channels in [-1, 1]:
  0, 1: forward optical flow (dx, dy) in pixels, divided by FLOW_SCALE and clipped;
  2:    depth (nearer = higher) when known, else an edge map (Canny).
Sources, in order of preference: ground truth (the shapes benchmark's flow and depth), OpenCV
Farneback flow on the frames plus depth from a user-supplied depth model (the tasks layer), or
Farneback flow plus edges. `structure_video` says which was used.
"""

from __future__ import annotations

import numpy as np

FLOW_SCALE = 4.0  # pixels per frame at 64x64 that map to +-1 (the shapes' fast objects move ~3.5)


def farneback_flow(frames: np.ndarray) -> np.ndarray:
    """uint8 (T, H, W, 3) -> (T, 2, H, W) float32 forward flow; the last frame repeats the one before."""
    import cv2

    grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    t, h, w = len(frames), frames.shape[1], frames.shape[2]
    flow = np.zeros((t, 2, h, w), np.float32)
    for i in range(t - 1):
        f = cv2.calcOpticalFlowFarneback(grey[i], grey[i + 1], None, 0.5, 3, 9, 3, 5, 1.1, 0)
        flow[i] = f.transpose(2, 0, 1)
    if t > 1:
        flow[-1] = flow[-2]
    return flow


def edges(frames: np.ndarray) -> np.ndarray:
    """uint8 (T, H, W, 3) -> (T, H, W) float32 in [0, 1]: Canny edges, slightly blurred."""
    import cv2

    out = np.empty(frames.shape[:3], np.float32)
    for i, f in enumerate(frames):
        e = cv2.Canny(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), 60, 150).astype(np.float32) / 255.0
        out[i] = cv2.GaussianBlur(e, (3, 3), 0)
    return out


def structure_video(frames: np.ndarray, *, flow: np.ndarray | None = None,
                    depth: np.ndarray | None = None) -> tuple[np.ndarray, str]:
    """uint8 (T, H, W, 3) frames [+ (T, 2, H, W) flow, (T, H, W) depth in [0, 1], 1 = far] ->
    (uint8 (T, H, W, 3) structure video, description of the sources used)."""
    used = []
    if flow is None:
        flow, _ = farneback_flow(frames), used.append("flow: OpenCV Farneback")
    else:
        used.append("flow: given")
    if depth is not None:
        third = 1.0 - np.clip(depth, 0.0, 1.0)  # nearer = brighter
        used.append("depth: given")
    else:
        third = edges(frames)
        used.append("edges: OpenCV Canny (no depth given)")
    f = np.clip(flow / FLOW_SCALE, -1.0, 1.0)
    packed = np.stack([f[:, 0], f[:, 1], third * 2 - 1], -1)  # (T, H, W, 3) in [-1, 1]
    return np.clip(np.rint((packed + 1) * 127.5), 0, 255).astype(np.uint8), "; ".join(used)
