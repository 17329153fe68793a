"""The flow log's decoding and filters (daemon/flows.py, daemon/flow_filter.py)."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from porin.daemon.flow_filter import FlowFilter, parse_since
from porin.daemon.flows import Enricher, decode
from porin.maps.flow_events import FLOW_DROP, FLOW_NEW, FLOW_REPLY, FlowEventC
from porin.maps.metrics import reason_by_name
from porin.models import Endpoint, ValidationError

NS, POD = "k8s:io.kubernetes.pod.namespace", "k8s:io.kubernetes.pod.name"


def endpoint(i: int, ip: str, ns: str, name: str, **labels: str) -> Endpoint:
    return Endpoint(
        id=i,
        container_id=f"c{i}",
        ifname="eth0",
        netns="/x",
        network="porin",
        ipv4=f"{ip}/32",
        gateway="10.244.0.1",
        mtu=1500,
        host_ifname=f"lxc{i}",
        host_ifindex=100 + i,
        identity=256 + i,
        labels={NS: ns, POD: name, **labels},
    )


LOCAL = (endpoint(1, "10.244.0.5", "web", "client", app="client"),)
REMOTE = {"10.244.2.9": {"identity": 300, "node": "n2", "labels": {NS: "db", POD: "pg"}}}


def enricher() -> Enricher:
    return Enricher(lambda: LOCAL, lambda: REMOTE, lambda i: f"10.96.0.{i}:80")


def event(kind: int, reason: str, pkt, **kw) -> FlowEventC:
    raw = bytes(Ether() / pkt)
    ev = FlowEventC(type=kind, reason=reason_by_name(reason).code, dir=2, len=len(raw), **kw)
    ev.cap_len = len(raw)
    for i, b in enumerate(raw[:128]):
        ev.data[i] = b
    return ev


def test_a_new_connection_names_both_ends():
    pkt = IP(src="10.244.0.5", dst="10.244.2.9") / TCP(sport=4000, dport=5432, flags="S")
    f = decode(event(FLOW_NEW, "TUNNELED", pkt, ep_id=1, ifindex=101), "n1", 0.0, enricher())
    assert (f["verdict"], f["event"], f["is_reply"], f["node"]) == ("forwarded", "new", False, "n1")
    assert (f["source"]["pod_name"], f["source"]["namespace"], f["source"]["identity"]) == (
        "client",
        "web",
        257,
    )
    assert (f["destination"]["pod_name"], f["destination"]["node"]) == ("pg", "n2")
    assert f["l4"] == {
        "protocol": "TCP",
        "source_port": 4000,
        "destination_port": 5432,
        "flags": ["SYN"],
    }
    assert f["traffic_direction"] == "egress" and f["endpoint"] == "web/client"
    assert f["drop_reason"] is None


def test_a_service_flow_is_translated_and_names_its_frontend():
    pkt = IP(src="10.96.0.7", dst="10.244.0.5") / TCP(sport=80, dport=4000, flags="SA")
    f = decode(event(FLOW_REPLY, "FORWARDED", pkt, rev_nat=7), "n1", 0.0, enricher())
    assert (f["verdict"], f["service"], f["is_reply"]) == ("translated", "10.96.0.7:80", True)


def test_a_drop_names_its_reason_and_the_sending_pod_even_with_a_forged_source():
    pkt = IP(src="10.244.0.99", dst="10.244.2.9") / UDP(sport=1, dport=53)
    f = decode(event(FLOW_DROP, "INVALID_SIP", pkt, ifindex=101), "n1", 0.0, enricher())
    assert (f["verdict"], f["drop_reason"]) == ("dropped", "INVALID_SIP")
    assert f["endpoint"] == "web/client" and "pod_name" not in f["source"]


def test_the_time_is_the_events_on_the_wall_clock():
    pkt = IP(src="10.244.0.5", dst="10.244.2.9") / UDP(sport=1, dport=53)
    ev = event(FLOW_NEW, "FORWARDED", pkt, ktime_ns=5_000_000_000)
    f = decode(ev, "n1", 1_700_000_000.0, enricher())
    assert f["unixTime"] == 1_700_000_005.0
    assert f["time"] == "2023-11-14T22:13:25.000000+00:00"


@pytest.mark.parametrize(
    "text, want",
    [("1700000000", 1700000000.0), ("2023-11-14T22:13:20Z", 1700000000.0), ("5m", 1000.0 - 300)],
)
def test_since_accepts_unix_rfc3339_and_ages(text, want):
    assert parse_since(text, now=1000.0) == want


@pytest.mark.parametrize(
    "query, field",
    [
        ({"pod": "noslash"}, "pod"),
        ({"last": "0"}, "last"),
        ({"port": "70000"}, "port"),
        ({"protocol": "sctp"}, "protocol"),
        ({"verdict": "lost"}, "verdict"),
        ({"ip": "1.2.3"}, "ip"),
        ({"label": "novalue"}, "label"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_filters_name_their_parameter(query, field):
    with pytest.raises(ValidationError) as e:
        FlowFilter.from_query(query)
    assert e.value.field == field


def flow(src_pod=None, dst_pod=None, verdict="forwarded", **l4) -> dict:
    def end(p, ip):
        return {"ip": ip, **({"namespace": p[0], "pod_name": p[1]} if p else {})}

    return {
        "unixTime": 100.0,
        "verdict": verdict,
        "source": {**end(src_pod, "10.0.0.1"), "labels": {"k8s:app": "a"}},
        "destination": end(dst_pod, "10.0.0.2"),
        "l4": {"protocol": "TCP", "source_port": 1000, "destination_port": 80, **l4},
    }


def test_filters_all_have_to_match_and_either_end_counts():
    f = FlowFilter.from_query({"pod": "web/b", "port": "80", "label": "app=a"})
    assert f.matches(flow(("web", "a"), ("web", "b")))
    assert not f.matches(flow(("web", "a"), ("web", "c")))  # pod
    assert not FlowFilter.from_query({"from-pod": "web/b"}).matches(
        flow(("web", "a"), ("web", "b"))
    )
    assert FlowFilter.from_query({"to-pod": "web/b"}).matches(flow(("web", "a"), ("web", "b")))
    assert not FlowFilter.from_query({"port": "81"}).matches(flow())
    assert not FlowFilter.from_query({"verdict": "dropped"}).matches(flow())
    assert not FlowFilter.from_query({"since": "200"}).matches(flow())
    assert not FlowFilter.from_query({"label": "app=b"}).matches(flow())
