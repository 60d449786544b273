"""Model directories: `config.json` + `model.safetensors` (+ any extra files), written atomically.

Every model (video tokenizer, audio tokenizer, LM) is saved and loaded through these two functions
so that loading errors read the same everywhere and name the directory and the missing file.
No pickles: configs are JSON, weights are safetensors.

`dtype=torch.int8` stores weight-only int8: every floating tensor of >= INT8_MIN_NUMEL elements and
>= 2 dimensions as int8 codes plus one float16 scale per row (dim 0: an output channel, an
embedding row), symmetric, round to nearest (`NAME` + `NAME::scale`); the rest as float16.
Loading dequantizes to float32, so a model runs as before (about half the size of float16; the
embedded LM's held-out loss changes by at most 0.02% per task, benchmarks/RESULTS.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from videopoet.config import load_json, save_json
from videopoet.errors import VideoPoetError
from videopoet.io_utils import atomic_path

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INT8_MIN_NUMEL = 4096
SCALE_SUFFIX = "::scale"


def quantize_int8(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: v (rows, ...) -> (codes int8, scale float16 (rows,))."""
    rows = v.float().reshape(v.shape[0], -1)
    scale = (rows.abs().amax(dim=1) / 127).clamp_min(1e-12).half()
    q = torch.round(rows / scale.float()[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.reshape(v.shape), scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (q.float().reshape(q.shape[0], -1) * scale.float()[:, None]).reshape(q.shape)


def save_model_dir(
    directory: str | Path,
    config: dict[str, Any],
    state_dict: dict[str, torch.Tensor],
    *,
    dtype: torch.dtype | None = None,
    int8_prefixes: tuple[str, ...] | None = None,
) -> Path:
    """Save `config` and `state_dict` into `directory` (created). `dtype` casts floating tensors
    (float16 to keep shipped weights small; int8: weight-only int8, see the module docstring;
    `int8_prefixes` limits int8 to the parameters under those names, the rest float16)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for k, v in state_dict.items():
        if SCALE_SUFFIX in k:
            raise VideoPoetError(f"save_model_dir: parameter name {k!r} contains {SCALE_SUFFIX!r}")
        v = v.detach().cpu()
        if dtype == torch.int8 and v.is_floating_point():
            chosen = int8_prefixes is None or k.startswith(tuple(int8_prefixes))
            if chosen and v.dim() >= 2 and v.numel() >= INT8_MIN_NUMEL:
                v, tensors[k + SCALE_SUFFIX] = quantize_int8(v)
            else:
                v = v.half()
        elif dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        tensors[k] = v.contiguous().clone()  # clone: safetensors refuses shared storage
    with atomic_path(d / WEIGHTS_NAME) as tmp:
        save_file(tensors, str(tmp))
    save_json(config, d / CONFIG_NAME)
    return d


def load_model_dir(directory: str | Path, kind: str = "model") -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Load (config dict, state dict) from a model directory; clear errors naming what is missing."""
    d = Path(directory)
    if not d.exists():
        raise VideoPoetError(f"{d}: {kind} directory not found")
    if not d.is_dir():
        raise VideoPoetError(f"{d}: expected a {kind} directory (with {CONFIG_NAME} and {WEIGHTS_NAME})")
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (d / name).is_file():
            raise VideoPoetError(f"{d}: not a {kind} directory, {name} is missing")
    config = load_json(d / CONFIG_NAME)
    try:
        state = load_file(str(d / WEIGHTS_NAME))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise VideoPoetError(f"{d / WEIGHTS_NAME}: cannot read weights ({e})") from None
    for k in [k for k in state if k.endswith(SCALE_SUFFIX)]:
        name = k[: -len(SCALE_SUFFIX)]
        q, scale = state.get(name), state.pop(k)
        if q is None or q.dtype != torch.int8 or scale.shape != (q.shape[0],):
            raise VideoPoetError(f"{d / WEIGHTS_NAME}: {k} has no matching int8 tensor {name!r}")
        state[name] = dequantize_int8(q, scale)
    return config, state


def load_state_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Load weights, casting to the module's dtypes; mismatched keys raise an error naming `where`."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise VideoPoetError(
            f"{where}: weights do not match the config (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    shapes = [f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own if state[k].shape != own[k].shape]
    if shapes:
        raise VideoPoetError(f"{where}: weight shapes do not match the config ({'; '.join(shapes[:3])})")
    cast = {k: v.to(own[k].dtype) if v.is_floating_point() else v for k, v in state.items()}
    module.load_state_dict(cast, strict=True)


def optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Optimizer state as (tensors for safetensors, JSON-able param groups and scalars): no pickles."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, v in list(tensors.items()) + list(meta["scalars"].items()):
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
