"""The agent's IPAM: one IPv4 pod CIDR per node, persisted across restarts.

Addresses are handed out round-robin from where the last one was taken
(like host-local), so a just-released address is not reused at once while
stale conntrack or ARP state may still name it. The network, broadcast and
gateway addresses are never handed out.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading

from porin.daemon.store import StateDirFull, read_json, write_json_atomic
from porin.errors import PORIN_IPAM_EXHAUSTED, PorinError

log = logging.getLogger("porin.ipam")


class IpamExhausted(PorinError, RuntimeError):
    """No free address is left in the pod CIDR."""

    http_status = 507
    cni_code = PORIN_IPAM_EXHAUSTED


class Ipam:
    def __init__(self, cidr: str, gateway: str, state_dir: str) -> None:
        self.network = ipaddress.IPv4Network(cidr)
        self.gateway = ipaddress.IPv4Address(gateway)
        self.path = os.path.join(state_dir, "ipam.json")
        self._lock = threading.Lock()
        data = read_json(self.path, default={}) or {}
        if data.get("cidr") not in (None, str(self.network)):
            log.warning(
                "pod CIDR changed from %s to %s; allocations outside the new CIDR are dropped",
                data.get("cidr"),
                self.network,
            )
        self._owners: dict[str, str] = {}  # ip -> owner
        for ip, owner in (data.get("allocations") or {}).items():
            try:
                if ipaddress.IPv4Address(ip) in self.network:
                    self._owners[ip] = owner
            except ValueError:
                log.warning("ignoring malformed IPAM entry %r", ip)
        self._last = int(data.get("last", int(self.network.network_address)))

    def _save(self) -> None:
        write_json_atomic(
            self.path,
            {"cidr": str(self.network), "last": self._last, "allocations": self._owners},
        )

    def _reserved(self, ip: ipaddress.IPv4Address) -> bool:
        return ip in (self.network.network_address, self.network.broadcast_address, self.gateway)

    def allocate(self, owner: str) -> str:
        """An address for `owner`; the same one again if it already has one."""
        with self._lock:
            for ip, o in self._owners.items():
                if o == owner:
                    return ip
            first = int(self.network.network_address)
            size = self.network.num_addresses
            for step in range(1, size + 1):
                cand = ipaddress.IPv4Address(first + (self._last - first + step) % size)
                if self._reserved(cand) or str(cand) in self._owners:
                    continue
                last = self._last
                self._owners[str(cand)] = owner
                self._last = int(cand)
                try:
                    self._save()
                except StateDirFull:  # not leased after all: memory as on disk
                    del self._owners[str(cand)]
                    self._last = last
                    raise
                return str(cand)
        raise IpamExhausted(f"no free address left in pod CIDR {self.network}")

    def release(self, owner: str) -> list[str]:
        """Release every address held by `owner`; returns them."""
        with self._lock:
            gone = [ip for ip, o in self._owners.items() if o == owner]
            for ip in gone:
                del self._owners[ip]
            if gone:
                try:
                    self._save()
                except StateDirFull as e:
                    # released all the same (a DEL must go through): the file
                    # catches up with the next write, or the sweep at start
                    log.warning("address release not saved: %s", e)
            return gone

    def owner_of(self, ip: str) -> str | None:
        return self._owners.get(ip)

    def allocations(self) -> dict[str, str]:
        with self._lock:
            return dict(self._owners)

    @property
    def capacity(self) -> int:
        return self.network.num_addresses - 3
