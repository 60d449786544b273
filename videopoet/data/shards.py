"""Token shards: a data set tokenized once, stored as int32 memmaps with int64 offsets per bucket.

Layout of a shard directory (the torchtitan / nanoGPT pattern; DESIGN.md says why not litdata,
mosaicml-streaming or webdataset here):

    SHARDS/
      index.json              buckets, their items and fields; written by `merge_index`
      vocab.json              the LM vocabulary the codes were made for
      tokenizers/             config.json of the video, audio and text tokenizers used
      parts/r{RANK}_p{K}/     one finished part (a folder renamed into place when complete)
        {bucket}.{field}.bin  int32, every item's values of one field, concatenated
        {bucket}.{field}.idx  int64 (items + 1) offsets into .bin
        {bucket}.meta.jsonl   one JSON object per item: caption, shapes of every field, fps,
                              duration, source path, clip start, shapes attributes (if known)

A bucket is one kind of item at one size: `av_64x64_f17` (video with audio), `video_64x64_f17`,
`image_64x64_f1`. Fields: `visual` (t*h*w codes), `audio` (L*F codes, level-major), `text` (token
ids), `structure` (t*h*w codes of the structure video, for stylization), `text_emb` (float16
(tokens, D) frozen text-encoder embeddings, embedding mode; D in index.json). A part is written to a
temporary folder and renamed, so after a kill -9 the finished parts are kept and a rerun redoes
only the rest. Several ranks write disjoint parts; `merge_index` lists them all.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from videopoet.errors import ConfigError, InputError

FIELDS = ("visual", "audio", "text", "structure", "text_emb")
# stored dtype per field: codes and ids int32; text-encoder embeddings (embedding mode) float16
DTYPES = {"text_emb": np.float16}
INDEX_VERSION = 1


def bucket_name(kind: str, height: int, width: int, frames: int) -> str:
    return f"{kind}_{height}x{width}_f{frames}"


class PartWriter:
    """Collects items of one part in memory and writes them atomically with `close()`."""

    def __init__(self, root: str | Path, rank: int, part: int):
        self.root = Path(root)
        self.name = f"r{rank:03d}_p{part:05d}"
        self.data: dict[str, dict[str, list[np.ndarray]]] = {}
        self.meta: dict[str, list[dict[str, Any]]] = {}

    def add(self, bucket: str, fields: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        unknown = set(fields) - set(FIELDS)
        if unknown:
            raise InputError(f"shard item: unknown fields {sorted(unknown)}")
        d = self.data.setdefault(bucket, {})
        n = len(self.meta.get(bucket, []))
        for f in FIELDS:
            if f in fields:
                if len(d.get(f, [])) != n:
                    raise InputError(f"bucket {bucket}: field {f} must be present for every item or none")
                d.setdefault(f, []).append(np.asarray(fields[f], DTYPES.get(f, np.int64)).reshape(-1))
            elif f in d:
                raise InputError(f"bucket {bucket}: field {f} missing from an item")
        shapes = {f: list(np.shape(v)) for f, v in fields.items()}
        self.meta.setdefault(bucket, []).append({**meta, "shapes": shapes})

    def __len__(self) -> int:
        return sum(len(m) for m in self.meta.values())

    def close(self) -> Path:
        parts = self.root / "parts"
        final, tmp = parts / self.name, parts / f".{self.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for bucket, fields in self.data.items():
            for f, values in fields.items():
                offsets = np.zeros(len(values) + 1, np.int64)
                offsets[1:] = np.cumsum([len(v) for v in values])
                dtype = DTYPES.get(f, np.int32)
                flat = np.concatenate(values) if values else np.zeros(0, dtype)
                if f in DTYPES:
                    if flat.size and not np.isfinite(flat).all():
                        raise InputError(f"bucket {bucket}: {f} values are not finite in float16")
                elif flat.size and (flat.min() < np.iinfo(np.int32).min or flat.max() > np.iinfo(np.int32).max):
                    raise InputError(f"bucket {bucket}: {f} values do not fit in int32")
                flat.astype(dtype).tofile(tmp / f"{bucket}.{f}.bin")
                offsets.tofile(tmp / f"{bucket}.{f}.idx")
            with open(tmp / f"{bucket}.meta.jsonl", "w") as fh:
                for m in self.meta[bucket]:
                    fh.write(json.dumps(m) + "\n")
        with open(tmp / "part.json", "w") as fh:
            json.dump({"items": {b: len(m) for b, m in self.meta.items()}}, fh)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        return final


def finished_parts(root: str | Path) -> list[Path]:
    parts = Path(root) / "parts"
    return sorted(p for p in parts.glob("r*_p*") if (p / "part.json").is_file()) if parts.is_dir() else []


def merge_index(root: str | Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write index.json from every finished part: per bucket, the parts holding it and item counts."""
    root = Path(root)
    buckets: dict[str, dict[str, Any]] = {}
    for p in finished_parts(root):
        items = json.loads((p / "part.json").read_text())["items"]
        for b, n in items.items():
            e = buckets.setdefault(b, {"items": 0, "parts": [], "fields": []})
            fields = sorted(f for f in FIELDS if (p / f"{b}.{f}.bin").is_file())
            if e["parts"] and fields != e["fields"]:
                raise ConfigError(f"{p}: bucket {b} has fields {fields}, other parts have {e['fields']}")
            e["fields"] = fields
            e["parts"].append([p.name, n])
            e["items"] += n
    index = {"version": INDEX_VERSION, "buckets": buckets, **(extra or {})}
    tmp = root / f".index.json.{os.getpid()}.tmp"  # one per process: ranks may merge at the same time
    tmp.write_text(json.dumps(index, indent=1))
    os.replace(tmp, root / "index.json")
    return index


