"""cni/netconf.py: network configuration, CNI_* environment and endpoint labels."""

from __future__ import annotations

import json
from typing import Any

import pytest

from porin.cni import errors
from porin.cni.errors import CniError
from porin.cni.netconf import (
    DEFAULT_SOCKET,
    LATEST_VERSION,
    SUPPORTED_VERSIONS,
    CniEnv,
    NetConf,
    endpoint_labels,
    parse_cni_args,
    parse_env,
    parse_netconf,
    version_tuple,
)


def conf_bytes(**overrides: Any) -> bytes:
    """A minimal valid netconf with `overrides` applied; a value of None removes the key."""
    raw: dict[str, Any] = {"cniVersion": "1.0.0", "name": "porin", "type": "porin"}
    for key, value in overrides.items():
        if value is None:
            raw.pop(key, None)
        else:
            raw[key] = value
    return json.dumps(raw).encode()


def expect_error(code: int, data: bytes, *fragments: str) -> CniError:
    with pytest.raises(CniError) as excinfo:
        parse_netconf(data)
    err = excinfo.value
    assert err.code == code, err.msg
    for frag in fragments:
        assert frag in err.msg
    return err


# --- parse_netconf: valid ----------------------------------------------------


def test_supported_versions_are_the_spec_versions() -> None:
    assert SUPPORTED_VERSIONS == ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
    assert LATEST_VERSION == "1.1.0"


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_minimal_config_for_each_supported_version(version: str) -> None:
    conf = parse_netconf(conf_bytes(cniVersion=version))
    assert isinstance(conf, NetConf)
    assert conf.cni_version == version
    assert conf.name == "porin"
    assert conf.type == "porin"
    assert conf.mtu is None
    assert conf.ipam is None
    assert conf.dns is None
    assert conf.agent_socket == DEFAULT_SOCKET
    assert conf.prev_result is None
    assert conf.runtime_config == {}
    assert conf.args == {}
    assert conf.valid_attachments is None
    assert conf.raw["cniVersion"] == version


def test_full_config_is_parsed_field_by_field() -> None:
    ipam = {"type": "host-local", "subnet": "10.1.0.0/24"}
    dns = {
        "nameservers": ["10.96.0.10"],
        "domain": "cluster.local",
        "search": ["default.svc.cluster.local"],
        "options": ["ndots:5"],
    }
    rc = {"labels": {"app": "web"}}
    args = {"cni": {"labels": [{"key": "tier", "value": "front"}]}}
    valid = [{"containerID": "abc", "ifname": "eth0"}]
    conf = parse_netconf(
        conf_bytes(
            cniVersion="1.1.0",
            name="my-net_1.x",
            mtu=9000,
            ipam=ipam,
            dns=dns,
            agentSocket="/run/porin/agent.sock",
            runtimeConfig=rc,
            args=args,
            **{"cni.dev/valid-attachments": valid},
        )
    )
    assert conf.name == "my-net_1.x"
    assert conf.mtu == 9000
    assert conf.ipam == ipam
    assert conf.dns == dns
    assert conf.agent_socket == "/run/porin/agent.sock"
    assert conf.runtime_config == rc
    assert conf.args == args
    assert conf.valid_attachments == valid
    assert conf.raw["mtu"] == 9000


def test_prev_result_object_is_kept() -> None:
    prev = {"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2/24"}]}
    conf = parse_netconf(conf_bytes(prevResult=prev))
    assert conf.prev_result == prev


@pytest.mark.parametrize("mtu", [576, 1500, 65535])
def test_mtu_boundaries_accepted(mtu: int) -> None:
    assert parse_netconf(conf_bytes(mtu=mtu)).mtu == mtu


def test_empty_ipam_section_means_no_ipam() -> None:
    assert parse_netconf(conf_bytes(ipam={})).ipam is None


