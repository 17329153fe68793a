/* The prefilter: source addresses dropped at the earliest point, in XDP.
 *
 * As Cilium's prefilter, a hash for single addresses (/32) and an LPM trie
 * for prefixes hold the list; each entry names a counter. In front of them,
 * array indexes (an inlined array lookup costs about 2 ns here, a hash one
 * about 25, a trie one 50 and more) decide most packets without either:
 *
 *   prefilter4_slots  the /32s by a multiplicative hash of the address:
 *                     {address, flags, counter}. A listed address is
 *                     dropped on its slot alone; a slot that two listed
 *                     addresses share says so (SHARED) and the others are
 *                     found in the hash.
 *   prefilter4_l16    by the top 16 bits of the address, as DPDK's DIR-24-8
 *                     splits an LPM table: 0 no prefix covers any of that
 *                     /16 (pass); PREFIX|counter one prefix covers all of it
 *                     and none longer starts inside (drop); BLOCK|n see the
 *                     256 /24s of block n in prefilter4_l24; TRIE (or any
 *                     other value) ask the trie.
 *   prefilter4_l24    blocks of 256, by the third octet: 0, PREFIX|counter
 *                     or TRIE (a prefix longer than /24 starts in that /24).
 *   prefilter4_counts per-CPU {packets, bytes} by counter: no atomic
 *                     operation on the drop path.
 *
 * Written by the agent (daemon/prefilter.py, daemon/prefilter_index.py),
 * entries and their zeroed counters before the indexes that point at them,
 * and taken out in reverse. The trie holds every prefix, so an index that
 * says TRIE (blocks ran out, or a prefix longer than /24) is always right.
 */
#ifndef PORIN_PREFILTER_H
#define PORIN_PREFILTER_H

#include "common.h"
#include "reasons.h"

#ifndef PREFILTER_MAP_SIZE
#error "PREFILTER_MAP_SIZE must be defined (daemon/datapath.py:build_flags passes it)"
#endif
#ifndef PREFILTER_SLOTS
#error "PREFILTER_SLOTS must be defined (daemon/datapath.py:build_flags passes it)"
#endif
#ifndef PREFILTER_SLOT_BITS
#error "PREFILTER_SLOT_BITS must be defined (daemon/datapath.py:build_flags passes it)"
#endif
#ifndef PREFILTER_L16_SIZE
#error "PREFILTER_L16_SIZE must be defined (daemon/datapath.py:build_flags passes it)"
#endif
#ifndef PREFILTER_L24_SIZE
#error "PREFILTER_L24_SIZE must be defined (daemon/datapath.py:build_flags passes it)"
#endif
#ifndef PREFILTER_COUNTS_SIZE
#error "PREFILTER_COUNTS_SIZE must be defined (daemon/datapath.py:build_flags passes it)"
#endif

#define PREFILTER_SLOT_USED 1
#define PREFILTER_SLOT_SHARED 2 /* another listed /32 hashes here too: it is in the hash */
#define PREFILTER_HASH_MUL 2654435761u /* Knuth's multiplicative hash */

/* prefilter4_l16 and prefilter4_l24 values (daemon/prefilter_index.py) */
#define PREFILTER_IDX_PREFIX 0x80000000u /* low bits: the covering prefix's counter */
#define PREFILTER_IDX_BLOCK 0x40000000u  /* low bits: the /24 block (l16 only) */
#define PREFILTER_IDX_TRIE 0x20000000u   /* the trie decides */
#define PREFILTER_IDX_MASK 0x00ffffffu

struct prefilter_key {
	__u32 prefixlen;
	__be32 ip;
};

struct prefilter_entry {
	__u32 counter;  /* index in prefilter4_counts */
	__u32 pad;
};

struct prefilter_slot {
	__be32 ip;
	__u32 flags;
	__u32 counter;
	__u32 pad;
};

struct prefilter_count {
	__u64 packets;
	__u64 bytes;
};

PORIN_MAP("hash", __be32, struct prefilter_entry, prefilter4_exact, PREFILTER_MAP_SIZE);
PORIN_MAP_F("lpm_trie", struct prefilter_key, struct prefilter_entry, prefilter4_lpm,
	    PREFILTER_MAP_SIZE, BPF_F_NO_PREALLOC);
PORIN_MAP("array", __u32, struct prefilter_slot, prefilter4_slots, PREFILTER_SLOTS);
PORIN_MAP("array", __u32, __u32, prefilter4_l16, PREFILTER_L16_SIZE);
PORIN_MAP("array", __u32, __u32, prefilter4_l24, PREFILTER_L24_SIZE);
PORIN_MAP("percpu_array", __u32, struct prefilter_count, prefilter4_counts,
	  PREFILTER_COUNTS_SIZE);

/* The slot of an address as the packet carries it (maps/prefilter_slots.py
 * computes the same). */
static __always_inline __u32 prefilter_slot_of(__be32 ip)
{
	return ((__u32)ip * PREFILTER_HASH_MUL) >> (32 - PREFILTER_SLOT_BITS);
}

/* Count the drop on `counter` (this CPU's copy), then drop. */
static __always_inline int prefilter_drop(__u32 counter, __u32 len)
{
	struct prefilter_count *c = prefilter4_counts.lookup(&counter);

	if (c) {
		c->packets += 1;
		c->bytes += len;
	}
	return DROP(DROP_PREFILTER);
}

/* A listed /32: from its slot, or from the hash when the slot is shared.
 * Returns the counter, or 0. */
static __always_inline __u32 prefilter_exact(__be32 saddr)
{
	__u32 idx = prefilter_slot_of(saddr);
	struct prefilter_slot *s = prefilter4_slots.lookup(&idx);
	struct prefilter_entry *e;

	if (!s || !(s->flags & PREFILTER_SLOT_USED))
		return 0;
	if (s->ip == saddr)
		return s->counter;
	if (!(s->flags & PREFILTER_SLOT_SHARED))
		return 0;
	e = prefilter4_exact.lookup(&saddr);
	return e ? e->counter : 0;
}

/* The longest listed prefix covering `saddr`: the indexes, the trie when
 * they say so. Returns its counter, or 0. */
static __always_inline __u32 prefilter_prefix(__be32 saddr)
{
	struct prefilter_key key = { .prefixlen = 32, .ip = saddr };
	__u32 host = bpf_ntohl(saddr), hi = host >> 16, idx, *at;
	struct prefilter_entry *e;

	at = prefilter4_l16.lookup(&hi);
	if (!at || !*at)
		return 0;
	if (*at & PREFILTER_IDX_PREFIX)
		return *at & PREFILTER_IDX_MASK;
	if (*at & PREFILTER_IDX_BLOCK) {
		idx = ((*at & PREFILTER_IDX_MASK) << 8) | ((host >> 8) & 0xff);
		at = prefilter4_l24.lookup(&idx);
		if (!at || !*at)
			return 0;
		if (*at & PREFILTER_IDX_PREFIX)
			return *at & PREFILTER_IDX_MASK;
	}
	e = prefilter4_lpm.lookup(&key);
	return e ? e->counter : 0;
}

/* DROP(DROP_PREFILTER) for a listed source, else CTX_GO_ON. */
static __always_inline int prefilter4(__be32 saddr, __u32 len)
{
	__u32 counter = prefilter_exact(saddr);

	if (!counter)
		counter = prefilter_prefix(saddr);
	if (!counter)
		return CTX_GO_ON;
	return prefilter_drop(counter, len);
}

#endif /* PORIN_PREFILTER_H */
