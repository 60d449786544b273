"""Vocabulary and sequence layout: ranges, save/load, every task round-trips, loss mask, legal ranges."""

import pytest
import torch

from videopoet.config import load_yaml
from videopoet.errors import ConfigError, InputError
from videopoet.lm.sequence import Mod, build_sequence, collate, output_codes, parse_sequence
from videopoet.lm.tasks import TASKS
from videopoet.lm.vocab import NUM_SPECIAL, Vocabulary

V = Vocabulary(visual_bits=6, audio_levels=3, audio_codes=16, text_size=40)


def test_vocab_ranges_follow_the_design_layout():
    assert V.visual_range() == (256, 256 + 64)
    assert V.audio_level_range(0) == (320, 336)
    assert V.audio_level_range(2) == (352, 368)
    assert V.text_range() == (368, 408)
    assert V.size == 408
    assert all(V.task_id(t) < NUM_SPECIAL for t in TASKS)
    # t2v, t2i and uncond share <task:t2v>, v2a and audio <task:v2a>; every other task has its own token
    assert len({V.task_id(t) for t in TASKS}) == len(TASKS) - 3
    assert V.task_id("t2i") == V.task_id("uncond") == V.task_id("t2v")
    assert V.task_id("audio") == V.task_id("v2a")
    assert V.token_name(V.id("<bov_o>")) == "<bov_o>"
    assert (
        V.token_name(256 + 5) == "v5" and V.token_name(320 + 16 + 3) == "a1:3" and V.token_name(370) == "t2"
    )


def test_special_ids_are_fixed_and_append_only():
    from videopoet.lm.vocab import SPECIAL_TABLE

    # ids written by earlier versions never move (shards and models keep working)
    fixed = {"<pad>": 0, "<bos>": 1, "<eos>": 2, "<mask>": 3, "<bov_o>": 11, "<source:first_frame>": 15,
             "<res:64x64>": 21, "<task:t2v>": 23, "<task:i2v>": 26, "<task:v2a>": 31, "<task:avcont>": 33,
             "<frames:17>": 37}
    assert {k: V.id(k) for k in fixed} == fixed
    assert [i for i, _ in SPECIAL_TABLE] == list(range(len(SPECIAL_TABLE)))
    assert V.special_tokens == tuple(n for _, n in SPECIAL_TABLE)


def test_no_text_has_one_encoding():
    """Text dropout, unconditional video and the unconditional rows of guidance are one sequence."""
    out = {"video": torch.ones(1, 2, 2, dtype=torch.long)}
    dropped = build_sequence(V, "t2v", {}, out)
    uncond = build_sequence(V, "uncond", {}, out)
    assert torch.equal(dropped.ids, uncond.ids)
    assert parse_sequence(V, uncond.ids)[0] == "t2v"
    # the same for sound: v2a without its video (its guidance branch) is the "audio" training row,
    # and with the video it writes the same output codes after a longer prefix
    a = torch.arange(6).reshape(3, 2) % 16
    no_video, audio = build_sequence(V, "v2a", {}, {"audio": a}), build_sequence(V, "audio", {}, {"audio": a})
    assert torch.equal(no_video.ids, audio.ids) and parse_sequence(V, audio.ids)[0] == "v2a"
    with_video = build_sequence(V, "v2a", {"video": torch.ones(1, 2, 2, dtype=torch.long)}, {"audio": a})
    assert len(with_video) == len(audio) + 6  # <bov_i> 4 codes <eov_i>
    assert torch.equal(with_video.ids[-len(a.reshape(-1)) - 3 :], audio.ids[-len(a.reshape(-1)) - 3 :])
    # an image continues as a video: t2i's sequence is a prefix of t2v's
    img = build_sequence(V, "t2i", {"text": torch.tensor([1, 2])}, {"video": torch.ones(1, 2, 2, dtype=torch.long)})
    vid = build_sequence(V, "t2v", {"text": torch.tensor([1, 2])}, {"video": torch.ones(3, 2, 2, dtype=torch.long)})
    assert torch.equal(vid.ids[: len(img)], img.ids)


