/* NodePort load balancing in XDP (bpf_xdp.c), Katran's way: the flow's
 * backend from the balancer's flow table (lib/lb.h lb4_flow_backend: the
 * LRU, else Maglev, the same table on every node, so every node and every
 * packet of a flow pick the same backend, also for a TCP flow first seen
 * without its SYN; or random; affinity first); a backend on another node
 * reached with DSR in IPIP (lib/dsr.h), straight out of the device the FIB
 * names (kept a second or two in `xdp_routes4`, by backend).
 *
 * Helpers return CTX_GO_ON (on to tc: the backend is local, or the packet
 * cannot be sent from here), an XDP action, or DROP(reason).
 */
#ifndef PORIN_XDP_LB_H
#define PORIN_XDP_LB_H

#include "common.h"
#include "flow.h"
#include "csum.h"
#include "ipv4.h"
#include "icmp.h"
#include "lb.h"
#include "dsr.h"
#include "xdp_nat.h"
#include "xdp_encap.h"
#include "endpoint.h"
#include "ipcache.h"
#include "clock.h"

#ifndef XDP_ROUTES4_MAP_SIZE
#error "XDP_ROUTES4_MAP_SIZE must be defined (daemon/datapath.py:build_flags passes it)"
#endif

#define AF_INET_ 2

/* The packet, too big for the way to the backend's node with the DSR
 * header and not to be fragmented, becomes ICMP fragmentation needed (with
 * the MTU left for it) back to its sender, from the frontend `from`: the
 * frame is [eth | new IP | ICMP | the packet's IP header + 8 bytes].
 * XDP_TX, or DROP(DROP_FRAG_NEEDED) when it cannot be made. */
static __always_inline int xdp_frag_needed(struct xdp_md *ctx, __be32 from, __u16 mtu)
{
	struct ethhdr *eth, *old_eth;
	struct iphdr *ip, *quote;
	struct icmphdr *icmp;
	__u32 sum = 0, len;
	__u16 *w;

	quote = ctx_data(ctx) + ETH_HLEN;
	if ((void *)quote + ICMP_QUOTE_LEN > ctx_data_end(ctx) || quote->ihl != 5)
		return DROP(DROP_FRAG_NEEDED);
	if (bpf_xdp_adjust_head(ctx, -(int)(sizeof(*ip) + sizeof(*icmp))))
		return DROP(DROP_FRAG_NEEDED);
	len = ctx_len(ctx);
	if (bpf_xdp_adjust_tail(ctx, (int)(ETH_HLEN + sizeof(*ip) + sizeof(*icmp) +
					  ICMP_QUOTE_LEN) - (int)len))
		return DROP(DROP_FRAG_NEEDED);
	eth = ctx_data(ctx);
	ip = (void *)(eth + 1);
	icmp = (void *)(ip + 1);
	old_eth = (void *)eth + sizeof(*ip) + sizeof(*icmp);
	quote = (void *)(icmp + 1);
	if ((void *)quote + ICMP_QUOTE_LEN > ctx_data_end(ctx))
		return DROP(DROP_FRAG_NEEDED);
	/* the quoted header sits where it was; the frame's own is rebuilt */
	__builtin_memcpy(eth->h_dest, old_eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, old_eth->h_dest, ETH_ALEN);
	eth->h_proto = bpf_htons(ETH_P_IP);
	icmp->type = ICMP_DEST_UNREACH;
	icmp->code = ICMP_FRAG_NEEDED;
	icmp->checksum = 0;
	icmp->un.frag.__unused = 0;
	icmp->un.frag.mtu = bpf_htons(mtu);
	w = (__u16 *)icmp;
#pragma unroll
	for (int i = 0; i < (int)(sizeof(*icmp) + ICMP_QUOTE_LEN) / 2; i++)
		sum += w[i];
	icmp->checksum = csum_finish(sum);
	ip->version = 4;
	ip->ihl = 5;
	ip->tos = 0;
	ip->tot_len = bpf_htons(sizeof(*ip) + sizeof(*icmp) + ICMP_QUOTE_LEN);
	ip->id = 0;
	ip->frag_off = 0;
	ip->ttl = 64;
	ip->protocol = IPPROTO_ICMP;
	ip->check = 0;
	ip->saddr = from;
	ip->daddr = quote->saddr;
	ip->check = xdp_ipv4_csum((__u16 *)ip, sizeof(*ip) / 2);
	return XDP_TX;
}

