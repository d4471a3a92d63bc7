"""Typed stage configurations: dataclasses filled from defaults, a TOML file and flags.

Precedence, stated once: defaults < ``--config file.toml`` < command-line flags.
Each field is declared with :func:`option`, which carries its help text (shown by ``--help``)
and whether it changes the artifact a stage writes (``affects_output``): fields such as
``workers`` or ``force`` are recorded in the manifest but left out of the artifact's identity.
A training stage's fields also say whether a resumed run must keep them (``resume``).
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

from lmkit.errors import ConfigError, UserError

_MISSING = dataclasses.MISSING


def option(
    default: Any = _MISSING,
    help: str = "",
    *,
    choices: tuple[str, ...] | None = None,
    affects_output: bool = True,
    positional: bool = False,
    short: str | None = None,
    section: str = "",
    resume: bool = False,
) -> Any:
    """Declare a config field. Lists get a fresh copy of ``default`` per instance. ``section`` places the
    field in ``--help`` and ``--print-config`` (see :func:`ordered_fields`). ``resume``: a training run
    resumed from a checkpoint must keep the value it was started with (training.rundir reads it)."""
    metadata = {
        "help": help,
        "choices": choices,
        "affects_output": affects_output,
        "positional": positional,
        "short": short,
        "section": section,
        "resume": resume,
    }
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def ordered_fields(cls_or_config: Any) -> list[dataclasses.Field]:
    """A config's fields in the order ``--help`` and ``--print-config`` show them: by the class's
    ``SECTIONS`` (fields without a section first), declaration order within a section. A class that
    inherits shared fields (training.options) thereby interleaves them with its own."""
    sections = getattr(cls_or_config, "SECTIONS", ())
    fields = dataclasses.fields(cls_or_config)
    rank = {name: index + 1 for index, name in enumerate(sections)}

    def key(item: tuple[int, dataclasses.Field]) -> tuple[int, int]:
        position, f = item
        section = f.metadata.get("section", "")
        if section and section not in rank:
            raise TypeError(f"{f.name}: section {section!r} is not in SECTIONS")  # a bug in a config class
        return rank.get(section, 0), position

    return [f for _, f in sorted(enumerate(fields), key=key)]


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def base_type(tp: Any) -> tuple[Any, bool]:
    """(underlying type, optional?) for ``X | None`` annotations."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Check/convert one value from TOML or a flag string to the field's type."""
    base, optional = base_type(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError([f"{where}: a value is required"])
    if typing.get_origin(base) is list:
        (item_type,) = typing.get_args(base)
        if isinstance(value, str):  # flags take lists comma-separated
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError([f"{where}: expected a list, got {value!r}"])
        return [coerce(v, item_type, where) for v in value]
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError([f"{where}: expected true or false, got {value!r}"])
    if base is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError([f"{where}: expected an integer, got {value!r}"])
        try:
            return int(value)
        except ValueError:
            raise ConfigError([f"{where}: expected an integer, got {value!r}"]) from None
    if base is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError([f"{where}: expected a number, got {value!r}"])
        try:
            number = float(value)
        except ValueError:
            raise ConfigError([f"{where}: expected a number, got {value!r}"]) from None
        if not math.isfinite(number):
            raise ConfigError([f"{where}: expected a finite number, got {value!r}"])
        return number
    if base is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError([f"{where}: expected a string, got {value!r}"])
        return str(value)
    raise TypeError(f"unsupported config field type {tp!r}")  # a bug in a config class


def load_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: config file not found (--config)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read config file ({exc})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: invalid TOML ({exc})") from None


def check_mapping(cls: type, mapping: dict[str, Any], source: str) -> tuple[dict[str, Any], list[str]]:
    """(values converted to the fields' types, problems) of a mapping read from ``source``
    (a TOML file, a checkpoint's model.json); unknown keys are problems naming the source."""
    types_ = field_types(cls)
    values: dict[str, Any] = {}
    problems: list[str] = []
    for key, value in mapping.items():
        if key not in types_:
            close = [n for n in types_ if n.replace("_", "") == key.replace("_", "").replace("-", "")]
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            problems.append(f"{source}: unknown key '{key}'{hint}")
            continue
        try:
            values[key] = coerce(value, types_[key], f"{source}: {key}")
        except ConfigError as exc:
            problems.extend(exc.problems)
    return values, problems


def resolve(cls: type, file_values: dict[str, Any] | None = None, flags: dict[str, Any] | None = None,
            config_path: str | Path | None = None) -> Any:
    """Build ``cls`` from defaults < file values < flag values, reporting every problem at once."""
    types_ = field_types(cls)
    source = str(config_path) if config_path else "config"
    values, problems = check_mapping(cls, file_values or {}, source)
    for key, value in (flags or {}).items():
        if value is None:
            continue
        try:
            values[key] = coerce(value, types_[key], flag_name(key))
        except ConfigError as exc:
            problems.extend(exc.problems)
    for f in dataclasses.fields(cls):
        choices = f.metadata.get("choices")
        if choices and f.name in values and values[f.name] is not None:
            chosen = values[f.name] if isinstance(values[f.name], list) else [values[f.name]]
            for item in chosen:
                if item not in choices:
                    problems.append(f"{flag_name(f.name)}: '{item}' is not one of {', '.join(choices)}")
    missing = [f for f in dataclasses.fields(cls)
               if f.default is _MISSING and f.default_factory is _MISSING and f.name not in values]
    for f in missing:
        name = f.name.upper() if f.metadata.get("positional") else flag_name(f.name)
        problems.append(f"{name}: required" + (" (the command's argument)" if f.metadata.get("positional") else ""))
    if not problems:
        config = cls(**values)
        # What the user set (file or flags), for settings chosen on their behalf (pretrain --budget).
        object.__setattr__(config, "given_fields", frozenset(values))
        return config
    if missing:
        usage = ConfigError(problems)
        usage.exit_code = 2  # a missing required argument is a usage error, like any malformed command line
        raise usage
    if not missing:  # also collect what the class's own validation says of the usable values
        try:
            cls(**{k: v for k, v in values.items() if k not in _fields_named(problems, cls)})
        except ConfigError as exc:
            problems.extend(exc.problems)
    raise ConfigError(problems)


def _fields_named(problems: list[str], cls: type) -> set[str]:
    """Fields whose values already have a problem (their defaults stand in for validation)."""
    named = set()
    for f in dataclasses.fields(cls):
        flag, key = flag_name(f.name), f": {f.name}:"
        if any(p.startswith(flag + ":") or key in p for p in problems):
            named.add(f.name)
    return named


def validate(config: Any, problems: list[str]) -> None:
    """Called at the end of a config's ``__post_init__`` with the problems it collected."""
    if problems:
        raise ConfigError(problems)


def as_dict(config: Any) -> dict[str, Any]:
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


def identity_dict(config: Any) -> dict[str, Any]:
    """The fields that change what a stage writes: the config part of an artifact's identity."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
            if f.metadata.get("affects_output", True)}


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
        return f'"{escaped}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def to_toml(config: Any) -> str:
    """The resolved config as TOML that ``--config`` reads back; unset optional fields are comments."""
    lines = []
    section = ""
    for f in ordered_fields(config):
        if f.metadata.get("section", "") != section:
            section = f.metadata["section"]
            lines.append(f"\n# -- {section} " + "-" * max(0, 90 - len(section)))
        value = getattr(config, f.name)
        if f.metadata.get("help"):
            lines.append(f"# {f.metadata['help']}")
        if value is None:
            lines.append(f"# {f.name} = (unset)")
        else:
            lines.append(f"{f.name} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


# -- what the user set -----------------------------------------------------------------------------------

def given_fields(config: Any) -> set[str]:
    """The fields the user set (flags or --config file, as config.resolve records them); without that record,
    those that differ from the defaults."""
    given = getattr(config, "given_fields", None)
    if given is not None:
        return set(given)
    return {f.name for f in dataclasses.fields(config)
            if f.default is not dataclasses.MISSING and getattr(config, f.name) != f.default}


def changed_by_user(config: Any) -> set[str]:
    """The fields the user set to something else than the stage's default: given (flags or --config) and not
    equal to the default, so that a --print-config dump, which lists every field, reads back unchanged."""
    given = given_fields(config)
    return {f.name for f in dataclasses.fields(config) if f.name in given and getattr(config, f.name) != _default_of(f)}


def _default_of(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default
