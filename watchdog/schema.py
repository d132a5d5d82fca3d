"""Typed, validated records built from untrusted data (rule files, settings, API bodies, stored
JSON): what pydantic did for us, in the subset we use, in about 1 MiB instead of 16.

Why our own (measured, bench/README.md): importing pydantic and pydantic-settings added 13.1 MiB
of resident memory to the daemon and compiling our models' validators 2.8 MiB more — a quarter
of the 64 MiB the daemon may use at 1,000 rules (issue 16). msgspec (~1 MiB) stops at a
document's first error, where `watchdog check` promises every problem of a file in one run.
This module keeps pydantic's interface where we used it (`BaseModel`, `Field`,
`field_validator`, `model_validator`, `BeforeValidator`/`AfterValidator`, `Discriminator`/`Tag`,
`ValidationError.errors()` with pydantic's `loc`/`type`/`msg`) and pydantic's lax conversions
(a numeric string is a number, "yes" a boolean), so models read as before and messages stay the
same.

Functional core: no I/O, no clock, no environment (settings read those in `watchdog.settings`).
It must not execute anything it is given: validators are the models' own code, values are only
compared, converted and stored.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, TypedDict, TypeVar, Union, dataclass_transform

__all__ = ["AfterValidator", "BaseModel", "BeforeValidator", "ConfigDict", "Discriminator",
           "Field", "FieldInfo", "SecretStr", "Tag", "ValidationError", "ValidationInfo",
           "field_validator", "model_validator"]


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


class ConfigDict(TypedDict, total=False):
    extra: Literal["forbid", "ignore"]  # default: ignore, as pydantic
    frozen: bool
    populate_by_name: bool


class FieldInfo:
    """A field's declaration: its default, alias and constraints (`Field(...)`), and once the
    model is compiled its name and resolved annotation."""

    __slots__ = ("alias", "allow_inf_nan", "annotation", "default", "default_factory", "ge",
                 "gt", "le", "lt", "max_length", "metadata", "min_length", "name")

    def __init__(self, default: Any = MISSING, *, default_factory: Callable[[], Any] | None = None,
                 alias: str | None = None, ge: float | None = None, gt: float | None = None,
                 le: float | None = None, lt: float | None = None,
                 min_length: int | None = None, max_length: int | None = None,
                 allow_inf_nan: bool = True) -> None:
        self.default = default
        self.default_factory = default_factory
        self.alias = alias
        self.ge, self.gt, self.le, self.lt = ge, gt, le, lt
        self.min_length, self.max_length = min_length, max_length
        self.allow_inf_nan = allow_inf_nan
        self.name = ""
        self.annotation: Any = None
        self.metadata: tuple[Any, ...] = ()

    def is_required(self) -> bool:
        return self.default is MISSING and self.default_factory is None

    def get_default(self) -> Any:
        return self.default_factory() if self.default_factory is not None else self.default

    @property
    def key(self) -> str:
        """The name the field has in data (and in an error's `loc`)."""
        return self.alias or self.name

    def __repr__(self) -> str:
        return f"FieldInfo(name={self.name!r}, alias={self.alias!r}, default={self.default!r})"


def Field(default: Any = MISSING, *, default_factory: Callable[[], Any] | None = None,
          alias: str | None = None, ge: float | None = None, gt: float | None = None,
          le: float | None = None, lt: float | None = None, min_length: int | None = None,
          max_length: int | None = None, allow_inf_nan: bool = True) -> Any:
    """A field's default and constraints, as pydantic's `Field` (the subset we use)."""
    return FieldInfo(default, default_factory=default_factory, alias=alias, ge=ge, gt=gt, le=le,
                     lt=lt, min_length=min_length, max_length=max_length,
                     allow_inf_nan=allow_inf_nan)


class BeforeValidator:
    """In `Annotated[T, BeforeValidator(f)]`: `f` sees the raw value before T checks it."""

    __slots__ = ("func",)

    def __init__(self, func: Callable[[Any], Any]) -> None:
        self.func = func


class AfterValidator:
    """In `Annotated[T, AfterValidator(f)]`: `f` sees the value once it is a T."""

    __slots__ = ("func",)

    def __init__(self, func: Callable[[Any], Any]) -> None:
        self.func = func


class Tag:
    """A member of a discriminated union: `Annotated[Model, Tag("name")]`."""

    __slots__ = ("tag",)

    def __init__(self, tag: str) -> None:
        self.tag = tag


class Discriminator:
    """`Annotated[A | B, Discriminator(f)]`: `f(raw value)` names the member (its `Tag`) that
    validates it, so an error points into the one model the author meant."""

    __slots__ = ("func",)

    def __init__(self, func: Callable[[Any], str]) -> None:
        self.func = func


class ValidationInfo:
    """What a field validator with a second parameter sees: the fields validated before it."""

    __slots__ = ("data", "field_name")

    def __init__(self, data: dict[str, Any], field_name: str) -> None:
        self.data = data
        self.field_name = field_name


class SecretStr:
    """A secret that never prints: `str()`/`repr()` show stars, JSON dumps show stars."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        return self._value

    def __str__(self) -> str:
        return "**********" if self._value else ""

    def __repr__(self) -> str:
        return f"SecretStr('{self}')"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretStr) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __len__(self) -> int:
        return len(self._value)


ErrorDetail = dict[str, Any]  # {"loc": tuple, "type": str, "msg": str, "input": Any}
Loc = tuple[str | int, ...]


class ValidationError(ValueError):
    """Every problem found in one document, each with where (`loc`), what (`type`, as pydantic
    names it) and a message."""

    def __init__(self, title: str, errors: list[ErrorDetail]) -> None:
        super().__init__(title)
        self.title = title
        self._errors = errors

    def errors(self) -> list[ErrorDetail]:
        return [dict(e) for e in self._errors]

    def error_count(self) -> int:
        return len(self._errors)

    def __str__(self) -> str:
        n = len(self._errors)
        lines = [f"{n} validation error{'s' if n != 1 else ''} for {self.title}"]
        for e in self._errors:
            lines.append(".".join(str(p) for p in e["loc"]) or "(root)")
            lines.append(f"  {e['msg']} [type={e['type']}]")
        return "\n".join(lines)


# ---- validators -----------------------------------------------------------------------------

_MODE = "__schema_validator__"


def field_validator(*fields: str, mode: Literal["before", "after"] = "after"
                    ) -> Callable[[Any], Any]:
    """On a classmethod `(cls, value)` or `(cls, value, info)`: checks or converts the named
    fields' values — before their type is checked, or after. Raise ValueError to refuse."""
    def mark(fn: Any) -> Any:
        func = fn.__func__ if isinstance(fn, classmethod) else fn
        setattr(func, _MODE, ("field", mode, fields))
        return fn
    return mark


def model_validator(*, mode: Literal["before", "after"]) -> Callable[[Any], Any]:
    """`before`: a classmethod that sees the raw input. `after`: a method that sees the built
    model (only when every field was valid) and returns it. Raise ValueError to refuse."""
    def mark(fn: Any) -> Any:
        func = fn.__func__ if isinstance(fn, classmethod) else fn
        setattr(func, _MODE, ("model", mode, ()))
        return fn
    return mark


# ---- models ---------------------------------------------------------------------------------

_M = TypeVar("_M", bound="BaseModel")


@dataclass_transform(kw_only_default=True, field_specifiers=(Field, FieldInfo))
class _ModelMeta(type):
    """Turns annotated class attributes into slots (a model instance holds only its values:
    about a third of a pydantic instance's memory) and remembers defaults and validators."""

    def __new__(mcs, name: str, bases: tuple[type, ...], ns: dict[str, Any],
                **kw: Any) -> _ModelMeta:
        own: dict[str, FieldInfo] = {}
        for field, ann in ns.get("__annotations__", {}).items():
            text = ann if isinstance(ann, str) else getattr(ann, "__name__", "")
            if text.startswith(("ClassVar", "typing.ClassVar")) or field.startswith("_"):
                continue
            default = ns.pop(field, MISSING)
            info = default if isinstance(default, FieldInfo) else FieldInfo(default)
            info.name = field
            own[field] = info
        inherited: dict[str, FieldInfo] = {}
        for base in reversed(bases):
            inherited.update(getattr(base, "__schema_fields__", {}))
        ns["__slots__"] = tuple(f for f in own if f not in inherited)
        ns["__schema_own__"] = own
        cls = super().__new__(mcs, name, bases, ns, **kw)
        fields = {**inherited, **own}
        cls.__schema_fields__ = fields  # type: ignore[attr-defined]
        cls.__schema_compiled__ = None  # type: ignore[attr-defined]
        return cls

    @property
    def model_fields(cls) -> dict[str, FieldInfo]:
        _compiled(cls)  # type: ignore[arg-type]  # cls is a BaseModel subclass
        fields: dict[str, FieldInfo] = cls.__schema_fields__  # type: ignore[attr-defined]
        return fields


class BaseModel(metaclass=_ModelMeta):
    """A record validated from data: `Model.model_validate(data)` or `Model(**fields)` (both
    check everything and raise `ValidationError` with every problem)."""

    __slots__ = ()
    model_config: ClassVar[ConfigDict] = {}

    def __init__(self, **data: Any) -> None:
        errors: list[ErrorDetail] = []
        got = _compiled(type(self)).validate(data, (), errors, into=self)
        if got is _FAIL:
            raise ValidationError(type(self).__name__, errors)

    @classmethod
    def model_validate(cls: type[_M], obj: Any) -> _M:
        errors: list[ErrorDetail] = []
        got = _compiled(cls).validate(obj, (), errors)
        if got is _FAIL:
            raise ValidationError(cls.__name__, errors)
        return got  # type: ignore[no-any-return]

    @classmethod
    def model_validate_json(cls: type[_M], text: str | bytes) -> _M:
        try:
            data = json.loads(text)
        except ValueError as e:
            raise ValidationError(cls.__name__, [{
                "loc": (), "type": "json_invalid", "msg": f"Invalid JSON: {e}",
                "input": text}]) from None
        return cls.model_validate(data)

    def model_copy(self: _M, *, update: Mapping[str, Any] | None = None) -> _M:
        """A copy with `update` applied as given (not validated, as pydantic's)."""
        new = object.__new__(type(self))
        for name in type(self).__schema_fields__:  # type: ignore[attr-defined]
            object.__setattr__(new, name, getattr(self, name))
        for name, value in (update or {}).items():
            object.__setattr__(new, name, value)
        return new

    def model_dump(self, *, by_alias: bool = False, exclude_none: bool = False,
                   exclude: Iterable[str] | None = None, mode: Literal["python", "json"] = "python"
                   ) -> dict[str, Any]:
        """Fields as plain data, nested models as dicts (`mode="json"`: also tuples as lists,
        secrets as stars, paths as text, non-finite floats as None)."""
        skip = frozenset(exclude or ())
        out: dict[str, Any] = {}
        for name, info in type(self).__schema_fields__.items():  # type: ignore[attr-defined]
            if name in skip:
                continue
            value = getattr(self, name)
            if exclude_none and value is None:
                continue
            out[info.key if by_alias else name] = _dump(value, by_alias, exclude_none, mode)
        return out

    def model_dump_json(self, *, by_alias: bool = False, exclude_none: bool = False) -> str:
        return json.dumps(self.model_dump(by_alias=by_alias, exclude_none=exclude_none,
                                          mode="json"),
                          separators=(",", ":"), ensure_ascii=False, allow_nan=False)

    def __setattr__(self, name: str, value: Any) -> None:
        if type(self).model_config.get("frozen"):
            raise TypeError(f"{type(self).__name__} is frozen: use model_copy(update=...)")
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        raise TypeError(f"{type(self).__name__}: fields cannot be deleted")

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, n) for n in type(self).__schema_fields__)  # type: ignore[attr-defined]

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        if not type(self).model_config.get("frozen"):
            raise TypeError(f"unhashable type: {type(self).__name__!r}")
        return hash((type(self), self._values()))

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}={getattr(self, n)!r}"
                          for n in type(self).__schema_fields__)  # type: ignore[attr-defined]
        return f"{type(self).__name__}({inner})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self._values()))

    def __copy__(self: _M) -> _M:
        return self.model_copy()

    def __deepcopy__(self: _M, memo: dict[int, Any]) -> _M:
        import copy

        new = object.__new__(type(self))
        for name in type(self).__schema_fields__:  # type: ignore[attr-defined]
            object.__setattr__(new, name, copy.deepcopy(getattr(self, name), memo))
        return new