/* The way to a backend's node, kept for a second or two: an ipcache lookup
 * and two FIB lookups cost about 250 ns, a hit in this table about 30. A
 * neighbour or route change is seen within two seconds. */
struct xdp_route4 {
	__be32 node;        /* the backend's node (its tunnel endpoint) */
	__u32 identity;     /* the backend's security identity */
	__u32 ifindex;      /* out of this device */
	__u32 expires;      /* seconds of the datapath clock */
	__u8 smac[ETH_ALEN];
	__u8 dmac[ETH_ALEN];
	__u16 mtu;          /* the route's MTU */
	__u16 pad;
};

PORIN_MAP("lru_hash", __be32, struct xdp_route4, xdp_routes4, XDP_ROUTES4_MAP_SIZE);

/* The route to backend `b`'s node, from the table or looked up (the
 * ipcache, then the FIB: routed as the node forwards what comes in on this
 * device, the agent turns forwarding on). NULL: not behind another node, or
 * no way there yet (no route, neighbour unresolved: tc resolves it). */
static __always_inline struct xdp_route4 *xdp_route_to(struct xdp_md *ctx, __be32 backend,
						       __be32 node_ip)
{
	struct xdp_route4 fresh = {}, *r = xdp_routes4.lookup(&backend);
	struct bpf_fib_lookup fib = {};
	struct remote_endpoint_info *info;
	__u32 now = now_seconds();

	if (r && r->expires > now)
		return r;
	info = ipcache_lookup(backend);
	if (!info || !info->tunnel_endpoint)
		return NULL;
	fib.family = AF_INET_;
	fib.ipv4_src = node_ip;
	fib.ipv4_dst = info->tunnel_endpoint;
	fib.ifindex = ctx->ingress_ifindex;
	fib.tot_len = 0xffff; /* too big for any route: the answer is its MTU */
	if (bpf_fib_lookup(ctx, &fib, sizeof(fib), 0) != BPF_FIB_LKUP_RET_FRAG_NEEDED)
		return NULL;
	fresh.mtu = fib.mtu_result;
	__builtin_memset(&fib, 0, sizeof(fib));
	fib.family = AF_INET_;
	fib.ipv4_src = node_ip;
	fib.ipv4_dst = info->tunnel_endpoint;
	fib.ifindex = ctx->ingress_ifindex;
	if (bpf_fib_lookup(ctx, &fib, sizeof(fib), 0) != BPF_FIB_LKUP_RET_SUCCESS)
		return NULL;
	fresh.node = info->tunnel_endpoint;
	fresh.identity = info->sec_identity;
	fresh.ifindex = fib.ifindex;
	fresh.expires = now + 2;
	__builtin_memcpy(fresh.smac, fib.smac, ETH_ALEN);
	__builtin_memcpy(fresh.dmac, fib.dmac, ETH_ALEN);
	xdp_routes4.update(&backend, &fresh);
	return xdp_routes4.lookup(&backend);
}

/* Out of the device the route names: back out of this one (XDP_TX), or
redirected to another; the verdict says why and to whom. */
static __always_inline int xdp_route_send(struct xdp_md *ctx, const struct xdp_route4 *r,
					  __u8 reason, struct verdict *v)
{
	v->reason = reason;
	v->dst_identity = r->identity;
	if (r->ifindex == ctx->ingress_ifindex)
		return XDP_TX;
	return bpf_redirect(r->ifindex, 0);
}

/* A NodePort packet to frontend `svc` on node address `node_ip`: to its
 * backend on another node with DSR, or CTX_GO_ON (on to tc: a local
 * backend, none, or no way from here). */
static __always_inline int xdp_nodeport4(struct xdp_md *ctx, struct flow *f,
					 const struct lb4_service *svc, __be32 node_ip,
					 struct verdict *v)
{
	struct iphdr *ip = ctx_data(ctx) + ETH_HLEN;
	struct lb4_backend *b;
	struct xdp_route4 *r;
	__be32 fe_addr = f->daddr.v4;
	__be16 fe_port = f->dport;
	int ret;

