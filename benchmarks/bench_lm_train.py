"""Training throughput of the prefix LM: tokens/s and MFU, against transformers' LlamaForCausalLM.

Side by side in one process, repetitions interleaved (the machine is shared and noisy). One
training step = forward + loss + backward + AdamW step, fp32 on the CPU, for:
  ours           PrefixLM at a preset (prefix-LM mask: the first --prefix tokens bidirectional,
                 loss on the outputs only, as in training)
  transformers   LlamaForCausalLM of equal size (causal mask, loss on every position: its
                 standard training step)
The speed ratio is the median over repetitions of the paired ratio (transformers' step time over
ours in the same repetition). MFU = model FLOPs/s / the fp32 matmul peak measured in the same run (best of square matmuls,
same thread count). Model FLOPs per token = 6 N (non-embedding parameters) + 12 L d T (attention),
the same formula for both.

    .venv/bin/python benchmarks/bench_lm_train.py [--preset cpu] [--batch 4] [--seq 256]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_lm_decode import llama_like  # noqa: E402

from videopoet.lm.model import prefix_lm_loss  # noqa: E402
from videopoet.lm.pretrained import build_lm  # noqa: E402


def matmul_peak(n: int = 1024, reps: int = 5) -> float:
    """Best fp32 FLOP/s of an n x n x n matmul."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = 0.0
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - t))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--prefix", type=int, default=64, help="prefix length (bidirectional, no loss)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    ours, vocab = build_lm(args.preset)
    ref = llama_like(ours)
    ours.train()
    ref.train()
    B, T, P = args.batch, args.seq, args.prefix
    ids = torch.randint(256, vocab.size, (B, T))
    loss_mask = (torch.arange(T) >= P)[None].expand(B, T)
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=1e-4)
    opt_ref = torch.optim.AdamW(ref.parameters(), lr=1e-4)

    def step_ours():
        h = ours(ids, prefix_len=P)
        loss = prefix_lm_loss(ours, h, ids, loss_mask)
        loss.backward()
        opt_ours.step()
        opt_ours.zero_grad(set_to_none=True)
        return loss

    def step_ref():
        loss = ref(input_ids=ids, labels=ids).loss
        loss.backward()
        opt_ref.step()
        opt_ref.zero_grad(set_to_none=True)
        return loss

    print(
        f"preset {args.preset}: ours {ours.num_params() / 1e6:.2f}M params, "
        f"LlamaForCausalLM {sum(p.numel() for p in ref.parameters()) / 1e6:.2f}M params"
    )
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.2f}")
    print(f"batch {B} x {T} tokens (prefix {P}), {args.reps} interleaved repetitions\n")
    peak = matmul_peak()
    step_ours(), step_ref()  # warm-up
    times: dict[str, list[float]] = {"ours": [], "transformers": []}
    for _ in range(args.reps):
        for name, fn in (("ours", step_ours), ("transformers", step_ref)):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    peak = max(peak, matmul_peak())
    flops_tok = ours.flops_per_token(T)  # identical shapes -> identical model FLOPs
    print(
        f"fp32 matmul peak (1024^3, best): {peak / 1e9:.1f} GFLOP/s; model FLOPs/token {flops_tok / 1e6:.1f} M\n"
    )
    print(f"{'contender':<14} {'step s':>8} {'tokens/s':>10} {'MFU':>7} {'vs transformers':>16}")
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in times.items():
        tps = B * T / med[k]
        ratio = statistics.median(r / t for r, t in zip(times["transformers"], v, strict=True))  # paired
        print(f"{k:<14} {med[k]:>8.3f} {tps:>10.0f} {flops_tok * tps / peak:>7.1%} {ratio:>15.2f}x")
    print(f"\nload after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
