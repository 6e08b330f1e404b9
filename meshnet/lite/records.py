"""A start-up-cheap stand-in for the subset of `dataclasses` meshnet uses.

`import dataclasses` pulls in `inspect` (~11 ms here) and every `@dataclass` compiles its methods
with `exec` (~0.5-1 ms per class). The istio-init and CNI paths create a process per pod and
define ~20 such classes, so that was a third of their run time. These records get the same
behaviour from generic methods that read a per-class field table: no code generation, no inspect.

Supported: `@dataclass`, `@dataclass(frozen=True, slots=True)`, `field(default=, default_factory=)`,
defaults, `__post_init__`, inheritance of fields, repr/eq, hash for frozen classes, `fields()`,
`replace()`, `asdict()`, `is_dataclass()`. Not supported (not used): ordering, kw_only, InitVar,
eq=False, field(repr=/compare=/...): asking for them is a TypeError, never silently ignored.
Slotted records must not use zero-argument `super()` (the class is rebuilt, as in dataclasses).

This is one of the pod-start stand-ins (see docs/applier.md, "Start-up budget").
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing itself costs ~4 ms to import: only type checkers read it
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar

    T = TypeVar("T")


_MISSING: Any = object()
_FIELDS = "__record_fields__"


class _FrozenInstanceError(AttributeError):
    pass


class Field:
    __slots__ = ("name", "default", "default_factory")

    def __init__(self, default: Any = _MISSING, default_factory: Any = _MISSING) -> None:
        self.name = ""
        self.default = default
        self.default_factory = default_factory

    def __repr__(self) -> str:
        return f"Field({self.name!r})"


def _field(*, default: Any = _MISSING, default_factory: Callable[[], Any] | Any = _MISSING,
           **options: Any) -> Any:
    if options:
        raise TypeError(f"meshnet.lite.records.field does not support {sorted(options)[0]}=")
    if default is not _MISSING and default_factory is not _MISSING:
        raise ValueError("cannot specify both default and default_factory")
    return Field(default, default_factory)


def _collect(cls: type) -> tuple[Field, ...]:
    found: dict[str, Field] = {}
    for base in reversed(cls.__mro__[1:]):
        for f in getattr(base, _FIELDS, ()):
            found[f.name] = f
    for name, annotation in cls.__dict__.get("__annotations__", {}).items():
        if str(annotation).startswith(("ClassVar", "typing.ClassVar")):
            continue
        value = cls.__dict__.get(name, _MISSING)
        f = value if isinstance(value, Field) else Field(default=value)
        f.name = name
        if isinstance(value, Field):
            if f.default is _MISSING:
                delattr(cls, name)
            else:
                setattr(cls, name, f.default)
        found[name] = f
    return tuple(found.values())


def _init(self: Any, *args: Any, **kwargs: Any) -> None:
    spec: tuple[Field, ...] = getattr(type(self), _FIELDS)
    if len(args) > len(spec):
        raise TypeError(f"{type(self).__name__}() takes {len(spec)} positional arguments but {len(args)} were given")
    setter = object.__setattr__
    for i, f in enumerate(spec):
        if i < len(args):
            if f.name in kwargs:
                raise TypeError(f"{type(self).__name__}() got multiple values for argument {f.name!r}")
            value = args[i]
        elif f.name in kwargs:
            value = kwargs.pop(f.name)
        elif f.default is not _MISSING:
            value = f.default
        elif f.default_factory is not _MISSING:
            value = f.default_factory()
        else:
            raise TypeError(f"{type(self).__name__}() missing required argument: {f.name!r}")
        setter(self, f.name, value)
    kwargs = {k: v for k, v in kwargs.items() if k not in {f.name for f in spec[: len(args)]}}
    if kwargs:
        raise TypeError(f"{type(self).__name__}() got an unexpected keyword argument {next(iter(kwargs))!r}")
    post = getattr(self, "__post_init__", None)
    if post is not None:
        post()


def _values(self: Any) -> tuple[Any, ...]:
    return tuple(getattr(self, f.name) for f in getattr(type(self), _FIELDS))


def _repr(self: Any) -> str:
    body = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in getattr(type(self), _FIELDS))
    return f"{type(self).__qualname__}({body})"


def _eq(self: Any, other: Any) -> Any:
    if other.__class__ is not self.__class__:
        return NotImplemented
    return _values(self) == _values(other)


def _hash(self: Any) -> int:
    return hash(_values(self))


def _frozen_setattr(self: Any, name: str, value: Any) -> None:
    raise _FrozenInstanceError(f"cannot assign to field {name!r}")


def _frozen_delattr(self: Any, name: str) -> None:
    raise _FrozenInstanceError(f"cannot delete field {name!r}")


def _with_slots(cls: type[T]) -> type[T]:
    """Rebuild `cls` with `__slots__` for its own fields, as dataclasses does (a class cannot gain
    slots after creation). Defaults stay in the field table, so no class attribute shadows a slot."""
    own = [f.name for f in getattr(cls, _FIELDS) if f.name in cls.__dict__.get("__annotations__", {})]
    inherited = {s for base in cls.__mro__[1:] for s in base.__dict__.get("__slots__", ())}
    body = {k: v for k, v in cls.__dict__.items() if k not in own and k not in ("__dict__", "__weakref__")}
    body["__slots__"] = tuple(n for n in own if n not in inherited)
    body["__qualname__"] = cls.__qualname__
    metaclass: Any = type(cls)
    rebuilt: type[T] = metaclass(cls.__name__, cls.__bases__, body)
    return rebuilt


def _decorate(cls: type[T], frozen: bool, slots: bool = False) -> type[T]:
    setattr(cls, _FIELDS, _collect(cls))
    if slots:
        cls = _with_slots(cls)
    # The generic methods, installed by name: the class is a plain `type[T]` to a type checker.
    methods: dict[str, Any] = {"__init__": _init, "__match_args__": tuple(f.name for f in getattr(cls, _FIELDS))}
    if "__repr__" not in cls.__dict__:
        methods["__repr__"] = _repr
    if "__eq__" not in cls.__dict__:
        methods["__eq__"] = _eq
    if "__hash__" not in cls.__dict__ or cls.__dict__["__hash__"] is None:
        methods["__hash__"] = _hash if frozen else None
    if frozen:
        methods["__setattr__"], methods["__delattr__"] = _frozen_setattr, _frozen_delattr
    for name, value in methods.items():
        setattr(cls, name, value)
    return cls


def _dataclass(cls: type[T] | None = None, /, **options: Any) -> Any:
    """Drop-in for `dataclasses.dataclass` (the subset above). Any other option (order, kw_only,
    eq=False, ...) is a TypeError rather than silently ignored behaviour."""
    unsupported = sorted(set(options) - {"frozen", "slots"})
    if unsupported:
        raise TypeError(f"meshnet.lite.records.dataclass does not support {unsupported[0]}=")
    frozen, slots = bool(options.get("frozen", False)), bool(options.get("slots", False))
    if cls is None:
        return lambda c: _decorate(c, frozen, slots)
    return _decorate(cls, frozen, slots)


def _is_dataclass(obj: Any) -> bool:
    return hasattr(obj if isinstance(obj, type) else type(obj), _FIELDS)


def _fields(obj: Any) -> tuple[Field, ...]:
    return getattr(obj if isinstance(obj, type) else type(obj), _FIELDS)


def _replace(obj: T, /, **changes: Any) -> T:
    values = {f.name: getattr(obj, f.name) for f in _fields(obj)}
    unknown = set(changes) - set(values)
    if unknown:
        raise TypeError(f"{type(obj).__name__} has no field {sorted(unknown)[0]!r}")
    values.update(changes)
    return type(obj)(**values)


def _asdict(obj: Any) -> Any:
    if _is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _asdict(getattr(obj, f.name)) for f in _fields(obj)}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(_asdict(v) for v in obj))
    if isinstance(obj, list | tuple):
        return type(obj)(_asdict(v) for v in obj)
    if isinstance(obj, dict):
        return {_asdict(k): _asdict(v) for k, v in obj.items()}
    return obj


# Type checkers see the standard library, whose semantics these reproduce; the program runs these.
if TYPE_CHECKING:
    from dataclasses import FrozenInstanceError, asdict, dataclass, field, fields, is_dataclass, replace
else:
    FrozenInstanceError, asdict, dataclass, field = _FrozenInstanceError, _asdict, _dataclass, _field
    fields, is_dataclass, replace = _fields, _is_dataclass, _replace

__all__ = ["FrozenInstanceError", "asdict", "dataclass", "field", "fields", "is_dataclass", "replace"]
