"""Per-task scores, drift and reports on cases with known answers (ground-truth clips as outputs)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from videopoet.eval.tasks_eval import drift, score, shapes_jobs, summarize
from videopoet.tasks.pipeline import Result


@pytest.fixture(scope="module")
def jobs():
    return shapes_jobs("shapes:6:7070:single")


def _as_result(job, frames=None, audio=None):
    return Result("x", job.video if frames is None else frames, 8.0, job.audio if audio is None else audio, 16000)


def test_the_ground_truth_scores_full_marks_and_noise_scores_none(jobs):
    truth = summarize([score("t2v", j, _as_result(j)) for j in jobs])
    assert truth["colour_exact"] == 1.0 and truth["direction"] == 1.0 and truth["shape"] >= 0.8
    assert truth["spurious"] == 0.0
    rng = np.random.default_rng(0)
    noisy = summarize([score("t2v", j, _as_result(j, rng.integers(0, 256, j.video.shape).astype(np.uint8))) for j in jobs])
    assert noisy["colour_exact"] == 0.0 and noisy["all_three"] == 0.0
    # a clip painted with every palette colour shows the prompt's colour but gets no exact credit
    from videopoet.data import shapes as S

    stripes = jobs[0].video.copy()
    for k, c in enumerate(S.COLOURS):  # a 6x10-pixel block of every colour, in every frame
        stripes[:, 2:12, 2 + k * 10 : 8 + k * 10] = (np.asarray(S.COLOUR_RGB[c]) * 255).astype(np.uint8)
    s = score("t2v", jobs[0], _as_result(jobs[0], stripes))
    assert s["colour"] == [1.0] and s["colour_exact"] == [0.0] and s["spurious"] >= 4

def test_v2a_with_the_true_soundtrack_hears_every_tone_and_bounce(jobs):
    s = summarize([score("v2a", j, _as_result(j)) for j in jobs])
    assert s["tone"] == 1.0 and s["clicks"] == 1.0
    silent = summarize([score("v2a", j, _as_result(j, audio=np.zeros_like(j.audio))) for j in jobs])
    assert silent["clicks"] == 0.0


def test_v2a_tone_halves_tell_a_wrong_shape_from_a_wrong_colour(jobs):
    from videopoet.data import shapes as S

    j = jobs[0]
    (o,) = j.attributes["objects"]
    t = np.arange(len(j.audio)) / 16000
    other_shape = next(sh for sh in S.SHAPES if sh != o["shape"])
    other_colour = next(c for c in S.COLOURS if c != o["colour"])
    for shape, colour, want in ((other_shape, o["colour"], (0.0, 0.0, 1.0)), (o["shape"], other_colour, (0.0, 1.0, 0.0)),
                                (o["shape"], o["colour"], (1.0, 1.0, 1.0))):
        hum = (0.3 * np.sin(2 * np.pi * S.tone_frequency(shape, colour) * t)).astype(np.float32)
        s = score("v2a", j, _as_result(j, audio=hum))
        assert (s["tone"], s["tone_shape"], s["tone_colour"]) == ([want[0]], [want[1]], [want[2]]), (shape, colour)


def test_stylize_motion_agreement_is_high_for_the_truth_and_low_for_a_still(jobs):
    same = summarize([score("stylize", j, _as_result(j)) for j in jobs])["flow_agreement"]
    still = summarize([score("stylize", j, _as_result(j, np.repeat(j.video[:1], 17, 0))) for j in jobs])["flow_agreement"]
    assert same > 0.5 and still < 0.2


def test_inpaint_scores_the_region_and_the_rest_apart(jobs):
    j = jobs[0]
    region = np.zeros(j.video.shape[:3], bool)
    region[:, 16:48, 16:48] = True
    broken = j.video.copy()
    broken[:, 16:48, 16:48] = 0
    s = score("inpaint", j, _as_result(j, broken), {"region": region})
    assert s["psnr_kept"] == pytest.approx(100.0) and s["psnr_region"] < 15


def test_drift_of_a_repeated_clip_and_of_a_fading_one(jobs):
    v = jobs[0].video
    same = drift([v, v[5:], v[5:]])
    assert same["chunk_identity"] == [1.0, 1.0, 1.0] and same["chunk_psnr_vs_first"][0] == pytest.approx(100.0)
    fade = drift([v, (v[5:] * 0.5).astype(np.uint8), np.zeros_like(v[5:])])
    assert fade["chunk_identity"][-1] == 0.0 and fade["chunk_psnr_vs_first"][2] < fade["chunk_psnr_vs_first"][1]
    assert fade["flicker_seam"] > fade["flicker_inside"]


def test_report_writes_markdown_plots_and_every_figure(tmp_path):
    from videopoet.eval.run import write_report

    for name, acc in (("default", 0.8), ("untrained", 0.1), ("cool", 0.6)):
        d = tmp_path / name
        d.mkdir()
        (d / "scores.json").write_text(json.dumps({"task": "t2v", "model": "default" if name == "cool" else name,
                                                   "prompts": "shapes:4:7070", "jobs": 4, "scored": 4,
                                                   "summary": {"colour_exact": acc, "all_three": acc / 2},
                                                   "sampling": {"temperature": 0.7} if name == "cool" else {},
                                                   "command": f"videopoet eval run --task t2v --lm {name}"}))
    d = tmp_path / "ext"
    d.mkdir()
    (d / "scores.json").write_text(json.dumps({"task": "extend", "model": "default", "prompts": "shapes:4:7070", "jobs": 4,
                                               "scored": 4, "extend": {"anchor": True, "seconds": 6},
                                               "summary": {"chunk_identity": [1, 0.5], "chunk_psnr_vs_first": [100, 20],
                                                           "chunk_ssim_vs_first": [1, 0.5], "flicker_seam": 3.0,
                                                           "flicker_inside": 2.0}, "command": "videopoet eval run --task extend"}))
    log = tmp_path / "metrics.jsonl"
    log.write_text("\n".join(json.dumps({"step": s, "loss": 3 - s / 100, **({"heldout_t2v": 2.5} if s == 50 else {})})
                             for s in range(0, 100, 10)))
    md = write_report([tmp_path / "default", tmp_path / "untrained", tmp_path / "cool", d], tmp_path / "rep",
                      train_logs=[log])
    text = md.read_text()
    assert "| default | 0.40 | 0.80 |" in text and "| untrained | 0.05 | 0.10 |" in text
    assert "| default, temperature 0.7 | 0.30 | 0.60 |" in text  # one model at two sampling settings: two rows
    assert "videopoet eval run --task t2v --lm untrained" in text
    for png in ("t2v.png", "drift.png", "loss_1.png"):
        assert (tmp_path / "rep" / png).stat().st_size > 1000
    fig = json.loads((tmp_path / "rep" / "figures.json").read_text())
    assert fig["tasks"]["t2v"]["default"]["colour_exact"] == 0.8 and fig["drift"]["default (anchor on)"]["flicker_seam"] == 3.0


def test_report_marks_runs_made_on_other_prompts(tmp_path):
    """Runs of one task on two prompt sets: each row says which set it is (the header names one)."""
    from videopoet.eval.run import write_report

    for name, prompts, acc in (("a", "shapes:12:7070", 0.5), ("b", "shapes:48:7171", 0.25)):
        d = tmp_path / name
        d.mkdir()
        (d / "scores.json").write_text(json.dumps({"task": "t2i", "model": name, "prompts": prompts, "jobs": 4,
                                                   "scored": 4, "summary": {"colour_exact": acc}, "command": name}))
    text = write_report([tmp_path / "a", tmp_path / "b"], tmp_path / "rep").read_text()
    assert "| a [shapes:12:7070] | 0.50 |" in text and "| b [shapes:48:7171] | 0.25 |" in text
    assert "rows marked [...] ran on other prompts" in text
    fig = json.loads((tmp_path / "rep" / "figures.json").read_text())
    assert fig["tasks"]["t2i"]["b [shapes:48:7171]"]["colour_exact"] == 0.25


def test_the_in_domain_frechet_distance_is_zero_for_the_same_clips_and_grows_with_damage(jobs):
    from videopoet.eval.tasks_eval import fd_probe, probe_features

    real = [j.video for j in jobs]
    f = probe_features(real[0])
    assert f.shape == (9,) and f[-1] == 1.0  # one object: one colour seen
    assert fd_probe(real, real) == pytest.approx(0.0, abs=1e-6)
    grey = [np.repeat(v.mean(-1, keepdims=True), 3, -1).astype(np.uint8) for v in real]
    still = [np.repeat(v[:1], len(v), 0) for v in real]
    assert fd_probe(grey, real) > 1.0 and fd_probe(still, real) > 1.0  # colour gone; motion gone (measured 10.3, 11.6)


def test_the_probe_gate_passes_on_the_truth_and_refuses_a_set_it_cannot_read(jobs, monkeypatch):
    from videopoet.eval import run as R

    ok = R.validate_probes("t2v", jobs)
    assert ok["ground_truth"] >= R.PROBE_GATE and ok["fields"] == ["colour_exact", "shape", "direction"]
    assert R.validate_probes("v2a", jobs)["ground_truth"] == 1.0
    # a job set whose frames the probes cannot read (blank video): scoring is refused before generating
    blank = [R.Job(j.index, j.caption, np.full_like(j.video, 128), j.audio, j.attributes) for j in jobs]
    monkeypatch.setattr(R, "load_jobs", lambda prompts, pipe: blank)

    class NoPipe:
        at = None

        def encode_video(self, v):
            raise AssertionError("nothing is generated before the gate")

    with pytest.raises(R.InputError, match="probes read only 0.0%"):
        R.eval_run(NoPipe(), "t2v", "shapes:6:7070", "/tmp/never", model_name="x")


def test_continuation_is_scored_on_the_new_frames_only(jobs):
    truth = summarize([score("continue", j, _as_result(j), {"context_frames": 5}) for j in jobs])
    frozen = [np.concatenate([j.video[:5], np.repeat(j.video[4:5], 12, 0)]) for j in jobs]
    still = summarize([score("continue", j, _as_result(j, f), {"context_frames": 5}) for j, f in zip(jobs, frozen, strict=True)])
    assert truth["direction"] == 1.0 and truth["psnr_new"] == pytest.approx(100.0)
    assert still["direction"] == 0.0 and still["colour"] == 1.0  # the context's motion is not the model's


def test_the_copy_baseline_fills_each_masked_cell_from_its_nearest_kept_cell():
    import torch

    from videopoet.eval.run import nearest_copy

    class Echo:  # "decodes" codes to themselves
        class settings:
            frames = 2

        @staticmethod
        def decode_video(codes):
            return codes.numpy()

    codes = torch.arange(2 * 4 * 4).reshape(2, 4, 4)
    masked = codes.clone()
    masked[:, :, 2:] = -1  # the right half of every latent frame
    filled = nearest_copy(Echo(), masked)
    assert (filled[:, :, 2] == codes[:, :, 1].numpy()).all() and (filled[:, :, 3] == codes[:, :, 1].numpy()).all()
    assert (filled[:, :, :2] == codes[:, :, :2].numpy()).all()
