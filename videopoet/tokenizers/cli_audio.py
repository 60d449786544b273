"""`videopoet audio ...` commands (audio tokenizer)."""

from videopoet.cli import not_available

for _name in ("audio train", "audio reconstruct", "audio encode", "audio decode"):
    not_available(_name, "issue #4: audio tokenizer")
