"""Training throughput of the prefix LM: tokens/s and MFU, against transformers' LlamaForCausalLM.

Side by side in one process, repetitions interleaved (the machine is shared and noisy). One
training step = forward + loss + backward + AdamW step, fp32 on the CPU, for:
  ours           videopoet.lm.train.TrainStep on PrefixLM at a preset (prefix-LM mask: the first
                 --prefix tokens bidirectional, loss on the outputs only, as in training), with
                 make_optimizer's fused AdamW, eager
  ours+compile   the same with TrainStep(compile=True): forward + loss + backward compiled
  ours-unfused   eager, PyTorch's default AdamW (what the fused optimizer saves)
  transformers   LlamaForCausalLM of equal size (causal mask, loss on every position) with
                 torch.optim.AdamW's defaults: its standard training step
  transformers+compile  (--hf-compile) its forward + loss compiled with torch.compile, fused AdamW
The speed ratio is the median over repetitions of the paired ratio (transformers' step time over
ours in the same repetition). MFU = model FLOPs/s / the fp32 matmul peak measured in the same run (best of square matmuls,
same thread count). Model FLOPs per token = 6 N (non-embedding parameters) + 12 L d T (attention),
the same formula for both.

    .venv/bin/python benchmarks/bench_lm_train.py [--preset cpu] [--batch 4] [--seq 256] [--hf-compile]

The first step of each compiled contender (its compilation) is timed separately and printed.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_lm_decode import interleaved, llama_like  # noqa: E402

from videopoet.lm.pretrained import build_lm  # noqa: E402
from videopoet.lm.train import TrainStep, make_optimizer  # noqa: E402


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
    ap.add_argument("--hf-compile", action="store_true", help="also run transformers compiled, fused AdamW")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    ours, vocab = build_lm(args.preset)
    ref = llama_like(ours)
    B, T, P = args.batch, args.seq, args.prefix
    ids = torch.randint(256, vocab.size, (B, T))
    loss_mask = (torch.arange(T) >= P)[None].expand(B, T)

    def ours_step(compile: bool, fused: bool):
        m = copy.deepcopy(ours).train()  # one model per contender: same init, own optimizer state
        step = TrainStep(m, make_optimizer(m, 1e-4, fused=fused), compile=compile)
        return lambda: step(ids, loss_mask, prefix_len=P)

    def ref_step(compile: bool):
        m = copy.deepcopy(ref).train()
        opt = torch.optim.AdamW(m.parameters(), lr=1e-4, fused=True if compile else None)
        fwd = torch.compile(m) if compile else m

        def step():
            loss = fwd(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss

        return step

    contenders = {
        "ours": ours_step(False, True),
        "ours+compile": ours_step(True, True),
        "ours-unfused": ours_step(False, False),
        "transformers": ref_step(False),
    }
    if args.hf_compile:
        contenders["transformers+compile"] = ref_step(True)
    print(
        f"preset {args.preset}: ours {ours.num_params() / 1e6:.2f}M params, "
        f"LlamaForCausalLM {sum(p.numel() for p in ref.parameters()) / 1e6:.2f}M params"
    )
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.2f}")
    print(f"batch {B} x {T} tokens (prefix {P}), {args.reps} interleaved repetitions\n")
    peak = matmul_peak()
    for name, fn in contenders.items():  # warm-up; the first step of a compiled one compiles it
        t = time.perf_counter()
        fn()
        if "compile" in name:
            print(f"{name}: first step (compile) {time.perf_counter() - t:.1f} s", flush=True)
    times = interleaved(contenders, args.reps)
    peak = max(peak, matmul_peak())
    flops_tok = ours.flops_per_token(T)  # identical shapes -> identical model FLOPs
    print(
        f"fp32 matmul peak (1024^3, best): {peak / 1e9:.1f} GFLOP/s; model FLOPs/token {flops_tok / 1e6:.1f} M\n"
    )
    print(f"{'contender':<20} {'step s':>8} {'tokens/s':>10} {'MFU':>7} {'vs transformers':>16}")
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in times.items():
        tps = B * T / med[k]
        ratio = statistics.median(r / t for r, t in zip(times["transformers"], v, strict=True))  # paired
        print(f"{k:<20} {med[k]:>8.3f} {tps:>10.0f} {flops_tok * tps / peak:>7.1%} {ratio:>15.2f}x")
    print(f"\nload after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
