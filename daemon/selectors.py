"""Label selectors, as Kubernetes and Cilium define them.

A selector is `matchLabels` (every pair present) AND `matchExpressions`
(`In`, `NotIn`, `Exists`, `DoesNotExist`); an empty selector selects
everything it is asked about. Label keys may carry Cilium's source prefix
(`k8s:app`, `any:app`, `reserved:host`): `k8s:` and `any:` are dropped
before matching, so `k8s:app` and `app` are the same key; `reserved:` is
kept, it names the reserved identities (`reserved:host`, ...).

Endpoint labels are normalised the same way, so a pod's
`k8s:io.kubernetes.pod.namespace` label and a CiliumNetworkPolicy's
`io.kubernetes.pod.namespace` selector meet.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

NAMESPACE_LABEL = "io.kubernetes.pod.namespace"
# the namespace's own labels as an endpoint carries them (Cilium's spelling)
NAMESPACE_LABELS_PREFIX = "io.cilium.k8s.namespace.labels."
# what the API server puts on every namespace
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
POD_NAME_LABEL = "io.kubernetes.pod.name"

OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


def normalize_key(key: str) -> str:
    for source in ("k8s:", "any:", "container:"):
        if key.startswith(source):
            return key[len(source) :]
    return key


def normalize_labels(labels: Mapping[str, str]) -> dict[str, str]:
    return {normalize_key(k): v for k, v in labels.items()}


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.operator == "In":
            return present and labels[self.key] in self.values
        if self.operator == "NotIn":
            return not present or labels[self.key] not in self.values
        if self.operator == "Exists":
            return present
        return not present  # DoesNotExist


@dataclass(frozen=True)
class Selector:
    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[Requirement, ...] = ()

    @property
    def is_empty(self) -> bool:
        return not self.match_labels and not self.match_expressions

    def matches(self, labels: Mapping[str, str]) -> bool:
        """`labels` normalised already (normalize_labels)."""
        for k, v in self.match_labels:
            if labels.get(k) != v:
                return False
        return all(r.matches(labels) for r in self.match_expressions)

    def mentions(self, key: str) -> bool:
        return any(k == key for k, _ in self.match_labels) or any(
            r.key == key for r in self.match_expressions
        )

    def with_label(self, key: str, value: str) -> Selector:
        return Selector(((key, value), *self.match_labels), self.match_expressions)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.match_labels:
            out["matchLabels"] = dict(self.match_labels)
        if self.match_expressions:
            out["matchExpressions"] = [
                {
                    "key": r.key,
                    "operator": r.operator,
                    **({"values": list(r.values)} if r.values else {}),
                }
                for r in self.match_expressions
            ]
        return out

    def __str__(self) -> str:
        parts = [f"{k}={v}" for k, v in self.match_labels]
        for r in self.match_expressions:
            if r.operator in ("In", "NotIn"):
                parts.append(f"{r.key} {r.operator.lower()} ({','.join(r.values)})")
            elif r.operator == "Exists":
                parts.append(r.key)
            else:
                parts.append(f"!{r.key}")
        return ",".join(parts) or "{}"


EVERYTHING = Selector()


def identity_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """The labels an endpoint's security identity is made of: its labels
    without the pod name (else every pod is an identity of its own), in
    namespace `default` when the runtime gave none (as Kubernetes would)."""
    out = {k: v for k, v in labels.items() if normalize_key(k) != POD_NAME_LABEL}
    if not any(normalize_key(k) == NAMESPACE_LABEL for k in out):
        out["k8s:" + NAMESPACE_LABEL] = "default"
    return out
