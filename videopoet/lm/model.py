"""The multimodal prefix LM: a decoder-only transformer whose prefix attends bidirectionally.

Design choices
- Llama-style blocks: pre-RMSNorm, rotary position embeddings (rotate-half convention, so weights
  map one-to-one onto `transformers`' Llama), SwiGLU MLP, no biases. Q/K/V and the two SwiGLU input
  projections are fused into one matmul each (fewer kernel launches when decoding one token).
  With a few rows and no gradient (decoding) the projections run through videopoet/lm/kernels'
  small-M kernel when it is available, otherwise through F.linear.
- Grouped-query attention when `n_kv_heads < n_heads`.
- Prefix-LM attention (videopoet/lm/attention.py): row b's first `prefix_len[b]` positions attend
  to each other both ways; the rest attend causally; `key_valid` masks padding.
- Text-embedding mode (`text_embed_dim > 0`): frozen encoder embeddings (e.g. T5-XL) are projected
  to d_model and replace the embeddings of the `<text_emb>` placeholder positions.
- Optional factorized visual tokens (MAGVIT-v2): a 2^K visual code c is embedded as
  E_hi[c >> K/2] + E_lo[c mod 2^(K/2)] and predicted by two heads of 2^(K/2) logits whose sum is
  the logit of c (the product of the two softmaxes) -- a dense 2^18 table does not fit at scale.
- `forward` returns the final hidden states (B, T, d). `logits(h, lo, hi)` projects onto any id
  range [lo, hi) -- decoding constrained to a range never computes the other logits -- and
  `prefix_lm_loss` computes the loss on output positions only.
- A preallocated `KVCache` makes decoding O(T) per step; the cache is an explicit argument.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from videopoet.config import from_dict
from videopoet.errors import ConfigError, InputError
from videopoet.lm.attention import BACKENDS, Mask, attention, make_mask, resolve_backend
from videopoet.lm.kernels import linear


@dataclass
class LMConfig:
    vocab_size: int
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 0  # 0 -> n_heads (no grouped-query attention)
    mlp_hidden: int = 0  # 0 -> 8/3 * d_model rounded up to `multiple_of`
    multiple_of: int = 64
    max_seq_len: int = 2048
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    text_embed_dim: int = 0  # > 0: project text-encoder embeddings of this width
    factorized_visual: bool = False
    visual_offset: int = 256
    visual_bits: int = 0  # K (needed with factorized_visual)
    # with factorized_visual: a learned table B (2^hi x 2^lo) added to the low sub-token's logits
    # given the high one, so that p(code) = p(hi | h) p(lo | h, hi) instead of p(hi | h) p(lo | h).
    # The two halves of an LFQ code are far from independent (on the shapes shards 1.15 nats of
    # mutual information; 2,365 of 262,144 codes in use), and sampling the halves independently
    # pairs them into wrong codes (benchmarks/RESULTS.md, session 14)
    visual_pair_bias: bool = False
    # (T, H, W) of the video tokenizer's latent grid (e.g. (9, 16, 16)); () = off. Adds learned
    # embeddings of each visual code's latent frame, row and column, E_t[t] + E_y[y] + E_x[x], to its
    # token embedding. Rotary positions alone give a code only its offset along the flattened
    # sequence; "the same place one latent frame earlier" is H * W tokens back, and its neighbours
    # differ from other offsets by one. A code's grid index is its place in its run of consecutive
    # visual (or <mask>) tokens; frames past T share E_t[T - 1]. Zero at init, so an LM trained
    # without them starts out unchanged (`train.visual_positions` adds them to one).
    visual_positions: tuple[int, ...] = ()
    mask_id: int = 3  # the vocabulary's <mask> id (a masked visual code: part of a visual run)
    tie_embeddings: bool = False
    attention: str = "auto"
    init_std: float = 0.02

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "max_seq_len"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"lm.{name}: must be > 0, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ConfigError(f"lm.d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if (self.d_model // self.n_heads) % 2:
            raise ConfigError("lm: the head dimension d_model / n_heads must be even (rotary embeddings)")
        if self.n_kv_heads == 0:
            self.n_kv_heads = self.n_heads
        if self.n_kv_heads < 0 or self.n_heads % self.n_kv_heads:
            raise ConfigError(f"lm.n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads}")
        if self.mlp_hidden == 0:
            h = int(8 * self.d_model / 3)
            self.mlp_hidden = self.multiple_of * math.ceil(h / self.multiple_of)
        if self.attention not in BACKENDS:
            raise ConfigError(f"lm.attention: {self.attention!r} is not one of {list(BACKENDS)}")
        if self.factorized_visual:
            if self.visual_bits < 2:
                raise ConfigError("lm.factorized_visual needs visual_bits >= 2")
            if self.visual_offset + (1 << self.visual_bits) > self.vocab_size:
                raise ConfigError("lm: the visual range does not fit in vocab_size")
            if self.tie_embeddings:
                raise ConfigError("lm: tie_embeddings cannot be combined with factorized_visual")
        elif self.visual_pair_bias:
            raise ConfigError("lm.visual_pair_bias needs factorized_visual")
        self.visual_positions = tuple(self.visual_positions)
        if self.visual_positions:
            if len(self.visual_positions) != 3 or min(self.visual_positions) <= 0:
                raise ConfigError(f"lm.visual_positions: expected (T, H, W) > 0, got {list(self.visual_positions)}")
            if self.visual_bits <= 0 or self.visual_offset + (1 << self.visual_bits) > self.vocab_size:
                raise ConfigError("lm.visual_positions needs visual_bits > 0 and the visual range inside vocab_size")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


def lm_config(vocab, model: dict, where: str = "model") -> LMConfig:
    """An LMConfig from a preset's `model:` section, with the sizes filled in from the vocabulary."""
    return from_dict(
        LMConfig,
        {
            **model,
            "vocab_size": vocab.size,
            "visual_offset": vocab.visual_offset,
            "visual_bits": vocab.visual_bits,
            "mask_id": vocab.id("<mask>"),
        },
        where=where,
    )