def test_null_runtime_config_and_args_become_empty() -> None:
    data = json.dumps(
        {
            "cniVersion": "1.0.0",
            "name": "n",
            "type": "porin",
            "runtimeConfig": None,
            "args": None,
        }
    ).encode()
    conf = parse_netconf(data)
    assert conf.runtime_config == {}
    assert conf.args == {}


def test_unknown_keys_are_tolerated_and_kept_in_raw() -> None:
    conf = parse_netconf(conf_bytes(somethingElse={"a": 1}))
    assert conf.raw["somethingElse"] == {"a": 1}


def test_version_tuple() -> None:
    assert version_tuple("0.3.1") == (0, 3, 1)
    assert version_tuple("1.1.0") > version_tuple("1.0.0") > version_tuple("0.4.0")


# --- parse_netconf: errors ---------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"{", b"not json", b"{'single': 'quotes'}"])
def test_non_json_is_decode_failure(data: bytes) -> None:
    err = expect_error(errors.DECODE_FAILURE, data)
    assert err.code == 6


@pytest.mark.parametrize("data", [b"[]", b'"porin"', b"42", b"null"])
def test_json_that_is_not_an_object_is_decode_failure(data: bytes) -> None:
    expect_error(errors.DECODE_FAILURE, data, "object")


@pytest.mark.parametrize("version", ["0.2.0", "0.1.0", "1.2.0", "2.0.0", "1.0"])
def test_unsupported_version_is_incompatible(version: str) -> None:
    err = expect_error(errors.INCOMPATIBLE_VERSION, conf_bytes(cniVersion=version), version)
    assert err.code == 1
    assert "1.1.0" in err.details  # tells the runtime what is supported


@pytest.mark.parametrize("missing", ["cniVersion", "name", "type"])
def test_missing_required_field_is_invalid_config(missing: str) -> None:
    err = expect_error(errors.INVALID_CONFIG, conf_bytes(**{missing: None}), missing)
    assert err.code == 7


@pytest.mark.parametrize("field", ["cniVersion", "name", "type"])
@pytest.mark.parametrize("value", ["", 1, ["x"]])
def test_empty_or_non_string_required_field_is_invalid_config(field: str, value: Any) -> None:
    expect_error(errors.INVALID_CONFIG, conf_bytes(**{field: value}), field)


@pytest.mark.parametrize("name", ["-net", "_net", ".net", "my net", "net/1", "n\u00e9t"])
def test_bad_network_name_is_invalid_config(name: str) -> None:
    expect_error(errors.INVALID_CONFIG, conf_bytes(name=name), "name")


@pytest.mark.parametrize("mtu", [0, 575, 65536, -1, "1500", 1500.0, True, False, [1500]])
def test_bad_mtu_is_invalid_config(mtu: Any) -> None:
    expect_error(errors.INVALID_CONFIG, conf_bytes(mtu=mtu), "mtu")


@pytest.mark.parametrize("ipam", ["host-local", ["host-local"], 1, True])
def test_ipam_not_an_object(ipam: Any) -> None:
    expect_error(errors.INVALID_CONFIG, conf_bytes(ipam=ipam), "ipam")


@pytest.mark.parametrize(
    "ipam", [{"subnet": "10.0.0.0/24"}, {"type": ""}, {"type": 3}, {"type": None, "x": 1}]
)
def test_ipam_without_a_type(ipam: dict[str, Any]) -> None:
    expect_error(errors.INVALID_CONFIG, conf_bytes(ipam=ipam), "ipam.type")


@pytest.mark.parametrize("ptype", ["/opt/cni/bin/host-local", "../host-local", "a/b"])
def test_ipam_type_that_is_a_path(ptype: str) -> None:
    expect_error(errors.INVALID_CONFIG, conf_bytes(ipam={"type": ptype}), "ipam.type", "path")


