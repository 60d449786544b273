"""Token shards and LM pretraining: tokenize (bad items, resume), the bucket sampler, the Fabric loop
(padding, dropout, skipped steps, vocabulary checks), exact resume after kill -9, DDP on CPU."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from videopoet.data.shards import ShardReader
from videopoet.data.tokenize import tokenize
from videopoet.errors import ConfigError, InputError
from videopoet.lm.pretrain import BucketSampler, Pretrainer, load_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def debug_tokenizers(tmp_path_factory):
    from videopoet.config import from_dict, load_yaml
    from videopoet.tokenizers.audio import AudioTokenizer, AudioTokenizerConfig
    from videopoet.tokenizers.video import VideoTokenizer, VideoTokenizerConfig

    d = tmp_path_factory.mktemp("tok")
    torch.manual_seed(0)
    VideoTokenizer(from_dict(VideoTokenizerConfig, load_yaml("tokenizer/debug")["model"])).save_pretrained(d / "video")
    AudioTokenizer(from_dict(AudioTokenizerConfig, load_yaml("audio/debug")["model"])).save_pretrained(d / "audio")
    return d


def _tok(data, out, toks, **kw):
    return tokenize(data, out, video_model=toks / "video", audio_model=toks / "audio", frames=5, size=32,
                    progress=False, log=lambda m: None, **kw)


@pytest.fixture(scope="module")
def shards(tmp_path_factory, debug_tokenizers):
    out = tmp_path_factory.mktemp("shards") / "s"
    _tok("shapes:14", out, debug_tokenizers, part_size=5)
    return out


def cfg(shards, out, *extra):
    return load_config("train/debug", [f"data.shards={shards}", f"train.out={out}", *extra])


# ------------------------------------------------------------------------------------------ tokenize
def test_tokenize_stores_every_field_and_the_metadata(shards):
    r = ShardReader(shards)
    assert r.buckets == {"av_32x32_f5": 14}
    assert r.fields("av_32x32_f5") == ["audio", "structure", "text", "visual"]
    it = r.item("av_32x32_f5", 3)
    assert it["visual"].shape == (2, 4, 4) and it["structure"].shape == (2, 4, 4)  # debug: 4x time, 8x space
    assert it["audio"].shape[0] == 2 and it["audio"].max() < 16 and it["visual"].max() < 64
    from videopoet.data.shapes import ShapesDataset
    from videopoet.tokenizers.text import default_text_tokenizer

    clip = ShapesDataset(14, seed=0, ground_truth=False, size=32, frames=5).clip(3)
    assert it["meta"]["caption"] == clip.caption and it["meta"]["attributes"]["objects"][0]["colour"]
    ids = default_text_tokenizer().encode([clip.caption]).ids[0]
    assert it["text"].tolist() == ids[: len(it["text"])].tolist()
    assert it["meta"]["fps"] == 8.0 and it["meta"]["frames"] == 5
    # the structure codes differ from the picture's codes (flow + depth is another video)
    assert not np.array_equal(it["structure"], it["visual"])


def test_tokenize_skips_and_counts_bad_media(tmp_path, debug_tokenizers):
    from videopoet.data.samples import sample_media_paths

    data = tmp_path / "media"
    data.mkdir()
    imgs = [p for p in sample_media_paths("image") if p.suffix == ".png"][:2]
    for p in imgs:
        shutil.copy(p, data / p.name)
    (data / "broken.mp4").write_bytes(b"not a video at all")
    (data / "empty.png").write_bytes(b"")
    rep = _tok(str(data), tmp_path / "out", debug_tokenizers)
    assert rep.written == 2 and len(rep.skipped) == 2
    assert {Path(p).name for p, _ in rep.skipped} == {"broken.mp4", "empty.png"}
    assert ShardReader(tmp_path / "out").buckets == {"image_32x32_f1": 2}


def test_tokenize_resume_keeps_finished_parts(tmp_path, debug_tokenizers, shards):
    out = tmp_path / "s"
    shutil.copytree(shards, out)
    parts = sorted((out / "parts").iterdir())
    assert len(parts) == 3
    shutil.rmtree(parts[1])  # as if killed while writing the second part
    (out / "parts" / ".r000_p00002.tmp").mkdir()  # a half-written part left behind
    rep = _tok("shapes:14", out, debug_tokenizers, part_size=5)
    assert rep.kept_parts == 2 and rep.written == 5
    a, b = ShardReader(shards), ShardReader(out)
    for i in range(14):
        x, y = a.item("av_32x32_f5", i), b.item("av_32x32_f5", i)
        assert all(np.array_equal(x[f], y[f]) for f in ("visual", "audio", "text", "structure"))


def test_tokenize_refuses_other_tokenizers_on_the_same_shards(tmp_path, debug_tokenizers, shards):
    out = tmp_path / "s"
    shutil.copytree(shards, out)
    with pytest.raises(ConfigError, match="vocab.json"):
        tokenize("shapes:2", out, frames=5, size=32, progress=False, log=lambda m: None)  # shipped tokenizers


# ------------------------------------------------------------------------------------------ sampler
def test_sampler_is_identical_on_every_rank_and_resumes_from_its_state():
    groups = {"a": ("a", np.arange(10)), "b": ("b", np.arange(7))}
    plan = [("t2v", "a", 1.0, 4), ("i2v", "b", 1.0, 2)]
    mk = lambda r: BucketSampler(plan, groups, seed=3, rank=r, world=2, max_steps=30, text_dropout=0.5)  # noqa: E731
    r0, r1 = list(mk(0)), list(mk(1))
    whole = list(BucketSampler(plan, groups, seed=3, rank=0, world=1, max_steps=30, text_dropout=0.5))
    for x, y, w in zip(r0, r1, whole, strict=True):
        assert [k[0:2] + k[3:] for k in x] == [k[0:2] + k[3:] for k in y]  # same task, bucket, step, flags
        assert x == w[0::2] and y == w[1::2]  # the ranks split the one global batch
    assert 0.2 < np.mean([b[0][4]["drop_text"] for b in r0]) < 0.8
    # every item of a bucket is served once per epoch
    a_items = [k[2] for b0, b1 in zip(r0, r1, strict=True) for k in b0 + b1 if k[1] == "a"]
    assert sorted(a_items[:10]) == list(range(10))
    s = mk(0)
    it = iter(s)
    head = [next(it) for _ in range(11)]
    state = json.loads(json.dumps(s.state_dict()))
    s2 = mk(0)
    s2.load_state_dict(state)
    assert head == r0[:11] and list(s2) == r0[11:]


# --------------------------------------------------------------------------------------------- loop
def test_training_learns_without_padding_and_refuses_other_vocabularies(tmp_path, shards):
    tr = Pretrainer(cfg(shards, tmp_path / "run", "train.max_steps=30", "train.eval_every=30"))
    before = tr.evaluate()
    tr.fit()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 30 and max(r["padding"] for r in rows) < 0.2  # 12 short items: one length group (the cpu run: RESULTS.md)
    after = {k: v for k, v in rows[-1].items() if k.startswith("heldout_")}
    assert after.keys() == before.keys()
    assert np.mean(list(after.values())) < np.mean(list(before.values())) - 0.3  # measured: 6.47 -> 5.6
    assert {k for k in rows[-1] if k.startswith("heldout_")} >= {"heldout_t2v", "heldout_v2a", "heldout_stylize"}
    assert (tmp_path / "run" / "model" / "vocab.json").is_file()
    base = json.loads((tmp_path / "run" / "baselines.json").read_text())
    assert 0 < base["unigram_visual"] < np.log(64) + 0.5 and 0 < base["unigram_audio"] < np.log(16) + 0.5
    assert (tmp_path / "run" / "logs" / "version_0" / "metrics.csv").is_file()
    with pytest.raises(ConfigError, match="vocab.json"):
        Pretrainer(load_config("train/debug", [f"data.shards={shards}", "train.model=lm/cpu"]))


def test_a_non_finite_step_is_skipped_and_counted(tmp_path, shards):
    tr = Pretrainer(cfg(shards, tmp_path / "run"))
    batch = next(iter(tr.loader()))
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    with torch.no_grad():
        tr.model.norm.weight.fill_(float("nan"))
    logs = tr.train_step(batch)
    assert logs["skipped"] == 1.0 and tr.skipped_steps == 1
    after = tr.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k != "norm.weight")


def _run_cli(args, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "videopoet", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_resume_after_kill_9_reproduces_an_uninterrupted_run(tmp_path, shards, workers):
    common = ["lm", "train", "--config", "train/debug", "--set", f"data.shards={shards}", "--set", "train.max_steps=24",
              "--set", "train.log_every=1", "--set", "train.eval_every=0", "--set", f"data.num_workers={workers}"]
    p = _run_cli([*common, "--set", f"train.out={tmp_path / 'a'}", "--set", "train.checkpoint_every=24"])
    assert p.wait(timeout=600) == 0, p.stderr.read()
    p = _run_cli([*common, "--set", f"train.out={tmp_path / 'b'}", "--set", "train.checkpoint_every=12"])
    ck = tmp_path / "b" / "checkpoints" / "step_0000012" / "state.json"
    t0 = time.time()
    while not ck.is_file() and p.poll() is None and time.time() - t0 < 600:
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (tmp_path / "b" / "model").exists(), "the run finished before it could be killed"
    p = _run_cli([*common, "--set", f"train.out={tmp_path / 'b'}", "--set", "train.checkpoint_every=12", "--resume"])
    assert p.wait(timeout=600) == 0, p.stderr.read()
    from safetensors.torch import load_file

    wa = load_file(str(tmp_path / "a" / "model" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "model" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    la = {r["step"]: r["loss"] for r in map(json.loads, (tmp_path / "a" / "metrics.jsonl").read_text().splitlines())}
    lb = {r["step"]: r["loss"] for r in map(json.loads, (tmp_path / "b" / "metrics.jsonl").read_text().splitlines())}
    assert all(la[s] == lb[s] for s in range(13, 25))


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_matches_one_process(tmp_path, shards):
    common = ["--config", "train/debug", "--set", f"data.shards={shards}", "--set", "train.max_steps=6",
              "--set", "data.tasks={t2v: 1.0}", "--set", "data.tokens_per_step=400", "--set", "data.max_batch=4", "--set", "train.eval_every=0",
              "--set", "train.checkpoint_every=100", "--set", "data.text_dropout=0.0",
              # Adam's update is ~sign(g) where |g| >> eps: a gradient whose true value is ~0 can take
              # either sign from summation order alone (one process vs two halves averaged), moving a
              # weight by 2 lr. A large eps makes the update linear in g there, so the comparison
              # checks the gradient synchronisation itself.
              "--set", "train.adam_eps=0.001"]
    one = _run_cli(["lm", "train", *common, "--set", f"train.out={tmp_path / 'one'}"])
    assert one.wait(timeout=600) == 0, one.stderr.read()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29531",
                          "-m", "videopoet", "lm", "train", *common, "--set", f"train.out={tmp_path / 'two'}",
                          "--set", "train.devices=2", "--set", "train.strategy=ddp"],
                         env=env, capture_output=True, text=True, timeout=900)
    assert two.returncode == 0, two.stderr[-3000:]
    from safetensors.torch import load_file

    w1 = load_file(str(tmp_path / "one" / "model" / "model.safetensors"))
    w2 = load_file(str(tmp_path / "two" / "model" / "model.safetensors"))
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=0, atol=1e-6)
    assert json.loads((tmp_path / "two" / "ranks.json").read_text())["max_param_sum_spread"] == 0.0
    changed = max(float((w1[k] - _initial_weight(k)).abs().max()) for k in list(w1)[:3])
    assert changed > 1e-4  # the runs trained


def _initial_weight(key):
    from videopoet.lm.pretrained import build_lm

    torch.manual_seed(0)
    model, _ = build_lm("lm/debug")
    return model.state_dict()[key]


@pytest.mark.parametrize("name", ["debug", "cpu", "300m"])
def test_every_training_preset_parses(name):
    c = load_config(f"train/{name}")
    assert sum(c.data.tasks.values()) > 0 and c.train.max_steps > 0
    if name == "300m":
        assert c.train.strategy == "fsdp" and c.train.devices * c.train.num_nodes == 32 and c.train.compile


def test_init_from_starts_from_the_given_weights(tmp_path, shards):
    a = Pretrainer(cfg(shards, tmp_path / "a", "train.max_steps=3", "train.eval_every=0"))
    a.fit()
    b = Pretrainer(cfg(shards, tmp_path / "b", "data.tasks={v2a: 1.0}"), init_from=tmp_path / "a")
    for (k, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.equal(x, y), k
    assert {p[0] for p in b.plan} == {"v2a"}


def test_short_t2v_rows_are_the_clips_first_latent_frames_in_larger_batches(tmp_path, shards):
    """data.t2v_short_frames: a share of t2v trains on the first latent frames only (more captions
    per step); the frames token still names the whole clip, the weight is split by t2v_short_share."""
    from videopoet.lm.pretrain import SHORT, PretrainDataConfig, examples_for

    v = np.arange(3 * 4 * 4, dtype=np.int32).reshape(3, 4, 4)
    item = {"visual": v, "text": np.array([3, 4], np.int32), "meta": {"frames": 9}}
    cut = PretrainDataConfig(t2v_short_frames=1)
    ins, outs, frames = examples_for("t2v", item, np.random.default_rng(0), cut, {"short": True})
    assert torch.equal(outs["video"], torch.from_numpy(v[:1])) and frames == 9 and sorted(ins) == ["text"]
    _, outs, _ = examples_for("t2v", item, np.random.default_rng(0), cut, {})  # the whole-clip variant
    assert torch.equal(outs["video"], torch.from_numpy(v))
    with pytest.raises(ConfigError, match="t2v_short"):
        PretrainDataConfig(t2v_short_frames=1, t2v_short_share=1.5)

    tasks = "data.tasks={t2v: 3.0, i2v: 1.0}"
    plain = Pretrainer(cfg(shards, tmp_path / "a", tasks, "train.max_steps=2", "train.eval_every=0"))
    t = Pretrainer(cfg(shards, tmp_path / "b", tasks, "data.t2v_short_frames=1", "data.t2v_short_share=0.25",
                       "train.max_steps=12", "train.eval_every=0"))
    long_ = {g: (task, wt, b) for task, g, wt, b in t.plan if task == "t2v" and not g.endswith(SHORT)}
    short = {g: (task, wt, b) for task, g, wt, b in t.plan if g.endswith(SHORT)}
    assert short and set(short) == {g + SHORT for g in long_} and all(x[0] == "t2v" for x in short.values())
    assert sum(x[1] for x in short.values()) == pytest.approx(0.75) and sum(x[1] for x in long_.values()) == pytest.approx(2.25)
    plain_t2v = [b for task, _, _, b in plain.plan if task == "t2v"]
    assert all(x[2] > plain_t2v[0] for x in short.values())  # shorter rows: a larger batch
    assert all(x[2] == plain_t2v[0] for x in long_.values())
    seen, ds = set(), t.loader().dataset
    for batch in t.sampler:
        for task, bucket, i, step, flags in batch:
            seen.add((task, flags["short"]))
            seq = ds[(task, bucket, i, step, flags)]
            if task == "t2v":
                full = ds[(task, bucket, i, step, {**flags, "short": False})]
                assert (len(seq) < len(full)) == flags["short"]
    assert ("t2v", True) in seen and ("t2v", False) in seen and ("i2v", False) in seen
    t.sampler.load_state_dict({"step": 0, "cursor": {g: 0 for g in t.sampler.cursor}, "epoch": {g: 0 for g in t.sampler.epoch}})
    m = t.fit()  # both variants train, every loss finite
    assert t.step == 12 and np.isfinite(m["loss"])


def test_frame_prediction_examples_carry_text_anchor_and_a_noisy_context():
    from videopoet.lm.pretrain import PretrainDataConfig, examples_for

    v = np.arange(5 * 4 * 4, dtype=np.int32).reshape(5, 4, 4)  # every code distinct
    item = {"visual": v, "text": np.array([3, 4, 5], np.int32), "meta": {"frames": 17}}
    clean = PretrainDataConfig(frame_pred_context=2)
    ins, outs, frames = examples_for("frame_pred", item, np.random.default_rng(0), clean, {"anchor": True})
    assert sorted(ins) == ["anchor", "context", "text"] and frames == 17
    assert torch.equal(ins["anchor"], torch.from_numpy(v[:1])) and torch.equal(ins["context"], torch.from_numpy(v[:2]))
    assert torch.equal(outs["video"], torch.from_numpy(v[2:]))
    ins, _, _ = examples_for("frame_pred", item, np.random.default_rng(0), clean, {"drop_text": True})
    assert sorted(ins) == ["context"]
    noisy = PretrainDataConfig(frame_pred_context=2, frame_pred_noise=0.6)
    changed = []
    for seed in range(20):
        ins, outs, _ = examples_for("frame_pred", item, np.random.default_rng(seed), noisy, {"anchor": True})
        ctx = ins["context"]
        changed.append(float((ctx != torch.from_numpy(v[:2])).float().mean()))
        assert int(ctx.min()) >= 0 and int(ctx.max()) < v.size  # replacements are codes of the clip
        assert torch.equal(ins["anchor"], torch.from_numpy(v[:1])) and torch.equal(outs["video"], torch.from_numpy(v[2:]))
    # the share replaced is drawn per item from U(0, 0.6): mean ~0.3 (a few replacements draw the same code)
    assert 0.15 < np.mean(changed) < 0.4 and max(changed) > 0.3 and min(changed) < 0.15


def test_embedding_mode_tokenizes_float16_embeddings_and_trains_with_the_encoders_width(tmp_path, debug_tokenizers):
    """Text as frozen-encoder embeddings (VideoPoet's T5): stored once in the shards as float16, the
    LM's projection width taken from the encoder, trained through the same loop."""
    from test_text_tokenizer import _word_tokenizer
    from transformers import T5Config, T5ForConditionalGeneration

    from videopoet.data.shapes import ShapesConfig, make_clip
    from videopoet.tokenizers.text import TextEmbedder

    words = {w for i in range(40) for w in make_clip(ShapesConfig(size=32, frames=5), 0, i).caption.replace(",", " ,").split()}
    tok = _word_tokenizer(words)
    torch.manual_seed(0)
    t5 = tmp_path / "t5"
    T5ForConditionalGeneration(T5Config(vocab_size=len(tok), d_model=24, d_kv=4, d_ff=32, num_layers=1, num_decoder_layers=1,
                                        num_heads=2, pad_token_id=0, eos_token_id=2, decoder_start_token_id=0)).save_pretrained(t5)
    tok.save_pretrained(t5)
    out = tmp_path / "s"
    tokenize("shapes:12", out, video_model=debug_tokenizers / "video", audio_model=debug_tokenizers / "audio",
             text_model=t5, frames=5, size=32, progress=False, log=lambda m: None)
    r = ShardReader(out)
    assert r.index["text_embed_dim"] == 24 and "text" not in r.fields("av_32x32_f5")
    item = r.item("av_32x32_f5", 3)
    want = TextEmbedder(t5)([item["meta"]["caption"]])
    n = int(want.mask[0].sum())
    assert item["text_emb"].shape == (n, 24)
    np.testing.assert_allclose(item["text_emb"], want.embeddings[0, :n].numpy(), rtol=2e-3, atol=2e-3)  # float16
    preset = tmp_path / "lm.yaml"
    preset.write_text("vocab: {visual_bits: 6, audio_levels: 2, audio_codes: 16, text_size: 0}\n"
                      "model: {d_model: 32, n_layers: 1, n_heads: 2, max_seq_len: 512, text_embed_dim: 2048}\n")
    tr = Pretrainer(load_config("train/debug", [f"data.shards={out}", f"train.out={tmp_path / 'run'}", f"train.model={preset}",
                                                "train.max_steps=30", "train.eval_every=30", "data.heldout_items=2"]))
    assert tr.model.cfg.text_embed_dim == 24  # the encoder's width, not the preset's 2048
    before = tr.evaluate()
    tr.fit()
    after = tr.evaluate()
    assert np.mean([after[k] for k in before]) < np.mean(list(before.values())) - 0.3
    # the pipeline runs a text task on it with the same encoder
    from videopoet.tasks.pipeline import Pipeline, Settings
    from videopoet.tokenizers.audio import AudioTokenizer
    from videopoet.tokenizers.video import VideoTokenizer

    pipe = Pipeline(tr.model.eval(), tr.vocab, VideoTokenizer.from_pretrained(debug_tokenizers / "video"),
                    AudioTokenizer.from_pretrained(debug_tokenizers / "audio"), TextEmbedder(t5),
                    Settings(frames=5, size=32, context_frames=1, guidance=2.0), quiet=True)
    res = pipe.t2v(make_clip(ShapesConfig(size=32, frames=5), 0, 1).caption, seed=0)
    assert res.frames.shape == (5, 32, 32, 3) and res.tokens["video"].shape == pipe.latent


# ------------------------------------------------------------------- re-encode the audio of shards
def _fields_equal(a, b, bucket, i, fields, j=None):
    x, y = a.item(bucket, i), b.item(bucket, i if j is None else j)
    return all(np.array_equal(x[f], y[f]) for f in fields)


def test_reencode_audio_with_the_same_codec_gives_the_same_shards(tmp_path, debug_tokenizers, shards):
    from videopoet.data.tokenize import reencode_audio

    rep = reencode_audio(shards, tmp_path / "same", audio_model=debug_tokenizers / "audio", progress=False)
    assert rep.written == 14 and not rep.skipped
    assert rep.summary().startswith("re-encoded the audio of 14 items")
    a, b = ShardReader(shards), ShardReader(tmp_path / "same")
    assert b.buckets == {"av_32x32_f5": 14}
    for i in range(14):  # the sound is made again from the shapes seed and number: same codes
        assert _fields_equal(a, b, "av_32x32_f5", i, ("visual", "audio", "text", "structure"))
        assert a.item("av_32x32_f5", i)["meta"]["caption"] == b.item("av_32x32_f5", i)["meta"]["caption"]


def test_reencode_audio_with_a_new_codec_equals_tokenizing_with_it(tmp_path, debug_tokenizers, shards):
    from videopoet.config import from_dict, load_yaml
    from videopoet.data.tokenize import reencode_audio
    from videopoet.tokenizers.audio import AudioTokenizer, AudioTokenizerConfig

    toks = tmp_path / "toks"
    shutil.copytree(debug_tokenizers / "video", toks / "video")
    torch.manual_seed(7)  # another codec: other weights
    AudioTokenizer(from_dict(AudioTokenizerConfig, load_yaml("audio/debug")["model"])).save_pretrained(toks / "audio")
    reencode_audio(shards, tmp_path / "new", audio_model=toks / "audio", progress=False)
    _tok("shapes:14", tmp_path / "full", toks, part_size=5)
    old, new, full = ShardReader(shards), ShardReader(tmp_path / "new"), ShardReader(tmp_path / "full")
    changed = 0
    for i in range(14):
        assert _fields_equal(new, full, "av_32x32_f5", i, ("visual", "audio", "text", "structure"))
        changed += not np.array_equal(old.item("av_32x32_f5", i)["audio"], new.item("av_32x32_f5", i)["audio"])
    assert changed >= 12
    assert json.loads((tmp_path / "new" / "vocab.json").read_text()) == json.loads((tmp_path / "full" / "vocab.json").read_text())


def test_reencode_audio_skips_items_whose_sound_is_gone(tmp_path, debug_tokenizers):
    from videopoet.data.tokenize import reencode_audio

    src = tmp_path / "s"
    _tok("shapes:6", src, debug_tokenizers, part_size=3)
    part = sorted((src / "parts").iterdir())[1]
    metas = [json.loads(x) for x in (part / "av_32x32_f5.meta.jsonl").read_text().splitlines()]
    metas[1]["path"] = str(tmp_path / "deleted.mp4")  # a media item whose file was removed since
    (part / "av_32x32_f5.meta.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metas))
    rep = reencode_audio(src, tmp_path / "out", audio_model=debug_tokenizers / "audio", progress=False)
    assert rep.written == 5 and len(rep.skipped) == 1 and "deleted.mp4" in rep.skipped[0][0]
    a, b = ShardReader(src), ShardReader(tmp_path / "out")
    assert b.buckets == {"av_32x32_f5": 5}
    kept = [0, 1, 2, 3, 5]  # item 4 (part 2, row 1) dropped from every field; the rest lines up
    for j, i in enumerate(kept):
        assert _fields_equal(a, b, "av_32x32_f5", i, ("visual", "audio", "text", "structure"), j)
        assert a.item("av_32x32_f5", i)["meta"]["caption"] == b.item("av_32x32_f5", j)["meta"]["caption"]
    with pytest.raises(InputError, match="must differ"):
        reencode_audio(src, src, audio_model=debug_tokenizers / "audio", progress=False)


def test_add_pair_bias_starts_from_the_codes_mutual_information(tmp_path, shards):
    """train.add_pair_bias: an LM with a factorized head and no pair bias gets one, set to the
    smoothed PMI of the training items' code halves (held-out items left out); the other weights
    are kept, training runs, and the exported model has the bias."""
    from videopoet.lm.model import LMConfig, PrefixLM
    from videopoet.lm.pretrained import load_lm, save_lm
    from videopoet.lm.vocab import Vocabulary

    vocab = Vocabulary.load(shards / "vocab.json")
    torch.manual_seed(0)
    lm = PrefixLM(LMConfig(vocab_size=vocab.size, d_model=32, n_layers=2, n_heads=4, max_seq_len=1024,
                           factorized_visual=True, visual_bits=vocab.visual_bits, visual_offset=vocab.visual_offset))
    save_lm(tmp_path / "src", lm, vocab)
    tr = Pretrainer(cfg(shards, tmp_path / "run", "train.add_pair_bias=true", "train.pair_bias_alpha=0.5",
                        "train.max_steps=3", "train.eval_every=0"), init_from=tmp_path / "src")
    B = tr.model.vis_pair.detach().clone()
    # by hand: counts of (hi, lo) over the training items (every bucket but its held-out tail)
    reader, held = ShardReader(shards), tr.cfg.data.heldout_items
    counts = np.zeros((8, 8))
    for b, n in reader.buckets.items():
        for i in range(n - held):
            c = reader.item(b, i)["visual"].ravel()
            np.add.at(counts, (c >> 3, c & 7), 1)
    p = (counts + 0.5) / (counts + 0.5).sum()
    want = np.log(p) - np.log(p.sum(1, keepdims=True)) - np.log(p.sum(0, keepdims=True))
    assert np.allclose(B.numpy(), want, atol=1e-5)
    assert B.abs().max() > 0.1  # the debug codes' halves are not independent
    for k, v in lm.state_dict().items():
        assert torch.equal(tr.model.state_dict()[k], v), k
    tr.fit()
    back, _ = load_lm(tmp_path / "run" / "model")
    assert back.cfg.visual_pair_bias and not torch.equal(back.vis_pair, B)  # trained
    again = Pretrainer(cfg(shards, tmp_path / "run2", "train.add_pair_bias=true"), init_from=tmp_path / "run")
    assert torch.equal(again.model.vis_pair, back.vis_pair)  # it has one already: kept
    plain = PrefixLM(LMConfig(vocab_size=vocab.size, d_model=32, n_layers=2, n_heads=4, max_seq_len=1024))
    save_lm(tmp_path / "plain", plain, vocab)
    with pytest.raises(ConfigError, match="factorized"):
        Pretrainer(cfg(shards, tmp_path / "run3", "train.add_pair_bias=true"), init_from=tmp_path / "plain")


def test_visual_positions_are_added_at_zero_and_trained(tmp_path, shards):
    """train.visual_positions: an LM without visual position embeddings gets them (zero, so the
    held-out loss is unchanged at step 0), training moves them, and the export keeps them."""
    from videopoet.lm.model import LMConfig, PrefixLM
    from videopoet.lm.pretrained import load_lm, save_lm
    from videopoet.lm.vocab import Vocabulary

    vocab = Vocabulary.load(shards / "vocab.json")
    torch.manual_seed(0)
    lm = PrefixLM(LMConfig(vocab_size=vocab.size, d_model=32, n_layers=2, n_heads=4, max_seq_len=1024,
                           factorized_visual=True, visual_bits=vocab.visual_bits, visual_offset=vocab.visual_offset))
    save_lm(tmp_path / "src", lm, vocab)
    before = Pretrainer(cfg(shards, tmp_path / "run0", "train.max_steps=1", "train.eval_every=0"),
                        init_from=tmp_path / "src").evaluate()
    tr = Pretrainer(cfg(shards, tmp_path / "run", "train.visual_positions=[2, 4, 4]", "train.max_steps=3",
                        "train.eval_every=0", "train.lr=0.01"), init_from=tmp_path / "src")
    assert tr.model.cfg.visual_positions == (2, 4, 4)
    assert tr.evaluate() == pytest.approx(before, abs=1e-6)
    tr.fit()
    back, _ = load_lm(tmp_path / "run" / "model")
    assert back.cfg.visual_positions == (2, 4, 4)
    assert all(float(p.detach().abs().max()) > 0 for p in back.vis_pos_emb)  # trained away from zero


def test_motion_weight_weighs_the_first_moving_frames_of_t2v_and_i2v_only(tmp_path, shards):
    """data.motion_weight: the tokens of output latent frames 1 .. motion_frames carry the weight in
    t2v and i2v (1 elsewhere and in every other task); the training loss is the weighted mean and
    the held-out NLL stays unweighted."""
    from videopoet.lm.pretrain import PretrainDataConfig, build_example, collate_examples
    from videopoet.lm.train import masked_lm_loss
    from videopoet.lm.vocab import Vocabulary

    t = Pretrainer(cfg(shards, tmp_path / "w", "data.tasks={t2v: 1.0, i2v: 1.0, t2i: 1.0}", "data.motion_weight=4",
                       "data.motion_frames=2", "train.max_steps=1", "train.eval_every=0"))
    vocab: Vocabulary = t.vocab
    bucket = next(b for b in t.reader.buckets if t.reader.item(b, 0)["visual"].shape[0] >= 2)
    item = t.reader.item(bucket, 0)
    nt = item["visual"].shape[0]
    end = min(3, nt)  # frames 1 .. 2, as far as the clip goes
    for task in ("t2v", "i2v"):
        seq = build_example(vocab, task, item, np.random.default_rng(0), t.cfg.data, {"first_frame": True})
        (out,) = seq.outputs
        per = out.length // nt
        w = seq.loss_weight
        assert w is not None and w.shape == seq.ids.shape
        assert torch.all(w[out.start + per : out.start + end * per] == 4)  # latent frames 1 and 2
        assert torch.all(w[: out.start + per] == 1) and torch.all(w[out.start + end * per :] == 1)
        assert int((w == 4).sum()) == (end - 1) * per
    assert build_example(vocab, "t2i", item, np.random.default_rng(0), t.cfg.data).loss_weight is None
    plain = build_example(vocab, "t2v", item, np.random.default_rng(0), PretrainDataConfig(tasks={"t2v": 1.0}))
    assert plain.loss_weight is None  # weight 1: no weights at all
    with pytest.raises(ConfigError, match="motion_weight"):
        PretrainDataConfig(motion_weight=0)

    seqs = [build_example(vocab, "t2v", t.reader.item(bucket, i), np.random.default_rng(i), t.cfg.data) for i in range(2)]
    b = collate_examples(seqs, vocab.pad_id)
    assert b.loss_weight is not None and torch.equal(b.loss_weight > 0, b.loss_mask)
    torch.manual_seed(0)
    h = t.model(b.ids, prefix_len=b.prefix_len)
    nll = t.model.token_nll(h[:, :-1].flatten(0, 1), b.ids[:, 1:].flatten(), dense=True).view(2, -1)
    wt = b.loss_weight[:, 1:]
    expect = float((nll * wt).sum() / wt.sum())
    assert float(masked_lm_loss(t.model, h, b.ids, b.loss_weight)) == pytest.approx(expect, rel=1e-5)
    m = t.fit()
    assert t.step == 1 and np.isfinite(m["loss"])


def test_grow_layers_adds_identity_blocks_and_trains(tmp_path, shards):
    """train.grow_layers: the grown LM computes what the given one does (the added blocks copy the
    block before them with zeroed output projections), then trains; the export has the new depth."""
    from videopoet.lm.pretrain import grow_layer_map, with_more_layers
    from videopoet.lm.pretrained import load_lm

    assert grow_layer_map(6, 10) == [0, 0, 1, 2, 2, 3, 3, 4, 5, 5]
    assert grow_layer_map(2, 7) == [0, 0, 0, 0, 1, 1, 1] and grow_layer_map(3, 3) == [0, 1, 2]
    a = Pretrainer(cfg(shards, tmp_path / "a", "train.max_steps=3", "train.eval_every=0"))
    a.fit()
    src = a.export()
    m, _ = load_lm(src)
    m.eval()
    g = with_more_layers(m, m.cfg.n_layers + 2).eval()
    assert g.cfg.n_layers == m.cfg.n_layers + 2
    ids = torch.randint(0, 300, (2, 40))
    with torch.no_grad():
        torch.testing.assert_close(g(ids, prefix_len=torch.tensor([5, 9])), m(ids, prefix_len=torch.tensor([5, 9])))
    assert float(g.layers[1].attn.wo.weight.abs().sum()) == 0 and torch.equal(g.layers[1].attn.wqkv.weight, m.layers[0].attn.wqkv.weight)
    with pytest.raises(ConfigError, match="grow_layers"):
        with_more_layers(m, m.cfg.n_layers)
    b = Pretrainer(cfg(shards, tmp_path / "b", f"train.grow_layers={m.cfg.n_layers + 2}", "train.max_steps=2",
                       "train.eval_every=0"), init_from=src)
    assert b.model.cfg.n_layers == m.cfg.n_layers + 2
    b.fit()
    assert float(b.model.layers[1].attn.wo.weight.abs().sum()) > 0  # the added block trains
    grown, _ = load_lm(b.export())
    assert grown.cfg.n_layers == m.cfg.n_layers + 2


def test_audio_rows_are_v2a_without_the_video_in_larger_batches(tmp_path, shards):
    """Task "audio" (v2a's guidance branch, data.tasks.audio): the clip's audio codes with no prefix
    but the task token, the same codes v2a writes, in batches sized for their shorter rows; both train."""
    from videopoet.lm.pretrain import examples_for

    t = Pretrainer(cfg(shards, tmp_path / "a", "data.tasks={v2a: 1.0, audio: 1.0}", "train.max_steps=8",
                       "train.eval_every=0"))
    batch = {task: b for task, _, _, b in t.plan}
    ds = t.loader().dataset
    bucket = next(g for task, g, _, _ in t.plan if task == "audio")
    item = ds.reader.item(bucket, 0)
    ins, outs, _ = examples_for("audio", item, np.random.default_rng(0), t.cfg.data)
    assert ins == {} and torch.equal(outs["audio"], torch.from_numpy(item["audio"]))
    a = ds[("audio", bucket, 0, 0, {})]
    v = ds[("v2a", bucket, 0, 0, {})]
    assert a.prefix_len < v.prefix_len and torch.equal(a.ids[a.prefix_len :], v.ids[v.prefix_len :])
    d = t.cfg.data
    assert [batch[k] for k in ("audio", "v2a")] == [max(1, min(d.max_batch, d.tokens_per_step // len(x))) for x in (a, v)]
    assert batch["audio"] > batch["v2a"]
    m = t.fit()
    assert t.step == 8 and np.isfinite(m["loss"])
