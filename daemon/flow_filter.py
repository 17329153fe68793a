"""Which flows a `porin observe` asks for: the filters of GET /v1/flows.

Every filter is a query parameter; each one given must match (AND), and
those about "either end" (pod, namespace, ip, port, label) match when the
source or the destination does. Unknown parameters and bad values are
refused with the parameter's name, so a typo never silently shows
everything.

    last=N          the newest N that match (default: all kept)
    since=T         at or after T: unix seconds, RFC 3339, or an age (30s, 5m, 2h)
    pod=NS/NAME     either end        from-pod=NS/NAME   to-pod=NS/NAME
    namespace=NS    either end        ip=IP              port=N
    protocol=tcp|udp|icmp             verdict=forwarded|dropped|translated
    label=k=v,...   either end has each label
    follow=1        keep the reply open and stream new flows (one JSON object per line)
    peek=1          read what is kept without switching capture on (porin sysdump)
"""

from __future__ import annotations

import ipaddress
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from porin.models import ValidationError

VERDICTS = ("forwarded", "dropped", "translated")
PROTOCOLS = ("tcp", "udp", "icmp")
KNOWN = {
    "last",
    "since",
    "pod",
    "from-pod",
    "to-pod",
    "namespace",
    "ip",
    "port",
    "protocol",
    "verdict",
    "label",
    "follow",
    "peek",
}
_AGE = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d)$")


def parse_since(text: str, now: float | None = None) -> float:
    """Unix seconds from "1700000000", "2026-12-01T17:00:00Z" or an age like "5m"."""
    now = time.time() if now is None else now
    m = _AGE.match(text)
    if m:
        return now - float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise ValidationError(
            "since", f"{text!r} is not unix seconds, RFC 3339 or an age like 30s, 5m, 2h"
        ) from None


def _pod(name: str, text: str) -> tuple[str, str]:
    ns, sep, pod = text.partition("/")
    if not sep or not ns or not pod:
        raise ValidationError(name, f"{text!r} is not NAMESPACE/NAME")
    return ns, pod


@dataclass
class FlowFilter:
    last: int | None = None
    since: float | None = None
    pod: tuple[str, str] | None = None
    from_pod: tuple[str, str] | None = None
    to_pod: tuple[str, str] | None = None
    namespace: str | None = None
    ip: str | None = None
    port: int | None = None
    protocol: str | None = None
    verdict: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    follow: bool = False
    peek: bool = False

    @classmethod
    def from_query(cls, one: dict[str, str]) -> FlowFilter:
        unknown = sorted(set(one) - KNOWN)
        if unknown:
            raise ValidationError(unknown[0], f"unknown filter (known: {', '.join(sorted(KNOWN))})")
        f = cls()
        if "last" in one:
            if not one["last"].isdigit() or int(one["last"]) < 1:
                raise ValidationError("last", f"must be a positive integer, got {one['last']!r}")
            f.last = int(one["last"])
        if "since" in one:
            f.since = parse_since(one["since"])
        for key, attr in (("pod", "pod"), ("from-pod", "from_pod"), ("to-pod", "to_pod")):
            if key in one:
                setattr(f, attr, _pod(key, one[key]))
        f.namespace = one.get("namespace") or None
        if "ip" in one:
            try:
                f.ip = str(ipaddress.ip_address(one["ip"]))
            except ValueError:
                raise ValidationError("ip", f"{one['ip']!r} is not an IP address") from None
        if "port" in one:
            p = one["port"]
            if not p.isdigit() or not 0 < int(p) < 65536:
                raise ValidationError("port", f"must be 1-65535, got {p!r}")
            f.port = int(p)
        if "protocol" in one:
            f.protocol = one["protocol"].lower()
            if f.protocol not in PROTOCOLS:
                raise ValidationError("protocol", f"must be one of {', '.join(PROTOCOLS)}")
        if "verdict" in one:
            f.verdict = one["verdict"].lower()
            if f.verdict not in VERDICTS:
                raise ValidationError("verdict", f"must be one of {', '.join(VERDICTS)}")
        for item in filter(None, one.get("label", "").split(",")):
            k, sep, v = item.partition("=")
            if not sep or not k:
                raise ValidationError("label", f"{item!r} is not KEY=VALUE")
            f.labels[k] = v
        f.follow = one.get("follow", "") in ("1", "true", "yes")
        f.peek = one.get("peek", "") in ("1", "true", "yes")
        return f

    def matches(self, flow: dict[str, Any]) -> bool:
        src, dst, l4 = flow["source"], flow["destination"], flow["l4"]
        ends = (src, dst)
        if self.since is not None and flow["unixTime"] < self.since:
            return False
        if self.verdict and flow["verdict"] != self.verdict:
            return False
        if self.protocol and l4.get("protocol", "").lower() != self.protocol:
            return False
        if self.from_pod and not _is_pod(src, self.from_pod):
            return False
        if self.to_pod and not _is_pod(dst, self.to_pod):
            return False
        if self.pod and not any(_is_pod(e, self.pod) for e in ends):
            return False
        if self.namespace and not any(e.get("namespace") == self.namespace for e in ends):
            return False
        if self.ip and not any(e.get("ip") == self.ip for e in ends):
            return False
        if self.port and self.port not in (l4.get("source_port"), l4.get("destination_port")):
            return False
        for k, v in self.labels.items():
            if not any(_has_label(e, k, v) for e in ends):
                return False
        return True


def _is_pod(end: dict[str, Any], pod: tuple[str, str]) -> bool:
    return (end.get("namespace"), end.get("pod_name")) == pod


def _has_label(end: dict[str, Any], key: str, value: str) -> bool:
    labels = end.get("labels") or {}
    # "app=web" matches the label app, k8s:app and any source prefix
    return any(k == key or k.split(":", 1)[-1] == key for k, v in labels.items() if v == value)
