"""Text conditioning: SentencePiece token mode and frozen-encoder embedding mode (tiny random T5 / BERT)."""

from __future__ import annotations

import warnings

import pytest
import torch

from videopoet.errors import InputError, NotAvailableError, VideoPoetError
from videopoet.tokenizers.text import (
    EmbeddingCache,
    SentencePieceConfig,
    SentencePieceTextTokenizer,
    TextEmbedder,
    TextTruncationWarning,
    default_text_tokenizer,
)


@pytest.fixture(scope="module")
def captions():
    from videopoet.data.shapes import ShapesConfig, make_audio

    cfg = ShapesConfig(size=32)
    return [make_audio(cfg, 0, i)[1] for i in range(300)]


@pytest.fixture(scope="module")
def spm(captions):
    return SentencePieceTextTokenizer.train(captions, SentencePieceConfig(vocab_size=128, max_length=40))


# ------------------------------------------------------------------------------------ token mode
def test_spm_round_trip_and_range(spm, captions):
    out = spm.encode(captions[:5])
    assert out.ids.shape[0] == 5 and out.ids.dtype == torch.long
    assert int(out.ids.max()) < spm.vocab_size and int(out.ids.min()) >= 0
    assert out.truncated == [False] * 5
    for i in range(5):
        assert spm.decode(out.ids[i][out.mask[i]]) == captions[i]
    assert spm.vocab_size == 128
    assert len(spm.encode(captions[0]).ids[0]) < len(captions[0].split()) * 2  # word-sized pieces


def test_spm_truncation_is_reported(spm, captions):
    long = " ".join(captions[:6])
    with pytest.warns(TextTruncationWarning, match="max_length=40"):
        out = spm.encode([captions[0], long])
    assert out.truncated == [False, True]
    assert int(out.mask[1].sum()) == 40 and out.ids.shape[1] == 40
    with pytest.raises(InputError, match="longer than max_length"):
        spm.encode(long, on_overflow="error")


def test_spm_save_load_identical(spm, captions, tmp_path):
    spm.save_pretrained(tmp_path / "spm")
    loaded = SentencePieceTextTokenizer.from_pretrained(tmp_path / "spm")
    assert loaded.max_length == 40 and loaded.vocab_size == spm.vocab_size
    assert torch.equal(loaded.encode(captions[:8]).ids, spm.encode(captions[:8]).ids)
    with pytest.raises(VideoPoetError, match="spm.model"):
        SentencePieceTextTokenizer.from_pretrained(tmp_path / "nothing")


def test_spm_bad_input(spm):
    with pytest.raises(InputError, match="no non-empty"):
        SentencePieceTextTokenizer.train(["", "  "])
    with pytest.raises(InputError, match="string"):
        spm.encode([1, 2])
    with pytest.raises(InputError, match="outside"):
        spm.decode([0, spm.vocab_size])
    empty = spm.encode("")
    assert empty.mask.sum() == 0 and empty.ids.shape == (1, 1)


def test_shipped_spm_fits_shapes_captions_and_the_lm_vocabulary(captions):
    tok = default_text_tokenizer()
    with warnings.catch_warnings():
        warnings.simplefilter("error", TextTruncationWarning)
        out = tok.encode(captions)
    assert not any(out.truncated) and tok.max_length == 64
    from videopoet.lm.vocab import Vocabulary

    vocab = Vocabulary(visual_bits=10, audio_levels=4, audio_codes=256, text_size=tok.vocab_size)
    lo, hi = vocab.text_range()
    lm_ids = out.ids[out.mask] + lo
    assert int(lm_ids.min()) >= lo and int(lm_ids.max()) < hi


# -------------------------------------------------------------------------------- embedding mode
def _word_tokenizer(words):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<unk>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(sorted(words))}}
    t = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=t, pad_token="<pad>", unk_token="<unk>", eos_token="</s>")


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory, captions):
    from transformers import T5Config, T5ForConditionalGeneration

    words = {w for c in captions for w in c.replace(",", " ,").split()}
    tok = _word_tokenizer(words)
    torch.manual_seed(0)
    cfg = T5Config(vocab_size=len(tok), d_model=16, d_kv=4, d_ff=32, num_layers=1, num_decoder_layers=1,
                   num_heads=2, pad_token_id=0, eos_token_id=2, decoder_start_token_id=0)
    d = tmp_path_factory.mktemp("t5")
    T5ForConditionalGeneration(cfg).save_pretrained(d)  # a full T5: the embedder keeps the encoder
    tok.save_pretrained(d)
    return d


