/* Programs on a pod's host-side veth (lxc...).
 *
 *   from_container  tc ingress: everything the pod sends
 *   to_container    tc egress:  everything the host stack sends to the pod
 *
 * Packet path of from_container, top to bottom:
 *   1. Ethernet header present, else DROP_TRUNCATED
 *   2. ARP  -> sender must be this endpoint; requests answered with the
 *              host veth MAC (REASON_ARP_REPLY), the rest to the stack
 *   3. IPv6 -> to the stack (REASON_IPV6_PASS)
 *   4. other ethertypes -> DROP_UNKNOWN_L3
 *   5. IPv4 -> header valid, else DROP_TRUNCATED / DROP_IP_OPTIONS_BAD
 *   6. source IP must be an endpoint on this very interface (DROP_INVALID_SIP)
 *      and the source MAC its MAC (DROP_INVALID_SMAC)
 *   7. L4 tuple parsed (DROP_TRUNCATED)
 *   8. established flow? one conntrack lookup on the tuple as sent: a
 *      service flow's packet is DNATed to the backend its flow entry names,
 *      a reply of one translated back to the frontend; counted, on to 10
 *   9. otherwise (new flow, ICMP error, backend gone):
 *      service frontend? -> backend chosen (or the flow entry's), DNAT;
 *      no active backend -> ICMP port unreachable back to the pod
 *      (DROP_NO_SERVICE_BACKEND); a pod reaching itself is sourced from
 *      the hairpin address; then conntrack: create or account, ICMP errors
 *      matched to their flow
 *  10. destination is a local endpoint -> redirect into it (REASON_FORWARDED)
 *  11. destination behind another node (ipcache) -> overlay: VXLAN with the
 *      source identity as VNI, or IPIP (REASON_TUNNELED, DROP_ENCAP_FAILED)
 *  12. leaving through an uplink that masquerades (FIB lookup) -> source
 *      translated and sent straight to the uplink (REASON_MASQUERADED)
 *  13. otherwise -> host stack (REASON_TO_STACK)
 */
#include "lib/common.h"
#include "lib/reasons.h"
#include "lib/metrics.h"
#include "lib/eth.h"
#include "lib/endpoint.h"
#include "lib/arp.h"
#include "lib/ipv4.h"
#include "lib/l4.h"
#include "lib/nat.h"
#include "lib/conntrack.h"
#include "lib/lb.h"
#include "lib/ipcache.h"
#include "lib/tunnel.h"
#include "lib/snat.h"
#include "lib/icmp.h"
#include "lib/lxc.h"

/* A destination behind another node (the ipcache names its tunnel
 * endpoint) goes through the overlay; anything else to the host stack. */
static __always_inline int to_remote_node(struct __sk_buff *skb, struct ipv4_flow *f,
					  __u32 identity)
{
	struct tunnel_config *cfg = tunnel_cfg();
	struct remote_endpoint_info *info;
	struct iphdr *ip;
	int ret;

	if (!cfg)
		return verdict(skb, TC_ACT_OK, REASON_TO_STACK, DIR_EGRESS);
	info = ipcache_lookup(f->daddr);
	if (!info || !info->tunnel_endpoint)
		return verdict(skb, TC_ACT_OK, REASON_TO_STACK, DIR_EGRESS);
	ip = ctx_data(skb) + ETH_HLEN;
	if ((void *)(ip + 1) > ctx_data_end(skb))
		return drop(skb, DROP_TRUNCATED, DIR_EGRESS);
	if (ip->ttl <= 1)
		return verdict(skb, TC_ACT_OK, REASON_TTL_EXPIRED, DIR_EGRESS);
	/* too big for the tunnel and not to be fragmented: tell the pod, as a
	 * router would (GSO packets are segmented to the pod's MTU later) */
	if (skb->gso_segs <= 1 && (ip->frag_off & bpf_htons(0x4000)) &&
	    bpf_ntohs(ip->tot_len) + tunnel_overhead(cfg) > cfg->mtu) {
		__u16 mtu = cfg->mtu - tunnel_overhead(cfg);

		if (icmp_reply_unreach(skb, ip->daddr, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, mtu) < 0)
			return drop(skb, DROP_FRAG_NEEDED, DIR_EGRESS);
		lb4_own_icmp_error(skb);
		count_verdict(skb, DROP_FRAG_NEEDED, DIR_EGRESS);
		return bpf_redirect(skb->ifindex, 0);
	}
	if (ipv4_dec_ttl(skb, ip->ttl) < 0)
		return drop(skb, DROP_CSUM_FAILED, DIR_EGRESS);
	if (cfg->mode == TUNNEL_VXLAN)
		ret = tunnel_vxlan_redirect(skb, cfg, info->tunnel_endpoint, identity);
	else
		ret = tunnel_ipip_redirect(skb, cfg, info->tunnel_endpoint);
	if (ret != TC_ACT_REDIRECT)
		return drop(skb, DROP_ENCAP_FAILED, DIR_EGRESS);
	return verdict(skb, ret, REASON_TUNNELED, DIR_EGRESS);
}

/* BPF host routing for masqueraded traffic: when the route to the
 * destination leaves through an uplink that masquerades, translate the
 * source here and hand the packet straight to that uplink, past the node's
 * IP forwarding path. Returns -1 to leave the packet to the host stack
 * (no route, neighbour not resolved yet, too big, not masqueraded). */
