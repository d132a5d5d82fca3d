"""watchdog.schema: the validation the rule files, settings and API bodies go through.

What pydantic did for us and its users saw (lax conversions, every problem in one pass, `loc`s
that point into the document, its messages), checked on small models of our own, plus the rule
file model fuzzed with hypothesis: whatever the data, validation answers a model or a
ValidationError — never another exception.
"""

from __future__ import annotations

import copy
import json
import math
import pickle
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from watchdog.model import RuleFileModel
from watchdog.schema import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    SecretStr,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)


class Inner(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    n: int
    tags: list[str] = Field(default_factory=list)


def _twice(v: Any) -> Any:
    return v * 2


def _positive(v: float) -> float:
    if v <= 0:
        raise ValueError("must be positive")
    return v


class Outer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    name: str = Field(min_length=1, max_length=5)
    for_: float = Field(0.0, alias="for")
    on: bool = False
    level: Literal["low", "high"] = "low"
    ratio: float = Field(0.5, gt=0.0, lt=1.0)
    count: int = Field(1, ge=1, le=3)
    inner: Inner | None = None
    inners: list[Inner] = Field(default_factory=list)
    by_key: dict[str, int] = Field(default_factory=dict)
    doubled: Annotated[float, BeforeValidator(_twice), AfterValidator(_positive)] = 1.0
    either: list[str] | dict[str, list[str]] = Field(default_factory=list)
    path: Path = Path(".")
    secret: SecretStr | None = None


def errors_of(model: type[BaseModel], data: Any) -> list[tuple[tuple[Any, ...], str, str]]:
    with pytest.raises(ValidationError) as e:
        model.model_validate(data)
    return [(tuple(x["loc"]), x["type"], x["msg"]) for x in e.value.errors()]


def test_lax_conversions_as_pydantic_makes_them() -> None:
    m = Outer.model_validate({"name": "a", "for": "2.5", "on": "yes", "ratio": "0.25",
                              "count": "2", "by_key": {"x": 3.0}, "inner": {"n": "7"},
                              "path": "/tmp/x", "secret": "s3cret"})
    assert m.for_ == 2.5 and m.on is True and m.ratio == 0.25 and m.count == 2
    assert m.by_key == {"x": 3} and isinstance(m.by_key["x"], int)
    assert m.inner == Inner(n=7) and m.path == Path("/tmp/x")
    assert m.secret is not None and m.secret.get_secret_value() == "s3cret"
    assert Outer.model_validate({"name": "a", "on": 0}).on is False


def test_every_problem_in_one_pass_with_its_location() -> None:
    got = errors_of(Outer, {"name": "", "for": "soon", "on": "perhaps", "level": "mid",
                            "ratio": 1, "count": 9, "inner": {"n": 1.5, "x": 1},
                            "inners": [{"n": 1}, {"tags": [1]}], "by_key": {"k": "v"},
                            "doubled": -1, "typo": True})
    assert got == [
        (("name",), "string_too_short", "String should have at least 1 character"),
        (("for",), "float_parsing",
         "Input should be a valid number, unable to parse string as a number"),
        (("on",), "bool_parsing", "Input should be a valid boolean, unable to interpret input"),
        (("level",), "literal_error", "Input should be 'low' or 'high'"),
        (("ratio",), "less_than", "Input should be less than 1"),
        (("count",), "less_than_equal", "Input should be less than or equal to 3"),
        (("inner", "n"), "int_from_float",
         "Input should be a valid integer, got a number with a fractional part"),
        (("inner", "x"), "extra_forbidden", "Extra inputs are not permitted"),
        (("inners", 1, "n"), "missing", "Field required"),
        (("inners", 1, "tags", 0), "string_type", "Input should be a valid string"),
        (("by_key", "k"), "int_parsing",
         "Input should be a valid integer, unable to parse string as an integer"),
        (("doubled",), "value_error", "Value error, must be positive"),
        (("typo",), "extra_forbidden", "Extra inputs are not permitted"),
    ]


def test_wrong_containers_and_missing_fields() -> None:
    assert errors_of(Outer, {"inners": {"n": 1}, "by_key": [1]}) == [
        (("name",), "missing", "Field required"),
        (("inners",), "list_type", "Input should be a valid list"),
        (("by_key",), "dict_type", "Input should be a valid dictionary"),
    ]
    assert errors_of(Outer, "text") == [
        ((), "model_type", "Input should be a valid dictionary or instance of Outer")]


def test_union_reports_each_member_under_its_name() -> None:
    assert Outer.model_validate({"name": "a", "either": {"t": ["x"]}}).either == {"t": ["x"]}
    assert errors_of(Outer, {"name": "a", "either": 5}) == [
        (("either", "list[str]"), "list_type", "Input should be a valid list"),
        (("either", "dict[str,list[str]]"), "dict_type", "Input should be a valid dictionary"),
    ]


def test_alias_and_name_both_populate_and_dump_by_alias() -> None:
    assert Outer.model_validate({"name": "a", "for_": 3}).for_ == 3.0
    m = Outer(name="a", for_=4)
    assert m.model_dump(by_alias=True)["for"] == 4.0
    assert "for_" in m.model_dump()


def test_a_field_given_by_its_name_is_reported_by_its_name() -> None:
    # pydantic: the key the data used is the location; with the alias given too, the name is
    # an unknown key (the alias wins)
    assert errors_of(Outer, {"name": "a", "for_": "soon"}) == [
        (("for_",), "float_parsing",
         "Input should be a valid number, unable to parse string as a number")]
    assert errors_of(Outer, {"name": "a", "for": 1, "for_": 2}) == [
        (("for_",), "extra_forbidden", "Extra inputs are not permitted")]


def test_defaults_are_fresh_and_not_validated() -> None:
    a, b = Outer(name="a"), Outer(name="b")
    assert a.inners == [] and a.inners is not b.inners
    assert a.doubled == 1.0  # the default is not doubled: defaults are not validated


class Cmp(BaseModel):
    model_config = ConfigDict(frozen=True)
    op: str
    n: float


def test_frozen_models_refuse_assignment_and_copy_with_update() -> None:
    m = Outer(name="a")
    with pytest.raises(TypeError):
        m.name = "b"  # type: ignore[misc]
    n = m.model_copy(update={"name": "b"})
    assert (m.name, n.name) == ("a", "b") and n.count == m.count
    assert hash(Cmp(op=">", n=1)) == hash(Cmp(op=">", n=1.0))  # frozen: usable as a key
    with pytest.raises(TypeError):
        hash(Inner(n=1))  # a list field: unhashable, as pydantic's


def test_round_trips_json_pickle_and_deepcopy() -> None:
    m = Outer.model_validate({"name": "a", "inners": [{"n": 1, "tags": ["x"]}],
                              "secret": "s3cret", "ratio": 0.75})
    text = m.model_dump_json()
    assert "s3cret" not in text and json.loads(text)["secret"] == "**********"
    back = Outer.model_validate_json(m.model_dump_json(by_alias=True))
    assert back.inners == m.inners and back.ratio == 0.75
    assert pickle.loads(pickle.dumps(m)) == m
    deep = copy.deepcopy(m)
    assert deep == m and deep.inners is not m.inners


def test_secrets_never_print() -> None:
    m = Outer(name="a", secret=SecretStr("s3cret"))
    assert "s3cret" not in repr(m) and "s3cret" not in str(m.secret)
    with pytest.raises(ValidationError) as e:
        Outer.model_validate({"name": "a", "secret": 5})
    assert "string_type" in str(e.value)


def test_model_json_that_is_not_json_is_a_validation_error() -> None:
    with pytest.raises(ValidationError) as e:
        Outer.model_validate_json("{nope")
    assert e.value.errors()[0]["type"] == "json_invalid"


class Validated(BaseModel):
    model_config = ConfigDict(extra="forbid")
    low: int = 0
    high: int = 0
    seen: list[str] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _short(cls, v: Any) -> Any:
        return {"low": v, "high": v} if isinstance(v, int) else v

    @field_validator("high", mode="before")
    @classmethod
    def _strip(cls, v: Any) -> Any:
        return v.strip() if isinstance(v, str) else v

    @field_validator("high")
    @classmethod
    def _not_below(cls, v: int, info: ValidationInfo) -> int:
        if v < info.data.get("low", 0):
            raise ValueError(f"{info.field_name} below low")
        return v

    @model_validator(mode="after")
    def _order(self) -> Validated:
        if self.high > 100:
            raise ValueError("too high")
        return self


def test_validators_before_after_and_with_info() -> None:
    assert Validated.model_validate(5) == Validated(low=5, high=5)
    assert Validated.model_validate({"low": 1, "high": " 2 "}).high == 2
    assert errors_of(Validated, {"low": 3, "high": 2}) == [
        (("high",), "value_error", "Value error, high below low")]
    # the model's own check runs only when every field was valid, at the model's location
    assert errors_of(Validated, {"high": 101}) == [((), "value_error", "Value error, too high")]
    assert errors_of(Validated, {"high": 101, "low": "x"}) == [
        (("low",), "int_parsing",
         "Input should be a valid integer, unable to parse string as an integer")]
    with pytest.raises(ValidationError):
        Validated(high=101)  # the constructor validates too


class Cat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    meow: str


class Dog(BaseModel):
    model_config = ConfigDict(extra="forbid")
    woof: str


def _kind(v: Any) -> str:
    return "cat" if isinstance(v, dict) and "meow" in v else "dog"


class Pets(BaseModel):
    pets: list[Annotated[Annotated[Cat, Tag("cat")] | Annotated[Dog, Tag("dog")],
                         Discriminator(_kind)]]


def test_discriminated_union_points_into_the_member_meant() -> None:
    got = Pets.model_validate({"pets": [{"meow": "x"}, {"woof": "y"}]})
    assert isinstance(got.pets[0], Cat) and isinstance(got.pets[1], Dog)
    assert errors_of(Pets, {"pets": [{"meow": 1}, {"bark": "y"}]}) == [
        (("pets", 0, "cat", "meow"), "string_type", "Input should be a valid string"),
        (("pets", 1, "dog", "woof"), "missing", "Field required"),
        (("pets", 1, "dog", "bark"), "extra_forbidden", "Extra inputs are not permitted"),
    ]


def test_ignored_extras_and_unfrozen_models() -> None:
    class Loose(BaseModel):
        a: int = 0

    m = Loose.model_validate({"a": 1, "b": 2})
    m.a = 3
    assert m.a == 3 and not hasattr(m, "b")


def test_integers_floats_and_non_finite_values() -> None:
    class Nums(BaseModel):
        i: int = 0
        f: float = 0.0
        fin: Annotated[float, Field(allow_inf_nan=False)] = 0.0

    assert Nums.model_validate({"i": 4.0, "f": "inf"}).f == math.inf
    assert Nums.model_validate({"i": "12"}).i == 12
    assert [e[1] for e in errors_of(Nums, {"i": math.nan})] == ["finite_number"]
    assert [e[1] for e in errors_of(Nums, {"fin": "nan"})] == ["finite_number"]
    assert [e[1] for e in errors_of(Nums, {"i": [1]})] == ["int_type"]
    assert [e[1] for e in errors_of(Nums, {"f": None})] == ["float_type"]


# ---- the rule file model under random data --------------------------------------------------

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                     st.floats(allow_nan=True), st.text(max_size=8),
                     st.sampled_from(["5m", "> 1", "up", "page", "0", "", "yes", "1e309"]))
