"""Task pipelines: every task from media and text to media, pinned codes, input fitting, long video, CLI.

A tiny random LM with the shipped vocabulary (the shipped tokenizers encode and decode for real),
so these tests check the plumbing and the guarantees (pinned codes, seeds, fitting, streaming),
not the quality of generation (benchmarks/RESULTS.md has that, from the trained default).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from videopoet.data.shapes import ShapesConfig, make_clip
from videopoet.errors import InputError, VideoPoetError


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    from videopoet.lm.model import PrefixLM, lm_config
    from videopoet.lm.pretrained import load_preset, save_lm

    vocab, _ = load_preset("lm/small")
    cfg = lm_config(vocab, dict(d_model=32, n_layers=1, n_heads=2, max_seq_len=5120, factorized_visual=True), where="t")
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("lm") / "lm"
    save_lm(d, PrefixLM(cfg), vocab)
    return d


@pytest.fixture(scope="module")
def pipe(lm_dir):
    from videopoet.tasks.pipeline import Pipeline

    return Pipeline.from_pretrained(lm=lm_dir, quiet=True)


@pytest.fixture(scope="module")
def clip():
    return make_clip(ShapesConfig(size=64), 7, 0)


def test_same_seed_same_output_and_another_seed_differs(pipe):
    a, b = pipe.t2v("a small red circle moving left", seed=1), pipe.t2v("a small red circle moving left", seed=1)
    c = pipe.t2v("a small red circle moving left", seed=2)
    assert torch.equal(a.tokens["video"], b.tokens["video"]) and np.array_equal(a.frames, b.frames)
    assert not torch.equal(a.tokens["video"], c.tokens["video"])
    assert a.frames.shape == (17, 64, 64, 3) and a.frames.dtype == np.uint8 and a.tokens["video"].shape == (9, 16, 16)
    img = pipe.t2i("a small red circle", seed=1)
    assert img.frames.shape == (1, 64, 64, 3)


def test_i2v_inpaint_and_outpaint_keep_their_pinned_codes(pipe, clip):
    codes = pipe.encode_video(clip.video)
    r = pipe.i2v(clip.video[:1], "a circle", seed=0)
    assert torch.equal(r.tokens["video"][0], pipe.encode_video(clip.video[:1])[0])
    r = pipe.inpaint(clip.video, box=(8, 8, 40, 24), seed=0)
    keep = r.tokens["masked"] >= 0
    assert int((~keep).sum()) == 9 * 8 * 4  # latent rows 2..9, columns 2..5, every one of the 9 latent frames
    assert torch.equal(r.tokens["video"][keep], codes[keep])
    r = pipe.outpaint(clip.video, margins=(0, 16, 0, 8), seed=0)
    keep = r.tokens["masked"] >= 0
    assert not bool(keep[:, :, :2].any()) and not bool(keep[:, :, -4:].any()) and bool(keep[:, :, 2:-4].all())
    assert torch.equal(r.tokens["video"][keep], codes[keep])


def test_a_wide_input_is_fitted_inside_the_square_for_outpainting(pipe):
    wide = np.zeros((17, 32, 64, 3), np.uint8)
    r = pipe.outpaint(wide, seed=0)
    keep = r.tokens["masked"] >= 0
    assert bool(keep[:, 4:12].all()) and not bool(keep[:, :4].any()) and not bool(keep[:, 12:].any())
    assert any("fitted inside 64x64" in n for n in r.notes)
    with pytest.raises(InputError, match="square input needs margins"):
        pipe.outpaint(np.zeros((17, 64, 64, 3), np.uint8))


def test_inputs_are_fitted_and_the_changes_are_reported(pipe, clip):
    small = np.repeat(clip.video[:9, ::2, ::2], 1, axis=0)  # 9 frames of 32x32
    r = pipe.v2a(small, seed=0)
    assert r.frames.shape == (17, 64, 64, 3) and r.audio.shape[0] == pytest.approx(17 / 8 * 16000, rel=0.01)
    assert any("resized to 64x64" in n for n in r.notes) and any("padded to 17" in n for n in r.notes)
    stereo_44k = np.stack([clip.audio[0], clip.audio[0]])  # a (2, S) array is mixed down
    r = pipe.a2v(stereo_44k, seed=0)
    assert any("mixed down" in n for n in r.notes) and r.tokens["input_audio"].shape == (4, pipe.audio_frames)


def test_bad_inputs_get_one_line_errors_naming_the_field_or_file(pipe, tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video at all")
    with pytest.raises(VideoPoetError, match="broken.mp4"):
        pipe.v2a(bad)
    with pytest.raises(InputError, match="box"):
        pipe.inpaint(np.zeros((17, 64, 64, 3), np.uint8), box=(30, 10, 20, 40))
    with pytest.raises(InputError, match="prompt"):
        pipe.t2v(123)
    with pytest.raises(InputError, match="NaN"):
        pipe.a2v(np.full(1000, np.nan, np.float32))
    with pytest.raises(InputError, match="unknown"):
        pipe.run("dance", prompt="x")
    long = " ".join(["red blue green circle square"] * 40)
    with pytest.raises(VideoPoetError, match="max_length|longer"):
        pipe.t2v(long)


def test_a_pipeline_saved_and_loaded_generates_the_same(pipe, tmp_path):
    from videopoet.tasks.pipeline import Pipeline

    pipe.save(tmp_path / "p", dtype=None)
    again = Pipeline.from_pretrained(tmp_path / "p", quiet=True)
    assert torch.equal(again.t2v("a blue square", seed=4).tokens["video"], pipe.t2v("a blue square", seed=4).tokens["video"])
    with pytest.raises(VideoPoetError, match="not a pipeline directory"):
        Pipeline.from_pretrained(tmp_path)


def test_extend_streams_chunks_that_play_while_the_file_grows(pipe, clip, tmp_path):
    from videopoet.data.media import read_video
    from videopoet.tasks.longvideo import extend

    out = tmp_path / "long.mp4"
    seen = []

    def on_chunk(i, frames):
        if i == 1:  # the file written so far is already a playable video
            seen.append(len(read_video(out).frames))

    frames = extend(pipe, clip.video, 4.0, out, on_chunk=on_chunk, seed=0, quiet=True)
    assert frames.shape == (32, 64, 64, 3) and np.array_equal(frames[:17], clip.video)
    assert seen and seen[0] >= 17
    assert len(read_video(out).frames) == 32


def test_cli_generate_and_a_batch_with_a_bad_line_and_a_chain(lm_dir, tmp_path):
    env_py = [sys.executable, "-m", "videopoet"]
    r = subprocess.run(env_py + ["generate", "t2i", "--prompt", "a red circle", "--lm", str(lm_dir), "--out",
                                 str(tmp_path / "img"), "--no-progress"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "img.png").is_file() and (tmp_path / "img.tokens.pt").is_file()
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("\n".join([json.dumps({"prompt": "a blue square", "seed": 3}), "not json",
                               json.dumps({"task": "i2v", "image": str(tmp_path / "missing.png")}),
                               json.dumps({"prompt": "green", "then": [{"task": "v2a"}]})]) + "\n")
    r = subprocess.run(env_py + ["generate", "t2v", "--prompts", str(jobs), "--lm", str(lm_dir), "--out",
                                 str(tmp_path / "batch"), "--no-progress"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "wrote 2 result(s)" in r.stdout and "skipped 2 bad line(s)" in r.stdout
    assert "jobs.jsonl:2" in r.stderr and "missing.png" in r.stderr
    assert sorted(p.name for p in (tmp_path / "batch").glob("*.mp4")) == ["0001_t2v.mp4", "0004_v2a.mp4"]
    tokens = torch.load(tmp_path / "batch" / "0004_v2a.tokens.pt")
    assert tokens["audio"].shape[0] == 4  # the chain's last task wrote the sound


def test_the_embedded_default_is_complete_and_within_25_mb():
    from videopoet.assets import ASSETS
    from videopoet.tasks.pipeline import PARTS, Pipeline

    files = [f for name in PARTS.values() for f in (ASSETS / name).iterdir() if f.is_file()]
    weights = sum(f.stat().st_size for f in files if f.suffix in (".safetensors", ".model"))
    assert weights <= 25_000_000, weights
    pipe = Pipeline.from_pretrained(quiet=True)  # no argument: the embedded models
    assert pipe.latent == (9, 16, 16) and pipe.audio_frames == 106
    info = json.loads((ASSETS / "lm" / "training.json").read_text())
    assert info["parameters"] == sum(p.numel() for p in pipe.lm.parameters())


def test_stylize_takes_depth_from_a_local_transformers_model_and_says_which_structure(pipe, clip, tmp_path):
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    cfg = DPTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, image_size=32,
                    patch_size=8, backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[8, 16, 32, 32],
                    fusion_hidden_size=16, reassemble_factors=[4, 2, 1, 0.5])
    torch.manual_seed(0)
    DPTForDepthEstimation(cfg).save_pretrained(tmp_path / "dpt")  # random weights: the plumbing
    DPTImageProcessor(size={"height": 32, "width": 32}, keep_aspect_ratio=False).save_pretrained(tmp_path / "dpt")
    with_depth = pipe.stylize(clip.video, "a green diamond", depth_model=str(tmp_path / "dpt"), seed=0)
    edges = pipe.stylize(clip.video, "a green diamond", seed=0)
    assert any("depth: given" in n and "dpt" in n for n in with_depth.notes)
    assert any("edges: OpenCV Canny" in n for n in edges.notes)
    assert not torch.equal(with_depth.tokens["structure"], edges.tokens["structure"])
    with pytest.raises(InputError, match="not a directory"):
        pipe.stylize(clip.video, "x", depth_model=str(tmp_path / "nope"))


def test_an_lm_without_pipeline_json_samples_with_the_pipelines_settings(pipe, lm_dir, tmp_path):
    """A training run's export has no pipeline.json: `--lm DIR` then uses the embedded pipeline's
    sampling settings (guidance, frame-prediction context), not the bare defaults (guidance 1);
    a pipeline.json beside the LM wins."""
    import shutil

    from videopoet.assets import asset_dir
    from videopoet.tasks.pipeline import PIPELINE_NAME, Pipeline

    shipped = json.loads((asset_dir("lm") / PIPELINE_NAME).read_text())
    assert pipe.settings.guidance == shipped["guidance"] != 1.0
    assert pipe.settings.context_frames == shipped["context_frames"]
    own = tmp_path / "lm"
    shutil.copytree(lm_dir, own)
    (own / PIPELINE_NAME).write_text(json.dumps({**shipped, "guidance": 4.5}))
    assert Pipeline.from_pretrained(lm=own, quiet=True).settings.guidance == 4.5
    # a pipeline directory put together by hand, without a pipeline.json of its own: the LM's
    # pipeline.json, else the embedded one (the bare defaults sampled at guidance 1 and 2 context
    # frames, which once made a tokenizer candidate look worse at long video than it was)
    assembled = tmp_path / "assembled"
    assembled.mkdir()
    for part in ("video_tokenizer", "audio_tokenizer", "text_spm"):
        (assembled / part).symlink_to(asset_dir(part))
    (assembled / "lm").symlink_to(own)
    assert Pipeline.from_pretrained(assembled, quiet=True).settings.guidance == 4.5
    (assembled / "lm").unlink()
    (assembled / "lm").symlink_to(lm_dir)
    got = Pipeline.from_pretrained(assembled, quiet=True).settings
    assert (got.guidance, got.context_frames, got.task_temperature) == (shipped["guidance"], shipped["context_frames"],
                                                                        shipped["task_temperature"])


def test_v2a_is_guided_only_when_its_own_scale_is_set(pipe, clip):
    """v2a's guidance branch drops the video (an LM trained with "audio" rows knows it): pipeline.json's
    global `guidance` leaves v2a unguided; task_guidance.v2a or an explicit `guidance` guides it."""
    from videopoet.config import from_dict
    from videopoet.errors import ConfigError
    from videopoet.tasks.pipeline import Settings

    before = (pipe.settings.guidance, pipe.settings.task_guidance)
    try:
        pipe.settings.guidance, pipe.settings.task_guidance = 1.0, {}
        plain = pipe.v2a(clip.video, seed=3).tokens["audio"]
        pipe.settings.guidance = 3.0  # the global scale: not for v2a
        assert torch.equal(pipe.v2a(clip.video, seed=3).tokens["audio"], plain)
        pipe.settings.task_guidance = {"v2a": 3.0}
        guided = pipe.v2a(clip.video, seed=3).tokens["audio"]
        assert guided.shape == plain.shape and not torch.equal(guided, plain)
        pipe.settings.task_guidance = {}
        assert torch.equal(pipe.v2a(clip.video, seed=3, guidance=3.0).tokens["audio"], guided)
    finally:
        pipe.settings.guidance, pipe.settings.task_guidance = before
    assert Settings(guidance=2.0).guidance_for("v2a") == 1.0 and Settings(guidance=2.0).guidance_for("t2v") == 2.0
    assert Settings(guidance=2.0, task_guidance={"t2v": 3.0}).guidance_for("t2v") == 3.0
    with pytest.raises(ConfigError, match="task_guidance.v2a"):
        from_dict(Settings, {"task_guidance": {"v2a": 0.5}}, where="x/pipeline.json")


def test_a_task_temperature_replaces_the_default_for_that_task_only(pipe, tmp_path):
    """Settings.task_temperature: t2i at temperature 0 is greedy (any seed, the same image) while
    t2v keeps the default and differs by seed; a bad entry in pipeline.json names the file."""
    from videopoet.config import from_dict
    from videopoet.errors import ConfigError
    from videopoet.tasks.pipeline import Settings

    before = pipe.settings.task_temperature
    try:
        pipe.settings.task_temperature = {"t2i": 0.0}
        a, b = pipe.t2i("a red circle", seed=1), pipe.t2i("a red circle", seed=2)
        assert torch.equal(a.tokens["video"], b.tokens["video"])
        c, d = pipe.t2v("a red circle", seed=1), pipe.t2v("a red circle", seed=2)
        assert not torch.equal(c.tokens["video"], d.tokens["video"])
    finally:
        pipe.settings.task_temperature = before
    assert Settings(task_temperature={"inpaint": 0.7}).temperature_for("inpaint") == 0.7
    assert Settings(task_temperature={"inpaint": 0.7}, temperature=0.9).temperature_for("t2v") == 0.9
    with pytest.raises(ConfigError, match="pipeline.json.*unknown task 'continue'"):
        from_dict(Settings, {"task_temperature": {"continue": 0.5}}, where="x/pipeline.json")
    with pytest.raises(ConfigError, match="task_temperature.inpaint"):
        from_dict(Settings, {"task_temperature": {"inpaint": -1}}, where="x/pipeline.json")


def test_anchor_guidance_drops_the_anchor_from_the_guidance_branch(pipe, clip, monkeypatch):
    """Settings.anchor_guidance: continuing with an anchor, the guidance branch loses the anchor as
    well as the text, so guidance also pulls towards the anchor; without a prompt there is then a
    branch to guide with (off: none, so the samples differ)."""
    seen = []
    real = pipe.generate_codes

    def spy(task, inputs, outputs, **kw):
        seen.append((sorted(inputs), None if kw.get("uncond_inputs") is None else sorted(kw["uncond_inputs"])))
        return real(task, inputs, outputs, **kw)

    monkeypatch.setattr(pipe, "generate_codes", spy)
    anchor = clip.video[:1]
    on = pipe.continue_video(clip.video, "a circle", anchor=anchor, anchor_guidance=True, guidance=2.0, seed=3)
    off = pipe.continue_video(clip.video, "a circle", anchor=anchor, anchor_guidance=False, guidance=2.0, seed=3)
    assert seen == [(["anchor", "context", "text"], ["context"]), (["anchor", "context", "text"], ["anchor", "context"])]
    assert not torch.equal(on.tokens["video"], off.tokens["video"])
    seen.clear()
    a = pipe.continue_video(clip.video, None, anchor=anchor, anchor_guidance=False, guidance=2.0, seed=3)
    b = pipe.continue_video(clip.video, None, anchor=anchor, anchor_guidance=True, guidance=2.0, seed=3)
    assert seen == [(["anchor", "context"], None), (["anchor", "context"], ["context"])]
    assert not torch.equal(a.tokens["video"], b.tokens["video"])
    # the default comes from pipeline.json's setting
    before = pipe.settings.anchor_guidance
    try:
        pipe.settings.anchor_guidance = True
        seen.clear()
        pipe.continue_video(clip.video, None, anchor=anchor, guidance=2.0, seed=3)
        assert seen == [(["anchor", "context"], ["context"])]
    finally:
        pipe.settings.anchor_guidance = before
