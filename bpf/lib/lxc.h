/* Delivery to local endpoints: the one way into a pod.
 *
 * Every packet for a local pod passes local_delivery(), whichever path
 * brought it: another pod (bpf_lxc.c from_container), an uplink (NodePort,
 * replies to masqueraded flows: bpf_host.c), the tunnel (bpf_overlay.c,
 * IPIP in bpf_host.c) or the node's stack (to_container). It is where the
 * verdict learns its destination, and where ingress policy decides with
 * the source identity the path carried here. It has to be this
 * function, not to_container: bpf_redirect_peer() enters the pod without
 * running the host veth's egress program.
 */
#ifndef PORIN_LXC_H
#define PORIN_LXC_H

#include "common.h"
#include "eth.h"
#include "flow.h"
#include "ipv4.h"
#include "endpoint.h"
#include "verdict.h"
#include "conntrack.h"
#include "policy.h"

#define DELIVER_REDIRECT 1  /* route the packet into the pod (redirect_peer) */
#define DELIVER_IN_PLACE 0  /* the packet is on its way in already (to_container) */

/* skb->mark of a packet local_delivery sent through the destination's veth:
 * to_container lets it through as it is (it was judged and recorded once
 * already). Crossing into the pod's namespace clears the mark. */
#define MARK_DELIVERED 0x5a0f0000

/* Route an IPv4 packet into a local endpoint: decrement TTL, rewrite MACs
 * as the gateway would, and hand it to the peer of the destination's host
 * veth without crossing the host stack; a flow whose bulk packets come
 * from several CPUs goes out of the host veth instead. */
static __always_inline int redirect_to_endpoint(struct __sk_buff *ctx,
						const struct endpoint_info *dst,
						struct verdict *v)
{
	struct ethhdr *eth = ctx_data(ctx);
	struct iphdr *ip = ctx_data(ctx) + ETH_HLEN;

	if ((void *)(ip + 1) > ctx_data_end(ctx))
		return DROP(DROP_TRUNCATED);
	if (ip->ttl <= 1) {
		v->reason = REASON_TTL_EXPIRED; /* the stack sends time-exceeded */
		return TC_ACT_OK;
	}
	ipv4_dec_ttl(ip);
	eth_rewrite(eth, dst->mac, dst->node_mac);
	if ((v->flags & VERDICT_F_VIA_VETH) && v->dir == DIR_EGRESS) {
		/* a pod's flow: out of the destination's host veth, through the
		 * kernel's backlog like routed traffic (lib/conntrack.h:
		 * ct_note_bulk_cpu); what comes from an uplink or the tunnel goes
		 * straight in, its sender's reordering is not this node's to undo */
		ctx->mark = MARK_DELIVERED;
		return bpf_redirect(dst->ifindex, 0);
	}
	if (bpf_redirect_peer(dst->ifindex, 0) != TC_ACT_REDIRECT)
		return DROP(DROP_REDIRECT_FAILED);
	return TC_ACT_REDIRECT;
}

/* A packet for the local endpoint `ep`, however it got here; `v->reason`
 * says how (FORWARDED from a pod, NODEPORT, REV_SNAT, FROM_TUNNEL,
 * TO_STACK through to_container). The receiver's ingress policy decides
 * here, for every path, with the sender identity the path put in the
 * verdict (DROP_POLICY, DROP_POLICY_DENY). */
static __always_inline int local_delivery(struct __sk_buff *ctx, const struct flow *f,
					  const struct endpoint_info *ep, struct verdict *v,
					  int how)
{
	int ret;

	struct ct4_entry *e = v->ct;

	v->dst_identity = ep->sec_identity;
	if (v->dir == DIR_INGRESS)
		v->ep_id = ep->ep_id;
	/* ingress policy, unless the pipeline settled it (a new flow, a reply):
	 * an established flow's cached allow, else decided now */
	if (!(v->policy & VERDICT_P_INGRESS_DONE) && (!e || e->ingress_rev != ep->policy_rev)) {
		ret = policy_ingress(ep, f, ctx->len, v);
		if (IS_ERR(ret))
			return ret;
		/* a flow the pipeline just created: its entry keeps the allow */
		if (!e && v->ct_status == CT_NEW && (ep->flags & ENDPOINT_F_POLICY_INGRESS))
			e = ct_entry_of(f);
		if (e)
			e->ingress_rev = ep->policy_rev;
	}
	if (how == DELIVER_IN_PLACE)
		return TC_ACT_OK;
	ret = redirect_to_endpoint(ctx, ep, v);
	if (ret == TC_ACT_REDIRECT && v->dir == DIR_EGRESS)
		v->flags |= VERDICT_F_LOCAL_PEER; /* a pod's packet into a pod */
	return ret;
}

#endif /* PORIN_LXC_H */
