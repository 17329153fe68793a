"""maps/metrics.py: reason and direction tables parsed from bpf/lib/reasons.h."""

from __future__ import annotations

import ctypes
import re

import pytest

from porin.bpf import SOURCE_DIR
from porin.maps.metrics import (
    Metric,
    MetricsKey,
    MetricsMap,
    MetricsValue,
    Reason,
    direction_name,
    reason_by_name,
    reason_text,
    reasons,
)

REASONS_H = SOURCE_DIR / "lib" / "reasons.h"

# Deliberately looser than the module's parser: every define of the three
# families, whatever the spacing or comment, so a line it cannot read shows up.
_ANY_DEFINE = re.compile(r"^\s*#\s*define\s+(REASON|DROP|DIR)_(\w+)\s+(\S+)(.*)$")


def header_defines() -> list[tuple[str, str, int]]:
    out = []
    for line in REASONS_H.read_text().splitlines():
        m = _ANY_DEFINE.match(line)
        if m:
            out.append((m.group(1), m.group(2), int(m.group(3), 0)))
    return out


def test_header_exists_and_defines_all_families() -> None:
    kinds = {kind for kind, _, _ in header_defines()}
    assert kinds == {"REASON", "DROP", "DIR"}


def test_every_reason_define_is_parsed() -> None:
    table = reasons()
    defined = [(k, n, c) for k, n, c in header_defines() if k != "DIR"]
    assert len(table) == len(defined)  # no define skipped, no code defined twice
    for _, name, code in defined:
        assert code in table, name
        assert table[code].name == name


def test_drop_codes_are_128_and_up() -> None:
    table = reasons()
    drops = [(n, c) for k, n, c in header_defines() if k == "DROP"]
    assert drops
    for name, code in drops:
        assert code >= 128, name
        assert table[code].is_drop
        assert Metric(code, 1, 0, 0).is_drop


def test_success_reasons_are_below_128() -> None:
    table = reasons()
    ok = [(n, c) for k, n, c in header_defines() if k == "REASON"]
    assert ok
    for name, code in ok:
        assert code < 128, name
        assert not table[code].is_drop
        assert not Metric(code, 1, 0, 0).is_drop


def test_codes_fit_the_u8_reason_of_the_map_key() -> None:
    for code in reasons():
        assert 0 <= code <= 255


def test_reason_names_are_unique() -> None:
    names = [r.name for r in reasons().values()]
    assert len(names) == len(set(names))
    all_names = [n for k, n, _ in header_defines() if k != "DIR"]
    assert len(all_names) == len(set(all_names))


def test_reason_codes_are_unique_in_the_header() -> None:
    codes = [c for k, _, c in header_defines() if k != "DIR"]
    assert len(codes) == len(set(codes))


def test_descriptions_are_non_empty() -> None:
    for reason in reasons().values():
        assert isinstance(reason, Reason)
        assert reason.description.strip(), reason.name
        assert not reason.description.startswith("//")


def test_table_entries_are_consistent() -> None:
    for code, reason in reasons().items():
        assert reason.code == code
        assert reason_text(code) == reason.description
        assert reason_by_name(reason.name) is reason


def test_known_reasons() -> None:
    assert reason_by_name("FORWARDED").code == 0
    assert not reason_by_name("FORWARDED").is_drop
    sip = reason_by_name("INVALID_SIP")
    assert sip.code == 131
    assert sip.is_drop
    assert "source IP" in sip.description


def test_unknown_reason() -> None:
    with pytest.raises(KeyError):
        reason_by_name("NO_SUCH_REASON")
    assert reason_text(250) == "unknown reason 250"


def test_direction_names() -> None:
    dirs = {c: n for k, n, c in header_defines() if k == "DIR"}
    assert {direction_name(c) for c in dirs} == {"ingress", "egress"}
    for code, name in dirs.items():
        assert direction_name(code) == name.lower()
    assert direction_name(1) == "ingress"
    assert direction_name(2) == "egress"
    assert direction_name(9) == "dir-9"


def test_metric_text_properties() -> None:
    m = Metric(reason=131, direction=2, packets=3, bytes=180)
    assert m.reason_text == reason_by_name("INVALID_SIP").description
    assert m.direction_text == "egress"
    assert m.is_drop


def test_map_structs_mirror_metrics_h() -> None:
    # METRICS_INDEX(reason, dir) in bpf/lib/metrics.h: reason << 2 | dir
    assert ctypes.sizeof(MetricsKey) == 4
    key = MetricsKey.of(131, 2)
    assert key.index == 131 * 4 + 2
    assert (key.reason, key.dir) == (131, 2)
    assert ctypes.sizeof(MetricsValue) == 16
    assert MetricsMap.NAME == "metrics"
    text = (SOURCE_DIR / "lib" / "metrics.h").read_text()
    assert "#define METRICS_INDEX(reason, dir) (((__u32)(reason) << 2) | ((dir) & 3))" in text


def test_merge_percpu_sums() -> None:
    unopened = MetricsMap.__new__(MetricsMap)  # merging needs no map fd
    total = unopened.merge_percpu(
        [MetricsValue(packets=1, bytes=60), MetricsValue(packets=2, bytes=100)]
    )
    assert (total.packets, total.bytes) == (3, 160)
