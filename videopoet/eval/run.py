"""`videopoet eval run` (generate from held-out prompts and score) and `videopoet eval report`.

A run directory holds `scores.json` (the task, the model, the prompts, every per-job score, the
means, the command that made it) and a few sample outputs with a contact sheet. A report reads
runs and writes `report.md` with PNG plots and `figures.json` with every number in it; the report
names the command of every run it shows.
"""

from __future__ import annotations

import json
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from videopoet.errors import InputError
from videopoet.eval.tasks_eval import TASKS, Job, drift, score, shapes_jobs, summarize

INPAINT_BOX = (16, 16, 48, 48)  # (top, left, bottom, right) at 64x64: the centre quarter
OUTPAINT_MARGINS = (0, 16, 0, 16)  # (top, right, bottom, left): a quarter of the width on each side


def _region(pipe, kind: str) -> np.ndarray:
    """The regenerated pixels (T, H, W) of the fixed inpaint box / outpaint margins."""
    S, T = pipe.settings.size, pipe.settings.frames
    m = np.zeros((T, S, S), bool)
    if kind == "inpaint":
        y0, x0, y1, x1 = INPAINT_BOX
        m[:, y0:y1, x0:x1] = True
    else:
        top, right, bottom, left = OUTPAINT_MARGINS
        m[:, :top] = m[:, S - bottom :] = True
        m[:, :, :left] = m[:, :, S - right :] = True
    return m


def run_one(pipe, task: str, job: Job, *, seed: int, **gen):
    """The output of `task` for a held-out job, and the extra facts its score needs."""
    from videopoet.data.structure import structure_video

    extra: dict[str, Any] = {}
    if task == "t2v":
        return pipe.t2v(job.caption, seed=seed, **gen), extra
    if task == "t2i":
        return pipe.t2i(job.caption, seed=seed, **gen), extra
    if task == "i2v":
        return pipe.i2v(job.video[:1], job.caption, seed=seed, **gen), extra
    if task == "continue":
        extra["context_frames"] = 1 + (pipe.settings.context_frames - 1) * pipe.vt.config.temporal_compression
        return pipe.continue_video(job.video, job.caption, seed=seed, **gen), extra
    if task in ("inpaint", "outpaint"):
        extra["region"] = _region(pipe, task)
        r = (pipe.inpaint(job.video, box=INPAINT_BOX, prompt=job.caption, seed=seed, **gen) if task == "inpaint"
             else pipe.outpaint(job.video, margins=OUTPAINT_MARGINS, prompt=job.caption, seed=seed, **gen))
        extra["copy_baseline"] = nearest_copy(pipe, r.tokens["masked"])
        return r, extra
    if task == "stylize":
        sv, _ = structure_video(job.video, flow=job.flow, depth=job.depth)  # ground-truth structure
        return pipe.stylize(job.video, job.caption, structure=sv, seed=seed, **gen), extra
    if task == "v2a":
        return pipe.v2a(job.video, seed=seed, **gen), extra
    if task == "a2v":  # no text: the picture must come from the sound
        return pipe.a2v(job.audio, None, seed=seed, **gen), extra
    if task == "avcont":
        return pipe.avcont(job.video, audio=job.audio, seed=seed, **gen), extra
    raise InputError(f"--task {task!r}: unknown (known: {', '.join(TASKS)}, extend)")


def nearest_copy(pipe, masked) -> np.ndarray:
    """The baseline a masked task must beat: every masked latent cell takes the code of the nearest
    unmasked cell of its latent frame, decoded."""
    import torch
    from scipy import ndimage

    codes = masked.clone()
    for t in range(codes.shape[0]):
        hole = (codes[t] < 0).numpy()
        if hole.any() and not hole.all():
            _, (iy, ix) = ndimage.distance_transform_edt(hole, return_indices=True)
            codes[t] = codes[t][torch.from_numpy(iy), torch.from_numpy(ix)]
    return pipe.decode_video(codes)[: pipe.settings.frames]


def load_jobs(prompts: str, pipe) -> list[Job]:
    if prompts.startswith("shapes:"):
        s = pipe.settings
        return shapes_jobs(prompts, frames=s.frames, size=s.size, fps=s.fps,
                           sample_rate=pipe.at.sample_rate if pipe.at else 16000)
    raise InputError(f"--prompts {prompts!r}: expected shapes:N[:SEED[:single|multi]] (prompts with ground truth)")


PROBE_GATE = 0.95  # the probes must read this share of the ground truth's attributes before scoring


