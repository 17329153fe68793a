/* The verdict of one packet, and the one exit that records it.
 *
 * Each entry program keeps a `struct verdict` on its stack and fills it
 * along the path: the direction, the endpoint, both identities as they
 * become known, the conntrack status, and the reason of a non-drop
 * outcome. Every return from the program goes through verdict_exit(),
 * which turns the helpers' return convention (lib/common.h) into a TC
 * action and records the verdict exactly once: the metrics map and, while
 * someone listens, a `porin monitor` event.
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

#define VERDICT_F_LOCAL_PEER 1 /* delivered into another local endpoint */
#define VERDICT_F_VIA_VETH 2   /* deliver through the veth, not straight in (lib/lxc.h) */

/* conntrack status, as recorded (lib/conntrack.h returns the same values) */
#define CT_NONE 0        /* not looked up */
#define CT_NEW 1
#define CT_ESTABLISHED 2 /* a packet in the initiator's direction */
#define CT_REPLY 3       /* a packet in the responder's direction */
#define CT_RELATED 4     /* an ICMP error about a tracked flow */

struct verdict {
	__u32 src_identity;  /* 0: unknown */
	__u32 dst_identity;
	__u16 ep_id;         /* the local endpoint the packet is from (egress) or to */
	__u8 reason;         /* REASON_* of a non-drop outcome; a drop's comes from its return */
	__u8 dir;            /* DIR_*, seen from the endpoint */
	__u8 ct_status;      /* CT_* */
	__u8 flags;          /* VERDICT_F_* */
	__u16 pad;
};

static __always_inline void verdict_init(struct verdict *v, __u8 dir)
{
	__builtin_memset(v, 0, sizeof(*v));
	v->dir = dir;
}

/* The end of every entry program: `ret` is a helper's result (lib/common.h). */
static __always_inline int verdict_exit(struct __sk_buff *ctx, int ret, struct verdict *v)
{
	__u32 len = ctx->len;

	if (IS_ERR(ret)) {
		v->reason = -ret;
		ret = TC_ACT_SHOT;
	} else if (ret == CTX_GO_ON) {
		ret = TC_ACT_OK;
	}
	update_metrics(len, v->reason, v->dir);
	if (v->flags & VERDICT_F_LOCAL_PEER)
		update_metrics(len, v->reason, DIR_INGRESS);
	monitor_notify(ctx, v->reason, v->dir, v->src_identity, v->dst_identity, v->ep_id,
		       v->ct_status);
	return ret;
}

#endif /* PORIN_VERDICT_H */
