"""What every job spec shares: a frozen :mod:`msgspec` Struct that validates itself however it is made and fails
with :class:`SpecError`, one line that names the field, the value and what is allowed; the words a field declares
for the command line (:func:`option`) and for those messages.

msgspec's messages name the rule and the path but not the value, so :func:`_explain` words them from the field's
declaration: the value, then the range, choices or form that is allowed. The specs themselves are
:mod:`shared.specs`.
"""

import functools
import re
import reprlib
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any, ClassVar, TypeVar, get_args

import msgspec
import msgspec.inspect
from msgspec import Meta

from shared.formats import check_format

SPEC_VERSION = 1


def _explained(what: str | None, use: str) -> Meta:
    """Words for the error message of a field whose rule a type cannot say: "<value> is not WHAT; use USE"."""
    return Meta(extra={"is": what, "use": use})


def _whole(pattern: str) -> str:
    # msgspec searches a pattern; \Z (not $) so that a trailing newline cannot slip through
    return rf"^(?:{pattern})\Z"


def option(help: str, default: str | None = None, flag: str | None = None) -> Meta:
    """Offer a field on the command line (producer/options.py builds the option): its HELP, and in words what a
    None default chooses (DEFAULT, in markdown, as the README's table of defaults shows it); FLAG for a yes/no field
    whose switch is not ``--name/--no-name``."""
    extra: dict[str, str] = {"default": default} if default else {}
    if flag:
        extra["flag"] = flag
    return Meta(description=help, extra=extra)


def number_list(low: float, high: float) -> Meta:
    """A comma list of numbers above LOW and at most HIGH, kept as text (the CLI's and the message's form)."""
    return Meta(extra={"numbers": (low, high)})


class SpecError(ValueError):
    """A job spec is invalid. ``field`` names the offending field."""

    def __init__(self, kind: str, field_name: str, problem: str):
        self.field = field_name
        super().__init__(f"invalid {kind} spec: {field_name}: {problem}")



# True while from_dict converts, where msgspec has checked every field before __post_init__ runs
_CONVERTING: ContextVar[bool] = ContextVar("_CONVERTING", default=False)
SpecT = TypeVar("SpecT", bound="_Spec")


