"""The decoding matmuls: videopoet's small-M kernel against PyTorch's F.linear (MKL) and against
the memory bandwidth measured in the same run.

One decoding step of the `cpu` LM preset multiplies M rows (one per sequence; twice that with
classifier-free guidance) by its 25 weight matrices (50 MB fp32; 6 layers x qkv, out, gate+up,
down, and the head). At small M that is bound by reading the weights, so the physical limit is
"read": summing every weight matrix once (the same bytes, no arithmetic to speak of). Contenders
run interleaved, each repetition timing one pass over the 25 matrices per contender; ratios are
medians of per-repetition ratios.

    .venv/bin/python benchmarks/bench_small_gemm.py [--rows 1 2 8 16] [--threads N] [--reps 30]

Columns: ms per pass, GB/s of weights, "vs F.linear" (speed-up) and "of read" (the fraction of
the read bandwidth reached).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from videopoet.lm import kernels
from videopoet.lm.pretrained import build_lm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 2, 8, 16])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not kernels.available():
        raise SystemExit("videopoet kernels unavailable (see the warning above)")
    model, _ = build_lm(args.preset)
    ws = [m.weight.detach() for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if model.head is None:
        ws.append(model.tok_emb.weight.detach())  # the tied head
    nbytes = sum(w.numel() * w.element_size() for w in ws)
    print(
        f"preset {args.preset}: {len(ws)} matrices, {nbytes / 1e6:.1f} MB fp32; torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, kernel vector width {kernels.vector_width()}, "
        f"load {os.getloadavg()[0]:.2f}\n"
    )
    print(f"{'rows':>4}  {'contender':<12} {'ms':>7} {'GB/s':>7} {'vs F.linear':>12} {'of read':>8}")
    for M in args.rows:
        xs = {K: torch.randn(M, K) for K in {w.shape[1] for w in ws}}
        for w in ws:  # same values (up to rounding) before timing anything
            x = xs[w.shape[1]]
            torch.testing.assert_close(
                torch.ops.videopoet.small_linear(x, w), F.linear(x, w), rtol=1e-4, atol=1e-4
            )

        def read():
            for w in ws:
                w.sum()

        def blas(xs=xs):
            for w in ws:
                F.linear(xs[w.shape[1]], w)

        def ours(xs=xs):
            for w in ws:
                torch.ops.videopoet.small_linear(xs[w.shape[1]], w)

        fns = {"read": read, "F.linear": blas, "small_linear": ours}
        for f in fns.values():
            f()
        times: dict[str, list[float]] = {k: [] for k in fns}
        with torch.no_grad():
            for _ in range(args.reps):
                for k, f in fns.items():
                    t = time.perf_counter()
                    f()
                    times[k].append(time.perf_counter() - t)
        for k, v in times.items():
            med = statistics.median(v)
            vs = statistics.median(b / t for b, t in zip(times["F.linear"], v, strict=True))
            of_read = statistics.median(r / t for r, t in zip(times["read"], v, strict=True))
            print(
                f"{M:>4}  {k:<12} {med * 1e3:>7.3f} {nbytes / med / 1e9:>7.1f} {vs:>11.2f}x {of_read:>7.0%}"
            )
    print(f"\nload after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
