/* Address and port rewrites in XDP: lib/nat.h's nat4_rewrite for a frame
 * that has no skb yet. The packet is written in place and its checksums
 * updated incrementally (RFC 1624); XDP sees whole checksums, never a
 * partial one left for offload, so there is no helper to ask.
 */
#ifndef PORIN_XDP_NAT_H
#define PORIN_XDP_NAT_H

#include "common.h"
#include "flow.h"
#include "csum.h"
#include "ipv4.h"
#include "nat.h"

/* Rewrite the source (src=1) or destination address and, when `port` is
 * non-zero, the matching TCP or UDP port, and the flow record with them.
 * Checksums: the IPv4 header's, and the L4 one (pseudo header and port)
 * where the packet has one. A non-first fragment (no L4 header, its ports
 * its first's, lib/frag.h) gets its address alone; ICMP too (its checksum
 * covers no pseudo header). Returns 0 or DROP(DROP_TRUNCATED). */
static __always_inline int xdp_nat4_rewrite(struct xdp_md *ctx, struct flow *f, int src,
					    __be32 addr, __be16 port)
{
	void *end = ctx_data_end(ctx);
	struct iphdr *ip = ctx_data(ctx) + ETH_HLEN;
	/* the mask bounds the offset for the verifier: an L4 header starts
	 * within the first 255 bytes of a frame we parsed */
	void *l4 = ctx_data(ctx) + (f->l4_off & 0xff);
	__be16 *at = l4 + (src ? 0 : 2);
	int ports = !f->is_fragment && (f->proto == IPPROTO_TCP || f->proto == IPPROTO_UDP);
	__be16 old_port = src ? f->sport : f->dport;
	__be32 old_addr;
	__u16 *check, c;

	if ((void *)(ip + 1) > end)
		return DROP(DROP_TRUNCATED);
	if (ports) {
		if ((void *)(at + 1) > end)
			return DROP(DROP_TRUNCATED);
		old_port = *at;
	}
	if (!port || (f->proto != IPPROTO_TCP && f->proto != IPPROTO_UDP))
		port = old_port;
	old_addr = src ? ip->saddr : ip->daddr;
	check = l4_csum_field(f, l4, end);
	if (check) {
		c = csum_replace32(*check, old_addr, addr);
		c = csum_replace16(c, old_port, port);
		if (f->proto == IPPROTO_UDP && !c)
			c = 0xffff; /* 0 would mean "no checksum" */
		*check = c;
	}
	if (ports)
		*at = port;
	ipv4_csum_update32(ip, old_addr, addr);
	if (src) {
		ip->saddr = addr;
		f->saddr.v4 = addr;
		f->sport = port;
	} else {
		ip->daddr = addr;
		f->daddr.v4 = addr;
		f->dport = port;
	}
	return 0;
}

#endif /* PORIN_XDP_NAT_H */
