"""The `ct4_confirmed` map: copies of confirmed flows' conntrack entries.

ct4_global is an LRU, so a flood of new flows evicts idle connections'
entries; a confirmed flow (TCP established, anything else answered) also
has a copy here, a hash nothing evicts, and the datapath puts it back into
ct4_global at the flow's next packet (bpf/lib/conntrack.h). While this
table is full new flows are refused (DROP_CT_MAP_FULL). Same layout as
ct4_global (maps/conntrack.py); the agent's GC removes a copy with its
entry, or, when only the copy is left, once that would have expired.
"""

from __future__ import annotations

from porin.maps import map_types
from porin.maps.conntrack import ConntrackMap


class ConntrackConfirmedMap(ConntrackMap):
    NAME = "ct4_confirmed"
    TYPE = map_types.HASH
    SIZE = "ct_confirmed_map_size"
    SIZE_FLAG = "CT_CONFIRMED_MAP_SIZE"
