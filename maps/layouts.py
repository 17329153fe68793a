"""An entry of one ctypes layout rewritten in another, field by name.

A map whose key or value gains, loses or moves a field between releases
declares its previous layouts (`PinnedMap.PREVIOUS_LAYOUTS`), and the
agent carries a pinned map of such a layout over into the new one
(daemon/map_migrate.py) through `convert`: every field the new layout
shares by name with the old one keeps its value, a new field starts at
zero, a field the new layout dropped is left behind. A field whose type
changed is converted when both are integers and the value fits, or both
are structures (field by field again), or both are arrays of the same
element size (the common prefix); anything else is a change `convert`
cannot make, and the map must override `PinnedMap.upgrade`.
"""

from __future__ import annotations

import ctypes
from typing import TypeVar

S = TypeVar("S", bound=ctypes.Structure)

_INTEGER_CODES = "bBhHiIlLqQ"  # ctypes' type codes of the integers; lower case: signed


class LayoutChangeError(ValueError):
    """A field changed in a way `convert` cannot carry over."""


def _fields(ctype: type[ctypes.Structure]) -> dict[str, type]:
    return {f[0]: f[1] for f in ctype._fields_}


def _is_struct(t: type) -> bool:
    return isinstance(t, type) and issubclass(t, ctypes.Structure | ctypes.Union)


def _is_array(t: type) -> bool:
    return isinstance(t, type) and issubclass(t, ctypes.Array)


def _integer(t: type) -> tuple[bool, int] | None:
    """(signed, size) of an integer type, or None."""
    code = getattr(t, "_type_", None)
    if isinstance(code, str) and code in _INTEGER_CODES:
        return code.islower(), ctypes.sizeof(t)
    return None


def _fits(value: int, signed: bool, size: int) -> bool:
    bits = 8 * size
    return -(1 << (bits - 1)) <= value < (1 << (bits - 1)) if signed else 0 <= value < (1 << bits)


def convert(old: ctypes.Structure, new_type: type[S]) -> S:
    """`old` in the layout `new_type`, field by name (see the module's text)."""
    new = new_type()
    have = _fields(type(old))
    for name, ftype in _fields(new_type).items():
        otype = have.get(name)
        if otype is None:
            continue  # a new field: zero
        value = getattr(old, name)
        if otype is ftype:
            setattr(new, name, value)
        elif _is_struct(otype) and _is_struct(ftype):
            setattr(new, name, convert(value, ftype))
        elif _is_array(otype) and _is_array(ftype) and otype._type_ is ftype._type_:
            n = min(otype._length_, ftype._length_)
            getattr(new, name)[:n] = value[:n]
        elif (desc := _integer(ftype)) and _integer(otype):
            if not _fits(value, *desc):
                raise LayoutChangeError(
                    f"{type(old).__name__}.{name} = {value} does not fit the new "
                    f"{ftype.__name__} of {new_type.__name__}.{name}"
                )
            setattr(new, name, value)
        else:
            raise LayoutChangeError(
                f"{type(old).__name__}.{name} changed from {otype.__name__} to "
                f"{ftype.__name__}: {new_type.__name__} needs its own upgrade"
            )
    return new