def _rebuild(cls: type[BaseModel], values: tuple[Any, ...]) -> BaseModel:
    new = object.__new__(cls)
    for name, value in zip(cls.__schema_fields__, values, strict=True):  # type: ignore[attr-defined]
        object.__setattr__(new, name, value)
    return new


def _dump(value: Any, by_alias: bool, exclude_none: bool, mode: str) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(by_alias=by_alias, exclude_none=exclude_none,
                                mode=mode)  # type: ignore[arg-type]
    if isinstance(value, dict):
        return {k: _dump(v, by_alias, exclude_none, mode) for k, v in value.items()}
    if isinstance(value, list | tuple):
        items = [_dump(v, by_alias, exclude_none, mode) for v in value]
        return items if mode == "json" or isinstance(value, list) else tuple(items)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        # a dataclass value (model.Comparison) dumps as a dict of its fields, as pydantic's
        fields = ((f.name, getattr(value, f.name)) for f in dataclasses.fields(value))
        return {k: _dump(v, by_alias, exclude_none, mode) for k, v in fields
                if not (exclude_none and v is None)}
    if mode == "json":
        if isinstance(value, SecretStr):
            return str(value)
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if hasattr(value, "isoformat"):
            return value.isoformat()
    return value


# ---- compiling annotations into checks ------------------------------------------------------

