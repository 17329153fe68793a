/* ICMP errors, in one place for every user: classification, the quoted
 * packet's flow, the rewrite of a quoted header for reverse NAT (services
 * and masquerade alike), and errors the datapath generates itself (a
 * service without backends: port unreachable; too big for the tunnel:
 * fragmentation needed). */
#ifndef PORIN_ICMP_H
#define PORIN_ICMP_H

#include "common.h"
#include "reasons.h"
#include "csum.h"
#include "flow.h"
#include "ipv4.h"
#include "l4.h"

#define ICMP_QUOTE_LEN (sizeof(struct iphdr) + 8)
#define ICMP_ERR_LEN (ETH_HLEN + sizeof(struct iphdr) + sizeof(struct icmphdr) + ICMP_QUOTE_LEN)

static __always_inline int icmp_is_error(__u8 type)
{
	return type == ICMP_DEST_UNREACH || type == ICMP_TIME_EXCEEDED ||
	       type == ICMP_PARAMETERPROB || type == ICMP_SOURCE_QUENCH;
}

/* An ICMP error: about another packet, whose flow it quotes. */
static __always_inline int flow_is_icmp_error(const struct flow *f)
{
	return f->proto == IPPROTO_ICMP && !f->is_fragment && icmp_is_error(f->icmp_type);
}

/* The flow of the packet quoted inside the ICMP error `outer` (as its
 * sender sent it). Returns 0, or DROP(DROP_TRUNCATED / DROP_IP_OPTIONS_BAD). */
static __always_inline int icmp_inner_flow(struct __ctx_buff *ctx, const struct flow *outer,
					   struct flow *inner)
{
	void *data_end = ctx_data_end(ctx);
	struct iphdr *ip = ctx_data(ctx) + outer->l4_off + sizeof(struct icmphdr);
	__be16 *ports;

	if ((void *)(ip + 1) > data_end)
		return DROP(DROP_TRUNCATED);
	if (ip->ihl != 5)
		return DROP(DROP_IP_OPTIONS_BAD);
	ports = (void *)(ip + 1);
	if ((void *)(ports + 2) > data_end)
		return DROP(DROP_TRUNCATED);
	__builtin_memset(inner, 0, sizeof(*inner));
	inner->saddr.v4 = ip->saddr;
	inner->daddr.v4 = ip->daddr;
	inner->family = FAMILY_IPV4;
	inner->proto = ip->protocol;
	inner->l3_off = outer->l4_off + sizeof(struct icmphdr);
	inner->l4_off = inner->l3_off + sizeof(struct iphdr);
	if (ip->protocol == IPPROTO_ICMP) {
		struct icmphdr *icmp = (void *)(ip + 1);

		if ((void *)(icmp + 1) > data_end)
			return DROP(DROP_TRUNCATED);
		inner->icmp_type = icmp->type;
		inner->sport = icmp->type == ICMP_ECHO ? icmp->un.echo.id : 0;
		inner->dport = icmp->type == ICMP_ECHOREPLY ? icmp->un.echo.id : 0;
	} else {
		inner->sport = ports[0];
		inner->dport = ports[1];
	}
	return 0;
}

/* Rewrite one end (the quoted source when `src`, else the destination) of
 * the packet quoted in an ICMP error to `addr` and, when it differs,
 * `port` (the echo id for a quoted echo). The quoted header's checksum
 * follows its address, so the ICMP checksum only changes by the port.
 * Returns 0 or DROP(DROP_NAT_FAILED). */
