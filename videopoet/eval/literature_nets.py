"""C3D (UCF-101) and VGGish in plain torch, for the literature metrics in videopoet/eval/literature.py.

Nothing is downloaded: the weights come from a local file the user supplies, read by `read_tensors`
(safetensors; a torch state_dict .pt/.pth/.bin, also nested under "state_dict"/"model", or a
TorchScript archive's state_dict; .npz as Chainer or TF/Flax variables exported to numpy). Key names
are mapped to the ones used here: wrappers ("module.", "model.", "params.", ...) are stripped, "/"
becomes ".", Chainer's W/b and TF's weights/biases or Flax's kernel become weight/bias (TF/Flax
kernels are channels-last and are transposed). A file whose keys still do not match raises an error
naming the file and the missing and unexpected keys. Layer widths are read from the file, so the
same loaders build the published networks and the tiny ones the tests save.

- C3D (Tran et al. 2015), the classifier of the UCF-101 Inception Score (TGAN, MoCoGAN, TATS, MAGVIT,
  VideoPoet): trained on Sports-1M and fine-tuned on UCF-101, 101 classes. Input (N, 3, 16, 112,
  112) in BGR order and 0..255; the module holds the training-set mean volume (`mean`, (3, 16, 112,
  112), BGR) and subtracts it. conv1a..conv5b (3x3x3, padding 1), pool1 1x2x2, pool2..pool5 2x2x2,
  pool5 in ceil mode (Caffe's and Chainer's rounding: 2x7x7 -> 1x4x4; c3d-pytorch pads by (0, 1, 1)
  instead, which moves the windows by one pixel), fc6/fc7 4096 with ReLU (dropout is off in
  evaluation), fc8 the 101 logits. Names mapped: c3d-pytorch's conv1/conv2 -> conv1a/conv2a, fc8_*
  -> fc8, MAGVIT's x_offset (-mean, (T, H, W, C)) -> mean.
- VGGish (Hershey et al. 2017), the embedding of the Fréchet Audio Distance: input (N, 1, 96, 64)
  log-mel examples (time x bands); conv blocks 64 / 128 / 256x2 / 512x2 (3x3, padding 1, ReLU) each
  followed by a 2x2 max pool -> (N, 512, 6, 4), flattened in TF's (H, W, C) order so that converted
  weights load as they are, fc1_1 / fc1_2 4096 with ReLU, fc2 -> the 128-d embedding with no
  activation (TF's vggish_slim; the embedding FAD uses, before the PCA/quantisation postprocessor).
  Names mapped: torchvggish's features.N / embeddings.N, TF's vggish/conv3/conv3_1/weights; its
  PCA parameters (pproc.*) are ignored.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from videopoet.checkpoint import load_state_strict
from videopoet.errors import NotAvailableError, VideoPoetError

# ------------------------------------------------------------------------------------ reading files


def _flatten(obj, prefix: str = "") -> dict[str, torch.Tensor]:
    """Nested dicts of tensors / arrays -> {"a.b.c": tensor}; other leaves (step counts, configs) dropped."""
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    if isinstance(obj, np.ndarray) and obj.dtype.kind in "fiu":
        return {prefix: torch.from_numpy(np.ascontiguousarray(obj))}
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {}


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a weights file, by name (see the module docstring for the formats)."""
    p = Path(path)
    try:
        if p.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(p))
        if p.suffix.lower() in (".npz", ".npy"):
            data = np.load(p, allow_pickle=False)
            return _flatten(dict(data) if p.suffix.lower() == ".npz" else {"mean": data})
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception:
            obj = torch.jit.load(str(p), map_location="cpu")  # a TorchScript archive
    except Exception as e:
        raise VideoPoetError(f"{p}: cannot read weights (safetensors, torch .pt, .npz) ({e})") from None
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    return _flatten(obj)


_WRAPPERS = ("module.", "model.", "net.", "params.", "state_dict.", "c3d.", "vggish.")


def _canonical(key: str, value: torch.Tensor) -> tuple[str, torch.Tensor]:
    """A file's key -> (our naming convention, tensor in torch layout (out, in, *kernel))."""
    k = key.split(":")[0].replace("/", ".")
    while k.startswith(_WRAPPERS):
        k = k.split(".", 1)[1]
    head, _, leaf = k.rpartition(".")
    if leaf in ("W", "b", "biases"):  # Chainer, TF
        leaf = "weight" if leaf == "W" else "bias"
    elif leaf in ("weights", "kernel"):  # TF / Flax: (..., in, out) -> (out, in, ...)
        leaf = "weight"
        d = value.dim()
        value = value.permute(d - 1, d - 2, *range(d - 2)) if d >= 2 else value
    return (f"{head}.{leaf}" if head else leaf), value.contiguous()


