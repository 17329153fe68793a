/* Masquerade (SNAT to the node's address) on the node's uplinks.
 *
 * Each masqueraded flow has two entries in nat4:
 *   OUT {pod, peer, pod port, peer port, proto}  -> {node IP, NAT port}
 *   IN  {peer, node IP, peer port, NAT port}     -> {pod, pod port}
 * keyed by the tuple as the packet carries it in that direction. For ICMP
 * echo the "port" is the echo id. The pod's own port is kept when it is free
 * towards that peer; otherwise random ports of SNAT_PORT_MIN..MAX are tried.
 * Entries live as long as the pod's conntrack entry: the agent's GC removes
 * NAT entries whose conntrack entry is gone. The map is not LRU: when it is
 * full a new flow is dropped with DROP_NAT_MAP_FULL, never silently evicted.
 */
#ifndef PORIN_SNAT_H
#define PORIN_SNAT_H

#include "common.h"
#include "host_device.h"
#include "reasons.h"
#include "clock.h"
#include "flow.h"
#include "nat.h"
#include "icmp.h"
#include <uapi/asm-generic/errno-base.h>

#ifndef NAT_MAP_SIZE
#error "NAT_MAP_SIZE must be defined (daemon/datapath.py:build_flags passes it)"
#endif
#ifndef SNAT_PORT_MIN
#error "SNAT_PORT_MIN must be defined (daemon/datapath.py:build_flags passes it)"
#endif
#ifndef SNAT_PORT_MAX
#error "SNAT_PORT_MAX must be defined (daemon/datapath.py:build_flags passes it)"
#endif
#define SNAT_TRIES 32

#define NAT_DIR_OUT 1
#define NAT_DIR_IN 2

struct nat4_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 dir;
	__u16 pad;
};

struct nat4_entry {
	__be32 to_addr;
	__be16 to_port;
	__u16 pad;
	__u32 created;      /* seconds of CLOCK_MONOTONIC */
	__u32 pad2;
};

struct lpm_v4_key {
	__u32 prefixlen;
	__be32 addr;
};

PORIN_MAP("hash", struct nat4_key, struct nat4_entry, nat4, NAT_MAP_SIZE);
#ifndef NONMASQ_MAP_SIZE
#error "NONMASQ_MAP_SIZE must be defined (daemon/datapath.py:build_flags passes it)"
#endif

PORIN_MAP_F("lpm_trie", struct lpm_v4_key, __u8, nonmasq_cidrs, NONMASQ_MAP_SIZE,
	    BPF_F_NO_PREALLOC);

static __always_inline int snat_wanted(__be32 daddr)
{
	struct lpm_v4_key key = { .prefixlen = 32, .addr = daddr };

	return nonmasq_cidrs.lookup(&key) == NULL;
}

static __always_inline void nat4_key_from_flow(struct nat4_key *k, const struct flow *f, __u8 dir)
{
	k->saddr = f->saddr.v4;
	k->daddr = f->daddr.v4;
	k->sport = f->sport;
	k->dport = f->dport;
	k->proto = f->proto;
	k->dir = dir;
	k->pad = 0;
}

/* Reserve a NAT port for a new flow: the IN entry is inserted first with
 * BPF_NOEXIST, so two flows can never get the same translated tuple. */
static __always_inline int snat_allocate(const struct flow *f, __be32 node_ip,
					 struct nat4_entry *out)
{
	struct nat4_key rkey = {
		.saddr = f->daddr.v4,
		.daddr = node_ip,
		.sport = f->dport,
		.proto = f->proto,
		.dir = NAT_DIR_IN,
	};
	struct nat4_entry rval = { .to_addr = f->saddr.v4, .to_port = f->sport };
	struct nat4_key okey;
	__u16 port = bpf_ntohs(f->sport);
	int i, ret = -1;