_keys = st.sampled_from(["groups", "name", "rules", "alert", "expr", "for", "labels",
                         "annotations", "severities", "threshold", "baseline", "actions",
                         "steps", "webhook", "url", "receivers", "routes", "slos", "service",
                         "objective", "sli", "error_query", "total_query", "record", "limit",
                         "interval", "match_re", "digest", "x"])
_data = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(_keys, inner, max_size=5)), max_leaves=30)


@settings(max_examples=400, deadline=None)
@given(_data)
def test_rule_file_model_answers_a_model_or_validation_errors(data: Any) -> None:
    try:
        RuleFileModel.model_validate(data)
    except ValidationError as e:
        for err in e.errors():
            assert isinstance(err["loc"], tuple) and err["msg"] and err["type"]


# ---- pydantic's conversions to the letter (mismatches found by tests/test_schema_oracle.py) ---

class Scalars(BaseModel):
    s: str = ""
    i: int = 0
    f: float = 0.0
    b: bool = False
    q: Literal[0, 1, 2] = 0
    level: Literal["low", "high"] = "low"
    short: str = Field("x", min_length=1, max_length=3)


def _value(field: str, raw: Any) -> Any:
    return getattr(Scalars.model_validate({field: raw}), field)


def _refusal(field: str, raw: Any) -> tuple[str, str]:
    [(_, type_, msg)] = errors_of(Scalars, {field: raw})
    return type_, msg


