/* IPv4 wire format: header validation, the IPv4 parser of the flow record,
 * and the routing rewrites whose checksum rule is IPv4's own. */
#ifndef PORIN_IPV4_H
#define PORIN_IPV4_H

#include "common.h"
#include "reasons.h"
#include "csum.h"
#include "flow.h"
#include "l4.h"

#define IPV4_HDR_OFF ETH_HLEN

/* The IPv4 header after Ethernet, bounds-checked (packet pointers are
 * invalidated by every helper that may move data: fetch it again after one). */
static __always_inline struct iphdr *ipv4_hdr(struct __ctx_buff *ctx)
{
	struct iphdr *ip = ctx_data(ctx) + IPV4_HDR_OFF;

	if ((void *)(ip + 1) > ctx_data_end(ctx))
		return NULL;
	return ip;
}

static __always_inline int ipv4_is_fragment(const struct iphdr *ip)
{
	return ip->frag_off & bpf_htons(0x1fff);
}

/* Validate the IPv4 header after Ethernet and fill the L3 half of `f`
 * (ports and flags zero). Returns 0, or DROP(DROP_TRUNCATED / DROP_IP_OPTIONS_BAD). */
static __always_inline int flow_parse4_l3(struct __ctx_buff *ctx, struct flow *f)
{
	struct iphdr *ip = ipv4_hdr(ctx);
	__u32 hlen;

	if (!ip)
		return DROP(DROP_TRUNCATED);
	if (ip->version != 4 || ip->ihl < 5)
		return DROP(DROP_IP_OPTIONS_BAD);
	hlen = ip->ihl * 4;
	if (bpf_ntohs(ip->tot_len) < hlen || bpf_ntohs(ip->tot_len) > ctx_len(ctx) - ETH_HLEN)
		return DROP(DROP_TRUNCATED);

	f->saddr.v6[1] = f->saddr.v6[2] = f->saddr.v6[3] = 0;
	f->daddr.v6[1] = f->daddr.v6[2] = f->daddr.v6[3] = 0;
	f->saddr.v4 = ip->saddr;
	f->daddr.v4 = ip->daddr;
	f->family = FAMILY_IPV4;
	f->proto = ip->protocol;
	f->sport = 0;
	f->dport = 0;
	f->tcp_flags = 0;
	f->icmp_type = 0;
	f->pad = 0;
	f->pad2 = 0;
	f->l3_off = IPV4_HDR_OFF;
	f->l4_off = IPV4_HDR_OFF + hlen;
	f->is_fragment = ipv4_is_fragment(ip) ? 1 : 0;
	return 0;
}

/* The L4 half of `f` (after flow_parse4_l3); 0 or DROP(DROP_TRUNCATED). */
static __always_inline int flow_parse4_l4(struct __ctx_buff *ctx, struct flow *f)
{
	void *l4 = ctx_data(ctx) + (f->l4_off & 0xff); /* at most 14 + 60 */

	if (f->is_fragment)
		return 0;
	return flow_parse_l4(f, l4, ctx_data_end(ctx));
}

/* The IPv4 parser of the flow record: header validated, L3 and L4 filled. */
static __always_inline int flow_parse4(struct __ctx_buff *ctx, struct flow *f)
{
	return flow_parse4_l3(ctx, f) ?: flow_parse4_l4(ctx, f);
}

/* Incremental IPv4 header checksum updates, done in place: the header
 * checksum is never offloaded, so plain arithmetic is exact and cheaper
 * than the csum helpers. Works on the words as stored. */
static __always_inline void ipv4_csum_update16(struct iphdr *ip, __u16 old, __u16 new)
{
	ip->check = csum_replace16(ip->check, old, new);
}

static __always_inline void ipv4_csum_update32(struct iphdr *ip, __u32 old, __u32 new)
{
	ip->check = csum_replace32(ip->check, old, new);
}

/* Decrement TTL as a router does, fixing the header checksum. */
static __always_inline void ipv4_dec_ttl(struct iphdr *ip)
{
	__u16 old = *(__u16 *)&ip->ttl, new;

	ip->ttl -= 1;
	new = *(__u16 *)&ip->ttl;
	ipv4_csum_update16(ip, old, new);
}

#endif /* PORIN_IPV4_H */
