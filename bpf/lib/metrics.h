/* Per-CPU packet and byte counters keyed by (reason, direction). */
#ifndef PORIN_METRICS_H
#define PORIN_METRICS_H

#include "common.h"
#include "reasons.h"

struct metrics_key {
	__u8 reason;
	__u8 dir;
	__u16 pad1;
	__u32 pad2;
};

struct metrics_value {
	__u64 packets;
	__u64 bytes;
};

PORIN_MAP("percpu_hash", struct metrics_key, struct metrics_value, metrics, METRICS_MAP_SIZE);

static __always_inline void update_metrics(__u32 len, __u8 reason, __u8 dir)
{
	struct metrics_key key = { .reason = reason, .dir = dir };
	struct metrics_value zero = {};
	struct metrics_value *val;

	val = metrics.lookup_or_try_init(&key, &zero);
	if (val) {
		val->packets += 1;
		val->bytes += len;
	}
}

/* Count and return a verdict in one step, so no path forgets to count. */
static __always_inline int verdict(struct __sk_buff *skb, int ret, __u8 reason, __u8 dir)
{
	update_metrics(skb->len, reason, dir);
	return ret;
}

static __always_inline int drop(struct __sk_buff *skb, __u8 reason, __u8 dir)
{
	return verdict(skb, TC_ACT_SHOT, reason, dir);
}

#endif /* PORIN_METRICS_H */