# ---- helpers ---------------------------------------------------------------------------------------
def check_ids(ids: torch.Tensor, vocab_size: int, name: str = "ids") -> None:
    """Raise an InputError naming `name` unless every id lies in [0, vocab_size)."""
    lo, hi = (int(v) for v in torch.aminmax(ids)) if ids.numel() else (0, 0)
    if lo < 0 or hi >= vocab_size:
        raise InputError(f"{name}: values must be in [0, {vocab_size}), got [{lo}, {hi}]")


def rotary_tables(head_dim: int, max_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos (T, 1, D) and sign-folded sin (T, 1, D) for the rotate-half convention."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    ang = torch.outer(torch.arange(max_len, dtype=torch.float32), inv)  # (T, D/2)
    cos, sin = ang.cos(), ang.sin()
    return torch.cat([cos, cos], dim=-1)[:, None], torch.cat([-sin, sin], dim=-1)[:, None]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, T, H, D); cos/sin (T, 1, D). x*cos + rotate_half(x)*sin, with rotate_half(x) =
    [-x2, x1] written as roll(x, D/2) times the sign-folded sin (three kernels)."""
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), sin)


class KVCache:
    """Preallocated keys/values, one (B, Hkv, max_len, D) pair per layer, filled left to right.
    (Separate tensors, not views of one: a compiled decoding step can then update them in place.)"""

    def __init__(self, cfg: LMConfig, batch: int, max_len: int, device=None, dtype=torch.float32):
        if max_len > cfg.max_seq_len:
            raise InputError(f"max_len={max_len}: longer than the model's max_seq_len={cfg.max_seq_len}")
        shape = (batch, cfg.n_kv_heads, max_len, cfg.head_dim)
        self.layers = [
            (torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))
            for _ in range(cfg.n_layers)
        ]
        self.key_valid = torch.ones(batch, max_len, dtype=torch.bool, device=device)
        # per row: the visual-run index the next token gets if it is a visual code (LMConfig.visual_positions)
        self.vis_next = torch.zeros(batch, dtype=torch.long, device=device)
        self.has_padding = False
        self.pos = 0
        self.max_len = max_len


# ---- modules -------------------------------------------------------------------------------------
class SelfAttention(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.h, self.hkv, self.dh = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.wqkv = nn.Linear(cfg.d_model, (self.h + 2 * self.hkv) * self.dh, bias=False)
        self.wo = nn.Linear(self.h * self.dh, cfg.d_model, bias=False)

    def forward(self, x, cos, sin, mask: Mask, cache: KVCache | None = None, layer: int = 0):
        B, T, _ = x.shape
        # split (not slicing): its backward is one cat instead of zero-filled buffers per slice
        qk, v = (
            linear(x, self.wqkv)
            .view(B, T, self.h + 2 * self.hkv, self.dh)
            .split([self.h + self.hkv, self.hkv], 2)
        )
        q, k = apply_rotary(qk, cos, sin).split([self.h, self.hkv], 2)  # q and k rotated together
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H or Hkv, T, D)
        if cache is not None:
            ck, cv = cache.layers[layer]  # (B, Hkv, max_len, D) views
            ck.narrow(2, cache.pos, T).copy_(k)
            cv.narrow(2, cache.pos, T).copy_(v)
            k, v = ck.narrow(2, 0, cache.pos + T), cv.narrow(2, 0, cache.pos + T)
        y = attention(q, k, v, mask)  # (B, H, T, D)
        return linear(y.transpose(1, 2).reshape(B, T, self.h * self.dh), self.wo)


class SwiGLU(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.hidden = cfg.mlp_hidden
        self.w13 = nn.Linear(cfg.d_model, 2 * cfg.mlp_hidden, bias=False)  # [gate; up]
        self.w2 = nn.Linear(cfg.mlp_hidden, cfg.d_model, bias=False)

    def forward(self, x):
        gate, up = linear(x, self.w13).split(self.hidden, dim=-1)
        return linear(F.silu(gate) * up, self.w2)


# The block's mathematics, named. Every other implementation of a decoding step (fast_decode's
# op-by-op step and the C++ decode_layers) states which BLOCK_ARCH it computes; change Block and
# bump this, and they stop being used until they are updated (plus a parity check at run time).
BLOCK_ARCH = "pre-RMSNorm / fused-QKV GQA attention / rotary (rotate-half) / SwiGLU / no biases: v1"


class Block(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.attn_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = SelfAttention(cfg)
        self.mlp_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp = SwiGLU(cfg)

    def forward(self, x, cos, sin, mask, cache=None, layer=0):
        x = x + self.attn(self.attn_norm(x), cos, sin, mask, cache, layer)
        return x + self.mlp(self.mlp_norm(x))


# ---- the model -----------------------------------------------------------------------------------
class PrefixLM(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.cfg = cfg
        V, d = cfg.vocab_size, cfg.d_model
        self.n_visual = (1 << cfg.visual_bits) if cfg.factorized_visual else 0
        self.lo_bits = cfg.visual_bits // 2
        self.hi_bits = cfg.visual_bits - self.lo_bits
        self.tok_emb = nn.Embedding(V - self.n_visual, d)  # factorized: non-visual ids only
        if cfg.factorized_visual:
            self.vis_emb_hi = nn.Embedding(1 << self.hi_bits, d)
            self.vis_emb_lo = nn.Embedding(1 << self.lo_bits, d)
            self.vis_head = nn.Linear(d, (1 << self.hi_bits) + (1 << self.lo_bits), bias=False)
        # B[hi, lo], zero at init (the independent factors); see LMConfig.visual_pair_bias
        self.vis_pair = nn.Parameter(torch.zeros(1 << self.hi_bits, 1 << self.lo_bits)) if cfg.visual_pair_bias else None
        # E_t, E_y, E_x of LMConfig.visual_positions, zero at init
        self.vis_pos_emb = (
            nn.ParameterList(nn.Parameter(torch.zeros(n, d)) for n in cfg.visual_positions) if cfg.visual_positions else None
        )
        self.text_proj = nn.Linear(cfg.text_embed_dim, d, bias=False) if cfg.text_embed_dim else None
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.RMSNorm(d, eps=cfg.norm_eps)
        self.head = None if cfg.tie_embeddings else nn.Linear(d, V - self.n_visual, bias=False)
        cos, sin = rotary_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self._backend: tuple[str, str] | None = None  # (device type, backend), resolved once
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = self.cfg.init_std
        for name, p in self.named_parameters():
            if name == "vis_pair" or name.startswith("vis_pos_emb"):
                nn.init.zeros_(p)
            elif p.dim() < 2:
                nn.init.ones_(p)  # RMSNorm weights
            elif name.endswith(("wo.weight", "w2.weight")):
                nn.init.normal_(p, std=std / math.sqrt(2 * self.cfg.n_layers))
            else:
                nn.init.normal_(p, std=std)

    def num_params(self, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= sum(p.numel() for name, p in self.named_parameters() if "emb" in name)
        return n

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward): 6 N + attention (PaLM appendix B)."""
        c = self.cfg
        return 6 * self.num_params(exclude_embeddings=True) + 12 * c.n_layers * c.d_model * seq_len

    def backend(self, device: torch.device) -> str:
        if self._backend is None or self._backend[0] != device.type:
            self._backend = (device.type, resolve_backend(self.cfg.attention, device.type))
        return self._backend[1]

    # ---- embeddings ------------------------------------------------------------------------------
    def visual_run_index(self, ids: torch.Tensor, start: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """ids (B, T) -> (index (B, T), next (B,)): each visual code's (or <mask>'s) place in its run
        of consecutive visual tokens, -1 for other tokens; `start` (B,) is the index the first
        token gets if it continues a run (a KV cache's `vis_next`; None: 0). `next` is the index
        the token after the last would get. Static shapes (a cumulative max), so it compiles."""
        vo = self.cfg.visual_offset
        body = ((ids >= vo) & (ids < vo + (1 << self.cfg.visual_bits))) | (ids == self.cfg.mask_id)
        T = ids.shape[1]
        pos = torch.arange(T, device=ids.device).expand_as(ids)
        last_break = torch.where(body, -1, pos).cummax(dim=1).values  # the last non-visual token, or -1
        first = start[:, None] if start is not None else 0
        idx = torch.where(last_break >= 0, pos - last_break - 1, pos + first)
        idx = torch.where(body, idx, -1)
        return idx, torch.where(body[:, -1], idx[:, -1] + 1, 0)

    def visual_position_embedding(self, idx: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """idx (...,) visual-run indices (-1 = not visual) -> E_t[t] + E_y[y] + E_x[x] (..., d), zero
        where idx < 0."""
        T, H, W = self.cfg.visual_positions
        i = idx.clamp(min=0)
        et, ey, ex = self.vis_pos_emb
        e = et[(i // (H * W)).clamp(max=T - 1)] + ey[(i // W) % H] + ex[i % W]
        return (e * (idx >= 0)[..., None]).to(dtype)

    def embed(self, ids: torch.Tensor, vis_idx: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings (B, T, d); with visual_positions, plus the visual position embeddings of
        vis_idx (B, T) (`visual_run_index`; required then)."""
        x = self._embed_tokens(ids)
        if self.vis_pos_emb is not None:
            if vis_idx is None:
                raise InputError("embed: this LM has visual position embeddings; pass vis_idx (visual_run_index)")
            x = x + self.visual_position_embedding(vis_idx, x.dtype)
        return x

    def _embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        if not self.n_visual:
            return self.tok_emb(ids)
        vo = self.cfg.visual_offset
        code = ids - vo
        is_vis = (code >= 0) & (code < self.n_visual)
        other = torch.where(ids >= vo + self.n_visual, ids - self.n_visual, ids)
        x = self.tok_emb(torch.where(is_vis, 0, other))
        c = code.clamp(0, self.n_visual - 1)
        xv = self.vis_emb_hi(c >> self.lo_bits) + self.vis_emb_lo(c & ((1 << self.lo_bits) - 1))
        return torch.where(is_vis[..., None], xv, x)

    def forward(
        self,
        ids: torch.Tensor,
        *,
        prefix_len: torch.Tensor | int | None = None,
        key_valid: torch.Tensor | None = None,
        text_embeds: torch.Tensor | None = None,
        text_positions: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """ids (B, T) -> final hidden states (B, T, d).

        prefix_len: (B,) or int, the bidirectional prefix of each row (None: plain causal);
        key_valid: (B, T) bool, False at padding; text_embeds (B, N, text_embed_dim) and
        text_positions (B, N) (-1 = none): embeddings written at those positions;
        cache: a KVCache; the tokens sit at positions [cache.pos, cache.pos + T), cache.pos advances.
        """
        B, T = ids.shape
        start = cache.pos if cache is not None else 0
        if start + T > (cache.max_len if cache is not None else self.cfg.max_seq_len):
            raise InputError(f"ids: {start + T} positions exceed the model's/cache's maximum length")
        compiling = torch.compiler.is_compiling()  # no data-dependent Python under torch.compile
        if not compiling:  # (a compiled caller checks its inputs itself: videopoet/lm/train.py)
            check_ids(ids, self.cfg.vocab_size)
        vis_idx = None
        if self.vis_pos_emb is not None:
            vis_idx, nxt = self.visual_run_index(ids, cache.vis_next if cache is not None else None)
            if cache is not None:
                cache.vis_next.copy_(nxt)  # in place, as the decoding steps update it
        x = self.embed(ids, vis_idx)
        if text_embeds is not None:
            if self.text_proj is None:
                raise InputError("text_embeds: this model has no text projection (text_embed_dim = 0)")
            # scatter the projected embeddings over their <text_emb> positions with static shapes
            # (no boolean indexing, so torch.compile traces it without graph breaks): positions
            # outside [start, start + T) go to one spare slot that is dropped
            pos = text_positions - start
            ok = (text_positions >= 0) & (pos < T) & (pos >= 0)
            slot = torch.where(ok, pos, T)[..., None].expand(-1, -1, x.shape[-1])
            spare = torch.cat([x, x.new_zeros(B, 1, x.shape[-1])], dim=1)
            x = spare.scatter(1, slot, self.text_proj(text_embeds).to(x.dtype))[:, :T]
        if isinstance(prefix_len, int):
            prefix_len = torch.full((B,), prefix_len, dtype=torch.long, device=ids.device)
        if cache is not None:
            if key_valid is not None:
                cache.key_valid[:, start : start + T] = key_valid
                cache.has_padding = cache.has_padding or not bool(key_valid.all())
            key_valid = cache.key_valid[:, : start + T] if cache.has_padding else None
        elif key_valid is not None and not compiling and bool(key_valid.all()):
            key_valid = None
        mask = make_mask(
            self.backend(ids.device), B, T, start + T, q_offset=start,
            prefix_len=prefix_len, key_valid=key_valid, device=ids.device,
        )  # fmt: skip
        cos, sin = self.rope_cos[start : start + T], self.rope_sin[start : start + T]
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, mask, cache, i)
        if cache is not None:
            cache.pos += T
        return self.norm(x)

    # ---- output projections ----------------------------------------------------------------------
    def _head_weight(self) -> torch.Tensor:
        return self.tok_emb.weight if self.head is None else self.head.weight

    def logits(self, h: torch.Tensor, lo: int = 0, hi: int | None = None) -> torch.Tensor:
        """Logits of the ids in [lo, hi) for hidden states h (..., d) -> (..., hi - lo)."""
        hi = self.cfg.vocab_size if hi is None else hi
        if not 0 <= lo < hi <= self.cfg.vocab_size:
            raise InputError(f"logits range [{lo}, {hi}): must lie in [0, {self.cfg.vocab_size})")
        W = self._head_weight()
        if not self.n_visual:
            return linear(h, W[lo:hi])
        vo, ve = self.cfg.visual_offset, self.cfg.visual_offset + self.n_visual
        parts = []
        if lo < min(hi, vo):
            parts.append(linear(h, W[lo : min(hi, vo)]))
        if max(lo, vo) < min(hi, ve):
            lh, ll = self.visual_factor_logits(h)
            if self.vis_pair is None:
                full = (lh[..., :, None] + ll[..., None, :]).flatten(-2)  # code = hi << lo_bits | lo
            else:  # log p(hi) + log p(lo | hi): the low factor is normalised per high value
                lo_given_hi = (ll[..., None, :] + self.vis_pair.to(ll.dtype)).log_softmax(-1)
                full = (lh.log_softmax(-1)[..., :, None] + lo_given_hi).flatten(-2)
            parts.append(full[..., max(lo, vo) - vo : min(hi, ve) - vo])
        if max(lo, ve) < hi:
            parts.append(linear(h, W[max(lo, ve) - self.n_visual : hi - self.n_visual]))
        return torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]

    def visual_factor_logits(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The factorized visual head's two factors for h (..., d): (high-bit logits, low-bit
        logits); the logit of code c = hi << lo_bits | lo is their sum (with visual_pair_bias the
        low factor also depends on hi: `visual_lo_logits`)."""
        if not self.n_visual:
            raise InputError("visual_factor_logits: this model has no factorized visual head")
        lh, ll = linear(h, self.vis_head).split([1 << self.hi_bits, 1 << self.lo_bits], dim=-1)
        return lh, ll

    def visual_lo_logits(self, ll: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        """The low factor's logits given the high sub-token hi (...,) of each row: ll + B[hi] with
        visual_pair_bias, else ll (the factors are independent)."""
        return ll if self.vis_pair is None else ll + self.vis_pair[hi].to(ll.dtype)

    def token_nll(self, h: torch.Tensor, targets: torch.Tensor, dense: bool = False) -> torch.Tensor:
        """Negative log-likelihood of `targets` (N,) under hidden states h (N, d) -> (N,).

        With the factorized visual head, visual targets are scored by it and the others by the
        non-visual head. dense=False runs each head on its own targets only (indexing, data-
        dependent shapes); dense=True runs both on every position and selects (static shapes,
        for torch.compile)."""
        if not self.n_visual:
            return F.cross_entropy(F.linear(h, self._head_weight()), targets, reduction="none")
        vo, nv = self.cfg.visual_offset, self.n_visual
        code = targets - vo
        is_vis = (code >= 0) & (code < nv)
        other = torch.where(targets >= vo + nv, targets - nv, targets)
        if dense:
            nll_o = self._other_nll(h, other.masked_fill(is_vis, 0))
            return torch.where(is_vis, self._visual_nll(h, code.clamp(0, nv - 1)), nll_o)
        nll = torch.zeros(targets.shape, dtype=h.dtype, device=h.device)
        if bool((~is_vis).any()):
            nll[~is_vis] = self._other_nll(h[~is_vis], other[~is_vis])
        if bool(is_vis.any()):
            nll[is_vis] = self._visual_nll(h[is_vis], code[is_vis])
        return nll

    def _other_nll(self, h: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """NLL under the non-visual head; ids index its rows (visual ids removed)."""
        return F.cross_entropy(F.linear(h, self._head_weight()), ids, reduction="none")

    def _visual_nll(self, h: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        """NLL of visual codes under the factorized head: the sum of the two factors' NLLs
        (the low one given the target's high sub-token)."""
        lh, ll = self.vis_head(h).split([1 << self.hi_bits, 1 << self.lo_bits], dim=-1)
        hi = code >> self.lo_bits
        return F.cross_entropy(lh, hi, reduction="none") + F.cross_entropy(
            self.visual_lo_logits(ll, hi), code & ((1 << self.lo_bits) - 1), reduction="none"
        )


def prefix_lm_loss(
    model: PrefixLM, h: torch.Tensor, ids: torch.Tensor, loss_mask: torch.Tensor
) -> torch.Tensor:
    """Mean next-token NLL over the targets marked in loss_mask (outputs only).

    h (B, T, d) from model(ids, ...); loss_mask (B, T): position t is a target predicted from t-1.
    The head runs only on the target positions.
    """
    m = loss_mask[:, 1:]
    if not bool(m.any()):
        raise InputError("loss_mask: no target positions (the loss covers outputs only)")
    return model.token_nll(h[:, :-1][m], ids[:, 1:][m]).mean()
