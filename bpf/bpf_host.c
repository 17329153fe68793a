/* Programs on the node's uplinks (the devices in the agent's config) and on
 * its loopback device.
 *
 *   from_netdev   tc ingress of an uplink: what arrives from the network
 *   to_netdev     tc egress of an uplink:  what the node sends out
 *   from_host_lo  tc ingress of lo: the node's own traffic to its addresses
 *
 * Every program ends in verdict_exit, which counts and reports the verdict
 * once (lib/verdict.h); every path into a pod goes through local_delivery
 * (lib/lxc.h).
 *
 * Packet path of from_netdev, top to bottom:
 *   1. not IPv4, not an uplink of the config, or not addressed to this
 *      uplink's node IP -> stack (REASON_HOST_PASS)
 *   2. header and L4 tuple valid (DROP_TRUNCATED / DROP_IP_OPTIONS_BAD)
 *   3. IPIP from a node of the cluster (else DROP_UNKNOWN_NODE) -> decapsulated,
 *      the sender's identity from the ipcache (the host's is refused:
 *      DROP_INVALID_IDENTITY), conntrack, delivered into the pod (REASON_FROM_TUNNEL);
 *      with the DSR option (lib/dsr.h): a client's packet for a local
 *      backend (else DROP_DSR_NO_BACKEND), its frontend remembered, conntrack
 *      (marked CT_F_DSR), delivered into the pod (REASON_DSR_IN)
 *   4. the overlay's own VXLAN packets -> the kernel's VXLAN device (REASON_HOST_PASS);
 *      fragments (lib/frag.h): a non-first one takes its first's ports and
 *      goes on as it did; its first not seen -> stack (REASON_FRAG_UNKNOWN)
 *   5. ICMP error quoting a masqueraded flow -> translated back to the pod
 *      (outer destination, quoted source and port, checksums), delivered
 *      (REASON_REV_SNAT)
 *   6. reply to a masqueraded flow (nat4 IN entry) -> destination back to the
 *      pod, conntrack accounted, delivered into the pod (REASON_REV_SNAT);
 *      a NodePort reply from a backend on another node: translated back to
 *      the frontend by conntrack and routed out to the client (lib/fib.h)
 *   7. NodePort frontend (node IP:port) -> conntrack and services
 *      (lib/pipeline.h): backend from the flow entry or chosen, DNAT,
 *      delivered into the backend pod (REASON_NODEPORT); a backend on
 *      another node: nodePortMode dsr, the DSR header and out to its node
 *      as XDP does it (lib/dsr.h, REASON_NODEPORT_DSR), else source translated
 *      to this node and a NAT port, sent through the overlay, or routed
 *      to the pod without one (tunnel: disabled) (REASON_NODEPORT_SNAT); no
 *      active backend
 *      -> ICMP port unreachable back out (DROP_NO_SERVICE_BACKEND)
 *   8. otherwise -> stack (REASON_HOST_PASS)
 *
 * Packet path of to_netdev:
 *   1. not IPv4, or not from a local pod -> out untouched (REASON_HOST_PASS)
 *   2. destination in the non-masquerade CIDRs -> out untouched
 *   3. fragments (lib/frag.h): a non-first one takes its first's ports and is
 *      translated as it was (its address); its first not seen -> out
 *      untouched (REASON_FRAG_UNKNOWN)
 *   4. a reply of a flow someone else started (conntrack) -> out untouched
 *   5. masquerade: source becomes the node IP and a NAT port (REASON_MASQUERADED;
 *      DROP_NAT_MAP_FULL / DROP_NAT_NO_PORT when no translation can be made)
 *
 * Packet path of from_host_lo:
 *   1. not IPv4, ICMP, or no service frontend -> stack (REASON_HOST_PASS)
 *   2. NodePort frontend -> as from_netdev's step 7, with the host identity
 *
 * Conntrack entries evicted by the LRU are put back from their protected
 * copies here too; the copies themselves are made by bpf_lxc.c's programs
 * and the agent's GC (lib/conntrack.h: CT_PROTECT_ON_LOOKUP).
 */
