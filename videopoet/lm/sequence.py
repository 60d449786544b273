"""Sequence builder: a task spec + its inputs -> token ids, prefix length, loss mask, modality.

One function for training and generation. `build_sequence(vocab, task, inputs, outputs)`:

- `inputs[name]` for each prefix part of the task (see videopoet/lm/tasks.py):
  text   -> LongTensor (N,) of text-token ids in [0, S)            (token mode), or
            FloatTensor (N, D) of text embeddings, optional `inputs["text_mask"]` (N,) bool
            (embedding mode: positions hold `<text_emb>` and the LM adds the projected embedding);
  visual -> LongTensor code grid of any shape (e.g. (t, h, w)), values in [0, 2^K); -1 = masked
            (written as `<mask>`, for inpainting/outpainting); flattened in row-major order;
  audio  -> LongTensor (L, F), values in [0, A), flattened level-major.
- `outputs[name]` for each output part: the codes (training), or only their shape (generation:
  the positions are filled with `<pad>` and `legal` says which ids may be sampled there), or
  partial codes with -1 where the LM is to write (generation with pinned tokens: inpainting keeps
  the unmasked codes, image-to-video its first frame, any task a given output prefix); `known`
  marks the output positions whose ids are given.

Returns a `Sequence` with ids (T,), prefix_len (everything up to and including the first output
begin token; it attends bidirectionally), loss_mask (T,) over target tokens (outputs only),
modality (T,), legal (T, 2) [lo, hi) per position (what constrained decoding may emit) and, in
embedding mode, text_embeds (n, D) with their positions.

`parse_sequence(vocab, ids)` is the inverse: ids -> task name, input codes and output codes.
`collate` pads a list of sequences into a training batch (right padding).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum

import torch

from videopoet.errors import InputError
from videopoet.lm.tasks import BY_TOKEN, TaskSpec, get_task
from videopoet.lm.vocab import Vocabulary


class Mod(IntEnum):
    SPECIAL = 0
    TEXT = 1
    VISUAL = 2
    AUDIO = 3
    TEXT_EMB = 4


@dataclass
class Segment:
    """Where one part's codes sit in the sequence."""

    name: str
    modality: str
    start: int
    length: int
    shape: tuple[int, ...]


@dataclass
class Sequence:
    ids: torch.Tensor  # (T,) long
    prefix_len: int
    loss_mask: torch.Tensor  # (T,) bool: position i is a target (predicted from i-1)
    modality: torch.Tensor  # (T,) long, Mod values
    legal: torch.Tensor  # (T, 2) long: [lo, hi) of the ids allowed at each position
    task: str
    outputs: list[Segment] = field(default_factory=list)
    text_embeds: torch.Tensor | None = None  # (n, D)
    text_positions: torch.Tensor | None = None  # (n,) long
    known: torch.Tensor | None = None  # (T,) bool: output codes given (pinned) rather than to generate
    loss_weight: torch.Tensor | None = None  # (T,) float: training weight of each target (None = 1)

    def __len__(self) -> int:
        return int(self.ids.shape[0])


class _Writer:
    def __init__(self):
        self.ids: list[torch.Tensor] = []
        self.mod: list[torch.Tensor] = []
        self.lo: list[torch.Tensor] = []
        self.hi: list[torch.Tensor] = []
        self.n = 0

    def tokens(
        self, ids: torch.Tensor, mod: int | torch.Tensor, lo: int | torch.Tensor, hi: int | torch.Tensor
    ):
        ids = ids.reshape(-1).long()
        n = ids.numel()
        full = lambda v: v.reshape(-1).long() if torch.is_tensor(v) else torch.full((n,), int(v))  # noqa: E731
        self.ids.append(ids)
        self.mod.append(full(mod))
        self.lo.append(full(lo))
        self.hi.append(full(hi))
        self.n += n

    def special(self, vocab: Vocabulary, *names: str):
        for name in names:
            i = vocab.id(name)
            self.tokens(torch.tensor([i]), Mod.SPECIAL, i, i + 1)


