/* Flow events for the agent's flow log (`porin observe`, daemon/flows.py).
 *
 * While flow_config.enabled is set (the agent sets it while someone
 * observes), verdict_exit reports into the flow_events ring buffer, which
 * only the agent reads (`porin monitor` has its own ring):
 *
 *   - every drop;
 *   - the first packet of a connection (conntrack said CT_NEW, or a SYN
 *     reuses the tuple of a closed one: VERDICT_F_REOPENED), with its
 *     policy decision and the service it was balanced through;
 *   - the first reply of a connection (VERDICT_F_FIRST_REPLY: the reply
 *     entry's first packet, or a SYN-ACK).
 *
 * Established packets are not reported: one connection is two events, as
 * Cilium's monitor aggregation "medium" does. A per-CPU budget of
 * flow_config.rate events per second (0: none) bounds what a flood costs:
 * beyond it an event is one counter increment, never a ring write, and the
 * agent shows the count as missed (flow_lost[1]; a full ring: [0]).
 */
#ifndef PORIN_FLOWLOG_H
#define PORIN_FLOWLOG_H

#include "common.h"
#include "reasons.h"
#include "capture.h"

#define FLOW_CAPTURE CAPTURE_BYTES
#ifndef FLOW_RING_SIZE
#error "FLOW_RING_SIZE must be defined (daemon/map_specs.py:size_flags passes it)"
#endif

#define FLOW_NEW 1   /* a connection's first packet */
#define FLOW_REPLY 2 /* its first reply */
#define FLOW_DROP 3

#define FLOW_LOST_RING_FULL 0
#define FLOW_LOST_RATE 1

#define FLOW_RATE_WINDOW_NS (1ULL << 30) /* about a second */

struct flow_config {
	__u32 enabled;
	__u32 rate; /* events per second and CPU, 0: unlimited */
};

struct flow_rate {
	__u64 window_start;
	__u64 count;
};

struct flow_event {
	__u64 ktime_ns;
	__u32 ifindex;
	__u32 len;          /* the packet's length */
	__u32 src_identity; /* 0: not known on this path */
	__u32 dst_identity;
	__u32 rule_id;      /* the policy rule that decided, 0: none */
	__u16 ep_id;        /* local endpoint, 0: none */
	__u16 cap_len;      /* bytes of the packet in data[] */
	__u16 rev_nat;      /* the service frontend it was translated for, 0: none */
	__u8 type;          /* FLOW_* */
	__u8 reason;
	__u8 dir;
	__u8 ct_status;
	__u8 policy;        /* bit 0: ingress decided, bit 1: egress decided */
	__u8 pad;
	__u8 data[FLOW_CAPTURE];
};

struct flow_events_table_t {
	int key;
	__u32 leaf;
	int (*ringbuf_output)(void *, __u64, __u64);
	void *(*ringbuf_reserve)(__u64);
	void (*ringbuf_discard)(void *, __u64);
	void (*ringbuf_submit)(void *, __u64);
	__u32 max_entries;
};
__attribute__((section("maps/ringbuf:" PIN_ROOT "/flow_events")))
struct flow_events_table_t flow_events = { .max_entries = FLOW_RING_SIZE };

PORIN_MAP("array", __u32, struct flow_config, flow_config, 1);
PORIN_MAP("percpu_array", __u32, struct flow_rate, flow_rate, 1);
PORIN_MAP("percpu_array", __u32, __u64, flow_lost, 2);

static __always_inline void flow_lost_count(__u32 why)
{
	__u64 *lost = flow_lost.lookup(&why);

	if (lost)
		*lost += 1;
}

/* Within this CPU's budget for the current window? */
static __always_inline int flow_budget(__u32 rate)
{
	__u32 zero = 0;
	struct flow_rate *r;
	__u64 now;

	if (!rate)
		return 1;
	r = flow_rate.lookup(&zero);
	if (!r)
		return 0;
	now = bpf_ktime_get_ns();
	if (now - r->window_start > FLOW_RATE_WINDOW_NS) {
		r->window_start = now;
		r->count = 0;
	}
	if (r->count >= rate)
		return 0;
	r->count += 1;
	return 1;
}

/* `type` FLOW_*, `policy` the decided bits, `rule` the deciding rule. */
static __always_inline void flowlog_notify(struct __ctx_buff *ctx, __u8 type, __u8 reason,
					   __u8 dir, __u32 src_identity, __u32 dst_identity,
					   __u16 ep_id, __u8 ct_status, __u16 rev_nat, __u8 policy,
					   __u32 rule)
{
	__u32 zero = 0;
	struct flow_config *cfg = flow_config.lookup(&zero);
	struct flow_event *ev;

	if (!cfg || !cfg->enabled)
		return;
	if (!flow_budget(cfg->rate)) {
		flow_lost_count(FLOW_LOST_RATE);
		return;
	}
	ev = flow_events.ringbuf_reserve(sizeof(*ev));
	if (!ev) {
		flow_lost_count(FLOW_LOST_RING_FULL);
		return;
	}
	ev->ktime_ns = bpf_ktime_get_ns();
	ev->ifindex = ctx_ifindex(ctx);
	ev->len = ctx_len(ctx);
	ev->src_identity = src_identity;
	ev->dst_identity = dst_identity;
	ev->rule_id = rule;
	ev->ep_id = ep_id;
	ev->rev_nat = rev_nat;
	ev->type = type;
	ev->reason = reason;
	ev->dir = dir;
	ev->ct_status = ct_status;
	ev->policy = policy;
	ev->pad = 0;
	ev->cap_len = capture_head(ctx, ev->data);
	flow_events.ringbuf_submit(ev, 0);
}

#endif /* PORIN_FLOWLOG_H */
