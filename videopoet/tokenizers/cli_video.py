"""`videopoet tokenizer ...` commands (video tokenizer)."""

from videopoet.cli import not_available

for _name in ("tokenizer train", "tokenizer reconstruct", "tokenizer encode", "tokenizer decode"):
    not_available(_name, "issue #3: video tokenizer")
