"""Protected conntrack entries (bpf/lib/conntrack.h), on a datapath built with
tiny tables: ct4_global (the LRU) of 64 entries, ct4_confirmed of 8.

A confirmed flow (TCP past its handshake) gets a copy in ct4_confirmed; when
a flood of new flows makes the LRU evict its entry, its next packet puts the
entry back, so the flow keeps what its entry held (here: that its replies
pass the initiator's ingress policy, which allows nothing new). While
ct4_confirmed is full, new flows are refused with DROP_CT_MAP_FULL, and the
GC makes room again as flows expire.
"""

from __future__ import annotations

import shutil
import uuid
from types import SimpleNamespace

import pytest
from lxc_harness import DIR_EGRESS, POD_A, POD_B, TC_ACT_REDIRECT, TC_ACT_SHOT
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from porin.daemon.config import AgentConfig
from porin.daemon.ctgc import CtGarbageCollector
from porin.daemon.datapath import compile_programs
from porin.maps import syscall
from porin.maps.conntrack import CT_F_PROTECTED, CT_F_UNPROTECTED, CtKey, monotonic_seconds
from porin.maps.conntrack_tables import Conntrack
from porin.maps.ct4_stats import CtStatsMap
from porin.maps.endpoints import ENDPOINT_F_POLICY_INGRESS, EndpointEntry, EndpointsMap
from porin.maps.ipcache import IpcacheEntry, IpcacheMap
from porin.maps.metrics import MetricsMap, reason_by_name
from porin.maps.policy import PolicyMap, PolicyMapKey

ID_A, ID_B, ID_C = 300, 301, 302
POD_C = EndpointEntry("10.244.0.12", 78, 12, "02:00:00:00:00:0c", "02:aa:00:00:00:0c")
LRU_SIZE, CONFIRMED_SIZE = 64, 8


