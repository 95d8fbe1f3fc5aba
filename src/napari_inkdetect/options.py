"""Options defined once: each config field carries its help, limits and how it is asked for.

A config dataclass declares a field with :func:`option` instead of a bare default; the CLI's
flags (:func:`add_arguments`, :func:`given`) and the docks' form fields are made from that one
declaration, so a name, a default, a help text or a limit is written in one place. A field
that a command line or a form must not ask for says so (``cli=False`` / ``form=False``) and
why, and a test holds every field of every config to that.

No argparse type is guessed from strings: the field's annotation says ``int``, ``float``,
``bool``, ``str`` or a tuple, and ``parse`` turns flag text into anything else.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, asdict, dataclass, field, fields, replace
from typing import Any, ClassVar

from napari_inkdetect.errors import ConfigError

__all__ = [
    "ConfigData",
    "Option",
    "add_arguments",
    "command_line",
    "config_options",
    "given",
    "option",
]

OPTION_KEY = "napari_inkdetect.option"
TEXT_PREFIX = "text:"  # where a parsed flag keeps its text in the argparse namespace


@dataclass(frozen=True)
class Option:
    """How one config field is asked for.

    ``help`` is the text of the flag and the tooltip of the form field (``{preset:FIELD}``
    is filled from the device presets where shown); ``lo``/``hi``/``step``/``choices`` limit
    it; ``unit`` follows the number in a form. ``flag`` renames the CLI flag (default
    ``--field-name``); ``flags`` offers several flags that each set the field to a value (a
    mutually exclusive group: ``{"--reverse": ("reverse", "help"), "--forward": (...)}``);
    ``positional`` and ``required`` as in argparse; ``parse`` turns flag text into the value;
    fields with the same ``exclusive`` name are flags of one mutually exclusive group.
    ``cli=False`` / ``form=False`` keep the field off the command line / out of the dock form,
    for the reason in ``why``.
    """

    help: str = ""
    label: str | None = None
    lo: float | None = None
    hi: float | None = None
    step: float | None = None
    unit: str = ""
    choices: tuple[Any, ...] | None = None
    flag: str | None = None
    flags: Mapping[str, tuple[Any, str]] | None = None
    metavar: str | None = None
    positional: bool = False
    required: bool = False
    parse: Callable[[str], Any] | None = None
    exclusive: str | None = None
    cli: bool = True
    form: bool = True
    why: str = ""

    def __post_init__(self) -> None:
        if (not self.cli or not self.form) and not self.why:
            raise ValueError("an option kept off the CLI or the form must say why")


def option(default: Any = MISSING, *, default_factory: Any = MISSING, **settings: Any) -> Any:
    """A dataclass field with its :class:`Option` (``settings`` are its attributes)."""
    meta = {OPTION_KEY: Option(**settings)}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


class ConfigData:
    """Plain-data behaviour of a frozen config dataclass: JSON in and out, copies with changes.

    ``to_dict`` gives JSON data (tuples as lists, nested configs as dicts); ``from_dict`` is
    its inverse and refuses unknown keys (a typo would otherwise be silent).
    """

    settings_name: ClassVar[str] = ""  # "training settings": how errors name this config

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (tuples as lists)."""
        return _jsonable(asdict(self))  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Any:
        """Inverse of :meth:`to_dict` (nested configs from their dicts, lists as tuples)."""
        data = dict(data or {})
        unknown = set(data) - {f.name for f in fields(cls)}  # type: ignore[arg-type]
        if unknown:
            what = cls.settings_name or f"{cls.__name__} settings"
            raise ConfigError(f"unknown {what}: {', '.join(sorted(unknown))}")
        for f in fields(cls):  # type: ignore[arg-type]
            kind, value = field_type(cls, f.name), data.get(f.name)
            if is_config(kind) and f.name in data and not isinstance(value, kind):
                data[f.name] = kind.from_dict(value)
            elif typing.get_origin(kind) is tuple and isinstance(value, list):
                data[f.name] = tuple(value)  # JSON has no tuples
        return cls(**data)

    def with_(self, **changes: Any) -> Any:
        """A copy with some settings changed."""
        return replace(self, **changes)  # type: ignore[type-var]


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def config_options(cls: type) -> list[tuple[Field, Option]]:
    """``(field, option)`` of every field of a config dataclass (a field declared without
    :func:`option` gets an empty one, so a test can find it)."""
    return [(f, f.metadata.get(OPTION_KEY, Option())) for f in dataclasses.fields(cls)]


def is_config(kind: Any) -> bool:
    """Whether a field's type is a nested config dataclass (e.g. ``AugmentConfig``)."""
    return isinstance(kind, type) and dataclasses.is_dataclass(kind)


def field_type(cls: type, name: str) -> Any:
    """The resolved annotation of a field, ``None`` removed from ``X | None``."""
    kind = typing.get_type_hints(cls)[name]
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        kind = args[0] if len(args) == 1 else kind
    return kind


def flag_name(name: str, prefix: str = "") -> str:
    """``--prefix-field-name`` for a field name."""
    return "--" + (prefix + name).replace("_", "-").replace(".", "-")


# --------------------------------------------------------------------------- the CLI


