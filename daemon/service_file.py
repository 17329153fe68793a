"""The declarative services file: loaded at start, reloaded on SIGHUP.

    services:
      - frontend: 10.96.0.10:80
        protocol: tcp              # tcp (default) or udp
        algorithm: maglev          # random (default) or maglev
        affinityTimeout: 300       # seconds; 0 (default) = no session affinity
        backends:
          - 10.244.0.5:8080
          - {address: 10.244.0.6:8080, weight: 2, state: terminating}

The whole file is validated before anything is programmed: one bad entry
rejects the file with its line and field, and the services already
programmed stay exactly as they were.
"""

from __future__ import annotations

from typing import Any

import yaml

from porin.models import Service, ValidationError


class ServiceFileError(ValueError):
    """The services file cannot be used; the message names line and field."""


def load_service_file(path: str) -> list[Service]:
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise ServiceFileError(f"cannot read services file {path}: {e.strerror}") from None
    return parse_service_file(text, path)


def parse_service_file(text: str, name: str = "services file") -> list[Service]:
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ServiceFileError(f"{name}:{where}: invalid YAML: {e}") from None
    if data is None:
        return []
    if not isinstance(data, dict) or set(data) - {"services"}:
        raise ServiceFileError(f"{name}: top level must be a mapping with one key, 'services'")
    items = data.get("services") or []
    if not isinstance(items, list):
        raise ServiceFileError(f"{name}: 'services' must be a list")
    item_nodes = _sequence_nodes(root, "services")
    out: list[Service] = []
    seen: dict[tuple[str, int, str], int] = {}
    for i, item in enumerate(items):
        node = item_nodes[i] if i < len(item_nodes) else None
        try:
            svc = Service.from_json(item)
        except ValidationError as e:
            line = _field_line(node, e.field) if node is not None else None
            where = f" line {line}" if line else ""
            raise ServiceFileError(f"{name}:{where}: services[{i}].{e}") from None
        key = (svc.ip, svc.port, svc.protocol)
        if key in seen:
            line = node.start_mark.line + 1 if node is not None else "?"
            raise ServiceFileError(
                f"{name}: line {line}: services[{i}]: frontend {svc.frontend}/{svc.protocol} "
                f"repeats services[{seen[key]}]"
            )
        seen[key] = i
        out.append(svc)
    return out


def _sequence_nodes(root: Any, key: str) -> list[Any]:
    if not isinstance(root, yaml.MappingNode):
        return []
    for k, v in root.value:
        if getattr(k, "value", None) == key and isinstance(v, yaml.SequenceNode):
            return list(v.value)
    return []


def _field_line(node: Any, field: str) -> int:
    """The line of `field` (e.g. 'backends[1].weight') inside an item node."""
    cur = node
    for part in field.replace("]", "").split("."):
        name, _, idx = part.partition("[")
        nxt = None
        if isinstance(cur, yaml.MappingNode):
            for k, v in cur.value:
                if getattr(k, "value", None) == name:
                    nxt = v
        if nxt is None:
            break
        cur = nxt
        if idx.isdigit() and isinstance(cur, yaml.SequenceNode) and int(idx) < len(cur.value):
            cur = cur.value[int(idx)]
    return cur.start_mark.line + 1