def test_text_from_bytes_as_pydantic_reads_it() -> None:
    # YAML's `!!binary` gives bytes: pydantic's lax str decodes UTF-8
    assert _value("s", b"api") == "api"
    assert _refusal("s", b"\xff") == (
        "string_unicode", "Input should be a valid string, unable to parse raw data as a unicode "
                          "string")


def test_integers_from_text_as_pydantic_parses_them() -> None:
    # pydantic's grammar, not Python's int()/float(): no exponent, no bare point, ASCII digits
    for text in ("1e3", "1.", "0e0", "١٢", "5 5", "1__0", "_1", "+-1", "0x10"):
        assert _refusal("i", text) == (
            "int_parsing", "Input should be a valid integer, unable to parse string as an "
                           "integer"), text
    for text, n in (("5.00", 5), (" 7 ", 7), ("1_000", 1000), ("+5", 5), ("-007", -7),
                    ("00.0", 0), (b"5", 5), ("9" * 25, int("9" * 25))):
        assert _value("i", text) == n and type(_value("i", text)) is int, text
    # a float past int64 is refused, as pydantic does (a Go int could not hold it either)
    assert _refusal("i", 1e20) == (
        "int_parsing_size", "Unable to parse input string as an integer, exceeded maximum size")
    assert _value("i", 9.2e18) == int(9.2e18)
    assert _refusal("i", "9" * 4301)[0] == "int_parsing_size"