@dataclass
class _Part:
    name: str
    count: int
    arrays: dict[str, tuple[np.memmap, np.ndarray]]
    meta: list[dict[str, Any]]


class ShardReader:
    """Random access to the items of a shard directory: `item(bucket, i)` -> {field: array, meta}."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        f = self.root / "index.json"
        if not f.is_file():
            raise ConfigError(f"{self.root}: not a token shard directory (index.json missing; run `videopoet tokenize`)")
        self.index = json.loads(f.read_text())
        if self.index.get("version") != INDEX_VERSION:
            raise ConfigError(f"{f}: index version {self.index.get('version')}, expected {INDEX_VERSION}")
        self._parts: dict[str, list[_Part]] = {}
        for b, e in self.index["buckets"].items():
            parts = []
            for name, n in e["parts"]:
                d = self.root / "parts" / name
                arrays = {}
                for fld in e["fields"]:
                    offsets = np.fromfile(d / f"{b}.{fld}.idx", np.int64)
                    dt = DTYPES.get(fld, np.int32)
                    data = np.memmap(d / f"{b}.{fld}.bin", dt, mode="r") if offsets[-1] else np.zeros(0, dt)
                    if len(offsets) != n + 1:
                        raise ConfigError(f"{d}: {b}.{fld}.idx has {len(offsets) - 1} items, the index says {n}")
                    arrays[fld] = (data, offsets)
                meta = [json.loads(line) for line in (d / f"{b}.meta.jsonl").read_text().splitlines() if line]
                parts.append(_Part(name, n, arrays, meta))
            self._parts[b] = parts
        self._starts = {b: np.cumsum([0] + [p.count for p in ps]) for b, ps in self._parts.items()}

    @property
    def buckets(self) -> dict[str, int]:
        return {b: int(e["items"]) for b, e in self.index["buckets"].items()}

    def fields(self, bucket: str) -> list[str]:
        return list(self.index["buckets"][bucket]["fields"])

    def lengths(self, bucket: str, field: str) -> np.ndarray:
        """(items,) int64: every item's number of `field` values (e.g. caption lengths), in order."""
        return np.concatenate([np.diff(p.arrays[field][1]) for p in self._parts[bucket]])

    def item(self, bucket: str, i: int) -> dict[str, Any]:
        if bucket not in self._parts:
            raise InputError(f"bucket {bucket!r}: not in {self.root} (has {sorted(self._parts)})")
        starts = self._starts[bucket]
        if not 0 <= i < starts[-1]:
            raise IndexError(f"{bucket}: item {i} of {starts[-1]}")
        k = int(np.searchsorted(starts, i, side="right")) - 1
        part, j = self._parts[bucket][k], i - int(starts[k])
        meta = part.meta[j]
        out: dict[str, Any] = {"meta": meta}
        for fld, (data, offsets) in part.arrays.items():
            dt = np.float32 if fld in DTYPES else np.int64
            out[fld] = np.asarray(data[offsets[j] : offsets[j + 1]], dt).reshape(meta["shapes"][fld])
        return out
