"""Where do a codec's clicks go? For every bounce click of shapes clips: the high-passed (> 2.6 kHz)
peak and energy within 25 ms of the click, round trip over original (medians, 10th-90th percentiles),
and the share whose peak reaches the click reader's threshold (0.1).

    python benchmarks/audio_click_energy.py [--model DIR] [--data shapes:24:5152:multi]

A ratio of energy near 1 with a low peak means the click is smeared in time; a low energy ratio
means it is lost.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from videopoet.data import shapes as S
from videopoet.eval.tokenizer_eval import load_eval_set
from videopoet.tokenizers.audio import AudioTokenizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="codec directory (default: the shipped one)")
    ap.add_argument("--data", default="shapes:24:5152:multi")
    a = ap.parse_args()
    from videopoet.assets import asset_dir

    tok = AudioTokenizer.from_pretrained(a.model or asset_dir("audio_tokenizer")).eval()
    sr = tok.config.sample_rate
    peak, energy, hit = [], [], []
    for it in load_eval_set(a.data, audio=True, sample_rate=sr).items:
        x = np.asarray(it.audio, np.float32).reshape(-1)
        with torch.no_grad():
            y = tok.decode(tok.encode(torch.from_numpy(x)[None, None]))[0, 0, : len(x)].numpy()
        y = np.pad(y, (0, len(x) - len(y)))
        hx, hy = S.click_band(x, sr), S.click_band(y, sr)
        w = int(0.025 * sr)
        for t in S.click_times(x, sr):
            lo, hi = max(0, int(t * sr) - w), min(len(x), int(t * sr) + w)
            peak.append(np.abs(hy[lo:hi]).max() / np.abs(hx[lo:hi]).max())
            energy.append((hy[lo:hi] ** 2).sum() / (hx[lo:hi] ** 2).sum())
            hit.append(np.abs(hy[lo:hi]).max() >= 0.1)
    p, e = np.array(peak), np.array(energy)
    print(f"{a.data}: {len(p)} clicks; peak ratio {np.median(p):.2f} [{np.percentile(p, 10):.2f}, {np.percentile(p, 90):.2f}], "
          f"energy ratio {np.median(e):.2f} [{np.percentile(e, 10):.2f}, {np.percentile(e, 90):.2f}], "
          f"peak >= 0.1: {np.mean(hit):.0%}")


if __name__ == "__main__":
    main()
