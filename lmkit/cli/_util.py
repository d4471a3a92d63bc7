"""Shared CLI machinery: one typer app, config-driven commands, and the error/exit-code policy.

A config-driven command gets one flag per config field (``--vocab-size`` for ``vocab_size``),
plus ``--config FILE.toml`` and ``--print-config``; flags left unset fall back to the file,
then to the defaults. User errors print one ``error:`` line per problem and exit 1;
Ctrl-C exits 130 and SIGTERM 143; bugs keep their tracebacks.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import sys
import typing
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from lmkit import config as config_lib
from lmkit.errors import Interrupted, UserError
from lmkit.progress import reporter

app = typer.Typer(
    name="lmkit",
    help="From raw text to a trained, evaluated language model: one command per stage, "
         "a verified artifact per step.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def report_user_error(exc: UserError) -> None:
    for line in str(exc).splitlines() or ["unknown error"]:
        reporter.err.print(f"error: {line}", markup=False, style="bold red", soft_wrap=True)


def handle_errors(fn: Callable) -> Callable:
    """Turn user errors and interrupts into exit codes; let bugs raise."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            report_user_error(exc)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            reporter.err.print("interrupted; no partial artifact was left", markup=False)
            raise typer.Exit(130) from None
        except Interrupted as exc:
            reporter.err.print(f"{exc}; no partial artifact was left", markup=False)
            raise typer.Exit(exc.exit_code) from None

    return wrapper


@dataclasses.dataclass(frozen=True)
class FlagSpec:
    """How one config field appears on the command line: what ``--help`` shows and what the flag reference in
    docs/reference/ is generated from (lmkit.cli.reference), so the two cannot drift."""

    field: str
    names: tuple[str, ...]  # ("--vocab-size",), ("--force/--no-force",), ("--out", "-o"); a positional: ("OUT",)
    help: str
    default: str  # as --help shows it: the value, "required", "unset" or "(none)"
    positional: bool
    type_name: str  # integer, number, text, list, true/false
    section: str


def flag_spec(field: dataclasses.Field, annotation: Any) -> FlagSpec:
    meta = field.metadata
    help_text = meta.get("help", "")
    if meta.get("choices"):
        help_text += f" Choices: {', '.join(meta['choices'])}."
    base, _optional = config_lib.base_type(annotation)
    many = typing.get_origin(base) is list
    type_name = "list" if many else {bool: "true/false", int: "integer", float: "number"}.get(base, "text")
    section = meta.get("section", "")
    if meta.get("positional"):
        return FlagSpec(field.name, (field.name.upper(),), help_text, "", True, type_name, section)
    names = [config_lib.flag_name(field.name)]
    if base is bool:
        names = [f"{names[0]}/--no-{names[0][2:]}"]
    if meta.get("short"):
        names.append(meta["short"])
    shown = field.default if field.default is not dataclasses.MISSING else (
        field.default_factory() if field.default_factory is not dataclasses.MISSING else None)
    if isinstance(shown, list):
        shown = ",".join(map(str, shown)) or "(none)"
    default_text = "required" if field.default is dataclasses.MISSING and \
        field.default_factory is dataclasses.MISSING else (str(shown) if shown is not None else "unset")
    return FlagSpec(field.name, tuple(names), help_text, default_text, False, type_name, section)


def _parameter(field: dataclasses.Field, annotation: Any) -> inspect.Parameter:
    spec = flag_spec(field, annotation)
    base, _optional = config_lib.base_type(annotation)
    if spec.positional:
        default = typer.Argument(None, help=spec.help, show_default=False)
        many = typing.get_origin(base) is list
        return inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                 annotation=Optional[list[str]] if many else Optional[str])
    if base is bool:
        cli_type: Any = Optional[bool]
    elif base is int:
        cli_type = Optional[int]
    elif base is float:
        cli_type = Optional[float]
    elif typing.get_origin(base) is list:  # repeatable, each value possibly comma-separated
        cli_type = Optional[list[str]]
    else:
        cli_type = Optional[str]
    option = typer.Option(None, *spec.names, help=spec.help, show_default=spec.default)
    return inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=cli_type)


# The config-driven commands, name -> config class: the flag reference reads their fields (lmkit.cli.reference).
CONFIG_COMMANDS: dict[str, type] = {}
CONFIG_FILE_HELP = "TOML file of settings (keys are the flag names with underscores); flags override it."
PRINT_CONFIG_HELP = "Print the resolved settings as TOML and exit."


def config_command(name: str, config_cls: type, help: str, render: Callable[[Any], None],
                   run: Callable[[Any], Any] | str, prepare: str | None = None) -> None:
    """Register ``lmkit NAME`` with a flag per field of ``config_cls``.

    ``run(config)`` does the work (a stage function), given as a callable or as ``"module:function"``,
    imported only when the command runs (so that ``--help`` and other commands do not load torch);
    ``render(result)`` shows the result. ``prepare`` ("module:function", optional) completes the resolved
    config before it is printed or run (pretrain's --budget chooses settings there).
    """
    types_ = config_lib.field_types(config_cls)
    fields = config_lib.ordered_fields(config_cls)
    params = [_parameter(f, types_[f.name]) for f in fields]
    params.append(inspect.Parameter(
        "config_file", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path],
        default=typer.Option(None, "--config", "-c", help=CONFIG_FILE_HELP, show_default=False)))
    params.append(inspect.Parameter(
        "print_config", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
        default=typer.Option(False, "--print-config", help=PRINT_CONFIG_HELP)))

    @handle_errors
    def command(**kwargs: Any) -> None:
        config_file = kwargs.pop("config_file")
        print_config = kwargs.pop("print_config")
        file_values = config_lib.load_toml(config_file) if config_file else {}
        for f in fields:  # lists arrive as an empty tuple/list when not given
            if isinstance(kwargs.get(f.name), (list, tuple)) and not kwargs[f.name]:
                kwargs[f.name] = None
            elif isinstance(kwargs.get(f.name), (list, tuple)) and not f.metadata.get("positional"):
                kwargs[f.name] = ",".join(kwargs[f.name])  # --track a --track b,c: one comma-separated list
        config = config_lib.resolve(config_cls, file_values, kwargs, config_file)
        if prepare is not None:
            module, function = prepare.split(":")
            config = getattr(importlib.import_module(module), function)(config)
        if print_config:
            sys.stdout.write(config_lib.to_toml(config))
            return
        if isinstance(run, str):
            module, function = run.split(":")
            render(getattr(importlib.import_module(module), function)(config))
        else:
            render(run(config))

    command.__signature__ = inspect.Signature(params)  # typer reads the flags from this
    command.__doc__ = help
    if name in CONFIG_COMMANDS:
        raise ValueError(f"command {name!r} is registered twice")
    CONFIG_COMMANDS[name] = config_cls
    app.command(name, help=help, no_args_is_help=True)(command)