static __always_inline int icmp_quote_rewrite(struct __sk_buff *ctx, const struct flow *outer,
					      const struct flow *inner, int src, __be32 addr,
					      __be16 port)
{
	int icmp_csum = outer->l4_off + offsetof(struct icmphdr, checksum);
	int addr_off = inner->l3_off +
		       (src ? offsetof(struct iphdr, saddr) : offsetof(struct iphdr, daddr));
	__be32 old_addr = src ? inner->saddr.v4 : inner->daddr.v4;
	__be16 old_port = src ? inner->sport : inner->dport;
	int port_off = inner->l4_off + (src ? 0 : 2);

	if (inner->proto == IPPROTO_ICMP)
		port_off = inner->l4_off + offsetof(struct icmphdr, un.echo.id);
	if (old_addr != addr &&
	    (bpf_l3_csum_replace(ctx, inner->l3_off + offsetof(struct iphdr, check), old_addr, addr,
				 sizeof(addr)) < 0 ||
	     bpf_skb_store_bytes(ctx, addr_off, &addr, sizeof(addr), 0) < 0))
		return DROP(DROP_NAT_FAILED);
	if (port != old_port &&
	    (bpf_l4_csum_replace(ctx, icmp_csum, old_port, port, sizeof(port)) < 0 ||
	     bpf_skb_store_bytes(ctx, port_off, &port, sizeof(port), 0) < 0))
		return DROP(DROP_NAT_FAILED);
	return 0;
}

/* Rewrite the packet into an ICMP error (type, code; mtu for
 * fragmentation-needed, else 0) back to its sender, from `from`. The
 * caller redirects it back out. Returns 0 or DROP(`reason`). */
static __always_inline int icmp4_reply_error(struct __sk_buff *ctx, __be32 from, __u8 type,
					     __u8 code, __u16 mtu, __u8 reason)
{
	__u8 quote[ICMP_QUOTE_LEN];
	struct ethhdr eth;
	struct iphdr ip = {};
	struct icmphdr icmp = {};
	__u8 tmp[ETH_ALEN];
	__u32 csum;

	if (bpf_skb_load_bytes(ctx, 0, &eth, sizeof(eth)) < 0 ||
	    bpf_skb_load_bytes(ctx, ETH_HLEN, quote, sizeof(quote)) < 0)
		return DROP(reason);
	if ((quote[0] & 0x0f) != 5) /* quoting only option-less headers */
		return DROP(reason);
	if (bpf_skb_change_tail(ctx, ICMP_ERR_LEN, 0) < 0)
		return DROP(reason);

	icmp.type = type;
	icmp.code = code;
	icmp.un.frag.mtu = bpf_htons(mtu); /* next-hop MTU, for fragmentation needed */
	csum = bpf_csum_diff(NULL, 0, (__be32 *)&icmp, sizeof(icmp), 0);
	csum = bpf_csum_diff(NULL, 0, (__be32 *)quote, sizeof(quote), csum);
	icmp.checksum = csum_finish(csum);

	ip.version = 4;
	ip.ihl = 5;
	ip.ttl = 64;
	ip.protocol = IPPROTO_ICMP;
	ip.tot_len = bpf_htons(sizeof(ip) + sizeof(icmp) + sizeof(quote));
	ip.saddr = from;
	ip.daddr = ((struct iphdr *)quote)->saddr;
	ip.check = csum_finish(bpf_csum_diff(NULL, 0, (__be32 *)&ip, sizeof(ip), 0));

	__builtin_memcpy(tmp, eth.h_dest, ETH_ALEN);
	__builtin_memcpy(eth.h_dest, eth.h_source, ETH_ALEN);
	__builtin_memcpy(eth.h_source, tmp, ETH_ALEN);
	if (bpf_skb_store_bytes(ctx, 0, &eth, sizeof(eth), 0) < 0 ||
	    bpf_skb_store_bytes(ctx, ETH_HLEN, &ip, sizeof(ip), 0) < 0 ||
	    bpf_skb_store_bytes(ctx, ETH_HLEN + sizeof(ip), &icmp, sizeof(icmp), 0) < 0 ||
	    bpf_skb_store_bytes(ctx, ETH_HLEN + sizeof(ip) + sizeof(icmp), quote, sizeof(quote),
				0) < 0)
		return DROP(reason);
	return 0;
}

#endif /* PORIN_ICMP_H */
