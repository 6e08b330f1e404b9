"""meshnet.lite.records behaves like the dataclasses subset it stands in for, and refuses the rest."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from meshnet.diagnose.conntrack.entry import CtEntry
from meshnet.lite import records


@records.dataclass(frozen=True)
class Point:
    x: int
    y: int = 0
    tags: list[str] = records.field(default_factory=list)


@records.dataclass
class Mutable:
    name: str
    count: int = records.field(default=1)

    def __post_init__(self) -> None:
        self.count = max(self.count, 0)


@records.dataclass(frozen=True)
class Point3(Point):
    z: int = 0


@records.dataclass(slots=True)
class Slotted:
    a: int
    b: str = "b"


def test_defaults_and_default_factory_are_fresh_per_instance() -> None:
    p, q = Point(1), Point(2)
    assert (p.y, p.tags) == (0, [])
    p.tags.append("t")
    assert q.tags == []
    assert Mutable("m").count == 1 and Mutable("m", -5).count == 0  # __post_init__ ran


def test_frozen_rejects_assignment_and_deletion() -> None:
    p = Point(1)
    with pytest.raises(records.FrozenInstanceError):
        p.x = 2  # type: ignore[misc]  # the point: a frozen record refuses it at run time
    with pytest.raises(records.FrozenInstanceError):
        del p.x
    m = Mutable("m")
    m.count = 5
    assert m.count == 5


def test_eq_hash_and_repr_match_dataclasses() -> None:
    @dataclasses.dataclass(frozen=True)
    class Std:
        x: int
        y: int = 0
        tags: tuple[str, ...] = ()

    # tags as a tuple (the field says list): a frozen record hashes its values, and a list would not hash
    ours = Point(1, 2, ("t",))  # type: ignore[arg-type]
    assert repr(ours).split("(", 1)[1] == repr(Std(1, 2, ("t",))).split("(", 1)[1]
    assert repr(ours).startswith("Point(")
    assert ours == Point(1, 2, ("t",)) and ours != Point(1, 3, ("t",))  # type: ignore[arg-type]
    assert Point3(1) != Point(1)  # different classes never compare equal
    assert hash(ours) == hash(Point(1, 2, ("t",)))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        hash(Mutable("m"))  # unfrozen records are unhashable, like dataclasses


def test_inheritance_fields_replace_and_asdict() -> None:
    p = Point3(1, 2, ["a"], 3)
    assert [f.name for f in records.fields(p)] == ["x", "y", "tags", "z"]
    assert records.replace(p, z=9) == Point3(1, 2, ["a"], 9)
    assert records.asdict(p) == {"x": 1, "y": 2, "tags": ["a"], "z": 3}
    # records.asdict also walks plain containers, which dataclasses' signature (what mypy reads) refuses
    assert records.asdict({"k": [p]}) == {"k": [{"x": 1, "y": 2, "tags": ["a"], "z": 3}]}  # type: ignore[call-overload]
    assert records.is_dataclass(p) and records.is_dataclass(Point3) and not records.is_dataclass(1)
    with pytest.raises(TypeError, match="no field"):
        records.replace(p, nope=1)  # type: ignore[call-arg]  # the point: an unknown field is refused


def test_constructor_errors_are_type_errors() -> None:
    # Each call is wrong on purpose (mypy says so too, hence the ignores): refused at run time as well.
    with pytest.raises(TypeError, match="missing"):
        Point()  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected"):
        Point(1, w=2)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="multiple"):
        Point(1, x=2)  # type: ignore[misc]
    with pytest.raises(TypeError, match="positional"):
        Point(1, 2, [], 4)  # type: ignore[call-arg]


def test_slots_are_real_slots() -> None:
    s = Slotted(1)
    assert Slotted.__slots__ == ("a", "b") and not hasattr(s, "__dict__")
    with pytest.raises(AttributeError):
        s.other = 1  # type: ignore[attr-defined]  # the point: a slotted record has no such attribute
    assert (s.a, s.b, s) == (1, "b", Slotted(1, "b"))
    assert not hasattr(CtEntry(4, 6, "a", "b", 1, 2, "b", "a", 2, 1), "__dict__")


@pytest.mark.parametrize("options", [{"order": True}, {"kw_only": True}, {"eq": False}, {"unsafe_hash": True}])
def test_unsupported_dataclass_options_are_rejected(options: dict[str, bool]) -> None:
    with pytest.raises(TypeError, match="does not support"):
        records.dataclass(**options)


@pytest.mark.parametrize("options", [{"repr": False}, {"compare": False}, {"init": False}])
def test_unsupported_field_options_are_rejected(options: dict[str, bool]) -> None:
    with pytest.raises(TypeError, match="does not support"):
        records.field(default=1, **options)  # type: ignore[call-overload]  # the point: refused at run time
    with pytest.raises(ValueError):
        records.field(default=1, default_factory=list)  # type: ignore[call-overload]  # the point: refused


def test_importing_it_imports_neither_dataclasses_nor_typing() -> None:
    code = "import sys, meshnet.lite.records; print(sorted({'dataclasses', 'typing', 'inspect'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
