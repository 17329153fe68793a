"""maps/layouts.py: an entry of a previous layout rewritten in the new one."""

from __future__ import annotations

import ctypes

import pytest

from porin.maps.layouts import LayoutChangeError, convert
from porin.maps.pinned import PinnedMap


class Inner(ctypes.Structure):
    _fields_ = [("a", ctypes.c_uint16), ("b", ctypes.c_uint16)]


class InnerV2(ctypes.Structure):
    _fields_ = [("b", ctypes.c_uint32), ("c", ctypes.c_uint32), ("a", ctypes.c_uint16)]


class Old(ctypes.Structure):
    _fields_ = [
        ("lifetime", ctypes.c_uint32),
        ("gone", ctypes.c_uint32),
        ("inner", Inner),
        ("small", ctypes.c_uint8),
        ("name", ctypes.c_uint8 * 4),
    ]


class New(ctypes.Structure):
    _fields_ = [
        ("added", ctypes.c_uint64),
        ("name", ctypes.c_uint8 * 6),
        ("small", ctypes.c_uint32),
        ("inner", InnerV2),
        ("lifetime", ctypes.c_uint32),
    ]


def test_fields_follow_their_names_wherever_they_moved():
    old = Old(lifetime=77, gone=5, inner=Inner(a=3, b=4), small=9)
    old.name[:] = [1, 2, 3, 4]
    new = convert(old, New)
    assert (new.lifetime, new.small, new.inner.a, new.inner.b) == (77, 9, 3, 4)
    assert list(new.name) == [1, 2, 3, 4, 0, 0]
    assert new.added == 0 and new.inner.c == 0  # new fields start at zero


def test_a_value_that_does_not_fit_its_narrower_field_is_refused():
    class Wide(ctypes.Structure):
        _fields_ = [("x", ctypes.c_uint32)]

    class Narrow(ctypes.Structure):
        _fields_ = [("x", ctypes.c_uint8)]

    assert convert(Wide(x=200), Narrow).x == 200
    with pytest.raises(LayoutChangeError, match=r"Wide.x = 300 does not fit"):
        convert(Wide(x=300), Narrow)


def test_a_change_of_kind_needs_the_map_s_own_upgrade():
    class Scalar(ctypes.Structure):
        _fields_ = [("inner", ctypes.c_uint32)]

    class Nested(ctypes.Structure):
        _fields_ = [("inner", Inner)]

    with pytest.raises(LayoutChangeError, match=r"changed from c_uint\w* to Inner"):
        convert(Scalar(inner=1), Nested)


def test_a_map_finds_its_previous_layout_by_its_sizes():
    class Key(ctypes.Structure):
        _fields_ = [("ip", ctypes.c_uint32)]

    class Demo(PinnedMap):
        NAME, KEY, VALUE = "demo", Key, New
        PREVIOUS_LAYOUTS = ((Key, Old),)

    assert Demo.previous_layout(4, ctypes.sizeof(Old)) == (Key, Old)
    assert Demo.previous_layout(4, ctypes.sizeof(Old) + 8) is None
    key, value = Demo.upgrade(Key(ip=10), Old(lifetime=3))
    assert isinstance(value, New) and (key.ip, value.lifetime) == (10, 3)