#define CT_PROTECT_ON_LOOKUP 0
#include "lib/common.h"
#include "lib/reasons.h"
#include "lib/verdict.h"
#include "lib/eth.h"
#include "lib/flow.h"
#include "lib/ipv4.h"
#include "lib/endpoint.h"
#include "lib/icmp.h"
#include "lib/nat.h"
#include "lib/conntrack.h"
#include "lib/lb.h"
#include "lib/pipeline.h"
#include "lib/snat.h"
#include "lib/identity.h"
#include "lib/ipcache.h"
#include "lib/tunnel.h"
#include "lib/dsr.h"
#include "lib/frag.h"
#include "lib/fib.h"
#include "lib/lxc.h"

#ifndef NODEPORT_DSR
#error "NODEPORT_DSR must be defined (daemon/datapath.py:build_flags passes it)"
#endif

/* Into the local pod `f` is addressed to, counted under `reason`; not a
 * local pod: the node's stack. */
static __always_inline int deliver_to_pod(struct __sk_buff *ctx, const struct flow *f,
					  __u8 reason, struct verdict *v)
{
	struct endpoint_info *ep = lookup_endpoint(f->daddr.v4);

	if (!ep) {
		v->reason = REASON_HOST_PASS;
		return TC_ACT_OK;
	}
	v->reason = reason;
	return local_delivery(ctx, f, ep, v, DELIVER_REDIRECT);
}

/* Too big for the uplink once `overhead` bytes of encapsulation are added,
 * and not to be fragmented: ICMP fragmentation needed back to the client,
 * from the frontend's address and about the frontend (conntrack makes the
 * quote the client's packet again), as a router would. GSO packets are
 * segmented to the MTU later. CTX_GO_ON when it fits. */
static __always_inline int nodeport_too_big(struct __sk_buff *ctx,
					    const struct tunnel_config *cfg, __u32 overhead,
					    const struct flow *fe, struct verdict *v)
{
	struct iphdr *ip = ipv4_hdr(ctx);
	int ret;

	if (!ip)
		return DROP(DROP_TRUNCATED);
	if (ctx->gso_segs > 1 || !(ip->frag_off & bpf_htons(0x4000)) ||
	    bpf_ntohs(ip->tot_len) + overhead <= cfg->mtu)
		return CTX_GO_ON;
	ret = icmp4_reply_error(ctx, fe->daddr.v4, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED,
				cfg->mtu - overhead, DROP_FRAG_NEEDED);
	if (IS_ERR(ret))
		return ret;
	ct_own_icmp_error(ctx, v);
	v->reason = DROP_FRAG_NEEDED;
	return bpf_redirect(ctx->ifindex, 0);
}

/* A NodePort packet (to frontend `fe`) DNATed to a backend on another node.
 * nodePortMode dsr, from the network: to the backend's node with the DSR
 * header, as XDP sends it (REASON_NODEPORT_DSR counts both). Otherwise sourced
 * from this node (a NAT port, as masquerade does, so the reply comes back
 * here and is translated back), sent through the overlay as the node
 * itself, or without one (`tunnel: disabled`) routed to the backend as the
 * network routes pods; the node's own connections always so (a DSR reply
 * would reach the node from its own address). Not a backend behind another
 * node: the stack's. */
