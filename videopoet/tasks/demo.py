"""What `videopoet quickstart` shows: every task once on shapes-benchmark clips, a long video, and an
index that says where everything is; and `--retrain`, which trains the whole stack from scratch.

Each task's input comes from the demo's own clips (written to OUT/shapes/clips with their ground
truth), each output is read back by the probes of `videopoet.eval.readback` (what a viewer would
check: colours, shapes, directions; tones), and OUT/index.html plays them side by side with their
inputs. OUT/tasks.png is the same as one captioned contact sheet (a row per task).

Retraining (`retrain`) runs the recipes that made the shipped defaults, stage by stage into one
folder: video tokenizer, audio codec (then its codebooks refit), SentencePiece text model, tokenize the
shapes benchmark, LM.
A finished stage is kept and skipped when the command is run again; an interrupted training
resumes from its last checkpoint. The result is a pipeline directory (`Pipeline.from_pretrained`).
"""

from __future__ import annotations

import html
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# ------------------------------------------------------------------------------------------ retrain
# Recipes per scale. "cpu" is what made the shipped defaults (hours on 2 cores, see README);
# "debug" is the same stack at toy sizes (a minute), to check the machinery end to end.
SCALES: dict[str, dict[str, Any]] = {
    "debug": {"video": "tokenizer/debug", "audio": "audio/debug", "lm": "train/debug", "clips": 48,
              "captions": 2400, "frames": 5, "size": 32, "lm_set": ["train.max_steps=40", "train.eval_every=0"],
              "refit": {"batches": 20, "iters": 3, "beam": 4, "overrides": []}},
    "cpu": {"video": "tokenizer/cpu", "audio": "audio/cpu", "lm": "train/small", "clips": 2400,
            "captions": 2400, "frames": 17, "size": 64, "lm_set": [],
            # the shipped codec's codebooks: refit on 2-4-object shapes sound too, beam search 4 (session 19)
            "refit": {"batches": 1000, "iters": 25, "beam": 4, "seed": 77,
                      "overrides": ["data.shapes_max_objects=4", "data.shapes_clips=1600", "data.real_weight=0.3"]}},
}