@pytest.mark.parametrize(
    ("dns", "fragment"),
    [
        (["10.0.0.10"], "dns"),
        ("10.0.0.10", "dns"),
        ({"nameservers": "10.0.0.10"}, "dns.nameservers"),
        ({"nameservers": [10]}, "dns.nameservers"),
        ({"search": "svc.local"}, "dns.search"),
        ({"search": [None]}, "dns.search"),
        ({"options": {"ndots": 5}}, "dns.options"),
        ({"domain": ["cluster.local"]}, "dns.domain"),
        ({"domain": 1}, "dns.domain"),
    ],
)
def test_bad_dns(dns: Any, fragment: str) -> None:
    expect_error(errors.INVALID_CONFIG, conf_bytes(dns=dns), fragment)


def test_empty_dns_object_is_fine() -> None:
    assert parse_netconf(conf_bytes(dns={})).dns == {}


@pytest.mark.parametrize("sock", ["porin.sock", "run/porin.sock", "", 5, ["/x"]])
def test_bad_agent_socket(sock: Any) -> None:
    expect_error(errors.INVALID_CONFIG, conf_bytes(agentSocket=sock), "agentSocket")


@pytest.mark.parametrize("prev", [[], "result", 1, True])
def test_bad_prev_result(prev: Any) -> None:
    expect_error(errors.INVALID_CONFIG, conf_bytes(prevResult=prev), "prevResult")


@pytest.mark.parametrize("rc", [["labels"], "x", 3])
def test_bad_runtime_config(rc: Any) -> None:
    expect_error(errors.INVALID_CONFIG, conf_bytes(runtimeConfig=rc), "runtimeConfig")


@pytest.mark.parametrize("args", [["cni"], "x", 3])
def test_bad_args(args: Any) -> None:
    expect_error(errors.INVALID_CONFIG, conf_bytes(args=args), "args")


@pytest.mark.parametrize(
    "valid",
    [
        {"containerID": "a", "ifname": "eth0"},
        "a/eth0",
        ["a"],
        [{"containerID": "a"}],
        [{"ifname": "eth0"}],
        [{"containerID": 1, "ifname": "eth0"}],
        [{"containerID": "a", "ifname": None}],
        [{"containerID": "a", "ifname": "eth0"}, "b"],
    ],
)
def test_bad_valid_attachments(valid: Any) -> None:
    data = conf_bytes(**{"cni.dev/valid-attachments": valid})
    expect_error(errors.INVALID_CONFIG, data, "cni.dev/valid-attachments")


def test_empty_valid_attachments_list_is_fine() -> None:
    conf = parse_netconf(conf_bytes(**{"cni.dev/valid-attachments": []}))
    assert conf.valid_attachments == []


def test_version_is_checked_before_other_fields() -> None:
    # an unsupported version wins over other problems: the runtime learns what to send
    expect_error(errors.INCOMPATIBLE_VERSION, conf_bytes(cniVersion="9.9.9", name=None, mtu=1))


# --- parse_env ---------------------------------------------------------------


def full_env(command: str = "ADD", **overrides: str | None) -> dict[str, str]:
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": "c0ffee",
        "CNI_NETNS": "/var/run/netns/pod1",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": "/opt/cni/bin",
    }
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def expect_env_error(environ: dict[str, str], *fragments: str) -> CniError:
    with pytest.raises(CniError) as excinfo:
        parse_env(environ)
    err = excinfo.value
    assert err.code == errors.INVALID_ENV == 4, err.msg
    for frag in fragments:
        assert frag in err.msg
    return err


@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK"])
def test_full_env_is_parsed(command: str) -> None:
    env = parse_env(full_env(command, CNI_PATH="/opt/cni/bin:/usr/libexec/cni"))
    assert isinstance(env, CniEnv)
    assert env.command == command
    assert env.container_id == "c0ffee"
    assert env.netns == "/var/run/netns/pod1"
    assert env.ifname == "eth0"
    assert env.path == ["/opt/cni/bin", "/usr/libexec/cni"]
    assert env.args == {}