class _Fail:
    __slots__ = ()


_FAIL: Any = _Fail()

# (value, loc, errors) -> the converted value, or _FAIL after appending to errors
Check = Callable[[Any, Loc, list[ErrorDetail]], Any]


def _error(errors: list[ErrorDetail], loc: Loc, type_: str, msg: str, value: Any) -> Any:
    errors.append({"loc": loc, "type": type_, "msg": msg, "input": value})
    return _FAIL


def _call(fn: Callable[..., Any], args: tuple[Any, ...], loc: Loc, errors: list[ErrorDetail],
          value: Any) -> Any:
    """A validator's verdict: its result, or _FAIL with its ValueError as pydantic words it."""
    try:
        return fn(*args)
    except ValidationError as e:  # a nested model validated by hand inside a validator
        for err in e.errors():
            errors.append({**err, "loc": loc + tuple(err["loc"])})
        return _FAIL
    except AssertionError as e:
        return _error(errors, loc, "assertion_error", f"Assertion failed, {e}", value)
    except ValueError as e:
        return _error(errors, loc, "value_error", f"Value error, {e}", value)


# ---- scalars: pydantic's lax mode to the letter -----------------------------------------------
# pydantic-core reads text as Rust does, not as Python's int()/float()/str.strip(): "1e3" is no
# integer, "١٢" (Arabic-Indic digits) no number, " yes " no boolean. Its rules, ported here
# (src/input/shared.rs, input_python.rs), and checked against pydantic by
# tests/test_schema_oracle.py.

