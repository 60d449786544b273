"""Default models shipped with the package (small, trained by this project on offline data).

`asset_dir(name)` returns the folder of a shipped default (e.g. "video_tokenizer") or raises a
clear error telling the user how to train one or pass `--model`.
"""

from __future__ import annotations

from pathlib import Path

from videopoet.errors import NotAvailableError

ASSETS = Path(__file__).resolve().parent


def asset_dir(name: str) -> Path:
    d = ASSETS / name
    if not (d / "config.json").is_file():
        raise NotAvailableError(
            f"no default {name.replace('_', ' ')} is shipped in {ASSETS}; "
            "train one (see README) and pass its directory with --model"
        )
    return d