def retrain(out: str | Path, scale: str = "cpu", *, log: Callable[[str], None] = print) -> Path:
    """Train video tokenizer, audio codec, text model and LM from scratch into OUT; return
    OUT/pipeline, a pipeline directory. Stages already finished in OUT are skipped."""
    from videopoet.assets import asset_dir
    from videopoet.config import load_json, save_json, to_dict
    from videopoet.data.tokenize import tokenize
    from videopoet.errors import InputError
    from videopoet.lm.pretrain import train as train_lm
    from videopoet.tasks.pipeline import PARTS, PIPELINE_NAME, Settings
    from videopoet.tokenizers.audio_train import load_recipe, refit_codec, train_audio_tokenizer
    from videopoet.tokenizers.text import SentencePieceConfig, SentencePieceTextTokenizer
    from videopoet.tokenizers.video import VideoTokenizer
    from videopoet.tokenizers.video_train import train as train_video

    if scale not in SCALES:
        raise InputError(f"--scale {scale!r}: choose from {', '.join(SCALES)}")
    r, out = SCALES[scale], Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    def stage(name: str, done: Path, fn: Callable[[], Any]) -> None:
        if done.exists():
            log(f"retrain [{name}]: kept {done}")
            return
        t = time.time()
        log(f"retrain [{name}] ...")
        fn()
        log(f"retrain [{name}]: {time.time() - t:.0f} s -> {done}")

    video_dir = out / "video" / "model"
    stage("video tokenizer", video_dir,
          lambda: train_video(r["video"], out / "video", resume=(out / "video" / "checkpoints").is_dir()))
    trained_audio = out / "audio" / "tokenizer"
    stage("audio codec", trained_audio, lambda: train_audio_tokenizer(load_recipe(r["audio"]), out / "audio", resume=True,
                                                                      log=lambda s: None))
    audio_dir = out / "audio" / "refit"
    stage("audio codebooks", audio_dir, lambda: refit_codec(audio_dir, model=trained_audio, config=r["audio"],
                                                           log=lambda s: None, **r["refit"]))

    def spm() -> None:
        from videopoet.data.shapes import ShapesConfig, make_audio

        cfg = ShapesConfig(size=32)
        texts = [make_audio(cfg, 0, i)[1] for i in range(r["captions"])]
        SentencePieceTextTokenizer.train(texts, SentencePieceConfig(256, 64, "bpe")).save_pretrained(out / "text")

    stage("text model", out / "text" / "spm.model", spm)
    shards = out / "shards"
    stage("tokenize", shards / "index.json",
          lambda: tokenize(f"shapes:{r['clips']}", shards, video_model=video_dir, audio_model=audio_dir,
                           text_model=out / "text", frames=r["frames"], size=r["size"], progress=False,
                           log=lambda s: None))
    lm_run = out / "lm"
    stage("LM", lm_run / "model" / "config.json",
          lambda: train_lm(r["lm"], [f"data.shards={shards}", f"train.out={lm_run}", *r["lm_set"]],
                           resume=(lm_run / "checkpoints").is_dir()))
    pipe = out / "pipeline"
    if pipe.exists():
        shutil.rmtree(pipe)
    for key, src in (("lm", lm_run / "model"), ("video", video_dir), ("audio", audio_dir), ("text", out / "text")):
        shutil.copytree(src, pipe / PARTS[key])
    tc = VideoTokenizer.from_pretrained(video_dir).config.temporal_compression
    want = load_json(lm_run / "train_config.json")["data"]["frame_pred_context"]  # what the LM was trained with
    context = min(want, (r["frames"] - 1) // tc)  # as training's frame prediction: at most t - 1 latent frames
    # the embedded pipeline's measured sampling defaults (guidance 2, cooler frame prediction and in/outpainting)
    shipped = load_json(asset_dir("lm") / PIPELINE_NAME)
    settings = Settings(frames=r["frames"], size=r["size"], context_frames=context, guidance=shipped["guidance"],
                        task_temperature=shipped.get("task_temperature", {}))
    save_json(to_dict(settings), pipe / PIPELINE_NAME)
    log(f"retrain: the whole stack in {time.time() - t0:.0f} s; pipeline directory {pipe}")
    return pipe


# ------------------------------------------------------------------------------------------ demo
@dataclass
class DemoItem:
    task: str
    what: str  # what was asked, in words
    path: Path  # the output file
    inputs: list[Path]  # input files shown beside it
    reading: str  # what the probes read in the output
    seconds: float
    frames: np.ndarray | None


def objects_read(v: np.ndarray) -> str:
    """What the probes read in a clip: "colour shape direction" per object."""
    from videopoet.eval.readback import read_objects

    got = read_objects(v)
    return ", ".join(f"{c} {o.shape or '?'} {o.direction or '?'}" for c, o in sorted(got.items())) or "nothing"


def tones_read(audio: np.ndarray, sample_rate: int, n: int) -> str:
    from videopoet.eval.readback import read_tones

    return "tones: " + ", ".join(f"{c} {s}" for s, c in sorted(read_tones(audio, sample_rate, n)))


def run_tasks(pipe, clips: list, clip_paths: list[Path], out: Path, *, extend_seconds: float = 10.0,
              log: Callable[[str], None] = print) -> list[DemoItem]:
    """Every task once on the demo clips, then a long video; each output written to OUT/<task>.*
    and read back by the probes. Inputs are clips 0..5 (reused when there are fewer), rendered at
    the pipeline's size, frame count and audio rate."""
    from videopoet.data.structure import structure_video
    from videopoet.tasks.longvideo import extend

    s = pipe.settings
    S, n = s.size, len(clips)
    k = [i % n for i in range(6)]  # the clip each job uses
    c, p = [clips[i] for i in k], [clip_paths[i] for i in k]
    q = S // 4
    sv, _ = structure_video(c[5].video, flow=c[5].flow, depth=c[5].depth)
    jobs: list[tuple[str, str, list[Path], Callable[[], Any]]] = [
        ("t2v", f"text -> video: {c[1].caption!r}", [], lambda: pipe.t2v(c[1].caption, seed=0)),
        ("t2i", f"text -> image: {c[2].caption!r}", [], lambda: pipe.t2i(c[2].caption, seed=0)),
        ("i2v", f"image -> video from clip {k[0]}'s first frame and caption", [p[0]],
         lambda: pipe.i2v(c[0].video[:1], c[0].caption, seed=0)),
        ("continue", f"continue clip {k[3]} from its first frames", [p[3]],
         lambda: pipe.continue_video(c[3].video, c[3].caption, seed=0)),
        ("inpaint", f"inpaint the centre {S // 2}x{S // 2} of clip {k[0]}", [p[0]],
         lambda: pipe.inpaint(c[0].video, box=(q, q, S - q, S - q), prompt=c[0].caption, seed=0)),
        ("outpaint", f"outpaint clip {k[4]}'s left and right {q} px", [p[4]],
         lambda: pipe.outpaint(c[4].video, margins=(0, q, 0, q), prompt=c[4].caption, seed=0)),
        ("stylize", f"stylize: clip {k[5]}'s motion and depth (its structure video) with its caption", [p[5]],
         lambda: pipe.stylize(c[5].video, c[5].caption, structure=sv, seed=0)),
        ("v2a", f"video -> audio: a soundtrack for clip {k[0]}", [p[0]], lambda: pipe.v2a(c[0].video, seed=0)),
        ("a2v", f"audio -> video: a picture for clip {k[1]}'s sound", [p[1]], lambda: pipe.a2v(c[1].audio, seed=0)),
        ("avcont", f"audio-video continuation of clip {k[2]}'s first frame and sound", [p[2]],
         lambda: pipe.avcont(c[2].video, audio=c[2].audio, seed=0)),
    ]
    items: list[DemoItem] = []
    for task, what, inputs, fn in jobs:
        t = time.time()
        r = fn()
        path = r.save(out / (f"{task}.png" if task == "t2i" else f"{task}.mp4"))
        if task == "v2a":
            reading = tones_read(r.audio, r.sample_rate, len(c[0].attributes["objects"]))
        else:
            reading = f"reads {objects_read(r.frames)}"
            if task == "avcont":
                reading += "; " + tones_read(r.audio, r.sample_rate, len(c[2].attributes["objects"]))
        items.append(DemoItem(task, what, path, inputs, reading, time.time() - t, r.frames))
        log(f"{what}: {path} ({items[-1].seconds:.0f} s); {reading}")
    t = time.time()
    long_path = out / "long.mp4"
    kept: list[np.ndarray] = []
    extend(pipe, c[0].video, extend_seconds, long_path, prompt=c[0].caption, seed=0, keep=False, quiet=True,
           on_chunk=lambda i, f: kept.append(f[:1]))  # the first frame of every chunk, for the sheet
    items.append(DemoItem("extend", f"long video: clip {k[0]} continued to {extend_seconds:g} s, chunk by chunk", long_path,
                          [p[0]], f"{len(kept)} chunks", time.time() - t, np.concatenate(kept)))
    log(f"{items[-1].what}: {long_path} ({items[-1].seconds:.0f} s, {len(kept)} chunks)")
    return items


def write_index(out: Path, items: list[DemoItem], header: list[str]) -> tuple[Path, Path]:
    """OUT/index.html (every output playing beside its input, with what was asked and what the
    probes read) and OUT/tasks.png (one captioned contact-sheet row per task)."""
    from videopoet.data.writers import write_contact_sheet

    sheet = write_contact_sheet(out / "tasks.png", [it.frames for it in items if it.frames is not None],
                                labels=[f"{it.task}: {it.reading}"[:60] for it in items if it.frames is not None])

    def media(path: Path) -> str:
        rel = html.escape(str(path.relative_to(out)))
        if path.suffix == ".png":
            return f'<img src="{rel}" width="192" style="image-rendering: pixelated">'
        return f'<video src="{rel}" width="192" controls loop muted autoplay playsinline></video>'

    rows = "\n".join(
        f"<tr><td><b>{it.task}</b></td><td>{html.escape(it.what)}</td>"
        f"<td>{' '.join(media(i) for i in it.inputs) or '(text)'}</td><td>{media(it.path)}</td>"
        f"<td>{html.escape(it.reading)}</td><td>{it.seconds:.1f} s</td></tr>"
        for it in items
    )
    lines = "".join(f"<p>{html.escape(h)}</p>" for h in header)
    page = (
        "<!doctype html><meta charset=utf-8><title>videopoet quickstart</title>"
        "<style>body{font-family:sans-serif;margin:2em}td{padding:6px;vertical-align:top;border-bottom:1px solid #ddd}"
        "video,img{background:#888}</style>"
        f"<h1>videopoet quickstart</h1>{lines}"
        "<table><tr><th>task</th><th>asked</th><th>input</th><th>output</th><th>the probes read</th><th>time</th></tr>"
        f"{rows}</table>"
        '<p>Inputs and their ground truth: <a href="shapes/manifest.jsonl">shapes/manifest.jsonl</a>; '
        'every clip: <a href="contact_sheet.png">contact_sheet.png</a>; all outputs: <a href="tasks.png">tasks.png</a>; '
        'tokenizer round trip: <a href="reconstruction.mp4">reconstruction.mp4</a>.</p>'
    )
    index = out / "index.html"
    index.write_text(page)
    (out / "index.json").write_text(json.dumps(
        [{"task": it.task, "asked": it.what, "output": str(it.path.relative_to(out)),
          "inputs": [str(i.relative_to(out)) for i in it.inputs], "reading": it.reading,
          "seconds": round(it.seconds, 2)} for it in items], indent=1))
    return index, sheet
