"""The `host_devices` map: uplink ifindex -> {node IP, flags} (bpf/lib/host_device.h)."""

from __future__ import annotations

import ctypes

from porin.maps import map_types
from porin.maps.lb_common import be_to_ip, ip_to_be
from porin.maps.pinned import PinnedMap

HOST_DEV_MASQUERADE = 1


class Ifindex(ctypes.Structure):
    _fields_ = [("ifindex", ctypes.c_uint32)]


class HostDevice(ctypes.Structure):
    _fields_ = [("node_ip", ctypes.c_uint32), ("flags", ctypes.c_uint32)]

    @classmethod
    def of(cls, ip: str, masquerade: bool) -> HostDevice:
        return cls(node_ip=ip_to_be(ip), flags=HOST_DEV_MASQUERADE if masquerade else 0)

    @property
    def ip(self) -> str:
        return be_to_ip(self.node_ip)


class HostDevicesMap(PinnedMap[Ifindex, HostDevice]):
    NAME = "host_devices"
    TYPE = map_types.HASH
    SIZE = 256
    SIZE_FLAG = "HOST_DEVICES_MAP_SIZE"
    KEY = Ifindex
    VALUE = HostDevice
