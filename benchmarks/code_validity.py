"""Does the LM sample codes the video tokenizer makes? The share of sampled visual codes that never
occur in the tokenized training clips, and their sub-token statistics.

The LM's factorized visual head predicts an LFQ code as two halves (high and low bits). The video
tokenizer uses few of the 2^K codes and its halves are far from independent; a head that samples
the halves independently can pair them into codes the tokenizer never makes (measured: rarely, see
benchmarks/RESULTS.md, session 14). `LMConfig.visual_pair_bias` draws the low half given the high one.

    python benchmarks/code_validity.py --shards SHARDS [--lm DIR ...] [--task t2i] [--prompts shapes:24:7171]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def code_set(shards: str | Path, hi_bits: int, lo_bits: int) -> tuple[np.ndarray, float]:
    """(bool mask over the 2^K codes: made by the tokenizer on these shards, mutual information of
    the halves in nats)."""
    from videopoet.data.shards import ShardReader
    from videopoet.lm.pretrain import visual_code_counts

    counts = visual_code_counts(ShardReader(shards), hi_bits + lo_bits)
    p = counts.reshape(1 << hi_bits, 1 << lo_bits) / counts.sum()

    def entropy(q):
        q = q[q > 0]
        return float(-(q * np.log(q)).sum())

    mi = entropy(p.sum(1)) + entropy(p.sum(0)) - entropy(p.ravel())
    return counts > 0, mi


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shards", required=True, help="token shards whose visual codes define what the tokenizer makes")
    ap.add_argument("--lm", nargs="+", default=[None], help="LM directories (default: the embedded one)")
    ap.add_argument("--task", default="t2i", choices=["t2i", "t2v"])
    ap.add_argument("--prompts", default="shapes:24:7171")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)

    from videopoet.eval.run import load_jobs
    from videopoet.tasks.pipeline import Pipeline

    res = {"shards": a.shards, "task": a.task, "prompts": a.prompts, "models": {}}
    for lm in a.lm:
        pipe = Pipeline.from_pretrained(lm=lm, quiet=True)
        made, mi = code_set(a.shards, pipe.lm.hi_bits, pipe.lm.lo_bits)
        res["codes_made"], res["halves_mutual_information_nats"] = int(made.sum()), mi
        jobs = load_jobs(a.prompts, pipe)
        codes = []
        for k, job in enumerate(jobs):
            r = pipe.t2i(job.caption, seed=k) if a.task == "t2i" else pipe.t2v(job.caption, seed=k)
            codes.append(r.tokens["video"].numpy().ravel())
        c = np.concatenate(codes)
        name = str(lm or "embedded")
        res["models"][name] = {
            "sampled": int(c.size),
            "share_never_made": float((~made[c]).mean()),
            "distinct_sampled": int(np.unique(c).size),
            "pair_bias": bool(pipe.lm.cfg.visual_pair_bias),
        }
    print(f"{a.task} on {a.prompts}: the tokenizer makes {res['codes_made']} codes on {a.shards} "
          f"(halves' mutual information {res['halves_mutual_information_nats']:.2f} nats)")
    print(f"{'LM':<40} {'pair bias':>9} {'sampled':>8} {'never made':>11} {'distinct':>9}")
    for name, r in res["models"].items():
        print(f"{name[-40:]:<40} {str(r['pair_bias']):>9} {r['sampled']:>8} {r['share_never_made']:>11.3f} "
              f"{r['distinct_sampled']:>9}")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
