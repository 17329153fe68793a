"""The `host_devices` map: uplink ifindex -> {node IP, flags} (bpf/lib/host_device.h)."""

from __future__ import annotations

import ctypes

from porin.maps import map_types
from porin.maps.lb_common import be_to_ip, ip_to_be
from porin.maps.pinned import PinnedMap, U32Key

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


class HostDeviceSlot(ctypes.Structure):
    _fields_ = [("ifindex", ctypes.c_uint32), ("dev", HostDevice)]


class HostDeviceSlotsMap(PinnedMap[U32Key, HostDeviceSlot]):
    """`host_device_slots`: the uplinks again, in an array by ifindex modulo
    its size, for the datapath's per-packet lookup; the hash stays the truth."""

    NAME = "host_device_slots"
    TYPE = map_types.ARRAY
    SIZE = 64
    SIZE_FLAG = "HOST_DEVICE_SLOTS"
    KEY = U32Key
    VALUE = HostDeviceSlot


def sync_host_devices(bpffs_root: str, devices: dict[int, HostDevice]) -> None:
    """Make both maps hold exactly `devices` (ifindex -> device): the hash
    first, then the slots (the first uplink of a slot gets it; another
    sharing it is found in the hash), then what went is removed."""
    with HostDevicesMap(bpffs_root) as devmap, HostDeviceSlotsMap(bpffs_root) as slots:
        for ifindex, dev in devices.items():
            devmap.put(Ifindex(ifindex), dev)
        size = slots.max_entries
        want: dict[int, HostDeviceSlot] = {}
        for ifindex in sorted(devices):
            want.setdefault(ifindex % size, HostDeviceSlot(ifindex, devices[ifindex]))
        for i in range(size):
            slots.put(U32Key(i), want.get(i, HostDeviceSlot()))
        for key in list(devmap.keys()):
            if key.ifindex not in devices:
                devmap.delete(key)
