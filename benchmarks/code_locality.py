"""Where the video tokenizer's codes change: next to the pixels that change, or far from them.

For shapes clips, every latent frame t >= 2 is compared with frame t - 1 code by code; a 4 x 4
latent cell "has changed pixels" when any of its pixels moved by more than 8 (of 255) in any channel
between consecutive video frames of the four frames the two latent frames cover (2t - 3 .. 2t).
Reported: the share of cells with changed pixels and of cells next to them, the share of codes
that change, and where the changed codes are (in cells with changed pixels, next to them, further).
A static clip (the first frame repeated) is encoded too: its codes must not change at all.
`--hysteresis TAU` encodes with a trial rule: a bit keeps its value from the latent frame before
wherever its latent is within TAU of zero (the round trip's PSNR is printed, to see its cost).
`--tokenizer DIR` measures another video tokenizer (a training run's checkpoints/step_N/ema).

    python benchmarks/code_locality.py [--model DIR] [--tokenizer DIR] [--data shapes:24:7373:single] [--hysteresis TAU]
"""

from __future__ import annotations

import argparse

import numpy as np


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="pipeline directory (default: the embedded one)")
    ap.add_argument("--tokenizer", default=None, help="video tokenizer directory (default: the pipeline's)")
    ap.add_argument("--data", default="shapes:24:7373:single")
    ap.add_argument("--hysteresis", type=float, default=0.0)
    a = ap.parse_args(argv)

    import torch
    from scipy import ndimage

    from videopoet.data.media import tensor_to_video, video_to_tensor
    from videopoet.eval.tasks_eval import _psnr, shapes_jobs
    from videopoet.tasks.pipeline import Pipeline

    p = Pipeline.from_pretrained(a.model) if a.model else Pipeline.from_pretrained()
    if a.tokenizer:
        from videopoet.tokenizers.video import VideoTokenizer

        p.vt = VideoTokenizer.from_pretrained(a.tokenizer).eval()

    @torch.no_grad()
    def encode(v: np.ndarray) -> np.ndarray:
        z = p.vt.encode_latent(video_to_tensor(v)[None])  # (1, K, t, h, w)
        bits = z > 0
        for t in range(1, z.shape[2]):
            bits[:, :, t] = torch.where(z[:, :, t].abs() < a.hysteresis, bits[:, :, t - 1], bits[:, :, t])
        return (bits.long().movedim(1, -1) * p.vt.quantizer.powers).sum(-1)[0].numpy()

    s = p.settings
    jobs = shapes_jobs(a.data, frames=s.frames, size=s.size, fps=s.fps, sample_rate=16000)
    where, share, static, psnr = np.zeros(3), np.zeros(3), [], []
    n = 0
    for j in jobs:
        v = np.asarray(j.video)
        c = encode(v)
        still = encode(np.repeat(v[:1], len(v), 0))
        with torch.no_grad():
            psnr.append(_psnr(tensor_to_video(p.vt.decode(torch.from_numpy(c)[None]))[: len(v)], v))
        static.append(float(np.mean([(still[t] != still[t - 1]).mean() for t in range(1, still.shape[0])])))
        fy, fx = v.shape[1] // c.shape[1], v.shape[2] // c.shape[2]
        vi = v.astype(np.int16)
        for t in range(2, c.shape[0]):
            pix = np.zeros(v.shape[1:3], bool)
            for f in range(2 * t - 3, min(2 * t + 1, len(v))):
                pix |= np.abs(vi[f] - vi[f - 1]).max(-1) > 8
            cell = pix.reshape(c.shape[1], fy, c.shape[2], fx).any((1, 3))
            near = ndimage.binary_dilation(cell) & ~cell
            ch = c[t] != c[t - 1]
            where += [ch[cell].sum(), ch[near].sum(), ch[~cell & ~near].sum()]
            share += [cell.mean(), near.mean(), ch.mean()]
            n += 1
    share /= n
    print(f"{a.data}: {len(jobs)} clips, latent frames t >= 2 against t - 1, hysteresis {a.hysteresis}")
    print(f"  cells with changed pixels {share[0]:.3f}, next to them {share[1]:.3f}; codes changed {share[2]:.3f}")
    print(f"  changed codes: in cells with changed pixels {where[0] / where.sum():.2f}, next to them "
          f"{where[1] / where.sum():.2f}, further {where[2] / where.sum():.2f}")
    print(f"  static clip (first frame repeated): codes changed {np.mean(static):.3f}")
    print(f"  round-trip PSNR {np.mean(psnr):.2f} dB")


if __name__ == "__main__":
    main()
