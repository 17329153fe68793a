/* Per-CPU packet and byte counters by (reason, direction). Only the
 * verdict exit (lib/verdict.h) writes them. */
#ifndef PORIN_METRICS_H
#define PORIN_METRICS_H

#include "common.h"
#include "reasons.h"

struct metrics_value {
	__u64 packets;
	__u64 bytes;
};

/* A per-CPU array indexed by reason * 4 + direction: counting costs an
 * array lookup, no hashing and no insertion, on every packet. */
#define METRICS_INDEX(reason, dir) (((__u32)(reason) << 2) | ((dir) & 3))
#ifndef METRICS_SLOTS
#error "METRICS_SLOTS must be defined (daemon/datapath.py:build_flags passes it)"
#endif

PORIN_MAP("percpu_array", __u32, struct metrics_value, metrics, METRICS_SLOTS);

static __always_inline void update_metrics(__u32 len, __u8 reason, __u8 dir)
{
	__u32 idx = METRICS_INDEX(reason, dir);
	struct metrics_value *val = metrics.lookup(&idx);

	if (val) {
		val->packets += 1;
		val->bytes += len;
	}
}

#endif /* PORIN_METRICS_H */
