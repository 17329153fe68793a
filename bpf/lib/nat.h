/* IPv4 address and port rewrites with incremental checksum updates (the
 * family-specific half of NAT: IPv6 has no header checksum to fix). */
#ifndef PORIN_NAT_H
#define PORIN_NAT_H

#include "common.h"
#include "flow.h"
#include "ipv4.h"
#include "l4.h"

/* Offset of the L4 checksum, or -1 for protocols without ports. */
static __always_inline int l4_csum_off(const struct flow *f)
{
	if (f->proto == IPPROTO_TCP)
		return f->l4_off + TCP_CSUM_OFF;
	if (f->proto == IPPROTO_UDP)
		return f->l4_off + UDP_CSUM_OFF;
	return -1;
}

static __always_inline __u64 l4_csum_flags(const struct flow *f)
{
	/* a UDP checksum of 0 means "none" and must stay 0 */
	return f->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
}

/* The L4 checksum field of `f`'s packet at `l4`, or NULL (none to fix: ICMP,
 * a fragment, UDP sent without one). */
static __always_inline __u16 *l4_csum_field(const struct flow *f, void *l4, void *end)
{
	if (f->is_fragment)
		return NULL;
	if (f->proto == IPPROTO_TCP) {
		struct tcphdr *th = l4;

		return (void *)(th + 1) <= end ? &th->check : NULL;
	}
	if (f->proto == IPPROTO_UDP) {
		struct udphdr *uh = l4;

		if ((void *)(uh + 1) > end || !uh->check)
			return NULL;
		return &uh->check;
	}
	return NULL;
}

#ifndef PORIN_CTX_XDP /* the checksum helpers are the skb's; XDP's: lib/xdp_nat.h */
/* Rewrite the source (src=1) or destination address and, when `port` is
 * non-zero, the matching port (for ICMP echo: the echo id), and the flow
 * record with them. Checksums: IPv4 header, and the L4 pseudo header and
 * port for TCP/UDP, the ICMP checksum for an echo id.
 * Returns 0 or DROP(DROP_NAT_FAILED). */
static __always_inline int nat4_rewrite(struct __sk_buff *ctx, struct flow *f, int src,
					__be32 addr, __be16 port)
{
	__be32 old_addr = src ? f->saddr.v4 : f->daddr.v4;
	__be16 old_port = src ? f->sport : f->dport;
	/* a non-first fragment (its ports its first's, lib/frag.h): the
	 * address alone, the L4 header and checksum are in the first */
	int csum_off = f->is_fragment ? -1 : l4_csum_off(f);
	__u32 port_off = f->l4_off + (src ? 0 : 2);
	int new_port = port && port != old_port && csum_off >= 0;
	struct iphdr *ip;
	__be16 *p;

	if (f->proto == IPPROTO_ICMP && !f->is_fragment) {
		csum_off = f->l4_off + offsetof(struct icmphdr, checksum);
		port_off = f->l4_off + offsetof(struct icmphdr, un.echo.id);
		new_port = port && port != old_port;
	}
	/* the L4 checksum through the helper: it knows whether the skb carries a
	 * full checksum or a pseudo-header one left for offload */
	if (old_addr != addr && f->proto != IPPROTO_ICMP && csum_off >= 0 &&
	    bpf_l4_csum_replace(ctx, csum_off, old_addr, addr,
				BPF_F_PSEUDO_HDR | sizeof(addr) | l4_csum_flags(f)) < 0)
		return DROP(DROP_NAT_FAILED);
	if (new_port &&
	    bpf_l4_csum_replace(ctx, csum_off, old_port, port, sizeof(port) | l4_csum_flags(f)) < 0)
		return DROP(DROP_NAT_FAILED);

	/* addresses, port and the IPv4 header checksum: direct writes */
	ip = ipv4_hdr(ctx);
	if (!ip)
		return DROP(DROP_NAT_FAILED);
	if (old_addr != addr) {
		ipv4_csum_update32(ip, old_addr, addr);
		if (src)
			ip->saddr = addr;
		else
			ip->daddr = addr;
	}
	if (new_port) {
		/* the mask bounds the offset for the verifier; an L4 header
		 * starts within the first 255 bytes of a frame we parsed */
		p = ctx_data(ctx) + (port_off & 0xff);
		if ((void *)(p + 1) > ctx_data_end(ctx))
			return DROP(DROP_NAT_FAILED);
		*p = port;
	}
	if (src) {
		f->saddr.v4 = addr;
		if (port)
			f->sport = port;
	} else {
		f->daddr.v4 = addr;
		if (port)
			f->dport = port;
	}
	return 0;
}
#endif /* !PORIN_CTX_XDP */

#endif /* PORIN_NAT_H */
