"""Model directories: `config.json` + `model.safetensors` (+ any extra files), written atomically.

Every model (video tokenizer, audio tokenizer, LM) is saved and loaded through these two functions
so that loading errors read the same everywhere and name the directory and the missing file.
No pickles: configs are JSON, weights are safetensors.
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


def save_model_dir(
    directory: str | Path,
    config: dict[str, Any],
    state_dict: dict[str, torch.Tensor],
    *,
    dtype: torch.dtype | None = None,
) -> Path:
    """Save `config` and `state_dict` into `directory` (created). `dtype` casts floating tensors
    (e.g. float16 to keep shipped weights small)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for k, v in state_dict.items():
        v = v.detach().cpu()
        if dtype is not None and v.is_floating_point():
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