	rval.created = now_seconds();
	for (i = 0; i < SNAT_TRIES; i++) {
		if (i > 0 || port == 0)
			port = SNAT_PORT_MIN +
			       bpf_get_prandom_u32() % (SNAT_PORT_MAX - SNAT_PORT_MIN + 1);
		rkey.dport = bpf_htons(port);
		ret = nat4.insert(&rkey, &rval);
		if (ret == 0)
			break;
		if (ret == -E2BIG) /* the map is full */
			return DROP(DROP_NAT_MAP_FULL);
	}
	if (ret != 0)
		return DROP(DROP_NAT_NO_PORT);
	out->to_addr = node_ip;
	out->to_port = rkey.dport;
	out->created = rval.created;
	nat4_key_from_flow(&okey, f, NAT_DIR_OUT);
	if (nat4.update(&okey, out) < 0) {
		nat4.delete(&rkey);
		return DROP(DROP_NAT_MAP_FULL);
	}
	return 0;
}

/* The translation of flow `f` (as it leaves, before SNAT), or NULL. */
static __always_inline struct nat4_entry *snat_lookup_out(const struct flow *f)
{
	struct nat4_key key;

	nat4_key_from_flow(&key, f, NAT_DIR_OUT);
	return nat4.lookup(&key);
}

#ifndef PORIN_CTX_XDP /* rewrites through the skb's helpers (XDP's: lib/xdp_snat.h) */
/* Masquerade a packet leaving through an uplink; 0 or DROP(reason). */
static __always_inline int snat_egress(struct __sk_buff *skb, struct flow *f, __be32 node_ip)
{
	struct nat4_entry fresh = {}, *e;
	__be32 to_addr;
	__be16 to_port;
	int ret;

	e = snat_lookup_out(f);
	if (e) {
		to_addr = e->to_addr;
		to_port = e->to_port;
	} else {
		ret = snat_allocate(f, node_ip, &fresh);
		if (ret)
			return ret;
		to_addr = fresh.to_addr;
		to_port = fresh.to_port;
	}
	return nat4_rewrite(skb, f, 1, to_addr, to_port);
}

/* A reply to a masqueraded flow arriving on an uplink: destination back to
 * the pod. Returns 0 translated, CTX_GO_ON when no NAT flow's, or DROP(...). */
static __always_inline int snat_ingress(struct __sk_buff *skb, struct flow *f)
{
	struct nat4_key key;
	struct nat4_entry *e;

	nat4_key_from_flow(&key, f, NAT_DIR_IN);
	e = nat4.lookup(&key);
	if (!e)
		return CTX_GO_ON;
	return nat4_rewrite(skb, f, 0, e->to_addr, e->to_port);
}

/* An ICMP error about a masqueraded flow (port unreachable, fragmentation
 * needed, time exceeded): the outer destination and the quoted source
 * address and port go back to the pod's. Returns 0 translated, CTX_GO_ON
 * when about no NAT flow, or DROP(...). */
static __always_inline int snat_icmp_error_ingress(struct __sk_buff *skb, struct flow *f)
{
	struct flow inner;
	struct nat4_key key;
	struct nat4_entry *e;
	__be32 pod_ip;
	__be16 pod_port;
	int ret;

	if (icmp_inner_flow(skb, f, &inner))
		return CTX_GO_ON;
	/* the quoted packet went node -> peer: its reply direction is the IN entry */
	key.saddr = inner.daddr.v4;
	key.daddr = inner.saddr.v4;
	key.sport = inner.dport;
	key.dport = inner.sport;
	key.proto = inner.proto;
	key.dir = NAT_DIR_IN;
	key.pad = 0;
	e = nat4.lookup(&key);
	if (!e)
		return CTX_GO_ON;
	pod_ip = e->to_addr;
	pod_port = e->to_port;
	ret = nat4_rewrite(skb, f, 0, pod_ip, 0);
	if (ret)
		return ret;
	return icmp_quote_rewrite(skb, f, &inner, 1, pod_ip, pod_port);
}
#endif /* !PORIN_CTX_XDP */

#endif /* PORIN_SNAT_H */
