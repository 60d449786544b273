"""Video tokenizer benchmarks.

throughput: encode + decode frames/s and peak memory of the `cpu` and `magvit2-128` presets (random
  weights: speed does not depend on them), one thread, each preset in its own subprocess. Each is
  also given as a fraction of the machine's fp32 matmul rate measured in the same run (FLOPs of the
  pass counted with torch's FlopCounterMode on the meta device).
eval: reconstruction of held-out clips by a trained tokenizer vs 4x bicubic down/up-sampling of the
  same frames: PSNR, SSIM (per frame), codebook usage and perplexity. Held out: the real clip
  carphone (never trained on), and shapes clips from a seed the training never used.

    .venv/bin/python benchmarks/bench_video_tokenizer.py throughput
    .venv/bin/python benchmarks/bench_video_tokenizer.py eval [--model DIR]   # default: shipped model
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CHILD = r"""
import json, resource, sys, time
import torch
torch.set_num_threads(1)
from torch.utils.flop_counter import FlopCounterMode
from videopoet.tokenizers.video import VideoTokenizer
from videopoet.tokenizers.video_train import load_train_config
preset, frames, size, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
cfg = load_train_config(f"tokenizer/{preset}").model
def rss_kb():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
with torch.device("meta"):
    meta = VideoTokenizer(cfg)
    with FlopCounterMode(display=False) as fc:
        z = meta.encoder(torch.empty(1, 3, frames, size, size))
        meta.decoder(z)
flops = fc.get_total_flops()
a = torch.randn(1024, 1024); b = torch.randn(1024, 1024)
for _ in range(3): a @ b
t0 = time.perf_counter(); n = 20
for _ in range(n): a @ b
mm_flops_s = 2 * 1024**3 * n / (time.perf_counter() - t0)
torch.manual_seed(0)
model = VideoTokenizer(cfg).eval()
x = torch.rand(1, 3, frames, size, size) * 2 - 1
base = rss_kb()
times = []
with torch.no_grad():
    for _ in range(reps):
        t0 = time.perf_counter()
        model.decode(model.encode(x))
        times.append(time.perf_counter() - t0)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
best = min(times)
print(json.dumps({"preset": preset, "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
                  "input": f"1x3x{frames}x{size}x{size}", "seconds": best, "frames_per_s": frames / best,
                  "peak_mb": (peak - base) / 1024, "gflop": flops / 1e9, "gflop_s": flops / best / 1e9,
                  "matmul_gflop_s": mm_flops_s / 1e9, "fraction_of_matmul": flops / best / mm_flops_s}))
"""


def throughput(args: argparse.Namespace) -> list[dict]:
    rows = []
    for preset, frames, size in (("cpu", 17, 64), ("magvit2-128", args.paper_frames, 128)):
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        p = subprocess.run([sys.executable, "-c", CHILD, preset, str(frames), str(size), str(args.reps)],
                           capture_output=True, text=True, env=env, timeout=3600)
        if p.returncode != 0:
            rows.append({"preset": preset, "status": f"failed: {p.stderr.strip().splitlines()[-1:]}"})
        else:
            rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    if all("frames_per_s" in r for r in rows):
        print(json.dumps({"cpu_over_magvit2_frames_per_s": rows[0]["frames_per_s"] / rows[1]["frames_per_s"]}))
    return rows


def evaluate_heldout(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(1)
    from videopoet.data.shapes import ShapesDataset
    from videopoet.tokenizers.cli_video import load_video_tokenizer
    from videopoet.tokenizers.video_train import evaluate, load_sample_clips, windows

    tok = load_video_tokenizer(args.model)
    size, frames = tok.config.resolution, tok.config.frames
    t0 = time.time()
    real = load_sample_clips(size, 8.0, ["carphone"], want_held_out=True)
    out = {}
    for name, video in real.items():
        # 17-frame windows at 8 fps; stride 15 covers the whole 32-frame clip in two windows
        clips = windows(video, frames, stride=15)
        out[f"real:{name}"] = evaluate(tok, clips)
    shapes = ShapesDataset(args.shapes, seed=args.shapes_seed, ground_truth=False, size=size, frames=frames, fps=8.0)
    out[f"shapes:seed{args.shapes_seed}x{args.shapes}"] = evaluate(tok, [shapes[i]["video"] for i in range(len(shapes))])
    for k, v in out.items():
        print(json.dumps({"set": k, **v}), flush=True)
    print(f"# eval took {time.time() - t0:.0f} s", file=sys.stderr)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=["throughput", "eval"])
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--paper-frames", type=int, default=5, help="frames for the magvit2-128 pass (17 takes minutes on one core)")
    ap.add_argument("--model", default=None, help="tokenizer directory for eval (default: the shipped one)")
    ap.add_argument("--shapes", type=int, default=16, help="held-out shapes clips")
    ap.add_argument("--shapes-seed", type=int, default=1000)
    args = ap.parse_args()
    if args.part == "throughput":
        throughput(args)
    else:
        evaluate_heldout(args)


if __name__ == "__main__":
    main()
