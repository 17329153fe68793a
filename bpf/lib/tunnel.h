/* Overlay between nodes: VXLAN (the kernel's collect-metadata device does
 * the UDP encapsulation; the sender's identity rides in the VNI) or IPIP
 * (encapsulated and decapsulated here, wire-compatible with the kernel's
 * ipip; an IPIP header has no room for the identity, so the receiver takes
 * it from its ipcache entry for the inner source address).
 *
 * tunnel_config (one entry, written by the agent) says which, and where. */
#ifndef PORIN_TUNNEL_H
#define PORIN_TUNNEL_H

#include "common.h"
#include "reasons.h"
#include "identity.h"
#include "ipcache.h"
#include "csum.h"

#define TUNNEL_NONE 0
#define TUNNEL_VXLAN 1
#define TUNNEL_IPIP 2

#define VXLAN_PORT 8472

/* constants newer than the 6.1 UAPI headers bcc compiles against */
#define PORIN_ADJ_ROOM_ENCAP_L3_IPV4 (1ULL << 1)
#define PORIN_ADJ_ROOM_DECAP_L3_IPV4 (1ULL << 7)

/* bcc 0.26 declares bpf_redirect_neigh with 3 arguments; the kernel's has 4 */
static long (*porin_redirect_neigh_)(__u32 ifindex, struct bpf_redir_neigh *params, int plen,
				     __u64 flags) = (void *)BPF_FUNC_redirect_neigh;

static __always_inline long porin_redirect_neigh(__u32 ifindex, struct bpf_redir_neigh *params,
						 int plen, __u64 flags)
{
	TRACE_NEIGH(ifindex); /* lib/trace.h: the trace build's note of where it went */
	return porin_redirect_neigh_(ifindex, params, plen, flags);
}

struct tunnel_config {
	__u32 mode;           /* TUNNEL_* */
	__u32 vxlan_ifindex;  /* porin_vxlan */
	__u32 uplink_ifindex; /* IPIP leaves here */
	__be32 node_ip;       /* outer source for IPIP */
	__u32 mtu;            /* underlay MTU */
	__u32 pad;
};

PORIN_MAP("array", __u32, struct tunnel_config, tunnel_config, 1);

static __always_inline struct tunnel_config *tunnel_cfg(void)
{
	__u32 zero = 0;
	struct tunnel_config *cfg = tunnel_config.lookup(&zero);

	return (cfg && cfg->mode != TUNNEL_NONE) ? cfg : NULL;
}

/* The configuration whatever the mode, `tunnel: disabled` too (the node's
 * address, uplink and MTU: nodes reach each other's pods as the network
 * routes them); NULL before the agent wrote it. */
static __always_inline struct tunnel_config *tunnel_cfg_any(void)
{
	__u32 zero = 0;
	struct tunnel_config *cfg = tunnel_config.lookup(&zero);

	return (cfg && cfg->node_ip) ? cfg : NULL;
}

static __always_inline __u32 tunnel_overhead(const struct tunnel_config *cfg)
{
	/* VXLAN: outer IPv4 + UDP + VXLAN + inner Ethernet; IPIP: outer IPv4 */
	if (cfg->mode == TUNNEL_NONE)
		return 0;
	return cfg->mode == TUNNEL_VXLAN ? 50 : 20;
}

#ifndef PORIN_CTX_XDP /* encapsulation and decapsulation through the skb's helpers */
/* Hand a packet to the VXLAN device with its tunnel metadata.
 * Returns TC_ACT_REDIRECT or DROP(DROP_ENCAP_FAILED). */
static __always_inline int tunnel_vxlan_redirect(struct __sk_buff *skb,
						 const struct tunnel_config *cfg,
						 __be32 tunnel_endpoint, __u32 identity)
{
	struct bpf_tunnel_key key = {};

	key.tunnel_id = identity;
	key.remote_ipv4 = bpf_ntohl(tunnel_endpoint);
	key.tunnel_ttl = 64;
	if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), BPF_F_ZERO_CSUM_TX) < 0)
		return DROP(DROP_ENCAP_FAILED);
	return bpf_redirect(cfg->vxlan_ifindex, 0);
}

