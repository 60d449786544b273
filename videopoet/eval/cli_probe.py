"""`videopoet eval train-probe` and `videopoet eval validate-probe`: the learned shapes probe."""

from __future__ import annotations

from pathlib import Path

from videopoet.cli import command


@command("eval train-probe")
def train_probe_cmd(*, out: Path = Path("runs/probe"), clips: int = 2000, round_trips: int = 300, minutes: float = 8.0,
                    seed: int = 0, batch: int = 32, threads: int = 1, cache: Path | None = None,
                    validate: list[str] | None = None, frames: int = 9, audio_round_trips: int | None = None,
                    mirror: bool = False) -> None:
    """Train the learned shapes probe (videopoet/eval/probe.py) on ground-truth clips and save it.

    The data is always shapes generator seed 0 (1-4 objects), never an evaluation seed; the weights
    are saved in float16 with config.json and training.json (command, data, seconds, losses, and the
    validation figures when --validate is given).

    Args:
        out: the probe directory to write (config.json, model.safetensors, training.json)
        clips: ground-truth clips rendered for training (indices 0..N-1 of generator seed 0)
        round_trips: how many of those clips also go through the shipped video tokenizer and audio
            codec, labelled with their ground truth (0: none)
        minutes: training time budget in minutes (rendering and round trips not counted)
        seed: seed of the initialization, the degradations and the sampling (not of the data)
        batch: video queries per step (the audio batch is half as many clips)
        threads: torch CPU threads
        cache: a folder where round trips are kept and reused (they are deterministic)
        validate: data specs to validate on after training, e.g. shapes:40:4242:single (figures go to
            training.json)
        frames: frames the video network reads from the start of a clip (the shipped probe: 9; a
            clip has 17, and an object moving over the tokenizer's 4-pixel cells looks a little
            different in each, so more frames give the shape reader more views)
        audio_round_trips: how many clips also go through the audio codec (default: as many
            as round_trips; the codec round trips cost more and the tones are read from them already)
        mirror: the saved probe reads every clip and its mirror image and averages the two
            (ProbeConfig.mirror; training is the same either way)
    """
    import torch

    from videopoet.eval.probe import Probe, ProbeConfig
    from videopoet.eval.probe_train import format_validation, train_probe, validate_probe, write_validation
    from videopoet.eval.run import command_line

    torch.set_num_threads(threads)
    info = train_probe(out, clips=clips, round_trips=round_trips, seed=seed, threads=threads, minutes=minutes,
                       batch=batch, cache=cache, command=command_line(), config=ProbeConfig(frames=frames, mirror=mirror),
                       audio_round_trips=audio_round_trips)
    print(f"trained {info['steps']} steps in {info['seconds']['train']:.0f} s; wrote {out}")
    if validate:
        probe = Probe.from_pretrained(out)
        results = [validate_probe(probe, spec, cache=cache) for spec in validate]
        write_validation(out, results)
        print(format_validation(results))


@command("eval validate-probe")
def validate_probe_cmd(*, data: list[str], probe: Path | None = None, round_trip: bool = True, hand: bool = True,
                       cache: Path | None = None, json: bool = False, threads: int = 1,
                       mirror: bool | None = None) -> int:
    """Score the learned probe against the ground truth of held-out shapes clips, on the clips and
    on the shipped tokenizers' round trips of them, beside the hand-written probes (readback.py).

    The gate is 95% per attribute (colour, colour_exact, shape, size, direction, tone, clicks) on
    both; the exit status is 1 when an attribute fails it.

    Args:
        data: held-out shapes clips, shapes:N:SEED[:single|multi] (single: one object, multi: 2-4
            objects), one or more, e.g. --data shapes:40:4242:single shapes:40:4243:multi
        probe: a probe directory (default: the shipped probe, videopoet/assets/probe)
        round_trip: also score the round trips through the shipped video tokenizer and audio codec
        hand: also score the hand-written probes on the same clips
        cache: a folder where round trips are kept and reused (they are deterministic)
        json: print JSON instead of a table
        threads: torch CPU threads
        mirror: read every clip and its mirror image, averaging the two (default: the probe's
            config.json)
    """
    import json as json_

    import torch

    from videopoet.eval.probe import Probe, load_probe
    from videopoet.eval.probe_train import format_validation, validate_probe

    torch.set_num_threads(threads)
    p = load_probe("learned") if probe is None else Probe.from_pretrained(probe)
    if mirror is not None and mirror != p.config.mirror:
        p = p.with_mirror(mirror)
    results = [validate_probe(p, spec, round_trip=round_trip, hand=hand, cache=cache) for spec in data]
    print(json_.dumps(results, indent=1) if json else format_validation(results))
    return 0 if all(r["passed"] for r in results) else 1