static __always_inline int nodeport_to_remote(struct __sk_buff *ctx, struct flow *f,
					      const struct flow *fe, int dsr, struct verdict *v)
{
	struct tunnel_config *cfg = tunnel_cfg_any();
	struct remote_endpoint_info *info = cfg ? ipcache_lookup(f->daddr.v4) : NULL;
	int ret;

	v->reason = REASON_HOST_PASS;
	if (!info || !info->tunnel_endpoint)
		return TC_ACT_OK;
	v->dst_identity = info->sec_identity;
	ret = nodeport_too_big(ctx, cfg, NODEPORT_DSR && dsr ? DSR_ENCAP_LEN : tunnel_overhead(cfg),
			       fe, v);
	if (ret != CTX_GO_ON)
		return ret;
	if (NODEPORT_DSR && dsr) {
		v->reason = REASON_NODEPORT_DSR;
		return dsr4_encap_redirect(ctx, cfg->node_ip, info->tunnel_endpoint, fe->daddr.v4,
					   fe->dport, cfg->uplink_ifindex);
	}
	ret = snat_egress(ctx, f, cfg->node_ip);
	if (ret)
		return ret;
	v->reason = REASON_NODEPORT_SNAT;
	if (cfg->mode == TUNNEL_VXLAN)
		return tunnel_vxlan_redirect(ctx, cfg, info->tunnel_endpoint, IDENTITY_REMOTE_NODE);
	if (cfg->mode == TUNNEL_IPIP)
		return tunnel_ipip_redirect(ctx, cfg, info->tunnel_endpoint);
	/* the kernel routes it (the route to the pod) and resolves the next hop */
	if (porin_redirect_neigh(cfg->uplink_ifindex, NULL, 0, 0) != TC_ACT_REDIRECT)
		return DROP(DROP_REDIRECT_FAILED);
	return TC_ACT_REDIRECT;
}

/* Translated back and not for a local pod (a NodePort reply from a backend
 * on another node, on its way to the client): out of the uplink. */
static __always_inline int deliver_or_route(struct __sk_buff *ctx, const struct flow *f,
					    __u8 reason, struct verdict *v)
{
	int ret;

	if (lookup_endpoint(f->daddr.v4))
		return deliver_to_pod(ctx, f, reason, v);
	v->reason = reason;
	ret = fib_redirect_uplink(ctx, f);
	if (ret != CTX_GO_ON)
		return ret;
	v->reason = REASON_HOST_PASS;
	return TC_ACT_OK;
}

/* A packet to a NodePort frontend, from `identity`: conntrack and services
 * (lib/pipeline.h; no backend: the ICMP refusal goes back with
 * `bounce_flags`), then into the backend pod. */
static __always_inline int nodeport_to_pod(struct __sk_buff *ctx, struct flow *f,
					   __u32 identity, __u64 bounce_flags, struct verdict *v)
{
	struct flow fe = *f;
	int ret;

	v->src_identity = identity;
	ret = ct_lb_process(ctx, f, CT_DIR_IN, 1, bounce_flags, NULL, v);
	if (ret != CTX_GO_ON)
		return ret;
	if (lookup_endpoint(f->daddr.v4))
		return deliver_to_pod(ctx, f, REASON_NODEPORT, v);
	return nodeport_to_remote(ctx, f, &fe, identity != IDENTITY_HOST, v);
}

/* Step 3, DSR (lib/dsr.h): the client's packet, already addressed to its
 * backend here, from the node the client reached; the frontend it came in
 * for is remembered for the replies. */
static __always_inline int handle_dsr(struct __sk_buff *ctx, const struct dsr_opt4 *opt,
				      struct verdict *v)
{
	struct endpoint_info *ep;
	struct ct4_entry *e;
	struct flow f;
	int ret;

	ret = dsr4_decap(ctx);
	if (ret)
		return ret;
	ret = flow_parse4(ctx, &f);
	if (ret)
		return ret;
	ep = lookup_endpoint(f.daddr.v4);
	if (!ep)
		return DROP(DROP_DSR_NO_BACKEND);
	v->src_identity = identity_of(f.saddr.v4);
	if (v->src_identity == IDENTITY_HOST)
		return DROP(DROP_INVALID_IDENTITY);
	/* an ICMP error (about the flow, sent on by the frontend node) is
	 * matched to it by conntrack: nothing to note */
	if (!f.is_fragment && f.proto != IPPROTO_ICMP)
		dsr4_note(&f, opt);
	ret = ct_process(ctx, &f, CT_DIR_IN, v);
	if (ret != CTX_GO_ON)
		return ret;
	if (!f.is_fragment && f.proto != IPPROTO_ICMP) {
		e = v->ct ? v->ct : ct_entry_of(&f);
		if (e && !(e->flags & CT_F_DSR))
			e->flags |= CT_F_DSR;
	}
	v->reason = REASON_DSR_IN;
	return local_delivery(ctx, &f, ep, v, DELIVER_REDIRECT);
}

