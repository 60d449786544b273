"""The pretraining stage against its own limits, each ratio measured in one run (issue 12):

1. tokenize throughput (items/s of `videopoet tokenize`: render/read, text, video, structure and
   audio encoding, shard writing) against the tokenizers' encode calls alone on the same clips;
2. the Fabric training loop's tokens/s (`Pretrainer.fit`: sampler, loader, sequence building,
   logging, checkpoint-free) against the bare `TrainStep` on the same batches, prebuilt;
3. padding fraction over a full mixture epoch of the sampler (every bucket's items served once);
4. the share of step time the loop waits for data.

    .venv/bin/python benchmarks/bench_lm_pretrain.py --clips 96 --steps 30 [--video-model DIR --audio-model DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def bench_tokenize(clips: int, out: Path, video_model, audio_model) -> dict:
    from videopoet.assets import asset_dir
    from videopoet.data.media import video_to_tensor
    from videopoet.data.shapes import ShapesDataset
    from videopoet.data.structure import structure_video
    from videopoet.data.tokenize import tokenize
    from videopoet.tokenizers.audio import AudioTokenizer
    from videopoet.tokenizers.video import VideoTokenizer

    AudioTokenizer.from_pretrained(audio_model or asset_dir("audio_tokenizer"))  # imports transformers (~7 s, once per process) before timing
    t0 = time.perf_counter()
    rep = tokenize(f"shapes:{clips}", out, video_model=video_model, audio_model=audio_model, progress=False,
                   log=lambda m: None)
    t_tok = time.perf_counter() - t0
    vt = VideoTokenizer.from_pretrained(video_model or asset_dir("video_tokenizer")).eval()
    at = AudioTokenizer.from_pretrained(audio_model or asset_dir("audio_tokenizer")).eval()
    ds = ShapesDataset(clips, seed=0, ground_truth=False)
    items = [ds.clip(i) for i in range(clips)]
    xs = [torch.stack([video_to_tensor(c.video) for c in items[i : i + 8]]) for i in range(0, clips, 8)]
    ss = [torch.stack([video_to_tensor(structure_video(c.video, flow=c.flow, depth=c.depth)[0]) for c in items[i : i + 8]])
          for i in range(0, clips, 8)]
    aa = [torch.stack([torch.from_numpy(c.audio) for c in items[i : i + 8]]) for i in range(0, clips, 8)]
    t0 = time.perf_counter()
    with torch.no_grad():
        for x, s, a in zip(xs, ss, aa, strict=True):
            vt.encode(x)
            vt.encode(s)
            at.encode(a)
    t_enc = time.perf_counter() - t0
    return {"clips": clips, "written": rep.written, "tokenize_s": t_tok, "encode_only_s": t_enc,
            "ratio_vs_encode": t_enc / t_tok}


def bench_loop(shards: Path, steps: int, work: Path) -> dict:
    from videopoet.lm.pretrain import Pretrainer, load_config
    from videopoet.lm.train import TrainStep, make_optimizer
    from videopoet.lm.vocab import Vocabulary

    vocab = Vocabulary.load(shards / "vocab.json")
    import yaml

    from videopoet.config import load_yaml

    preset = load_yaml("lm/cpu")
    preset["vocab"] = {k: getattr(vocab, k) for k in ("visual_bits", "audio_levels", "audio_codes", "text_size")}
    preset["model"]["factorized_visual"] = vocab.visual_bits > 12
    (work / "lm.yaml").write_text(yaml.safe_dump(preset))
    over = [f"data.shards={shards}", f"train.out={work / 'run'}", f"train.model={work / 'lm.yaml'}",
            f"train.max_steps={steps}", "train.log_every=1", "train.eval_every=0", "train.checkpoint_every=100000",
            "train.progress=false", "data.heldout_items=0", "data.num_workers=1"]
    cfg = load_config("train/cpu", over)
    tr = Pretrainer(cfg)
    # the batches the loop will see, prebuilt (same sampler state from step 0)
    loader = tr.loader()
    batches = [b for _, b in zip(range(steps), iter(loader), strict=False)]
    tr.sampler.load_state_dict({"step": 0, "cursor": dict.fromkeys(tr.groups, 0), "epoch": dict.fromkeys(tr.groups, 0)})
    t0 = time.perf_counter()
    tr.fit()
    t_loop = time.perf_counter() - t0
    rows = [json.loads(line) for line in (work / "run" / "metrics.jsonl").read_text().splitlines()]
    skip = 3  # warm-up steps left out of both
    loop_tok = sum(b.tokens for b in batches[skip:]) / sum(r["elapsed_s"] - p["elapsed_s"] for p, r in zip(rows[skip - 1 :], rows[skip:], strict=False))
    # bare TrainStep on the same batches, fresh model of the same preset and seed
    torch.manual_seed(cfg.train.seed)
    from videopoet.lm.pretrained import build_lm

    model, _ = build_lm(work / "lm.yaml")
    step = TrainStep(model, make_optimizer(model, cfg.train.lr, weight_decay=cfg.train.weight_decay), grad_clip=1.0)
    times = []
    for b in batches:
        t0 = time.perf_counter()
        step(b.ids, b.loss_mask, prefix_len=b.prefix_len, key_valid=b.key_valid)
        times.append(time.perf_counter() - t0)
    bare_tok = sum(b.tokens for b in batches[skip:]) / sum(times[skip:])
    return {"steps": steps, "loop_tokens_per_s": loop_tok, "bare_trainstep_tokens_per_s": bare_tok,
            "ratio_loop_vs_bare": loop_tok / bare_tok,
            "data_wait_share": float(np.mean([r["data_wait"] for r in rows[skip:]])),
            "mfu_measured_peak": float(np.mean([r.get("mfu", float("nan")) for r in rows[skip:]])),
            "loop_wall_s": t_loop}


def bench_padding(shards: Path, work: Path) -> dict:
    """Padding over a full epoch of every (task, group) the cpu mixture draws."""
    from videopoet.lm.pretrain import Pretrainer, ShardExamples, collate_examples, load_config

    cfg = load_config("train/cpu", [f"data.shards={shards}", f"train.out={work / 'pad'}",
                                     f"train.model={work / 'lm.yaml'}", "data.heldout_items=0"])
    tr = Pretrainer(cfg)
    ds = ShardExamples(str(shards), tr.vocab, cfg.data, cfg.train.seed)
    real = total = 0
    served = 0
    for task, group, _, batch in tr.plan:
        bucket, members = tr.groups[group]
        for k in range(0, len(members), batch):
            keys = [(task, bucket, int(i), 0, {"drop_text": False, "first_frame": True}) for i in members[k : k + batch]]
            b = collate_examples([ds[key] for key in keys], tr.vocab.pad_id)
            real += b.tokens
            total += b.ids.numel()
            served += len(keys)
    return {"sequences": served, "padding_fraction": 1 - real / total}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=96)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--video-model", default=None)
    ap.add_argument("--audio-model", default=None)
    ap.add_argument("--json", default=None, help="append the result as one JSON line to this file")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_pretrain_"))
    try:
        res = {"threads": torch.get_num_threads()}
        res["tokenize"] = bench_tokenize(a.clips, work / "shards", a.video_model, a.audio_model)
        print(json.dumps(res["tokenize"]), flush=True)
        res["loop"] = bench_loop(work / "shards", a.steps, work)
        print(json.dumps(res["loop"]), flush=True)
        res["padding"] = bench_padding(work / "shards", work)
        print(json.dumps(res["padding"]), flush=True)
        if a.json:
            with open(a.json, "a") as f:
                f.write(json.dumps(res) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
