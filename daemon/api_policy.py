"""The agent API's network-policy routes (daemon/api.py mounts them).

POST   /v1/policies/apply           {"documents": [...], "source": "file"}: all or nothing
POST   /v1/policies/delete          {"documents": [...]}: the objects they name
GET    /v1/policies                 every policy: selected endpoints, revision, hits
DELETE /v1/policies                 every policy
GET    /v1/policies/rules           rule ids -> policy and rule; who selects each endpoint
GET    /v1/policies/NS/NAME[?kind=] one policy, per rule its endpoints and counters
DELETE /v1/policies/NS/NAME[?kind=] ("-" for the namespace of a clusterwide policy)
GET    /v1/policy/explain?from=IP&to=IP&port=N&protocol=tcp
PATCH  /v1/endpoints/ID/labels      {"set": {...}, "remove": [...]}
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

from porin.daemon.endpoints import EndpointManager
from porin.daemon.policy import PolicyManager
from porin.daemon.policy_explain import PROTOS, explain
from porin.models import ValidationError

Handler = Callable[[dict[str, Any], Any, re.Match[str]], tuple[int, Any]]

LABEL_KEY = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_./:]{0,252})$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$")


def _documents(body: Any) -> tuple[list[Any], str]:
    if not isinstance(body, dict) or not isinstance(body.get("documents"), list):
        raise ValidationError("documents", "must be a list of policy documents")
    unknown = sorted(set(body) - {"documents", "source"})
    if unknown:
        raise ValidationError(unknown[0], "unknown field (documents, source)")
    source = body.get("source", "input")
    if not isinstance(source, str):
        raise ValidationError("source", "must be a string (a file name, for errors)")
    return body["documents"], source


def _ns(value: str) -> str:
    return "" if value == "-" else value


def routes(
    policy: PolicyManager, manager: EndpointManager, bpffs_root: str
) -> list[tuple[str, re.Pattern[str], Handler]]:
    def apply(q: dict[str, Any], body: Any, m: re.Match[str]) -> tuple[int, Any]:
        docs, source = _documents(body)
        started = time.monotonic()
        out = policy.apply(docs, source)
        # validated, stored and enforced (every entry and endpoint flag written)
        out["enforcedMs"] = round((time.monotonic() - started) * 1000, 1)
        return 200, out

    def delete_docs(q: dict[str, Any], body: Any, m: re.Match[str]) -> tuple[int, Any]:
        docs, source = _documents(body)
        return 200, {"deleted": policy.delete_docs(docs, source)}

    def list_(q: dict[str, Any], body: Any, m: re.Match[str]) -> tuple[int, Any]:
        return 200, policy.list()

    def delete_all(q: dict[str, Any], body: Any, m: re.Match[str]) -> tuple[int, Any]:
        return 200, {"deleted": policy.delete_all()}

    def rules(q: dict[str, Any], body: Any, m: re.Match[str]) -> tuple[int, Any]:
        return 200, policy.rule_table()

    def get(q: dict[str, Any], body: Any, m: re.Match[str]) -> tuple[int, Any]:
        return 200, policy.get(_ns(m.group(1)), m.group(2), q.get("kind"))

    def delete(q: dict[str, Any], body: Any, m: re.Match[str]) -> tuple[int, Any]:
        return 200, {"deleted": policy.delete(_ns(m.group(1)), m.group(2), q.get("kind"))}

    def explain_(q: dict[str, Any], body: Any, m: re.Match[str]) -> tuple[int, Any]:
        for k in ("from", "to"):
            if not q.get(k):
                raise ValidationError(k, "is required (an IPv4 address)")
        proto = str(q.get("protocol", "tcp")).lower()
        if proto not in PROTOS:
            raise ValidationError("protocol", f"{proto!r} must be one of {', '.join(PROTOS)}")
        try:
            port = int(q.get("port", "0"))
        except ValueError:
            raise ValidationError("port", f"{q.get('port')!r} is not a number") from None
        if not 0 <= port <= 65535:
            raise ValidationError("port", "must be 0-65535 (the ICMP type for icmp)")
        out = explain(bpffs_root, q["from"], q["to"], PROTOS[proto], port)
        out["rules"] = policy.rule_table()
        return 200, out

    def relabel(q: dict[str, Any], body: Any, m: re.Match[str]) -> tuple[int, Any]:
        if not isinstance(body, dict):
            raise ValidationError("body", "must be {set: {...}, remove: [...]}")
        unknown = set(body) - {"set", "remove"}
        if unknown:
            raise ValidationError(sorted(unknown)[0], "unknown field")
        set_labels = body.get("set") or {}
        remove = body.get("remove") or []
        if not isinstance(set_labels, dict) or not isinstance(remove, list):
            raise ValidationError("body", "set must be an object, remove a list")
        for k, v in set_labels.items():
            if not isinstance(k, str) or not LABEL_KEY.match(k):
                raise ValidationError(f"set.{k}", "is not a valid label key")
            if not isinstance(v, str) or not LABEL_VALUE.match(v):
                raise ValidationError(f"set.{k}", f"{v!r} is not a valid label value")
        for k in remove:
            if not isinstance(k, str):
                raise ValidationError("remove", "must list label keys")
        ep = manager.relabel(int(m.group(1)), dict(set_labels), list(remove))
        return 200, ep.to_json()

    return [
        ("POST", re.compile(r"^/v1/policies/apply$"), apply),
        ("POST", re.compile(r"^/v1/policies/delete$"), delete_docs),
        ("GET", re.compile(r"^/v1/policies$"), list_),
        ("DELETE", re.compile(r"^/v1/policies$"), delete_all),
        ("GET", re.compile(r"^/v1/policies/rules$"), rules),
        ("GET", re.compile(r"^/v1/policies/([^/]+)/([^/]+)$"), get),
        ("DELETE", re.compile(r"^/v1/policies/([^/]+)/([^/]+)$"), delete),
        ("GET", re.compile(r"^/v1/policy/explain$"), explain_),
        ("PATCH", re.compile(r"^/v1/endpoints/(\d+)/labels$"), relabel),
    ]
