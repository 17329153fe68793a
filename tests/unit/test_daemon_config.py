"""daemon/config.py: the embedded default, YAML overrides and validation."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from porin.daemon.config import (
    DEFAULT_CONFIG_YAML,
    AgentConfig,
    ConfigError,
    from_mapping,
    load_config,
)


def write(tmp_path: Path, text: str, name: str = "porin.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def defaults() -> dict[str, Any]:
    return yaml.safe_load(DEFAULT_CONFIG_YAML)


def expect_field_error(data: dict[str, Any], field: str) -> ConfigError:
    with pytest.raises(ConfigError) as excinfo:
        from_mapping(data)
    assert str(excinfo.value).startswith(f"{field}:"), str(excinfo.value)
    return excinfo.value


# --- embedded default --------------------------------------------------------


def test_embedded_default() -> None:
    cfg = load_config()
    assert isinstance(cfg, AgentConfig)
    assert cfg.pod_cidr == "10.244.0.0/24"
    assert cfg.gateway == "10.244.0.1"
    assert cfg.mtu == 1500
    assert cfg.state_dir == "/var/run/porin"
    assert cfg.bpffs_root == "/sys/fs/bpf/porin"
    assert cfg.api_socket == "/var/run/porin/porin.sock"
    assert cfg.log_level == "info"
    assert cfg.endpoints_map_size == 65536
    assert cfg.extra == {}


def test_default_node_name_is_the_hostname() -> None:
    assert load_config().node_name == os.uname().nodename


def test_default_derived_properties() -> None:
    cfg = load_config()
    assert str(cfg.network) == "10.244.0.0/24"
    assert cfg.pending_delete_dir == "/var/run/porin/pending-delete"


def test_embedded_default_yaml_is_a_mapping_of_known_keys() -> None:
    from porin.daemon.config import _KEYS

    data = defaults()
    assert set(data) <= set(_KEYS)
    assert {
        "nodeName",
        "podCIDR",
        "gateway",
        "mtu",
        "stateDir",
        "bpffsRoot",
        "apiSocket",
        "logLevel",
        "servicesFile",
        "maglevTableSize",
        "ctLifetimeTCP",
    } <= set(data)


def test_from_mapping_of_the_default_equals_load_config() -> None:
    assert from_mapping(defaults()) == load_config()


# --- YAML file ---------------------------------------------------------------


def test_file_overrides_only_what_it_sets(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "nodeName: node-1\npodCIDR: 10.10.0.0/16\nmtu: 9000\nlogLevel: debug\n",
    )
    cfg = load_config(path)
    assert cfg.node_name == "node-1"
    assert cfg.pod_cidr == "10.10.0.0/16"
    assert cfg.gateway == "10.10.0.1"  # derived from the new CIDR
    assert cfg.mtu == 9000
    assert cfg.log_level == "debug"
    # untouched defaults
    assert cfg.state_dir == "/var/run/porin"
    assert cfg.bpffs_root == "/sys/fs/bpf/porin"
    assert cfg.api_socket == "/var/run/porin/porin.sock"


def test_file_sets_paths_and_gateway(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "podCIDR: 192.168.50.0/24\n"
        "gateway: 192.168.50.254\n"
        "stateDir: /tmp/porin-state\n"
        "bpffsRoot: /sys/fs/bpf/other\n"
        "apiSocket: /tmp/porin-state/api.sock\n"
        "endpointsMapSize: 1024\n",
    )
    cfg = load_config(path)
    assert cfg.gateway == "192.168.50.254"
    assert cfg.state_dir == "/tmp/porin-state"
    assert cfg.bpffs_root == "/sys/fs/bpf/other"
    assert cfg.api_socket == "/tmp/porin-state/api.sock"
    assert cfg.pending_delete_dir == "/tmp/porin-state/pending-delete"
    assert cfg.endpoints_map_size == 1024


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n"])
def test_empty_file_means_defaults(tmp_path: Path, text: str) -> None:
    assert load_config(write(tmp_path, text)) == load_config()


def test_unknown_keys_are_refused_with_a_suggestion(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_config(write(tmp_path, "futureKnob: 3\nmtu: 1450\n"))
    assert str(excinfo.value).startswith("futureKnob: unknown setting")
    with pytest.raises(ConfigError) as excinfo:
        load_config(write(tmp_path, "podCidr: 10.1.0.0/24\n"))
    assert str(excinfo.value) == "podCidr: unknown setting (did you mean podCIDR?)"
    with pytest.raises(ConfigError, match=r"^kvstore: unknown setting 'password'"):
        from_mapping({"kvstore": {"endpoints": ["http://10.0.0.5:2379"], "password": "x"}})


def test_every_problem_is_listed_not_the_first_only(tmp_path: Path) -> None:
    text = (
        "mtu: big\n"  # wrong type
        "podCIDR: 10.244.0.0/24\n"
        "gateway: 10.9.9.1\n"  # outside the pod CIDR
        "clusterCIDR: 10.250.0.0/16\n"  # does not contain the pod CIDR
        "prefilter: [10.244.0.0/16, nonsense]\n"  # covers the pods; not a CIDR
        "ctGCInterval: -1\n"
        "xdpMode: fast\n"
        "bpffsRoot: /sys/fs/bpf/porin.test\n"  # bpffs refuses a dot
        "snatPortRange: 30000-40000\n"  # overlaps the NodePort range
        "kvstore: {endpoints: [etcd:2379]}\n"
        "flowCapture: sometimes\n"
        "devices: eth0\n"
        "tunnel: gre\n"
        "unknownThing: 1\n"
    )
    with pytest.raises(ConfigError) as excinfo:
        load_config(write(tmp_path, text))
    e = excinfo.value
    fields_named = [p.split(":")[0].split("[")[0] for p in e.problems]
    assert fields_named == [
        "unknownThing",
        "bpffsRoot",
        "gateway",
        "mtu",
        "ctGCInterval",
        "xdpMode",
        "flowCapture",
        "devices",
        "clusterCIDR",
        "snatPortRange",
        "prefilter",
        "prefilter",
        "kvstore.endpoints",
        "tunnel",
    ], e.problems
    msg = str(e)
    assert msg.startswith(f"{len(e.problems)} problems:\n")
    assert all(f"  {p}" in msg.splitlines() for p in e.problems)
    assert "bpffs refuses names with a dot" in msg
    assert "prefilter[0]: 10.244.0.0/16 overlaps podCIDR 10.244.0.0/24" in msg


def test_missing_file(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError) as excinfo:
        load_config(missing)
    assert missing in str(excinfo.value)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("podCIDR: 10.0.0.0/24\nmtu: 1500\n  bad: 3\n", 3),
        ('mtu: 1500\nlogLevel: "unterminated\n', 3),
        ("mtu: 1500\n\n\n\nlogLevel: [info\nstateDir: /x\n", 6),
    ],
)
def test_invalid_yaml_names_the_line(tmp_path: Path, text: str, line: int) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as excinfo:
        load_config(path)
    msg = str(excinfo.value)
    assert path in msg
    assert "invalid YAML" in msg
    assert f"line {line}," in msg


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as excinfo:
        load_config(path)
    assert path in str(excinfo.value)
    assert "mapping" in str(excinfo.value)


def test_file_values_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^mtu:"):
        load_config(write(tmp_path, "mtu: 100\n"))


# --- validation --------------------------------------------------------------


@pytest.mark.parametrize(
    "cidr",
    ["not-a-cidr", "10.244.0.1/24", "10.244.0.0/33", "fd00::/64", "10.244.0.0/31", "", None],
)
def test_bad_pod_cidr(cidr: Any) -> None:
    expect_field_error(dict(defaults(), podCIDR=cidr), "podCIDR")


def test_smallest_pod_cidr_is_slash_30() -> None:
    cfg = from_mapping(dict(defaults(), podCIDR="10.0.0.0/30"))
    assert cfg.gateway == "10.0.0.1"


@pytest.mark.parametrize(
    "gateway",
    ["10.245.0.1", "10.244.1.1", "10.244.0.0", "10.244.0.255", "not-an-ip", "fd00::1"],
)
def test_bad_gateway(gateway: str) -> None:
    expect_field_error(dict(defaults(), gateway=gateway), "gateway")


def test_gateway_inside_cidr_is_normalised() -> None:
    assert from_mapping(dict(defaults(), gateway="10.244.0.200")).gateway == "10.244.0.200"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("stateDir", "var/run/porin"),
        ("stateDir", ""),
        ("stateDir", 5),
        ("bpffsRoot", "sys/fs/bpf/porin"),
        ("bpffsRoot", None),
        ("apiSocket", "porin.sock"),
        ("apiSocket", "./porin.sock"),
    ],
)
def test_relative_paths(key: str, value: Any) -> None:
    err = expect_field_error(dict(defaults(), **{key: value}), key)
    assert "absolute" in str(err)


@pytest.mark.parametrize("mtu", [575, 65536, 0, -1, "1500", 1500.0, True, None])
def test_bad_mtu(mtu: Any) -> None:
    expect_field_error(dict(defaults(), mtu=mtu), "mtu")


@pytest.mark.parametrize("mtu", [576, 9000, 65535])
def test_good_mtu(mtu: int) -> None:
    assert from_mapping(dict(defaults(), mtu=mtu)).mtu == mtu


@pytest.mark.parametrize("level", ["verbose", "trace", "", "critical", 3])
def test_bad_log_level(level: Any) -> None:
    expect_field_error(dict(defaults(), logLevel=level), "logLevel")


@pytest.mark.parametrize("level", ["debug", "info", "warning", "error", "DEBUG", "Info"])
def test_good_log_levels(level: str) -> None:
    assert from_mapping(dict(defaults(), logLevel=level)).log_level.lower() == level.lower()


@pytest.mark.parametrize("size", [15, 0, "65536", None])
def test_bad_endpoints_map_size(size: Any) -> None:
    expect_field_error(dict(defaults(), endpointsMapSize=size), "endpointsMapSize")


@pytest.mark.parametrize("name", [5, ["node"]])
def test_bad_node_name(name: Any) -> None:
    expect_field_error(dict(defaults(), nodeName=name), "nodeName")


def test_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)
