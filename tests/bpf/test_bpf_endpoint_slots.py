"""Endpoints that share a slot of endpoint_slots: validation and delivery
stay right whichever of them holds the slot, and the slots follow every
add, remove and rebuild (bpf/lib/endpoint.h, maps/endpoints.py)."""

from __future__ import annotations

from lxc_harness import POD_A, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT
from scapy.layers.inet import ICMP, IP
from scapy.layers.l2 import Ether

from porin.maps.endpoint_slots import SlotIndex
from porin.maps.endpoints import ENDPOINT_F_SLOT_SHARED, EndpointEntry


def sharing(ip: str, ifindex: int, n: int) -> EndpointEntry:
    return EndpointEntry(ip, ifindex, 40 + n, f"02:00:00:00:01:{n:02x}", f"02:aa:00:00:01:{n:02x}")


# the same low 16 bits as POD_A (10.244.0.10): one slot for all three
P1 = sharing("10.245.0.10", 88, 1)
P2 = sharing("10.246.0.10", 89, 2)


def send(lxc, src: EndpointEntry, dst: str) -> tuple[int, bytes]:
    pkt = Ether(src=src.mac, dst=src.node_mac) / IP(src=src.ip, dst=dst) / ICMP(id=9)
    return lxc.run("from_container", bytes(pkt))


def delivered_to(lxc, dst: EndpointEntry) -> bool:
    ret, out = send(lxc, POD_A, dst.ip)
    return ret == TC_ACT_REDIRECT and Ether(out).dst == dst.mac


def slot(lxc):
    return lxc.endpoints.slots.get(SlotIndex(lxc.endpoints.slots.index(POD_A.ip)))


def test_endpoints_sharing_a_slot_are_all_found(lxc):
    lxc.endpoints.upsert(POD_A)
    lxc.endpoints.upsert(P1)
    lxc.endpoints.upsert(P2)
    s = slot(lxc)
    assert bytes(s.ip) == bytes([10, 244, 0, 10]) and s.flags & ENDPOINT_F_SLOT_SHARED
    assert delivered_to(lxc, P1) and delivered_to(lxc, P2)
    for ep in (POD_A, P1, P2):
        assert lxc.endpoints.datapath_lookup(ep.ip) == ep
    # an address of the same slot that is no endpoint is not one
    ret, _ = send(lxc, POD_A, "10.247.0.10")
    assert ret == TC_ACT_OK
    # the one in the hash alone still has its source checked: it sends from
    # ifindex 88, not from the test's ifindex 1
    ret, _ = send(lxc, P1, POD_A.ip)
    assert ret == TC_ACT_SHOT


def test_removing_the_holder_promotes_another(lxc):
    for ep in (POD_A, P1, P2):
        lxc.endpoints.upsert(ep)
    lxc.endpoints.remove(POD_A.ip)
    s = slot(lxc)
    promoted = bytes(s.ip)
    assert promoted in (bytes([10, 245, 0, 10]), bytes([10, 246, 0, 10]))
    assert s.flags & ENDPOINT_F_SLOT_SHARED  # the third one is still in the hash alone
    assert lxc.endpoints.datapath_lookup(POD_A.ip) is None
    assert lxc.endpoints.datapath_lookup(P1.ip) == P1
    assert lxc.endpoints.datapath_lookup(P2.ip) == P2
    lxc.endpoints.remove(P1.ip if promoted == bytes([10, 246, 0, 10]) else P2.ip)
    s = slot(lxc)
    assert bytes(s.ip) == promoted and not s.flags & ENDPOINT_F_SLOT_SHARED


def test_removing_one_in_the_hash_alone_clears_the_shared_mark(lxc):
    lxc.endpoints.upsert(POD_A)
    lxc.endpoints.upsert(P1)
    lxc.endpoints.remove(P1.ip)
    s = slot(lxc)
    assert bytes(s.ip) == bytes([10, 244, 0, 10]) and not s.flags & ENDPOINT_F_SLOT_SHARED
    assert lxc.endpoints.datapath_lookup(P1.ip) is None
    lxc.endpoints.remove(POD_A.ip)
    assert lxc.endpoints.slots.occupied() == {}


def test_update_in_place_and_move(lxc):
    lxc.endpoints.upsert(POD_A)
    moved = EndpointEntry(POD_A.ip, 1, POD_A.endpoint_id, POD_A.mac, POD_A.node_mac, identity=7)
    lxc.endpoints.upsert(moved)
    assert lxc.endpoints.datapath_lookup(POD_A.ip) == moved
    ret, _ = send(lxc, POD_A, "10.244.0.1")
    assert ret == TC_ACT_OK  # source still valid


def test_sync_slots_rebuilds_from_the_hash(lxc):
    for ep in (POD_A, P1, P2):
        lxc.endpoints.upsert(ep)
    # lose the slots (a new slots map after an upgrade) and leave a stray one
    for idx in lxc.endpoints.slots.occupied():
        lxc.endpoints.slots.vacate(idx, shared=False)
    stray = lxc.endpoints.slots.index("10.244.3.3")
    lxc.endpoints.slots.write(stray, lxc.endpoints.slots.slot(stray))
    lxc.endpoints.slots.vacate(stray, shared=True)
    assert lxc.endpoints.datapath_lookup(P1.ip) is None
    assert lxc.endpoints.sync_slots() == 2
    for ep in (POD_A, P1, P2):
        assert lxc.endpoints.datapath_lookup(ep.ip) == ep
    assert set(lxc.endpoints.slots.occupied()) == {lxc.endpoints.slots.index(POD_A.ip)}
    assert lxc.endpoints.sync_slots() == 0
