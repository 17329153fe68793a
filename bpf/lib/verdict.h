/* The verdict of one packet, and the one exit that records it.
 *
 * Each entry program keeps a `struct verdict` on its stack and fills it
 * along the path: the direction, the endpoint, both identities as they
 * become known, the conntrack status, and the reason of a non-drop
 * outcome. Every return from the program goes through verdict_exit(),
 * which turns the helpers' return convention (lib/common.h) into a TC
 * action and records the verdict exactly once: the metrics map (XDP has its
 * own, by reason and action: bpf_xdp.c) and, while someone listens, a
 * `porin monitor` event and a flow event (lib/flowlog.h).
 *
 * One packet is recorded twice only when it crosses two endpoints of this
 * node: a pod's packet redirected into another local pod is FORWARDED on
 * egress (the sender's view) and, as an explicit second record made here,
 * FORWARDED on ingress (the receiver's view). VERDICT_F_LOCAL_PEER says so.
 */
#ifndef PORIN_VERDICT_H
#define PORIN_VERDICT_H

#include "common.h"
#include "reasons.h"
#include "identity.h"
#include "metrics.h"
#include "monitor.h"
#include "flowlog.h"

#define VERDICT_F_LOCAL_PEER 1 /* delivered into another local endpoint */
#define VERDICT_F_VIA_VETH 2   /* deliver through the veth, not straight in (lib/lxc.h) */
#define VERDICT_F_FIRST_REPLY 4 /* the first reply of its connection (the flow log's) */
#define VERDICT_F_REOPENED 8    /* a SYN reusing the tuple of a closed connection: a new one */

/* verdict.policy: where the packet stands with network policy (lib/policy.h) */
#define VERDICT_P_EGRESS_DONE 1   /* nothing left to decide for the sender's egress */
#define VERDICT_P_INGRESS_DONE 2  /* nothing left to decide for the receiver's ingress */

/* The policy decisions of the packet being handled, per CPU. They are kept
 * out of the verdict on the stack: paths that differ only in whether a
 * decision was made would be different states to the verifier, and each
 * decision point would double what it has to follow after it. verdict_exit
 * reads them and leaves them empty for the next packet. */
struct policy_scratch {
	__u32 rule[2];          /* the deciding rule: [0] ingress, [1] egress */
	__u16 ep_id[2];         /* the endpoint whose policy decided */
	__u8 reason[2];         /* 0 allowed, else the drop reason */
	__u8 decided;           /* bit 0: ingress, bit 1: egress */
	__u8 pad;
};

PORIN_MAP("percpu_array", __u32, struct policy_scratch, policy_scratch, 1);

/* conntrack status, as recorded (lib/conntrack.h returns the same values) */
#define CT_NONE 0        /* not looked up */
#define CT_NEW 1
#define CT_ESTABLISHED 2 /* a packet in the initiator's direction */
#define CT_REPLY 3       /* a packet in the responder's direction */
#define CT_RELATED 4     /* an ICMP error about a tracked flow */

struct ct4_entry;

struct verdict {
	__u32 src_identity;  /* 0: unknown */
	__u32 dst_identity;
	__u16 ep_id;         /* the local endpoint the packet is from (egress) or to */
	__u8 reason;         /* REASON_* of a non-drop outcome; a drop's comes from its return */
	__u8 dir;            /* DIR_*, seen from the endpoint */
	__u8 ct_status;      /* CT_* */
	__u8 flags;          /* VERDICT_F_* */
	__u16 rev_nat;       /* the service frontend the packet was translated for, 0: none */
	/* VERDICT_P_*, a whole 8-byte slot: the verifier keeps the value of a
	 * full stack slot (and so follows only the branches it allows), not of
	 * a byte written alone */
	__u64 policy;
	struct ct4_entry *ct; /* the conntrack entry the packet matched, NULL: none */
};

static __always_inline void verdict_init(struct verdict *v, __u8 dir)
{
	__builtin_memset(v, 0, sizeof(*v));
	v->dir = dir;
}