def _probe_fields(task: str) -> tuple[tuple[str, ...], str]:
    """The attributes a task is scored on (colour, shape, direction; tones and clicks for sound)
    and the task whose scorer reads them."""
    return (("tone", "clicks"), "v2a") if task == "v2a" else (("colour_exact", "shape", "direction"), "t2v")


def _pooled(task: str, jobs: list[Job], results, probe: str = "hand") -> tuple[float, dict[str, float]]:
    fields, key = _probe_fields(task)
    s = [score(key, j, r, probe=probe) for j, r in zip(jobs, results, strict=True)]
    vals = [x for d in s for f in fields for x in d.get(f, [])]
    return float(np.mean(vals)) if vals else math.nan, summarize(s)


def validate_probes(task: str, jobs: list[Job], probe: str = "hand") -> dict[str, Any]:
    """The probes (`probe`: "hand", "learned" or a probe directory) on the jobs' ground truth,
    pooled over the attributes the task is scored on."""
    from videopoet.tasks.pipeline import Result

    truth, truth_s = _pooled(task, jobs, [Result("truth", j.video, 8.0, j.audio, 16000) for j in jobs], probe)
    return {"probe": probe, "fields": list(_probe_fields(task)[0]), "ground_truth": truth, "ground_truth_scores": truth_s}


def round_trip_ceiling(task: str, jobs: list[Job], pipe, probe: str = "hand") -> dict[str, Any]:
    """The same probes on the tokenizers' round trip of the ground truth: the ceiling an LM's
    outputs can reach through these tokenizers."""
    from videopoet.tasks.pipeline import Result

    rt = []
    for j in jobs:
        audio = pipe.decode_audio(pipe.encode_audio(j.audio)) if pipe.at is not None else j.audio
        rt.append(Result("round_trip", pipe.decode_video(pipe.encode_video(j.video))[: len(j.video)], 8.0, audio,
                         pipe.at.sample_rate if pipe.at else 16000))
    value, scores = _pooled(task, jobs, rt, probe)
    return {"round_trip": value, "round_trip_scores": scores}


