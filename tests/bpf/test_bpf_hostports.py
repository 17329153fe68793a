"""Host ports as the services programme them, on the test's maps: their
frontends, conflicts with each other and with node ports, all-or-none."""

from __future__ import annotations

import pytest

from porin.daemon.hostports import HostPortConflict, HostPorts
from porin.daemon.services import NodeContext, ServiceConflict, ServiceManager
from porin.models import Backend, Endpoint, Service, ServiceType, ValidationError
from porin.port_mappings import parse_port_mappings

NODE_IPS = ["198.18.0.11", "198.18.1.11"]


@pytest.fixture
def host_ports(lxc, tmp_path):
    svcs = ServiceManager(lxc.lb, str(tmp_path), NodeContext(node_ips=NODE_IPS))
    return HostPorts(svcs)


def pod(ep_id: int, ip: str, *mappings: dict) -> Endpoint:
    return Endpoint(
        id=ep_id,
        container_id=f"c{ep_id}",
        ifname="eth0",
        netns="/x",
        network="porin",
        ipv4=f"{ip}/32",
        gateway="10.244.0.1",
        mtu=1500,
        host_ifname=f"lxc{ep_id}",
        port_mappings=[m.to_json() for m in parse_port_mappings(list(mappings))],
    )


def frontends(lxc) -> set[str]:
    return {f"{k.ip}:{k.port}" for k in lxc.lb.services.keys() if k.slot == 0}


def test_frontends_on_every_node_address_and_the_loopback(lxc, host_ports):
    done = host_ports.claim(pod(1, "10.244.0.5", {"hostPort": 8080, "containerPort": 80}))
    assert [s.type for s in done] == [ServiceType.HOST_PORT]
    assert done[0].id == 32767  # from the top: clear of the cluster's ids
    assert frontends(lxc) == {"198.18.0.11:8080", "198.18.1.11:8080", "127.0.0.1:8080"}
    host_ports.release(pod(1, "10.244.0.5"))
    assert frontends(lxc) == set()


def test_a_taken_port_refuses_all_of_a_pods_mappings(lxc, host_ports):
    host_ports.claim(pod(1, "10.244.0.5", {"hostPort": 8080, "containerPort": 80}))
    other = pod(
        2,
        "10.244.0.6",
        {"hostPort": 9090, "containerPort": 90},
        {"hostPort": 8080, "containerPort": 81, "hostIP": "127.0.0.1"},
    )
    with pytest.raises(HostPortConflict, match="8080/tcp is already taken by endpoint 1"):
        host_ports.claim(other)
    assert not any(k.port == 9090 for k in lxc.lb.services.keys())
    # another protocol, or another address of a port bound to one address, is free
    udp = {"hostPort": 8080, "containerPort": 80, "protocol": "udp"}
    host_ports.claim(pod(3, "10.244.0.7", udp))
    host_ports.claim(
        pod(4, "10.244.0.8", {"hostPort": 7070, "containerPort": 80, "hostIP": "198.18.0.11"})
    )
    host_ports.claim(
        pod(5, "10.244.0.9", {"hostPort": 7070, "containerPort": 80, "hostIP": "198.18.1.11"})
    )
    with pytest.raises(HostPortConflict):
        host_ports.claim(pod(6, "10.244.0.10", {"hostPort": 7070, "containerPort": 80}))


def test_host_ports_and_node_ports_exclude_each_other(lxc, host_ports):
    svcs = host_ports.services
    svcs.upsert(
        Service(
            id=1,
            ip="10.96.0.1",
            port=80,
            type=ServiceType.NODE_PORT,
            node_port=30080,
            backends=[Backend("10.244.0.5", 80)],
        )
    )
    with pytest.raises(HostPortConflict, match="node port of service 1"):
        host_ports.claim(pod(1, "10.244.0.5", {"hostPort": 30080, "containerPort": 80}))
    host_ports.claim(pod(2, "10.244.0.6", {"hostPort": 30081, "containerPort": 80}))
    nodeport = Service(
        id=2,
        ip="10.96.0.2",
        port=80,
        type=ServiceType.NODE_PORT,
        node_port=30081,
        backends=[Backend("10.244.0.5", 80)],
    )
    with pytest.raises(ServiceConflict, match="host port of endpoint 2"):
        svcs.upsert(nodeport)
    # an allocated node port steps over it
    nodeport.node_port = 0
    svcs.upsert(Service(**{**vars(nodeport), "node_port": 0}))
    assert svcs.get(2).node_port not in (30080, 30081)
    # and a host port's id is not the API's
    with pytest.raises(ServiceConflict, match="goes with the pod"):
        svcs.check_not_host_port(32767)


