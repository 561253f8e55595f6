"""`replace` for the projections' frozen dataclasses, without `dataclasses.replace`'s per-call
introspection: the folds call it a few times per event (40 % of a worker's CPU with the library's)."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, TypeVar

T = TypeVar("T")

_FIELDS: dict[type, frozenset[str]] = {}


def replace(obj: T, **changes: Any) -> T:
    """A copy of `obj` with `changes`; for plain-field dataclasses (no __post_init__, no slots)."""
    cls = type(obj)
    if (names := _FIELDS.get(cls)) is None:
        names = _FIELDS[cls] = frozenset(f.name for f in fields(cls))  # type: ignore[arg-type]
    if not names.issuperset(changes):
        raise TypeError(f"{cls.__name__} has no field {sorted(changes.keys() - names)}")
    new = object.__new__(cls)
    state = new.__dict__
    state.update(obj.__dict__)
    state.update(changes)
    return new
