/* Programs on a pod's host-side veth (lxc...).
 *
 *   from_container  tc ingress: everything the pod sends
 *   to_container    tc egress:  everything the host stack sends to the pod
 *
 * Packet path of from_container, top to bottom (each program ends in
 * verdict_exit, which counts and reports the verdict once, lib/verdict.h):
 *   1. Ethernet header present, else DROP_TRUNCATED
 *   2. ARP  -> sender must be this endpoint; requests answered with the
 *              host veth MAC (REASON_ARP_REPLY), the rest to the stack
 *   3. IPv6 -> dropped until Porin routes it (lib/ipv6.h): neighbour
 *              discovery DROP_IPV6_NDP, the rest DROP_IPV6_NOT_ROUTED
 *   4. other ethertypes -> DROP_UNKNOWN_L3
 *   5. IPv4 -> header valid, else DROP_TRUNCATED / DROP_IP_OPTIONS_BAD
 *   6. source IP must be an endpoint on this very interface (DROP_INVALID_SIP)
 *      and the source MAC its MAC (DROP_INVALID_SMAC); the verdict takes
 *      its endpoint and identity; then the L4 tuple (DROP_TRUNCATED); UDP
 *      to the overlay's port and IPIP are the nodes' (DROP_POD_TO_OVERLAY)
 *   7. conntrack and services (lib/pipeline.h): one lookup on the tuple as
 *      sent; an established service flow is DNATed to its backend, a reply
 *      translated back to the frontend; a new flow to a frontend gets a
 *      backend (none: ICMP port unreachable back to the pod,
 *      DROP_NO_SERVICE_BACKEND); a pod reaching itself is sourced from the
 *      hairpin address; the sender's egress policy decides a new flow,
 *      cached in its entry (DROP_POLICY, DROP_POLICY_DENY); entries created
 *   8. a reply of a flow that came in DSR (conntrack CT_F_DSR) -> sourced from
 *      the frontend the client reached on another node (lib/dsr.h) and routed
 *      straight out of the uplink (REASON_DSR_REPLY)
 *   9. destination is a local endpoint -> local_delivery into it (REASON_FORWARDED;
 *      the receiver's ingress policy decides a new flow, and an established
 *      one again when its policy revision moved):
 *      straight into its namespace, or through its veth for a flow whose
 *      bulk packets come from several CPUs (lib/conntrack.h)
 *  10. destination behind another node (ipcache) -> overlay: VXLAN with the
 *      source identity as VNI, or IPIP (REASON_TUNNELED, DROP_ENCAP_FAILED;
 *      too big: ICMP fragmentation needed back, DROP_FRAG_NEEDED)
 *  11. leaving through an uplink that masquerades (FIB lookup), in a flow
 *      the pod started -> source translated and sent straight to the
 *      uplink (REASON_MASQUERADED)
 *  12. otherwise -> host stack (REASON_TO_STACK)
 */
#include "lib/common.h"
#include "lib/reasons.h"
#include "lib/verdict.h"
#include "lib/eth.h"
#include "lib/flow.h"
#include "lib/ipv4.h"
#include "lib/endpoint.h"
#include "lib/arp.h"
#include "lib/ipv6.h"
#include "lib/icmp.h"
#include "lib/nat.h"
#include "lib/conntrack.h"
#include "lib/lb.h"
#include "lib/pipeline.h"
#include "lib/ipcache.h"
#include "lib/tunnel.h"
#include "lib/snat.h"
#include "lib/dsr.h"
#include "lib/frag.h"
#include "lib/fib.h"
#include "lib/lxc.h"

/* Step 10: into the overlay towards the node `info` names. */
static __always_inline int to_tunnel(struct __sk_buff *ctx, const struct tunnel_config *cfg,
				     const struct remote_endpoint_info *info, struct verdict *v)
{
	struct iphdr *ip = ipv4_hdr(ctx);
	int ret;

	if (!ip)
		return DROP(DROP_TRUNCATED);
	if (ip->ttl <= 1) {
		v->reason = REASON_TTL_EXPIRED;
		return TC_ACT_OK;
	}
	/* too big for the tunnel and not to be fragmented: tell the pod, as a
	 * router would (GSO packets are segmented to the pod's MTU later) */
	if (ctx->gso_segs <= 1 && (ip->frag_off & bpf_htons(0x4000)) &&
	    bpf_ntohs(ip->tot_len) + tunnel_overhead(cfg) > cfg->mtu) {
		ret = icmp4_reply_error(ctx, ip->daddr, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED,
					cfg->mtu - tunnel_overhead(cfg), DROP_FRAG_NEEDED);
		if (IS_ERR(ret))
			return ret;
		ct_own_icmp_error(ctx, v);
		v->reason = DROP_FRAG_NEEDED;
		return bpf_redirect(ctx->ifindex, 0);
	}
	ipv4_dec_ttl(ip);
	if (cfg->mode == TUNNEL_VXLAN)
		ret = tunnel_vxlan_redirect(ctx, cfg, info->tunnel_endpoint, v->src_identity);
	else
		ret = tunnel_ipip_redirect(ctx, cfg, info->tunnel_endpoint);
	v->reason = REASON_TUNNELED;
	return ret;
}

