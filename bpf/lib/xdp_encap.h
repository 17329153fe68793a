/* Outer headers XDP puts in front of a frame, with the MACs of the route to
 * the next node (lib/xdp_lb.h xdp_route_to):
 *
 *   xdp_dsr4_encap    nodePortMode dsr: IPIP with the DSR option (lib/dsr.h)
 *   xdp_ipip_encap    the overlay's IPIP, as tc builds it (lib/tunnel.h
 *                     tunnel_ipip_redirect: TTL 64, the inner DF, id 0)
 *   xdp_vxlan_encap   the overlay's VXLAN, as the kernel's VXLAN device builds
 *                     it from tc's tunnel key: UDP to VXLAN_PORT without a
 *                     checksum (BPF_F_ZERO_CSUM_TX), TTL 64, DF clear, the
 *                     whole frame inside, its Ethernet header too
 *
 * The receiving node takes each as it takes tc's (bpf_host.c from_netdev,
 * the kernel's VXLAN device and bpf_overlay.c). Each returns 0 or
 * DROP(DROP_ENCAP_FAILED).
 */
#ifndef PORIN_XDP_ENCAP_H
#define PORIN_XDP_ENCAP_H

#include "common.h"
#include "csum.h"
#include "ipv4.h"
#include "dsr.h"
#include "tunnel.h"

/* the kernel's VXLAN source ports (a device's default range, the local
 * port range's), picked by the inner flow's hash as udp_flow_src_port does */
#define XDP_VXLAN_SPORT_MIN 32768
#define XDP_VXLAN_SPORT_MAX 61000
#define XDP_VXLAN_LEN (ETH_HLEN + sizeof(struct iphdr) + sizeof(struct udphdr) + 8)

struct xdp_vxlanhdr {
	__be32 flags; /* 0x08000000: the VNI is valid */
	__be32 vni;   /* VNI << 8 */
};

/* The sum of an IPv4 header of `words` 16-bit words. */
static __always_inline __u16 xdp_ipv4_csum(const __u16 *hdr, int words)
{
	__u32 sum = 0;

#pragma unroll
	for (int i = 0; i < 14; i++)
		if (i < words)
			sum += hdr[i];
	return csum_finish(sum);
}

/* A new frame header (IPv4) and the fixed part of an outer IPv4 header of
 * `ihl` words; the caller adds what follows and then the checksum. */
static __always_inline void xdp_outer4_fill(struct ethhdr *eth, struct iphdr *outer, __u8 ihl,
					    __u8 proto, __u16 tot_len, __be16 id, __be16 frag,
					    __be32 saddr, __be32 daddr, const __u8 *smac,
					    const __u8 *dmac)
{
	__builtin_memcpy(eth->h_dest, dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, smac, ETH_ALEN);
	eth->h_proto = bpf_htons(ETH_P_IP);
	outer->version = 4;
	outer->ihl = ihl;
	outer->tos = 0;
	outer->tot_len = bpf_htons(tot_len);
	outer->id = id;
	outer->frag_off = frag;
	outer->ttl = 64;
	outer->protocol = proto;
	outer->check = 0;
	outer->saddr = saddr;
	outer->daddr = daddr;
}

/* DSR: the outer header with its option (lib/dsr.h), the frontend in it;
 * the client's DF and IP id carried over. */
static __always_inline int xdp_dsr4_encap(struct xdp_md *ctx, __be32 saddr, __be32 daddr,
					  __be32 fe_addr, __be16 fe_port, const __u8 *smac,
					  const __u8 *dmac)
{
	struct iphdr *inner = ctx_data(ctx) + ETH_HLEN, *outer;
	struct dsr_opt4 *opt;
	struct ethhdr *eth;
	__u16 inner_len;
	__be16 frag, id;

	if ((void *)(inner + 1) > ctx_data_end(ctx))
		return DROP(DROP_ENCAP_FAILED);
	inner_len = bpf_ntohs(inner->tot_len);
	frag = inner->frag_off & bpf_htons(0x4000); /* DF, as the client set it */
	id = inner->id;
	if (bpf_xdp_adjust_head(ctx, -(int)DSR_ENCAP_LEN))
		return DROP(DROP_ENCAP_FAILED);
	eth = ctx_data(ctx);
	outer = (void *)(eth + 1);
	opt = (void *)(outer + 1);
	if ((void *)(opt + 1) > ctx_data_end(ctx))
		return DROP(DROP_ENCAP_FAILED);
	xdp_outer4_fill(eth, outer, DSR_ENCAP_LEN / 4, IPPROTO_IPIP, inner_len + DSR_ENCAP_LEN, id,
			frag, saddr, daddr, smac, dmac);
	opt->type = DSR_OPT_TYPE;
	opt->len = DSR_OPT_LEN;
	opt->port = fe_port;
	opt->address = fe_addr;
	outer->check = xdp_ipv4_csum((__u16 *)outer, DSR_ENCAP_LEN / 2);
	return 0;
}

