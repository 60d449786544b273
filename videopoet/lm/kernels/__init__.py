"""Optional C++ CPU kernels for decoding, built on first use.

`small_linear(x, w)` is `F.linear(x, w)` for a few rows (decoding: one per sequence), fp32 on the
CPU, reading the weights once at close to memory bandwidth (small_gemm.cpp says how). On this
project's benchmark CPU it is 1.8-1.9x MKL at eight rows and at parity at one, where MKL's
matrix-vector product stays in use (benchmarks/bench_small_gemm.py, benchmarks/RESULTS.md).

`decode_attention(q, k, v, valid)` is one decoding step's attention over the filled slots of a
KV cache, reading each cached key and value once: inductor's fused version of the same reductions
took ~2x the time of that read at 8 rows.

`decode_layers(x, weights, caches, valid, cos, sin, eps, n_heads, head=None)` runs every block
of a decoding step (RMSNorm, QKV, rotary, cache write, attention, output projection, SwiGLU,
residuals), the final norm and optionally the head, in one OpenMP parallel region
(videopoet/lm/fast_decode.py decides when it applies): both threads stream their share of every
matrix at once, and a step is one call instead of ~60 (benchmarks/RESULTS.md, "All blocks in one
call").

The source is compiled the first time it is needed with `torch.utils.cpp_extension` (a C++
compiler and ninja; torch.compile on the CPU needs the same compiler) into torch's extension
cache (`TORCH_EXTENSIONS_DIR`, default ~/.cache/torch_extensions), ~20-40 s once per machine and
source version. If the build fails, or `VIDEOPOET_KERNELS=0`, `available()` is False and callers
use PyTorch's own ops: results are the same up to float rounding, only slower.

Each kernel has an AVX-512 and an AVX2 + FMA version, chosen at run time (other CPUs get
PyTorch's ops). `VIDEOPOET_KERNELS_WIDTH=8` selects the AVX2 versions on an AVX-512 CPU, which is
how the tests check them there.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

# rows for which small_linear is used: at one row MKL's matrix-vector product already streams the
# weights at the read bandwidth (parity, benchmarks/bench_small_gemm.py); above 16 BLAS tiles win
MIN_ROWS, MAX_ROWS = 2, 16
_SOURCE = Path(__file__).with_name("small_gemm.cpp")
_lock = threading.Lock()
_state: dict[str, object] = {}


def available() -> bool:
    """Builds and loads the kernels on the first call; False if disabled or the build failed."""
    if "ok" in _state:
        return bool(_state["ok"])
    if torch.compiler.is_compiling():  # never build inside a trace (DecodeStep loads them first)
        return False
    with _lock:
        if "ok" not in _state:
            _state["ok"] = _load()
    return bool(_state["ok"])


def _load() -> bool:
    if os.environ.get("VIDEOPOET_KERNELS", "1") == "0":
        log.info("videopoet kernels disabled by VIDEOPOET_KERNELS=0")
        return False
    try:
        from torch.utils.cpp_extension import load

        try:  # the pip `ninja` package's binary, when the interpreter runs without its venv on PATH
            import ninja

            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
        except ImportError:
            pass

        load(
            name="videopoet_kernels",
            sources=[str(_SOURCE)],
            # -fopenmp: at::parallel_for is a header template that uses OpenMP like libtorch does
            extra_cflags=["-O3", "-fopenmp"],
            is_python_module=False,
            verbose=False,
        )

        @torch.library.register_fake("videopoet::small_linear")
        def _(x, w):
            return x.new_empty((*x.shape[:-1], w.shape[0]))

        @torch.library.register_fake("videopoet::decode_attention")
        def _(q, k, v, valid):
            return q.new_empty(q.shape)

        @torch.library.register_fake("videopoet::decode_layers")
        def _(x, weights, caches, valid, cos, sin, eps, n_heads, head=None):
            return x.new_empty(x.shape if head is None else (x.shape[0], head.shape[0]))

    except Exception as e:  # noqa: BLE001 -- no compiler, no ninja, a failed build: fall back
        warnings.warn(
            f"videopoet C++ kernels unavailable ({type(e).__name__}: {str(e)[:300]}); "
            "using PyTorch's linear instead (slower decoding)",
            RuntimeWarning,
            stacklevel=3,
        )
        return False
    _state["width"] = int(torch.ops.videopoet.small_linear_width())
    if not _state["width"]:
        log.info("videopoet kernels: no kernel for this CPU (x86-64 AVX2 or AVX-512 needed)")
        return False
    log.info("videopoet kernels loaded (vector width %d floats)", _state["width"])
    return True


def loaded() -> bool:
    """Whether the kernels are built and loaded already. Never builds them: a training or
    evaluation forward asks this, and only decoding (`generate`, `DecodeStep`) calls `available()`,
    so the 20-40 s build happens where decoding starts, not inside some no-grad forward."""
    return bool(_state.get("ok", False))


def vector_width() -> int:
    """Floats per vector register the kernel uses on this CPU: 16 (AVX-512), 8 (AVX2), 0 (none,
    or the kernels are not loaded: see `loaded`)."""
    return int(_state.get("width", 0)) if loaded() else 0


def usable(x: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether `small_linear` applies: fp32 CPU tensors, no gradient, MIN_ROWS..MAX_ROWS rows.
    (Static under torch.compile: shapes, dtypes and devices are all guarded.)"""
    rows = x.numel() // max(x.shape[-1], 1)
    return (
        x.device.type == "cpu"
        and w.device.type == "cpu"
        and x.dtype == torch.float32
        and w.dtype == torch.float32
        and MIN_ROWS <= rows <= MAX_ROWS
        and not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad))
        and loaded()
    )


def linear(x: torch.Tensor, w: torch.Tensor | torch.nn.Linear) -> torch.Tensor:
    """F.linear(x, w) (w a weight without bias, or a bias-free nn.Linear), through `small_linear`
    when it applies. A module is otherwise called as itself, so its hooks (FSDP, adapters) run
    whenever gradients or large batches are involved."""
    weight = w.weight if isinstance(w, torch.nn.Module) else w
    if usable(x, weight):
        return torch.ops.videopoet.small_linear(x, weight)
    return w(x) if isinstance(w, torch.nn.Module) else F.linear(x, weight)


def attention_head_ok(D: int) -> bool:
    """Whether the attention kernels take head size D on this CPU: a multiple of 8, at most 256
    (the AVX-512 kernel takes the multiples of 16, the AVX2 one the rest and AVX2-only CPUs)."""
    return vector_width() >= 8 and D % 8 == 0 and D <= 256


def attention_usable(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Whether `decode_attention` applies: fp32 CPU tensors and a head size the kernels take."""
    return (
        q.device.type == "cpu"
        and q.dtype == torch.float32
        and k.dtype == torch.float32
        and attention_head_ok(q.shape[-1])
    )
