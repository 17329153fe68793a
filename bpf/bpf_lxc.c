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
 *   7. destination is a local endpoint -> redirect into it (REASON_FORWARDED)
 *   8. otherwise -> host stack (REASON_TO_STACK)
 */
#include "lib/common.h"
#include "lib/reasons.h"
#include "lib/metrics.h"
#include "lib/eth.h"
#include "lib/endpoint.h"
#include "lib/arp.h"
#include "lib/ipv4.h"
#include "lib/lxc.h"

static __always_inline int handle_ipv4_from_endpoint(struct __sk_buff *skb)
{
	struct ethhdr *eth = ctx_data(skb);
	struct endpoint_info *src, *dst;
	struct iphdr *ip;
	__u8 reason = 0;

	ip = ipv4_header(skb, &reason);
	if (!ip)
		return drop(skb, reason, DIR_EGRESS);

	src = lookup_endpoint(ip->saddr);
	if (!src || src->ifindex != skb->ifindex)
		return drop(skb, DROP_INVALID_SIP, DIR_EGRESS);
	if (!mac_equal(src->mac, eth->h_source))
		return drop(skb, DROP_INVALID_SMAC, DIR_EGRESS);

	dst = lookup_endpoint(ip->daddr);
	if (dst)
		return redirect_to_endpoint(skb, ip, dst);

	return verdict(skb, TC_ACT_OK, REASON_TO_STACK, DIR_EGRESS);
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

/* Host stack -> pod: counted; policy and reverse translation hook in here. */
int to_container(struct __sk_buff *skb)
{
	return verdict(skb, TC_ACT_OK, REASON_TO_STACK, DIR_INGRESS);
}