def _check_codes(x: torch.Tensor, high: int, name: str, allow_masked: bool = False) -> torch.Tensor:
    if not torch.is_tensor(x) or x.dtype.is_floating_point or x.dtype == torch.bool:
        raise InputError(f"{name}: expected an integer tensor of codes, got {getattr(x, 'dtype', type(x))}")
    low = -1 if allow_masked else 0
    if x.numel() and (int(x.min()) < low or int(x.max()) >= high):
        raise InputError(f"{name}: codes must be in [{low}, {high}), got [{int(x.min())}, {int(x.max())}]")
    return x.long()


def _visual(w: _Writer, vocab: Vocabulary, codes: torch.Tensor, name: str, masked: bool,
            partial: bool = False) -> None:
    codes = _check_codes(codes, vocab.visual_size, name, allow_masked=True)
    if not (masked or partial) and codes.numel() and int(codes.min()) < 0:
        raise InputError(f"{name}: masked codes (-1) are only allowed in a task's masked input")
    flat = codes.reshape(-1)
    if partial:  # an output: -1 = to generate (<pad>, any visual code legal), else pinned
        lo, hi = vocab.visual_range()
        w.tokens(torch.where(flat < 0, vocab.pad_id, flat + vocab.visual_offset), Mod.VISUAL, lo, hi)
        return
    mask_id = vocab.id("<mask>")
    ids = torch.where(flat < 0, torch.full_like(flat, mask_id), flat + vocab.visual_offset)
    mod = torch.where(flat < 0, int(Mod.SPECIAL), int(Mod.VISUAL))
    lo, hi = vocab.visual_range()
    masked_pos = flat < 0
    w.tokens(ids, mod, torch.where(masked_pos, mask_id, lo), torch.where(masked_pos, mask_id + 1, hi))


def _audio(w: _Writer, vocab: Vocabulary, codes: torch.Tensor, name: str, partial: bool = False) -> None:
    if vocab.audio_levels == 0:
        raise InputError(f"{name}: this vocabulary has no audio codes")
    if codes.dim() != 2 or codes.shape[0] != vocab.audio_levels:
        raise InputError(
            f"{name}: expected audio codes (levels={vocab.audio_levels}, frames), got {tuple(codes.shape)}"
        )
    codes = _check_codes(codes, vocab.audio_codes, name, allow_masked=partial)
    level = torch.arange(vocab.audio_levels)[:, None].expand_as(codes)
    lo = vocab.audio_offset + level * vocab.audio_codes
    ids = torch.where(codes < 0, vocab.pad_id, codes + lo) if partial else codes + lo
    w.tokens(ids, Mod.AUDIO, lo, lo + vocab.audio_codes)


def _placeholder(w: _Writer, vocab: Vocabulary, modality: str, shape: tuple[int, ...], name: str) -> None:
    n = 1
    for s in shape:
        n *= int(s)
    pad = torch.full((n,), vocab.pad_id)
    if modality == "visual":
        lo, hi = vocab.visual_range()
        w.tokens(pad, Mod.VISUAL, lo, hi)
    else:
        if len(shape) != 2 or shape[0] != vocab.audio_levels:
            raise InputError(
                f"{name}: expected an audio shape (levels={vocab.audio_levels}, frames), got {shape}"
            )
        level = torch.arange(vocab.audio_levels)[:, None].expand(shape).reshape(-1)
        lo = vocab.audio_offset + level * vocab.audio_codes
        w.tokens(pad, Mod.AUDIO, lo, lo + vocab.audio_codes)


