"""The `videopoet` command, built from typed functions.

Each subcommand is a plain function registered with `@command("group name")`. Its signature is the
interface: positional-only parameters become positional arguments, the rest `--options`
(`bool` -> `--flag/--no-flag`, `Literal[...]` -> choices, `list[X]` -> several values), and the
docstring's `Args:` section becomes `--help`.

`--config FILE.yaml` is accepted by every subcommand:
- if the function has a parameter named `config`, the file is handed to it (training commands own
  their preset files) and `--set key.sub=value` overrides are passed as `overrides`;
- otherwise the YAML's keys fill the function's options. Precedence: flags > config file > defaults.

Errors caused by the user (`VideoPoetError`) print one line and exit 2; bugs keep their traceback.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from videopoet.errors import ConfigError, NotAvailableError, VideoPoetError

# Modules whose import registers commands (kept lazy: heavy imports happen inside the functions).
COMMAND_MODULES = [
    "videopoet.data.cli",
    "videopoet.tokenizers.cli_video",
    "videopoet.tokenizers.cli_audio",
    "videopoet.tokenizers.cli_text",
    "videopoet.lm.cli",
    "videopoet.tasks.cli",
    "videopoet.eval.cli",
    "videopoet.eval.cli_probe",
]

_REGISTRY: dict[tuple[str, ...], Callable[..., Any]] = {}
_GROUP_HELP = {
    "data": "datasets and the shapes benchmark",
    "tokenizer": "the video tokenizer (MAGVIT-v2 + LFQ)",
    "audio": "the audio tokenizer (EnCodec-style residual VQ)",
    "text": "text tokenizers",
    "lm": "the multimodal prefix LM",
    "sr": "super-resolution",
}


def command(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register `fn` as the subcommand `name` (e.g. "tokenizer train")."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        _REGISTRY[tuple(name.split())] = fn
        return fn

    return deco


def not_available(name: str, issue: str) -> None:
    """Register a subcommand that exists in the interface but is not built yet."""

    def fn() -> None:
        raise NotAvailableError(f"`videopoet {name}` is not available yet ({issue}).")

    fn.__doc__ = f"Not available yet ({issue})."
    command(name)(fn)


# --------------------------------------------------------------------------- signature -> argparse
def _doc_parts(fn: Callable[..., Any]) -> tuple[str, dict[str, str]]:
    doc = inspect.getdoc(fn) or ""
    lines = doc.splitlines()
    summary, params, cur = [], {}, None
    in_args = False
    for line in lines:
        if line.strip() in ("Args:", "Arguments:"):
            in_args = True
            continue
        if in_args:
            m = re.match(r"^\s{0,8}(\w+)\s*(\([^)]*\))?:\s*(.*)$", line)
            if m and not line.startswith(" " * 9):
                cur = m.group(1)
                params[cur] = m.group(3).strip()
            elif line.strip() and cur:
                params[cur] += " " + line.strip()
            elif not line.strip():
                cur = None
        else:
            summary.append(line)
    # argparse %-formats help strings (for %(default)s): a docstring's "95%" must reach it as "95%%"
    return "\n".join(summary).strip(), {k: v.replace("%", "%%") for k, v in params.items()}


def _unwrap_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _scalar(tp: Any) -> Callable[[str], Any]:
    if tp in (int, float, str):
        return tp
    if tp is Path:
        return Path
    return str


def _add_param(parser: argparse.ArgumentParser, p: inspect.Parameter, tp: Any, help_text: str) -> None:
    tp = _unwrap_optional(tp)
    origin = typing.get_origin(tp)
    kwargs: dict[str, Any] = {"help": help_text or None}
    if p.kind == inspect.Parameter.POSITIONAL_ONLY:
        if origin is typing.Literal:
            kwargs["choices"] = list(typing.get_args(tp))
        elif origin in (list, tuple):
            kwargs["type"] = _scalar(typing.get_args(tp)[0] if typing.get_args(tp) else str)
            kwargs["nargs"] = "+"
        else:
            kwargs["type"] = _scalar(tp)
        parser.add_argument(p.name, metavar=p.name.upper(), **kwargs)
        return
    flag = "--" + p.name.replace("_", "-")
    kwargs["dest"] = p.name
    kwargs["default"] = argparse.SUPPRESS
    if p.default is inspect.Parameter.empty:
        kwargs["help"] = f"{help_text} (required: as a flag or in --config)".strip()
    elif p.default is not None and tp is not bool:
        kwargs["help"] = f"{help_text} (default: {str(p.default).replace('%', '%%')})".strip()
    if tp is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
        if p.default is not inspect.Parameter.empty and p.default is not None:  # None: the help says
            kwargs["help"] = f"{help_text} (default: {'on' if p.default else 'off'})".strip()
    elif origin is typing.Literal:
        kwargs["choices"] = list(typing.get_args(tp))
    elif origin in (list, tuple):
        inner = typing.get_args(tp)[0] if typing.get_args(tp) else str
        kwargs["type"] = _scalar(inner)
        kwargs["nargs"] = "+"
    else:
        kwargs["type"] = _scalar(tp)
    parser.add_argument(flag, **kwargs)


def _convert_config_value(name: str, tp: Any, value: Any, path: Path) -> Any:
    tp = _unwrap_optional(tp)
    if value is None:
        return None
    try:
        if tp is Path:
            return Path(value)
        if tp is bool:
            if not isinstance(value, bool):
                raise ValueError
            return value
        if tp in (int, float, str):
            return tp(value)
        if typing.get_origin(tp) is typing.Literal and value not in typing.get_args(tp):
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(f"{path}: bad value {value!r} for {name!r}") from None
    return value


def build_parser() -> argparse.ArgumentParser:
    for mod in COMMAND_MODULES:
        importlib.import_module(mod)
    parser = argparse.ArgumentParser(
        prog="videopoet",
        description="VideoPoet: tokenizers, a multimodal prefix LM and zero-shot video tasks.",
    )
    parser.add_argument("--version", action="version", version=_version())
    subs = parser.add_subparsers(dest="_cmd", metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    for name in sorted(_REGISTRY):
        fn = _REGISTRY[name]
        summary, param_help = _doc_parts(fn)
        if len(name) == 1:
            target = subs
        else:
            if name[0] not in groups:
                gp = subs.add_parser(name[0], help=_GROUP_HELP.get(name[0], ""))
                groups[name[0]] = gp.add_subparsers(dest="_sub", metavar="SUBCOMMAND")
                gp.set_defaults(_group_parser=gp)
            target = groups[name[0]]
        sp = target.add_parser(
            name[-1],
            help=summary.splitlines()[0].replace("%", "%%") if summary else "",
            description=summary,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sp.set_defaults(_fn=fn)
        sig = inspect.signature(fn)
        hints = typing.get_type_hints(fn)
        takes_config = "config" in sig.parameters
        for p in sig.parameters.values():
            if p.name == "overrides":
                continue
            if p.name == "config":
                continue
            _add_param(sp, p, hints.get(p.name, str), param_help.get(p.name, ""))
        cfg_help = (
            param_help.get("config", "YAML config or preset name (e.g. tokenizer/cpu)")
            if takes_config
            else "YAML file whose keys set this command's options (flags win)"
        )
        sp.add_argument("--config", dest="config", type=Path, default=argparse.SUPPRESS,
                        required=takes_config and sig.parameters["config"].default is inspect.Parameter.empty,
                        help=cfg_help)
        if "overrides" in sig.parameters:
            sp.add_argument("--set", dest="overrides", action="append", default=argparse.SUPPRESS,
                            metavar="KEY=VALUE", help="override a config field, e.g. train.max_steps=100 (repeatable)")
    return parser


def _version() -> str:
    from videopoet import __version__

    return f"videopoet {__version__}"


def _call(fn: Callable[..., Any], ns: argparse.Namespace) -> Any:
    sig = inspect.signature(fn)
    hints = typing.get_type_hints(fn)
    given = {k: v for k, v in vars(ns).items() if not k.startswith("_")}
    kwargs: dict[str, Any] = {}
    cfg_path = given.pop("config", None)
    if cfg_path is not None and "config" not in sig.parameters:
        from videopoet.config import load_yaml

        data = load_yaml(cfg_path)
        for key, value in data.items():
            pname = key.replace("-", "_")
            if pname not in sig.parameters or pname in ("config", "overrides"):
                raise ConfigError(f"{cfg_path}: unknown option {key!r} for this command")
            kwargs[pname] = _convert_config_value(pname, hints.get(pname, str), value, Path(cfg_path))
    elif cfg_path is not None:
        kwargs["config"] = cfg_path
    kwargs.update(given)
    args, missing = [], []
    for p in sig.parameters.values():
        if p.kind == inspect.Parameter.POSITIONAL_ONLY:
            args.append(kwargs.pop(p.name))
        elif p.name not in kwargs and p.default is inspect.Parameter.empty:
            missing.append("--" + p.name.replace("_", "-"))
    if missing:
        raise ConfigError(f"missing required option(s) {', '.join(missing)} (give them as flags or in --config)")
    return fn(*args, **kwargs)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    ns = parser.parse_args(argv)
    fn = getattr(ns, "_fn", None)
    if fn is None:  # `videopoet` or `videopoet GROUP` alone: show what there is
        gp = getattr(ns, "_group_parser", None)
        (gp or parser).print_help()
        return 2 if gp is not None else 0
    try:
        result = _call(fn, ns)
    except VideoPoetError as e:
        print(f"videopoet: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("videopoet: interrupted", file=sys.stderr)
        return 130
    return int(result) if isinstance(result, int) and not isinstance(result, bool) else 0


if __name__ == "__main__":
    # Run through the imported module: commands register into `videopoet.cli`, not `__main__`.
    from videopoet.cli import main as _main

    sys.exit(_main())
