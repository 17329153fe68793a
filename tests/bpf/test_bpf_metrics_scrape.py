"""What a Prometheus scrape reads from the datapath's maps is what the programs counted.

The collectors read per-CPU maps with batch lookups and count entries with
batch reads; these tests compare both with the slow, obvious reads (one
lookup per key, one get-next-key per entry) on the real programs' maps.
"""

from __future__ import annotations

from collections import Counter

from lxc_harness import DIR_EGRESS, DIR_INGRESS, POD_A, POD_B
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from porin.daemon.map_pressure import MapPressure
from porin.daemon.metrics_collect import DatapathCollector
from porin.maps.ipcache import IpcacheEntry
from porin.maps.metrics import reason_by_name, sum_percpu
from porin.maps.xdp_metrics import XdpMetricsMap


def scrape(collector) -> dict[tuple[str, tuple], float]:
    reg = CollectorRegistry()
    reg.register(collector)
    out = {}
    for fam in text_string_to_metric_families(generate_latest(reg).decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def spoofed() -> bytes:
    """Pod A sends with a source that is not its own: DROP_INVALID_SIP."""
    l3 = IP(src="10.244.0.99", dst=POD_B.ip) / UDP(sport=1000, dport=53) / (b"x" * 20)
    return bytes(Ether(src=POD_A.mac, dst=POD_A.node_mac) / l3)


def test_batch_read_of_the_per_cpu_counters_matches_key_by_key(lxc):
    lxc.endpoints.upsert(POD_A)
    lxc.endpoints.upsert(POD_B)
    key = (reason_by_name("INVALID_SIP").code, DIR_EGRESS)
    xdp_key = (reason_by_name("XDP_PASS").code, DIR_INGRESS)
    before = {(m.reason, m.direction): m.packets for m in lxc.metrics.metrics()}
    for _ in range(3):
        lxc.run("from_container", spoofed())
    lxc.run("from_xdp", spoofed())  # not to a node address: passed on
    slow: Counter = Counter()
    for k, v in lxc.metrics.items_percpu():
        slow[(k.reason, k.dir)] += lxc.metrics.merge_percpu(v).packets
    # XDP's own counters, by (reason, action), join the metrics as (reason, ingress)
    with XdpMetricsMap(lxc.metrics.path.rsplit("/", 1)[0], read_only=True) as x:
        for k, v in x.items_percpu():
            slow[(k.reason, DIR_INGRESS)] += sum_percpu(v).packets
    fast = {(m.reason, m.direction): m.packets for m in lxc.metrics.metrics()}
    assert fast == {k: v for k, v in slow.items() if v}
    assert fast[key] == before.get(key, 0) + 3
    assert fast[xdp_key] == before.get(xdp_key, 0) + 1


def test_scrape_reports_drops_with_their_reason_and_bytes(lxc, tmp_path):
    lxc.endpoints.upsert(POD_A)
    lxc.endpoints.upsert(POD_B)
    root = lxc.metrics.path.rsplit("/", 1)[0]
    collector = DatapathCollector(root, MapPressure(root))
    before = scrape(collector)
    pkt = spoofed()
    for _ in range(5):
        lxc.run("from_container", pkt)
    after = scrape(collector)
    key = (("direction", "egress"), ("reason", "INVALID_SIP"))
    rose = after[("porin_drop_count_total", key)] - before.get(("porin_drop_count_total", key), 0)
    assert rose == 5
    grew = after[("porin_drop_bytes_total", key)] - before.get(("porin_drop_bytes_total", key), 0)
    assert grew == 5 * len(pkt)
    # a drop is never also a forward
    assert ("porin_forward_count_total", key) not in after
    collector.close()


def test_map_fill_counts_hash_and_lpm_entries(lxc):
    lxc.endpoints.upsert(POD_A)
    lxc.endpoints.upsert(POD_B)
    for i in range(7):
        lxc.ipcache.upsert(IpcacheEntry(f"10.244.{i + 1}.0/24", 300 + i, "198.18.0.12"))
    root = lxc.metrics.path.rsplit("/", 1)[0]
    fill = {f.name: f for f in MapPressure(root, max_age=0).sample()}
    assert fill["endpoints"].entries == len(list(lxc.endpoints.keys())) == 2
    assert fill["ipcache"].entries == len(list(lxc.ipcache.keys())) == 7
    assert fill["ipcache"].capacity == lxc.ipcache.max_entries
    assert fill["ipcache"].pressure == 7 / lxc.ipcache.max_entries
    # arrays cannot fill up: no pressure for them
    assert "metrics" not in fill and "lb4_backends" not in fill


def test_map_fill_is_cached_for_max_age(lxc):
    root = lxc.metrics.path.rsplit("/", 1)[0]
    pressure = MapPressure(root, max_age=3600)
    first = {f.name: f.entries for f in pressure.sample()}
    lxc.endpoints.upsert(POD_A)
    assert {f.name: f.entries for f in pressure.sample()} == first
    fresh = {f.name: f.entries for f in MapPressure(root, max_age=0).sample()}
    assert fresh["endpoints"] == first["endpoints"] + 1
    pressure.close()
