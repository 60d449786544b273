"""`videopoet generate ...`, `videopoet quickstart` and `videopoet sr ...` commands."""

from __future__ import annotations

from pathlib import Path

from videopoet.cli import command, not_available

not_available("generate", "task generation pipelines: not built yet")
not_available("sr train", "super-resolution: not built yet")


@command("quickstart")
def quickstart(*, out: Path = Path("demo_out"), num: int = 6, size: int = 64, seed: int = 0) -> None:
    """A first look at videopoet: shapes-benchmark clips, and the shipped tokenizers on one of them.

    Writes the data every task is trained and scored on: OUT/shapes/clips/*.mp4 (with audio: a tone
    per object, a click per bounce), their ground truth and manifest, and OUT/contact_sheet.png (one
    row per clip), and prints each clip's caption. Then it passes clip 0 through the shipped video
    tokenizer and audio codec (the tokens the LM sees) and writes OUT/reconstruction.mp4: original
    left, reconstruction right, with the reconstructed sound; it prints the token grids and PSNR/SSIM
    and mel distance.

    Args:
        out: output folder.
        num: number of clips (1..32).
        size: frame height and width in pixels (32..128).
        seed: generator seed.
    """
    from videopoet.data.shapes import ShapesConfig, make_clip, write_shapes
    from videopoet.data.writers import write_contact_sheet
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
    _tokenizer_round_trip(clips[0], Path(out) / "reconstruction.mp4")


def _tokenizer_round_trip(clip, path: Path) -> None:
    """Clip -> shipped video/audio tokens -> media, written side by side with the original."""
    import torch

    from videopoet.data.media import audio_to_tensor, tensor_to_video, video_to_tensor
    from videopoet.data.writers import write_video
    from videopoet.eval.audio_metrics import mel_distance
    from videopoet.eval.video_metrics import psnr, ssim
    from videopoet.tokenizers.cli_audio import load_audio_tokenizer
    from videopoet.tokenizers.cli_video import load_video_tokenizer

    vtok, atok = load_video_tokenizer(), load_audio_tokenizer()
    x = video_to_tensor(clip.video)[None]  # (1, 3, T, H, W)
    a = audio_to_tensor(clip.audio)[None]  # (1, 1, S)
    with torch.no_grad():
        vcodes = vtok.encode(x)  # (1, t, h, w)
        x_hat = vtok.decode(vcodes)[:, :, : x.shape[2]]
        acodes = atok.encode(a)  # (1, levels, frames)
        a_hat = atok.decode(acodes)  # (1, 1, frames * hop)
    side = tensor_to_video(torch.cat([x, x_hat], dim=-1))
    write_video(path, side, clip.fps, audio=a_hat[0].numpy(), sample_rate=atok.sample_rate)
    print(f"shipped tokenizers on clip 0: video -> {tuple(vcodes.shape[1:])} tokens, PSNR {psnr(x, x_hat):.1f} dB, "
          f"SSIM {ssim(x, x_hat):.3f}; audio -> {tuple(acodes.shape[1:])} tokens, "
          f"mel distance {mel_distance(a[..., : a_hat.shape[-1]], a_hat, atok.sample_rate):.3f}")
    from videopoet.eval.readback import read_objects, read_tones

    def objects(v):
        got = read_objects(v)
        return ", ".join(f"{c} {o.shape or '?'} {o.direction or '?'}" for c, o in sorted(got.items())) or "nothing"

    n = len(clip.attributes["objects"])
    tones = lambda w: ", ".join(f"{c} {s}" for s, c in sorted(read_tones(w, atok.sample_rate, n)))  # noqa: E731
    print(f"read back from the original:   {objects(clip.video)}; tones: {tones(clip.audio[0])}")
    print(f"read back from the round trip: {objects(tensor_to_video(x_hat))}; tones: {tones(a_hat[0, 0].numpy())}")
    print(f"reconstruction (original | decoded, with decoded sound): {path}")
