"""Typed access to Porin's pinned BPF maps, one module per map.

Every module mirrors the C struct of its map with ctypes and offers
get/put/delete/iterate on the pinned map, so the agent, the CLI and the
tests read and write the same bytes the datapath does.
"""