_MSG = {
    "string_unicode": "Input should be a valid string, unable to parse raw data as a unicode "
                      "string",
    "int_parsing": "Input should be a valid integer, unable to parse string as an integer",
    "int_parsing_size": "Unable to parse input string as an integer, exceeded maximum size",
    "int_from_float": "Input should be a valid integer, got a number with a fractional part",
    "finite_number": "Input should be a finite number",
    "float_parsing": "Input should be a valid number, unable to parse string as a number",
    "bool_parsing": "Input should be a valid boolean, unable to interpret input",
}
# Rust's str::trim: Unicode White_Space (Python's strip() also drops \x1c-\x1f)
_BLANKS = ("\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
           "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
_SURROGATE = re.compile("[\ud800-\udfff]")  # text Rust cannot hold (JSON may carry one)
_JSON_INT = re.compile(r"-?(?:0|[1-9][0-9]*)")
_LEADING_DIGITS = re.compile(r"-?[1-9][0-9]*")
_RUST_FLOAT = re.compile(r"[+-]?(?:inf|infinity|nan|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:e[+-]?[0-9]+)?)",
                         re.IGNORECASE | re.ASCII)
_INT_TEXT_MAX = 4300  # characters of an integer in text (Python's own limit on its digits)
_I64 = 2**63


def _fail(errors: list[ErrorDetail], loc: Loc, type_: str, value: Any) -> Any:
    return _error(errors, loc, type_, _MSG[type_], value)


def _text_of(v: str | bytes, parsing: str, loc: Loc, errors: list[ErrorDetail]) -> Any:
    """The text of a str or bytes value read as a number or a boolean (bytes as UTF-8)."""
    if isinstance(v, bytes):
        try:
            return v.decode()
        except UnicodeDecodeError:
            return _fail(errors, loc, parsing, v)
    if _SURROGATE.search(v):
        return _fail(errors, loc, "string_unicode", v)
    return v


def _underscores_dropped(s: str) -> str | None:
    # as Python allows them: between digits, one at a time
    if "_" not in s or s.startswith("_") or s.endswith("_") or "__" in s:
        return None
    return s.replace("_", "")


def _leading_zeros_dropped(s: str) -> str | None:
    if not s or not (s[0] == "0" or s[0] in "123456789-"):
        return None
    if s[0] != "0":
        return s
    for i, c in enumerate(s[1:], 1):
        if c in "0_":
            continue
        if c in "123456789-":
            return s[i:]
        if c == ".":
            return s[i - 1:]
        return None
    return s[-1:]


def _cleaned_int_text(text: str) -> str | None:
    """pydantic's second reading of an integer: blanks, a plus sign, leading zeros, a `.0`
    and underscores dropped; None when that changes nothing (or cannot be)."""
    s = text.strip(_BLANKS)
    if s.startswith("+"):
        if s[1:2] == "-":
            return None
        s = s[1:]
    sign = ""
    if s.startswith("-"):
        if s[1:2] in ("-", "+"):
            return None
        sign, s = "-", s[1:]
    got = _leading_zeros_dropped(s)
    if got is None:
        return None
    s = got
    point = s.find(".")
    if point >= 0 and s[point + 1:] and not s[point + 1:].strip("0"):
        s = s[:point]
    plain = _underscores_dropped(s)
    if plain is not None:
        return sign + plain
    return None if len(s) == len(text) else sign + s


def _text_int(text: str) -> int | str:
    """An integer in text as pydantic reads it, or the error type."""
    digits = _LEADING_DIGITS.match(text)
    if digits is not None and digits.end() > _INT_TEXT_MAX:
        return "int_parsing_size"
    if _JSON_INT.fullmatch(text):
        return int(text)
    cleaned = _cleaned_int_text(text)
    if cleaned is not None and len(cleaned) <= _INT_TEXT_MAX and _JSON_INT.fullmatch(cleaned):
        return int(cleaned)
    return "int_parsing"


def _float_int(f: float) -> int | str:
    """A float as pydantic takes it for an integer (within int64), or the error type."""
    if not math.isfinite(f):
        return "finite_number"
    if not f.is_integer():
        return "int_from_float"
    return int(f) if -_I64 < f < _I64 else "int_parsing_size"


def _text_float(text: str) -> float | None:
    """A number in text as Rust's f64 parser reads it (underscores allowed, as pydantic does,
    only when there are no blanks around)."""
    s = text.strip(_BLANKS)
    if _RUST_FLOAT.fullmatch(s):
        return float(s)
    plain = _underscores_dropped(text)
    return float(plain) if plain is not None and _RUST_FLOAT.fullmatch(plain) else None


def _check_str(v: Any, loc: Loc, errors: list[ErrorDetail]) -> Any:
    if isinstance(v, str):
        return v
    if isinstance(v, bytes | bytearray):  # YAML's `!!binary`
        try:
            return bytes(v).decode()
        except UnicodeDecodeError:
            return _fail(errors, loc, "string_unicode", v)
    return _error(errors, loc, "string_type", "Input should be a valid string", v)


def _check_int(v: Any, loc: Loc, errors: list[ErrorDetail]) -> Any:
    if isinstance(v, int):
        return int(v)  # True -> 1: pydantic's lax mode
    if isinstance(v, float):
        got: int | str = _float_int(v)
    elif isinstance(v, str | bytes):
        text = _text_of(v, "int_parsing", loc, errors)
        if text is _FAIL:
            return _FAIL
        got = _text_int(text)
    else:
        return _error(errors, loc, "int_type", "Input should be a valid integer", v)
    return got if isinstance(got, int) else _fail(errors, loc, got, v)


def _check_float(v: Any, loc: Loc, errors: list[ErrorDetail]) -> Any:
    if isinstance(v, float):
        return v
    if isinstance(v, str | bytes):
        text = _text_of(v, "float_parsing", loc, errors)
        if text is _FAIL:
            return _FAIL
        got = _text_float(text)
        return got if got is not None else _fail(errors, loc, "float_parsing", v)
    if isinstance(v, int):
        try:
            return float(v)
        except OverflowError:
            pass
    return _error(errors, loc, "float_type", "Input should be a valid number", v)


_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE = frozenset({"0", "off", "f", "false", "n", "no"})


def _check_bool(v: Any, loc: Loc, errors: list[ErrorDetail]) -> Any:
    if isinstance(v, bool):
        return v
    if isinstance(v, str | bytes):
        text = _text_of(v, "bool_parsing", loc, errors)
        if text is _FAIL:
            return _FAIL
        word = text.lower() if text.isascii() else text  # ASCII case only, no blanks
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        return _fail(errors, loc, "bool_parsing", v)
    # a number: 0 or 1 (as an int64, or a float that is one), else "not a boolean" when it is
    # no int64 at all
    n = v if isinstance(v, int) and -_I64 <= v < _I64 else (
        _float_int(v) if isinstance(v, float) else None)
    if isinstance(n, int):
        return bool(n) if n in (0, 1) else _fail(errors, loc, "bool_parsing", v)
    return _error(errors, loc, "bool_type", "Input should be a valid boolean", v)


def _check_none(v: Any, loc: Loc, errors: list[ErrorDetail]) -> Any:
    if v is None:
        return None
    return _error(errors, loc, "none_required", "Input should be None", v)


def _check_any(v: Any, loc: Loc, errors: list[ErrorDetail]) -> Any:
    return v


def _check_path(v: Any, loc: Loc, errors: list[ErrorDetail]) -> Any:
    if isinstance(v, Path):
        return v
    if isinstance(v, str):
        return Path(v)
    return _error(errors, loc, "path_type", f"Input is not a valid path for {Path!r}", v)


def _check_secret(v: Any, loc: Loc, errors: list[ErrorDetail]) -> Any:
    if isinstance(v, SecretStr):
        return v
    if isinstance(v, str):
        return SecretStr(v)
    return _error(errors, loc, "string_type", "Input should be a valid string", v)


_SCALARS: dict[Any, Check] = {str: _check_str, int: _check_int, float: _check_float,
                              bool: _check_bool, type(None): _check_none, None: _check_none,
                              Any: _check_any, object: _check_any, Path: _check_path,
                              SecretStr: _check_secret}


def _literal_text(choices: Sequence[Any]) -> str:
    shown = [repr(c) if isinstance(c, str) else str(c) for c in choices]
    return shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} or {shown[-1]}"


