/* The prefilter: source addresses dropped at the earliest point, in XDP.
 *
 * Two maps, as Cilium's prefilter: a hash for single addresses (/32) and an
 * LPM trie for prefixes; the exact one is looked at first. Each entry counts
 * what it dropped (shared counters: a dropped packet is cheap either way).
 * Written by the agent (maps/prefilter.py, `porin prefilter`).
 */
#ifndef PORIN_PREFILTER_H
#define PORIN_PREFILTER_H

#include "common.h"
#include "reasons.h"

#ifndef PREFILTER_MAP_SIZE
#error "PREFILTER_MAP_SIZE must be defined (daemon/datapath.py:build_flags passes it)"
#endif

struct prefilter_key {
	__u32 prefixlen;
	__be32 ip;
};

struct prefilter_value {
	__u64 packets;
	__u64 bytes;
};

PORIN_MAP("hash", __be32, struct prefilter_value, prefilter4_exact, PREFILTER_MAP_SIZE);
PORIN_MAP_F("lpm_trie", struct prefilter_key, struct prefilter_value, prefilter4_lpm,
	    PREFILTER_MAP_SIZE, BPF_F_NO_PREALLOC);

/* DROP(DROP_PREFILTER) for a listed source, else CTX_GO_ON. */
static __always_inline int prefilter4(__be32 saddr, __u32 len)
{
	struct prefilter_key key = { .prefixlen = 32, .ip = saddr };
	struct prefilter_value *v = prefilter4_exact.lookup(&saddr);

	if (!v)
		v = prefilter4_lpm.lookup(&key);
	if (!v)
		return CTX_GO_ON;
	__sync_fetch_and_add(&v->packets, 1);
	__sync_fetch_and_add(&v->bytes, len);
	return DROP(DROP_PREFILTER);
}

#endif /* PORIN_PREFILTER_H */
