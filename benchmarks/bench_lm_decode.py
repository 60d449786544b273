"""Decoding speed of the prefix LM against transformers' LlamaForCausalLM.generate at equal size.

Side by side in one process, repetitions interleaved (the machine is shared and noisy): for each
batch size, every repetition times each contender once, in turn; the table reports the median
tokens/s and ratios of medians.

Contenders (same weights shape: the `cpu` preset, ~13M parameters, fp32):
  ours           KV cache, sampling over the full vocabulary (equal work to transformers)
  ours+legal     KV cache, decoding constrained to the visual range (what a t2v prompt does)
  ours-nocache   our model recomputing the whole sequence at every step (batch 1 by default)
  ours+compile   generate(compile=True): the shape-static decoding step compiled by torch.compile
                 (videopoet/lm/fast_decode.py); "+legal" as above
  transformers   LlamaForCausalLM.generate(do_sample=True, top_k=0), its default DynamicCache
  transformers+compile  (--hf-compile) the same with cache_implementation="static" and its
                 forward compiled by generate (CompileConfig()._compile_all_devices = True on CPU)
  floor          only the model's weight matmuls for each token through F.linear (MKL), no
                 attention, norms, sampling or Python
  read           only reading every weight matrix once per token (a sum over each): the memory-
                 bandwidth bound of a decoding step at small batch, whatever the matmul kernel

    .venv/bin/python benchmarks/bench_lm_decode.py [--preset cpu] [--batch 1 8] [--new 128] [--threads N]
        [--no-compile] [--hf-compile]

The first call of each compiled contender (its compilation, with inductor's on-disk cache as it is
at that moment) is timed separately and printed as "compile s"; it is not in the tokens/s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from videopoet.lm import kernels
from videopoet.lm.generate import Prompt, generate
from videopoet.lm.pretrained import build_lm


def llama_like(model):
    from transformers import LlamaConfig, LlamaForCausalLM

    c = model.cfg
    lc = LlamaConfig(
        vocab_size=c.vocab_size,
        hidden_size=c.d_model,
        intermediate_size=c.mlp_hidden,
        num_hidden_layers=c.n_layers,
        num_attention_heads=c.n_heads,
        num_key_value_heads=c.n_kv_heads,
        max_position_embeddings=c.max_seq_len,
        rms_norm_eps=c.norm_eps,
        rope_theta=c.rope_theta,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(lc).eval()


def interleaved(contenders: dict, reps: int) -> dict[str, list[float]]:
    """Seconds per call of each contender; every repetition runs each contender once, in turn."""
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(reps):
        for name, fn in contenders.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return times


def measure(ours, ref, vocab, B: int, args) -> dict[str, tuple[float, float]]:
    """(median tokens/s, median over repetitions of the speed ratio to transformers in the same
    repetition) for each contender at batch B."""
    V = vocab.size
    ids = torch.randint(256, V, (B, args.prompt))
    full = Prompt(ids, torch.ones_like(ids, dtype=torch.bool), torch.tensor([[0, V]] * args.new))
    vis = Prompt(ids, full.key_valid, torch.tensor([list(vocab.visual_range())] * args.new))

    def run_ref(**extra):
        with torch.no_grad():
            out = ref.generate(
                **extra,
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=args.new,
                min_new_tokens=args.new,
                do_sample=True,
                top_k=0,
                top_p=1.0,
                temperature=1.0,
                pad_token_id=0,
                eos_token_id=None,
            )
        assert out.shape[1] == args.prompt + args.new

    linears = [mod.weight for mod in ours.modules() if isinstance(mod, torch.nn.Linear)]
    xs = {w.shape[1]: torch.randn(B, w.shape[1]) for w in linears}

    @torch.no_grad()
    def floor():  # the weight matmuls alone, once per generated token: what no overhead would give
        for _ in range(args.new):
            for w in linears:
                torch.nn.functional.linear(xs[w.shape[1]], w)

    @torch.no_grad()
    def read():  # the weights streamed once per token, no arithmetic to speak of
        for _ in range(args.new):
            for w in linears:
                w.sum()

    contenders = {
        "read": read,
        "floor": floor,
        "ours": lambda: generate(ours, full, seed=0, compile=False),  # explicit: None would compile
        "ours+legal": lambda: generate(ours, vis, seed=0, compile=False),  # once a graph exists
        "transformers": run_ref,
    }
    if B in args.nocache_batch:
        contenders["ours-nocache"] = lambda: generate(ours, full, seed=0, use_cache=False, compile=False)
    if args.compile:
        contenders["ours+compile"] = lambda: generate(ours, full, seed=0, compile=True)
        contenders["ours+compile+legal"] = lambda: generate(ours, vis, seed=0, compile=True)
    if args.hf_compile:
        from transformers import CompileConfig

        cc = CompileConfig()  # its defaults (mode "reduce-overhead": no CUDA graphs on CPU)
        cc._compile_all_devices = True  # generate compiles only on accelerators otherwise
        contenders["transformers+compile"] = lambda: run_ref(cache_implementation="static", compile_config=cc)
    contenders["ours"](), contenders["transformers"]()  # warm-up (allocator, lazy imports)
    for name in ("ours+compile", "transformers+compile"):
        if name in contenders:  # first call = compilation (+ one run), reported, not timed below
            t = time.perf_counter()
            contenders[name]()
            print(f"batch {B}: {name} first call (compile) {time.perf_counter() - t:.1f} s", flush=True)
    times = interleaved(contenders, args.reps)
    ref_t = times["transformers"]
    return {
        k: (
            B * args.new / statistics.median(v),
            statistics.median(r / t for r, t in zip(ref_t, v, strict=True)),
        )
        for k, v in times.items()
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--prompt", type=int, default=64, help="prefix length")
    ap.add_argument("--new", type=int, default=128, help="tokens generated per row")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument(
        "--nocache-batch",
        type=int,
        nargs="*",
        default=[1],
        help="batch sizes that also run our no-cache decoding",
    )
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--no-compile", dest="compile", action="store_false", help="skip ours+compile")
    ap.add_argument(
        "--hf-compile", action="store_true", help="also run transformers with a static cache + compile"
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    ours, vocab = build_lm(args.preset)
    ours.eval()
    ref = llama_like(ours)
    n_ours, n_ref = ours.num_params(), sum(p.numel() for p in ref.parameters())
    print(
        f"preset {args.preset}: ours {n_ours / 1e6:.2f}M params, LlamaForCausalLM {n_ref / 1e6:.2f}M params"
    )
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"C++ kernels vector width {kernels.vector_width()}, load {os.getloadavg()[0]:.2f}"
    )
    print(
        f"prompt {args.prompt} tokens, {args.new} new tokens per row, {args.reps} interleaved repetitions\n"
    )

    rows = []
    for B in args.batch:
        tps = measure(ours, ref, vocab, B, args)
        rows += [(B, k, t, r) for k, (t, r) in tps.items()]

    print(f"{'batch':>5}  {'contender':<20} {'tokens/s':>10}  {'vs transformers':>15}")
    for B, k, t, r in rows:
        print(f"{B:>5}  {k:<20} {t:>10.1f}  {r:>14.2f}x")
    print(f"\nload after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