/* Put an outer IPv4 header (protocol 4) in front of the packet and send it
 * out of the uplink; the kernel fills in the L2 header (bpf_redirect_neigh).
 * Returns TC_ACT_REDIRECT or DROP(DROP_ENCAP_FAILED). */
static __always_inline int tunnel_ipip_redirect(struct __sk_buff *skb,
						const struct tunnel_config *cfg,
						__be32 tunnel_endpoint)
{
	struct iphdr outer = {};
	struct iphdr *inner;
	__u16 inner_len;
	__be16 frag;

	inner = ctx_data(skb) + ETH_HLEN;
	if ((void *)(inner + 1) > ctx_data_end(skb))
		return DROP(DROP_ENCAP_FAILED);
	inner_len = bpf_ntohs(inner->tot_len);
	frag = inner->frag_off & bpf_htons(0x4000); /* keep DF */
	if (bpf_skb_adjust_room(skb, sizeof(outer), BPF_ADJ_ROOM_MAC,
				PORIN_ADJ_ROOM_ENCAP_L3_IPV4) < 0)
		return DROP(DROP_ENCAP_FAILED);
	outer.version = 4;
	outer.ihl = 5;
	outer.ttl = 64;
	outer.protocol = IPPROTO_IPIP;
	outer.frag_off = frag;
	outer.tot_len = bpf_htons(inner_len + sizeof(outer));
	outer.saddr = cfg->node_ip;
	outer.daddr = tunnel_endpoint;
	outer.check = csum_finish(bpf_csum_diff(NULL, 0, (__be32 *)&outer, sizeof(outer), 0));
	if (bpf_skb_store_bytes(skb, ETH_HLEN, &outer, sizeof(outer), 0) < 0)
		return DROP(DROP_ENCAP_FAILED);
	if (porin_redirect_neigh(cfg->uplink_ifindex, NULL, 0, 0) != TC_ACT_REDIRECT)
		return DROP(DROP_ENCAP_FAILED);
	return TC_ACT_REDIRECT;
}

/* Remove the outer IPv4 header of an IPIP packet; 0 or DROP(DROP_ENCAP_FAILED). */
static __always_inline int tunnel_ipip_decap(struct __sk_buff *skb)
{
	if (bpf_skb_adjust_room(skb, -(__s32)sizeof(struct iphdr), BPF_ADJ_ROOM_MAC,
				PORIN_ADJ_ROOM_DECAP_L3_IPV4) < 0)
		return DROP(DROP_ENCAP_FAILED);
	return 0;
}
#endif /* !PORIN_CTX_XDP */

/* A tunnelled packet from node `node_ip` claims to come from `inner_src`
 * with `identity`: the ipcache must place that source behind that node,
 * with that identity (or know the node's pod CIDR only, identity unknown,
 * while the pod's own entry is on its way), or be the node itself as a
 * remote node. 0 or DROP(DROP_FORGED_TUNNEL). */
static __always_inline int tunnel_check_sender(__be32 node_ip, __be32 inner_src, __u32 identity)
{
	struct remote_endpoint_info *info = ipcache_lookup(inner_src);

	/* the node itself (a NodePort packet it sourced from its address) */
	if (inner_src == node_ip && info && (info->flags & IPCACHE_F_NODE) &&
	    identity == IDENTITY_REMOTE_NODE)
		return 0;
	if (!info || info->tunnel_endpoint != node_ip)
		return DROP(DROP_FORGED_TUNNEL);
	if (info->sec_identity != identity && info->sec_identity != IDENTITY_UNKNOWN)
		return DROP(DROP_FORGED_TUNNEL);
	return 0;
}

#endif /* PORIN_TUNNEL_H */