/* Step 3: IPIP from another node: the outer source must be a node of the
 * cluster; the sender's identity is the ipcache's for the inner source. */
static __always_inline int handle_ipip(struct __sk_buff *ctx, const struct flow *outer,
				       struct verdict *v)
{
	struct remote_endpoint_info *node;
	struct dsr_opt4 opt;
	struct flow f;
	int ret, dsr;

	v->reason = REASON_HOST_PASS;
	dsr = dsr4_read_opt(ctx, &opt);
	if (!dsr && !tunnel_cfg())
		return TC_ACT_OK;
	node = ipcache_lookup(outer->saddr.v4);
	if (!node || !(node->flags & IPCACHE_F_NODE))
		return DROP(DROP_UNKNOWN_NODE);
	if (dsr)
		return handle_dsr(ctx, &opt, v);
	ret = tunnel_ipip_decap(ctx);
	if (ret)
		return ret;
	ret = flow_parse4(ctx, &f);
	if (ret)
		return ret;
	v->src_identity = identity_of(f.saddr.v4);
	if (v->src_identity == IDENTITY_HOST)
		return DROP(DROP_INVALID_IDENTITY);
	ret = tunnel_check_sender(outer->saddr.v4, f.saddr.v4, v->src_identity);
	if (ret)
		return ret;
	ret = ct_process(ctx, &f, CT_DIR_IN, v);
	if (ret != CTX_GO_ON)
		return ret;
	return deliver_to_pod(ctx, &f, REASON_FROM_TUNNEL, v);
}

static __always_inline int handle_from_netdev(struct __sk_buff *ctx, struct verdict *v)
{
	struct ethhdr *eth = ctx_data(ctx);
	__u32 ifindex = ctx->ifindex;
	struct host_device *dev;
	struct flow f;
	int ret;

	v->reason = REASON_HOST_PASS;
	if ((void *)(eth + 1) > ctx_data_end(ctx))
		return DROP(DROP_TRUNCATED);
	if (eth->h_proto != const_htons(ETH_P_IP))
		return TC_ACT_OK;
	dev = host_device_of(ifindex);
	if (!dev)
		return TC_ACT_OK;
	ret = flow_parse4_l3(ctx, &f);
	if (ret)
		return ret;
	if (f.daddr.v4 != dev->node_ip)
		return TC_ACT_OK;
	if (f.proto == IPPROTO_IPIP)
		return handle_ipip(ctx, &f, v);
	ret = flow_parse4_l4(ctx, &f);
	if (ret)
		return ret;
	/* the overlay's own packets go to the kernel's VXLAN device (the port is
	 * outside the SNAT and NodePort ranges, so no NAT or service lookup) */
	if (f.proto == IPPROTO_UDP && f.dport == bpf_htons(VXLAN_PORT))
		return TC_ACT_OK;
	if (frag4_track(ctx, &f) == CTX_GO_ON) {
		v->reason = REASON_FRAG_UNKNOWN;
		return TC_ACT_OK;
	}

	if (flow_is_icmp_error(&f)) {
		ret = snat_icmp_error_ingress(ctx, &f);
		if (ret == CTX_GO_ON)
			return TC_ACT_OK; /* about no masqueraded flow: the stack's */
		if (ret)
			return ret;
		v->src_identity = identity_of(f.saddr.v4);
		ct_process(ctx, &f, CT_DIR_IN, v);
		return deliver_to_pod(ctx, &f, REASON_REV_SNAT, v);
	}

	ret = snat_ingress(ctx, &f);
	if (IS_ERR(ret))
		return ret;
	if (ret == 0) {
		v->src_identity = identity_of(f.saddr.v4);
		ret = ct_process(ctx, &f, CT_DIR_IN, v);
		if (ret != CTX_GO_ON)
			return ret;
		return deliver_or_route(ctx, &f, REASON_REV_SNAT, v);
	}

	if (!lb4_lookup_service(&f))
		return TC_ACT_OK;
	return nodeport_to_pod(ctx, &f, identity_of(f.saddr.v4), 0, v);
}

