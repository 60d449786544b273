"""LFQ at K = 18: our factorized entropy (2 x 2^9 sub-codebooks) vs vector-quantize-pytorch's LFQ
with one dense 2^18 codebook, on the same latent batch.

One "training step" = quantize + entropy/commitment terms + backward to the latent. Each
(implementation, size) runs in a fresh subprocess (one thread) so its peak memory is its own:
peak RSS during the step minus RSS just before it. A watchdog kills a run whose RSS passes
--limit-gb (default 8) and reports it as "did not fit".

    .venv/bin/python benchmarks/bench_lfq.py                    # sizes: 1 x (5, 4, 4), (5, 8, 8), (5, 16, 16)
    .venv/bin/python benchmarks/bench_lfq.py --sizes 5x16x16 --batch 2

The paper's latent for one 17x128x128 clip is (18, 5, 16, 16) = 1,280 tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CHILD = r"""
import json, os, resource, sys, time
import torch
torch.set_num_threads(1)
impl, b, t, h, w, steps = sys.argv[1], *map(int, sys.argv[2:7])
K = 18
def rss_kb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
if impl == "ours":
    from videopoet.tokenizers.lfq import LFQ
    q = LFQ(K, group_bits=9)
    def step(z):
        o = q(z)
        loss = 0.1 * (o.per_sample_entropy - o.batch_entropy) + 0.25 * o.commitment + o.quantized.sum() * 0
        loss.backward()
        return o.codes
else:
    from vector_quantize_pytorch import LFQ
    q = LFQ(dim=K, codebook_size=2 ** K, entropy_loss_weight=0.1, commitment_loss_weight=0.25).train()
    def step(z):
        o = q(z)
        (o.entropy_aux_loss + o.quantized.sum() * 0).backward()
        return o.indices
g = torch.Generator().manual_seed(0)
z = (torch.randn(b, K, t, h, w, generator=g) * 0.5).requires_grad_(True)
base = rss_kb()
times = []
for _ in range(steps):
    z.grad = None
    t0 = time.perf_counter()
    step(z)
    times.append(time.perf_counter() - t0)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"time_s": min(times), "peak_mb": (peak - base) / 1024, "tokens": b * t * h * w}))
"""


def run(impl: str, b: int, t: int, h: int, w: int, steps: int, limit_gb: float, timeout: float) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-c", CHILD, impl, str(b), str(t), str(h), str(w), str(steps)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    start, peak = time.time(), 0
    while p.poll() is None:
        try:
            with open(f"/proc/{p.pid}/status") as f:
                rss = next(int(x.split()[1]) for x in f if x.startswith("VmRSS:"))
            peak = max(peak, rss)
        except (FileNotFoundError, StopIteration, ProcessLookupError):
            pass
        if peak > limit_gb * 1024**2:
            p.kill()
            p.wait()
            return {"status": f"did not fit: RSS passed {limit_gb} GB"}
        if time.time() - start > timeout:
            p.kill()
            p.wait()
            return {"status": f"timed out after {timeout:.0f} s"}
        time.sleep(0.02)
    out, err = p.communicate()
    if p.returncode != 0:
        return {"status": f"failed ({err.strip().splitlines()[-1] if err.strip() else p.returncode})"}
    return {"status": "ok", **json.loads(out.strip().splitlines()[-1])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["5x4x4", "5x8x8", "5x16x16"], help="latent t x h x w")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=2, help="steps per run (the fastest is reported)")
    ap.add_argument("--limit-gb", type=float, default=8.0)
    ap.add_argument("--timeout", type=float, default=600.0)
    args = ap.parse_args()
    rows = []
    for size in args.sizes:
        t, h, w = map(int, size.split("x"))
        ours = run("ours", args.batch, t, h, w, args.steps, args.limit_gb, args.timeout)
        dense = run("vqp", args.batch, t, h, w, args.steps, args.limit_gb, args.timeout)
        row = {"latent": f"{args.batch}x18x{size}", "tokens": args.batch * t * h * w, "ours": ours, "vqp_dense": dense}
        if ours["status"] == dense["status"] == "ok":
            row["time_ratio"] = dense["time_s"] / ours["time_s"]
            row["memory_ratio"] = dense["peak_mb"] / max(ours["peak_mb"], 1e-3)
        rows.append(row)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
