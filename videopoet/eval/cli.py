"""`videopoet eval ...` commands."""

from videopoet.cli import not_available

not_available("eval", "evaluation reports: not built yet")