def add_arguments(
    parser: argparse.ArgumentParser, cls: type, prefix: str = "", skip: tuple[str, ...] = ()
) -> dict[str, Any]:
    """One flag (or positional, or group of flags) per field of ``cls`` that has ``cli``.

    Nested config dataclasses get prefixed flags in an argument group of their own
    (``--augment-affine``, ``--loss-label-smoothing``). Nothing given means the field's own
    default: every default is ``argparse.SUPPRESS``, so :func:`given` sees only what was typed.
    Returns the mutually exclusive groups by their ``exclusive`` name (a command may add its
    own flags to one).
    """
    groups: dict[str, Any] = {}
    for f, opt in config_options(cls):
        if not opt.cli or f.name in skip:
            continue
        kind = field_type(cls, f.name)
        dest = prefix + f.name
        if is_config(kind):
            group = parser.add_argument_group(f.name, opt.help or None)
            add_arguments(group, kind, prefix=f"{dest}.")
            continue
        target = parser
        if opt.exclusive is not None:
            if opt.exclusive not in groups:
                groups[opt.exclusive] = parser.add_mutually_exclusive_group()
            target = groups[opt.exclusive]
        _add_one(target, f, opt, kind, dest, prefix)
    return groups


def _add_one(parser: Any, f: Field, opt: Option, kind: Any, dest: str, prefix: str) -> None:
    help_text = _with_default(opt.help, f.default) or None
    if opt.flags:
        group = parser.add_mutually_exclusive_group()
        for flag, (value, text) in opt.flags.items():
            group.add_argument(flag, dest=dest, action="store_const", const=value,
                               default=argparse.SUPPRESS, help=_escaped(text))  # fmt: skip
        return
    if opt.positional:
        parser.add_argument(dest, type=_converter(opt, kind), help=help_text, metavar=opt.metavar)
        return
    flag = opt.flag or flag_name(f.name, prefix.replace(".", "-"))
    common = {"dest": dest, "default": argparse.SUPPRESS, "help": help_text}
    if kind is bool:
        action = "store_true" if f.default is False else argparse.BooleanOptionalAction
        parser.add_argument(flag, action=action, **common)
        return
    if opt.parse is not None:  # the text is kept, so the command line can be rebuilt
        parser.add_argument(flag, action=_Parsed, parse=opt.parse, required=opt.required,
                            metavar=opt.metavar, **common)  # fmt: skip
        return
    parser.add_argument(flag, type=_converter(opt, kind), choices=opt.choices,
                        required=opt.required, metavar=opt.metavar, **common)  # fmt: skip


def _with_default(text: str, default: Any) -> str:
    """The help, with the field's default said unless the help says it (or there is none);
    ``%`` escaped for argparse."""
    unset = default is MISSING or default is None or default is False or default == ""
    shown = not unset and "default" not in text
    return _escaped(f"{text} (default: {default})" if text and shown else text)


def _escaped(text: str) -> str:
    return text.replace("%", "%%")  # argparse formats help with %


class _Parsed(argparse.Action):
    """Stores ``parse(text)`` and keeps the text (``TEXT_PREFIX + dest``) for
    :func:`command_line`."""

    def __init__(self, *args: Any, parse: Callable[[str], Any], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.parse = parse

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None):
        setattr(namespace, self.dest, self.parse(values))
        setattr(namespace, TEXT_PREFIX + self.dest, values)


def command_line(
    parser: argparse.ArgumentParser, args: argparse.Namespace, drop: tuple[str, ...] = ()
) -> list[str]:
    """The arguments ``parser`` parses back into ``args`` (what was not given, and ``drop``,
    left out): the same command for other processes (``train --gpus N``)."""
    out: list[str] = []
    values = vars(args)
    for action in parser._actions:
        dest = action.dest
        if dest in drop or dest == argparse.SUPPRESS or dest not in values:
            continue
        value = values[dest]
        text = values.get(TEXT_PREFIX + dest, value)
        if not action.option_strings:
            out.append(str(text))
        elif value is None or value == action.default:
            continue
        elif isinstance(action, argparse.BooleanOptionalAction):
            out.append(action.option_strings[0 if value else 1])
        elif action.nargs == 0:  # store_true / store_const: only the flag that set it
            out += [action.option_strings[-1]] if value == action.const else []
        else:
            out += [action.option_strings[-1], str(text)]
    return out


def _converter(opt: Option, kind: Any) -> Callable[[str], Any]:
    if opt.parse is not None:
        return opt.parse
    if kind in (int, float, str):
        return kind
    return str


def given(args: argparse.Namespace, cls: type, prefix: str = "") -> dict[str, Any]:
    """The fields of ``cls`` typed on the command line, as keyword arguments (nested configs
    built from their own flags over their defaults)."""
    values = vars(args)
    out: dict[str, Any] = {}
    for f, opt in config_options(cls):
        if not opt.cli:
            continue
        kind, dest = field_type(cls, f.name), prefix + f.name
        if is_config(kind):
            inner = given(args, kind, prefix=f"{dest}.")
            if inner:
                out[f.name] = kind(**inner)
        elif dest in values:
            out[f.name] = values[dest]
    return out
