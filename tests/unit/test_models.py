"""porin/models.py: EndpointRequest validation, lxc_name, Endpoint round trip."""

from __future__ import annotations

import re
from typing import Any

import pytest

from porin.models import Endpoint, EndpointRequest, ValidationError, lxc_name

GOOD: dict[str, Any] = {
    "containerID": "c0ffee42",
    "ifname": "eth0",
    "netns": "/var/run/netns/pod1",
}


def request(**overrides: Any) -> dict[str, Any]:
    """GOOD with `overrides`; a value of ... removes the key."""
    d = dict(GOOD)
    for key, value in overrides.items():
        if value is ...:
            d.pop(key, None)
        else:
            d[key] = value
    return d


def expect_invalid(d: Any, field: str) -> ValidationError:
    with pytest.raises(ValidationError) as excinfo:
        EndpointRequest.from_json(d)
    err = excinfo.value
    assert err.field == field, str(err)
    assert str(err).startswith(f"{field}: ")
    return err


# --- lxc_name ----------------------------------------------------------------


def test_lxc_name_shape() -> None:
    name = lxc_name("c0ffee42", "eth0")
    assert len(name) == 15  # IFNAMSIZ - 1
    assert name.startswith("lxc")
    assert re.fullmatch(r"lxc[0-9a-f]{12}", name)


def test_lxc_name_is_deterministic() -> None:
    assert lxc_name("c0ffee42", "eth0") == lxc_name("c0ffee42", "eth0")


def test_lxc_name_known_value() -> None:
    # sha256("abc/eth0") -- pins the scheme the agent and the DEL fallback share
    import hashlib

    expected = "lxc" + hashlib.sha256(b"abc/eth0").hexdigest()[:12]
    assert lxc_name("abc", "eth0") == expected


def test_lxc_name_differs_per_ifname_and_container() -> None:
    names = {
        lxc_name("c0ffee42", "eth0"),
        lxc_name("c0ffee42", "eth1"),
        lxc_name("c0ffee42", "net1"),
        lxc_name("c0ffee43", "eth0"),
    }
    assert len(names) == 4


def test_lxc_name_is_always_15_chars() -> None:
    for cid in ("a", "x" * 255, "abc-DEF_1.2"):
        for ifname in ("e", "eth0", "y" * 15):
            assert len(lxc_name(cid, ifname)) == 15


# --- EndpointRequest.from_json: valid ---------------------------------------


def test_minimal_request_and_defaults() -> None:
    req = EndpointRequest.from_json(GOOD)
    assert req == EndpointRequest(
        container_id="c0ffee42", ifname="eth0", netns="/var/run/netns/pod1"
    )
    assert req.network == "porin"
    assert req.mtu is None
    assert req.ipv4 is None
    assert req.gateway is None
    assert req.labels == {}


def test_full_request() -> None:
    req = EndpointRequest.from_json(
        request(
            network="blue",
            mtu=1450,
            ipv4="10.9.0.7/24",
            gateway="10.9.0.1",
            labels={"app": "web"},
        )
    )
    assert req.network == "blue"
    assert req.mtu == 1450
    assert req.ipv4 == "10.9.0.7/24"
    assert req.gateway == "10.9.0.1"
    assert req.labels == {"app": "web"}


def test_to_json_round_trip() -> None:
    req = EndpointRequest.from_json(
        request(mtu=9000, ipv4="10.9.0.7/24", gateway="10.9.0.1", labels={"a": "b"})
    )
    assert EndpointRequest.from_json(req.to_json()) == req
    assert req.to_json()["containerID"] == "c0ffee42"


def test_null_optional_fields() -> None:
    req = EndpointRequest.from_json(
        request(network=None, mtu=None, ipv4=None, gateway=None, labels=None)
    )
    assert (req.network, req.mtu, req.ipv4, req.gateway, req.labels) == (
        "porin",
        None,
        None,
        None,
        {},
    )


def test_labels_are_copied() -> None:
    labels = {"a": "b"}
    req = EndpointRequest.from_json(request(labels=labels))
    labels["c"] = "d"
    assert req.labels == {"a": "b"}


@pytest.mark.parametrize("mtu", [576, 1500, 65535])
def test_mtu_boundaries(mtu: int) -> None:
    assert EndpointRequest.from_json(request(mtu=mtu)).mtu == mtu


@pytest.mark.parametrize("cid", ["a", "9", "abc-DEF_1.2", "a" * 255])
def test_good_container_ids(cid: str) -> None:
    assert EndpointRequest.from_json(request(containerID=cid)).container_id == cid