def test_duration_token_follows_the_resolution():
    s = build_sequence(V, "t2v", {}, {"video": (5, 2, 2)}, res="64x64", frames=17)
    i = s.prefix_len
    assert [V.token_name(int(t)) for t in s.ids[i - 3 : i]] == ["<res:64x64>", "<frames:17>", "<bov_o>"]
    with pytest.raises(InputError, match="frames 18"):
        build_sequence(V, "t2v", {}, {"video": (5, 2, 2)}, frames=18)


def test_vocab_mismatch_names_both_files():
    W = Vocabulary(visual_bits=7, audio_levels=3, audio_codes=16, text_size=40)
    with pytest.raises(ConfigError, match="model/vocab.json.*shards/vocab.json.*visual_bits 6 vs 7"):
        V.check_same(W, "model/vocab.json", "shards/vocab.json")
    V.check_same(Vocabulary(visual_bits=6, audio_levels=3, audio_codes=16, text_size=40), "a", "b")


def test_vocab_save_load_and_errors(tmp_path):
    V.save(tmp_path / "vocab.json")
    W = Vocabulary.load(tmp_path / "vocab.json")
    assert W == V and W.id("<task:t2v>") == V.id("<task:t2v>")
    with pytest.raises(ConfigError, match="audio_levels"):
        Vocabulary(visual_bits=6, audio_levels=2)
    with pytest.raises(ConfigError, match="visual_bits"):
        Vocabulary(visual_bits=0)
    with pytest.raises(InputError, match="<nope>"):
        V.id("<nope>")


def test_vocab_from_tokenizers_duck_typed():
    class Cfg:
        num_levels = 4
        codebook_size = 32

    class Video:
        vocab_size = 1024

    class Audio:
        config = Cfg()
        vocab_size = 128

    class Text:
        vocab_size = 500

    v = Vocabulary.from_tokenizers(Video(), Audio(), Text())
    assert (v.visual_bits, v.audio_levels, v.audio_codes, v.text_size) == (10, 4, 32, 500)
    assert Vocabulary.from_tokenizers(Video()).size == 256 + 1024

    class Audio2:  # only vocab_size and the number of levels (as a dict config)
        config = {"n_q": 2}
        vocab_size = 64

    assert Vocabulary.from_tokenizers(Video(), Audio2()).audio_codes == 32


def _example(task, embed=False, g=None):
    g = g or torch.Generator().manual_seed(1)
    vis = lambda *s: torch.randint(0, V.visual_size, s, generator=g)  # noqa: E731
    aud = lambda f: torch.randint(0, V.audio_codes, (V.audio_levels, f), generator=g)  # noqa: E731
    text = torch.randn(5, 8, generator=g) if embed else torch.randint(0, V.text_size, (7,), generator=g)
    masked = vis(2, 3, 3)
    masked[:, 1:, 1:] = -1
    all_inputs = {
        "text": text, "first_frame": vis(1, 3, 3), "anchor": vis(1, 3, 3), "context": vis(1, 3, 3), "masked": masked,
        "structure": vis(2, 3, 3), "video": vis(2, 3, 3), "audio": aud(4),
    }  # fmt: skip
    spec = TASKS[task]
    inputs = {p.name: all_inputs[p.name] for p in spec.prefix}
    outputs = {p.name: vis(2, 3, 3) if p.modality == "visual" else aud(6) for p in spec.outputs}
    return inputs, outputs


