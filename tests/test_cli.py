"""The CLI framework: typed functions -> subcommands, --config merging, clean user errors."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest

from videopoet import cli
from videopoet.errors import InputError


@pytest.fixture
def demo_command():
    calls = []

    def demo(name: str, /, *, out: Path, size: int = 64, mode: Literal["a", "b"] = "a",
             fast: bool = False, ratio: float = 0.5, tags: list[str] | None = None) -> None:
        """Demo command.

        Args:
            name: a positional name
            out: where to write
            size: frame size in pixels
        """
        if size <= 0:
            raise InputError(f"--size must be > 0, got {size}")
        calls.append(dict(name=name, out=out, size=size, mode=mode, fast=fast, ratio=ratio, tags=tags))

    def trainer(*, config: Path, overrides: list[str] | None = None, steps: int = 1) -> None:
        """Trainer that owns its config file."""
        calls.append(dict(config=config, overrides=overrides, steps=steps))

    cli.command("zz demo")(demo)
    cli.command("zz trainer")(trainer)
    yield calls
    del cli._REGISTRY[("zz", "demo")]
    del cli._REGISTRY[("zz", "trainer")]


def test_flags_are_typed_and_defaults_apply(demo_command, tmp_path):
    assert cli.main(["zz", "demo", "x", "--out", str(tmp_path), "--size", "32", "--fast", "--tags", "a", "b"]) == 0
    assert demo_command[-1] == dict(name="x", out=tmp_path, size=32, mode="a", fast=True, ratio=0.5, tags=["a", "b"])


def test_config_file_fills_options_and_flags_win(demo_command, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"out: {tmp_path}\nsize: 16\nmode: b\nratio: 2\n")
    assert cli.main(["zz", "demo", "y", "--config", str(cfg), "--size", "8"]) == 0
    assert demo_command[-1]["size"] == 8  # flag wins
    assert demo_command[-1]["mode"] == "b"  # from the file
    assert demo_command[-1]["ratio"] == 2.0 and isinstance(demo_command[-1]["ratio"], float)
    assert demo_command[-1]["out"] == tmp_path


def test_config_with_unknown_key_names_it(demo_command, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("bogus: 1\n")
    assert cli.main(["zz", "demo", "y", "--config", str(cfg), "--out", "o"]) == 2
    err = capsys.readouterr().err
    assert "bogus" in err and str(cfg) in err


def test_missing_required_option_is_a_clean_error(demo_command, capsys):
    assert cli.main(["zz", "demo", "y"]) == 2
    assert "--out" in capsys.readouterr().err
    assert demo_command == []


def test_user_error_prints_one_line_and_exits_2(demo_command, capsys):
    assert cli.main(["zz", "demo", "y", "--out", "o", "--size", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "videopoet: error: --size must be > 0, got 0"


def test_config_owning_command_receives_path_and_overrides(demo_command, tmp_path):
    cfg = tmp_path / "t.yaml"
    cfg.write_text("a: 1\n")
    assert cli.main(["zz", "trainer", "--config", str(cfg), "--set", "a=2", "--set", "b.c=x", "--steps", "3"]) == 0
    assert demo_command[-1] == dict(config=cfg, overrides=["a=2", "b.c=x"], steps=3)


def test_help_lists_every_design_command(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name in ("data", "tokenizer", "audio", "text", "tokenize", "lm", "generate", "eval", "quickstart", "sr"):
        assert name in out
    parser = cli.build_parser()
    registered = {" ".join(k) for k in cli._REGISTRY}
    for name in ("data shapes", "tokenizer train", "tokenizer reconstruct", "audio train", "audio reconstruct",
                 "text train-spm", "tokenize", "lm train", "generate", "eval run", "eval report", "quickstart", "sr train"):
        assert name in registered, name
    assert parser.prog == "videopoet"


def test_docstring_args_become_help(demo_command, capsys):
    with pytest.raises(SystemExit):
        cli.main(["zz", "demo", "--help"])
    out = capsys.readouterr().out
    assert "frame size in pixels (default: 64)" in out
    assert "where to write (required: as a flag or in --config)" in out
    assert "{a,b}" in out


@pytest.mark.parametrize("module", ["videopoet", "videopoet.cli"])
def test_module_entry_points_run_commands(module):
    r = subprocess.run([sys.executable, "-m", module, "sr", "train"], capture_output=True, text=True)
    # a registered command runs (here: one that says it is not built yet), not "invalid choice"
    assert r.returncode == 2
    assert r.stderr.startswith("videopoet: error: `videopoet sr train` is not available yet"), r.stderr
    r = subprocess.run([sys.executable, "-m", module, "generate", "i2v", "--image", "/nonexistent.png"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "/nonexistent.png" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = subprocess.run([sys.executable, "-m", module, "tokenize", "--data", "shapes:1", "--out", "/nonexistent/x/y",
                        "--part-size", "0"], capture_output=True, text=True)
    assert r.returncode == 2 and "--batch and --part-size must be >= 1" in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("videopoet ")


def test_every_command_help_formats(capsys):
    # argparse %-formats every help string: a docstring's bare "95%" made `eval run --help` crash
    parser = cli.build_parser()
    checked = []

    def walk(p, path):
        p.format_help()
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, path + [name])
        checked.append(" ".join(path))

    walk(parser, [])
    assert "eval run" in checked and len(checked) > 20
    with pytest.raises(SystemExit) as e:
        cli.main(["eval", "run", "--help"])
    assert e.value.code == 0
    assert "read < 95% of the" in capsys.readouterr().out


def test_an_optional_bool_flag_stays_none_unless_given(capsys):
    """`bool | None = None` (e.g. --anchor-guidance: unset means the model's pipeline.json): the help
    claims no on/off default, and the function sees None, True or False."""
    seen = []

    def opt(*, pick: bool | None = None) -> None:
        """Optional switch.

        Args:
            pick: choose it (default: the file's setting)
        """
        seen.append(pick)

    cli.command("zz opt")(opt)
    try:
        for argv in ([], ["--pick"], ["--no-pick"]):
            cli.main(["zz", "opt", *argv])
        assert seen == [None, True, False]
        with pytest.raises(SystemExit):
            cli.main(["zz", "opt", "--help"])
        out = " ".join(capsys.readouterr().out.split())
        assert "choose it (default: the file's setting)" in out and "(default: off)" not in out
    finally:
        del cli._REGISTRY[("zz", "opt")]
