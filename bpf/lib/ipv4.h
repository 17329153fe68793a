/* IPv4 header validation and routing rewrites. */
#ifndef PORIN_IPV4_H
#define PORIN_IPV4_H

#include "common.h"


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

/* Incremental IPv4 header checksum updates (RFC 1624), done in place: the
 * header checksum is never offloaded, so plain arithmetic is exact and
 * cheaper than the csum helpers. Works on the words as stored. */
static __always_inline __u16 csum_fold32(__u32 c)
{
	c = (c & 0xffff) + (c >> 16);
	c = (c & 0xffff) + (c >> 16);
	return (__u16)c;
}

static __always_inline void ipv4_csum_update16(struct iphdr *ip, __u16 old, __u16 new)
{
	__u32 sum = (__u16)~ip->check + (__u16)~old + new;

	ip->check = ~csum_fold32(sum);
}

static __always_inline void ipv4_csum_update32(struct iphdr *ip, __u32 old, __u32 new)
{
	__u32 sum = (__u16)~ip->check;

	sum += (__u16)~(old & 0xffff) + (__u16)~(old >> 16);
	sum += (new & 0xffff) + (new >> 16);
	ip->check = ~csum_fold32(sum);
}

/* Decrement TTL as a router does, fixing the header checksum. */
static __always_inline int ipv4_dec_ttl(struct __sk_buff *skb, __u8 ttl)
{
	struct iphdr *ip = ctx_data(skb) + ETH_HLEN;
	__u16 old, new;

	if ((void *)(ip + 1) > ctx_data_end(skb))
		return -1;
	old = *(__u16 *)&ip->ttl;
	ip->ttl = ttl - 1;
	new = *(__u16 *)&ip->ttl;
	ipv4_csum_update16(ip, old, new);
	return 0;
}

#endif /* PORIN_IPV4_H */
