/* NodePort in XDP with nodePortMode snat (the default): the client's
 * packets of an established flow to a backend on another node, translated
 * and sent into the overlay from here, before the kernel makes an skb.
 *
 * tc makes the flow (bpf_host.c from_netdev step 7: conntrack's flow entry
 * with its backend and the reply entry, the balancer's flow table, the NAT
 * port in nat4), and answers what needs answering. The flow's later packets
 * find all of that here and take tc's way without tc, in tc's order:
 *   1. the flow entry (ct_lookup_flow, as tc's pipeline looks it up), its
 *      backend still usable and on another node
 *   2. the flow's NAT port (nat4 OUT), the way to the backend's node
 *      (xdp_route_to), and room on it for the overlay's headers
 *   3. conntrack counts the packet and advances its state, the reply entry
 *      kept in step (ct_account_at, ct_refresh_reply_entry: tc's calls)
 *   4. destination to the backend, source to this node and the NAT port
 *      (lib/xdp_nat.h), the overlay's outer headers (lib/xdp_encap.h: IPIP,
 *      or VXLAN with the remote-node VNI), XDP_TX or a redirect
 *      (REASON_NODEPORT_SNAT)
 * The backend's replies come back through the overlay to tc, which
 * translates them back as ever.
 *
 * Left to tc (CTX_GO_ON), before anything is written: a SYN (a new flow, or
 * a reused tuple tc re-points), any fragment, a flow conntrack does not
 * know (tc balances it: Maglev or the flow table), a backend gone, local
 * or hairpin, no NAT entry yet, no overlay, no route, and a packet the
 * overlay's headers would make too big for the way (tc sends DF ones
 * fragmentation needed).
 */
#ifndef PORIN_XDP_SNAT_H
#define PORIN_XDP_SNAT_H

#include "common.h"
#include "flow.h"
#include "identity.h"
#include "conntrack.h"
#include "lb.h"
#include "snat.h"
#include "tunnel.h"
#include "endpoint.h"
#include "xdp_nat.h"
#include "xdp_encap.h"
#include "xdp_lb.h"

static __always_inline int xdp_nodeport4_snat(struct xdp_md *ctx, struct flow *f, __be32 node_ip,
					      struct verdict *v)
{
	struct iphdr *ip = ctx_data(ctx) + ETH_HLEN;
	struct tunnel_config *cfg = tunnel_cfg();
	__u32 len = ctx_len(ctx), now, mtu;
	struct nat4_entry *nat;
	struct lb4_backend *b;
	struct xdp_route4 *r;
	struct ct4_entry *e;
	__be32 to_addr;
	__be16 to_port;
	struct flow out;
	__u8 state;
	int ret;

	if ((void *)(ip + 1) > ctx_data_end(ctx))
		return DROP(DROP_TRUNCATED);
	/* step 1 */
	if (!cfg || flow_is_syn(f) || (ip->frag_off & bpf_htons(0x3fff)))
		return CTX_GO_ON;
	if (ct_lookup_flow(f, &e) != CT_ESTABLISHED || !e->backend_id ||
	    (e->flags & CT_F_HAIRPIN))
		return CTX_GO_ON;
	b = lb4_backend_usable(e->backend_id, 0);
	if (!b || lookup_endpoint(b->address))
		return CTX_GO_ON;
	/* step 2 */
	out = *f;
	out.daddr.v4 = b->address;
	out.dport = b->port;
	nat = snat_lookup_out(&out);
	if (!nat)
		return CTX_GO_ON;
	to_addr = nat->to_addr;
	to_port = nat->to_port;
	r = xdp_route_to(ctx, b->address, node_ip);
	if (!r)
		return CTX_GO_ON;
	mtu = r->mtu < cfg->mtu ? r->mtu : cfg->mtu;
	if (bpf_ntohs(ip->tot_len) + tunnel_overhead(cfg) > mtu)
		return CTX_GO_ON;
	/* step 3 */
	now = now_seconds();
	state = e->state;
	ct_account_at(e, f, len, 0, now);
	v->ct_status = CT_ESTABLISHED;
	v->ct = e;
	/* step 4 */
	ret = xdp_nat4_rewrite(ctx, f, 0, b->address, b->port);
	if (ret)
		return ret;
	ct_refresh_reply_entry(e, f, state, 0, now);
	ret = xdp_nat4_rewrite(ctx, f, 1, to_addr, to_port);
	if (ret)
		return ret;
	if (cfg->mode == TUNNEL_VXLAN) {
		ret = xdp_vxlan_encap(ctx, cfg->node_ip, r->node, IDENTITY_REMOTE_NODE,
				      lb4_flow_hash(f), r->smac, r->dmac);
	} else {
		ret = xdp_ipip_encap(ctx, cfg->node_ip, r->node, r->smac, r->dmac);
	}
	if (ret)
		return ret;
	return xdp_route_send(ctx, r, REASON_NODEPORT_SNAT, v);
}

#endif /* PORIN_XDP_SNAT_H */
