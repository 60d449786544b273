"""LM pretraining on token shards: a task mixture, length-bucketed batches, Lightning Fabric, exact resume.

Pieces, top to bottom:
- `PretrainConfig` (configs/train/*.yaml): shards, model preset, task weights and schedule, tokens per
  step, optimizer, loop settings. Saved next to every checkpoint.
- `examples_for`: one shard item + a task -> the task's inputs and outputs (first frame, context
  frames, masks, crops are derived here from the stored codes; nothing task-specific is stored).
- `BucketSampler`: alternating gradient descent (VideoPoet): every step draws one (task, bucket) --
  the same on every rank, from (seed, step) alone -- and a batch size for it that keeps tokens per
  step about equal; items come from a per-bucket permutation per epoch. Its whole state is {step,
  per-bucket cursor, per-bucket epoch}; it is served through torchdata's StatefulDataLoader, whose
  state_dict holds it (and resumes exactly with workers). Each rank takes its slice of the step's
  global batch.
- `Pretrainer`: the Fabric loop (DDP / FSDP from the config, bf16 autocast on GPU, fp32 on CPU),
  AdamW with decay on matrices only, warm-up + cosine, clipping, non-finite steps skipped and
  counted, checkpoints as atomic directories (config, vocab.json, model.safetensors, optimizer,
  sampler and RNG state, step), CSV + TensorBoard logs on rank 0, held-out loss per task.

Text is dropped with probability `text_dropout` (one encoding of "no text": the text part is left
out, as in the unconditional rows of guidance). Random choices per item (dropout, mask boxes,
first-frame option) come from a generator seeded by (seed, step, item): no RNG state to save.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from videopoet.config import apply_overrides, from_dict, load_yaml, resolve_config_path, save_json, to_dict
from videopoet.errors import ConfigError, InputError, VideoPoetError
from videopoet.lm.sequence import Sequence, build_sequence, collate
from videopoet.lm.tasks import TASKS
from videopoet.lm.vocab import Vocabulary

AUDIO_TASKS = {"v2a", "audio", "a2v", "avcont"}
IMAGE_TASKS = {"t2i"}
MOTION_TASKS = {"t2v", "i2v"}  # the caption names a motion that starts at output frame 1
SHORT = "#short"  # the group-name suffix of t2v's short-clip variant (data.t2v_short_frames)


# ------------------------------------------------------------------------------------------ config
@dataclass
class PretrainDataConfig:
    shards: str = ""
    tasks: dict[str, float] = field(default_factory=lambda: {"t2v": 1.0})
    # "paper": the first image_phase of the steps draw image tasks with image_share of the weight
    # (VideoPoet: 90% images for the first 25% of steps), then video tasks with that share.
    schedule: str = "constant"
    image_phase: float = 0.25
    image_share: float = 0.9
    text_dropout: float = 0.1
    tokens_per_step: int = 8192
    max_batch: int = 64
    heldout_items: int = 8  # the last items of every bucket are kept for evaluation
    num_workers: int = 0
    frame_pred_context: int = 2  # latent frames given as context in frame prediction
    # frame prediction: up to this share of the context codes is replaced by random codes (the
    # share drawn per item from U(0, max)), so the model learns to continue a drifted context and
    # to lean on the clean anchor frame (given to half of the steps) -- long-video drift control
    frame_pred_noise: float = 0.0
    length_group: int = 8  # text tasks: items are grouped by caption length in groups of this many batches
    # t2v: t2v_short_share of the t2v weight trains on clips cut to their first t2v_short_frames
    # latent frames (the frames token still names the whole clip; the output ends early). A short
    # row is several times cheaper, so a step reads several times more captions where the
    # caption's colour, shape and first motion show; 0 = whole clips only.
    t2v_short_frames: int = 0
    t2v_short_share: float = 0.5
    # t2v and i2v: the loss on the output codes of latent frames 1 .. motion_frames (the first
    # that show the motion the caption names; frame 0 shows none, and later frames continue what
    # the earlier ones show, so only these need the caption's direction) is weighted by
    # motion_weight. A weight by position, not by the target, so it does not bias what the model
    # samples (as the removed changed-code weight did); held-out NLL stays unweighted. 1 = off.
    motion_weight: float = 1.0
    motion_frames: int = 1

    def __post_init__(self):
        unknown = sorted(set(self.tasks) - set(TASKS))
        if unknown:
            raise ConfigError(f"data.tasks: unknown task(s) {unknown} (known: {', '.join(TASKS)})")
        if not self.tasks or min(self.tasks.values()) < 0 or sum(self.tasks.values()) <= 0:
            raise ConfigError("data.tasks: give at least one task with a positive weight")
        if self.schedule not in ("constant", "paper"):
            raise ConfigError(f"data.schedule: constant or paper, got {self.schedule!r}")
        if not 0 <= self.text_dropout <= 1 or self.tokens_per_step < 1 or self.heldout_items < 0:
            raise ConfigError("data: text_dropout in [0, 1], tokens_per_step >= 1, heldout_items >= 0")
        if self.t2v_short_frames < 0 or not 0 <= self.t2v_short_share <= 1:
            raise ConfigError("data: t2v_short_frames >= 0 (0 = off) and t2v_short_share in [0, 1]")
        if not self.motion_weight > 0 or self.motion_frames < 1:
            raise ConfigError("data: motion_weight > 0 (1 = off) and motion_frames >= 1")


@dataclass
class PretrainLoopConfig:
    out: str = "runs/lm"
    model: str = "lm/cpu"  # an LM preset or YAML
    max_steps: int = 1000
    max_minutes: float = 0.0  # stop (checkpoint + export) after this much training time; 0 = off
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    adam_eps: float = 1e-8
    grad_clip: float = 1.0
    log_every: int = 10
    eval_every: int = 200
    checkpoint_every: int = 200
    keep_checkpoints: int = 3
    seed: int = 0
    device: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"  # Lightning strategy: auto | ddp | fsdp
    compile: bool = False
    activation_checkpointing: bool = False
    threads: int = 0
    progress: bool = True
    # with --init-from an LM whose factorized visual head has no pair bias (LMConfig.visual_pair_bias):
    # add it, initialised to the pointwise mutual information of the high and low sub-tokens in the
    # training items' visual codes (smoothed by pair_bias_alpha counts per pair), and train it
    add_pair_bias: bool = False
    pair_bias_alpha: float = 0.1
    # with --init-from an LM without visual position embeddings (LMConfig.visual_positions): add them
    # for this (T, H, W) latent grid, zero at init (the LM starts out unchanged), and train them
    visual_positions: tuple[int, ...] = ()
    # with --init-from: grow the LM to this many layers (0 = as it is). The new blocks are copies of
    # the block before them with their output projections (attention wo, MLP w2) zeroed, so the
    # grown LM computes what the given one does and training starts from there (LLaMA Pro's block
    # expansion); they are spread evenly between the old ones.
    grow_layers: int = 0

    def __post_init__(self):
        if self.max_steps < 1 or self.log_every < 1 or self.checkpoint_every < 1 or self.keep_checkpoints < 1:
            raise ConfigError("train: max_steps, log_every, checkpoint_every and keep_checkpoints must be >= 1")
        if self.lr <= 0 or not 0 <= self.min_lr_ratio <= 1 or self.warmup_steps < 0:
            raise ConfigError("train: lr > 0, min_lr_ratio in [0, 1], warmup_steps >= 0")


@dataclass
class PretrainConfig:
    data: PretrainDataConfig = field(default_factory=PretrainDataConfig)
    train: PretrainLoopConfig = field(default_factory=PretrainLoopConfig)


def load_config(path: str | Path, overrides: list[str] | None = None) -> PretrainConfig:
    p = resolve_config_path(path if "/" in str(path) or Path(path).is_file() else f"train/{path}")
    return from_dict(PretrainConfig, apply_overrides(load_yaml(p), overrides), where=str(p))


# ------------------------------------------------------------------------------------------- tasks
def task_fits(task: str, bucket: str, fields: list[str]) -> bool:
    kind, frames = bucket.split("_")[0], int(bucket.rsplit("_f", 1)[1])
    if task in AUDIO_TASKS and "audio" not in fields:
        return False
    if task == "stylize" and "structure" not in fields:
        return False
    if frames == 1 or kind == "image":  # a still: the first frame of a video, t2i only
        return task in IMAGE_TASKS
    return True


def examples_for(task: str, item: dict[str, Any], rng: np.random.Generator, cfg: PretrainDataConfig,
                 flags: dict[str, bool] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], int | None]:
    """(inputs, outputs, output frames) of `task` built from a shard item's stored codes. `flags`
    are drawn once per step for the whole batch (so rows keep one length): drop_text, first_frame
    (stylize's optional first frame), anchor (frame prediction's clean first frame), short (t2v on
    the first cfg.t2v_short_frames latent frames)."""
    flags = flags or {}
    v = torch.from_numpy(item["visual"])  # (t, h, w)
    text = torch.from_numpy(item["text"]) if "text" in item and len(item["text"]) else None
    if "text_emb" in item and len(item["text_emb"]):  # embedding mode: float (tokens, D)
        text = torch.from_numpy(item["text_emb"]).float()
    if flags.get("drop_text"):
        text = None
    frames = int(item["meta"].get("frames", 1 + 4 * (v.shape[0] - 1)))
    ins: dict[str, torch.Tensor] = {}
    if text is not None and any(p.name == "text" for p in TASKS[task].prefix):
        ins["text"] = text
    t, h, w = v.shape
    if task in ("t2v", "uncond"):  # uncond has no text part: `ins` is empty
        if task == "t2v" and flags.get("short") and cfg.t2v_short_frames:
            return ins, {"video": v[: cfg.t2v_short_frames]}, frames  # frames: the whole clip's
        return ins, {"video": v}, frames
    if task == "t2i":
        return ins, {"video": v[:1]}, 1
    if task == "i2v":
        return {**ins, "first_frame": v[:1]}, {"video": v}, frames
    if task == "frame_pred":
        k = min(cfg.frame_pred_context, t - 1)
        ctx = v[:k].clone()
        if cfg.frame_pred_noise > 0:  # a drifting context: a random share of its codes replaced
            rate = float(rng.uniform(0, cfg.frame_pred_noise))
            hit = torch.from_numpy(rng.random(tuple(ctx.shape)) < rate)
            pick = torch.from_numpy(rng.integers(0, v.numel(), size=tuple(ctx.shape)))
            ctx = torch.where(hit, v.reshape(-1)[pick], ctx)  # codes of the same clip: plausible
        anchor = {"anchor": v[:1]} if flags.get("anchor") else {}  # the clean first frame
        return {**ins, **anchor, "context": ctx}, {"video": v[k:]}, frames
    if task in ("inpaint", "outpaint"):
        m = v.clone()
        if task == "inpaint":  # a random box, through all latent frames
            bh, bw = int(rng.integers(h // 4, h // 2 + 1)), int(rng.integers(w // 4, w // 2 + 1))
            y, x = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
            m[:, y : y + bh, x : x + bw] = -1
        else:  # margins on one or two opposite sides
            side = int(rng.integers(0, 3))
            k = int(rng.integers(max(1, w // 8), w // 4 + 1))
            if side in (0, 2):
                m[:, :, :k] = -1
                m[:, :, w - k :] = -1
            if side in (1, 2):
                m[:, :k] = -1
                m[:, h - k :] = -1
        return {**ins, "masked": m}, {"video": v}, frames
    if task == "stylize":
        s = torch.from_numpy(item["structure"])
        extra = {"first_frame": v[:1]} if flags.get("first_frame") else {}
        return {**ins, "structure": s, **extra}, {"video": v}, frames
    a = torch.from_numpy(item["audio"])  # (L, F)
    if task == "v2a":
        return {"video": v}, {"audio": a}, None
    if task == "audio":  # v2a's guidance branch: the clip's sound with no picture
        return {}, {"audio": a}, None
    if task == "a2v":
        return {**ins, "audio": a}, {"video": v}, frames
    if task == "avcont":
        f0 = max(1, a.shape[1] // 5)
        return {"first_frame": v[:1], "audio": a[:, :f0]}, {"video": v, "audio": a[:, f0:]}, frames
    raise InputError(f"task {task!r}: no example builder")


def build_example(vocab: Vocabulary, task: str, item: dict[str, Any], rng: np.random.Generator,
                  cfg: PretrainDataConfig, flags: dict[str, bool] | None = None) -> Sequence:
    ins, outs, frames = examples_for(task, item, rng, cfg, flags)
    meta = item["meta"]
    res = f"{meta['height']}x{meta['width']}" if "height" in meta else None
    res = res if res and vocab.has(f"<res:{res}>") else None
    frames = frames if frames is not None and vocab.has(f"<frames:{frames}>") else None
    seq = build_sequence(vocab, task, ins, outs, res=res, frames=frames)
    if cfg.motion_weight != 1 and task in MOTION_TASKS:
        seq.loss_weight = motion_loss_weight(seq, cfg.motion_weight, cfg.motion_frames)
    return seq


def motion_loss_weight(seq: Sequence, weight: float, frames: int) -> torch.Tensor:
    """(T,) loss weights: `weight` on the tokens of the output video's latent frames 1 .. `frames`,
    1 elsewhere (PretrainDataConfig.motion_weight)."""
    w = torch.ones(len(seq))
    for s in seq.outputs:
        if s.modality == "visual" and len(s.shape) == 3 and s.shape[0] > 1:
            per_frame = s.length // s.shape[0]  # tokens per latent frame (2 per code when factorized)
            w[s.start + per_frame : s.start + per_frame * min(1 + frames, s.shape[0])] = weight
    return w


# ----------------------------------------------------------------------------------------- sampler
class BucketSampler:
    """Yields, per step, this rank's list of (task, bucket, item, step, flags) keys (module docstring).

    `plan`: (task, group, weight, global batch size); a group is a bucket, or a bucket's items with
    one caption length (text tasks), so that the rows of a batch have one length (no padding).
    `groups`: group -> (bucket, item indices)."""

    def __init__(self, plan: list[tuple[str, str, float, int]], groups: dict[str, tuple[str, np.ndarray]], *, seed: int,
                 rank: int, world: int, max_steps: int, text_dropout: float = 0.0,
                 image_schedule: tuple[float, float] | None = None):
        self.plan, self.groups, self.seed, self.rank, self.world = plan, groups, seed, rank, world
        self.max_steps, self.image_schedule, self.text_dropout = max_steps, image_schedule, text_dropout
        self.step = 0
        self.cursor = {g: 0 for g in groups}
        self.epoch = {g: 0 for g in groups}

    def _weights(self, step: int) -> np.ndarray:
        w = np.array([p[2] for p in self.plan], np.float64)
        if self.image_schedule is not None:
            phase, share = self.image_schedule
            img = np.array([p[0] in IMAGE_TASKS for p in self.plan])
            if img.any() and (~img).any():
                target = share if step < phase * self.max_steps else 1 - share
                w = np.where(img, w / w[img].sum() * target, w / w[~img].sum() * (1 - target))
        return w / w.sum()

    def _perm(self, group: str, epoch: int) -> np.ndarray:
        key = int.from_bytes(group.encode()[-8:].ljust(8, b"\0"), "little") % (2**31)
        return np.random.default_rng([self.seed, key, len(group), epoch]).permutation(len(self.groups[group][1]))

    def draw(self, step: int) -> tuple[str, str, int, dict[str, bool]]:
        rng = np.random.default_rng([self.seed, 7, step])
        k = int(rng.choice(len(self.plan), p=self._weights(step)))
        task, group, _, batch = self.plan[k]
        has_text = any(p.name == "text" for p in TASKS[task].prefix)
        flags = {"drop_text": bool(has_text and rng.random() < self.text_dropout), "first_frame": bool(rng.random() < 0.5),
                 "anchor": bool(rng.random() < 0.5), "short": group.endswith(SHORT)}
        return task, group, batch, flags

    def __iter__(self):
        while self.step < self.max_steps:
            task, group, batch, flags = self.draw(self.step)
            bucket, members = self.groups[group]
            n, idx = len(members), []
            while len(idx) < batch:
                if self.cursor[group] >= n:
                    self.cursor[group], self.epoch[group] = 0, self.epoch[group] + 1
                perm = self._perm(group, self.epoch[group])
                take = min(batch - len(idx), n - self.cursor[group])
                idx += members[perm[self.cursor[group] : self.cursor[group] + take]].tolist()
                self.cursor[group] += take
            step = self.step
            self.step += 1
            yield [(task, bucket, int(i), step, flags) for i in idx[self.rank :: self.world]]

    def __len__(self) -> int:
        return self.max_steps

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "cursor": dict(self.cursor), "epoch": dict(self.epoch)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.cursor = {b: int(v) for b, v in state["cursor"].items()}
        self.epoch = {b: int(v) for b, v in state["epoch"].items()}


class ShardExamples(torch.utils.data.Dataset):
    """Map-style dataset over (task, bucket, item, step) keys -> built sequences."""

    def __init__(self, root: str, vocab: Vocabulary, cfg: PretrainDataConfig, seed: int):
        from videopoet.data.shards import ShardReader

        self.root, self.vocab, self.cfg, self.seed = root, vocab, cfg, seed
        self.reader = ShardReader(root)

    def __getstate__(self):  # workers reopen the memmaps
        d = dict(self.__dict__)
        d["reader"] = None
        return d

    def __setstate__(self, d):
        from videopoet.data.shards import ShardReader

        self.__dict__.update(d)
        self.reader = ShardReader(self.root)

    def __len__(self) -> int:
        return sum(self.reader.buckets.values())

    def __getitem__(self, key: tuple[str, str, int, int, dict[str, bool]]) -> Sequence:
        task, bucket, i, step, flags = key
        item = self.reader.item(bucket, i)
        rng = np.random.default_rng([self.seed, 11, step, i])
        return build_example(self.vocab, task, item, rng, self.cfg, flags)


@dataclass
class TrainBatch:
    ids: torch.Tensor
    prefix_len: torch.Tensor
    loss_mask: torch.Tensor
    key_valid: torch.Tensor
    task: str
    tokens: int
    padding: float
    text_embeds: torch.Tensor | None = None  # (B, N, D) in embedding mode
    text_positions: torch.Tensor | None = None  # (B, N), -1 = none
    loss_weight: torch.Tensor | None = None  # (B, T) float training weights (data.motion_weight)


def collate_examples(seqs: list[Sequence], pad_id: int) -> TrainBatch:
    b = collate(seqs, pad_id)
    lengths = torch.tensor([len(s) for s in seqs])
    key_valid = torch.arange(b.ids.shape[1])[None] < lengths[:, None]
    real = int(lengths.sum())
    return TrainBatch(b.ids, b.prefix_len, b.loss_mask, key_valid, seqs[0].task, real, 1 - real / b.ids.numel(),
                      b.text_embeds, b.text_positions, b.loss_weight)


def unigram_baselines(reader, train_n: dict[str, int], heldout: dict[str, tuple[int, int]]) -> dict[str, float]:
    """Cross-entropy (nats per token) of held-out visual and audio codes under each modality's
    unigram code distribution on the training items (add-one smoothed): what an LM that ignores
    every condition and every earlier token would score. Audio is per level (each level has its
    own code range in the vocabulary)."""
    counts: dict[str, np.ndarray] = {}
    for b, n in train_n.items():
        for f in ("visual", "audio"):
            if f not in reader.fields(b):
                continue
            for i in range(n):
                x = reader.item(b, i)[f]
                rows = x.reshape(1, -1) if f == "visual" else x  # audio (L, F): per level
                for lvl, r in enumerate(rows):
                    key = f if f == "visual" else f"audio{lvl}"
                    c = np.bincount(r.reshape(-1), minlength=1)
                    acc = counts.setdefault(key, np.zeros(0, np.int64))
                    if len(c) > len(acc):
                        acc = np.pad(acc, (0, len(c) - len(acc)))
                    acc[: len(c)] += c
                    counts[key] = acc
    out: dict[str, float] = {}
    for f in ("visual", "audio"):
        keys = [k for k in counts if k.startswith(f)]
        nll = tokens = 0.0
        for key in keys:
            for b, (lo, hi) in heldout.items():
                if f not in reader.fields(b):
                    continue
                for i in range(lo, hi):
                    x = reader.item(b, i)[f]
                    r = x.reshape(-1) if f == "visual" else x[int(key[5:])]
                    acc = counts[key]
                    size = max(len(acc), int(r.max()) + 1)
                    p = (np.pad(acc, (0, size - len(acc))) + 1.0) / (acc.sum() + size)
                    nll += float(-np.log(p[r]).sum())
                    tokens += r.size
        if tokens:
            out[f"unigram_{f}"] = nll / tokens
    return out


# -------------------------------------------------------------------------------------------- loop
def visual_code_counts(reader, bits: int, heldout_items: int = 0, max_items: int | None = None) -> np.ndarray:
    """(2^bits,) float64: how often each visual code occurs in the items of every bucket with visual
    codes, the last `heldout_items` of each bucket left out, at most `max_items` items (evenly
    spaced; None: all)."""
    items = [(b, i) for b, n in reader.buckets.items() if "visual" in reader.fields(b)
             for i in range(max(0, n - heldout_items))]
    step = max(1, len(items) // max_items) if max_items else 1
    counts = np.zeros(1 << bits, np.float64)
    for b, i in items[::step]:
        counts += np.bincount(reader.item(b, i)["visual"].ravel(), minlength=counts.size)[: counts.size]
    return counts


def pair_pmi(reader, heldout_items: int, hi_bits: int, lo_bits: int, alpha: float = 0.1,
             max_items: int = 20000) -> torch.Tensor:
    """(2^hi_bits, 2^lo_bits) float32: log p(hi, lo) / (p(hi) p(lo)) of the visual codes of the
    training items (the last `heldout_items` of each bucket left out; at most `max_items` items,
    evenly spaced), with `alpha` added to every pair's count.

    Added to the low factor's logits given hi, it turns p(hi | h) p(lo | h) into the product of
    experts p(hi | h) p(lo | h) p(hi | lo) / p(hi) (normalised over lo): exact when the context
    and the pairing of the halves are independent, a starting point for training otherwise."""
    if alpha <= 0:
        raise ConfigError(f"train.pair_bias_alpha: must be > 0, got {alpha}")
    counts = visual_code_counts(reader, hi_bits + lo_bits, heldout_items, max_items)
    if not counts.any():
        raise ConfigError(f"{reader.root}: no training items with visual codes for the pair bias")
    joint = (counts + alpha).reshape(1 << hi_bits, 1 << lo_bits)
    joint /= joint.sum()
    pmi = np.log(joint) - np.log(joint.sum(1, keepdims=True)) - np.log(joint.sum(0, keepdims=True))
    return torch.from_numpy(pmi).float()


def _extended(model, added: dict, **cfg_changes):
    """A copy of `model` with its config changed by `cfg_changes` (parameters added or moved), every
    weight of `model` kept unless `added` gives it anew, the added ones set from `added` (the others
    at their initial values)."""
    from videopoet.lm.model import PrefixLM

    with torch.device("cpu"):
        new = PrefixLM(dataclasses.replace(model.cfg, **cfg_changes))  # validated by LMConfig
    new.load_state_dict({**new.state_dict(), **model.state_dict(), **added})
    return new.train(model.training)


def with_pair_bias(model, reader, heldout_items: int, alpha: float):
    """A copy of `model` (factorized visual head, no pair bias) with the pair bias added and set to
    `pair_pmi` of the reader's training items; every other weight is kept."""
    if not model.n_visual:
        raise ConfigError("train.add_pair_bias: the LM has no factorized visual head")
    pmi = pair_pmi(reader, heldout_items, model.hi_bits, model.lo_bits, alpha)
    return _extended(model, {"vis_pair": pmi}, visual_pair_bias=True)


