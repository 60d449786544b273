"""Does the LM read the caption? Output NLL with the true caption against the caption with one
attribute swapped (colour, shape, direction, speed), per latent frame.

A model that uses a word pays for the wrong one: the NLL of the clip's codes rises when the caption
names another colour. The rise is split by latent frame, since a caption's content is needed where
the clip does not yet show it: colour and shape in frame 0, direction in frame 1 (from frame 2 on,
the earlier frames show both). Clips are fresh shapes clips (a seed no training or selection uses),
tokenized by the shipped tokenizers.

    python benchmarks/caption_swap_nll.py [--lm DIR] [--data shapes:48:7272] [--task t2v] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
from pathlib import Path

import numpy as np
import torch

SWAPS = {
    "colour": ({"red": "blue", "blue": "green", "green": "yellow", "yellow": "purple", "purple": "orange",
                "orange": "red"}, r"\b(red|blue|green|yellow|purple|orange)\b"),
    "shape": ({"circle": "square", "square": "triangle", "triangle": "diamond", "diamond": "circle"},
              r"\b(circle|square|triangle|diamond)\b"),
    # opposite directions; "up-left" -> "down-right"
    "direction": ({"left": "right", "right": "left", "up": "down", "down": "up"}, r"\b(up|down|left|right)(-(left|right))?\b"),
    "speed": ({"slowly": "quickly", "quickly": "slowly"}, r"\b(slowly|quickly)\b"),
}


def swap(caption: str, attribute: str) -> str:
    table, pattern = SWAPS[attribute]
    return re.sub(pattern, lambda m: "-".join(table[p] for p in m.group(0).split("-")), caption)


def visual_nll(model, vocab, task: str, item: dict, cfg=None):
    """(NLL of every token of the output video (tokens,), its Segment) for `item`'s `task` example
    built as in training (`cfg`: a PretrainDataConfig, default settings when None)."""
    from videopoet.lm.pretrain import PretrainDataConfig, build_example, collate_examples

    seq = build_example(vocab, task, item, np.random.default_rng(0), cfg or PretrainDataConfig(), {"first_frame": True})
    seg = next(s for s in seq.outputs if s.modality == "visual")
    b = collate_examples([seq], vocab.pad_id)
    with torch.no_grad():
        h = model(b.ids, prefix_len=b.prefix_len, key_valid=b.key_valid)
        # position i is predicted from i - 1
        nll = model.token_nll(h[0, seg.start - 1 : seg.start + seg.length - 1], b.ids[0, seg.start : seg.start + seg.length],
                              dense=True)
    return nll, seg


def frame_nll(model, vocab, task: str, item: dict) -> np.ndarray:
    """Mean output NLL of the clip's codes per latent frame: (t,)."""
    nll, seg = visual_nll(model, vocab, task, item)
    return nll.view(seg.shape[0], -1).mean(1).numpy()


def load_items(data: str, shards: str | None) -> list[dict]:
    """Every item of the shard directory `shards`, or of `data` tokenized by the shipped tokenizers
    into a temporary directory when `shards` is None."""
    from videopoet.data.shards import ShardReader
    from videopoet.data.tokenize import tokenize

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(shards or Path(tmp) / "shards")
        if shards is None:
            tokenize(data, root, progress=False, rank=0, world=1, log=lambda m: None)
        reader = ShardReader(root)
        return [reader.item(b, i) for b, n in reader.buckets.items() for i in range(n)]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lm", default=None, help="LM directory (default: the embedded one)")
    ap.add_argument("--data", default="shapes:48:7272")
    ap.add_argument("--task", default="t2v", choices=["t2v", "a2v", "i2v"])
    ap.add_argument("--shards", default=None, help="tokenized clips to reuse (default: tokenize --data to a temp dir)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)

    from videopoet.assets import asset_dir
    from videopoet.lm.pretrained import load_lm
    from videopoet.tokenizers.text import default_text_tokenizer

    model, vocab = load_lm(a.lm or asset_dir("lm"))
    model.eval()
    text = default_text_tokenizer()
    items = load_items(a.data, a.shards)
    base = np.stack([frame_nll(model, vocab, a.task, it) for it in items])  # (N, t)

    def split(x: np.ndarray) -> dict[str, float]:
        return {"all": float(x.mean()), "frame0": float(x[:, 0].mean()), "frame1": float(x[:, 1].mean()),
                "frames2+": float(x[:, 2:].mean())}

    res = {"lm": str(a.lm or "embedded"), "data": a.data if a.shards is None else a.shards, "task": a.task,
           "clips": len(items), "nll_true_caption": split(base), "nll_rise_when_swapped": {}, "share_of_clips_true_better": {}}
    for attr in SWAPS:
        rows = []
        for it in items:
            cap = swap(it["meta"]["caption"], attr)
            it2 = dict(it, text=text.encode(cap).ids[0].numpy().astype(it["text"].dtype))
            rows.append(frame_nll(model, vocab, a.task, it2))
        d = np.stack(rows) - base
        res["nll_rise_when_swapped"][attr] = split(d)
        res["share_of_clips_true_better"][attr] = split((d > 0).astype(np.float64))
    print(f"{a.task}, {len(items)} clips; NLL rise (nats per code) when one caption attribute is swapped:")
    print(f"{'attribute':<10} {'frame 0':>9} {'frame 1':>9} {'frames 2+':>10} {'all':>9}   clips better with the true caption (frame 0 / 1)")
    for attr, r in res["nll_rise_when_swapped"].items():
        s = res["share_of_clips_true_better"][attr]
        print(f"{attr:<10} {r['frame0']:>9.4f} {r['frame1']:>9.4f} {r['frames2+']:>10.4f} {r['all']:>9.4f}   "
              f"{s['frame0']:.2f} / {s['frame1']:.2f}")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
