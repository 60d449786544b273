"""Where the LM's loss is: output NLL on the codes that change from one latent frame to the next
(the moving objects and what they uncover) against the codes that repeat (the still background).

For each clip, the task's example is built as in training (frame prediction with 3 context frames,
or t2v); every output code of latent frame t >= 1 is "changed" when it differs from the code at
the same place in frame t - 1 of the clip, else "repeated". NLL per code is the sum over its
sub-tokens (two with the factorized visual head). Clips: fresh shapes clips tokenized by the
shipped tokenizers (the seed no training or selection uses).

    python benchmarks/changed_code_nll.py [--lm DIR] [--shards DIR | --data shapes:96:7272] [--task frame_pred]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from caption_swap_nll import load_items, visual_nll  # noqa: E402


def code_nll(model, vocab, task: str, item: dict, context: int) -> tuple[np.ndarray, int]:
    """(NLL per output code (t_out, h, w), the output's first latent frame index in the clip)."""
    from videopoet.lm.pretrain import PretrainDataConfig

    nll, seg = visual_nll(model, vocab, task, item, PretrainDataConfig(frame_pred_context=context))
    per_code = nll.view(*seg.shape, -1).sum(-1).numpy()  # sub-tokens of one code summed
    return per_code, context if task == "frame_pred" else 0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lm", default=None, help="LM directory (default: the embedded one)")
    ap.add_argument("--data", default="shapes:96:7272")
    ap.add_argument("--shards", default=None, help="tokenized clips to reuse (default: tokenize --data to a temp dir)")
    ap.add_argument("--task", default="frame_pred", choices=["frame_pred", "t2v", "i2v"])
    ap.add_argument("--context", type=int, default=3, help="frame prediction: latent context frames")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)

    from videopoet.assets import asset_dir
    from videopoet.lm.pretrained import load_lm

    model, vocab = load_lm(a.lm or asset_dir("lm"))
    model.eval()
    items = load_items(a.data, a.shards)
    sums = {"changed": 0.0, "repeated": 0.0}
    counts = {"changed": 0, "repeated": 0}
    for it in items:
        v = np.asarray(it["visual"])
        nll, first = code_nll(model, vocab, a.task, it, a.context)
        for k in range(nll.shape[0]):
            t = first + k
            if t == 0:
                continue
            ch = v[t] != v[t - 1]
            sums["changed"] += float(nll[k][ch].sum())
            sums["repeated"] += float(nll[k][~ch].sum())
            counts["changed"] += int(ch.sum())
            counts["repeated"] += int((~ch).sum())
    total = sums["changed"] + sums["repeated"]
    n = counts["changed"] + counts["repeated"]
    res = {"lm": str(a.lm or "embedded"), "task": a.task, "clips": len(items),
           "share_of_codes_changed": counts["changed"] / n,
           "nll_per_code": {k: sums[k] / max(1, counts[k]) for k in sums},
           "share_of_nll": {k: sums[k] / total for k in sums}}
    print(f"{a.task}, {len(items)} clips, output latent frames >= 1 (nats per code, summed over its sub-tokens):")
    print(f"  changed codes:  {res['share_of_codes_changed']:.1%} of the codes, NLL {res['nll_per_code']['changed']:.3f}, "
          f"{res['share_of_nll']['changed']:.1%} of the loss")
    print(f"  repeated codes: {1 - res['share_of_codes_changed']:.1%} of the codes, NLL {res['nll_per_code']['repeated']:.3f}, "
          f"{res['share_of_nll']['repeated']:.1%} of the loss")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
