"""bpf_map_type numbers and map flags (uapi/linux/bpf.h), in one place."""

from __future__ import annotations

HASH = 1
ARRAY = 2
PERCPU_HASH = 5
PERCPU_ARRAY = 6
LRU_HASH = 9
LPM_TRIE = 11
LRU_PERCPU_HASH = 10
RINGBUF = 27

# map types whose values are per CPU
PERCPU = {PERCPU_HASH, PERCPU_ARRAY, LRU_PERCPU_HASH}

NAMES = {
    HASH: "hash",
    ARRAY: "array",
    PERCPU_HASH: "percpu_hash",
    PERCPU_ARRAY: "percpu_array",
    LRU_HASH: "lru_hash",
    LRU_PERCPU_HASH: "lru_percpu_hash",
    LPM_TRIE: "lpm_trie",
    RINGBUF: "ringbuf",
}

BPF_F_NO_PREALLOC = 1