def _check_keys(keys: set[str], layers: tuple[str, ...], path: Path, what: str) -> None:
    expected = {f"{n}.{p}" for n in layers for p in ("weight", "bias")}
    missing, unexpected = sorted(expected - keys), sorted(keys - expected)
    if missing or unexpected:
        raise VideoPoetError(f"{path}: the keys do not match {what} (missing {missing[:6]}, unexpected "
                             f"{unexpected[:6]}; the file has {len(keys)} tensors)")


# ---------------------------------------------------------------------------------------------- C3D

C3D_CONVS = ("conv1a", "conv2a", "conv3a", "conv3b", "conv4a", "conv4b", "conv5a", "conv5b")
C3D_FRAMES, C3D_SIZE, C3D_CLASSES = 16, 112, 101


class C3D(nn.Module):
    """(N, 3, 16, 112, 112) BGR clips in 0..255 -> (N, classes) logits."""

    def __init__(self, widths: tuple[int, ...] = (64, 128, 256, 512, 512), hidden: int = 4096,
                 classes: int = C3D_CLASSES):
        super().__init__()
        stage = (0, 1, 2, 2, 3, 3, 4, 4)  # conv -> width index
        c_in = 3
        for name, s in zip(C3D_CONVS, stage, strict=True):
            setattr(self, name, nn.Conv3d(c_in, widths[s], 3, padding=1))
            c_in = widths[s]
        self.fc6 = nn.Linear(widths[4] * 1 * 4 * 4, hidden)  # pool5 output: 1 x 4 x 4 for 16 x 112 x 112
        self.fc7 = nn.Linear(hidden, hidden)
        self.fc8 = nn.Linear(hidden, classes)
        self.register_buffer("mean", torch.zeros(3, C3D_FRAMES, C3D_SIZE, C3D_SIZE))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x - self.mean
        for name in C3D_CONVS:
            h = F.relu(getattr(self, name)(h))
            if name == "conv1a":
                h = F.max_pool3d(h, (1, 2, 2))  # (N, 64, 16, 56, 56)
            elif name in ("conv2a", "conv3b", "conv4b"):
                h = F.max_pool3d(h, 2)  # 8x28x28, 4x14x14, 2x7x7
        h = F.max_pool3d(h, 2, ceil_mode=True).flatten(1)  # (N, 512, 1, 4, 4) -> (N, 8192)
        h = F.relu(self.fc7(F.relu(self.fc6(h))))
        return self.fc8(h)


def c3d_mean_volume(mean: torch.Tensor, where: str) -> torch.Tensor:
    """A C3D mean (BGR, 0..255) -> (3, 16, 112, 112): per channel (3,), already cropped, or the
    Sports-1M volume (3, 16, 128, 171) centre-cropped to rows 8:120, columns 29:141 (C3D's test crop;
    for a square clip, TGAN's 128x128 crop of the mean's columns 21:149 gives the same window)."""
    m = mean.detach().float().squeeze()
    if m.shape == (3,):
        return m.reshape(3, 1, 1, 1).expand(3, C3D_FRAMES, C3D_SIZE, C3D_SIZE).clone()
    if m.shape == (3, C3D_FRAMES, 128, 171):
        return m[:, :, 8:120, 29:141].clone()
    if m.shape == (3, C3D_FRAMES, C3D_SIZE, C3D_SIZE):
        return m.clone()
    raise VideoPoetError(f"{where}: the C3D mean has shape {tuple(mean.shape)}; expected (3,), (3, 16, 112, 112) "
                         "or the Sports-1M volume (3, 16, 128, 171), BGR in 0..255")