/* Step 11, BPF host routing for masqueraded traffic: when the route to the
 * destination leaves through an uplink that masquerades, translate the
 * source here and hand the packet straight to that uplink, past the node's
 * IP forwarding path. CTX_GO_ON leaves the packet to the host stack (no
 * route, neighbour not resolved yet, too big, not masqueraded). */
static __always_inline int masquerade_and_route(struct __sk_buff *ctx, struct flow *f,
						struct verdict *v)
{
	struct bpf_fib_lookup fib = {};
	struct host_device *dev;
	struct ethhdr *eth;
	struct iphdr *ip;
	__u32 out;
	int ret;

	/* only the flows the pod started: a reply translated back to a frontend
	 * (a NodePort's node address, a service VIP) already carries its source,
	 * and one of a flow someone else started (the stack's DNAT, e.g. portmap)
	 * is the stack's to translate back */
	if (f->is_fragment || v->ct_status == CT_REPLY || !snat_wanted(f->daddr.v4) ||
	    !lookup_endpoint(f->saddr.v4))
		return CTX_GO_ON;
	/* a first fragment too goes by the stack: to_netdev follows the whole
	 * datagram (lib/frag.h) */
	ip = ipv4_hdr(ctx);
	if (!ip || (ip->frag_off & bpf_htons(IP_MF_BIT)))
		return CTX_GO_ON;
	fib.family = 2; /* AF_INET */
	fib.ipv4_src = f->saddr.v4;
	fib.ipv4_dst = f->daddr.v4;
	fib.ifindex = ctx->ifindex;
	/* tot_len 0: the kernel checks the MTU itself, aware of GSO */
	if (bpf_fib_lookup(ctx, &fib, sizeof(fib), 0) != BPF_FIB_LKUP_RET_SUCCESS)
		return CTX_GO_ON;
	out = fib.ifindex;
	dev = host_device_of(out);
	if (!dev || !(dev->flags & HOST_DEV_MASQUERADE))
		return CTX_GO_ON;
	ip = ipv4_hdr(ctx);
	if (!ip || ip->ttl <= 1)
		return CTX_GO_ON;
	ipv4_dec_ttl(ip);
	ret = snat_egress(ctx, f, dev->node_ip);
	if (ret)
		return ret;
	eth = ctx_data(ctx);
	if ((void *)(eth + 1) > ctx_data_end(ctx))
		return DROP(DROP_TRUNCATED);
	__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
	v->reason = REASON_MASQUERADED;
	return bpf_redirect(out, 0);
}

/* Step 8: a reply of a flow that came in DSR (lib/dsr.h), sourced from its
 * frontend already: routed out of the uplink the FIB names, straight to the
 * client (no masquerade: it carries the address the client used); without
 * such a route, to the host stack. */
static __always_inline int dsr_reply_route(struct __sk_buff *ctx, const struct flow *f,
					   struct verdict *v)
{
	int ret = fib_redirect_uplink(ctx, f);

	v->reason = REASON_DSR_REPLY;
	return ret == CTX_GO_ON ? TC_ACT_OK : ret;
}