static __always_inline int masquerade_and_route(struct __sk_buff *skb, struct ipv4_flow *f)
{
	struct bpf_fib_lookup fib = {};
	struct host_device *dev;
	struct ethhdr *eth;
	struct iphdr *ip;
	__u32 out;
	int ret;

	/* only the pod's own traffic: a reply translated back to a frontend (a
	 * NodePort's node address, a service VIP) already carries its source */
	if (f->is_fragment || !snat_wanted(f->daddr) || !lookup_endpoint(f->saddr))
		return -1;
	fib.family = 2; /* AF_INET */
	fib.ipv4_src = f->saddr;
	fib.ipv4_dst = f->daddr;
	fib.ifindex = skb->ifindex;
	/* tot_len 0: the kernel checks the MTU itself, aware of GSO */
	if (bpf_fib_lookup(skb, &fib, sizeof(fib), 0) != BPF_FIB_LKUP_RET_SUCCESS)
		return -1;
	out = fib.ifindex;
	dev = host_devices.lookup(&out);
	if (!dev || !(dev->flags & HOST_DEV_MASQUERADE))
		return -1;
	ip = ctx_data(skb) + ETH_HLEN;
	if ((void *)(ip + 1) > ctx_data_end(skb) || ip->ttl <= 1)
		return -1;
	if (ipv4_dec_ttl(skb, ip->ttl) < 0)
		return DROP_CSUM_FAILED;
	ret = snat_egress(skb, f, dev->node_ip);
	if (ret)
		return ret;
	eth = ctx_data(skb);
	if ((void *)(eth + 1) > ctx_data_end(skb))
		return DROP_TRUNCATED;
	__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
	count_verdict(skb, REASON_MASQUERADED, DIR_EGRESS);
	return bpf_redirect(out, 0) == TC_ACT_REDIRECT ? 0 : DROP_REDIRECT_FAILED;
}

static __always_inline int handle_ipv4_from_endpoint(struct __sk_buff *skb)
{
	struct ethhdr *eth = ctx_data(skb);
	struct endpoint_info *src, *dst;
	struct ipv4_flow flow;
	struct iphdr *ip;
	__u8 reason = 0, ct_flags = 0;
	__u16 rev_nat = 0;
	int icmp_sent = 0, ret;

	ip = ipv4_header(skb, &reason);
	if (!ip)
		return drop(skb, reason, DIR_EGRESS);

	src = lookup_endpoint(ip->saddr);
	if (!src || src->ifindex != skb->ifindex)
		return drop(skb, DROP_INVALID_SIP, DIR_EGRESS);
	if (!mac_equal(src->mac, eth->h_source))
		return drop(skb, DROP_INVALID_SMAC, DIR_EGRESS);

	ret = ipv4_flow_parse(skb, ip, &flow);
	if (ret)
		return drop(skb, ret, DIR_EGRESS);

	ret = lb4_ct_fast(skb, &flow);
	if (ret == CT_SLOW_PATH) {
		ret = lb4_dnat(skb, &flow, CT_DIR_OUT, &rev_nat, &ct_flags, &icmp_sent);
		if (icmp_sent) {
			count_verdict(skb, DROP_NO_SERVICE_BACKEND, DIR_EGRESS);
			return bpf_redirect(skb->ifindex, 0);
		}
		if (!ret)
			ret = ct_process(skb, &flow, CT_DIR_OUT, rev_nat, ct_flags);
	}
	if (ret)
		return drop(skb, ret, DIR_EGRESS);

	dst = lookup_endpoint(flow.daddr);
	if (dst)
		return redirect_to_endpoint(skb, dst);
	if (!tunnel_cfg() || !ipcache_lookup(flow.daddr)) {
		ret = masquerade_and_route(skb, &flow);
		if (ret == 0)
			return TC_ACT_REDIRECT;
		if (ret > 0)
			return drop(skb, ret, DIR_EGRESS);
	}

	return to_remote_node(skb, &flow, src->sec_identity);
}

int from_container(struct __sk_buff *skb)
{
	struct ethhdr *eth = ctx_data(skb);

	if ((void *)(eth + 1) > ctx_data_end(skb))
		return drop(skb, DROP_TRUNCATED, DIR_EGRESS);

	switch (eth->h_proto) {
	case const_htons(ETH_P_IP):
		return handle_ipv4_from_endpoint(skb);
	case const_htons(ETH_P_ARP):
		return handle_arp_from_endpoint(skb);
	case const_htons(ETH_P_IPV6):
		return verdict(skb, TC_ACT_OK, REASON_IPV6_PASS, DIR_EGRESS);
	default:
		return drop(skb, DROP_UNKNOWN_L3, DIR_EGRESS);
	}
}

/* What the host stack sends to a pod: replies to the pod's own
 * connections (translated back if they belong to a service flow), ICMP
 * errors about them, and connections initiated towards the pod. */
int to_container(struct __sk_buff *skb)
{
	struct ethhdr *eth = ctx_data(skb);
	struct ipv4_flow flow;
	struct iphdr *ip;
	__u8 reason = 0;
	int ret;

	if ((void *)(eth + 1) > ctx_data_end(skb))
		return drop(skb, DROP_TRUNCATED, DIR_INGRESS);
	if (eth->h_proto != const_htons(ETH_P_IP))
		return verdict(skb, TC_ACT_OK, REASON_TO_STACK, DIR_INGRESS);

	ip = ipv4_header(skb, &reason);
	if (!ip)
		return drop(skb, reason, DIR_INGRESS);
	ret = ipv4_flow_parse(skb, ip, &flow);
	if (ret)
		return drop(skb, ret, DIR_INGRESS);
	ret = ct_process(skb, &flow, CT_DIR_IN, 0, 0);
	if (ret)
		return drop(skb, ret, DIR_INGRESS);
	return verdict(skb, TC_ACT_OK, REASON_TO_STACK, DIR_INGRESS);
}