def _literal(choices: tuple[Any, ...]) -> Check:
    """One of `choices`, as pydantic's: the same type and value first, then any equal value
    (True and 1.0 are 1), giving the choice itself; text is never read as a number."""
    msg = f"Input should be {_literal_text(choices)}"
    exact = {(type(c), c) for c in choices}
    equal = {c: c for c in reversed(choices)}  # the first of equal choices wins
    ints = any(type(c) is int for c in choices)
    texts = any(type(c) is str for c in choices)

    def check(v: Any, loc: Loc, errors: list[ErrorDetail]) -> Any:
        if ints and type(v) is int and not -_I64 <= v < _I64:
            return _fail(errors, loc, "int_parsing_size", v)  # pydantic compares int64s
        try:
            if (type(v), v) in exact:
                return v
            if v in equal:
                return equal[v]
        except TypeError:  # unhashable input
            pass
        if texts and isinstance(v, str) and _SURROGATE.search(v):
            return _fail(errors, loc, "string_unicode", v)
        return _error(errors, loc, "literal_error", msg, v)
    return check


def _list(item: Check, as_tuple: bool, max_length: int | None = None) -> Check:
    kind = "tuple" if as_tuple else "list"

    def check(v: Any, loc: Loc, errors: list[ErrorDetail]) -> Any:
        if not isinstance(v, list | tuple):
            return _error(errors, loc, f"{kind}_type", f"Input should be a valid {kind}", v)
        if max_length is not None and len(v) > max_length:
            # pydantic stops at the first item past the limit: the items' problems are not
            # reported, only the length
            return _error(errors, loc, "too_long", f"{kind.capitalize()} should have at most "
                          f"{_n(max_length, 'item')} after validation, not {len(v)}", v)
        out = []
        ok = True
        for i, x in enumerate(v):
            got = item(x, (*loc, i), errors)
            if got is _FAIL:
                ok = False
            else:
                out.append(got)
        if not ok:
            return _FAIL
        return tuple(out) if as_tuple else out
    return check


