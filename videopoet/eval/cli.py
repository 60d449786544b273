"""`videopoet eval run` and `videopoet eval report`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from videopoet.cli import command

EvalTask = Literal["t2v", "t2i", "i2v", "continue", "inpaint", "outpaint", "stylize", "v2a", "a2v", "avcont", "extend"]


@command("eval run")
def run_cmd(*, task: EvalTask, prompts: str = "shapes:16:7070", out: Path = Path("eval/run"), model: Path | None = None,
            lm: Path | None = None, name: str | None = None, seed: int = 0, samples: int = 4, seconds: float = 6.0,
            anchor: bool = True, guidance: float | None = None, temperature: float | None = None,
            top_k: int | None = None, anchor_guidance: bool | None = None, probe_gate: bool = True, probe: str = "hand", progress: bool = True) -> None:
    """Generate from held-out prompts with ground truth and score the outputs (scores.json).

    Args:
        task: the task (extend: long-video drift, with --seconds and --anchor/--no-anchor)
        prompts: shapes:N[:SEED[:single|multi]] -- held-out shapes clips (seed 7070 by default; training used 0)
        out: the run directory
        model: a pipeline directory (default: the embedded models)
        lm: an LM directory to use instead (a checkpoint's model, an untrained LM)
        name: the model's label in reports (default: the LM directory's name, or "default")
        seed: sampling seed of the first job (job k uses seed + k)
        samples: outputs saved as files
        seconds: extend: length of each long video
        anchor: extend: the first frame as the anchor of every chunk
        guidance: classifier-free guidance scale (default: the model's pipeline.json)
        temperature: sampling temperature (default: the model's pipeline.json, per task)
        top_k: top-k filtering
        anchor_guidance: extend: the guidance branch drops the anchor as well as the text (default: the model's pipeline.json)
        probe_gate: refuse to score when the probes read < 95% of the prompts' ground truth
        probe: attribute readers: hand (the hand-written probes of readback.py), learned (the shipped learned probe, videopoet/assets/probe) or a probe directory
        progress: print progress
    """
    from videopoet.errors import InputError
    from videopoet.eval.run import command_line, eval_run
    from videopoet.tasks.pipeline import Pipeline

    if anchor_guidance is not None and task != "extend":
        raise InputError(f"--anchor-guidance: applies to --task extend only, not {task}")
    pipe = Pipeline.from_pretrained(model, lm=lm, quiet=True)
    gen = {k: v for k, v in dict(guidance=guidance, temperature=temperature, top_k=top_k,
                                 anchor_guidance=anchor_guidance).items() if v is not None}
    label = name or (Path(lm).name if lm else (Path(model).name if model else "default"))
    r = eval_run(pipe, task, prompts, out, model_name=label, seed=seed, samples=samples, seconds=seconds, anchor=anchor,
                 command=command_line(), progress=progress, probe_gate=probe_gate, probe=probe, **gen)
    shown = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r["summary"].items()}
    print(f"{task} on {r['scored']}/{r['jobs']} prompts ({label}): {shown}")
    print(f"wrote {Path(out) / 'scores.json'}")


@command("eval report")
def report_cmd(runs: list[Path], /, *, out: Path = Path("eval/report"), train_log: list[Path] | None = None) -> None:
    """A Markdown report (report.md, PNG plots, figures.json) from eval runs.

    Args:
        runs: eval run directories (from `videopoet eval run`)
        out: the report directory
        train_log: training metrics.jsonl files to plot loss curves from
    """
    from videopoet.eval.run import command_line, write_report

    print(f"wrote {write_report(runs, out, train_logs=train_log, command=command_line())}")
