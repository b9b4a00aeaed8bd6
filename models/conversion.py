"""Plain data (msgpack frames, JSON params, TOML tables, session files) to typed dataclasses and
back, with cattrs: one strict converter, and errors that name every bad field.

Strict: cattrs by default makes an int of "5" and a str of 5; here a value must already have the
field's type (an int passes where a float is expected), so a malformed message fails instead of
being guessed at. Unknown keys are errors too: they are usually typos.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from typing import Any, TypeVar

import cattrs
from cattrs.cols import homogenous_tuple_structure_factory, list_structure_factory
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from fimble.models.spec import Role

T = TypeVar("T")


class ConversionError(ValueError):
    """Data that does not fit its type; `problems` has one line per bad field."""

    def __init__(self, what: str, problems: list[str]):
        super().__init__(f"{what}: {'; '.join(problems)}")
        self.problems = problems


def _strict(kind: type, *accepted: type):
    def structure(value: Any, _: type) -> Any:
        if isinstance(value, bool) and kind is not bool:
            raise TypeError(f"expected {kind.__name__}, got a boolean")
        if not isinstance(value, accepted):
            raise TypeError(f"expected {kind.__name__}, got {type(value).__name__} {value!r:.40}")
        return kind(value)

    return structure


def _is_sequence(type_: Any) -> bool:
    origin = typing.get_origin(type_)
    return origin is list or (origin is tuple and typing.get_args(type_)[-1:] == (Ellipsis,))


def _strict_sequence(type_: Any, converter: cattrs.Converter):
    """A list or tuple field takes a list or tuple only: cattrs would make ("a", "b") of "ab"."""
    make = list_structure_factory if typing.get_origin(type_) is list else homogenous_tuple_structure_factory
    inner = make(type_, converter)

    def structure(value: Any, kind: type) -> Any:
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"expected a list, got {type(value).__name__} {value!r:.40}")
        return inner(value, kind)

    return structure


def _role(value: Any, _: type) -> Role:
    if isinstance(value, str) and value.upper() in Role.__members__:
        return Role[value.upper()]
    raise ValueError(f"unknown role {value!r}; expected single_line, multi_line or chat")


def make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True)
    converter.register_structure_hook(int, _strict(int, int))
    converter.register_structure_hook(float, _strict(float, int, float))
    converter.register_structure_hook(str, _strict(str, str))
    converter.register_structure_hook(bool, _strict(bool, bool))
    converter.register_structure_hook_factory(_is_sequence, lambda type_: _strict_sequence(type_, converter))
    converter.register_structure_hook(Role, _role)
    converter.register_unstructure_hook(Role, lambda role: role.config_name)
    return converter


CONVERTER = make_converter()


def camel_case(cls: type[T]) -> type[T]:
    """Class decorator: the dataclass reads and writes its fields in camelCase (JSON from an
    editor: `sessionId` for `session_id`)."""
    renames = {f.name: override(rename=_camel(f.name)) for f in dataclasses.fields(cls) if "_" in f.name}
    CONVERTER.register_structure_hook(cls, make_dict_structure_fn(cls, CONVERTER, _cattrs_forbid_extra_keys=True, **renames))
    CONVERTER.register_unstructure_hook(cls, make_dict_unstructure_fn(cls, CONVERTER, **renames))
    return cls


def _camel(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(part.title() for part in rest)


def structure(data: Any, cls: type[T], what: str = "", camel_names: bool = False) -> T:
    """`data` as a `cls`; ConversionError naming each field that does not fit (in camelCase with
    `camel_names`, as the JSON spells them)."""
    what = what or _type_name(cls)
    if isinstance(data, dict) is False and _is_class(cls):
        raise ConversionError(what, [f"expected a map, got {type(data).__name__}"])
    try:
        return CONVERTER.structure(data, cls)
    except Exception as error:  # cattrs raises groups of TypeError, ValueError and KeyError
        problems = cattrs.transform_error(error, path="", format_exception=_describe)
        raise ConversionError(what, [_field_first(problem, camel_names) for problem in problems]) from None


def unstructure(value: Any) -> Any:
    return CONVERTER.unstructure(value)


def _field_first(problem: str, camel_names: bool) -> str:
    """cattrs' "message @ .a_b.c[0]" as "a_b.c[0]: message" (or "aB.c[0]: message")."""
    message, _, path = problem.rpartition(" @ ")
    path = path.removeprefix(".")
    if camel_names:
        path = re.sub(r"[a-z]+(?:_[a-z0-9]+)+", lambda match: _camel(match.group(0)), path)
    return f"{path}: {message}" if path else message


def _describe(error: BaseException, type_: Any) -> str:
    if isinstance(error, KeyError):
        return "required"
    if isinstance(error, cattrs.ForbiddenExtraKeysError):
        # key=repr: msgpack maps may mix str and int keys, which sorted() alone cannot order.
        return f"unknown key(s) {', '.join(repr(key) for key in sorted(error.extra_fields, key=repr))}"
    allowed = _literal_values(type_)
    if allowed:
        return f"{_shown(error)}must be one of {', '.join(repr(value) for value in allowed)}"
    if isinstance(error, (TypeError, ValueError)) and str(error):
        return str(error)
    return f"expected {_type_name(type_)}"


def _literal_values(type_: Any) -> list:
    """The values a Literal (or a Literal | None) allows; [] for other types."""
    if typing.get_origin(type_) is typing.Literal:
        return list(typing.get_args(type_))
    return [value for arg in typing.get_args(type_) if typing.get_origin(arg) is typing.Literal for value in typing.get_args(arg)]


def _shown(error: BaseException) -> str:
    """The value a Literal refused, from cattrs' message ("x not in literal ...")."""
    value = str(error).partition(" not in literal")[0]
    return f"{value!r:.40} is not allowed; " if value and value != str(error) else ""


def _is_class(cls: Any) -> bool:
    return isinstance(cls, type) and hasattr(cls, "__dataclass_fields__")


def _type_name(type_: Any) -> str:
    return getattr(type_, "__name__", None) or str(type_).replace("typing.", "")