class _Spec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What every spec shares: parsing into a SpecError, the rules of number lists, and a dict form."""

    kind: ClassVar[str]

    def __post_init__(self) -> None:
        if not _CONVERTING.get():
            # Built directly (TrainSpec(...)): msgspec checks types and bounds only when converting, so convert.
            type(self).from_dict(msgspec.structs.asdict(self))
            return
        for name, low, high in _number_lists(type(self)):
            _check_number_list(self, name, low, high)
        self._check_fields_together()

    def _check_fields_together(self) -> None:
        """The rules that span fields."""

    def _fail(self, field_name: str, problem: str) -> SpecError:
        return SpecError(self.kind, field_name, problem)

    def to_dict(self) -> dict[str, Any]:
        return msgspec.to_builtins(self)  # type: ignore[no-any-return]

    @classmethod
    def from_dict(cls: type[SpecT], data: Mapping[str, Any]) -> SpecT:
        if not isinstance(data, Mapping):
            raise SpecError(cls.kind, "spec", f"expected a JSON object, got {type(data).__name__}")
        # a spec without a version is version 0, the same fields as version 1
        check_format(f"a {cls.kind} spec", data.get("version"), SPEC_VERSION,
                     error=lambda message: SpecError(cls.kind, "version", message))
        converting = _CONVERTING.set(True)
        try:
            return msgspec.convert(dict(data), cls)
        except msgspec.ValidationError as exc:
            if isinstance(exc.__cause__, SpecError):  # raised by __post_init__
                raise exc.__cause__ from None
            raise _explain(cls, data, str(exc)) from None
        finally:
            _CONVERTING.reset(converting)


def _float_list(text: str) -> list[float]:
    return [float(part) for part in text.split(",")]


@functools.cache
def _number_lists(cls: type[_Spec]) -> tuple[tuple[str, float, float], ...]:
    """The fields of CLS declared with :func:`number_list`, and their bounds (read once: it takes ~100 us)."""
    lists = ((field.name, declared(field.type).get("numbers")) for field in msgspec.structs.fields(cls))
    return tuple((name, *bounds) for name, bounds in lists if bounds)


def _check_number_list(spec: _Spec, name: str, low: float, high: float) -> None:
    text = getattr(spec, name)
    try:
        values = _float_list(text)
    except ValueError:
        raise spec._fail(name, f"{_shown(text)} is not a comma list of numbers, e.g. 0.5,1,2") from None
    if not all(low < value <= high for value in values):
        raise spec._fail(name, f"{_shown(text)}: use numbers above {low:g} and at most {high:g}")


def declared(annotation: Any) -> dict[str, Any]:
    """The words the Metas in ANNOTATION (``X | None`` included) declare: their ``extra``, their description and
    their bounds (``ge``, ``le``)."""
    words: dict[str, Any] = {}
    for part in (annotation, *get_args(annotation)):
        for meta in getattr(part, "__metadata__", ()):
            words.update(getattr(meta, "extra", None) or {})
            words.update({name: getattr(meta, name) for name in ("description", "ge", "le")
                          if getattr(meta, name, None) is not None})
    return words


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80  # a hostile or mistaken value cannot make a message of megabytes


def _shown(value: object) -> str:
    return _REPR.repr(value)


_KIND_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}
# msgspec's messages: "<problem> - at `$.field`", "... - at `$.field[...]`" or "... - at `key` in `$.field`"
_WHERE = re.compile(r"(?s)(?P<problem>.*) - at (?P<key>`key` in )?`\$(?:\.(?P<field>\w+))?(?P<inside>.*)`")


def _explain(cls: type[_Spec], data: Mapping[str, Any], message: str) -> SpecError:
    """Turn msgspec's ValidationError MESSAGE into a SpecError in the words of CLS's declarations."""
    kind = cls.kind
    unknown = re.fullmatch(r"(?s)Object contains unknown field `(.*)`", message)
    where = _WHERE.fullmatch(message)
    if unknown or (where and where["key"] and where["field"] is None):  # an undeclared field, or a name not a string
        name: object = unknown[1] if unknown else next(key for key in data if not isinstance(key, str))
        # a name that is not an identifier is quoted, so a hostile one cannot add a line to the message
        shown = name if isinstance(name, str) and name.isidentifier() else repr(name)
        return SpecError(kind, shown, f"unknown field; allowed fields are {', '.join(sorted(cls.__struct_fields__))}")
    missing = re.fullmatch(r"Object missing required field `(\w+)`", message)
    if missing:
        return SpecError(kind, missing[1], "is required")
    if where is None:
        return SpecError(kind, "spec", " ".join(message.split()))
    field, value = where["field"], data[where["field"]]
    annotation = {item.name: item.type for item in msgspec.structs.fields(cls)}[field]
    if (where["key"] or where["inside"]) and isinstance(value, dict):
        # name the entry at fault rather than the whole object
        value = next(({key: number} for key, number in value.items() if not _fits({key: number}, annotation)), value)
    words = declared(annotation)
    if words.get("use"):
        return SpecError(kind, field, f"{_shown(value)} is not {words.get('is') or 'allowed'}; use {words['use']}")
    rule = _unwrapped(msgspec.inspect.type_info(annotation))
    if isinstance(rule, msgspec.inspect.UnionType):  # X | None
        rule = _unwrapped(next(part for part in rule.types if not isinstance(part, msgspec.inspect.NoneType)))
    problem = where["problem"]
    if ", got `" in problem:
        literal = rule.values[0] if isinstance(rule, msgspec.inspect.LiteralType) else None
        base = type(literal).__name__ if literal is not None else type(rule).__name__.removesuffix("Type").lower()
        return SpecError(kind, field, f"{_shown(value)} is not {_KIND_WORDS.get(base, 'allowed')}")
    if isinstance(rule, (msgspec.inspect.IntType, msgspec.inspect.FloatType)) and rule.ge is not None and rule.le is not None:
        return SpecError(kind, field, f"{_shown(value)} is out of range; use {_bound(rule.ge)} to {_bound(rule.le)}")
    choices = ", ".join(map(str, getattr(rule, "values", ())))
    return SpecError(kind, field, f"{_shown(value)} is not allowed; use one of {choices}")


def _unwrapped(rule: msgspec.inspect.Type) -> msgspec.inspect.Type:
    """RULE without the help and words a field declares (its option): the type and range beneath."""
    while isinstance(rule, msgspec.inspect.Metadata):
        rule = rule.type
    return rule


def _bound(number: float) -> str:
    return str(number) if isinstance(number, int) else f"{number:g}"


def _fits(value: object, annotation: Any) -> bool:
    try:
        msgspec.convert(value, annotation)
    except msgspec.ValidationError:
        return False
    return True
