"""Command-line options built from a spec's fields, so that a default, a range and a help text are declared once,
beside the field (shared/specs.py, :func:`shared.specs.option`), for the spec, ``--help`` and the README's table.

An option passes nothing when it is not given: the spec's default applies, and a None default stays the
automatic choice the spec makes for the data. The value is checked by the spec, whose one-line error names the
field, the value and what is allowed.
"""

from __future__ import annotations

from collections.abc import Callable
from types import UnionType
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import click
import msgspec

from shared.spec_base import declared

F = TypeVar("F", bound=Callable[..., Any])


def offered(spec: type[msgspec.Struct]) -> list[msgspec.structs.FieldInfo]:
    """The fields of SPEC that the command line offers (those declared with :func:`shared.specs.option`)."""
    return [field for field in msgspec.structs.fields(spec) if declared(field.type).get("description")]


def offered_names(spec: type[msgspec.Struct]) -> list[str]:
    return [field.name for field in offered(spec)]


def default_words(field: msgspec.structs.FieldInfo) -> str:
    """FIELD's default as the README's table of defaults shows it (markdown): a value, on or off, or in words what
    the spec chooses."""
    if field.default is msgspec.NODEFAULT:
        return "required"
    if field.default is None:
        return str(declared(field.type).get("default", "none"))
    if isinstance(field.default, bool):
        return "on" if field.default else "off"
    return f"`{field.default:g}`" if isinstance(field.default, float) else f"`{field.default}`"


def spec_options(spec: type[msgspec.Struct], *names: str, required: tuple[str, ...] = ()) -> Callable[[F], F]:
    """Decorate a click command with an option for each of NAMES (default: every field SPEC offers, in the order
    they are declared); the fields in REQUIRED are required on this command (a mode's own rule)."""
    fields = {field.name: field for field in offered(spec)}
    chosen = [fields[name] for name in names] if names else list(fields.values())

    def decorate(command: F) -> F:
        for field in reversed(chosen):
            command = _option(field, field.name in required)(command)
        return command

    return decorate


def _option(field: msgspec.structs.FieldInfo, required: bool = False) -> Callable[[F], F]:
    meta = declared(field.type)
    name = field.name.replace("_", "-")
    base = _base(field.type)
    required = required or field.default is msgspec.NODEFAULT
    said = [_range(meta)] + ([] if required else [f"default: {default_words(field).replace('`', '')}"])
    help_text = f"{meta['description']} ({'; '.join(part for part in said if part)})" if any(said) else meta["description"]
    if base is bool:
        return click.option(meta.get("flag", f"--{name}/--no-{name}"), field.name, default=None, help=help_text)
    if get_origin(base) is Literal and all(isinstance(choice, str) for choice in get_args(base)):
        kind: Any = click.Choice(get_args(base))
    elif get_origin(base) is Literal:  # 28, 32 or 64 is an int here: the spec's error says which ones
        kind = type(get_args(base)[0])
    else:
        kind = base if base in (int, float) else str
    return click.option(f"--{name}", field.name, type=kind, required=required, default=None, help=help_text)


def _range(words: dict[str, Any]) -> str:
    """The bounds a field declares (WORDS, from :func:`shared.specs.declared`) in words ("1 to 4096"); empty when
    it declares none."""
    return f"{_number(words['ge'])} to {_number(words['le'])}" if "ge" in words and "le" in words else ""


def _number(value: float) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"


def _base(annotation: Any) -> Any:
    """The type under ANNOTATION's Metas and its ``| None``."""
    if getattr(annotation, "__metadata__", None) is not None:  # Annotated[T, ...]
        return _base(annotation.__origin__)
    if get_origin(annotation) in (Union, UnionType):
        others = [part for part in get_args(annotation) if part is not type(None)]
        return _base(others[0]) if len(others) == 1 else annotation
    return annotation
