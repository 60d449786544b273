"""`videopoet tokenize`: run the tokenizers over a data set once and write token shards.

Per item it stores the caption's text ids, the visual codes (t, h, w), the audio codes (levels,
frames) when the clip has sound, the structure codes (flow + depth/edges, tokenized by the same
video tokenizer) for stylization, and metadata: caption, fps, duration, source path, clip start,
and the shapes benchmark's attributes when known. Everything else a task needs (first frame,
masks, crops, context frames) is derived from these at training time.

- Data: `shapes:N[:SEED]` (the benchmark, with ground-truth flow and depth) or a folder / JSONL
  manifest of media (videopoet.data.datasets.ClipDataset: videos with or without sound, images).
- Batched: clips are encoded `batch` at a time per kind.
- Resumable: items are grouped in parts of `part_size`; a finished part is a folder renamed into
  place (videopoet.data.shards), so a rerun after kill -9 keeps it and redoes the rest.
- Bad items are skipped and counted (the report lists each with its reason); nothing else is lost.
- Several processes: rank r of world size w (torchrun's RANK / WORLD_SIZE, or SLURM_PROCID /
  SLURM_NTASKS) takes items r, r + w, ...; every rank writes its own parts; the last one to finish
  (or `merge_index`) writes index.json over all finished parts.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from videopoet.data.shards import DTYPES, FIELDS, PartWriter, bucket_name, finished_parts, merge_index
from videopoet.errors import InputError, VideoPoetError


def rank_and_world() -> tuple[int, int]:
    for r, w in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
        if r in os.environ and w in os.environ:
            rank, world = int(os.environ[r]), int(os.environ[w])
            if not 0 <= rank < world:
                raise InputError(f"{r}={rank} is not in [0, {w}={world})")
            return rank, world
    return 0, 1


@dataclass
class TokenizeReport:
    items: int = 0
    written: int = 0
    kept_parts: int = 0  # finished before this run (resume)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    buckets: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    media_seconds: float = 0.0  # seconds of video tokenized in this run
    verb: str = "tokenized"

    def summary(self) -> str:
        lines = [f"{self.verb} {self.written} items in {self.seconds:.1f} s ({self.kept_parts} parts kept from an earlier run); "
                 f"{len(self.skipped)} bad item(s) skipped"]
        lines += [f"  bucket {b}: {n} items" for b, n in sorted(self.buckets.items())]
        lines += [f"  skipped {p}: {why}" for p, why in self.skipped]
        return "\n".join(lines)


class _Source:
    """Items of a data spec, loaded one by one: {"frames", "audio"?, "caption", "path", ...}."""

    def __init__(self, data: str, frames: int, size: int, fps: float, sample_rate: int):
        self.kind = "shapes" if data.startswith("shapes:") else "media"
        self.frames, self.size, self.fps, self.sample_rate = frames, size, fps, sample_rate
        if self.kind == "shapes":
            from videopoet.data.shapes import ShapesDataset

            parts = data.split(":")
            try:
                num, seed = int(parts[1]), int(parts[2]) if len(parts) > 2 else 0
            except (IndexError, ValueError):
                raise InputError(f"--data {data!r}: expected shapes:N[:SEED]") from None
            self.ds = ShapesDataset(num, seed=seed, ground_truth=False, size=size, frames=frames, fps=fps,
                                    sample_rate=sample_rate)
            self.n = num
        else:
            from videopoet.data.datasets import ClipDataset

            self.video = ClipDataset(data, num_frames=frames, fps=fps, size=size, include_images=True)
            self.n = len(self.video)

    def load(self, i: int) -> dict[str, Any]:
        from videopoet.data.media import tensor_to_video

        if self.kind == "shapes":
            c = self.ds.clip(i)
            return {"frames": c.video, "audio": c.audio[0], "caption": c.caption, "path": f"shapes/{self.ds.seed}/{i}",
                    "start": 0.0, "attributes": c.attributes, "flow": c.flow, "depth": c.depth}
        e = self.video.entries[i]
        item = self.video.load(i)  # raises MediaError for a bad file
        out = {"frames": tensor_to_video(item["video"]), "caption": item["caption"], "path": item["path"],
               "start": float(e.start or 0.0)}
        if not e.is_image:
            from videopoet.errors import MediaError

            try:
                a = _clip_audio(e.path, float(e.start or 0.0), self.frames, self.fps, self.sample_rate)
                if a is not None:
                    out["audio"] = a
            except MediaError:
                pass  # no audio track: a video-only item
        return out


def _clip_audio(path: str | Path, start: float, frames: int, fps: float, sample_rate: int) -> np.ndarray | None:
    """(S,) mono sound of a clip of `frames` at `fps` from `start` s, zero-padded to the clip's length;
    None when the file has less than 0.1 s of it there. Raises MediaError for no audio track."""
    from videopoet.data.media import read_audio

    a, _ = read_audio(path, sample_rate=sample_rate, mono=True, start=start, end=start + frames / fps)
    if a.shape[-1] < sample_rate // 10:
        return None
    n = round(frames / fps * sample_rate)
    return np.pad(a[0], (0, max(0, n - a.shape[-1])))[:n]


def tokenize(data: str, out: str | Path, *, video_model: str | Path | None = None, audio_model: str | Path | None = None,
             text_model: str | Path | None = None, frames: int = 17, size: int = 64, fps: float = 8.0,
             batch: int = 8, part_size: int = 256, structure: bool = True, progress: bool = True,
             rank: int | None = None, world: int | None = None, log=None) -> TokenizeReport:
    from videopoet.assets import asset_dir
    from videopoet.lm.vocab import Vocabulary
    from videopoet.tokenizers.audio import AudioTokenizer
    from videopoet.tokenizers.text import SentencePieceTextTokenizer
    from videopoet.tokenizers.video import VideoTokenizer

    log = log or (lambda m: print(m, file=sys.stderr))
    if rank is None or world is None:
        rank, world = rank_and_world()
    if batch < 1 or part_size < 1:
        raise InputError("--batch and --part-size must be >= 1")
    out = Path(out)
    vt = VideoTokenizer.from_pretrained(video_model or asset_dir("video_tokenizer")).eval()
    at = AudioTokenizer.from_pretrained(audio_model or asset_dir("audio_tokenizer")).eval()
    text_dir = Path(text_model or asset_dir("text_spm"))
    if (text_dir / "spm.model").is_file():  # token mode: SentencePiece ids
        tt = SentencePieceTextTokenizer.from_pretrained(text_dir)
    else:  # embedding mode: a frozen transformers encoder; its float16 embeddings are stored
        from videopoet.tokenizers.text import TextEmbedder

        tt = TextEmbedder(text_dir)
    embedding = not isinstance(tt, SentencePieceTextTokenizer)
    vocab = Vocabulary.from_tokenizers(vt, at, None if embedding else tt)
    out.mkdir(parents=True, exist_ok=True)
    vfile = out / "vocab.json"
    if vfile.is_file():
        Vocabulary.load(vfile).check_same(vocab, str(vfile), "the tokenizers given to this run")
    elif rank == 0:
        vocab.save(vfile)
        for name, tok in (("video", vt), ("audio", at)) + (() if embedding else (("text", tt),)):
            tok.save_pretrained(out / "tokenizers" / name)
        if embedding:
            from videopoet.config import save_json

            save_json({"kind": "text_embedder", "model_dir": str(text_dir), "identity": tt.identity,
                       "embed_dim": tt.embed_dim, "max_length": tt.max_length}, out / "tokenizers" / "text" / "config.json")
    src = _Source(data, frames, size, fps, at.config.sample_rate)
    mine = list(range(rank, src.n, world))
    done = {p.name for p in finished_parts(out)}
    rep = TokenizeReport(items=len(mine))
    t0 = time.time()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(mine), desc=f"tokenize r{rank}", dynamic_ncols=True, file=sys.stderr)
    for k in range(0, (len(mine) + part_size - 1) // part_size):
        writer = PartWriter(out, rank, k)
        idx = mine[k * part_size : (k + 1) * part_size]
        if writer.name in done:
            rep.kept_parts += 1
            if bar is not None:
                bar.update(len(idx))
            continue
        shutil.rmtree(out / "parts" / f".{writer.name}.tmp", ignore_errors=True)
        for j in range(0, len(idx), batch):
            loaded = []
            for i in idx[j : j + batch]:
                try:
                    loaded.append(src.load(i))
                except VideoPoetError as e:
                    rep.skipped.append((_name(src, i), str(e).splitlines()[0]))
            _encode_batch(loaded, writer, vt, at, tt, structure, fps, rep)
            if bar is not None:
                bar.update(len(idx[j : j + batch]))
        writer.close()
        rep.written += len(writer)
    if bar is not None:
        bar.close()
    rep.seconds = time.time() - t0
    index = merge_index(out, {"vocab": "vocab.json", "data": data, "frames": frames, "size": size, "fps": fps,
                              "sample_rate": at.config.sample_rate, "world": world,
                              **({"text_embed_dim": tt.embed_dim} if embedding else {})})
    rep.buckets = {b: e["items"] for b, e in index["buckets"].items()}
    with open(out / f"report_r{rank:03d}.json", "w") as f:
        json.dump({"items": rep.items, "written": rep.written, "kept_parts": rep.kept_parts, "skipped": rep.skipped,
                   "seconds": rep.seconds}, f, indent=1)
    return rep


def _name(src: _Source, i: int) -> str:
    if src.kind == "shapes":
        return f"shapes/{i}"
    return str(src.video.entries[i].path)


@torch.no_grad()
def _encode_batch(items: list[dict[str, Any]], writer: PartWriter, vt, at, tt, structure: bool, fps: float,
                  rep: TokenizeReport) -> None:
    from videopoet.data.media import video_to_tensor
    from videopoet.data.structure import structure_video

    if not items:
        return
    captions = [it["caption"] for it in items]
    embedded = None if hasattr(tt, "encode") else tt(captions, on_overflow="warn")  # embedding mode
    texts = tt.encode(captions, on_overflow="warn") if embedded is None else None
    groups: dict[tuple, list[int]] = {}
    for k, it in enumerate(items):
        groups.setdefault(it["frames"].shape, []).append(k)
    for shape, ks in groups.items():
        x = torch.stack([video_to_tensor(items[k]["frames"]) for k in ks])  # (B, 3, T, H, W)
        visual = vt.encode(x)
        struct = None
        if structure and shape[0] > 1:
            sv = [structure_video(items[k]["frames"], flow=items[k].get("flow"), depth=items[k].get("depth"))[0] for k in ks]
            struct = vt.encode(torch.stack([video_to_tensor(s) for s in sv]))
        has_audio = [k for k in ks if "audio" in items[k]]
        audio = {}
        if has_audio:
            a = torch.stack([torch.from_numpy(np.asarray(items[k]["audio"], np.float32)).clamp(-1, 1)[None] for k in has_audio])
            codes = at.encode(a)  # (B, L, F)
            audio = {k: codes[n] for n, k in enumerate(has_audio)}
        for n, k in enumerate(ks):
            it = items[k]
            t, h, w = shape[0], shape[1], shape[2]
            kind = "image" if t == 1 else ("av" if k in audio else "video")
            fields = {"visual": visual[n].numpy()}
            if embedded is None:
                fields["text"] = texts.ids[k][texts.mask[k]].numpy()
            else:
                fields["text_emb"] = embedded.embeddings[k][embedded.mask[k]].half().numpy()
            if struct is not None:
                fields["structure"] = struct[n].numpy()
            if k in audio:
                fields["audio"] = audio[k].numpy()
            meta = {"caption": it["caption"], "path": it["path"], "start": it["start"], "fps": fps,
                    "duration": t / fps, "frames": t, "height": h, "width": w}
            if it.get("attributes") is not None:
                meta["attributes"] = it["attributes"]
            writer.add(bucket_name(kind, h, w, t), fields, meta)
            rep.media_seconds += t / fps


def _item_audio(meta: dict[str, Any], index: dict[str, Any], sample_rate: int) -> np.ndarray:
    """The sound track of one shard item, made again from its source: a shapes clip is rendered from
    its seed and number, a media file is read from its path at the item's clip start."""
    frames, fps = int(meta.get("frames", index["frames"])), float(meta.get("fps", index["fps"]))
    path = str(meta["path"])
    parts = path.split("/")
    if len(parts) == 3 and parts[0] == "shapes" and parts[1].lstrip("-").isdigit() and parts[2].isdigit():
        from videopoet.data.shapes import ShapesConfig, make_audio

        cfg = ShapesConfig(size=int(meta.get("height", index["size"])), frames=frames, fps=fps, sample_rate=sample_rate)
        return np.asarray(make_audio(cfg, int(parts[1]), int(parts[2]))[0], np.float32)[0]
    start = float(meta.get("start") or 0.0)
    a = _clip_audio(path, start, frames, fps, sample_rate)
    if a is None:
        raise InputError(f"{path}: the audio track at {start:.2f} s is shorter than 0.1 s")
    return a


