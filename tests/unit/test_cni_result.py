"""cni/result.py: the ADD result per CNI version, DNS merging, IPAM result parsing."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from porin.cni.result import build_result, first_ipv4, merge_dns

EP: dict[str, Any] = {
    "ifname": "eth0",
    "mac": "02:00:00:00:00:05",
    "netns": "/var/run/netns/pod1",
    "mtu": 1450,
    "ipv4": "10.244.0.5/32",
    "gateway": "10.244.0.1",
    "hostIfname": "lxc0123456789ab",
    "hostMac": "02:00:00:00:00:01",
}


def pod_interface(result: dict[str, Any]) -> dict[str, Any]:
    """The interface the first IP points at."""
    return result["interfaces"][result["ips"][0]["interface"]]


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0"])
def test_pre_1_0_results_carry_ip_version(version: str) -> None:
    result = build_result(version, EP)
    assert result["cniVersion"] == version
    assert result["ips"] == [
        {"address": "10.244.0.5/32", "gateway": "10.244.0.1", "interface": 1, "version": "4"}
    ]
    assert "mtu" not in pod_interface(result)


def test_1_0_0_result_exact() -> None:
    assert build_result("1.0.0", EP) == {
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": "lxc0123456789ab", "mac": "02:00:00:00:00:01"},
            {"name": "eth0", "mac": "02:00:00:00:00:05", "sandbox": "/var/run/netns/pod1"},
        ],
        "ips": [{"address": "10.244.0.5/32", "gateway": "10.244.0.1", "interface": 1}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.0.1"}],
    }


@pytest.mark.parametrize("version", ["1.0.0", "1.1.0"])
def test_1_x_results_have_no_ip_version(version: str) -> None:
    result = build_result(version, EP)
    for ip in result["ips"]:
        assert "version" not in ip


def test_1_1_0_pod_interface_has_mtu() -> None:
    result = build_result("1.1.0", EP)
    assert result["cniVersion"] == "1.1.0"
    assert pod_interface(result) == {
        "name": "eth0",
        "mac": "02:00:00:00:00:05",
        "sandbox": "/var/run/netns/pod1",
        "mtu": 1450,
    }
    # the host side carries no sandbox and no mtu
    assert result["interfaces"][0] == {"name": "lxc0123456789ab", "mac": "02:00:00:00:00:01"}


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_ip_interface_index_points_at_the_pod_interface(version: str) -> None:
    result = build_result(version, EP)
    idx = result["ips"][0]["interface"]
    assert 0 <= idx < len(result["interfaces"])
    pod = result["interfaces"][idx]
    assert pod["name"] == "eth0"
    assert pod["sandbox"] == "/var/run/netns/pod1"
    host = [i for i in result["interfaces"] if i is not pod]
    assert [i["name"] for i in host] == ["lxc0123456789ab"]
    assert all("sandbox" not in i for i in host)


@pytest.mark.parametrize("version", ["0.3.1", "1.0.0", "1.1.0"])
def test_default_route_via_gateway(version: str) -> None:
    assert build_result(version, EP)["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.244.0.1"}]


def test_routes_follow_the_endpoint_gateway() -> None:
    ep = dict(EP, gateway="192.168.7.1", ipv4="192.168.7.9/24")
    result = build_result("1.0.0", ep)
    assert result["routes"] == [{"dst": "0.0.0.0/0", "gw": "192.168.7.1"}]
    assert result["ips"][0]["gateway"] == "192.168.7.1"
    assert result["ips"][0]["address"] == "192.168.7.9/24"


@pytest.mark.parametrize("dns", [None, {}])
def test_no_dns_key_without_dns(dns: dict[str, Any] | None) -> None:
    assert "dns" not in build_result("1.0.0", EP, dns)


def test_dns_included_when_given_and_empty_entries_dropped() -> None:
    dns = {
        "nameservers": ["10.96.0.10"],
        "domain": "cluster.local",
        "search": [],
        "options": None,
    }
    result = build_result("1.0.0", EP, dns)
    assert result["dns"] == {"nameservers": ["10.96.0.10"], "domain": "cluster.local"}


def test_build_result_does_not_modify_its_inputs() -> None:
    ep = copy.deepcopy(EP)
    dns = {"nameservers": ["1.1.1.1"], "search": []}
    dns_before = copy.deepcopy(dns)
    build_result("1.1.0", ep, dns)
    assert ep == EP
    assert dns == dns_before


# --- merge_dns ---------------------------------------------------------------


def test_merge_dns_nothing() -> None:
    assert merge_dns() is None
    assert merge_dns(None, None) is None
    assert merge_dns({}, None, {}) is None
    assert merge_dns({"nameservers": [], "domain": ""}) is None


def test_merge_dns_single_source() -> None:
    src = {"nameservers": ["10.0.0.10"], "domain": "a.local", "search": ["a.local"]}
    assert merge_dns(src) == src


def test_merge_dns_deduplicates_and_keeps_order() -> None:
    netconf_dns = {
        "nameservers": ["10.0.0.10", "10.0.0.11", "10.0.0.10"],
        "search": ["svc.local", "local"],
        "options": ["ndots:5"],
        "domain": "cluster.local",
    }
    ipam_dns = {
        "nameservers": ["10.0.0.12", "10.0.0.11"],
        "search": ["local", "corp.example"],
        "options": ["ndots:5", "timeout:1"],
        "domain": "other.local",
    }
    assert merge_dns(netconf_dns, ipam_dns) == {
        "nameservers": ["10.0.0.10", "10.0.0.11", "10.0.0.12"],
        "search": ["svc.local", "local", "corp.example"],
        "options": ["ndots:5", "timeout:1"],
        "domain": "cluster.local",  # the first source's domain wins
    }


def test_merge_dns_domain_from_later_source_when_first_has_none() -> None:
    merged = merge_dns({"nameservers": ["1.1.1.1"]}, {"domain": "b.local"})
    assert merged == {"nameservers": ["1.1.1.1"], "domain": "b.local"}


def test_merge_dns_does_not_modify_sources() -> None:
    a = {"nameservers": ["1.1.1.1"]}
    b = {"nameservers": ["8.8.8.8"]}
    merge_dns(a, b)
    assert a == {"nameservers": ["1.1.1.1"]}
    assert b == {"nameservers": ["8.8.8.8"]}


# --- first_ipv4 --------------------------------------------------------------


def test_first_ipv4_picks_first_ipv4_entry() -> None:
    ipam_result = {
        "ips": [
            {"address": "fd00::5/64", "gateway": "fd00::1"},
            {"address": "10.1.0.5/24", "gateway": "10.1.0.1"},
            {"address": "10.2.0.5/24", "gateway": "10.2.0.1"},
        ]
    }
    assert first_ipv4(ipam_result) == ("10.1.0.5/24", "10.1.0.1")


def test_first_ipv4_without_gateway() -> None:
    assert first_ipv4({"ips": [{"address": "10.1.0.5/24"}]}) == ("10.1.0.5/24", None)


@pytest.mark.parametrize(
    "ipam_result",
    [
        {},
        {"ips": []},
        {"ips": None},
        {"ips": [{"address": "fd00::5/64"}]},
        {"ips": [{"gateway": "10.0.0.1"}]},
        {"ips": [{"address": "10.0.0.5"}]},  # no prefix length
    ],
)
def test_first_ipv4_raises_when_none(ipam_result: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="no IPv4 address"):
        first_ipv4(ipam_result)
