"""`videopoet generate ...`, `videopoet quickstart` and `videopoet sr ...` commands."""

from videopoet.cli import not_available

not_available("generate", "task generation pipelines: not built yet")
not_available("sr train", "super-resolution: not built yet")
