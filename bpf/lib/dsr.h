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

#endif /* PORIN_DSR_H */
