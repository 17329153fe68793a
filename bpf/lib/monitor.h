/* Datapath events for `porin monitor` (porin/cli/monitor.py).
 *
 * While a monitor listens it sets monitor_config.flags; every drop then
 * becomes an event in the monitor_events ring buffer, and with
 * MONITOR_F_TRACE every other verdict too. An event carries the verdict's
 * reason and direction, the interface, the source and destination
 * identities, the local endpoint and the conntrack status as the path knew
 * them (lib/verdict.h), the packet's length and its first MONITOR_CAPTURE
 * bytes, as the packet was at the verdict (a packet turned into an ICMP
 * error shows as that error).
 *
 * With nobody listening, the cost is one inlined array lookup per verdict.
 * A full ring buffer loses events, never packets; the monitor reports the
 * gap from the per-CPU lost counter.
 */
#ifndef PORIN_MONITOR_H
#define PORIN_MONITOR_H

#include "common.h"
#include "reasons.h"
#include "capture.h"

#define MONITOR_F_DROPS 1
#define MONITOR_F_TRACE 2
#define MONITOR_F_POLICY 4  /* policy verdicts of new connections */

#define MONITOR_CAPTURE CAPTURE_BYTES
#ifndef MONITOR_RING_SIZE
#error "MONITOR_RING_SIZE must be defined (daemon/datapath.py:build_flags passes it)"
#endif

#define MONITOR_TYPE_DROP 1
#define MONITOR_TYPE_TRACE 2
#define MONITOR_TYPE_POLICY 3 /* a policy decision: reason 0 allowed, else the drop */

struct monitor_config {
	__u32 flags;
	__u32 pad;
};

struct monitor_event {
	__u64 ktime_ns;
	__u32 ifindex;
	__u32 len;          /* the packet's length */
	__u32 src_identity; /* 0: not known on this path */
	__u32 dst_identity;
	__u16 ep_id;        /* local endpoint, 0: none */
	__u16 cap_len;      /* bytes of the packet in data[] */
	__u8 type;          /* MONITOR_TYPE_* */
	__u8 reason;
	__u8 dir;
	__u8 ct_status;     /* CT_* of lib/verdict.h */
	__u32 rule_id;      /* the policy rule that decided (lib/policy.h), 0: none */
	__u32 pad;
	__u8 data[MONITOR_CAPTURE];
};

struct monitor_events_table_t {
	int key;
	__u32 leaf;
	int (*ringbuf_output)(void *, __u64, __u64);
	void *(*ringbuf_reserve)(__u64);
	void (*ringbuf_discard)(void *, __u64);
	void (*ringbuf_submit)(void *, __u64);
	__u32 max_entries;
};
/* BPF_RINGBUF_OUTPUT, pinned like every other map */
__attribute__((section("maps/ringbuf:" PIN_ROOT "/monitor_events")))
struct monitor_events_table_t monitor_events = { .max_entries = MONITOR_RING_SIZE };

PORIN_MAP("array", __u32, struct monitor_config, monitor_config, 1);
PORIN_MAP("percpu_array", __u32, __u64, monitor_lost, 1);

static __always_inline void monitor_notify(struct __ctx_buff *skb, __u8 type, __u8 reason,
					   __u8 dir, __u32 src_identity, __u32 dst_identity,
					   __u16 ep_id, __u8 ct_status, __u32 rule_id)
{
	__u32 zero = 0;
	struct monitor_config *cfg = monitor_config.lookup(&zero);
	struct monitor_event *ev;
	__u64 *lost;

	if (!cfg || !cfg->flags)
		return;
	if (type == MONITOR_TYPE_POLICY) {
		if (!(cfg->flags & MONITOR_F_POLICY))
			return;
	} else if (reason < FIRST_DROP_REASON ? !(cfg->flags & MONITOR_F_TRACE)
					      : !(cfg->flags & MONITOR_F_DROPS)) {
		return;
	}
	ev = monitor_events.ringbuf_reserve(sizeof(*ev));
	if (!ev) {
		lost = monitor_lost.lookup(&zero);
		if (lost)
			*lost += 1;
		return;
	}
	ev->ktime_ns = bpf_ktime_get_ns();
	ev->ifindex = ctx_ifindex(skb);
	ev->len = ctx_len(skb);
	ev->type = type;
	ev->reason = reason;
	ev->dir = dir;
	ev->src_identity = src_identity;
	ev->dst_identity = dst_identity;
	ev->ep_id = ep_id;
	ev->ct_status = ct_status;
	ev->rule_id = rule_id;
	ev->pad = 0;
	ev->cap_len = capture_head(skb, ev->data);
	monitor_events.ringbuf_submit(ev, 0);
}

#endif /* PORIN_MONITOR_H */
