"""Host ports: a pod's CNI portMappings, served in the datapath as Cilium does.

Each mapping becomes a service of type `hostport` (daemon/services.py) whose
one backend is the pod's address and container port, and whose frontends are
the mapping's hostIP, or every node address and 127.0.0.1. So the tc
programs translate what arrives from outside (bpf_host.c from_netdev), from
other pods (bpf_lxc.c) and from the node to its own addresses
(from_host_lo), and the socket hooks (bpf_sock.c) what the node sends to
127.0.0.1. `porin service list` and `porin bpf lb list` show them.

They are made at ADD, before the endpoint is ready, all or none (a port
taken by another pod or a node port refuses the ADD and undoes it), and go
at DEL and GC with the endpoint; after a restart, those of endpoints that
did not come back are removed (`sync`).
"""

from __future__ import annotations

import logging

from porin.daemon.services import ANY_ADDRESS, ServiceConflict, ServiceManager
from porin.errors import INVALID_CONFIG
from porin.models import Backend, Endpoint, Service, ServiceSource, ServiceType
from porin.port_mappings import PortMapping, mappings_from_records

log = logging.getLogger("porin.hostports")


class HostPortConflict(ServiceConflict):
    """A host port another pod or a node port already has (CNI: invalid config)."""

    http_status = 409
    cni_code = INVALID_CONFIG


def service_for(ep: Endpoint, m: PortMapping) -> Service:
    return Service(
        id=0,
        ip=m.host_ip or ANY_ADDRESS,
        port=m.host_port,
        protocol=m.protocol,
        type=ServiceType.HOST_PORT,
        backends=[Backend(ep.ip, m.container_port)],
        source=ServiceSource.HOSTPORT,
        endpoint=ep.id,
    )


class HostPorts:
    def __init__(self, services: ServiceManager) -> None:
        self.services = services

    def of(self, ep_id: int) -> list[Service]:
        return [
            s
            for s in self.services.list()
            if s.type == ServiceType.HOST_PORT and s.endpoint == ep_id
        ]

    def claim(self, ep: Endpoint) -> list[Service]:
        """Program the endpoint's mappings, all of them or none."""
        mappings = mappings_from_records(ep.port_mappings)
        if not mappings:
            return []
        svcs = [service_for(ep, m) for m in mappings]
        try:
            done = self.services.upsert_many(svcs)
        except ServiceConflict as e:
            raise HostPortConflict(f"endpoint {ep.container_id}: {e}") from None
        log.info("endpoint %d host ports: %s", ep.id, ", ".join(m.describe() for m in mappings))
        return done

    def release(self, ep: Endpoint) -> None:
        mine = self.of(ep.id)
        if mine:
            self.services.delete_many([s.id for s in mine])
            log.info("endpoint %d: %d host ports released", ep.id, len(mine))

    def sync(self, endpoints: list[Endpoint]) -> None:
        """After a restart: host ports of endpoints that are gone, or that
        differ from the endpoint's record, are removed or made again."""
        live = {ep.id: ep for ep in endpoints}
        stale = [
            s.id
            for s in self.services.list()
            if s.type == ServiceType.HOST_PORT and s.endpoint not in live
        ]
        if stale:
            self.services.delete_many(stale)
            log.info("%d host ports of endpoints that are gone removed", len(stale))
        for ep in endpoints:
            want = {
                (s.ip, s.port, s.protocol, s.backends[0].address)
                for s in (service_for(ep, m) for m in mappings_from_records(ep.port_mappings))
            }
            have = {(s.ip, s.port, s.protocol, s.backends[0].address) for s in self.of(ep.id)}
            if want != have:
                self.release(ep)
                try:
                    self.claim(ep)
                except ServiceConflict as e:
                    log.error("endpoint %d: host ports not restored: %s", ep.id, e)