	if ((void *)(ip + 1) > ctx_data_end(ctx))
		return DROP(DROP_TRUNCATED);
	b = lb4_flow_backend(f, svc);
	if (!b || lookup_endpoint(b->address))
		return CTX_GO_ON; /* no backend (tc refuses it) or a local one */
	r = xdp_route_to(ctx, b->address, node_ip);
	if (!r)
		return CTX_GO_ON;
	if (bpf_ntohs(ip->tot_len) + DSR_ENCAP_LEN > r->mtu) {
		if (!(ip->frag_off & bpf_htons(0x4000)))
			return CTX_GO_ON; /* may be fragmented: the stack's */
		v->reason = DROP_FRAG_NEEDED;
		return xdp_frag_needed(ctx, fe_addr, r->mtu - DSR_ENCAP_LEN);
	}
	ret = xdp_nat4_rewrite(ctx, f, 0, b->address, b->port);
	if (ret)
		return ret;
	ret = xdp_dsr4_encap(ctx, node_ip, r->node, fe_addr, fe_port, r->smac, r->dmac);
	if (ret)
		return ret;
	return xdp_route_send(ctx, r, REASON_NODEPORT_DSR, v);
}

/* The header an ICMP error quotes, sourced from `addr`:`port` instead (the
 * quoted header's and the ICMP checksums fixed; icmp_inner_flow checked it
 * has no options). 0 or DROP(DROP_TRUNCATED). */
static __always_inline int xdp_icmp_quote_src(struct xdp_md *ctx, const struct flow *f,
					      __be32 addr, __be16 port)
{
	struct icmphdr *icmp = ctx_data(ctx) + (f->l4_off & 0xff);
	struct iphdr *q = (void *)(icmp + 1);
	__be16 *qport = (void *)(q + 1);
	__u16 c, old_check;
	__be32 old_addr;

	if ((void *)(qport + 1) > ctx_data_end(ctx))
		return DROP(DROP_TRUNCATED);
	old_addr = q->saddr;
	old_check = q->check;
	q->check = csum_replace32(q->check, old_addr, addr);
	q->saddr = addr;
	c = csum_replace32(icmp->checksum, old_addr, addr);
	c = csum_replace16(c, old_check, q->check);
	c = csum_replace16(c, *qport, port);
	*qport = port;
	icmp->checksum = c;
	return 0;
}

/* An ICMP error to the node about a flow XDP sent to a backend on another
 * node (a router beyond the client reports on the backend's reply, which
 * carried the frontend as its source): to that same backend, DSR as the
 * flow, the quote made about the backend, so its stack finds the socket
 * (path MTU discovery of DSR flows). CTX_GO_ON: none of those, the stack's. */
static __always_inline int xdp_nodeport4_icmp_error(struct xdp_md *ctx, struct flow *f,
						    __be32 node_ip, struct verdict *v)
{
	struct iphdr *ip = ctx_data(ctx) + ETH_HLEN;
	struct lb4_flow_key key = {};
	struct lb4_backend *b;
	struct xdp_route4 *r;
	struct lb4_flow *known;
	struct flow inner;
	int ret;

	if ((void *)(ip + 1) > ctx_data_end(ctx))
		return DROP(DROP_TRUNCATED);
	if (icmp_inner_flow(ctx, f, &inner) || inner.saddr.v4 != node_ip ||
	    (inner.proto != IPPROTO_TCP && inner.proto != IPPROTO_UDP))
		return CTX_GO_ON;
	key.client = inner.daddr.v4;
	key.frontend = inner.saddr.v4;
	key.client_port = inner.dport;
	key.frontend_port = inner.sport;
	key.proto = inner.proto;
	known = lb4_flows.lookup(&key);
	if (!known)
		return CTX_GO_ON;
	b = lb4_backend_usable(known->backend_id, 0);
	if (!b || lookup_endpoint(b->address))
		return CTX_GO_ON;
	r = xdp_route_to(ctx, b->address, node_ip);
	if (!r || bpf_ntohs(ip->tot_len) + DSR_ENCAP_LEN > r->mtu)
		return CTX_GO_ON;
	ret = xdp_icmp_quote_src(ctx, f, b->address, b->port);
	if (ret)
		return ret;
	ret = xdp_nat4_rewrite(ctx, f, 0, b->address, 0);
	if (ret)
		return ret;
	ret = xdp_dsr4_encap(ctx, node_ip, r->node, inner.saddr.v4, inner.sport, r->smac, r->dmac);
	if (ret)
		return ret;
	return xdp_route_send(ctx, r, REASON_NODEPORT_DSR, v);
}

#endif /* PORIN_XDP_LB_H */