def test_missing_command() -> None:
    expect_env_error({}, "CNI_COMMAND")
    expect_env_error(full_env(CNI_COMMAND=None), "CNI_COMMAND")


@pytest.mark.parametrize("command", ["add", "DELETE", "INIT", " ADD", ""])
def test_unknown_command(command: str) -> None:
    err = expect_env_error(full_env(command), "CNI_COMMAND")
    assert "ADD" in err.details


@pytest.mark.parametrize("command", ["ADD", "CHECK"])
@pytest.mark.parametrize("var", ["CNI_CONTAINERID", "CNI_IFNAME", "CNI_NETNS"])
def test_add_and_check_need_container_env(command: str, var: str) -> None:
    expect_env_error(full_env(command, **{var: None}), var)
    expect_env_error(full_env(command, **{var: ""}), var)


@pytest.mark.parametrize("var", ["CNI_CONTAINERID", "CNI_IFNAME"])
def test_del_needs_container_id_and_ifname(var: str) -> None:
    expect_env_error(full_env("DEL", **{var: None}), var)


def test_del_without_netns_is_fine() -> None:
    env = parse_env(full_env("DEL", CNI_NETNS=None))
    assert env.command == "DEL"
    assert env.netns == ""
    assert env.container_id == "c0ffee"
    assert env.ifname == "eth0"


def test_del_with_empty_netns_is_fine() -> None:
    assert parse_env(full_env("DEL", CNI_NETNS="")).netns == ""


@pytest.mark.parametrize("cid", ["-abc", "_abc", ".abc", "ab c", "ab/c", "ab:c", "ab;c", "\u00e9"])
def test_container_id_with_invalid_characters(cid: str) -> None:
    expect_env_error(full_env(CNI_CONTAINERID=cid), "CNI_CONTAINERID")


@pytest.mark.parametrize("cid", ["a", "0", "abc-DEF_1.2", "f" * 64])
def test_valid_container_ids(cid: str) -> None:
    assert parse_env(full_env(CNI_CONTAINERID=cid)).container_id == cid


@pytest.mark.parametrize("ifname", ["a" * 16, "eth/0", "eth:0", "eth 0", "eth\t0", ".", ".."])
def test_invalid_ifname(ifname: str) -> None:
    expect_env_error(full_env(CNI_IFNAME=ifname), "CNI_IFNAME")


@pytest.mark.parametrize("ifname", ["e", "eth0", "a" * 15, "net-1.2_x"])
def test_valid_ifnames(ifname: str) -> None:
    assert parse_env(full_env(CNI_IFNAME=ifname)).ifname == ifname


@pytest.mark.parametrize("command", ["ADD", "CHECK"])
@pytest.mark.parametrize("netns", ["var/run/netns/x", "netns", "./x"])
def test_relative_netns(command: str, netns: str) -> None:
    expect_env_error(full_env(command, CNI_NETNS=netns), "CNI_NETNS", "absolute")


@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK"])
def test_container_commands_need_cni_path(command: str) -> None:
    expect_env_error(full_env(command, CNI_PATH=None), "CNI_PATH")


def test_empty_cni_path_variable_is_accepted() -> None:
    assert parse_env(full_env(CNI_PATH="")).path == []


@pytest.mark.parametrize("command", ["VERSION", "STATUS", "GC"])
def test_commands_without_container_env(command: str) -> None:
    env = parse_env({"CNI_COMMAND": command})
    assert env.command == command
    assert env.container_id == ""
    assert env.ifname == ""
    assert env.netns == ""
    assert env.path == []


@pytest.mark.parametrize("command", ["VERSION", "STATUS", "GC"])
def test_commands_without_container_env_ignore_bad_container_env(command: str) -> None:
    env = parse_env(
        {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": "-bad id",
            "CNI_IFNAME": "x" * 40,
            "CNI_NETNS": "relative",
            "CNI_ARGS": "malformed",
            "CNI_PATH": "/opt/cni/bin::/usr/lib/cni",
        }
    )
    assert env.container_id == ""
    assert env.path == ["/opt/cni/bin", "/usr/lib/cni"]