def grow_layer_map(old: int, new: int) -> list[int]:
    """For each of the `new` layers, the old layer it starts from (LMConfig.n_layers `old` -> `new`);
    a layer equal to the one before it in the list is an added block. Added blocks are spread
    evenly: after old layers ((k + 1) * old // extra - 1), or round-robin when there are more
    added blocks than old ones."""
    extra = new - old
    counts = [0] * old
    for k in range(max(0, extra)):
        counts[(k + 1) * old // extra - 1 if extra <= old else k % old] += 1
    return [i for i in range(old) for _ in range(1 + counts[i])]


def with_more_layers(model, n_layers: int):
    """A copy of `model` with `n_layers` blocks (PretrainLoopConfig.grow_layers): the added blocks
    copy the block before them with wo and w2 zeroed, so the copy computes what `model` does."""
    old = model.cfg.n_layers
    if n_layers <= old:
        raise ConfigError(f"train.grow_layers: {n_layers} must exceed the LM's {old} layers")
    src = grow_layer_map(old, n_layers)
    sd = model.state_dict()
    blocks = {}
    for j, i in enumerate(src):
        added = j > 0 and src[j - 1] == i
        for k, v in sd.items():
            if k.startswith(f"layers.{i}."):
                name = k[len(f"layers.{i}.") :]
                zero = added and name in ("attn.wo.weight", "mlp.w2.weight")
                blocks[f"layers.{j}.{name}"] = torch.zeros_like(v) if zero else v  # load_state_dict copies
    return _extended(model, blocks, n_layers=n_layers)  # every layer renumbered: `blocks` overrides


def with_visual_positions(model, grid: tuple[int, ...]):
    """A copy of `model` with visual position embeddings for the latent grid (T, H, W) added, zero
    (so it computes what `model` does); every other weight is kept."""
    return _extended(model, {}, visual_positions=tuple(grid))


def _ckpt_dir_ok(p: Path) -> bool:
    return (p / "state.json").is_file()


class Pretrainer:
    def __init__(self, cfg: PretrainConfig, *, init_from: str | Path | None = None, fabric: Any = None):
        from lightning.fabric import Fabric

        from videopoet.data.shards import ShardReader
        from videopoet.device import lightning_precision, pick_device
        from videopoet.lm.model import PrefixLM
        from videopoet.lm.pretrained import load_lm
        from videopoet.lm.train import make_optimizer

        self.cfg = cfg
        t, d = cfg.train, cfg.data
        if t.threads > 0:
            torch.set_num_threads(t.threads)
        device = pick_device(t.device)
        self.fabric = fabric or Fabric(accelerator=device.type, devices=t.devices, num_nodes=t.num_nodes,
                                       strategy=t.strategy, precision=lightning_precision(device))
        if fabric is None:
            self.fabric.launch()  # sets up the process group (DDP/FSDP); under torchrun/SLURM it spawns nothing
        self.out = Path(t.out)
        if not d.shards:
            raise ConfigError("data.shards: the token shard directory (videopoet tokenize --out DIR) is required")
        self.reader = ShardReader(d.shards)
        shard_vocab = Vocabulary.load(Path(d.shards) / "vocab.json")
        torch.manual_seed(t.seed)
        if init_from is not None:
            src = Path(init_from)
            self.model, vocab = load_lm(src / "model" if (src / "model" / "config.json").is_file() else src)
            self.model.train()
            vocab.check_same(shard_vocab, f"{init_from}/vocab.json", f"{d.shards}/vocab.json")
            width = int(self.reader.index.get("text_embed_dim", 0))
            if width != self.model.cfg.text_embed_dim:
                raise ConfigError(f"{init_from}: text_embed_dim {self.model.cfg.text_embed_dim}, but the shards in "
                                  f"{d.shards} hold text embeddings of width {width} (0 = token mode)")
        else:
            from videopoet.lm.pretrained import load_preset

            vocab, mcfg = load_preset(t.model)
            vocab.check_same(shard_vocab, f"the model preset {t.model}", f"{d.shards}/vocab.json")
            width = int(self.reader.index.get("text_embed_dim", 0))  # embedding mode: the encoder's width
            if width and mcfg.text_embed_dim != width:
                if fabric is None:
                    print(f"lm: text_embed_dim {mcfg.text_embed_dim} of {t.model} replaced by the shards' text "
                          f"encoder width {width}", file=sys.stderr)
                mcfg.text_embed_dim = width
            with torch.device("cpu"):
                self.model = PrefixLM(mcfg)
        self.vocab = vocab
        if t.add_pair_bias and init_from is not None and self.model.vis_pair is None:
            self.model = with_pair_bias(self.model, self.reader, d.heldout_items, t.pair_bias_alpha)  # in train mode
            self.fabric.print(f"lm: pair bias added, initialised from the code statistics of {d.shards}")
        if t.visual_positions and init_from is not None and self.model.vis_pos_emb is None:
            self.model = with_visual_positions(self.model, t.visual_positions)
            self.fabric.print(f"lm: visual position embeddings added for the latent grid {list(t.visual_positions)}")
        if t.grow_layers and init_from is not None and self.model.cfg.n_layers != t.grow_layers:
            n0 = self.model.cfg.n_layers
            self.model = with_more_layers(self.model, t.grow_layers)
            self.fabric.print(f"lm: grown from {n0} to {t.grow_layers} layers (added blocks start as the identity)")
        if t.activation_checkpointing:
            from torch.utils.checkpoint import checkpoint

            for blk in self.model.blocks:
                fwd = blk.forward
                blk.forward = lambda *a, _f=fwd, **k: checkpoint(_f, *a, use_reentrant=False, **k)
        opt = make_optimizer(self.model, t.lr, weight_decay=t.weight_decay, betas=tuple(t.betas), eps=t.adam_eps)
        self.model_f, self.opt = self.fabric.setup(self.model, opt)
        self.step, self.skipped_steps, self.elapsed = 0, 0, 0.0
        self.plan, self.groups, self.heldout = self._plan()
        self.sampler = BucketSampler(self.plan, self.groups, seed=t.seed, rank=self.fabric.global_rank,
                                     world=self.fabric.world_size, max_steps=t.max_steps, text_dropout=d.text_dropout,
                                     image_schedule=(d.image_phase, d.image_share) if d.schedule == "paper" else None)
        self.loss_fn = _loss_fn(t.compile)

    # ---- mixture plan ---------------------------------------------------------------------------
    def _plan(self):
        """(plan, groups, held-out ranges): which (task, group) pairs the mixture draws from, with
        their weights and per-step batch sizes (tokens_per_step / sequence length)."""
        d = self.cfg.data
        buckets = self.reader.buckets
        train_n = {b: n - d.heldout_items for b, n in buckets.items() if n - d.heldout_items > 0}
        heldout = {b: (n - d.heldout_items, n) for b, n in buckets.items() if d.heldout_items and n > d.heldout_items}
        groups: dict[str, tuple[str, np.ndarray]] = {}
        plan = []
        rng = np.random.default_rng(0)
        world = self.fabric.world_size

        def rows(length: int) -> int:  # rows per step for sequences of `length` tokens, a multiple of world
            n = max(1, min(d.max_batch, d.tokens_per_step // length))
            return max(world, n // world * world)

        for task, weight in d.tasks.items():
            if weight <= 0:
                continue
            fits = [b for b in train_n if task_fits(task, b, self.reader.fields(b))]
            total = sum(train_n[b] for b in fits)
            has_text = any(p.name == "text" for p in TASKS[task].prefix)
            for b in fits:
                probe = build_example(self.vocab, task, self.reader.item(b, 0), rng, d, {"first_frame": True, "anchor": True})
                if len(probe) > self.model.cfg.max_seq_len:
                    raise ConfigError(f"task {task} on bucket {b}: sequences of {len(probe)} tokens exceed the model's "
                                      f"max_seq_len {self.model.cfg.max_seq_len}")
                batch = rows(len(probe))
                # t2v's short variant: its own groups (same items, own order) with a larger batch
                share = d.t2v_short_share if task == "t2v" and d.t2v_short_frames > 0 else 0.0
                if share > 0:
                    short_batch = rows(len(build_example(self.vocab, task, self.reader.item(b, 0), rng, d, {"short": True})))
                members = np.arange(train_n[b])
                split = {b: members}
                tf = "text" if "text" in self.reader.fields(b) else "text_emb"
                if has_text and tf in self.reader.fields(b) and train_n[b] >= 2 * d.length_group * batch:
                    # items sorted by caption length, in groups of >= length_group batches: the rows
                    # of a batch then differ by a few text tokens at most (padding << 1%)
                    order = members[np.argsort(self.reader.lengths(b, tf)[: train_n[b]], kind="stable")]
                    chunks = np.array_split(order, train_n[b] // (d.length_group * batch))
                    split = {f"{b}|len{k}": np.sort(c) for k, c in enumerate(chunks)}
                for g, m in split.items():
                    groups[g] = (b, m)
                    if share < 1:
                        plan.append((task, g, weight * (1 - share) * len(m) / total, batch))
                    if share > 0:
                        groups[g + SHORT] = (b, m)
                        plan.append((task, g + SHORT, weight * share * len(m) / total, short_batch))
        missing = sorted({t for t, w in d.tasks.items() if w > 0} - {p[0] for p in plan})
        if missing:
            self.fabric.print(f"note: no bucket in {d.shards} serves task(s) {missing} (they need "
                              "audio, structure codes or video); they are left out of the mixture")
        if not plan:
            raise ConfigError(f"{d.shards}: no bucket serves any task of data.tasks {sorted(d.tasks)}")
        return plan, groups, heldout

    def loader(self):
        from torchdata.stateful_dataloader import StatefulDataLoader

        ds = ShardExamples(self.cfg.data.shards, self.vocab, self.cfg.data, self.cfg.train.seed)
        pad = self.vocab.pad_id
        return StatefulDataLoader(ds, batch_sampler=self.sampler, num_workers=self.cfg.data.num_workers,
                                  collate_fn=lambda s: collate_examples(s, pad))

    def _lr(self) -> float:
        t = self.cfg.train
        if t.warmup_steps and self.step < t.warmup_steps:
            return t.lr * (self.step + 1) / t.warmup_steps
        frac = min(1.0, (self.step - t.warmup_steps) / max(1, t.max_steps - t.warmup_steps))
        return t.lr * (t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))

    # ---- one step -------------------------------------------------------------------------------
    def train_step(self, b: TrainBatch) -> dict[str, float]:
        dev = self.fabric.device
        ids, pl, lm, kv = (x.to(dev) for x in (b.ids, b.prefix_len, b.loss_mask, b.key_valid))
        for g in self.opt.param_groups:
            g["lr"] = self._lr()
        self.model_f.train()
        start = int(lm[:, 1:].any(0).to(torch.uint8).argmax())
        emb = None if b.text_embeds is None else b.text_embeds.to(dev)
        pos = None if b.text_positions is None else b.text_positions.to(dev)
        target = lm if b.loss_weight is None else b.loss_weight.to(dev)  # masked_lm_loss weighs by either
        loss = self.loss_fn(self.model_f, ids, pl, None if bool(kv.all()) else kv, target, start, emb, pos)
        finite = torch.isfinite(loss.detach())
        self.opt.zero_grad(set_to_none=True)
        grad_norm = float("nan")
        if bool(finite):
            self.fabric.backward(loss)
            grad_norm = float(self.fabric.clip_gradients(self.model_f, self.opt, max_norm=self.cfg.train.grad_clip or 1e12,
                                                         error_if_nonfinite=False))
        ok = bool(finite) and math.isfinite(grad_norm)
        if self.fabric.world_size > 1:  # every rank skips together
            flag = torch.tensor(1.0 if ok else 0.0, device=dev)
            ok = bool(self.fabric.all_reduce(flag, reduce_op="min") > 0.5)
        if ok:
            self.opt.step()
        else:
            self.opt.zero_grad(set_to_none=True)
            self.skipped_steps += 1
        self.step += 1
        return {"loss": float(loss.detach()), "grad_norm": grad_norm, "skipped": 0.0 if ok else 1.0}

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean output NLL per task on the held-out items (the same examples every time)."""
        if not self.heldout:
            return {}
        d = self.cfg.data
        self.model_f.eval()
        out = {}
        for task in sorted({p[0] for p in self.plan}):
            nll, n = 0.0, 0
            for b, (lo, hi) in self.heldout.items():
                if not task_fits(task, b, self.reader.fields(b)):
                    continue
                seqs = [build_example(self.vocab, task, self.reader.item(b, i), np.random.default_rng([1, i]), d,
                                      {"first_frame": True}) for i in range(lo, hi)]
                for k in range(0, len(seqs), 8):
                    tb = collate_examples(seqs[k : k + 8], self.vocab.pad_id)
                    ids, lm = tb.ids.to(self.fabric.device), tb.loss_mask.to(self.fabric.device)
                    kv = tb.key_valid.to(self.fabric.device)
                    emb = None if tb.text_embeds is None else tb.text_embeds.to(self.fabric.device)
                    pos = None if tb.text_positions is None else tb.text_positions.to(self.fabric.device)
                    h = self.model_f(ids, prefix_len=tb.prefix_len.to(self.fabric.device), key_valid=kv,
                                     text_embeds=emb, text_positions=pos)
                    from videopoet.lm.train import masked_lm_loss

                    w = int(lm[:, 1:].sum())
                    nll += float(masked_lm_loss(self.model, h, ids, lm)) * w
                    n += w
            if n:
                out[f"heldout_{task}"] = nll / n
        self.model_f.train()
        return out

    # ---- checkpoints ----------------------------------------------------------------------------
    @property
    def ckpt_root(self) -> Path:
        return self.out / "checkpoints"

    def save_checkpoint(self, loader_state: dict[str, Any]) -> Path:
        from safetensors.torch import save_file

        from videopoet.checkpoint import optimizer_to_tensors
        from videopoet.lm.pretrained import save_lm

        final = self.ckpt_root / f"step_{self.step:07d}"
        if self.fabric.is_global_zero:
            tmp = self.ckpt_root / f".step_{self.step:07d}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            save_lm(tmp / "model", self.model, self.vocab)
            tensors, meta = optimizer_to_tensors(self.opt)
            save_file(tensors, str(tmp / "optimizer.safetensors"))
            save_file({"torch": torch.get_rng_state()}, str(tmp / "rng.safetensors"))
            save_json({"step": self.step, "elapsed": self.elapsed, "skipped_steps": self.skipped_steps,
                       "optimizer": meta, "loader": _jsonable(loader_state), "config": to_dict(self.cfg)},
                      tmp / "state.json")
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            for old in sorted(p for p in self.ckpt_root.glob("step_*") if _ckpt_dir_ok(p))[: -self.cfg.train.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        self.fabric.barrier()
        return final

    def latest_checkpoint(self) -> Path | None:
        found = sorted(p for p in self.ckpt_root.glob("step_*") if _ckpt_dir_ok(p))
        return found[-1] if found else None

    def load_checkpoint(self, p: Path) -> dict[str, Any]:
        from safetensors.torch import load_file

        from videopoet.checkpoint import load_model_dir, load_state_strict, optimizer_from_tensors

        meta = json.loads((p / "state.json").read_text())
        saved = meta["config"]
        now = to_dict(self.cfg)
        if saved["train"]["model"] != now["train"]["model"] or saved["data"]["shards"] != now["data"]["shards"]:
            raise ConfigError(f"{p}: was trained with another model preset or shards; use a new train.out")
        Vocabulary.load(p / "model" / "vocab.json").check_same(self.vocab, f"{p}/model/vocab.json", "this run's vocabulary")
        _, state = load_model_dir(p / "model", kind="LM")
        load_state_strict(self.model, state, where=str(p / "model"))
        optimizer_from_tensors(self.opt, load_file(str(p / "optimizer.safetensors")), meta["optimizer"])
        torch.set_rng_state(load_file(str(p / "rng.safetensors"))["torch"])
        self.step, self.elapsed, self.skipped_steps = int(meta["step"]), float(meta["elapsed"]), int(meta["skipped_steps"])
        return meta["loader"]

    def export(self) -> Path:
        from videopoet.lm.pretrained import save_lm

        d = self.out / "model"
        if self.fabric.is_global_zero:
            save_lm(d, self.model, self.vocab)
        return d

    # ---- the loop -------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> dict[str, float]:
        t = self.cfg.train
        loader = self.loader()
        if resume:
            ck = self.latest_checkpoint()
            if ck is None:
                raise VideoPoetError(f"{self.ckpt_root}: no checkpoint to resume from")
            loader.load_state_dict(self.load_checkpoint(ck))
        zero = self.fabric.is_global_zero
        loggers = []
        if zero:
            self.out.mkdir(parents=True, exist_ok=True)
            save_json(to_dict(self.cfg), self.out / "train_config.json")
            loggers = _loggers(self.out)
            if self.heldout and not (self.out / "baselines.json").is_file():
                train_n = {b: lo for b, (lo, _) in self.heldout.items()}
                save_json(unigram_baselines(self.reader, train_n, self.heldout), self.out / "baselines.json")
        bar = None
        if zero and t.progress:
            from tqdm import tqdm

            bar = tqdm(total=t.max_steps, initial=self.step, desc="lm", dynamic_ncols=True, file=sys.stderr)
        peak = _peak_flops(self.fabric.device)
        window = {"tokens": 0, "flops": 0.0, "pad": [], "wait": 0.0, "compute": 0.0, "loss": {}}
        t_start, elapsed0, logs = time.time(), self.elapsed, {}
        it = iter(loader)
        history: list[dict[str, float]] = []
        while self.step < t.max_steps:
            t0 = time.time()
            try:
                b = next(it)
            except StopIteration:
                break
            t1 = time.time()
            logs = self.train_step(b)
            t2 = time.time()
            window["wait"] += t1 - t0
            window["compute"] += t2 - t1
            window["tokens"] += b.tokens * self.fabric.world_size
            window["flops"] += b.tokens * self.fabric.world_size * self.model.flops_per_token(b.ids.shape[1])
            window["pad"].append(b.padding)
            window["loss"].setdefault(b.task, []).append(logs["loss"])
            self.elapsed = elapsed0 + time.time() - t_start
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{logs['loss']:.3f}", task=b.task)
            row = None
            if self.step % t.log_every == 0 or self.step == t.max_steps:
                dt = window["wait"] + window["compute"]
                row = {"step": self.step, "lr": self._lr(), "loss": logs["loss"], "grad_norm": logs["grad_norm"],
                       "tokens_per_s": window["tokens"] / max(dt, 1e-9),
                       **({"mfu": window["flops"] / max(dt, 1e-9) / peak / self.fabric.world_size} if peak else {}),
                       "padding": float(np.mean(window["pad"])), "data_wait": window["wait"] / max(dt, 1e-9),
                       "skipped_steps": self.skipped_steps, "elapsed_s": self.elapsed,
                       **{f"loss_{k}": float(np.mean(v)) for k, v in window["loss"].items()}}
                window = {"tokens": 0, "flops": 0.0, "pad": [], "wait": 0.0, "compute": 0.0, "loss": {}}
            if t.eval_every and self.step % t.eval_every == 0:
                row = {**(row or {"step": self.step}), **self.evaluate()}
            if row is not None and zero:
                history.append(row)
                for lg in loggers:
                    lg.log_metrics({k: v for k, v in row.items() if k != "step"}, step=self.step)
                with open(self.out / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")
            budget = t.max_minutes and self.elapsed > 60 * t.max_minutes
            if (self.step % t.checkpoint_every == 0 and self.step < t.max_steps) or budget:
                self.save_checkpoint(loader.state_dict())
            if budget:
                self.fabric.print(f"stopped at step {self.step}: train.max_minutes={t.max_minutes} reached")
                break
        if bar is not None:
            bar.close()
        if self.latest_checkpoint() is None or self.latest_checkpoint().name != f"step_{self.step:07d}":
            self.save_checkpoint(loader.state_dict())
        if self.fabric.world_size > 1:  # every rank must hold the same weights
            sums = torch.stack([p.detach().double().sum() for p in self.model.parameters()])
            spread = (self.fabric.all_reduce(sums, reduce_op="max") - self.fabric.all_reduce(sums, reduce_op="min")).abs()
            if zero:
                save_json({"world_size": self.fabric.world_size, "max_param_sum_spread": float(spread.max())},
                          self.out / "ranks.json")
        self.export()
        for lg in loggers:
            lg.finalize("success")
        return logs


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, torch.Tensor):
        return x.tolist()
    return x


def _loggers(out: Path) -> list[Any]:
    from lightning.fabric.loggers import CSVLogger

    loggers = [CSVLogger(str(out), name="logs", version=0)]
    try:
        from lightning.fabric.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(str(out), name="tensorboard", version=0))
    except (ImportError, ModuleNotFoundError):
        pass
    return loggers


def _peak_flops(device: torch.device) -> float:
    """Peak FLOP/s for MFU: the VIDEOPOET_PEAK_FLOPS environment variable, else a CUDA device's
    bf16 peak from its name where known; on a CPU, a 1024^3 fp32 matmul's rate measured at start
    with torch's thread count (an achieved peak, not a datasheet figure); else 0 (no MFU)."""
    env = os.environ.get("VIDEOPOET_PEAK_FLOPS")
    if env:
        return float(env)
    if device.type == "cpu":
        a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
        a @ b
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < 0.3:
            a @ b
            n += 1
        return 2 * 1024**3 * n / (time.perf_counter() - t0)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, val in (("H100", 989e12), ("A100", 312e12), ("L40", 181e12), ("A10", 125e12), ("4090", 165e12)):
            if key in name:
                return val
    return 0.0


def _loss_fn(compile: bool):
    from videopoet.lm.train import masked_lm_loss

    def f(model, ids, prefix_len, key_valid, loss_mask, start, text_embeds=None, text_positions=None):
        h = model(ids, prefix_len=prefix_len, key_valid=key_valid, text_embeds=text_embeds, text_positions=text_positions)
        # the head is read from the unwrapped PrefixLM (Fabric's wrapper keeps it as .module)
        return masked_lm_loss(getattr(model, "module", model), h, ids, loss_mask, start)

    return torch.compile(f) if compile else f


def train(config: str | Path, overrides: list[str] | None = None, *, resume: bool = False,
          init_from: str | Path | None = None) -> Path:
    cfg = load_config(config, overrides)
    tr = Pretrainer(cfg, init_from=init_from)
    tr.fit(resume=resume)
    _shutdown_process_group()  # on success only: after an error on one rank a barrier could hang
    return tr.out / "model"


def _shutdown_process_group() -> None:
    """Tear the process group down while every rank is alive: left to interpreter exit, a gloo
    rank under CPU load was seen to abort ("terminate called without an active exception")."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        # gloo's worker thread drops the barrier's work after the wait returns, and that needs the
        # GIL; if the group is destroyed first (here, or when DDP's Reducer is freed) the main
        # thread joins that worker while holding the GIL: a deadlock, seen once in CI under load
        # (main in ~ProcessGroupGloo, worker in ~AsyncBarrierWork waiting for the GIL). Sleeping
        # releases the GIL and lets the worker finish first.
        time.sleep(0.5)
        dist.destroy_process_group()