def build_sequence(
    vocab: Vocabulary,
    task: str | TaskSpec,
    inputs: Mapping[str, torch.Tensor],
    outputs: Mapping[str, torch.Tensor | tuple[int, ...]],
    *,
    res: str | None = None,
    frames: int | None = None,
) -> Sequence:
    """Lay out one example of `task` (see the module docstring for the input formats). `res`
    ("64x64") and `frames` (the output's frame count, one of vocab.DURATIONS) are written after the
    prefix parts as <res:...><frames:N>, so the prefix tells the target size and length."""
    spec = get_task(task) if isinstance(task, str) else task
    known = {p.name for p in spec.prefix} | (
        {"text_mask"} if any(p.modality == "text" for p in spec.prefix) else set()
    )
    unknown = sorted(set(inputs) - known)
    if unknown:
        raise InputError(f"task {spec.name}: unknown input(s) {unknown}; expected {sorted(known)}")
    w = _Writer()
    w.special(vocab, "<bos>", f"<task:{spec.token}>")
    text_embeds = text_positions = None
    for part in spec.prefix:
        x = inputs.get(part.name)
        if x is None:
            if not part.optional:
                raise InputError(f"task {spec.name}: input {part.name!r} ({part.modality}) is required")
            continue
        if part.source:
            w.special(vocab, f"<source:{part.source}>")
        if part.modality == "text":
            w.special(vocab, "<bot_i>")
            if torch.is_tensor(x) and x.dtype.is_floating_point:
                if x.dim() != 2:
                    raise InputError(
                        f"{part.name}: text embeddings must be (tokens, dim), got {tuple(x.shape)}"
                    )
                keep = inputs.get("text_mask")
                emb = x if keep is None else x[keep.bool().reshape(-1)]
                text_positions = torch.arange(w.n, w.n + emb.shape[0])
                text_embeds = emb
                e = vocab.id("<text_emb>")
                w.tokens(torch.full((emb.shape[0],), e), Mod.TEXT_EMB, e, e + 1)
            else:
                if vocab.text_size == 0:
                    raise InputError(
                        f"{part.name}: text token ids given, but the vocabulary has no text tokens (embedding mode)"
                    )
                ids = _check_codes(x, vocab.text_size, part.name).reshape(-1)
                lo, hi = vocab.text_range()
                w.tokens(ids + lo, Mod.TEXT, lo, hi)
            w.special(vocab, "<eot_i>")
        elif part.modality == "visual":
            w.special(vocab, "<bov_i>")
            _visual(w, vocab, x, part.name, masked=part.name == "masked")
            w.special(vocab, "<eov_i>")
        else:
            w.special(vocab, "<boa_i>")
            _audio(w, vocab, x, part.name)
            w.special(vocab, "<eoa_i>")
    if res is not None:
        w.special(vocab, f"<res:{res}>")
    if frames is not None:
        if not vocab.has(f"<frames:{frames}>"):
            raise InputError(f"frames {frames}: no duration token; the vocabulary has <frames:N> for N in {_durations(vocab)}")
        w.special(vocab, f"<frames:{frames}>")
    segments = []
    prefix_len = None
    known_out: list[tuple[int, torch.Tensor]] = []  # (start, known mask) of partial outputs
    for k, part in enumerate(spec.outputs):
        if part.name not in outputs:
            raise InputError(f"task {spec.name}: output {part.name!r} needs its codes or its shape")
        y = outputs[part.name]
        begin, end = ("<bov_o>", "<eov_o>") if part.modality == "visual" else ("<boa_o>", "<eoa_o>")
        w.special(vocab, begin)
        if prefix_len is None:
            prefix_len = w.n
        start = w.n
        if torch.is_tensor(y):
            shape = tuple(y.shape)
            partial = bool(y.numel()) and not y.dtype.is_floating_point and int(y.min()) < 0
            if partial:
                known_out.append((start, y.reshape(-1) >= 0))
            if part.modality == "visual":
                _visual(w, vocab, y, part.name, masked=False, partial=partial)
            else:
                _audio(w, vocab, y, part.name, partial=partial)
        else:
            shape = tuple(int(s) for s in y)
            _placeholder(w, vocab, part.modality, shape, part.name)
            known_out.append((start, torch.zeros(w.n - start, dtype=torch.bool)))
        segments.append(Segment(part.name, part.modality, start, w.n - start, shape))
        last = k == len(spec.outputs) - 1
        if not (last and spec.open_end):
            w.special(vocab, end)
    extra = set(outputs) - {p.name for p in spec.outputs}
    if extra:
        raise InputError(f"task {spec.name}: unknown output(s) {sorted(extra)}")
    if not spec.open_end:
        w.special(vocab, "<eos>")
    ids = torch.cat(w.ids)
    T = ids.shape[0]
    loss_mask = torch.arange(T) >= prefix_len
    known = None
    if known_out:  # a generation layout: everything after the prefix is known but what is to write
        known = torch.arange(T) >= prefix_len
        for start, k in known_out:
            known[start : start + k.numel()] = k
    return Sequence(
        ids=ids, prefix_len=int(prefix_len), loss_mask=loss_mask, modality=torch.cat(w.mod),
        legal=torch.stack([torch.cat(w.lo), torch.cat(w.hi)], dim=1), task=spec.name,
        outputs=segments, text_embeds=text_embeds, text_positions=text_positions, known=known,
    )  # fmt: skip


