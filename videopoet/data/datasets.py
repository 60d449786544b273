"""Clip datasets: folders or JSONL manifests of videos and images -> fixed-size model tensors.

Design choices
- An entry is (file, window). A video gives `clips_per_video` entries (evenly spaced windows, default
  one: its first clip); a still image gives one 1-frame entry. Which files are still images is decided
  at construction from the extension (GIF and WebP headers are opened, since they may be animated),
  so batches can be formed per kind without decoding anything.
- Items are decoded on demand with `read_video` at the configured fps and size: only the window's
  frames are decoded, cropped and resized. Videos shorter than a clip are padded by repeating the last
  frame (`sample_clip`), their audio with zeros. Audio always has exactly
  S = round(num_frames / fps * sample_rate) samples.
- Randomness (`random_crop=True`: crop position and clip start) comes from a generator seeded with
  (seed, epoch, index), so an item is the same in any worker and across runs; `set_epoch` changes it.
- A file that fails to load (MediaError) is skipped and counted: it is logged, never retried, and the
  next entry of the same kind (image or clip) is served instead, so batches stay homogeneous. The log
  is a small append-only file shared with DataLoader worker processes, so `skipped` and `report()` in
  the main process see the files that workers skipped too.
- With `with_audio=True`, images are left out (they have no sound) and videos without an audio track
  are skipped and counted.
"""

from __future__ import annotations

import bisect
import json
import math
import os
import tempfile
import uuid
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from videopoet.data.media import (
    IMAGE_EXTS,
    VIDEO_EXTS,
    audio_to_tensor,
    fit_length,
    probe,
    read_video,
    sample_clip,
    video_to_tensor,
)
from videopoet.errors import ConfigError, InputError, MediaError

MEDIA_EXTS = VIDEO_EXTS | IMAGE_EXTS
_MAYBE_ANIMATED = {".gif", ".webp"}


@dataclass(frozen=True)
class ClipEntry:
    path: Path
    caption: str
    start: float | None  # seconds; the window of the file to draw clips from
    end: float | None
    is_image: bool  # a still image: served as a 1-frame clip
    window: int = 0  # which of the file's `clips_per_video` windows
    meta: dict[str, Any] = field(default_factory=dict, compare=False)  # extra manifest keys


# =============================================================================== sources
def _caption_for(path: Path) -> str:
    """The caption in a sibling `<stem>.txt`, else ""."""
    txt = path.with_suffix(".txt")
    if txt.is_file():
        try:
            return txt.read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            return ""
    return ""


def scan_folder(folder: Path) -> list[dict[str, Any]]:
    """Media files under `folder` (recursive, hidden files skipped, sorted) as manifest records."""
    records = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or p.suffix.lower() not in MEDIA_EXTS:
            continue
        if p.is_file():
            records.append({"path": p, "caption": _caption_for(p)})
    return records


def read_manifest(path: Path) -> list[dict[str, Any]]:
    """Parse a JSONL manifest: one {"path", "caption"?, "start"?, "end"?, ...} object per line.

    Other keys (e.g. the shapes benchmark's "attributes") are kept as the entry's `meta`.

    Relative paths are resolved against the manifest's folder. Malformed lines raise ConfigError
    naming the line (a broken manifest is a config problem; a broken media file is skipped later).
    """
    records = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read manifest: {e}") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("path"), str) or not rec["path"]:
            raise ConfigError(f"{path}:{n}: expected an object with a string 'path'")
        start, end = rec.get("start"), rec.get("end")
        for key, v in (("start", start), ("end", end)):
            if v is not None and (
                not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0
            ):
                raise ConfigError(f"{path}:{n}: '{key}' must be seconds >= 0, got {v!r}")
        if start is not None and end is not None and end <= start:
            raise ConfigError(f"{path}:{n}: 'end' ({end}) must be after 'start' ({start})")
        caption = rec.get("caption", "")
        if not isinstance(caption, str):
            raise ConfigError(f"{path}:{n}: 'caption' must be a string")
        p = Path(rec["path"]).expanduser()
        meta = {k: v for k, v in rec.items() if k not in ("path", "caption", "start", "end")}
        p = path.parent / p if not p.is_absolute() else p
        records.append({"path": p, "caption": caption, "start": start, "end": end, "meta": meta})
    return records


