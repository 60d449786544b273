"""Generation speed and long-video memory of the embedded default (issue 13).

    python benchmarks/bench_generate.py [--threads 2] [--repeats 3]

- CPU seconds per generated second of 64x64 video: t2v at batch 1 with classifier-free guidance
  (two rows), tokens -> frames included (VideoPoet's TPU figure: ~5 s per second of video); the
  process CPU time (all threads) and the wall time, each over the 17 / 8 = 2.125 s of video.
- Peak memory of `extend` to 60 s against 10 s (keep=False: frames are streamed to the mp4), each
  in a fresh process (ru_maxrss).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time


def _extend_peak(seconds: float, threads: int) -> dict:
    code = f"""
import resource, time, torch, json
torch.set_num_threads({threads})
from videopoet.tasks.pipeline import Pipeline
from videopoet.tasks.longvideo import extend
from videopoet.data.shapes import ShapesConfig, make_clip
pipe = Pipeline.from_pretrained(quiet=True)
clip = make_clip(ShapesConfig(), 7070, 0)
t = time.time()
extend(pipe, clip.video, {seconds}, "{tempfile.gettempdir()}/bench_extend.mp4", prompt=clip.caption, keep=False, quiet=True)
print(json.dumps({{"seconds": {seconds}, "wall_s": time.time() - t, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    from videopoet.tasks.pipeline import Pipeline

    pipe = Pipeline.from_pretrained(quiet=True)
    pipe.t2v("a small red circle moves slowly left", seed=0)  # warm-up (kernels built/loaded)
    video_s = pipe.settings.frames / pipe.settings.fps
    cpu, wall = [], []
    for k in range(a.repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        pipe.t2v("a large blue square moves quickly right and bounces", seed=k, guidance=2.0)
        cpu.append((time.process_time() - c0) / video_s)
        wall.append((time.perf_counter() - t0) / video_s)
    short, long = _extend_peak(10, a.threads), _extend_peak(60, a.threads)
    print(json.dumps({
        "threads": a.threads,
        "t2v_cpu_s_per_video_s": sorted(cpu), "t2v_wall_s_per_video_s": sorted(wall),
        "extend_10s": short, "extend_60s": long,
        "peak_memory_ratio_60s_vs_10s": long["peak_rss_mb"] / short["peak_rss_mb"],
    }, indent=1))


if __name__ == "__main__":
    main()
