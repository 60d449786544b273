"""`videopoet quickstart --retrain`: the whole stack trained from scratch, then every task with it."""

from __future__ import annotations

import json

import pytest

from videopoet import cli
from videopoet.data.media import read_video
from videopoet.errors import VideoPoetError


def test_a_pipeline_whose_context_leaves_nothing_to_generate_is_refused(tmp_path):
    """Continuation with as many context frames as a clip has latent frames would loop forever."""
    from videopoet.tasks.pipeline import Pipeline, Settings

    pipe = Pipeline.from_pretrained(quiet=True)  # 17 frames -> 9 latent frames
    with pytest.raises(VideoPoetError, match="context_frames 9 must be in 1..8"):
        Pipeline(pipe.lm, pipe.vocab, pipe.vt, pipe.at, pipe.tt, Settings(context_frames=9))


def test_retrain_refuses_an_unknown_scale(tmp_path):
    from videopoet.errors import InputError
    from videopoet.tasks.demo import retrain

    with pytest.raises(InputError, match="--scale 'huge'"):
        retrain(tmp_path, "huge")


@pytest.mark.slow
def test_quickstart_retrains_the_stack_then_runs_every_task(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli.main(["quickstart", "--out", str(out), "--retrain", "--scale", "debug", "--num", "3", "--seconds", "2"]) == 0
    printed = capsys.readouterr().out
    models = out / "models"
    for stage in ("video tokenizer", "audio codec", "audio codebooks", "text model", "tokenize", "LM"):
        assert f"retrain [{stage}]: " in printed and f"retrain [{stage}]: kept" not in printed
    pipe_dir = models / "pipeline"
    settings = json.loads((pipe_dir / "pipeline.json").read_text())
    assert (settings["frames"], settings["size"], settings["context_frames"]) == (5, 32, 1)
    # the embedded pipeline's measured sampling defaults carry over
    assert (settings["guidance"], settings["task_temperature"]) == (2.0, {"frame_pred": 0.7, "i2v": 0.7, "inpaint": 0.7, "outpaint": 0.7})
    index = json.loads((out / "index.json").read_text())
    assert len(index) == 11 and "LM (retrained): 0.2M parameters" in printed
    for name in ("t2v", "i2v", "continue", "inpaint", "outpaint", "stylize", "a2v", "avcont"):
        v = read_video(out / f"{name}.mp4")
        assert v.frames.shape == (5, 32, 32, 3), name
    assert read_video(out / "v2a.mp4", with_audio=True).audio is not None
    assert read_video(out / "long.mp4").frames.shape == (16, 32, 32, 3)  # 2 s at 8 fps
    # the retrained models are the debug recipes' (a toy vocabulary), not the shipped ones
    vocab = json.loads((pipe_dir / "lm" / "vocab.json").read_text())
    assert vocab["visual_bits"] == 6 and vocab["audio_levels"] == 2
    # the pipeline's codec is the refit one: its codebooks moved, encoder and decoder kept, beam search on
    refit = json.loads((pipe_dir / "audio_tokenizer" / "config.json").read_text())
    assert refit["beam_width"] == 4 and json.loads((models / "audio" / "tokenizer" / "config.json").read_text())["beam_width"] == 1
    assert (models / "lm" / "checkpoints").is_dir() and (models / "shards" / "index.json").is_file()
    # run again: every stage is kept, nothing is retrained
    assert cli.main(["quickstart", "--out", str(out), "--retrain", "--scale", "debug", "--num", "1", "--seconds", "1"]) == 0
    again = capsys.readouterr().out
    assert all(f"retrain [{s}]: kept" in again
               for s in ("video tokenizer", "audio codec", "audio codebooks", "text model", "tokenize", "LM"))
