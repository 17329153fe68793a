"""The policy engine's read side (PolicyManager mixes it in): listings,
one policy with its rules' endpoints and counters, the rule table the
monitor and explain attribute with, status."""

from __future__ import annotations

from typing import Any

from porin.daemon.policy_compile import RULE_HOST
from porin.daemon.policy_model import Policy
from porin.daemon.policy_state import PolicyNotFound
from porin.daemon.policy_yaml import PolicyError


class PolicyViews:
    """Needs the PolicyManager's state: policies, programmed, rules, map."""

    def counters(self) -> dict[int, tuple[int, int]]:
        """rule id -> (packets, bytes), summed over the endpoints' entries."""
        out: dict[int, tuple[int, int]] = {}
        for _, v in self.map.entries():
            p, b = out.get(v.rule_id, (0, 0))
            out[v.rule_id] = (p + v.packets, b + v.bytes)
        return out

    def selected(self) -> dict[str, list[int]]:
        """policy key -> the local endpoints it selects."""
        out: dict[str, set[int]] = {}
        with self._state:
            for ep_id, p in self.programmed.items():
                for keys in p.selected_by.values():
                    for k in keys:
                        out.setdefault(k, set()).add(ep_id)
        return {k: sorted(v) for k, v in out.items()}

    def list(self) -> list[dict[str, Any]]:
        counts = self.counters()
        sel = self.selected()
        with self._state:
            pols = sorted(self.policies.values(), key=lambda p: (p.namespace, p.name, p.kind))
            out = []
            for p in pols:
                hits = sum(counts.get(r.id, (0, 0))[0] for r in p.rules)
                out.append(
                    {
                        "namespace": p.namespace,
                        "name": p.name,
                        "kind": p.kind.value,
                        "selectedEndpoints": sel.get(p.key, []),
                        "revision": self.applied_at.get(p.key, 0),
                        "rules": len(p.rules),
                        "hits": hits,
                    }
                )
        return out

    def find(self, namespace: str, name: str, kind: str | None = None) -> Policy:
        with self._state:
            found = [
                p
                for p in self.policies.values()
                if p.name == name and p.namespace == namespace and (kind is None or p.kind == kind)
            ]
        if not found:
            raise PolicyNotFound(f"policy {namespace + '/' if namespace else ''}{name} not found")
        if len(found) > 1:
            raise PolicyError(f"{len(found)} policies are called {name}: name the kind")
        return found[0]

    def get(self, namespace: str, name: str, kind: str | None = None) -> dict[str, Any]:
        p = self.find(namespace, name, kind)
        counts = self.counters()
        by_rule: dict[int, set[int]] = {}
        with self._state:
            for ep_id, prog in self.programmed.items():
                for v in prog.entries.values():
                    by_rule.setdefault(v.rule_id, set()).add(ep_id)
        selected = self.selected().get(p.key, [])
        return {
            "namespace": p.namespace,
            "name": p.name,
            "kind": p.kind.value,
            "revision": self.applied_at.get(p.key, 0),
            "selectedEndpoints": selected,
            "isolates": sorted(d.value for d in p.isolates),
            "document": p.document,
            "rules": [
                {
                    "id": r.id,
                    "section": r.section,
                    "description": r.describe(),
                    "endpoints": sorted(by_rule.get(r.id, ())),
                    "packets": counts.get(r.id, (0, 0))[0],
                    "bytes": counts.get(r.id, (0, 0))[1],
                }
                for r in p.rules
            ],
        }

    def rule_table(self) -> dict[str, Any]:
        """Rule ids and who selects each endpoint, for `porin monitor` and explain."""
        with self._state:
            rules = {
                str(rid): {
                    "policy": self.policies[key].display if key in self.policies else key,
                    "kind": self.policies[key].kind.value if key in self.policies else "",
                    "section": r.section,
                    "description": r.describe(),
                }
                for rid, (key, r) in self.rules.items()
                if key in self.policies
            }
            rules[str(RULE_HOST)] = {
                "policy": "(node)",
                "kind": "",
                "section": "",
                "description": "the node may always reach its pods",
            }
            selected = {
                str(ep_id): {
                    d: [self.policies[k].display for k in keys if k in self.policies]
                    for d, keys in p.selected_by.items()
                }
                for ep_id, p in self.programmed.items()
            }
            cidrs = {str(i): c for c, i in self.cidr_ids.items()}
        return {"rules": rules, "selectedBy": selected, "cidrIdentities": cidrs}

    def status(self) -> dict[str, Any]:
        with self._state:
            return {
                "policies": len(self.policies),
                "namespaces": len(self.namespaces),
                "revision": self.revision,
                "reconciles": self.reconciles,
                "endpointsEnforced": sum(1 for p in self.programmed.values() if p.flags),
                "entries": sum(len(p.entries) for p in self.programmed.values()),
            }
