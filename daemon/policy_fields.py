"""Reading policy documents field by field, with the path of what is read in
every error: the error types, the field accessor, and the parsers shared by
the Kubernetes and Cilium kinds (selectors, CIDRs, ports, string maps)."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from porin.daemon.policy_model import Peer
from porin.daemon.selectors import OPERATORS, Requirement, Selector, normalize_key
from porin.errors import INVALID_CONFIG, PorinError

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$")
PORT_NAME = re.compile(r"^(?=.*[a-z])[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$")


class PolicyError(PorinError, ValueError):
    """A policy document is invalid; the message names document and field."""

    http_status = 400
    cni_code = INVALID_CONFIG


class NotSupported(PolicyError):
    pass


class Doc:
    """Field access with the path of what is being read, for errors."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, path: str, message: str) -> PolicyError:
        return PolicyError(f"{self.where}: {path}: {message}")

    def unsupported(self, path: str, message: str) -> NotSupported:
        return NotSupported(f"{self.where}: {path}: not supported by Porin: {message}")

    def obj(self, v: Any, path: str, allowed: set[str]) -> dict[str, Any]:
        if v is None:
            return {}
        if not isinstance(v, dict):
            raise self.fail(path, f"must be an object, got {type_name(v)}")
        for k in v:
            if not isinstance(k, str) or k not in allowed:
                raise self.fail(f"{path}.{k}", "unknown field")
        return v

    def lst(self, v: Any, path: str) -> list[Any]:
        if v is None:
            return []
        if not isinstance(v, list):
            raise self.fail(path, f"must be a list, got {type_name(v)}")
        return v

    def string(self, v: Any, path: str) -> str:
        if not isinstance(v, str):
            raise self.fail(path, f"must be a string, got {type_name(v)}")
        return v


def type_name(v: Any) -> str:
    if v is None:
        return "null"
    return {dict: "object", list: "list", str: "string", bool: "boolean"}.get(
        type(v), type(v).__name__
    )


def string_map(d: Doc, v: Any, path: str, label_values: bool) -> dict[str, str]:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise d.fail(path, f"must be an object, got {type_name(v)}")
    out = {}
    for k, x in v.items():
        if not isinstance(k, str) or not k:
            raise d.fail(path, f"key {k!r} must be a non-empty string")
        if not isinstance(x, str):
            raise d.fail(f"{path}.{k}", f"must be a string, got {type_name(x)}")
        if label_values and not LABEL_VALUE.match(x):
            raise d.fail(f"{path}.{k}", f"{x!r} is not a valid label value")
        out[k] = x
    return out


def parse_selector(d: Doc, v: Any, path: str) -> Selector:
    s = d.obj(v, path, {"matchLabels", "matchExpressions"})
    labels = string_map(d, s.get("matchLabels"), f"{path}.matchLabels", label_values=True)
    reqs = []
    for i, e in enumerate(d.lst(s.get("matchExpressions"), f"{path}.matchExpressions")):
        p = f"{path}.matchExpressions[{i}]"
        e = d.obj(e, p, {"key", "operator", "values"})
        key = d.string(e.get("key"), f"{p}.key")
        if not key:
            raise d.fail(f"{p}.key", "must not be empty")
        op = e.get("operator")
        if op not in OPERATORS:
            raise d.fail(
                f"{p}.operator", f"{op!r} is not a valid operator (one of {', '.join(OPERATORS)})"
            )
        values = [
            d.string(x, f"{p}.values[{j}]")
            for j, x in enumerate(d.lst(e.get("values"), f"{p}.values"))
        ]
        if op in ("In", "NotIn") and not values:
            raise d.fail(f"{p}.values", f"must not be empty with operator {op}")
        if op in ("Exists", "DoesNotExist") and values:
            raise d.fail(f"{p}.values", f"must be empty with operator {op}")
        reqs.append(Requirement(normalize_key(key), op, tuple(values)))
    return Selector(tuple(sorted((normalize_key(k), x) for k, x in labels.items())), tuple(reqs))


def parse_cidr(d: Doc, v: Any, path: str) -> str:
    s = d.string(v, path)
    try:
        return str(ipaddress.ip_network(s, strict=False))
    except ValueError:
        raise d.fail(path, f"{s!r} is not a valid CIDR") from None


def parse_cidr_set(d: Doc, cidr: Any, excepts: Any, path: str, except_name: str) -> Peer:
    net = parse_cidr(d, cidr, f"{path}.cidr")
    outer = ipaddress.ip_network(net)
    out = []
    for i, e in enumerate(d.lst(excepts, f"{path}.{except_name}")):
        p = f"{path}.{except_name}[{i}]"
        inner = ipaddress.ip_network(parse_cidr(d, e, p))
        if inner.version != outer.version or not inner.subnet_of(outer) or inner == outer:
            raise d.fail(p, f"{inner} must be a strict subset of {net}")
        out.append(str(inner))
    return Peer(cidr=net, excepts=tuple(out))


def port_number(d: Doc, v: Any, path: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 65535:
        raise d.fail(path, f"must be a port number 1-65535, got {v!r}")
    return v


def protocol(d: Doc, v: Any, path: str, allowed: tuple[str, ...]) -> str:
    if v not in allowed:
        raise d.fail(path, f"{v!r} is not a supported protocol (one of {', '.join(allowed)})")
    return v