@pytest.mark.parametrize("task", list(TASKS))
def test_every_task_round_trips(task):
    inputs, outputs = _example(task)
    s = build_sequence(V, task, inputs, outputs, res="128x128")
    ids = s.ids
    assert ids[0] == V.id("<bos>") and ids[1] == V.task_id(task)
    assert ids[s.prefix_len - 1] in (V.id("<bov_o>"), V.id("<boa_o>"))
    # the loss covers exactly the tokens after the prefix
    assert s.loss_mask.tolist() == [i >= s.prefix_len for i in range(len(s))]
    # every position's id lies in its legal range, and forced positions are exactly the markers
    assert bool(((ids >= s.legal[:, 0]) & (ids < s.legal[:, 1])).all())
    assert bool(((s.legal[:, 1] - s.legal[:, 0] == 1) == (s.modality == Mod.SPECIAL)).all())
    if TASKS[task].open_end:
        assert ids[-1] >= V.visual_offset  # t2i ends on the last visual code: no <eov_o><eos>
    else:
        assert ids[-1] == V.id("<eos>")
    name, got_in, got_out = parse_sequence(V, ids)
    assert name == TASKS[task].token  # t2i and uncond are t2v sequences, audio a v2a one
    assert set(got_in) == set(inputs) and set(got_out) == set(outputs)
    for k, x in inputs.items():
        assert torch.equal(got_in[k], x.reshape(got_in[k].shape)), k
    for k, y in outputs.items():
        assert torch.equal(got_out[k], y.reshape(got_out[k].shape)), k
    # generated ids (everything after the prefix) -> output codes with their shapes
    codes = output_codes(V, s, ids[s.prefix_len :][None])
    for k, y in outputs.items():
        assert torch.equal(codes[k][0], y)


def test_generation_layout_matches_training_layout():
    inputs, outputs = _example("avcont")
    full = build_sequence(V, "avcont", inputs, outputs)
    gen = build_sequence(V, "avcont", inputs, {k: tuple(v.shape) for k, v in outputs.items()})
    assert gen.prefix_len == full.prefix_len and len(gen) == len(full)
    assert torch.equal(gen.ids[: gen.prefix_len], full.ids[: full.prefix_len])
    assert torch.equal(gen.legal, full.legal)
    # audio level l may only hold level-l codes
    a = full.outputs[1]
    lo = full.legal[a.start : a.start + a.length, 0].reshape(V.audio_levels, -1)
    assert lo[:, 0].tolist() == [V.audio_level_range(level)[0] for level in range(V.audio_levels)]


def test_embedding_mode_places_placeholders():
    inputs, outputs = _example("t2v", embed=True)
    inputs["text_mask"] = torch.tensor([True, True, True, False, False])
    s = build_sequence(V, "t2v", inputs, outputs)
    assert s.text_embeds.shape == (3, 8) and torch.equal(s.text_embeds, inputs["text"][:3])
    assert s.text_positions.tolist() == [3, 4, 5]  # <bos><task><bot_i> then the embeddings
    assert (s.ids[s.text_positions] == V.id("<text_emb>")).all()
    assert (s.modality[s.text_positions] == Mod.TEXT_EMB).all()
    _, got_in, _ = parse_sequence(V, s.ids)
    assert int(got_in["text"]) == 3


def test_collate_right_pads_without_loss():
    a = build_sequence(V, "uncond", {}, {"video": torch.zeros(1, 2, 2, dtype=torch.long)})
    b = build_sequence(
        V, "t2v", {"text": torch.tensor([1, 2, 3])}, {"video": torch.ones(1, 2, 2, dtype=torch.long)}
    )
    batch = collate([a, b], V.pad_id)
    assert batch.ids.shape == (2, len(b))
    assert batch.ids[0, len(a) :].eq(V.pad_id).all() and not batch.loss_mask[0, len(a) :].any()
    assert batch.prefix_len.tolist() == [a.prefix_len, b.prefix_len]