def test_host_ip_must_be_the_nodes(host_ports):
    with pytest.raises(ValidationError, match="192.0.2.1 is not an address of this node"):
        host_ports.claim(
            pod(1, "10.244.0.5", {"hostPort": 8080, "containerPort": 80, "hostIP": "192.0.2.1"})
        )


def test_sync_drops_the_host_ports_of_endpoints_that_went(lxc, host_ports):
    a = pod(1, "10.244.0.5", {"hostPort": 8080, "containerPort": 80})
    b = pod(2, "10.244.0.6", {"hostPort": 8081, "containerPort": 80})
    host_ports.claim(a)
    host_ports.claim(b)
    host_ports.sync([a])
    assert {k.port for k in lxc.lb.services.keys()} == {8080}


@pytest.mark.parametrize(
    ("mapping", "error"),
    [
        ({"hostPort": 0, "containerPort": 80}, "hostPort: must be a port"),
        ({"hostPort": 80}, "containerPort: must be a port"),
        ({"hostPort": 80, "containerPort": 80, "protocol": "sctp"}, "tcp or udp"),
        ({"hostPort": 80, "containerPort": 80, "hostIP": "x"}, "not an IP address"),
        ({"hostPort": 80, "containerPort": 80, "extra": 1}, "extra: unknown field"),
    ],
)
def test_bad_mappings_are_named(mapping, error):
    with pytest.raises(ValidationError, match=error):
        parse_port_mappings([mapping])


def test_ipv6_mappings_are_left_out_and_duplicates_kept_once():
    got = parse_port_mappings(
        [
            {"hostPort": 80, "containerPort": 8080, "protocol": "TCP", "hostIP": "::"},
            {"hostPort": 80, "containerPort": 8080, "protocol": "tcp", "hostIP": "0.0.0.0"},
            {"hostPort": 80, "containerPort": 8080, "protocol": "tcp", "hostIP": ""},
        ]
    )
    assert [m.describe() for m in got] == ["*:80/tcp -> 8080"]
    with pytest.raises(ValidationError, match="also mapped to 8080"):
        parse_port_mappings(
            [{"hostPort": 80, "containerPort": 8080}, {"hostPort": 80, "containerPort": 9090}]
        )


def test_an_address_new_to_the_node_gets_a_frontend_id_of_its_own(lxc, host_ports):
    """Node addresses that come later (the agent restarted with a device) sort
    before the loopback: the new frontend must not take the id the loopback's
    still has, or replies would be sourced from the wrong frontend."""
    svcs = host_ports.services
    svcs.node.node_ips = []
    (hp,) = host_ports.claim(pod(1, "10.244.0.5", {"hostPort": 8080, "containerPort": 80}))
    nodeport = Service(
        id=5, ip="10.96.0.5", port=80, type=ServiceType.NODE_PORT, node_port=30085,
        backends=[Backend("10.244.0.5", 80)],
    )  # fmt: skip
    svcs.node.node_ips = ["198.18.1.11"]
    svcs.upsert(nodeport)
    svcs.node.node_ips = ["198.18.0.11", "198.18.1.11"]
    svcs.upsert_many([svcs.get(hp.id), svcs.get(5)])
    for sid in (hp.id, 5):
        ids = [fe.rev_nat for fe in svcs.frontends(sid)]
        assert len(ids) == len(set(ids)), ids
    # every frontend's replies are sourced from its own address
    rev = {k.id: f"{v.ip}:{v.host_port}" for k, v in lxc.lb.reverse_nat.items()}
    want = {fe.rev_nat: f"{fe.ip}:{fe.port}" for sid in (hp.id, 5) for fe in svcs.frontends(sid)}
    assert {k: rev[k] for k in want} == want
