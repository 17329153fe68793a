/* IPv4 header validation and routing rewrites. */
#ifndef PORIN_IPV4_H
#define PORIN_IPV4_H

#include "common.h"

#define IPV4_TTL_OFF (ETH_HLEN + offsetof(struct iphdr, ttl))
#define IPV4_CSUM_OFF (ETH_HLEN + offsetof(struct iphdr, check))

/* The IPv4 header after Ethernet, or NULL if truncated or malformed
 * (sets *reason accordingly). */
static __always_inline struct iphdr *ipv4_header(struct __sk_buff *skb, __u8 *reason)
{
	struct iphdr *ip = ctx_data(skb) + ETH_HLEN;

	if ((void *)(ip + 1) > ctx_data_end(skb)) {
		*reason = DROP_TRUNCATED;
		return NULL;
	}
	if (ip->version != 4 || ip->ihl < 5) {
		*reason = DROP_IP_OPTIONS_BAD;
		return NULL;
	}
	if (bpf_ntohs(ip->tot_len) < ip->ihl * 4 ||
	    bpf_ntohs(ip->tot_len) > skb->len - ETH_HLEN) {
		*reason = DROP_TRUNCATED;
		return NULL;
	}
	return ip;
}

/* Decrement TTL as a router does, fixing the header checksum. */
static __always_inline int ipv4_dec_ttl(struct __sk_buff *skb, __u8 ttl)
{
	__u16 old = bpf_htons((__u16)ttl << 8);
	__u16 new = bpf_htons((__u16)(ttl - 1) << 8);

	if (bpf_l3_csum_replace(skb, IPV4_CSUM_OFF, old, new, 2) < 0)
		return -1;
	return bpf_skb_store_bytes(skb, IPV4_TTL_OFF, &new, 1, 0);
}

#endif /* PORIN_IPV4_H */
