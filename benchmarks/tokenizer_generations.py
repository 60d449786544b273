"""Generational loss of the video tokenizer: what repeated round trips keep.

Chained long video (`generate extend`) decodes each chunk and re-encodes its tail from pixels as
the next chunk's context, so whatever one round trip changes, the next one changes again. This
measures round trips chained on shapes clips with ground truth, with no LM involved:

- codes kept: the share of codes that encode(decode(codes)) leaves unchanged, per generation;
- PSNR of generation g against the original clip;
- read-back: each object's colour / shape / direction in generation g against the original's
  (videopoet/eval/readback.py, as `videopoet tokenizer eval` reports for generation 1).

    python benchmarks/tokenizer_generations.py --data shapes:40:5151:single --generations 4 [--model DIR] [--json F]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def generations(model, clips: list, attributes: list[dict], n: int) -> dict[str, list[float]]:
    from videopoet.data.media import tensor_to_video, video_to_tensor
    from videopoet.eval.readback import video_readback_agreement
    from videopoet.eval.tasks_eval import _psnr  # the uint8-frame PSNR the drift measures use

    out: dict[str, list[float]] = {"codes_kept": [], "psnr": [], "agree_colour": [], "agree_shape": [],
                                   "agree_direction": [], "agree_all": []}
    current = list(clips)
    prev_codes = None
    for _ in range(n):
        codes, frames = [], []
        with torch.no_grad():
            for v in current:
                c = model.encode(video_to_tensor(v)[None])
                codes.append(c)
                frames.append(tensor_to_video(model.decode(c)[0])[: len(v)])
        if prev_codes is not None:
            out["codes_kept"].append(float(np.mean([(a == b).float().mean().item() for a, b in zip(prev_codes, codes, strict=True)])))
        prev_codes = codes
        out["psnr"].append(float(np.mean([_psnr(f, o) for f, o in zip(frames, clips, strict=True)])))
        rb = video_readback_agreement(clips, frames, attributes)
        for k in ("agree_colour", "agree_shape", "agree_direction", "agree_all"):
            out[k].append(rb[k])
        current = frames
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="shapes:40:5151:single", help="shapes:N[:SEED[:single|multi]]")
    ap.add_argument("--model", default=None, help="video tokenizer directory (default: the shipped one)")
    ap.add_argument("--generations", type=int, default=4)
    ap.add_argument("--json", default=None, help="append the result as one JSON line to this file")
    a = ap.parse_args()

    from videopoet.assets import asset_dir
    from videopoet.eval.tasks_eval import shapes_jobs
    from videopoet.tokenizers.video import VideoTokenizer

    model = VideoTokenizer.from_pretrained(a.model or asset_dir("video_tokenizer")).eval()
    jobs = shapes_jobs(a.data)
    r = generations(model, [j.video for j in jobs], [j.attributes for j in jobs], a.generations)
    r = {"data": a.data, "model": a.model or "default", **r}
    for k, v in r.items():
        print(f"{k:16s} {v if isinstance(v, str) else ' '.join(f'{x:.3f}' for x in v)}")
    if a.json:
        with open(a.json, "a") as f:
            f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
