"""`videopoet text ...` commands (text tokenizer)."""

from videopoet.cli import not_available

not_available("text train-spm", "issue #4: text conditioning")
