"""Tokenizers: video (MAGVIT-v2 + LFQ), audio (EnCodec-style residual VQ), text."""