def test_bad_inputs_name_the_field():
    with pytest.raises(InputError, match="first_frame"):
        build_sequence(V, "i2v", {}, {"video": (1, 2, 2)})
    with pytest.raises(InputError, match="video"):
        build_sequence(V, "t2v", {}, {"video": torch.full((1, 2, 2), 64)})
    with pytest.raises(InputError, match="audio"):
        build_sequence(V, "v2a", {"video": torch.zeros(1, 2, 2, dtype=torch.long)}, {"audio": (2, 5)})
    with pytest.raises(InputError, match="unknown"):
        build_sequence(V, "t2v", {"image": torch.zeros(1)}, {"video": (1, 2, 2)})
    with pytest.raises(InputError, match="nope"):
        build_sequence(V, "nope", {}, {})
    s = build_sequence(V, "t2v", {}, {"video": (1, 2, 2)})
    with pytest.raises(InputError, match="legal range"):
        output_codes(V, s, torch.tensor([[V.pad_id] * 4 + [V.id("<eov_o>"), V.id("<eos>")]]))


@pytest.mark.parametrize("name", ["debug", "cpu"])
def test_lm_preset_vocab_matches_the_tokenizer_presets(name):
    """The LM presets are wired to the tokenizers' presets and the shipped text model."""
    from videopoet.config import from_dict, load_yaml
    from videopoet.lm.pretrained import load_preset
    from videopoet.tokenizers.audio import AudioTokenizerConfig
    from videopoet.tokenizers.text import default_text_tokenizer
    from videopoet.tokenizers.video import VideoTokenizerConfig

    video = from_dict(VideoTokenizerConfig, load_yaml(f"tokenizer/{name}")["model"])
    audio = from_dict(AudioTokenizerConfig, load_yaml(f"audio/{name}")["model"])
    vocab = Vocabulary.from_tokenizers(video, audio, default_text_tokenizer())
    assert vocab == load_preset(name)[0]


@pytest.mark.parametrize("name,frames", [("cpu", (17,)), ("small", (17,)), ("300m", (17, 41)), ("1b", (17, 41)), ("8b", (17, 41))])
def test_presets_fit_every_task(name, frames):
    """max_seq_len covers the longest task the preset serves, with its video tokenizer's temporal
    compression: 9 x 16 x 16 latents for 17 frames at 64x64 (tokenizer/cpu: 2x in time, 4x in
    space), 5 x 16 x 16 at 128x128 (magvit2-128: 4x, 8x) and 11 x 16 x 16 for 41; 2.125 s of audio
    per 17 frames (106 codec frames x 4 levels); 64 text tokens; the first frame 1 x 16 x 16."""
    from videopoet.lm.pretrained import load_preset

    vocab, cfg = load_preset(name)[:2]
    tokenizer = "tokenizer/cpu" if name in ("cpu", "small") else "tokenizer/magvit2-128"
    tc = load_yaml(tokenizer)["model"]["temporal_compression"]
    text = torch.zeros(64, dtype=torch.long) if vocab.text_size else torch.zeros(64, 8)
    longest = {}
    for n in frames:
        t = 1 + (n - 1) // tc
        video = torch.zeros(t, 16, 16, dtype=torch.long)
        first = torch.zeros(1, 16, 16, dtype=torch.long)
        audio = torch.zeros(vocab.audio_levels, round(106 * n / 17), dtype=torch.long)
        ins = {"text": text, "first_frame": first, "anchor": first, "context": video[:2], "masked": video, "structure": video,
               "video": video, "audio": audio}
        for task, spec in TASKS.items():
            if n > 17 and task not in ("t2v", "i2v", "frame_pred"):
                continue
            inputs = {p.name: ins[p.name] for p in spec.prefix}
            outputs = {p.name: (video if p.modality == "visual" else audio) for p in spec.outputs}
            s = build_sequence(vocab, task, inputs, outputs, res="64x64", frames=n)
            longest[f"{task}@{n}"] = len(s)
    worst = max(longest, key=longest.get)
    assert longest[worst] <= cfg.max_seq_len, (worst, longest[worst])
