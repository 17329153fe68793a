/* Delivery to local endpoints. */
#ifndef PORIN_LXC_H
#define PORIN_LXC_H

#include "common.h"
#include "eth.h"
#include "ipv4.h"
#include "endpoint.h"
#include "metrics.h"

/* Route an IPv4 packet straight into a local endpoint: decrement TTL,
 * rewrite MACs as the gateway would, and hand the packet to the peer of the
 * destination's host veth without crossing the host stack. */
static __always_inline int redirect_to_endpoint(struct __sk_buff *skb, struct endpoint_info *dst)
{
	struct ethhdr *eth = ctx_data(skb);
	struct iphdr *ip = ctx_data(skb) + ETH_HLEN;
	int ret;

	if ((void *)(ip + 1) > ctx_data_end(skb))
		return drop(skb, DROP_TRUNCATED, DIR_EGRESS);
	if (ip->ttl <= 1)
		return verdict(skb, TC_ACT_OK, REASON_TTL_EXPIRED, DIR_EGRESS);
	if (ipv4_dec_ttl(skb, ip->ttl) < 0)
		return drop(skb, DROP_CSUM_FAILED, DIR_EGRESS);

	/* the helpers above invalidate packet pointers: reload */
	eth = ctx_data(skb);
	if ((void *)(eth + 1) > ctx_data_end(skb))
		return drop(skb, DROP_TRUNCATED, DIR_EGRESS);
	eth_rewrite(eth, dst->mac, dst->node_mac);

	ret = bpf_redirect_peer(dst->ifindex, 0);
	if (ret != TC_ACT_REDIRECT)
		return drop(skb, DROP_REDIRECT_FAILED, DIR_EGRESS);
	count_verdict(skb, REASON_FORWARDED, DIR_EGRESS);
	update_metrics(skb->len, REASON_FORWARDED, DIR_INGRESS); /* the receiver's view */
	return ret;
}

/* A packet from outside the node (uplink, tunnel) to the local pod it is
 * addressed to, counted under `reason`; not a local pod: the node's stack. */
static __always_inline int deliver_to_pod(struct __sk_buff *skb, __be32 daddr, __u8 reason)
{
	struct endpoint_info *ep = lookup_endpoint(daddr);

	if (!ep)
		return verdict(skb, TC_ACT_OK, REASON_HOST_PASS, DIR_INGRESS);
	count_verdict(skb, reason, DIR_INGRESS);
	return redirect_to_endpoint(skb, ep);
}

#endif /* PORIN_LXC_H */