/* The overlay's IPIP from `saddr` (this node) to `daddr` (the next one). */
static __always_inline int xdp_ipip_encap(struct xdp_md *ctx, __be32 saddr, __be32 daddr,
					  const __u8 *smac, const __u8 *dmac)
{
	struct iphdr *inner = ctx_data(ctx) + ETH_HLEN, *outer;
	struct ethhdr *eth;
	__u16 inner_len;
	__be16 frag;

	if ((void *)(inner + 1) > ctx_data_end(ctx))
		return DROP(DROP_ENCAP_FAILED);
	inner_len = bpf_ntohs(inner->tot_len);
	frag = inner->frag_off & bpf_htons(0x4000); /* keep DF */
	if (bpf_xdp_adjust_head(ctx, -(int)sizeof(*outer)))
		return DROP(DROP_ENCAP_FAILED);
	eth = ctx_data(ctx);
	outer = (void *)(eth + 1);
	if ((void *)(outer + 1) > ctx_data_end(ctx))
		return DROP(DROP_ENCAP_FAILED);
	xdp_outer4_fill(eth, outer, 5, IPPROTO_IPIP, inner_len + sizeof(*outer), 0, frag, saddr,
			daddr, smac, dmac);
	outer->check = xdp_ipv4_csum((__u16 *)outer, sizeof(*outer) / 2);
	return 0;
}

/* The overlay's VXLAN from `saddr` to `daddr` with `vni`; `hash` (the inner
 * flow's) picks the UDP source port, so a flow keeps one. */
static __always_inline int xdp_vxlan_encap(struct xdp_md *ctx, __be32 saddr, __be32 daddr,
					   __u32 vni, __u32 hash, const __u8 *smac,
					   const __u8 *dmac)
{
	__u32 frame_len = ctx_len(ctx);
	struct xdp_vxlanhdr *vx;
	struct ethhdr *eth;
	struct iphdr *outer;
	struct udphdr *udp;
	__u16 sport;

	sport = XDP_VXLAN_SPORT_MIN +
		(((__u64)hash * (XDP_VXLAN_SPORT_MAX - XDP_VXLAN_SPORT_MIN)) >> 32);
	if (bpf_xdp_adjust_head(ctx, -(int)XDP_VXLAN_LEN))
		return DROP(DROP_ENCAP_FAILED);
	eth = ctx_data(ctx);
	outer = (void *)(eth + 1);
	udp = (void *)(outer + 1);
	vx = (void *)(udp + 1);
	if ((void *)(vx + 1) > ctx_data_end(ctx))
		return DROP(DROP_ENCAP_FAILED);
	xdp_outer4_fill(eth, outer, 5, IPPROTO_UDP,
			frame_len + XDP_VXLAN_LEN - ETH_HLEN, 0, 0, saddr, daddr, smac, dmac);
	udp->source = bpf_htons(sport);
	udp->dest = bpf_htons(VXLAN_PORT);
	udp->len = bpf_htons(frame_len + sizeof(*udp) + sizeof(*vx));
	udp->check = 0;
	vx->flags = bpf_htonl(0x08000000);
	vx->vni = bpf_htonl(vni << 8);
	outer->check = xdp_ipv4_csum((__u16 *)outer, sizeof(*outer) / 2);
	return 0;
}

#endif /* PORIN_XDP_ENCAP_H */