int from_netdev(struct __sk_buff *ctx)
{
	struct verdict v;

	verdict_init(&v, DIR_INGRESS);
	return verdict_exit(ctx, handle_from_netdev(ctx, &v), &v);
}

static __always_inline int handle_to_netdev(struct __sk_buff *ctx, struct verdict *v)
{
	struct ethhdr *eth = ctx_data(ctx);
	__u32 ifindex = ctx->ifindex;
	struct endpoint_info *ep;
	struct host_device *dev;
	struct ct4_entry *e;
	struct flow f;
	int ret;

	v->reason = REASON_HOST_PASS;
	if ((void *)(eth + 1) > ctx_data_end(ctx))
		return DROP(DROP_TRUNCATED);
	if (eth->h_proto != const_htons(ETH_P_IP))
		return TC_ACT_OK;
	dev = host_device_of(ifindex);
	if (!dev || !(dev->flags & HOST_DEV_MASQUERADE))
		return TC_ACT_OK;
	ret = flow_parse4_l3(ctx, &f);
	if (ret)
		return ret;
	ep = lookup_endpoint(f.saddr.v4);
	if (!ep || !snat_wanted(f.daddr.v4))
		return TC_ACT_OK;
	v->ep_id = ep->ep_id;
	v->src_identity = ep->sec_identity;
	ret = flow_parse4_l4(ctx, &f);
	if (ret)
		return ret;
	if (frag4_track(ctx, &f) == CTX_GO_ON) {
		v->reason = REASON_FRAG_UNKNOWN;
		return TC_ACT_OK;
	}
	/* a reply of a flow someone else started to the pod keeps its source */
	if (ct_lookup(&f, &e) == CT_REPLY)
		return TC_ACT_OK;
	ret = snat_egress(ctx, &f, dev->node_ip);
	if (ret)
		return ret;
	v->reason = REASON_MASQUERADED;
	return TC_ACT_OK;
}

int to_netdev(struct __sk_buff *ctx)
{
	struct verdict v;

	verdict_init(&v, DIR_EGRESS);
	return verdict_exit(ctx, handle_to_netdev(ctx, &v), &v);
}

/* The node's own connections to its addresses loop through lo: a NodePort
 * frontend there is translated and delivered like one from the network. */
static __always_inline int handle_from_host_lo(struct __sk_buff *ctx, struct verdict *v)
{
	struct ethhdr *eth = ctx_data(ctx);
	struct flow f;

	v->reason = REASON_HOST_PASS;
	if ((void *)(eth + 1) > ctx_data_end(ctx) || eth->h_proto != const_htons(ETH_P_IP))
		return TC_ACT_OK;
	/* the node's own traffic is not Porin's to judge: malformed is passed */
	if (flow_parse4(ctx, &f) || f.proto == IPPROTO_ICMP || !lb4_lookup_service(&f))
		return TC_ACT_OK;
	return nodeport_to_pod(ctx, &f, IDENTITY_HOST, BPF_F_INGRESS, v);
}

int from_host_lo(struct __sk_buff *ctx)
{
	struct verdict v;

	verdict_init(&v, DIR_INGRESS);
	return verdict_exit(ctx, handle_from_host_lo(ctx, &v), &v);
}