def eval_run(pipe, task: str, prompts: str, out: str | Path, *, model_name: str, seed: int = 0, samples: int = 4,
             seconds: float = 6.0, anchor: bool = True, command: str | None = None, progress: bool = True,
             probe_gate: bool = True, probe: str = "hand", **gen) -> dict[str, Any]:
    """Generate from held-out prompts and score the outputs. `probe` reads the attributes: "hand"
    (readback.py, the default), "learned" (the shipped probe, videopoet/eval/probe.py) or a probe
    directory; it must read PROBE_GATE of the prompts' ground truth (`probe_gate`)."""
    from videopoet.data.writers import write_contact_sheet

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    probe = str(probe)
    jobs = load_jobs(prompts, pipe)
    probes = validate_probes(task, jobs, probe)
    if probe_gate and not probes["ground_truth"] >= PROBE_GATE:
        raise InputError(f"eval: the {'' if probe == 'hand' else probe + ' '}probes read only {probes['ground_truth']:.1%} of the ground truth's "
                         f"{'/'.join(probes['fields'])} on {prompts} (gate {PROBE_GATE:.0%}): scores would not mean "
                         "anything (--no-probe-gate to score anyway)")
    probes.update(round_trip_ceiling(task, jobs, pipe, probe))
    per_job, sheets, labels, failed, outputs, truths = [], [], [], [], [], []
    t0 = time.time()
    for k, job in enumerate(jobs):
        try:
            if task == "extend":
                from videopoet.tasks.longvideo import extend_chunks

                chunks = list(extend_chunks(pipe, job.video, seconds, prompt=job.caption, anchor=anchor, seed=seed + k, **gen))
                s = drift(chunks, probe=probe)
                frames = np.concatenate(chunks)
                if k < samples:
                    from videopoet.data.writers import write_video

                    write_video(out / f"sample_{k:03d}.mp4", frames, pipe.settings.fps)
            else:
                r, extra = run_one(pipe, task, job, seed=seed + k, **gen)
                s = score(task, job, r, extra, probe=probe)
                frames = r.frames
                if k < samples:
                    r.save(out / (f"sample_{k:03d}" + (".png" if task == "t2i" else ".mp4")), sheet=False)
        except Exception as e:  # a failed job is counted and named; the others still score
            from videopoet.errors import VideoPoetError

            if not isinstance(e, VideoPoetError):
                raise
            failed.append(f"job {k}: {str(e).splitlines()[0]}")
            print(f"eval: job {k} failed: {e}", file=sys.stderr)
            continue
        per_job.append({"index": job.index, "caption": job.caption, **s})
        if task not in ("extend", "v2a") and frames is not None and len(frames) > 1:
            outputs.append(frames)
            truths.append(job.video)
        if len(sheets) < 8 and frames is not None:
            sheets.append(frames[:: max(1, len(frames) // 8)][:8] if len(frames) > 8 else frames)
            labels.append(f"{job.index}: {job.caption}"[:60])
        if progress:
            print(f"eval {task}: {k + 1}/{len(jobs)} ({time.time() - t0:.0f} s)", file=sys.stderr)
    if sheets:
        write_contact_sheet(out / "sheet.png", sheets, labels=labels)
    if task == "extend":
        summary = _drift_summary(per_job)
    else:
        summary = summarize([{k: v for k, v in s.items() if k not in ("index", "caption")} for s in per_job])
        if outputs:
            from videopoet.eval.tasks_eval import fd_probe

            summary["fd_probe"] = fd_probe(outputs, truths)
    result = {"task": task, "model": model_name, "prompts": prompts, "probe": probe, "jobs": len(jobs), "scored": len(per_job),
              "failed": failed, "seed": seed, "sampling": {k: v for k, v in gen.items() if k != "progress"},
              "summary": summary, "probe_validation": probes, "per_job": per_job, "seconds": time.time() - t0, "command": command,
              **({"extend": {"seconds": seconds, "anchor": anchor}} if task == "extend" else {})}
    (out / "scores.json").write_text(json.dumps(result, indent=1, default=_json_default))
    return result


def _json_default(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, tuple):
        return list(x)
    raise TypeError(type(x).__name__)


def _drift_summary(per_job: list[dict]) -> dict[str, Any]:
    keys = ("chunk_psnr_vs_first", "chunk_ssim_vs_first", "chunk_identity")
    out: dict[str, Any] = {}
    for k in keys:
        n = min(len(s[k]) for s in per_job) if per_job else 0
        out[k] = [float(np.nanmean([s[k][i] for s in per_job])) for i in range(n)]
    for k in ("flicker_seam", "flicker_inside"):
        out[k] = float(np.nanmean([s[k] for s in per_job])) if per_job else math.nan
    out["identity_last_chunk"] = out["chunk_identity"][-1] if out.get("chunk_identity") else math.nan
    return out


# ------------------------------------------------------------------------------------------ report
def write_report(runs: list[str | Path], out: str | Path, *, train_logs: list[str | Path] | None = None,
                 command: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    loaded = []
    for r in runs:
        p = Path(r) / "scores.json" if Path(r).is_dir() else Path(r)
        if not p.is_file():
            raise InputError(f"{r}: not an eval run (no scores.json)")
        loaded.append((str(r), json.loads(p.read_text())))
    figures: dict[str, Any] = {"runs": {}, "tasks": {}, "drift": {}, "loss": {}}
    lines = ["# videopoet evaluation report", ""]
    if command:
        lines += ["Made by:", "", f"    {command}", ""]
    lines += ["Every run below was made by the command under its name; figures.json has every number.", ""]
    by_task: dict[str, list[tuple[str, dict]]] = {}
    for path, r in loaded:
        label = r["model"] + ("" if r["task"] != "extend" else f" (anchor {'on' if r['extend']['anchor'] else 'off'})")
        # sampling options given on the command line, so that runs of one model at two settings differ
        label += "".join(f", {k.replace('_', '-')} {v}" for k, v in sorted(r.get("sampling", {}).items()))
        by_task.setdefault(r["task"], []).append((label, r))
        figures["runs"][path] = {"task": r["task"], "model": label, "command": r.get("command"), "summary": r["summary"],
                                 "scored": r["scored"], "jobs": r["jobs"]}
    for task, rs in by_task.items():
        if task == "extend":
            continue
        metrics = sorted({k for _, r in rs for k, v in r["summary"].items() if isinstance(v, float)})
        prompt_sets = sorted({r["prompts"] for _, r in rs})
        if len(prompt_sets) > 1:  # runs on other prompts say which in their row (the ceilings are the first set's)
            rs = [(f"{label} [{r['prompts']}]", r) for label, r in rs]
        lines += [f"## {task}", "", f"Prompts: `{rs[0][1]['prompts']}` ({rs[0][1]['jobs']} held-out clips)"
                  + ("; rows marked [...] ran on other prompts" if len(prompt_sets) > 1 else "") + ".", ""]
        lines += ["| model | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
        table = {}
        for label, r in rs:
            vals = [r["summary"].get(m, math.nan) for m in metrics]
            table[label] = dict(zip(metrics, vals, strict=True))
            lines.append(f"| {label} | " + " | ".join(_fmt(v) for v in vals) + " |")
        pv = rs[0][1].get("probe_validation") or {}
        for name, key in (("ground truth (probe check)", "ground_truth_scores"), ("tokenizer round trip (ceiling)", "round_trip_scores")):
            if key in pv:
                vals = [pv[key].get(m, math.nan) for m in metrics]
                table[name] = dict(zip(metrics, vals, strict=True))
                lines.append(f"| *{name}* | " + " | ".join(_fmt(v) for v in vals) + " |")
        figures["tasks"][task] = table
        # one panel per metric with its own scale: shares (0-1) and distances (fd_probe ~10-350,
        # PSNR ~20 dB) on one axis leave the shares invisible
        fig, axes = plt.subplots(1, len(metrics), figsize=(0.6 + 1.7 * len(metrics), 3.2), squeeze=False)
        colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for ax, m in zip(axes[0], metrics, strict=True):
            for i, (label, r) in enumerate(rs):
                ax.bar(i, _num(r["summary"].get(m)), 0.8, color=colours[i % len(colours)], label=label)
            ax.set_xticks([])
            ax.set_title(m, fontsize=8)
            ax.tick_params(labelsize=7)
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=len(rs), fontsize=7, frameon=False)
        fig.suptitle(task, fontsize=9)
        fig.tight_layout(rect=(0, 0.08, 1, 1))
        fig.savefig(out / f"{task}.png", dpi=100)
        plt.close(fig)
        lines += ["", f"![{task}]({task}.png)", ""]
        lines += ["Commands:", ""] + [f"    {r.get('command') or '(not recorded)'}" for _, r in rs] + [""]
    if "extend" in by_task:
        rs = by_task["extend"]
        lines += ["## long video (drift against length)", ""]
        fig, axes = plt.subplots(1, 2, figsize=(8, 3))
        for label, r in rs:
            s = r["summary"]
            figures["drift"][label] = s
            x = np.arange(len(s["chunk_identity"]))
            axes[0].plot(x, s["chunk_identity"], marker="o", label=label)
            axes[1].plot(x, s["chunk_psnr_vs_first"], marker="o", label=label)
        axes[0].set(xlabel="chunk", ylabel="identity kept", title="objects of chunk 0 still read")
        axes[1].set(xlabel="chunk", ylabel="PSNR vs chunk 0 (dB)", title="PSNR against the first chunk")
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "drift.png", dpi=100)
        plt.close(fig)
        lines += ["| model | identity per chunk | PSNR vs first per chunk | flicker at seams | flicker inside |",
                  "|---|---|---|---|---|"]
        for label, r in rs:
            s = r["summary"]
            lines.append(f"| {label} | {' '.join(_fmt(v) for v in s['chunk_identity'])} | "
                         f"{' '.join(_fmt(v, 1) for v in s['chunk_psnr_vs_first'])} | {_fmt(s['flicker_seam'], 2)} | "
                         f"{_fmt(s['flicker_inside'], 2)} |")
        lines += ["", "![drift](drift.png)", "", "Commands:", ""] + [f"    {r.get('command')}" for _, r in rs] + [""]
    for log in train_logs or []:
        rows = [json.loads(x) for x in Path(log).read_text().splitlines() if x.strip()]
        steps = [r["step"] for r in rows if "loss" in r]
        loss = [r["loss"] for r in rows if "loss" in r]
        held = {k: [(r["step"], r[k]) for r in rows if k in r] for k in {k for r in rows for k in r if k.startswith("heldout_")}}
        figures["loss"][str(log)] = {"step": steps, "loss": loss, **{k: v for k, v in held.items()}}
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.plot(steps, loss, lw=0.8, label="train (per step task)")
        for k, v in sorted(held.items()):
            if v:
                ax.plot(*zip(*v, strict=True), marker=".", lw=1, label=k.replace("heldout_", "held-out "))
        ax.set(xlabel="step", ylabel="nats / token", title=f"training loss ({Path(log).parent.name})")
        ax.legend(fontsize=6, ncol=2)
        fig.tight_layout()
        name = f"loss_{len(figures['loss'])}.png"
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        lines += ["## training", "", f"![loss]({name})", "", f"From `{log}`.", ""]
    (out / "figures.json").write_text(json.dumps(figures, indent=1, default=_json_default))
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return out / "report.md"


def _num(v) -> float:
    return float(v) if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)) else 0.0


def _fmt(v, digits: int = 2) -> str:
    if not isinstance(v, (int, float)) or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.{digits}f}"


def command_line() -> str:
    return "videopoet " + " ".join(shlex.quote(a) for a in sys.argv[1:])