def output_codes(vocab: Vocabulary, seq: Sequence, generated: torch.Tensor) -> dict[str, torch.Tensor]:
    """Generated ids (B, T - prefix_len) for `seq`'s layout -> {output name: codes (B, *shape)}.

    Raises InputError if a position holds an id outside its legal range.
    """
    gen = generated if generated.dim() == 2 else generated[None]
    lo, hi = seq.legal[seq.prefix_len :].T
    if gen.shape[1] != lo.shape[0]:
        raise InputError(f"generated: expected {lo.shape[0]} tokens after the prefix, got {gen.shape[1]}")
    bad = (gen < lo) | (gen >= hi)
    if bool(bad.any()):
        b, i = (int(v) for v in bad.nonzero()[0])
        raise InputError(
            f"generated[{b}, {i}]: id {int(gen[b, i])} is outside the legal range [{int(lo[i])}, {int(hi[i])})"
        )
    out = {}
    for s in seq.outputs:
        x = gen[:, s.start - seq.prefix_len : s.start - seq.prefix_len + s.length]
        if s.modality == "visual":
            codes = x - vocab.visual_offset
        else:
            codes = (x - vocab.audio_offset) % vocab.audio_codes
        out[s.name] = codes.reshape(gen.shape[0], *s.shape)
    return out if generated.dim() == 2 else {k: v[0] for k, v in out.items()}