def test_numbers_from_text_as_pydantic_parses_them() -> None:
    assert _refusal("f", "١٢") == (
        "float_parsing", "Input should be a valid number, unable to parse string as a number")
    assert _refusal("f", " 1_0 ")[0] == "float_parsing"  # underscores only without blanks
    assert _value("f", "1_0") == 10.0 and _value("f", b"2.5") == 2.5
    assert _value("f", "Infinity") == math.inf and _value("f", " .5 ") == 0.5
    assert _refusal("f", 2**1100) == ("float_type", "Input should be a valid number")


def test_booleans_as_pydantic_reads_them() -> None:
    assert _value("b", "YES") is True and _value("b", b"off") is False
    assert _value("b", 1.0) is True and _value("b", -0.0) is False
    parsing = ("bool_parsing", "Input should be a valid boolean, unable to interpret input")
    typed = ("bool_type", "Input should be a valid boolean")
    assert _refusal("b", " yes ") == parsing  # no blanks around the word
    assert _refusal("b", "\tyes") == parsing
    assert _refusal("b", 2) == parsing and _refusal("b", 2.0) == parsing
    for raw in (1.5, math.nan, math.inf, 1e20, 2**63, -(2**63) - 1):
        assert _refusal("b", raw) == typed, raw


def test_literals_compare_as_pydantic_does() -> None:
    # equal values pass (True and 1.0 are 1) and give the literal itself; text never is a number
    assert _value("q", True) == 1 and type(_value("q", True)) is int
    assert _value("q", 2.0) == 2 and type(_value("q", 2.0)) is int
    assert _refusal("q", "1") == ("literal_error", "Input should be 0, 1 or 2")
    assert _refusal("q", 2**63) == (
        "int_parsing_size", "Unable to parse input string as an integer, exceeded maximum size")


