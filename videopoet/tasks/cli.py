"""`videopoet generate ...`, `videopoet quickstart` and `videopoet sr ...` commands."""

from __future__ import annotations

from pathlib import Path

from videopoet.cli import command, not_available

not_available("generate", "task generation pipelines: not built yet")
not_available("sr train", "super-resolution: not built yet")


@command("quickstart")
def quickstart(*, out: Path = Path("demo_out"), num: int = 6, size: int = 64, seed: int = 0) -> None:
    """Write a first look at videopoet: sample shapes-benchmark clips with audio and a contact sheet.

    For now this shows the data every task is trained and scored on: OUT/shapes/clips/*.mp4 (with
    audio: a tone per object, a click per bounce), their ground truth and manifest, and
    OUT/contact_sheet.png (one row per clip). It prints each clip's caption.

    Args:
        out: output folder.
        num: number of clips (1..32).
        size: frame height and width in pixels (32..128).
        seed: generator seed.
    """
    from videopoet.data.media import write_contact_sheet
    from videopoet.data.shapes import ShapesConfig, make_clip, write_shapes
    from videopoet.errors import InputError

    if not isinstance(num, int) or not 1 <= num <= 32:
        raise InputError(f"--num must be an integer in 1..32, got {num!r}")
    cfg = ShapesConfig(size=size)
    manifest = write_shapes(Path(out) / "shapes", num, cfg, seed=seed)
    clips = [make_clip(cfg, seed, i) for i in range(num)]
    chars = (8 * (size + 2)) // 6  # the sheet's default font is ~6 px a character
    labels = [f"{i}: {c.caption}" for i, c in enumerate(clips)]
    labels = [t if len(t) <= chars else t[: chars - 3] + "..." for t in labels]
    sheet = write_contact_sheet(Path(out) / "contact_sheet.png", [c.video for c in clips], labels=labels)
    for i, c in enumerate(clips):
        print(f"{i}: {c.caption}")
    print(f"wrote {num} clips with audio to {manifest.parent / 'clips'} (manifest: {manifest})")
    print(f"contact sheet: {sheet}")