def parse_sequence(
    vocab: Vocabulary, ids: torch.Tensor
) -> tuple[str, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The inverse of `build_sequence`: ids (T,) -> (task, inputs, outputs), codes flattened
    (visual (n,) with -1 for `<mask>`, audio (L, F), text token ids (n,); embeddings come back as
    the number of `<text_emb>` positions, an int64 scalar tensor)."""
    seq = [int(i) for i in ids.reshape(-1)]
    if len(seq) < 2 or seq[0] != vocab.id("<bos>"):
        raise InputError("ids: a sequence starts with <bos><task:NAME>")
    task = vocab.token_name(seq[1])
    if not task.startswith("<task:"):
        raise InputError(f"ids[1]: expected a task token, got {task}")
    token = task[len("<task:") : -1]
    if token not in BY_TOKEN:
        raise InputError(f"ids[1]: {task} is a retired task token")
    spec = get_task(BY_TOKEN[token])
    ends = {
        "<bot_i>": "<eot_i>", "<bov_i>": "<eov_i>", "<boa_i>": "<eoa_i>",
        "<bov_o>": "<eov_o>", "<boa_o>": "<eoa_o>",
    }  # fmt: skip
    closers = {vocab.id(e) for e in ends.values()} | {vocab.id("<eos>")}
    inputs: dict[str, torch.Tensor] = {}
    outputs: dict[str, torch.Tensor] = {}
    parts = list(spec.prefix)
    outs = list(spec.outputs)
    source = None
    i = 2
    while i < len(seq):
        name = vocab.token_name(seq[i])
        i += 1
        if name.startswith("<source:"):
            source = name[len("<source:") : -1]
            continue
        if name.startswith(("<res:", "<frames:")) or name == "<eos>":
            continue
        if name not in ends:
            raise InputError(f"ids[{i - 1}]: unexpected token {name} in a {spec.name} sequence")
        j = i
        while j < len(seq) and seq[j] not in closers:
            j += 1
        body = torch.tensor(seq[i:j], dtype=torch.long)
        i = j + 1
        is_out = name.endswith("_o>")
        modality = {"t": "text", "v": "visual", "a": "audio"}[name[3]]
        pool = outs if is_out else parts
        cand = [p for p in pool if p.modality == modality and (is_out or p.source == source)]
        if not cand:
            raise InputError(f"{spec.name}: unexpected {modality} {'output' if is_out else 'input'} part")
        part = cand[0]
        pool.remove(part)
        source = None
        if modality == "text":
            if bool((body == vocab.id("<text_emb>")).all()) and body.numel():
                codes = torch.tensor(body.numel())
            else:
                codes = body - vocab.text_offset
        elif modality == "visual":
            codes = torch.where(body == vocab.id("<mask>"), -1, body - vocab.visual_offset)
        else:
            codes = ((body - vocab.audio_offset) % vocab.audio_codes).reshape(vocab.audio_levels, -1)
        (outputs if is_out else inputs)[part.name] = codes
    return spec.name, inputs, outputs


def _durations(vocab: Vocabulary) -> list[int]:
    return [int(t[8:-1]) for t in vocab.special_tokens if t.startswith("<frames:")]


@dataclass
class Batch:
    ids: torch.Tensor  # (B, T)
    prefix_len: torch.Tensor  # (B,)
    loss_mask: torch.Tensor  # (B, T)
    modality: torch.Tensor  # (B, T)
    text_embeds: torch.Tensor | None = None  # (B, N, D)
    text_positions: torch.Tensor | None = None  # (B, N), -1 = none
    loss_weight: torch.Tensor | None = None  # (B, T) float, where any sequence has weights (padding: 0)


def collate(seqs: list[Sequence], pad_id: int, pad_to: int | None = None) -> Batch:
    """Right-pad sequences into a training batch. Padding sits after every real token, so causal
    outputs never see it and the prefix never reaches it; the loss mask is False there. The loss
    weights are stacked (1 where a sequence has none) when any sequence has them."""
    T = max(len(s) for s in seqs) if pad_to is None else pad_to
    B = len(seqs)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    loss = torch.zeros(B, T, dtype=torch.bool)
    mod = torch.zeros(B, T, dtype=torch.long)
    for b, s in enumerate(seqs):
        if len(s) > T:
            raise InputError(f"sequence {b}: length {len(s)} > pad_to={T}")
        ids[b, : len(s)] = s.ids
        loss[b, : len(s)] = s.loss_mask
        mod[b, : len(s)] = s.modality
    weight = None
    if any(s.loss_weight is not None for s in seqs):
        weight = torch.zeros(B, T)
        for b, s in enumerate(seqs):
            weight[b, : len(s)] = 1.0 if s.loss_weight is None else s.loss_weight
        weight *= loss
    embeds, positions = stack_text_embeds(seqs, offsets=[0] * B)
    prefix = torch.tensor([s.prefix_len for s in seqs])
    return Batch(ids, prefix, loss, mod, embeds, positions, weight)


def stack_text_embeds(
    seqs: list[Sequence], offsets: list[int]
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Text embeddings of several sequences as (B, N, D) + positions (B, N) (-1 = none), each
    row's positions shifted by its offset (left padding)."""
    with_emb = [s for s in seqs if s.text_embeds is not None]
    if not with_emb:
        return None, None
    N = max(s.text_embeds.shape[0] for s in with_emb)
    D = with_emb[0].text_embeds.shape[1]
    emb = torch.zeros(len(seqs), N, D, dtype=with_emb[0].text_embeds.dtype)
    pos = torch.full((len(seqs), N), -1, dtype=torch.long)
    for b, (s, off) in enumerate(zip(seqs, offsets, strict=True)):
        if s.text_embeds is not None:
            n = s.text_embeds.shape[0]
            emb[b, :n] = s.text_embeds
            pos[b, :n] = s.text_positions + off
    return emb, pos