/* lib/policy.h made a decision in `dir` (DIR_*) for endpoint `ep_id`. */
static __always_inline void verdict_policy(struct verdict *v, __u8 dir, __u16 ep_id, __u32 rule,
					   __u8 reason)
{
	__u32 zero = 0, i = dir == DIR_EGRESS;
	struct policy_scratch *ps = policy_scratch.lookup(&zero);

	v->policy |= dir == DIR_EGRESS ? VERDICT_P_EGRESS_DONE : VERDICT_P_INGRESS_DONE;
	if (!ps)
		return;
	i &= 1;
	ps->rule[i] = rule;
	ps->ep_id[i] = ep_id;
	ps->reason[i] = reason;
	ps->decided |= 1 << i;
}

/* The policy-verdict events of the packet, and the rule of a policy drop
 * (XDP decides no policy: nothing to look at). *decided gets the
 * directions decided (bit 0 ingress, bit 1 egress), *last the rule that
 * decided last (the receiver's over the sender's). */
static __always_inline __u32 verdict_policy_notify(struct __ctx_buff *ctx, struct verdict *v,
						   __u8 *decided, __u32 *last)
{
#ifdef PORIN_CTX_XDP
	return 0;
#endif
	__u32 zero = 0, rule = 0;
	struct policy_scratch *ps = policy_scratch.lookup(&zero);

	if (!ps || !ps->decided)
		return 0;
	*decided = ps->decided;
	if (ps->decided & 2) {
		monitor_notify(ctx, MONITOR_TYPE_POLICY, ps->reason[1], DIR_EGRESS,
			       v->src_identity, v->dst_identity, ps->ep_id[1], v->ct_status,
			       ps->rule[1]);
		*last = ps->rule[1];
		if (ps->reason[1])
			rule = ps->rule[1];
	}
	if (ps->decided & 1) {
		monitor_notify(ctx, MONITOR_TYPE_POLICY, ps->reason[0], DIR_INGRESS,
			       v->src_identity, v->dst_identity, ps->ep_id[0], v->ct_status,
			       ps->rule[0]);
		*last = ps->rule[0];
		if (ps->reason[0])
			rule = ps->rule[0];
	}
	ps->decided = 0;
	return rule;
}

/* The flow log's view of the verdict (lib/flowlog.h): drops, first packets
 * and first replies; everything else is an established packet. */
static __always_inline void verdict_flowlog(struct __ctx_buff *ctx, struct verdict *v,
					    __u8 decided, __u32 rule)
{
	__u8 type;

	if (v->reason >= FIRST_DROP_REASON)
		type = FLOW_DROP;
	else if (v->ct_status == CT_NEW || (v->flags & VERDICT_F_REOPENED))
		type = FLOW_NEW;
	else if (v->flags & VERDICT_F_FIRST_REPLY)
		type = FLOW_REPLY;
	else
		return;
	flowlog_notify(ctx, type, v->reason, v->dir, v->src_identity, v->dst_identity, v->ep_id,
		       v->ct_status, v->rev_nat, decided, rule);
}

/* The end of every entry program: `ret` is a helper's result (lib/common.h). */
static __always_inline int verdict_exit(struct __ctx_buff *ctx, int ret, struct verdict *v)
{
	__u32 rule = 0, last = 0;
	__u8 decided = 0;

	if (IS_ERR(ret)) {
		v->reason = -ret;
		ret = CTX_ACT_DROP;
	} else if (ret == CTX_GO_ON) {
		ret = CTX_ACT_OK;
	}
#ifndef PORIN_CTX_XDP /* XDP counts by reason and action (bpf_xdp.c xdp_exit) */
	update_metrics(ctx_len(ctx), v->reason, v->dir);
	if (v->flags & VERDICT_F_LOCAL_PEER)
		update_metrics(ctx_len(ctx), v->reason, DIR_INGRESS);
#endif
	rule = verdict_policy_notify(ctx, v, &decided, &last);
	monitor_notify(ctx, v->reason < FIRST_DROP_REASON ? MONITOR_TYPE_TRACE : MONITOR_TYPE_DROP,
		       v->reason, v->dir, v->src_identity, v->dst_identity, v->ep_id,
		       v->ct_status, rule);
	verdict_flowlog(ctx, v, decided, rule ?: last);
	return ret;
}

#endif /* PORIN_VERDICT_H */