def _is_still(path: Path) -> bool:
    """Still image by extension; GIF/WebP open their header (MediaError if unreadable)."""
    ext = path.suffix.lower()
    if ext in _MAYBE_ANIMATED:
        info = probe(path)
        return info.kind == "image"
    return ext in IMAGE_EXTS


class _SkipLog:
    """Append-only `path<TAB>reason` lines in a temp file, shared with DataLoader workers (fork or spawn)."""

    def __init__(self) -> None:
        self.file = Path(tempfile.gettempdir()) / f"videopoet-skipped-{os.getpid()}-{uuid.uuid4().hex}.tsv"
        self._finalizer = weakref.finalize(self, _unlink, self.file, os.getpid())

    def __getstate__(self) -> dict[str, Any]:
        return {"file": self.file}  # workers share the file; only the creating process removes it

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.file = state["file"]

    def add(self, path: str, reason: str) -> None:
        line = f"{path}\t{' '.join(reason.split())}\n"
        with open(self.file, "a", encoding="utf-8") as f:  # one small O_APPEND write: atomic across processes
            f.write(line)

    def read(self) -> list[tuple[str, str]]:
        try:
            text = self.file.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        seen: dict[str, str] = {}
        for line in text.splitlines():
            path, _, reason = line.partition("\t")
            seen.setdefault(path, reason)
        return list(seen.items())


def _unlink(file: Path, owner_pid: int) -> None:
    if os.getpid() == owner_pid:
        file.unlink(missing_ok=True)