def _dict(key: Check, value: Check) -> Check:
    def check(v: Any, loc: Loc, errors: list[ErrorDetail]) -> Any:
        if not isinstance(v, Mapping):
            return _error(errors, loc, "dict_type", "Input should be a valid dictionary", v)
        out = {}
        ok = True
        for k, x in v.items():
            where = (*loc, _loc_key(k))
            kk = key(k, (*where, "[key]"), errors)
            vv = value(x, where, errors)
            if kk is _FAIL or vv is _FAIL:
                ok = False
            else:
                out[kk] = vv
        return out if ok else _FAIL
    return check


def _loc_key(k: Any) -> str | int:
    """A mapping's key as a location, as pydantic writes it: text (a lone surrogate as the
    replacement characters of its UTF-8 bytes), an int64 as an int, anything else by repr."""
    if isinstance(k, str):
        return k.encode("utf-8", "surrogatepass").decode("utf-8", "replace") \
            if _SURROGATE.search(k) else k
    if isinstance(k, int) and -_I64 <= k < _I64:
        return int(k)  # True -> 1
    return repr(k)


def _optional(inner: Check) -> Check:
    def check(v: Any, loc: Loc, errors: list[ErrorDetail]) -> Any:
        return None if v is None else inner(v, loc, errors)
    return check


def _union(members: list[tuple[str, Check]]) -> Check:
    """The first member that takes the value; if none does, every member's problems, each
    under the member's name in `loc` (as pydantic's smart unions report them)."""
    def check(v: Any, loc: Loc, errors: list[ErrorDetail]) -> Any:
        tried: list[ErrorDetail] = []
        for label, member in members:
            mine: list[ErrorDetail] = []
            got = member(v, (*loc, label), mine)
            if got is not _FAIL:
                return got
            tried.extend(mine)
        errors.extend(tried)
        return _FAIL
    return check


def _tagged(disc: Callable[[Any], str], members: dict[str, Check]) -> Check:
    tags = _literal_text(list(members))

    def check(v: Any, loc: Loc, errors: list[ErrorDetail]) -> Any:
        tag = disc(v)
        member = members.get(tag)
        if member is None:
            return _error(errors, loc, "union_tag_invalid",
                          f"Input tag {tag!r} found using {disc.__name__}() does not match any "
                          f"of the expected tags: {tags}", v)
        return member(v, (*loc, tag), errors)
    return check


def _instance(tp: type) -> Check:
    def check(v: Any, loc: Loc, errors: list[ErrorDetail]) -> Any:
        if isinstance(v, tp):
            return v
        return _error(errors, loc, "is_instance_of",
                      f"Input should be an instance of {tp.__name__}", v)
    return check


def _constrained(inner: Check, info: FieldInfo | None) -> Check:
    """`inner` then the numeric bounds and lengths `info` sets (pydantic's wording)."""
    if info is None:
        return inner
    ge, gt, le, lt = info.ge, info.gt, info.le, info.lt
    min_len, max_len, finite = info.min_length, info.max_length, not info.allow_inf_nan
    if (ge, gt, le, lt, min_len, max_len) == (None,) * 6 and not finite:
        return inner

    def check(raw: Any, loc: Loc, errors: list[ErrorDetail]) -> Any:
        # an error's `input` is the value as given (pydantic's): "0" from the environment
        v = inner(raw, loc, errors)
        if v is _FAIL or v is None:
            return v
        if isinstance(v, int | float) and not isinstance(v, bool):
            if finite and isinstance(v, float) and not math.isfinite(v):
                return _fail(errors, loc, "finite_number", raw)
            # pydantic's order: upper bounds first (it matters for NaN, which fails them all)
            if le is not None and not v <= le:
                return _error(errors, loc, "less_than_equal",
                              f"Input should be less than or equal to {_bound(le)}", raw)
            if lt is not None and not v < lt:
                return _error(errors, loc, "less_than",
                              f"Input should be less than {_bound(lt)}", raw)
            if ge is not None and not v >= ge:
                return _error(errors, loc, "greater_than_equal",
                              f"Input should be greater than or equal to {_bound(ge)}", raw)
            if gt is not None and not v > gt:
                return _error(errors, loc, "greater_than",
                              f"Input should be greater than {_bound(gt)}", raw)
        elif isinstance(v, str):
            if _SURROGATE.search(v):  # pydantic measures a constrained text as Rust text
                return _fail(errors, loc, "string_unicode", raw)
            if min_len is not None and len(v) < min_len:
                return _error(errors, loc, "string_too_short",
                              f"String should have at least {_n(min_len, 'character')}", raw)
            if max_len is not None and len(v) > max_len:
                return _error(errors, loc, "string_too_long",
                              f"String should have at most {_n(max_len, 'character')}", raw)
        elif isinstance(v, list | tuple | dict):
            what = ("Dictionary" if isinstance(v, dict) else
                    "Tuple" if isinstance(v, tuple) else "List")
            if min_len is not None and len(v) < min_len:
                return _error(errors, loc, "too_short", f"{what} should have at least "
                              f"{_n(min_len, 'item')} after validation, not {len(v)}", raw)
            if max_len is not None and len(v) > max_len:
                return _error(errors, loc, "too_long", f"{what} should have at most "
                              f"{_n(max_len, 'item')} after validation, not {len(v)}", raw)
        return v
    return check