@torch.no_grad()
def reencode_audio(src: str | Path, out: str | Path, *, audio_model: str | Path | None = None, batch: int = 16,
                   progress: bool = True) -> TokenizeReport:
    """Copy the shards in `src` to `out` with every item's audio codes made again by another codec
    (`audio_model`; default: the shipped one). The visual, structure and text codes and the metadata
    are copied as they are, so a new audio codec costs an audio pass, not a full tokenization. Each
    item's sound is made again from its source (shapes seed and number, or media path and clip start).
    An item whose sound cannot be made again is dropped from every field, counted and listed.
    Resumable part by part, like `tokenize`."""
    from videopoet.assets import asset_dir
    from videopoet.lm.vocab import Vocabulary
    from videopoet.tokenizers.audio import AudioTokenizer
    from videopoet.tokenizers.video import VideoTokenizer

    src, out = Path(src), Path(out)
    if src.resolve() == out.resolve():
        raise InputError(f"--out {out}: must differ from the source shards")
    if not (src / "index.json").is_file():
        raise InputError(f"{src}: not a shard directory (no index.json)")
    index = json.loads((src / "index.json").read_text())
    at = AudioTokenizer.from_pretrained(audio_model or asset_dir("audio_tokenizer")).eval()
    sr = at.config.sample_rate
    vt = VideoTokenizer.from_pretrained(src / "tokenizers" / "video")
    text_dir = src / "tokenizers" / "text"
    tt = None
    if (text_dir / "spm.model").is_file():
        from videopoet.tokenizers.text import SentencePieceTextTokenizer

        tt = SentencePieceTextTokenizer.from_pretrained(text_dir)
    vocab = Vocabulary.from_tokenizers(vt, at, tt)
    out.mkdir(parents=True, exist_ok=True)
    vfile = out / "vocab.json"
    if vfile.is_file():
        Vocabulary.load(vfile).check_same(vocab, str(vfile), "the tokenizers given to this run")
    else:
        vocab.save(vfile)
    for name in ("video", "text"):
        if (src / "tokenizers" / name).is_dir() and not (out / "tokenizers" / name).is_dir():
            shutil.copytree(src / "tokenizers" / name, out / "tokenizers" / name)
    at.save_pretrained(out / "tokenizers" / "audio")
    done = {p.name for p in finished_parts(out)}
    parts = finished_parts(src)
    rep = TokenizeReport(items=sum(sum(json.loads((p / "part.json").read_text())["items"].values()) for p in parts),
                         verb="re-encoded the audio of")
    t0 = time.time()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=rep.items, desc="re-encode audio", dynamic_ncols=True, file=sys.stderr)
    for part in parts:
        counts = json.loads((part / "part.json").read_text())["items"]
        if part.name in done:
            rep.kept_parts += 1
            if bar is not None:
                bar.update(sum(counts.values()))
            continue
        rank, number = (int(x) for x in re.fullmatch(r"r(\d+)_p(\d+)", part.name).groups())
        writer = PartWriter(out, rank, number)
        for bucket in counts:
            metas = [json.loads(line) for line in (part / f"{bucket}.meta.jsonl").read_text().splitlines() if line.strip()]
            fields = {f: (np.fromfile(part / f"{bucket}.{f}.bin", DTYPES.get(f, np.int32)),
                          np.fromfile(part / f"{bucket}.{f}.idx", np.int64))
                      for f in FIELDS if (part / f"{bucket}.{f}.bin").is_file()}
            new_audio: dict[int, np.ndarray] = {}
            for j in range(0, len(metas), batch) if "audio" in fields else ():
                wave = {}
                for i in range(j, min(j + batch, len(metas))):
                    try:
                        wave[i] = _item_audio(metas[i], index, sr)
                    except VideoPoetError as e:
                        rep.skipped.append((str(metas[i].get("path")), str(e).splitlines()[0]))
                if wave:
                    codes = at.encode(torch.stack([torch.from_numpy(w).clamp(-1, 1)[None] for w in wave.values()]))
                    new_audio.update(zip(wave, codes.numpy(), strict=True))
            for k, meta in enumerate(metas):
                if "audio" in fields and k not in new_audio:
                    continue  # its sound could not be made again: dropped from every field
                shapes = meta.pop("shapes")
                row = {f: values[offsets[k] : offsets[k + 1]].reshape(shapes[f]) for f, (values, offsets) in fields.items()}
                if k in new_audio:
                    row["audio"] = new_audio[k]
                writer.add(bucket, row, meta)
            if bar is not None:
                bar.update(len(metas))
        writer.close()
        rep.written += len(writer)
    if bar is not None:
        bar.close()
    rep.seconds = time.time() - t0
    extra = {k: v for k, v in index.items() if k not in ("version", "buckets")}
    merged = merge_index(out, {**extra, "sample_rate": sr, "audio_reencoded_from": str(src)})
    rep.buckets = {b: e["items"] for b, e in merged["buckets"].items()}
    return rep