# =============================================================================== dataset
class ClipDataset(Dataset):
    """Clips (+ audio, + caption) from a folder, a JSONL manifest or a list of files.

    Each item: {"video": (3, T, H, W) float32 in [-1, 1] (T = num_frames, or 1 for still images),
    "audio": (1, S) float32 (only with `with_audio`), "caption": str, "path": str}.
    """

    def __init__(
        self,
        source: str | Path | Sequence[str | Path | dict[str, Any]],
        *,
        num_frames: int = 17,
        fps: float = 8.0,
        size: int | tuple[int, int] = 64,
        with_audio: bool = False,
        sample_rate: int = 16000,
        include_images: bool = True,
        random_crop: bool = False,
        seed: int = 0,
        clips_per_video: int = 1,
    ):
        """
        Args:
            source: a folder (media found recursively; captions from sibling `.txt` files), a `.jsonl`
                manifest ({"path", "caption", "start", "end"} per line), or a list of paths / such dicts.
            num_frames, fps, size: clip length, frame rate and size ((H, W) or a square side).
            with_audio: also return the audio track (1, S), S = round(num_frames / fps * sample_rate);
                images are then left out and videos without audio are skipped.
            include_images: serve still images as 1-frame clips.
            random_crop: random crop position and clip start (training); else centered, first window.
            seed: seed for the random choices (with the epoch and the index).
            clips_per_video: windows per video, evenly spaced over the file (or its manifest range).
        """
        if int(num_frames) < 1:
            raise ConfigError(f"num_frames: expected >= 1, got {num_frames}")
        if not (0 < float(fps) <= 240):
            raise ConfigError(f"fps: expected a rate in (0, 240], got {fps}")
        if int(clips_per_video) < 1:
            raise ConfigError(f"clips_per_video: expected >= 1, got {clips_per_video}")
        self.num_frames, self.fps, self.size = int(num_frames), float(fps), size
        self.with_audio, self.sample_rate = bool(with_audio), int(sample_rate)
        self.include_images = bool(include_images) and not self.with_audio
        self.random_crop, self.seed, self.clips_per_video = bool(random_crop), int(seed), int(clips_per_video)
        self.audio_samples = round(self.num_frames / self.fps * self.sample_rate)
        self.epoch = 0
        self._log = _SkipLog()
        self._bad: set[str] = set()  # paths known bad in this process
        self._durations: dict[str, float] = {}

        records, self.source = self._records(source)
        self.entries: list[ClipEntry] = []
        for rec in records:
            path = Path(rec["path"])
            try:
                still = _is_still(path) if path.exists() else path.suffix.lower() in IMAGE_EXTS
            except MediaError as e:
                self._skip(str(path), str(e))
                continue
            if still and not self.include_images:
                continue
            base = dict(
                path=path,
                caption=rec.get("caption") or "",
                start=rec.get("start"),
                end=rec.get("end"),
                meta=rec.get("meta") or {},
            )
            n = 1 if still else self.clips_per_video
            self.entries.extend(ClipEntry(**base, is_image=still, window=k) for k in range(n))
        if not self.entries:
            raise MediaError(
                self.source,
                "no usable media files found"
                + (" (images are left out with audio)" if self.with_audio else ""),
            )
        self._by_kind = {
            kind: [i for i, e in enumerate(self.entries) if e.is_image == kind] for kind in (False, True)
        }

    @staticmethod
    def _records(source: Any) -> tuple[list[dict[str, Any]], str]:
        if isinstance(source, (str, Path)):
            p = Path(source).expanduser()
            if p.is_dir():
                return scan_folder(p), str(p)
            if p.suffix.lower() == ".jsonl":
                if not p.is_file():
                    raise ConfigError(f"{p}: no such manifest")
                return read_manifest(p), str(p)
            if not p.exists():
                raise ConfigError(f"{p}: no such folder or manifest")
            return [{"path": p, "caption": _caption_for(p)}], str(p)
        records = []
        for item in source:
            if isinstance(item, dict):
                records.append(dict(item))
            else:
                records.append({"path": Path(item), "caption": _caption_for(Path(item))})
        return records, f"{len(records)} files"

    # ---------------------------------------------------------------------------- bookkeeping
    def _skip(self, path: str, reason: str) -> None:
        if path not in self._bad:
            self._bad.add(path)
            self._log.add(path, reason)

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """(path, reason) for every file skipped so far, in this process or its DataLoader workers."""
        return self._log.read()

    def report(self) -> str:
        """A human summary: how many entries and files, and which files were skipped and why."""
        files = {str(e.path) for e in self.entries}
        n_img = len(self._by_kind[True])
        skipped = self.skipped
        lines = [
            f"ClipDataset over {self.source}: {len(self.entries)} entries ({len(self.entries) - n_img} clips, "
            f"{n_img} images) from {len(files)} files; {len(skipped)} file(s) skipped"
        ]
        lines += [f"  skipped {p}: {r}" for p, r in skipped]
        return "\n".join(lines)

    def set_epoch(self, epoch: int) -> None:
        """Change the random crops and clip starts (with random_crop) for a new epoch."""
        self.epoch = int(epoch)

    def is_image(self, index: int) -> bool:
        return self.entries[index].is_image

    def __len__(self) -> int:
        return len(self.entries)

    # ---------------------------------------------------------------------------- loading
    def _duration(self, path: Path) -> float:
        key = str(path)
        if key not in self._durations:
            info = probe(path)
            if info.duration is None:
                raise MediaError(path, "duration unknown (cannot place clip windows)")
            self._durations[key] = info.duration
        return self._durations[key]

    def _clip_start(self, e: ClipEntry, rng: np.random.Generator) -> float:
        """Start second of the entry's window: first window, evenly spaced windows, or random."""
        lo = e.start or 0.0
        if not self.random_crop and self.clips_per_video == 1:
            return lo
        hi = e.end if e.end is not None else self._duration(e.path)
        slack = max(0.0, (hi - lo) - self.num_frames / self.fps)
        if self.random_crop:
            return lo + float(rng.uniform(0.0, slack))
        return lo + slack * e.window / (self.clips_per_video - 1)

    def load(self, index: int) -> dict[str, Any]:
        """Decode entry `index` (raises MediaError on a bad file; `__getitem__` skips instead)."""
        e = self.entries[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        crop = "random" if self.random_crop else "center"
        if e.is_image:
            v = read_video(e.path, size=self.size, crop=crop, rng=rng)
            frames = v.frames[:1]  # (1, H, W, 3)
        else:
            t0 = self._clip_start(e, rng)
            t1 = t0 + self.num_frames / self.fps
            if e.end is not None:
                t1 = min(t1, e.end)
            v = read_video(
                e.path, fps=self.fps, size=self.size, crop=crop, start=t0, end=t1, max_frames=self.num_frames,
                with_audio=self.with_audio, sample_rate=self.sample_rate, rng=rng,
            )  # fmt: skip
            frames, _ = sample_clip(v.frames, self.num_frames)  # pads short videos with the last frame
        item: dict[str, Any] = {"video": video_to_tensor(frames), "caption": e.caption, "path": str(e.path)}
        if self.with_audio:
            item["audio"] = audio_to_tensor(fit_length(v.audio, self.audio_samples))  # (1, S)
        return item

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index %= len(self)
        same_kind = self._by_kind[self.entries[index].is_image]
        pos = bisect.bisect_left(same_kind, index)  # entries of one kind, in index order
        for k in range(len(same_kind)):
            j = same_kind[(pos + k) % len(same_kind)]
            path = str(self.entries[j].path)
            if path in self._bad:
                continue
            try:
                return self.load(j)
            except MediaError as err:
                self._skip(path, str(err))
        kind = "image" if self.entries[index].is_image else "video"
        raise MediaError(
            self.source, f"no readable {kind} left ({len(self._bad)} file(s) skipped)\n" + self.report()
        )


# =============================================================================== batching
def collate_clips(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack items of one shape: {"video": (B, 3, T, H, W), "audio": (B, 1, S)?, "caption": [str],
    "path": [str]}. Still images (T=1) and clips have different shapes: batch them separately with
    `ClipBatchSampler` (mixed shapes raise InputError)."""
    if not items:
        raise InputError("collate_clips: empty batch")
    shapes = {tuple(it["video"].shape) for it in items}
    if len(shapes) > 1:
        raise InputError(
            f"collate_clips: items of different shapes {sorted(shapes)}; batch images and clips separately "
            "(ClipBatchSampler) or use batch_size=1"
        )
    batch: dict[str, Any] = {
        "video": torch.stack([it["video"] for it in items]),
        "caption": [it["caption"] for it in items],
        "path": [it["path"] for it in items],
    }
    if "audio" in items[0]:
        batch["audio"] = torch.stack([it["audio"] for it in items])
    return batch


class ClipBatchSampler(Sampler[list[int]]):
    """Batches of one kind (all clips or all still images), shuffled per epoch with a fixed seed."""

    def __init__(
        self,
        dataset: ClipDataset,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ):
        if int(batch_size) < 1:
            raise ConfigError(f"batch_size: expected >= 1, got {batch_size}")
        self.dataset, self.batch_size = dataset, int(batch_size)
        self.shuffle, self.seed, self.drop_last, self.epoch = shuffle, int(seed), drop_last, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _batches(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        batches = []
        for idx in self.dataset._by_kind.values():
            idx = list(rng.permutation(idx)) if self.shuffle else list(idx)
            for s in range(0, len(idx), self.batch_size):
                b = [int(i) for i in idx[s : s + self.batch_size]]
                if len(b) == self.batch_size or not self.drop_last:
                    batches.append(b)
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())
