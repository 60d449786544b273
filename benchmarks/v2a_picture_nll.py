"""Does the LM read the picture when it writes a soundtrack (v2a)? Output NLL of the audio codes with
the clip's own video in the prefix against another clip's video, per RVQ level and by time.

The codec's codes of a steady tone repeat with a period of a few frames (the phase of the tone
turns from frame to frame), so once the first frames of a level are written the rest can be copied
from them; the picture is needed to choose the tone (its shape and colour) and the click times (its
bounces). A model that reads the picture pays for a wrong one, above all in the first frames of
level 0, and for none (v2a's guidance branch, the "audio" task). Clips are fresh shapes clips (a
seed no training or selection uses) tokenized by the shipped tokenizers; the swapped video is the
next clip's, of another tone unless both clips show the same (shape, colour).

    python benchmarks/v2a_picture_nll.py [--lm DIR] [--data shapes:48:7272:single | --shards DIR] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

BINS = {"frames 0-4": slice(0, 5), "frames 5-24": slice(5, 25), "frames 25+": slice(25, None)}


def audio_nll(model, vocab, item: dict, task: str = "v2a") -> np.ndarray:
    """(levels, frames) NLL of every audio code of `item`'s v2a example (task "audio": v2a without
    the video, its guidance branch), built as in training; each code is scored among its level's
    codes only (the range generation samples from)."""
    from videopoet.lm.pretrain import PretrainDataConfig, build_example, collate_examples

    seq = build_example(vocab, task, item, np.random.default_rng(0), PretrainDataConfig())
    seg = next(s for s in seq.outputs if s.modality == "audio")
    b = collate_examples([seq], vocab.pad_id)
    pos = torch.arange(seg.start, seg.start + seg.length)
    targets, legal = b.ids[0, pos], seq.legal[pos]
    nll = torch.empty(len(pos))
    with torch.no_grad():
        h = model(b.ids, prefix_len=b.prefix_len, key_valid=b.key_valid)[0, pos - 1]  # i is predicted from i - 1
        for lo, hi in torch.unique(legal, dim=0).tolist():
            sel = (legal[:, 0] == lo) & (legal[:, 1] == hi)
            logp = model.logits(h[sel], lo, hi).float().log_softmax(-1)
            nll[sel] = -logp.gather(1, (targets[sel] - lo)[:, None])[:, 0]
    return nll.view(seg.shape).numpy()


def repeats(codes: np.ndarray, max_period: int = 12) -> np.ndarray:
    """(frames,) bool: the code equals the one a period earlier, for the period (2..max_period) that
    most codes of this level repeat at; only from the second period on (the first cannot be copied)."""
    best, out = -1, np.zeros(len(codes), bool)
    for p in range(2, max_period + 1):
        rep = np.zeros(len(codes), bool)
        rep[2 * p :] = codes[2 * p :] == codes[p:-p]
        if rep.sum() > best:
            best, out = int(rep.sum()), rep
    return out


def summarise(x: np.ndarray) -> dict[str, dict[str, float]]:
    """x: (N, levels, frames) -> {level: {bin: mean}}."""
    out = {}
    for lv in range(x.shape[1]):
        out[f"level {lv}"] = {name: float(x[:, lv, s].mean()) for name, s in BINS.items()}
        out[f"level {lv}"]["all"] = float(x[:, lv].mean())
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lm", default=None, help="LM directory (default: the embedded one)")
    ap.add_argument("--data", default="shapes:48:7272:single")
    ap.add_argument("--shards", default=None, help="tokenized clips to reuse (default: tokenize --data to a temp dir)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)

    from caption_swap_nll import load_items

    from videopoet.assets import asset_dir
    from videopoet.lm.pretrained import load_lm

    model, vocab = load_lm(a.lm or asset_dir("lm"))
    model.eval()
    items = [it for it in load_items(a.data, a.shards) if it.get("audio") is not None]
    if len(items) < 2:
        raise SystemExit(f"--data {a.data}: fewer than 2 clips with audio")
    tone = [tuple(sorted((o["shape"], o["colour"]) for o in it["meta"]["attributes"]["objects"])) for it in items]
    base = np.stack([audio_nll(model, vocab, it) for it in items])  # (N, L, F)
    swapped, same_tone = [], []
    for i, it in enumerate(items):
        j = (i + 1) % len(items)
        swapped.append(audio_nll(model, vocab, dict(it, visual=items[j]["visual"])))
        same_tone.append(tone[i] == tone[j])
    keep = ~np.asarray(same_tone)
    rep = np.stack([np.stack([repeats(lv) for lv in it["audio"]]) for it in items])  # (N, L, F)
    copy = {f"level {lv}": {"share_repeated": float(rep[:, lv].mean()),
                            "nll_repeated": float(base[:, lv][rep[:, lv]].mean()) if rep[:, lv].any() else float("nan"),
                            "nll_other": float(base[:, lv][~rep[:, lv]].mean())} for lv in range(base.shape[1])}
    none = np.stack([audio_nll(model, vocab, it, "audio") for it in items])  # no video at all
    d = (np.stack(swapped) - base)[keep]
    res = {"lm": str(a.lm or "embedded"), "data": a.data if a.shards is None else a.shards, "clips": len(items),
           "pairs_of_different_tones": int(keep.sum()), "nll_own_video": summarise(base),
           "nll_rise_with_another_video": summarise(d), "nll_rise_without_video": summarise(none - base),
           "copyable_codes": copy,
           "share_of_clips_own_video_better": {f"level {lv}": float((d[:, lv].mean(-1) > 0).mean()) for lv in range(d.shape[1])}}
    print(f"v2a, {len(items)} clips ({int(keep.sum())} swaps to another tone); NLL (nats per code, within its level) "
          f"with the clip's own video, and its rise with another clip's video:")
    print(f"{'level':<8} " + " ".join(f"{n:>12}" for n in [*BINS, "all"]) + "   rise: " + " ".join(f"{n:>12}" for n in [*BINS, "all"])
          + "   own better")
    for lv in res["nll_own_video"]:
        own, rise = res["nll_own_video"][lv], res["nll_rise_with_another_video"][lv]
        share = res["share_of_clips_own_video_better"][lv]
        print(f"{lv:<8} " + " ".join(f"{own[n]:>12.3f}" for n in [*BINS, "all"]) + "         "
              + " ".join(f"{rise[n]:>12.4f}" for n in [*BINS, "all"]) + f"   {share:.2f}")
    print("rise without any video (v2a's guidance branch; meaningful for LMs trained on `audio` rows):")
    for lv, r in res["nll_rise_without_video"].items():
        print(f"{lv:<8} " + " ".join(f"{r[n]:>12.4f}" for n in [*BINS, "all"]))
    print("codes equal to the code one period earlier (the level's most common period, 2-12 frames), and their NLL:")
    for lv, c in copy.items():
        print(f"{lv:<8} share {c['share_repeated']:.2f}   NLL repeated {c['nll_repeated']:.3f}   other {c['nll_other']:.3f}")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
