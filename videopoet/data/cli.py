"""`videopoet data ...` commands."""

from videopoet.cli import not_available

not_available("data shapes", "issue #2: the shapes benchmark")