@pytest.fixture(scope="module")
def tiny():
    root = f"/sys/fs/bpf/plctp-{uuid.uuid4().hex[:8]}"
    cfg = AgentConfig(bpffs_root=root, ct_map_size=LRU_SIZE, ct_confirmed_map_size=CONFIRMED_SIZE)
    try:
        module, progs = compile_programs("bpf_lxc.c", cfg, ["from_container"])
        yield SimpleNamespace(
            module=module,
            fd=progs["from_container"].fd,
            endpoints=EndpointsMap(root),
            ipcache=IpcacheMap(root),
            policy=PolicyMap(root),
            metrics=MetricsMap(root),
            ct=Conntrack(root),
            stats=CtStatsMap(root),
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def dp(tiny):
    """A and B isolated for ingress: B allows A on port 80, A allows nothing, so
    B's packets reach A only as replies of a flow conntrack knows."""
    tiny.ct.flush()
    tiny.stats.set_entries(0)
    tiny.policy.clear()
    for e, ident in ((POD_A, ID_A), (POD_B, ID_B), (POD_C, ID_C)):
        tiny.ipcache.upsert(IpcacheEntry(f"{e.ip}/32", ident, ""))
    tiny.policy.write(PolicyMapKey(POD_B.endpoint_id, "ingress", ID_A, 6, 80, 16), 7, False)
    tiny.policy.write(PolicyMapKey(POD_B.endpoint_id, "ingress", ID_C, 6, 80, 16), 7, False)
    return tiny


def _send(dp, src: EndpointEntry, dst: EndpointEntry, sport: int, dport: int, flags: str) -> int:
    """One TCP packet from `src` (on ifindex 1, where test runs happen) to `dst`."""
    idents = {POD_A.ip: ID_A, POD_B.ip: ID_B, POD_C.ip: ID_C}
    for e in (POD_A, POD_B, POD_C):
        dp.endpoints.upsert(
            EndpointEntry(e.ip, 1 if e is src else e.ifindex, e.endpoint_id, e.mac, e.node_mac,
                          idents[e.ip], ENDPOINT_F_POLICY_INGRESS if e is not POD_C else 0, 1)
        )  # fmt: skip
    pkt = Ether(src=src.mac, dst=src.node_mac) / IP(src=src.ip, dst=dst.ip)
    pkt = pkt / TCP(sport=sport, dport=dport, flags=flags)
    return syscall.prog_test_run(dp.fd, bytes(pkt))[0]


def _connect(dp, sport: int, src: EndpointEntry = POD_A) -> None:
    """src -> B:80, the handshake and one data packet each way."""
    assert _send(dp, src, POD_B, sport, 80, "S") == TC_ACT_REDIRECT
    assert _send(dp, POD_B, src, 80, sport, "SA") == TC_ACT_REDIRECT
    assert _send(dp, src, POD_B, sport, 80, "A") == TC_ACT_REDIRECT
    assert _send(dp, src, POD_B, sport, 80, "PA") == TC_ACT_REDIRECT
    assert _send(dp, POD_B, src, 80, sport, "PA") == TC_ACT_REDIRECT


def _drops(dp, reason: str) -> int:
    return dp.metrics.count(reason_by_name(reason).code, DIR_EGRESS).packets


def test_a_confirmed_flow_gets_a_copy_and_an_unanswered_one_none(dp):
    key = CtKey.of(POD_A.ip, POD_B.ip, 40000, 80, 6)
    assert _send(dp, POD_A, POD_B, 40000, 80, "S") == TC_ACT_REDIRECT
    assert _send(dp, POD_B, POD_A, 80, 40000, "SA") == TC_ACT_REDIRECT
    assert dp.ct.copies.get(key) is None  # answered, but half-open: no copy
    assert _send(dp, POD_A, POD_B, 40000, 80, "A") == TC_ACT_REDIRECT  # the handshake completes
    copy = dp.ct.copies.get(key)
    assert copy is not None and copy.state == 3 and dp.ct.flows.get(key).flags & CT_F_PROTECTED
    assert dp.stats.read()["confirmedEntries"] == 1
    assert _send(dp, POD_C, POD_B, 41000, 80, "S") == TC_ACT_REDIRECT  # never answered
    assert dp.ct.copies.get(CtKey.of(POD_C.ip, POD_B.ip, 41000, 80, 6)) is None
    assert len(dp.ct.copies.raw_entries()) == 1


def test_a_flood_of_new_flows_evicts_the_entry_and_the_flow_goes_on(dp):
    key = CtKey.of(POD_A.ip, POD_B.ip, 40000, 80, 6)
    _connect(dp, 40000)
    restored = dp.stats.read()["restored"]
    for sport in range(1024, 1024 + 4 * LRU_SIZE):  # C floods B with SYNs nobody answers
        assert _send(dp, POD_C, POD_B, sport, 80, "S") == TC_ACT_REDIRECT
    assert dp.ct.flows.get(key) is None  # the LRU evicted the idle connection's entry
    # B's next packet to A is still a reply: its entry is put back from the copy
    assert _send(dp, POD_B, POD_A, 80, 40000, "PA") == TC_ACT_REDIRECT
    back = dp.ct.flows.get(key)
    assert back is not None and back.state == 3 and back.flags & CT_F_PROTECTED
    assert dp.stats.read()["restored"] == restored + 1
    assert _send(dp, POD_A, POD_B, 40000, 80, "PA") == TC_ACT_REDIRECT


def test_without_its_copy_the_evicted_flow_would_break(dp):
    """The control: the same eviction with the copy gone, and A's ingress policy
    takes B's packet for a new flow, which it refuses."""
    key = CtKey.of(POD_A.ip, POD_B.ip, 40000, 80, 6)
    _connect(dp, 40000)
    dp.ct.delete(key)
    before = _drops(dp, "POLICY") + dp.metrics.count(reason_by_name("POLICY").code, 1).packets
    assert _send(dp, POD_B, POD_A, 80, 40000, "PA") == TC_ACT_SHOT
    after = _drops(dp, "POLICY") + dp.metrics.count(reason_by_name("POLICY").code, 1).packets
    assert after == before + 1


def test_new_flows_are_refused_while_the_confirmed_table_is_full_and_gc_makes_room(dp):
    for i in range(CONFIRMED_SIZE + 1):  # one more than fits: it stays unprotected
        assert _send(dp, POD_A, POD_B, 42000 + i, 80, "S") == TC_ACT_REDIRECT
    for i in range(CONFIRMED_SIZE + 1):  # answered: no copy yet, so all are taken
        assert _send(dp, POD_B, POD_A, 80, 42000 + i, "SA") == TC_ACT_REDIRECT
    for i in range(CONFIRMED_SIZE + 1):
        assert _send(dp, POD_A, POD_B, 42000 + i, 80, "A") == TC_ACT_REDIRECT
    st = dp.stats.read()
    assert (st["confirmedEntries"], st["protectFull"]) == (CONFIRMED_SIZE, 1)
    last = dp.ct.flows.get(CtKey.of(POD_A.ip, POD_B.ip, 42000 + CONFIRMED_SIZE, 80, 6))
    assert last.flags & CT_F_UNPROTECTED
    full = _drops(dp, "CT_MAP_FULL")
    assert _send(dp, POD_C, POD_B, 43000, 80, "S") == TC_ACT_SHOT  # a new flow: refused
    assert _drops(dp, "CT_MAP_FULL") == full + 1
    # the flows in the table go on, the unprotected one too
    assert _send(dp, POD_A, POD_B, 42000, 80, "PA") == TC_ACT_REDIRECT
    assert _send(dp, POD_A, POD_B, 42000 + CONFIRMED_SIZE, 80, "PA") == TC_ACT_REDIRECT
    # half the connections end (their entries expire): the GC removes their
    # copies, and new flows are taken again
    for i in range(CONFIRMED_SIZE // 2):
        key = CtKey.of(POD_A.ip, POD_B.ip, 42000 + i, 80, 6)
        e = dp.ct.flows.get(key)
        e.lifetime = 1
        dp.ct.flows.put(key, e)
    gc = CtGarbageCollector(dp.ct, stats=dp.stats)
    gc.run_once()
    assert dp.stats.read()["confirmedEntries"] == len(dp.ct.copies.raw_entries())
    assert len(dp.ct.copies.raw_entries()) == CONFIRMED_SIZE // 2 + 1  # the unprotected one too
    assert _send(dp, POD_C, POD_B, 43000, 80, "S") == TC_ACT_REDIRECT


def test_gc_keeps_an_evicted_flows_copy_until_it_would_expire(dp):
    _connect(dp, 40000)
    key = CtKey.of(POD_A.ip, POD_B.ip, 40000, 80, 6)
    dp.ct.flows.delete(key)  # as the LRU evicts
    gc = CtGarbageCollector(dp.ct, stats=dp.stats, max_interval=30)
    gc.run_once()
    assert dp.ct.copies.get(key) is not None  # still restorable
    copy = dp.ct.copies.get(key)
    # it would have expired more than a pass ago (relative to boot: the machine
    # may have been up for less than any fixed lifetime)
    copy.lifetime = monotonic_seconds() - 31
    dp.ct.copies.put(key, copy)
    gc.run_once()
    assert dp.ct.copies.get(key) is None
    assert dp.stats.read()["confirmedEntries"] == 0