@pytest.mark.parametrize("ifname", ["e", "eth0", "a" * 15, "net-1.2_x"])
def test_good_ifnames(ifname: str) -> None:
    assert EndpointRequest.from_json(request(ifname=ifname)).ifname == ifname


# --- EndpointRequest.from_json: invalid -------------------------------------


@pytest.mark.parametrize("body", [None, [], "x", 3])
def test_body_must_be_an_object(body: Any) -> None:
    expect_invalid(body, "body")


@pytest.mark.parametrize("value", [..., None, ""])
def test_missing_container_id(value: Any) -> None:
    err = expect_invalid(request(containerID=value), "containerID")
    assert "required" in str(err)


@pytest.mark.parametrize("cid", ["-abc", "_abc", ".abc", "a b", "a/b", "a:b", "a" * 256])
def test_bad_container_id(cid: str) -> None:
    expect_invalid(request(containerID=cid), "containerID")


def test_container_id_of_wrong_type() -> None:
    err = expect_invalid(request(containerID=42), "containerID")
    assert "string" in str(err)


@pytest.mark.parametrize("value", [..., None, ""])
def test_missing_ifname(value: Any) -> None:
    expect_invalid(request(ifname=value), "ifname")


@pytest.mark.parametrize(
    "ifname", ["a" * 16, "eth/0", "eth:0", "eth 0", "eth\n0", ".", "..", 0, ["eth0"]]
)
def test_bad_ifname(ifname: Any) -> None:
    expect_invalid(request(ifname=ifname), "ifname")


@pytest.mark.parametrize("value", [..., None, ""])
def test_missing_netns(value: Any) -> None:
    expect_invalid(request(netns=value), "netns")


@pytest.mark.parametrize("netns", ["var/run/netns/x", "x", "./x", "proc/1/ns/net"])
def test_relative_netns(netns: str) -> None:
    err = expect_invalid(request(netns=netns), "netns")
    assert "absolute" in str(err)


@pytest.mark.parametrize(
    "ipv4",
    ["10.0.0.256/24", "10.0.0.1/33", "fd00::1/64", "not-an-ip", "10.0.0/24", 167772161],
)
def test_bad_ipv4(ipv4: Any) -> None:
    expect_invalid(request(ipv4=ipv4), "ipv4")


@pytest.mark.parametrize("gateway", ["10.0.0.256", "10.0.0.1/24", "fd00::1", "gw", 167772161])
def test_bad_gateway(gateway: Any) -> None:
    expect_invalid(request(gateway=gateway), "gateway")


@pytest.mark.parametrize(
    "mtu", [True, False, "1500", 1500.0, 575, 65536, 0, -1, [1500], {"mtu": 1500}]
)
def test_bad_mtu(mtu: Any) -> None:
    expect_invalid(request(mtu=mtu), "mtu")


@pytest.mark.parametrize(
    "labels",
    [["a", "b"], "app=web", 3, True, {"app": 1}, {"app": None}, {1: "a"}, {"a": ["b"]}],
)
def test_bad_labels(labels: Any) -> None:
    expect_invalid(request(labels=labels), "labels")


@pytest.mark.parametrize("network", [3, ["porin"], {"n": 1}])
def test_bad_network_type(network: Any) -> None:
    expect_invalid(request(network=network), "network")


def test_validation_error_is_a_value_error() -> None:
    err = ValidationError("mtu", "bad")
    assert isinstance(err, ValueError)
    assert err.field == "mtu"
    assert str(err) == "mtu: bad"


# --- Endpoint ----------------------------------------------------------------


def test_endpoint_round_trip_and_ip() -> None:
    ep = Endpoint(
        id=3,
        container_id="c0ffee42",
        ifname="eth0",
        netns="/var/run/netns/pod1",
        network="porin",
        ipv4="10.244.0.5/32",
        gateway="10.244.0.1",
        mtu=1500,
        host_ifname=lxc_name("c0ffee42", "eth0"),
        labels={"a": "b"},
    )
    assert ep.ip == "10.244.0.5"
    data = ep.to_json()  # the API's camelCase
    assert data["containerID"] == "c0ffee42" and data["hostIfname"] == ep.host_ifname
    assert "container_id" not in data and "host_ifname" not in data
    assert data["state"] == "creating"
    assert Endpoint.from_json(dict(data, unknownFutureField=1)) == ep
    record = ep.to_record()  # the state dir's field names, as older builds wrote them
    assert record["container_id"] == "c0ffee42" and record["created_at"] == ep.created_at
    assert Endpoint.from_json(record) == ep
