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
        (("ratio",), "less_than", "Input should be less than 1"),  # as pydantic prints 1.0
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
