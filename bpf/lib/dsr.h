/* Direct server return for NodePort backends on other nodes (nodePortMode
 * dsr): the node the client reached (the frontend node) sends the client's
 * packet to the backend's node in IPIP, and the backend's reply leaves the
 * backend's node straight to the client, sourced from the frontend.
 *
 * On the frontend node (bpf_xdp.c): the inner packet is DNATed to the
 * backend and an outer IPv4 header with one option is put in front:
 *
 *   outer IPv4, ihl 7, protocol 4, source the node's address, destination
 *   the backend's node | option DSR_OPT_TYPE: the frontend's port and
 *   address | the client's packet, destination the backend
 *
 * (Cilium carries the frontend in an option of the packet itself; here it
 * rides in the outer header, which the backend's node removes, so the pod
 * gets the client's packet unchanged but for its destination.)
 *
 * On the backend's node (bpf_host.c from_netdev): accepted only from a node
 * of the cluster, the outer header removed, the frontend remembered in
 * `dsr4` for the flow and the flow's conntrack entry marked CT_F_DSR; the
 * backend's replies (bpf_lxc.c) are sourced from the frontend again and
 * routed out.
 *
 *   dsr4  LRU {client, backend, ports, protocol} -> the frontend
 */
#ifndef PORIN_DSR_H
#define PORIN_DSR_H

#include "common.h"
#include "flow.h"
#include "csum.h"
/* included whatever the hook: daemon/bpf_source.py inlines a header once,
 * where it is first named, blind to #if */
#include "nat.h"
#include "tunnel.h"

#ifndef DSR4_MAP_SIZE
#error "DSR4_MAP_SIZE must be defined (daemon/datapath.py:build_flags passes it)"
#endif

#define DSR_OPT_TYPE 0x9a /* copied, control class, option number 26 */
#define DSR_OPT_LEN 8
#define DSR_ENCAP_LEN (sizeof(struct iphdr) + DSR_OPT_LEN)

struct dsr_opt4 {
	__u8 type;
	__u8 len;
	__be16 port;    /* the frontend's */
	__be32 address;
};

struct dsr4_key {
	__be32 client;
	__be32 backend;
	__be16 client_port;
	__be16 backend_port;
	__u8 proto;
	__u8 pad[3];
};

struct dsr4_frontend {
	__be32 address;
	__be16 port;
	__u16 pad;
};

PORIN_MAP("lru_hash", struct dsr4_key, struct dsr4_frontend, dsr4, DSR4_MAP_SIZE);

#ifndef PORIN_CTX_XDP /* tc: the backend's node, and the frontend's fallback */

/* Is the IPIP packet (outer header after Ethernet) a DSR one? Fills `opt`. */
static __always_inline int dsr4_read_opt(struct __sk_buff *ctx, struct dsr_opt4 *opt)
{
	struct iphdr *outer = ctx_data(ctx) + ETH_HLEN;

	if ((void *)(outer + 1) > ctx_data_end(ctx) || outer->ihl * 4 != DSR_ENCAP_LEN)
		return 0;
	if (bpf_skb_load_bytes(ctx, ETH_HLEN + sizeof(*outer), opt, sizeof(*opt)) < 0)
		return 0;
	return opt->type == DSR_OPT_TYPE && opt->len == DSR_OPT_LEN;
}

/* Remove the outer header and its option; 0 or DROP(DROP_ENCAP_FAILED). */
static __always_inline int dsr4_decap(struct __sk_buff *ctx)
{
	if (bpf_skb_adjust_room(ctx, -(__s32)DSR_ENCAP_LEN, BPF_ADJ_ROOM_MAC,
				(1ULL << 7) /* BPF_F_ADJ_ROOM_DECAP_L3_IPV4 */) < 0)
		return DROP(DROP_ENCAP_FAILED);
	return 0;
}

/* Remember the frontend of `f`'s flow (client -> backend), once. */
static __always_inline void dsr4_note(const struct flow *f, const struct dsr_opt4 *opt)
{
	struct dsr4_key key = {
		.client = f->saddr.v4,
		.backend = f->daddr.v4,
		.client_port = f->sport,
		.backend_port = f->dport,
		.proto = f->proto,
	};
	struct dsr4_frontend fe = { .address = opt->address, .port = opt->port };
	struct dsr4_frontend *known = dsr4.lookup(&key);

	if (!known || known->address != fe.address || known->port != fe.port)
		dsr4.update(&key, &fe);
}

/* A backend's reply `f` (backend -> client) of a DSR flow: sourced from
 * the frontend again. 0, CTX_GO_ON (its frontend is forgotten: left as it
 * is), or DROP(DROP_NAT_FAILED). */
static __always_inline int dsr4_reply(struct __sk_buff *ctx, struct flow *f)
{
	struct dsr4_key key = {
		.client = f->daddr.v4,
		.backend = f->saddr.v4,
		.client_port = f->dport,
		.backend_port = f->sport,
		.proto = f->proto,
	};
	struct dsr4_frontend *fe = dsr4.lookup(&key);

	if (!fe)
		return CTX_GO_ON;
	return nat4_rewrite(ctx, f, 1, fe->address, fe->port);
}
/* tc's DSR (a packet XDP left to tc: no XDP, the neighbour not resolved
 * yet, ...), the same on the wire as XDP's: the DSR header in front of the
 * packet, already DNATed to its backend, and out of the uplink, the kernel
 * resolving the neighbour. TC_ACT_REDIRECT or DROP(DROP_ENCAP_FAILED). */
static __always_inline int dsr4_encap_redirect(struct __sk_buff *ctx, __be32 saddr,
					       __be32 daddr, __be32 fe_addr, __be16 fe_port,
					       __u32 ifindex)
{
	struct {
		struct iphdr ip;
		struct dsr_opt4 opt;
	} outer = {};
	struct iphdr *inner = ctx_data(ctx) + ETH_HLEN;
	__u16 inner_len;

	if ((void *)(inner + 1) > ctx_data_end(ctx))
		return DROP(DROP_ENCAP_FAILED);
	inner_len = bpf_ntohs(inner->tot_len);
	outer.ip.version = 4;
	outer.ip.ihl = DSR_ENCAP_LEN / 4;
	outer.ip.ttl = 64;
	outer.ip.protocol = IPPROTO_IPIP;
	outer.ip.frag_off = inner->frag_off & bpf_htons(0x4000);
	outer.ip.id = inner->id;
	outer.ip.tot_len = bpf_htons(inner_len + DSR_ENCAP_LEN);
	outer.ip.saddr = saddr;
	outer.ip.daddr = daddr;
	outer.opt.type = DSR_OPT_TYPE;
	outer.opt.len = DSR_OPT_LEN;
	outer.opt.port = fe_port;
	outer.opt.address = fe_addr;
	outer.ip.check = csum_finish(bpf_csum_diff(NULL, 0, (__be32 *)&outer, sizeof(outer), 0));
	if (bpf_skb_adjust_room(ctx, sizeof(outer), BPF_ADJ_ROOM_MAC,
				(1ULL << 1) /* BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 */) < 0)
		return DROP(DROP_ENCAP_FAILED);
	if (bpf_skb_store_bytes(ctx, ETH_HLEN, &outer, sizeof(outer), 0) < 0)
		return DROP(DROP_ENCAP_FAILED);
	if (porin_redirect_neigh(ifindex, NULL, 0, 0) != TC_ACT_REDIRECT)
		return DROP(DROP_ENCAP_FAILED);
	return TC_ACT_REDIRECT;
}
#endif /* !PORIN_CTX_XDP */

#endif /* PORIN_DSR_H */
