/* Address and port rewrites with incremental checksum updates. */
#ifndef PORIN_NAT_H
#define PORIN_NAT_H

#include "common.h"
#include "l4.h"

#define IPV4_SADDR_OFF (ETH_HLEN + offsetof(struct iphdr, saddr))
#define IPV4_DADDR_OFF (ETH_HLEN + offsetof(struct iphdr, daddr))
#define IPV4_CHECK_OFF (ETH_HLEN + offsetof(struct iphdr, check))

/* Offset of the L4 checksum, or -1 for protocols without ports. */
static __always_inline int l4_csum_off(const struct ipv4_flow *f)
{
	if (f->proto == IPPROTO_TCP)
		return f->l4_off + TCP_CSUM_OFF;
	if (f->proto == IPPROTO_UDP)
		return f->l4_off + UDP_CSUM_OFF;
	return -1;
}

static __always_inline __u64 l4_csum_flags(const struct ipv4_flow *f)
{
	/* a UDP checksum of 0 means "none" and must stay 0 */
	return f->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
}

/* Rewrite the source (src=1) or destination address and, when `port` is
 * non-zero, the matching port (for ICMP echo: the echo id). Checksums: IPv4
 * header, and the L4 pseudo header and port for TCP/UDP, the ICMP checksum
 * for an echo id. */
static __always_inline int nat_rewrite(struct __sk_buff *skb, const struct ipv4_flow *f, int src,
				       __be32 addr, __be16 port)
{
	__be32 old_addr = src ? f->saddr : f->daddr;
	__be16 old_port = src ? f->sport : f->dport;
	int csum_off = l4_csum_off(f);
	int addr_off = src ? IPV4_SADDR_OFF : IPV4_DADDR_OFF;
	int port_off = f->l4_off + (src ? 0 : 2);

	if (f->proto == IPPROTO_ICMP) {
		csum_off = f->l4_off + offsetof(struct icmphdr, checksum);
		port_off = f->l4_off + offsetof(struct icmphdr, un.echo.id);
	}
	if (old_addr != addr) {
		if (f->proto != IPPROTO_ICMP && csum_off >= 0 &&
		    bpf_l4_csum_replace(skb, csum_off, old_addr, addr,
					BPF_F_PSEUDO_HDR | sizeof(addr) | l4_csum_flags(f)) < 0)
			return -1;
		if (bpf_l3_csum_replace(skb, IPV4_CHECK_OFF, old_addr, addr, sizeof(addr)) < 0)
			return -1;
		if (bpf_skb_store_bytes(skb, addr_off, &addr, sizeof(addr), 0) < 0)
			return -1;
	}
	if (port && port != old_port && csum_off >= 0) {
		if (bpf_l4_csum_replace(skb, csum_off, old_port, port,
					sizeof(port) | l4_csum_flags(f)) < 0)
			return -1;
		if (bpf_skb_store_bytes(skb, port_off, &port, sizeof(port), 0) < 0)
			return -1;
	}
	return 0;
}

#endif /* PORIN_NAT_H */