def _bound(n: float) -> str:
    """A bound as pydantic's messages show it, the way Rust prints a number: the shortest
    digits that read back as it, never an exponent (0.0 is "0", 1e-07 "0.0000001", 1e23
    "100000000000000000000000")."""
    if isinstance(n, int):
        return str(n)
    if not math.isfinite(n):
        return "NaN" if math.isnan(n) else "inf" if n > 0 else "-inf"
    sign = "-" if math.copysign(1.0, n) < 0 else ""
    mantissa, _, exponent = repr(abs(n)).partition("e")
    if not exponent:
        return sign + mantissa.removesuffix(".0")
    digits = mantissa.replace(".", "")
    point = mantissa.find(".") if "." in mantissa else len(mantissa)
    point += int(exponent)
    if point <= 0:
        return f"{sign}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return sign + digits + "0" * (point - len(digits))
    return f"{sign}{digits[:point]}.{digits[point:]}"


def _n(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _with_validators(inner: Check, before: list[Callable[[Any], Any]],
                     after: list[Callable[[Any], Any]]) -> Check:
    if not before and not after:
        return inner

    def check(v: Any, loc: Loc, errors: list[ErrorDetail]) -> Any:
        for fn in before:
            v = _call(fn, (v,), loc, errors, v)
            if v is _FAIL:
                return _FAIL
        v = inner(v, loc, errors)
        if v is _FAIL:
            return _FAIL
        for fn in after:
            v = _call(fn, (v,), loc, errors, v)
            if v is _FAIL:
                return _FAIL
        return v
    return check


def _label(tp: Any) -> str:
    """A union member's name in `loc`, as pydantic writes it: `list[str]`, `dict[str,int]`."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _label(typing.get_args(tp)[0])
    if origin is Literal:
        return f"literal[{','.join(repr(a) for a in typing.get_args(tp))}]"
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{','.join(_label(a) for a in typing.get_args(tp))}]"
    return getattr(tp, "__name__", str(tp))


def _compile_type(tp: Any, info: FieldInfo | None = None) -> Check:
    """The check for annotation `tp` (constraints from `info` apply at its outer level)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        base, meta = args[0], args[1:]
        before = [m.func for m in reversed(meta) if isinstance(m, BeforeValidator)]
        after = [m.func for m in meta if isinstance(m, AfterValidator)]
        disc = next((m for m in meta if isinstance(m, Discriminator)), None)
        inner_info = next((m for m in meta if isinstance(m, FieldInfo)), None)
        if disc is not None:
            members = {}
            for member in typing.get_args(base):
                tag = next(m.tag for m in typing.get_args(member)[1:] if isinstance(m, Tag))
                members[tag] = _compile_type(member)
            inner = _tagged(disc.func, members)
        else:
            # constraints belong to the base type: checked before the after-validators run
            inner = _compile_type(base, inner_info or info)
        return _with_validators(inner, before, after)
    if origin in (Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) < len(args):
            inner = (_compile_type(rest[0], info) if len(rest) == 1 else
                     _union([(_label(a), _compile_type(a)) for a in rest]))
            return _optional(inner) if len(rest) == 1 else _constrained(_optional(inner), info)
        return _constrained(_union([(_label(a), _compile_type(a)) for a in args]), info)
    if origin is Literal:
        return _literal(args)
    if origin in (list, Sequence, typing.List):  # noqa: UP006
        return _constrained(_list(_compile_type(args[0]) if args else _check_any, False,
                                  info.max_length if info is not None else None), info)
    if origin is tuple:
        item = _compile_type(args[0]) if args else _check_any
        return _constrained(_list(item, True, info.max_length if info is not None else None),
                            info)
    if origin in (dict, Mapping, typing.Dict):  # noqa: UP006
        k, v = (args if args else (Any, Any))
        return _constrained(_dict(_compile_type(k), _compile_type(v)), info)
    if origin is ClassVar:
        return _check_any
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        model = tp

        def check_model(v: Any, loc: Loc, errors: list[ErrorDetail]) -> Any:
            return _compiled(model).validate(v, loc, errors)
        return check_model
    if tp in _SCALARS:
        return _constrained(_SCALARS[tp], info)
    if tp is list or tp is tuple or tp is dict:
        return _compile_type(tp[Any] if tp is not dict else dict[Any, Any], info)
    if isinstance(tp, type):
        return _instance(tp)
    raise TypeError(f"watchdog.schema cannot check the annotation {tp!r}")


class _Compiled:
    """A model's fields as checks, with its validators, built at first use."""

    __slots__ = ("before", "cls", "extra_forbid", "fields", "keys", "model_after",
                 "populate_by_name", "shadowed")

    def __init__(self, cls: type[BaseModel]) -> None:
        self.cls = cls
        hints = typing.get_type_hints(cls, include_extras=True)
        config = cls.model_config
        self.extra_forbid = config.get("extra") == "forbid"
        self.populate_by_name = bool(config.get("populate_by_name"))
        field_before: dict[str, list[Callable[..., Any]]] = {}
        field_after: dict[str, list[Callable[..., Any]]] = {}
        self.before: list[Callable[[Any], Any]] = []
        self.model_after: list[Callable[[Any], Any]] = []
        for klass in reversed(cls.__mro__):
            for attr in vars(klass).values():
                func = attr.__func__ if isinstance(attr, classmethod | staticmethod) else attr
                mark = getattr(func, _MODE, None)
                if mark is None:
                    continue
                kind, mode, names = mark
                bound = attr.__get__(None, cls) if isinstance(attr, classmethod) else func
                if kind == "model":
                    (self.before if mode == "before" else self.model_after).append(bound)
                    continue
                for name in names:
                    (field_before if mode == "before" else field_after).setdefault(
                        name, []).append(bound)
        self.fields: list[tuple[FieldInfo, Check, list[_FieldCheck], list[_FieldCheck]]] = []
        for name, info in cls.__schema_fields__.items():  # type: ignore[attr-defined]
            tp = hints[name]
            info.annotation = tp
            info.metadata = typing.get_args(tp)[1:] if typing.get_origin(
                tp) is typing.Annotated else ()
            self.fields.append((info, _compile_type(tp, info),
                                [_arity(f) for f in reversed(field_before.get(name, []))],
                                [_arity(f) for f in field_after.get(name, [])]))
        self.keys = frozenset(k for info, *_ in self.fields
                              for k in ((info.key, info.name) if self.populate_by_name
                                        else (info.key,)))
        # a field's name -> its alias: with populate_by_name, the name given beside the alias
        # is an unknown key (the alias wins), as in pydantic
        self.shadowed = {info.name: info.key for info, *_ in self.fields
                         if self.populate_by_name and info.key != info.name}

    def validate(self, v: Any, loc: Loc, errors: list[ErrorDetail],
                 into: BaseModel | None = None) -> Any:
        if isinstance(v, self.cls) and into is None:
            return v
        for fn in self.before:
            v = _call(fn, (v,), loc, errors, v)
            if v is _FAIL:
                return _FAIL
        if isinstance(v, self.cls) and into is None:
            return v
        if not isinstance(v, Mapping):
            return _error(errors, loc, "model_type", f"Input should be a valid dictionary or "
                          f"instance of {self.cls.__name__}", v)
        return self.build(v, loc, errors, into)

    def build(self, data: Mapping[Any, Any], loc: Loc, errors: list[ErrorDetail],
              into: BaseModel | None) -> Any:
        start = len(errors)
        values: dict[str, Any] = {}
        for info, check, before, after in self.fields:
            key = info.key
            if key in data:
                raw = data[key]
            elif self.populate_by_name and info.name in data:
                key = info.name  # where a problem is: the key the data used
                raw = data[key]
            elif info.is_required():
                _error(errors, (*loc, key), "missing", "Field required", data)
                continue
            else:
                values[info.name] = info.get_default()
                continue
            where = (*loc, key)
            v = raw
            for fn in before:
                v = self._run(fn, v, info, values, where, errors)
                if v is _FAIL:
                    break
            if v is _FAIL:
                continue
            v = check(v, where, errors)
            if v is _FAIL:
                continue
            for fn in after:
                v = self._run(fn, v, info, values, where, errors)
                if v is _FAIL:
                    break
            if v is not _FAIL:
                values[info.name] = v
        if self.extra_forbid:
            for k in data:
                if not isinstance(k, str):
                    _error(errors, (*loc, _loc_key(k)), "invalid_key", "Keys should be strings",
                           k)
                elif _SURROGATE.search(k):
                    # pydantic gives up on the mapping here: this one problem, at its location
                    del errors[start:]
                    return _fail(errors, loc, "string_unicode", k)
                elif k not in self.keys or (k in self.shadowed and self.shadowed[k] in data):
                    _error(errors, (*loc, k), "extra_forbidden", "Extra inputs are not permitted",
                           data[k])
        if len(errors) > start:
            return _FAIL
        inst = into if into is not None else object.__new__(self.cls)
        for name, value in values.items():
            object.__setattr__(inst, name, value)
        for check_model in self.model_after:
            got = _call(check_model, (inst,), loc, errors, data)
            if got is _FAIL:
                return _FAIL
            if into is not None and got is not inst:
                for name in self.cls.__schema_fields__:  # type: ignore[attr-defined]
                    object.__setattr__(inst, name, getattr(got, name))
            else:
                inst = got
        return inst

    @staticmethod
    def _run(fn: _FieldCheck, v: Any, info: FieldInfo, values: dict[str, Any],
             loc: Loc, errors: list[ErrorDetail]) -> Any:
        func, wants_info = fn
        if wants_info:
            return _call(func, (v, ValidationInfo(values, info.name)), loc, errors, v)
        return _call(func, (v,), loc, errors, v)


# A field validator and whether it takes a ValidationInfo: `(cls, value, info)`. Read once when
# the model compiles, not at every value it checks.
_FieldCheck = tuple[Callable[..., Any], bool]


def _arity(fn: Callable[..., Any]) -> _FieldCheck:
    code = getattr(getattr(fn, "__func__", fn), "__code__", None)
    return fn, code is not None and code.co_argcount >= 3


def _compiled(cls: type[BaseModel]) -> _Compiled:
    got: _Compiled | None = cls.__dict__.get("__schema_compiled__")
    if got is None:
        got = _Compiled(cls)
        cls.__schema_compiled__ = got  # type: ignore[attr-defined]
    return got
