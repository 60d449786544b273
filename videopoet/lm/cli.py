"""`videopoet lm ...` and `videopoet tokenize` commands."""

from videopoet.cli import not_available

not_available("lm train", "LM training on token shards: not built yet")
not_available("tokenize", "tokenizing a dataset into shards: not built yet")
