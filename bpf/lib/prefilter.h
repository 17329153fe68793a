/* The prefilter: source addresses dropped at the earliest point, in XDP.
 *
 * As Cilium's prefilter, a hash for single addresses (/32) and an LPM trie
 * for prefixes, each entry counting what it dropped; two indexes in front
 * of them keep the per-packet cost near an XDP program that only drops
 * (a hash lookup costs about 25 ns here, an inlined array one about 2):
 *
 *   prefilter4_slots  array, the /32s by a multiplicative hash of the
 *                     address: {address, flags, packets, bytes}. A listed
 *                     address is dropped on its slot alone; a slot that two
 *                     listed addresses share says so (SHARED) and the others
 *                     are found in the hash.
 *   prefilter4_l16    array by the top 16 bits of the address: how many
 *                     prefixes cover part of that /16; 0 -> no LPM lookup,
 *                     so traffic that passes pays for none while prefixes
 *                     elsewhere are listed.
 *
 * Written by the agent (daemon/prefilter.py, `porin prefilter`), entries
 * before the indexes that point at them, and taken out in reverse.
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

#define PREFILTER_SLOT_USED 1
#define PREFILTER_SLOT_SHARED 2 /* another listed /32 hashes here too: it is in the hash */
#define PREFILTER_HASH_MUL 2654435761u /* Knuth's multiplicative hash */

struct prefilter_key {
	__u32 prefixlen;
	__be32 ip;
};

struct prefilter_value {
	__u64 packets;
	__u64 bytes;
};

struct prefilter_slot {
	__be32 ip;
	__u32 flags;
	__u64 packets;
	__u64 bytes;
};

PORIN_MAP("hash", __be32, struct prefilter_value, prefilter4_exact, PREFILTER_MAP_SIZE);
PORIN_MAP_F("lpm_trie", struct prefilter_key, struct prefilter_value, prefilter4_lpm,
	    PREFILTER_MAP_SIZE, BPF_F_NO_PREALLOC);
PORIN_MAP("array", __u32, struct prefilter_slot, prefilter4_slots, PREFILTER_SLOTS);
PORIN_MAP("array", __u32, __u32, prefilter4_l16, PREFILTER_L16_SIZE);

/* The slot of an address as the packet carries it (maps/prefilter_slots.py
 * computes the same). */
static __always_inline __u32 prefilter_slot_of(__be32 ip)
{
	return ((__u32)ip * PREFILTER_HASH_MUL) >> (32 - PREFILTER_SLOT_BITS);
}

static __always_inline int prefilter_count(__u64 *packets, __u64 *bytes, __u32 len)
{
	__sync_fetch_and_add(packets, 1);
	__sync_fetch_and_add(bytes, len);
	return DROP(DROP_PREFILTER);
}

/* DROP(DROP_PREFILTER) for a listed source, else CTX_GO_ON. */
static __always_inline int prefilter4(__be32 saddr, __u32 len)
{
	struct prefilter_key key = { .prefixlen = 32, .ip = saddr };
	__u32 idx = prefilter_slot_of(saddr), hi = bpf_ntohl(saddr) >> 16;
	struct prefilter_slot *s = prefilter4_slots.lookup(&idx);
	struct prefilter_value *v;
	__u32 *covered;

	if (s && (s->flags & PREFILTER_SLOT_USED)) {
		if (s->ip == saddr)
			return prefilter_count(&s->packets, &s->bytes, len);
		if (s->flags & PREFILTER_SLOT_SHARED) {
			v = prefilter4_exact.lookup(&saddr);
			if (v)
				return prefilter_count(&v->packets, &v->bytes, len);
		}
	}
	covered = prefilter4_l16.lookup(&hi);
	if (!covered || !*covered)
		return CTX_GO_ON;
	v = prefilter4_lpm.lookup(&key);
	if (!v)
		return CTX_GO_ON;
	return prefilter_count(&v->packets, &v->bytes, len);
}

#endif /* PORIN_PREFILTER_H */
