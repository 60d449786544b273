"""Where does an audio codec lose the shapes tones? Pure tones through encoder, quantizer and decoder.

    python benchmarks/audio_tone_trace.py [--model DIR] [--json FILE]

For each of the 24 shapes tones (220-1616 Hz, 2 s at amplitude 0.12) it prints the round trip's
RMS and dominant frequency, and whether the unquantized path (encoder -> decoder, no codes) keeps
it: a tone lost without quantization is lost by the encoder or the decoder, not by the codebooks.
Then, layer by layer through the encoder, the RMS difference between a tone's activations and
silence's (per element), for a low (440 Hz) and a high (1357 Hz) tone: the layer where the high
tone's difference collapses is where the encoder drops it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from videopoet.data.shapes import COLOURS, SHAPES, dominant_frequency, nearest_tone, tone_frequency  # noqa: E402
from videopoet.tokenizers.audio import AudioTokenizer  # noqa: E402


def sine(freq: float, seconds: float, sr: int, amp: float = 0.12) -> torch.Tensor:
    t = np.arange(int(seconds * sr)) / sr
    return torch.tensor(amp * np.sin(2 * math.pi * freq * t), dtype=torch.float32)[None, None]


@torch.no_grad()
def trace(model: AudioTokenizer) -> dict:
    sr = model.sample_rate
    tones = []
    for s in SHAPES:
        for c in COLOURS:
            f = tone_frequency(s, c)
            x = sine(f, 2.0, sr)
            y = model.decode(model.encode(x))[0, 0].numpy()
            z = model.decode_latents(model.encode_latents(x))[0, 0].numpy()
            fy, fz = dominant_frequency(y, sr), dominant_frequency(z, sr)
            tones.append({"shape": s, "colour": c, "hz": round(f, 1), "rms_out": float(np.sqrt((y**2).mean())),
                          "hz_out": fy, "kept": nearest_tone(fy) == (s, c),
                          "kept_unquantized": nearest_tone(fz) == (s, c)})
    layers = {}
    enc = model.model.encoder
    silence = sine(0.0, 1.0, sr)

    if hasattr(enc, "layers"):  # SEANet on the waveform
        stages = list(enc.layers)
    else:  # SpectralEncoder: spectrum, its conv stack, then the LSTM (with its skip) and the output conv
        stages = [enc.features, *enc.convs, lambda h: h + enc.lstm(h.transpose(1, 2))[0].transpose(1, 2), enc.out]

    def acts(x: torch.Tensor) -> list[torch.Tensor]:
        out, h = [], x
        for layer in stages:
            h = layer(h)
            out.append(h)
        return out

    base = acts(silence)
    for f in (440.0, 1357.0):
        a = acts(sine(f, 1.0, sr))
        layers[f"{f:g} Hz"] = [round(float((u - v).pow(2).mean().sqrt()), 5) for u, v in zip(a, base, strict=True)]
    names = [getattr(layer, "__name__", type(layer).__name__).replace("Encodec", "").strip("_<>")
             for layer in stages]
    return {"tones": tones, "kept": sum(t["kept"] for t in tones), "kept_unquantized": sum(t["kept_unquantized"] for t in tones),
            "encoder_layers": names, "difference_from_silence": layers}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="codec directory (default: the shipped one)")
    ap.add_argument("--json", default=None, help="also write the result here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.model is None:
        from videopoet.assets import asset_dir

        args.model = str(asset_dir("audio_tokenizer"))
    r = trace(AudioTokenizer.from_pretrained(args.model).eval())
    lost = [f"{t['hz']:g}" for t in r["tones"] if not t["kept"]]
    n = len(r["tones"])
    print(f"{args.model}: {r['kept']}/{n} tones kept ({r['kept_unquantized']}/{n} without quantization); lost (Hz): {' '.join(lost)}")
    print("encoder layer:      " + " ".join(f"{n[:8]:>8}" for n in r["encoder_layers"]))
    for k, v in r["difference_from_silence"].items():
        print(f"{k:>10} vs silence " + " ".join(f"{x:8.4f}" for x in v))
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, **r}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
