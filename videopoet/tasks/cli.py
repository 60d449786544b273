"""`videopoet generate ...`, `videopoet quickstart` and `videopoet sr ...` commands."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from videopoet.cli import command, not_available

not_available("sr train", "super-resolution: not built yet")

Task = Literal["t2v", "t2i", "i2v", "continue", "inpaint", "outpaint", "stylize", "v2a", "a2v", "avcont", "extend"]
# the media options of each task's call (the CLI flag -> the Pipeline method's argument)
_MEDIA = {"i2v": {"image": "image"}, "continue": {"video": "video", "image": "anchor"},
          "inpaint": {"video": "video"}, "outpaint": {"video": "video"},
          "stylize": {"video": "video", "structure": "structure", "image": "first_frame"},
          "v2a": {"video": "video"}, "a2v": {"audio": "audio"}, "avcont": {"video": "video", "audio": "audio"}}
_TEXT_TASKS = {"t2v", "t2i", "i2v", "continue", "inpaint", "outpaint", "stylize", "a2v"}


def _call(pipe, task: str, job: dict, sampling: dict):
    """One generation from a job dict (CLI flags or a JSONL line) -> Result."""
    from videopoet.errors import InputError

    kw = dict(sampling)
    if job.get("anchor_guidance") is not None:
        if task != "continue":
            raise InputError(f"--anchor-guidance: applies to continue and extend, not {task}")
        kw["anchor_guidance"] = bool(job["anchor_guidance"])
    for key in ("seed", "temperature", "top_k", "top_p", "guidance", "guidance_ramp"):
        if job.get(key) is not None:
            kw[key] = job[key]
    if isinstance(kw.get("guidance"), list):
        g = kw["guidance"]
        if len(g) not in (1, 2):
            raise InputError(f"--guidance: one scale, or two (high and low sub-token), got {g}")
        kw["guidance"] = g[0] if len(g) == 1 else (g[0], g[1])
    for flag, arg in _MEDIA.get(task, {}).items():
        if job.get(flag) is not None:
            kw[arg] = job[flag]
    if task in _TEXT_TASKS:
        kw["prompt"] = job.get("prompt")
        if job.get("negative_prompt"):
            kw["negative_prompt"] = job["negative_prompt"]
    elif job.get("prompt"):
        raise InputError(f"{task}: takes no text prompt")
    if task == "inpaint" and job.get("box") is not None:
        kw["box"] = tuple(job["box"])
    if task == "outpaint" and job.get("margins") is not None:
        kw["margins"] = tuple(job["margins"])
    if task == "stylize" and job.get("depth_model"):
        kw["depth_model"] = str(job["depth_model"])
    needed = {"i2v": "image", "inpaint": "video", "outpaint": "video", "stylize": "video", "v2a": "video",
              "a2v": "audio", "avcont": "video", "continue": "video"}
    if task in needed and kw.get(_MEDIA[task][needed[task]]) is None:
        raise InputError(f"{task}: needs --{needed[task]}")
    if task == "inpaint" and "box" not in kw:
        raise InputError("inpaint: needs --box TOP LEFT BOTTOM RIGHT (pixels of the output frame)")
    return pipe.run(task, **kw)


@command("generate")
def generate_cmd(task: Task, /, *, prompt: str | None = None, negative_prompt: str | None = None,
                 image: Path | None = None, video: Path | None = None, audio: Path | None = None,
                 structure: Path | None = None, depth_model: Path | None = None, box: list[int] | None = None,
                 margins: list[int] | None = None, seconds: float = 6.0, anchor: bool = True,
                 anchor_guidance: bool | None = None, prompts: Path | None = None, out: Path = Path("out/generated.mp4"), model: Path | None = None,
                 lm: Path | None = None, seed: int = 0, guidance: list[float] | None = None, guidance_ramp: bool = False,
                 temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                 progress: bool = True) -> None:
    """Run a task with the LM (zero-shot, from a task prefix) and write the result.

    Tasks: t2v, t2i (png), i2v (--image), continue (--video [--image anchor]), inpaint (--video
    --box), outpaint (--video [--margins]), stylize (--video --prompt [--structure] [--depth-model]
    [--image first frame]), v2a (--video; writes the video with the new sound), a2v (--audio),
    avcont (--video with sound), extend (--video --seconds: long video, streamed to --out).
    Inputs of another size, rate or length are fitted (said on stderr). With --prompts FILE.jsonl,
    each line is one job ({"prompt": ..., "video": ..., "seed": ..., "out": ..., "then": [{"task":
    "stylize", "prompt": ...}]}: "then" chains tasks, each taking the previous output); bad lines
    are skipped and counted.

    Args:
        task: the task to run
        prompt: text prompt (tasks with text)
        negative_prompt: the text of the guidance branch (instead of no text)
        image: an image (i2v; the anchor frame for continue; the first frame for stylize)
        video: an input video
        audio: an input audio file (a2v; avcont when the video has no sound)
        structure: a ready structure video for stylize (else computed from --video)
        depth_model: a local transformers depth-estimation model directory (stylize)
        box: inpaint region TOP LEFT BOTTOM RIGHT in output pixels
        margins: outpaint borders TOP RIGHT BOTTOM LEFT in output pixels (default: fit a non-square input)
        seconds: extend: length of the whole output
        anchor: extend: give the first frame as the anchor of every chunk (drift control)
        anchor_guidance: extend, continue --image: the guidance branch drops the anchor as well as the text (default: the model's pipeline.json)
        prompts: a JSONL file of jobs (batch)
        out: output file (.mp4, .png for t2i, .wav for v2a audio alone); a folder with --prompts
        model: a pipeline directory (default: the embedded models)
        lm: an LM directory to use instead of the pipeline's LM (e.g. a training run's model)
        seed: sampling seed (same seed, same output)
        guidance: classifier-free guidance scale (two values: high and low visual sub-token scales)
        guidance_ramp: ramp the guidance linearly from 1 to its value over the output
        temperature: sampling temperature (default: the model's pipeline.json: task_temperature for this task, else temperature)
        top_k: top-k filtering (0 = off)
        top_p: nucleus filtering (1 = off)
        progress: show a progress bar
    """
    import json
    import sys

    import torch

    from videopoet.errors import InputError, VideoPoetError
    from videopoet.tasks.pipeline import Pipeline

    pipe = Pipeline.from_pretrained(model, lm=lm)
    sampling = {k: v for k, v in dict(temperature=temperature, top_k=top_k, top_p=top_p).items() if v is not None}
    sampling["progress"] = progress
    if task == "extend":
        from videopoet.tasks.longvideo import extend

        if video is None:
            raise InputError("extend: needs --video")
        if prompts is not None:
            raise InputError("extend: one video at a time (no --prompts)")
        g = {} if guidance is None else {"guidance": guidance[0]}
        extend(pipe, video, seconds, out, prompt=prompt, anchor=anchor, seed=seed, keep=False,
               anchor_guidance=anchor_guidance, **g, **sampling)
        print(f"wrote {out} ({seconds:g} s)")
        return
    flags = dict(prompt=prompt, negative_prompt=negative_prompt, image=image, video=video, audio=audio,
                 structure=structure, depth_model=depth_model, box=box, margins=margins, seed=seed,
                 guidance=guidance, guidance_ramp=guidance_ramp or None, anchor_guidance=anchor_guidance)
    if prompts is None:
        r = _call(pipe, task, flags, sampling)
        path = r.save(_out_name(out, r))
        torch.save(r.tokens, path.with_suffix(".tokens.pt"))
        print(f"wrote {path}")
        return
    if not prompts.is_file():
        raise InputError(f"--prompts {prompts}: file not found")
    out.mkdir(parents=True, exist_ok=True)
    ok, bad = 0, []
    for n, line in enumerate(prompts.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            job = json.loads(line)
            if not isinstance(job, dict):
                raise InputError("a line is a JSON object")
            job = {**{k: v for k, v in flags.items() if v is not None and k not in ("prompt",)}, **job}
            t = job.pop("task", task)
            r = _call(pipe, t, job, sampling)
            for step in job.get("then") or []:  # chaining: the output is the next input
                nxt = dict(step)
                t2 = nxt.pop("task")
                key = {"i2v": "image", "a2v": "audio"}.get(t2, "video")
                nxt.setdefault(key, r)
                nxt.setdefault("seed", job.get("seed", seed))
                r = _call(pipe, t2, nxt, sampling)
            name = job.get("out") or f"{n:04d}_{r.task}"
            path = r.save(_out_name(out / name, r))
            torch.save(r.tokens, path.with_suffix(".tokens.pt"))
            ok += 1
        except (VideoPoetError, json.JSONDecodeError, KeyError, TypeError) as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            bad.append(f"{prompts}:{n}: {msg}")
            print(f"skipped {prompts}:{n}: {msg}", file=sys.stderr)
    print(f"wrote {ok} result(s) to {out}; skipped {len(bad)} bad line(s)")
    if ok == 0 and bad:
        raise InputError(f"--prompts {prompts}: every line failed ({bad[0]})")


def _out_name(out: Path, r) -> Path:
    """The output path for a result: its own suffix unless given (png for one frame)."""
    if out.suffix:
        return out
    return out.with_suffix(".png" if r.frames is not None and len(r.frames) == 1 else ".mp4")


@command("quickstart")
def quickstart(*, out: Path = Path("demo_out"), num: int = 6, seed: int = 0, seconds: float = 10.0,
               retrain: bool = False, scale: Literal["debug", "cpu"] = "cpu", model: Path | None = None) -> None:
    """A first look at videopoet: shapes-benchmark clips, the tokenizers' round trip, every task, a long video.

    Writes the data every task is trained and scored on: OUT/shapes/clips/*.mp4 (with audio: a tone
    per object, a click per bounce), their ground truth and manifest, and OUT/contact_sheet.png, and
    prints each clip's caption. Passes clip 0 through the video tokenizer and audio codec (the
    tokens the LM sees): OUT/reconstruction.mp4, original left, decoded right, with decoded sound.
    Then the LM does every task once (t2v t2i i2v continue inpaint outpaint stylize v2a a2v avcont)
    and continues clip 0 to SECONDS of video, each output read back by the probes; OUT/index.html
    shows every output beside its input, OUT/tasks.png is a captioned contact sheet of them.

    Args:
        out: output folder.
        num: number of clips (1..32).
        seed: generator seed of the clips.
        seconds: length of the long video (chained continuation).
        retrain: first train the whole stack from scratch into OUT/models (video tokenizer, audio
            codec, text model, tokenize, LM; a finished stage is kept when run again), then run the
            demo with it. At --scale cpu these are the shipped defaults' recipes: about 5 hours on 2
            cores; --scale debug takes a minute and makes toy models.
        scale: the recipes --retrain uses (cpu or debug).
        model: a pipeline directory to use instead of the embedded default (or the retrained one).
    """
    import json
    import time

    from videopoet.data.shapes import ShapesConfig, make_clip, write_shapes
    from videopoet.data.writers import write_contact_sheet
    from videopoet.errors import InputError
    from videopoet.tasks.demo import retrain as retrain_stack
    from videopoet.tasks.demo import run_tasks, write_index
    from videopoet.tasks.pipeline import Pipeline

    if not isinstance(num, int) or not 1 <= num <= 32:
        raise InputError(f"--num must be an integer in 1..32, got {num!r}")
    if not seconds > 0:
        raise InputError(f"--seconds must be > 0, got {seconds}")
    out = Path(out)
    if retrain and model is not None:
        raise InputError("--retrain trains its own models; do not give --model with it")
    if retrain:
        model = retrain_stack(out / "models", scale)
    pipe = Pipeline.from_pretrained(model, quiet=True)
    st = pipe.settings
    cfg = ShapesConfig(size=st.size, frames=st.frames, fps=st.fps,
                       sample_rate=pipe.at.sample_rate if pipe.at is not None else 16000)
    manifest = write_shapes(out / "shapes", num, cfg, seed=seed)
    clips = [make_clip(cfg, seed, i) for i in range(num)]
    paths = [manifest.parent / json.loads(line)["path"] for line in manifest.read_text().splitlines()]
    chars = (8 * (st.size + 2)) // 6  # the sheet's default font is ~6 px a character
    labels = [f"{i}: {c.caption}" for i, c in enumerate(clips)]
    labels = [t if len(t) <= chars else t[: chars - 3] + "..." for t in labels]
    sheet = write_contact_sheet(out / "contact_sheet.png", [c.video for c in clips], labels=labels)
    for i, c in enumerate(clips):
        print(f"{i}: {c.caption}")
    print(f"wrote {num} clips with audio to {manifest.parent / 'clips'} (manifest: {manifest})")
    print(f"contact sheet: {sheet}")
    round_trip = _tokenizer_round_trip(pipe, clips[0], out / "reconstruction.mp4")
    t0 = time.time()
    items = run_tasks(pipe, clips, paths, out, extend_seconds=seconds)
    n_params = sum(p.numel() for p in pipe.lm.parameters()) / 1e6
    source = "retrained" if retrain else ("embedded default" if model is None else str(model))
    index, tasks_sheet = write_index(out, items, [f"LM: {source}, {n_params:.1f}M parameters; "
                                                  f"{len(items)} outputs in {time.time() - t0:.0f} s.", round_trip])
    print(f"LM ({source}): {n_params:.1f}M parameters; {len(items)} outputs in {time.time() - t0:.0f} s")
    print(f"index: {index} (every output beside its input); all outputs: {tasks_sheet}")


def _tokenizer_round_trip(pipe, clip, path: Path) -> str:
    """Clip -> the pipeline's video/audio tokens -> media, written side by side with the original."""
    import torch

    from videopoet.data.media import audio_to_tensor, tensor_to_video, video_to_tensor
    from videopoet.data.writers import write_video
    from videopoet.eval.audio_metrics import mel_distance
    from videopoet.eval.video_metrics import psnr, ssim
    from videopoet.tasks.demo import objects_read, tones_read

    vtok, atok = pipe.vt, pipe.at
    x = video_to_tensor(clip.video)[None]  # (1, 3, T, H, W)
    with torch.no_grad():
        vcodes = vtok.encode(x)  # (1, t, h, w)
        x_hat = vtok.decode(vcodes)[:, :, : x.shape[2]]
    said = f"video -> {tuple(vcodes.shape[1:])} tokens, PSNR {psnr(x, x_hat):.1f} dB, SSIM {ssim(x, x_hat):.3f}"
    n = len(clip.attributes["objects"])
    orig, back = f"{objects_read(clip.video)}", f"{objects_read(tensor_to_video(x_hat))}"
    a_hat = None
    if atok is not None:
        a = audio_to_tensor(clip.audio)[None]  # (1, 1, S)
        with torch.no_grad():
            acodes = atok.encode(a)  # (1, levels, frames)
            a_hat = atok.decode(acodes)  # (1, 1, frames * hop)
        said += (f"; audio -> {tuple(acodes.shape[1:])} tokens, "
                 f"mel distance {mel_distance(a[..., : a_hat.shape[-1]], a_hat, atok.sample_rate):.3f}")
        orig += f"; {tones_read(clip.audio[0], atok.sample_rate, n)}"
        back += f"; {tones_read(a_hat[0, 0].numpy(), atok.sample_rate, n)}"
    side = tensor_to_video(torch.cat([x, x_hat], dim=-1))
    write_video(path, side, clip.fps, audio=None if a_hat is None else a_hat[0].numpy(),
                sample_rate=atok.sample_rate if atok is not None else 16000)
    print(f"tokenizers on clip 0: {said}")
    print(f"read back from the original:   {orig}")
    print(f"read back from the round trip: {back}")
    print(f"reconstruction (original | decoded, with decoded sound): {path}")
    return f"Tokenizers on clip 0: {said}. Read back from the original: {orig}; from the round trip: {back}."