def test_t5_embeddings_shape_mask_and_frozen(tiny_t5, captions):
    emb = TextEmbedder(tiny_t5, max_length=64)
    assert emb.embed_dim == 16
    out = emb(captions[:3])
    assert out.embeddings.shape == (3, 64, 16) and out.mask.shape == (3, 64)
    n = int(out.mask[0].sum())
    assert n == len(emb.tokenizer(captions[0])["input_ids"]) > 20
    assert float(out.embeddings[0, n:].abs().max()) == 0.0  # padding is zero
    assert float(out.embeddings[0, :n].abs().mean()) > 0
    assert torch.equal(emb(captions[:3]).embeddings, out.embeddings)  # deterministic (eval, no dropout)
    assert not any(p.requires_grad for p in emb.parameters())
    emb.train()
    assert not emb.encoder.training
    # the embedding of a caption does not depend on the batch it is in
    alone = emb(captions[1]).embeddings[0]
    assert torch.allclose(alone, out.embeddings[1], atol=1e-5)


def test_embedding_truncation_is_reported(tiny_t5, captions):
    emb = TextEmbedder(tiny_t5, max_length=8)
    with pytest.warns(TextTruncationWarning):
        out = emb([captions[0], "a red circle"])
    assert out.truncated == [True, False]
    assert int(out.mask[0].sum()) == 8
    with pytest.raises(InputError):
        emb(captions[0], on_overflow="error")


def test_embedding_cache_hits_and_matches(tiny_t5, captions, tmp_path):
    emb = TextEmbedder(tiny_t5, max_length=64)
    cache = EmbeddingCache(tmp_path / "cache", emb)
    first = cache.embed(captions[:4])
    assert cache.misses == 4 and cache.hits == 0
    second = cache.embed(captions[:4])
    assert cache.hits == 4
    assert torch.equal(first.embeddings, second.embeddings) and torch.equal(first.mask, second.mask)
    assert torch.allclose(first.embeddings, emb(captions[:4]).embeddings, atol=1e-2)  # stored as fp16
    other = EmbeddingCache(tmp_path / "cache", TextEmbedder(tiny_t5, max_length=16))
    assert other.root != cache.root  # max_length is part of the key


def test_bert_style_encoder(tmp_path, captions):
    from transformers import BertConfig, BertModel

    words = {w for c in captions for w in c.replace(",", " ,").split()}
    tok = _word_tokenizer(words)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=80)).save_pretrained(tmp_path / "bert")
    tok.save_pretrained(tmp_path / "bert")
    out = TextEmbedder(tmp_path / "bert", max_length=32)(captions[:2])
    assert out.embeddings.shape == (2, 32, 16)


def test_missing_encoder_is_not_available(tmp_path):
    with pytest.raises(NotAvailableError, match="never downloaded"):
        TextEmbedder(tmp_path / "t5-xl")


def test_lm_vocabulary_reads_sizes_from_these_tokenizers(tiny_t5):
    from types import SimpleNamespace

    from videopoet.lm.vocab import Vocabulary
    from videopoet.tokenizers.cli_audio import load_audio_tokenizer

    video = SimpleNamespace(vocab_size=1024)
    audio = load_audio_tokenizer()
    v = Vocabulary.from_tokenizers(video, audio, default_text_tokenizer())
    assert (v.audio_levels, v.audio_codes, v.text_size) == (4, 1024, default_text_tokenizer().vocab_size)
    assert v.audio_level_range(1) == (v.audio_offset + 1024, v.audio_offset + 2048)
    emb = Vocabulary.from_tokenizers(video, audio, TextEmbedder(tiny_t5))  # embedding mode: no text ids
    assert emb.text_size == 0