def load_c3d(path: str | Path, mean_path: str | Path | None = None) -> C3D:
    """C3D from a weights file; the mean from the file's `mean` (or `x_offset`) or from `mean_path`
    (an .npz with `mean`, such as TGAN's mean2.npz, an .npy, safetensors or .pt), which wins."""
    p, what = Path(path), "C3D (conv1a..conv5b, fc6, fc7, fc8 and mean)"
    state = {}
    for k, v in read_tensors(p).items():
        k, v = _canonical(k, v)
        k = re.sub(r"^conv([12])\.", r"conv\1a.", k)  # c3d-pytorch
        state[re.sub(r"^fc8[^.]*\.", "fc8.", k)] = v
    if "x_offset" in state:  # MAGVIT's Flax port: x * 255 + x_offset with x_offset = -mean, (T, H, W, C)
        state["mean"] = -state.pop("x_offset").permute(3, 0, 1, 2)
    _check_keys(set(state) - {"mean"}, (*C3D_CONVS, "fc6", "fc7", "fc8"), p, what)
    classes = state["fc8.weight"].shape[0]
    if classes != C3D_CLASSES:
        raise VideoPoetError(f"{p}: fc8 has {classes} classes; the UCF-101 Inception Score needs C3D fine-tuned "
                             f"on UCF-101 ({C3D_CLASSES} classes; a Sports-1M model has 487)")
    if mean_path is not None:
        mp = Path(mean_path)
        if not mp.exists():
            raise NotAvailableError(f"IS: the C3D mean file {mp} does not exist")
        means = read_tensors(mp)
        if len(means) != 1 and "mean" not in means:
            raise VideoPoetError(f"{mp}: expected one array named 'mean', found {sorted(means)[:6]}")
        state["mean"] = means.get("mean", next(iter(means.values())))
    if "mean" not in state:
        raise NotAvailableError(f"IS: {p} holds no C3D input mean; give the Sports-1M mean volume as the mean file "
                                "(e.g. TGAN's mean2.npz: BGR, (3, 16, 128, 171))")
    state["mean"] = c3d_mean_volume(state["mean"], str(mean_path or p))
    widths = tuple(state[f"{n}.weight"].shape[0] for n in ("conv1a", "conv2a", "conv3a", "conv4a", "conv5a"))
    net = C3D(widths, state["fc6.weight"].shape[0], classes)
    load_state_strict(net, state, str(p))
    return net.eval()


# ------------------------------------------------------------------------------------------- VGGish

VGGISH_CONVS = ("conv1", "conv2", "conv3_1", "conv3_2", "conv4_1", "conv4_2")
VGGISH_FRAMES, VGGISH_BANDS = 96, 64
_TORCHVGGISH = {"features.0": "conv1", "features.3": "conv2", "features.6": "conv3_1", "features.8": "conv3_2",
                "features.11": "conv4_1", "features.13": "conv4_2", "embeddings.0": "fc1_1", "embeddings.2": "fc1_2",
                "embeddings.4": "fc2"}


class VGGish(nn.Module):
    """(N, 1, 96, 64) log-mel examples -> (N, embedding) embeddings."""

    def __init__(self, widths: tuple[int, ...] = (64, 128, 256, 512), hidden: int = 4096, embedding: int = 128):
        super().__init__()
        stage = (0, 1, 2, 2, 3, 3)
        c_in = 1
        for name, s in zip(VGGISH_CONVS, stage, strict=True):
            setattr(self, name, nn.Conv2d(c_in, widths[s], 3, padding=1))
            c_in = widths[s]
        self.fc1_1 = nn.Linear(widths[3] * (VGGISH_FRAMES // 16) * (VGGISH_BANDS // 16), hidden)
        self.fc1_2 = nn.Linear(hidden, hidden)
        self.fc2 = nn.Linear(hidden, embedding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for name in VGGISH_CONVS:
            h = F.relu(getattr(self, name)(h))
            if name in ("conv1", "conv2", "conv3_2", "conv4_2"):
                h = F.max_pool2d(h, 2)  # 96x64 -> 48x32 -> 24x16 -> 12x8 -> 6x4
        h = h.permute(0, 2, 3, 1).flatten(1)  # TF's (H, W, C) flatten order: (N, 6 * 4 * 512)
        return self.fc2(F.relu(self.fc1_2(F.relu(self.fc1_1(h)))))


def load_vggish(path: str | Path) -> VGGish:
    p = Path(path)
    state = {}
    for k, v in read_tensors(p).items():
        k, v = _canonical(k, v)
        if k.startswith("pproc."):  # torchvggish's PCA postprocessor: FAD uses the raw embedding
            continue
        head, _, leaf = k.rpartition(".")
        head = _TORCHVGGISH.get(head, head)
        head = re.sub(r"^(conv\d|fc\d)\.(\1_\d)$", r"\2", head)  # TF scopes: conv3/conv3_1 -> conv3_1
        state[f"{head}.{leaf}"] = v
    _check_keys(set(state), (*VGGISH_CONVS, "fc1_1", "fc1_2", "fc2"), p, "VGGish (conv1..conv4_2, fc1_1, fc1_2, fc2)")
    widths = tuple(state[f"{n}.weight"].shape[0] for n in ("conv1", "conv2", "conv3_1", "conv4_1"))
    net = VGGish(widths, state["fc1_1.weight"].shape[0], state["fc2.weight"].shape[0])
    load_state_strict(net, state, str(p))
    return net.eval()
