/* IPv6 from and to pods, until Porin routes IPv6.
 *
 * A pod's IPv6 must not reach the node's stack unexamined: a router
 * advertisement on the veth would give the node an address from the pod's
 * prefix (or the pod as its router), a neighbour advertisement or redirect
 * would poison its neighbour table. Nothing a pod needs to bring its
 * interface up has to be answered (duplicate address detection succeeds
 * when nobody replies), so every IPv6 packet is dropped, with neighbour
 * discovery under its own reason so an on-call engineer sees which pod
 * tried what. The agent also disables IPv6 on the node's side of each veth
 * (daemon/links.py), so the stack would drop them too.
 */
#ifndef PORIN_IPV6_H
#define PORIN_IPV6_H

#include "common.h"

#ifndef IPPROTO_ICMPV6
#define IPPROTO_ICMPV6 58
#endif
/* neighbour discovery (RFC 4861): router solicitation .. redirect */
#define ICMPV6_ND_FIRST 133
#define ICMPV6_ND_LAST 137

struct ipv6_fixed_hdr {
	__be32 vtc_flow;
	__be16 payload_len;
	__u8 nexthdr;
	__u8 hop_limit;
	__u8 saddr[16];
	__u8 daddr[16];
};

/* The drop reason of an IPv6 frame on a pod's veth (either direction):
 * DROP_TRUNCATED without a whole fixed header, DROP_IPV6_NDP for neighbour
 * discovery carried right after it, DROP_IPV6_NOT_ROUTED for the rest. */
static __always_inline int ipv6_pod_drop_reason(struct __sk_buff *ctx)
{
	struct ipv6_fixed_hdr *ip6 = ctx_data(ctx) + sizeof(struct ethhdr);
	__u8 *icmp_type = (__u8 *)(ip6 + 1);

	if ((void *)(ip6 + 1) > ctx_data_end(ctx))
		return DROP_TRUNCATED;
	if (ip6->nexthdr == IPPROTO_ICMPV6 && (void *)(icmp_type + 1) <= ctx_data_end(ctx) &&
	    *icmp_type >= ICMPV6_ND_FIRST && *icmp_type <= ICMPV6_ND_LAST)
		return DROP_IPV6_NDP;
	return DROP_IPV6_NOT_ROUTED;
}

#endif /* PORIN_IPV6_H */