def test_cni_args_are_parsed_in_env() -> None:
    env = parse_env(
        full_env(CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0")
    )
    assert env.args == {
        "IgnoreUnknown": "1",
        "K8S_POD_NAMESPACE": "default",
        "K8S_POD_NAME": "web-0",
    }


@pytest.mark.parametrize("args", ["K8S_POD_NAME", "=value", "A=1;B", "A=1;=2"])
def test_malformed_cni_args_in_env(args: str) -> None:
    expect_env_error(full_env(CNI_ARGS=args), "CNI_ARGS")


def test_parse_cni_args_details() -> None:
    assert parse_cni_args("") == {}
    assert parse_cni_args(";;") == {}
    assert parse_cni_args("A=1;") == {"A": "1"}
    assert parse_cni_args("A=") == {"A": ""}
    assert parse_cni_args("A=b=c") == {"A": "b=c"}
    assert parse_cni_args("A=1;A=2") == {"A": "2"}


@pytest.mark.parametrize("args", ["NOEQUALS", "=v", "A=1;junk"])
def test_parse_cni_args_malformed(args: str) -> None:
    with pytest.raises(CniError) as excinfo:
        parse_cni_args(args)
    assert excinfo.value.code == errors.INVALID_ENV
    assert "CNI_ARGS" in excinfo.value.msg


# --- endpoint_labels ---------------------------------------------------------


def conf_with(**overrides: Any) -> NetConf:
    return parse_netconf(conf_bytes(**overrides))


def test_no_labels() -> None:
    assert endpoint_labels(conf_with(), parse_env(full_env())) == {}


def test_labels_from_k8s_cni_args() -> None:
    env = parse_env(full_env(CNI_ARGS="K8S_POD_NAMESPACE=prod;K8S_POD_NAME=api-7;OTHER=x"))
    assert endpoint_labels(conf_with(), env) == {
        "k8s:io.kubernetes.pod.namespace": "prod",
        "k8s:io.kubernetes.pod.name": "api-7",
    }


def test_empty_k8s_cni_args_give_no_labels() -> None:
    env = parse_env(full_env(CNI_ARGS="K8S_POD_NAMESPACE=;K8S_POD_NAME="))
    assert endpoint_labels(conf_with(), env) == {}


def test_labels_from_runtime_config_dict() -> None:
    conf = conf_with(runtimeConfig={"labels": {"app": "web", "replicas": 3}})
    assert endpoint_labels(conf, parse_env(full_env())) == {"app": "web", "replicas": "3"}


def test_labels_from_args_cni_list() -> None:
    conf = conf_with(
        args={
            "cni": {
                "labels": [
                    {"key": "app", "value": "db"},
                    {"key": "tier", "value": "back"},
                    {"key": "no-value"},
                    "not-an-object",
                ]
            }
        }
    )
    assert endpoint_labels(conf, parse_env(full_env())) == {"app": "db", "tier": "back"}


def test_labels_from_all_sources_are_merged() -> None:
    conf = conf_with(
        runtimeConfig={"labels": {"app": "web"}},
        args={"cni": {"labels": [{"key": "tier", "value": "front"}]}},
    )
    env = parse_env(full_env(CNI_ARGS="K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=p1"))
    assert endpoint_labels(conf, env) == {
        "k8s:io.kubernetes.pod.namespace": "ns1",
        "k8s:io.kubernetes.pod.name": "p1",
        "app": "web",
        "tier": "front",
    }


def test_labels_of_unexpected_shape_are_ignored() -> None:
    conf = conf_with(runtimeConfig={"labels": "app=web"}, args={"cni": {"labels": 7}})
    assert endpoint_labels(conf, parse_env(full_env())) == {}
