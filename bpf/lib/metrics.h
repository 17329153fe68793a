/* Per-CPU packet and byte counters by (reason, direction). */
#ifndef PORIN_METRICS_H
#define PORIN_METRICS_H

#include "common.h"
#include "reasons.h"
#include "monitor.h"

struct metrics_value {
	__u64 packets;
	__u64 bytes;
};

/* A per-CPU array indexed by reason * 4 + direction: counting costs an
 * array lookup, no hashing and no insertion, on every packet. */
#define METRICS_INDEX(reason, dir) (((__u32)(reason) << 2) | ((dir) & 3))
#define METRICS_SLOTS (256 * 4)

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

/* Count and return a verdict in one step, so no path forgets to count. */
/* Count a packet's verdict, and tell a listening `porin monitor`. */
static __always_inline void count_verdict(struct __sk_buff *skb, __u8 reason, __u8 dir)
{
	update_metrics(skb->len, reason, dir);
	monitor_notify(skb, reason, dir);
}

static __always_inline int verdict(struct __sk_buff *skb, int ret, __u8 reason, __u8 dir)
{
	count_verdict(skb, reason, dir);
	return ret;
}

static __always_inline int drop(struct __sk_buff *skb, __u8 reason, __u8 dir)
{
	return verdict(skb, TC_ACT_SHOT, reason, dir);
}

#endif /* PORIN_METRICS_H */