static __always_inline int handle_ipv4_from_endpoint(struct __sk_buff *ctx, struct verdict *v)
{
	struct ethhdr *eth = ctx_data(ctx);
	struct remote_endpoint_info *info;
	struct endpoint_info *src, *dst;
	struct tunnel_config *cfg;
	struct flow f;
	int ret;

	ret = flow_parse4_l3(ctx, &f);
	if (ret)
		return ret;
	src = lookup_endpoint(f.saddr.v4);
	if (!src || src->ifindex != ctx->ifindex)
		return DROP(DROP_INVALID_SIP);
	if ((void *)(eth + 1) > ctx_data_end(ctx) || !mac_equal(src->mac, eth->h_source))
		return DROP(DROP_INVALID_SMAC);
	v->ep_id = src->ep_id;
	v->src_identity = src->sec_identity;
	ret = flow_parse4_l4(ctx, &f);
	if (ret)
		return ret;

	/* the overlay is the nodes': a pod must not speak it (it could make
	 * another node believe it is someone else) */
	if ((f.proto == IPPROTO_UDP && f.dport == bpf_htons(VXLAN_PORT)) ||
	    f.proto == IPPROTO_IPIP)
		return DROP(DROP_POD_TO_OVERLAY);

	ret = ct_lb_process(ctx, &f, CT_DIR_OUT, 1, 0, src, v);
	if (ret != CTX_GO_ON)
		return ret;
	if (v->ct_status == CT_REPLY && v->ct && (v->ct->flags & CT_F_DSR)) {
		ret = dsr4_reply(ctx, &f);
		if (IS_ERR(ret))
			return ret;
		if (ret == 0)
			return dsr_reply_route(ctx, &f, v);
	}

	dst = lookup_endpoint(f.daddr.v4);
	if (dst) {
		v->reason = REASON_FORWARDED;
		return local_delivery(ctx, &f, dst, v, DELIVER_REDIRECT);
	}
	cfg = tunnel_cfg();
	info = cfg ? ipcache_lookup(f.daddr.v4) : NULL;
	if (info) {
		v->dst_identity = info->sec_identity;
		if (info->tunnel_endpoint)
			return to_tunnel(ctx, cfg, info, v);
	} else {
		ret = masquerade_and_route(ctx, &f, v);
		if (ret != CTX_GO_ON)
			return ret;
	}
	v->reason = REASON_TO_STACK;
	return TC_ACT_OK;
}

static __always_inline int handle_from_container(struct __sk_buff *ctx, struct verdict *v)
{
	struct ethhdr *eth = ctx_data(ctx);

	if ((void *)(eth + 1) > ctx_data_end(ctx))
		return DROP(DROP_TRUNCATED);
	switch (eth->h_proto) {
	case const_htons(ETH_P_IP):
		return handle_ipv4_from_endpoint(ctx, v);
	case const_htons(ETH_P_ARP):
		return handle_arp_from_endpoint(ctx, v);
	case const_htons(ETH_P_IPV6):
		return DROP(ipv6_pod_drop_reason(ctx));
	default:
		return DROP(DROP_UNKNOWN_L3);
	}
}

int from_container(struct __sk_buff *ctx)
{
	struct verdict v;

	verdict_init(&v, DIR_EGRESS);
	return verdict_exit(ctx, handle_from_container(ctx, &v), &v);
}

/* What the host stack sends to a pod: replies to the pod's own
 * connections (translated back if they belong to a service flow), ICMP
 * errors about them, and connections initiated towards the pod; IPv6
 * is dropped as it is in from_container (the node's side of the veth has
 * IPv6 disabled, so only a raw socket could send it). A packet
 * local_delivery sent through the veth (MARK_DELIVERED) passes as it is,
 * unrecorded: from_container recorded it. */
static __always_inline int handle_to_container(struct __sk_buff *ctx, struct verdict *v)
{
	struct ethhdr *eth = ctx_data(ctx);
	struct endpoint_info *ep;
	struct flow f;
	int ret;

	v->reason = REASON_TO_STACK;
	if ((void *)(eth + 1) > ctx_data_end(ctx))
		return DROP(DROP_TRUNCATED);
	if (eth->h_proto == const_htons(ETH_P_IPV6))
		return DROP(ipv6_pod_drop_reason(ctx));
	if (eth->h_proto != const_htons(ETH_P_IP))
		return TC_ACT_OK;
	ret = flow_parse4(ctx, &f);
	if (ret)
		return ret;
	v->src_identity = identity_of(f.saddr.v4);
	ret = ct_process(ctx, &f, CT_DIR_IN, v);
	if (ret != CTX_GO_ON)
		return ret;
	ep = lookup_endpoint(f.daddr.v4);
	if (!ep)
		return TC_ACT_OK;
	return local_delivery(ctx, &f, ep, v, DELIVER_IN_PLACE);
}

int to_container(struct __sk_buff *ctx)
{
	struct verdict v;

	/* a pod's packet local_delivery already judged, recorded and routed */
	if (ctx->mark == MARK_DELIVERED) {
		ctx->mark = 0;
		return TC_ACT_OK;
	}

	verdict_init(&v, DIR_INGRESS);
	return verdict_exit(ctx, handle_to_container(ctx, &v), &v);
}