def test_lone_surrogates_are_not_text_where_pydantic_reads_the_text() -> None:
    # JSON bodies may hold "\ud800": pydantic refuses it wherever it reads the characters
    unicode = ("string_unicode",
               "Input should be a valid string, unable to parse raw data as a unicode string")
    for field in ("i", "f", "b", "level", "short"):
        assert _refusal(field, "\ud800") == unicode, field
    assert _refusal("q", "\ud800")[0] == "literal_error"  # no text among its choices
    assert _value("s", "\ud800") == "\ud800"  # a plain str field keeps it, as pydantic's


class Bounded(BaseModel):
    ratio: float = Field(0.5, gt=0.0, lt=1.0)
    days: float | None = Field(None, ge=0, le=90.0)
    small: float = Field(1.0, ge=1e-7)
    large: float = Field(0.0, le=1e23)
    items: list[int] = Field(default_factory=list, max_length=2)


def test_bounds_are_worded_and_ordered_as_pydantic() -> None:
    # pydantic prints bounds the way Rust prints numbers: 0.0 is "0", never an exponent
    assert errors_of(Bounded, {"ratio": 0}) == [
        (("ratio",), "greater_than", "Input should be greater than 0")]
    assert errors_of(Bounded, {"small": 0}) == [
        (("small",), "greater_than_equal", "Input should be greater than or equal to 0.0000001")]
    # the shortest digits that read back as the bound, not the float's exact value
    assert errors_of(Bounded, {"large": 1e24}) == [
        (("large",), "less_than_equal",
         "Input should be less than or equal to 100000000000000000000000")]
    # NaN fails every bound: pydantic reports the upper one (le, lt before ge, gt)
    assert errors_of(Bounded, {"ratio": math.nan, "days": math.nan}) == [
        (("ratio",), "less_than", "Input should be less than 1"),
        (("days",), "less_than_equal", "Input should be less than or equal to 90")]


def test_a_list_too_long_is_refused_before_its_items() -> None:
    assert errors_of(Bounded, {"items": [1, "x", 3, "y"]}) == [
        (("items",), "too_long", "List should have at most 2 items after validation, not 4")]


def test_dataclass_values_dump_as_dicts() -> None:
    from watchdog.model import AlertingRule

    rule = AlertingRule.model_validate({"alert": "A", "expr": "up", "threshold": "> 1"})
    assert rule.model_dump()["threshold"] == {"op": ">", "number": 1.0}
    assert rule.threshold is not None and rule.threshold.holds(2.0)


def test_keys_in_locations_as_pydantic_writes_them() -> None:
    # a key with a lone surrogate (JSON may carry one) is shown with replacement characters,
    # one per byte Python would write for it; a key that is not text by its repr, ints as ints
    assert errors_of(Outer, {"name": "a", "by_key": {"a\ud800": "x", 7: "y", None: "z"}}) == [
        (("by_key", "a\ufffd\ufffd\ufffd"), "int_parsing",
         "Input should be a valid integer, unable to parse string as an integer"),
        (("by_key", 7, "[key]"), "string_type", "Input should be a valid string"),
        (("by_key", 7), "int_parsing",
         "Input should be a valid integer, unable to parse string as an integer"),
        (("by_key", "None", "[key]"), "string_type", "Input should be a valid string"),
        (("by_key", "None"), "int_parsing",
         "Input should be a valid integer, unable to parse string as an integer"),
    ]


def test_unknown_keys_that_are_not_text() -> None:
    # a key that is no string is an invalid key, not an unknown field
    assert errors_of(Inner, {"n": 1, 5: 1, "x": 2}) == [
        ((5,), "invalid_key", "Keys should be strings"),
        (("x",), "extra_forbidden", "Extra inputs are not permitted")]
    # a key that is not Unicode text refuses the whole mapping, alone, at its location
    unicode = "Input should be a valid string, unable to parse raw data as a unicode string"
    assert errors_of(Outer, {"name": "", "inner": {"n": "x", "\udc00": 1}}) == [
        (("name",), "string_too_short", "String should have at least 1 character"),
        (("inner",), "string_unicode", unicode)]
