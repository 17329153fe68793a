/* Service load balancing: frontend lookup, backend selection, DNAT and
 * reverse NAT, affinity. It writes no conntrack: lib/pipeline.h records
 * what it chose. The agent programs the maps (daemon/services.py, through
 * maps/lb_*.py):
 *
 *   lb4_services    {vip, dport, proto, slot} -> slot 0: the service (count,
 *                   rev_nat, algorithm, affinity); slot 1..count: backend id
 *   lb4_backends    array, slot id % size -> {ip, port, state, id}: the
 *                   backend whose id the slot holds (an array lookup is
 *                   inlined by the verifier; a slot taken over by a newer id
 *                   makes an old id dangling, never another service's backend)
 *   lb4_reverse_nat rev_nat id -> {vip, port}   (replies are sourced from it)
 *   lb4_maglev      rev_nat id -> Maglev lookup table of backend ids
 *   lb4_affinity    {client ip, rev_nat id} -> {backend id, last used}
 *   lb4_flows       LRU {client, frontend, ports, proto} -> {backend id,
 *                   rev_nat id}: the NodePort balancer's flow table, shared
 *                   by XDP and tc (Katran's, with LRU lists per CPU)
 *
 * A service is published by writing backends, then slots or the Maglev
 * table, then slot 0 last, so a packet never sees a half-written service.
 */
#ifndef PORIN_LB_H
#define PORIN_LB_H

#include "common.h"
#include "reasons.h"
#include "clock.h"
#include "hash.h"
#include "flow.h"
#include "nat.h"
#include "icmp.h"

#ifndef LB_SERVICES_MAP_SIZE
#error "LB_SERVICES_MAP_SIZE must be defined (daemon/datapath.py:build_flags passes it)"
#endif
#ifndef LB_BACKENDS_MAP_SIZE
#error "LB_BACKENDS_MAP_SIZE must be defined (daemon/datapath.py:build_flags passes it)"
#endif
#if LB_BACKENDS_MAP_SIZE & (LB_BACKENDS_MAP_SIZE - 1)
#error "LB_BACKENDS_MAP_SIZE must be a power of two"
#endif
#ifndef LB_MAGLEV_MAP_SIZE
#error "LB_MAGLEV_MAP_SIZE must be defined (daemon/datapath.py:build_flags passes it)"
#endif
#ifndef LB_MAGLEV_TABLE_SIZE
#error "LB_MAGLEV_TABLE_SIZE must be defined (daemon/datapath.py:build_flags passes it)"
#endif
#ifndef LB_AFFINITY_MAP_SIZE
#error "LB_AFFINITY_MAP_SIZE must be defined (daemon/datapath.py:build_flags passes it)"
#endif
#ifndef LB4_FLOWS_MAP_SIZE
#error "LB4_FLOWS_MAP_SIZE must be defined (daemon/datapath.py:build_flags passes it)"
#endif
/* a pod reaching itself through a service is sourced from this address */
#ifndef LB_HAIRPIN_IPV4
#define LB_HAIRPIN_IPV4 0xa9fe2a01 /* 169.254.42.1 */
#endif

#define SVC_F_MAGLEV 1
#define SVC_F_AFFINITY 2
#define SVC_F_XDP 4      /* a NodePort frontend bpf_xdp.c serves (dsr: every flow; snat: established) */

#define BACKEND_ACTIVE 0
#define BACKEND_TERMINATING 1
#define BACKEND_MAINTENANCE 2

struct lb4_key {
	__be32 address;
	__be16 dport;
	__u16 slot;
	__u8 proto;
	__u8 pad[3];
};

struct lb4_service {
	__u32 backend_id;       /* slots 1..count */
	__u16 count;            /* slot 0: number of backend slots */
	__u16 rev_nat;          /* slot 0 */
	__u8 flags;             /* slot 0: SVC_F_* */
	__u8 pad[3];
	__u32 affinity_timeout; /* slot 0, seconds */
};

struct lb4_backend {
	__be32 address;
	__be16 port;
	__u8 proto;
	__u8 state;
	__u32 id;               /* the backend id the slot holds; 0: empty */
};

struct lb4_reverse_nat {
	__be32 address;
	__be16 port;
	__u16 pad;
};

struct lb4_maglev_table {
	__u32 backend_ids[LB_MAGLEV_TABLE_SIZE];
};

struct lb4_affinity_key {
	__be32 client;
	__u16 rev_nat;
	__u16 pad;
};

struct lb4_affinity_val {
	__u32 backend_id;
	__u32 last_used;
};

PORIN_MAP("hash", struct lb4_key, struct lb4_service, lb4_services, LB_SERVICES_MAP_SIZE);
PORIN_MAP("array", __u32, struct lb4_backend, lb4_backends, LB_BACKENDS_MAP_SIZE);
PORIN_MAP("hash", __u16, struct lb4_reverse_nat, lb4_reverse_nat, LB_SERVICES_MAP_SIZE);
PORIN_MAP_F("hash", __u16, struct lb4_maglev_table, lb4_maglev, LB_MAGLEV_MAP_SIZE,
	    BPF_F_NO_PREALLOC);
PORIN_MAP("lru_hash", struct lb4_affinity_key, struct lb4_affinity_val, lb4_affinity,
	  LB_AFFINITY_MAP_SIZE);

/* Flags of slot 0, through named predicates. */
static __always_inline int lb4_svc_is_maglev(const struct lb4_service *svc)
{
	return svc->flags & SVC_F_MAGLEV;
}

static __always_inline int lb4_svc_has_affinity(const struct lb4_service *svc)
{
	return svc->flags & SVC_F_AFFINITY;
}

/* The service whose frontend `f` is addressed to, or NULL. */
static __always_inline struct lb4_service *lb4_lookup_service(const struct flow *f)
{
	struct lb4_key key = {
		.address = f->daddr.v4,
		.dport = f->dport,
		.proto = f->proto,
	};

	if (f->proto != IPPROTO_TCP && f->proto != IPPROTO_UDP)
		return NULL;
	return lb4_services.lookup(&key);
}

/* The backend with id `id` while it exists; for a new flow only an active one. */
static __always_inline struct lb4_backend *lb4_backend_usable(__u32 id, int for_new_flow)
{
	__u32 slot = id & (LB_BACKENDS_MAP_SIZE - 1);
	struct lb4_backend *b;

	if (!id)
		return NULL;
	b = lb4_backends.lookup(&slot);
	if (!b || b->id != id)
		return NULL;
	if (for_new_flow && b->state != BACKEND_ACTIVE)
		return NULL;
	return b;
}

static __always_inline __u32 lb4_pick_random(const struct flow *f, const struct lb4_service *svc)
{
	struct lb4_key key = {
		.address = f->daddr.v4,
		.dport = f->dport,
		.proto = f->proto,
	};
	struct lb4_service *slot;

	key.slot = (bpf_get_prandom_u32() % svc->count) + 1;
	slot = lb4_services.lookup(&key);
	return slot ? slot->backend_id : 0;
}

/* The hash of `f`'s 5-tuple: its Maglev slot, and the VXLAN source port of
 * what XDP sends into the overlay (lib/xdp_snat.h). */
static __always_inline __u32 lb4_flow_hash(const struct flow *f)
{
	return jhash_3words(f->saddr.v4, f->daddr.v4, ((__u32)f->sport << 16) | f->dport, f->proto);
}

static __always_inline __u32 lb4_pick_maglev(const struct flow *f, const struct lb4_service *svc)
{
	__u16 id = svc->rev_nat;
	struct lb4_maglev_table *t = lb4_maglev.lookup(&id);
	__u32 h, idx;

	if (!t)
		return 0;
	h = lb4_flow_hash(f);
	idx = h % LB_MAGLEV_TABLE_SIZE;
	/* keep the bound check: the verifier cannot see through the modulo */
	asm volatile("" : "+r"(idx));
	if (idx >= LB_MAGLEV_TABLE_SIZE)
		return 0;
	return t->backend_ids[idx];
}

/* Choose a backend for a new flow of `svc`: affinity first, then the
 * algorithm. Returns the active backend, or NULL when the service has none. */
static __always_inline struct lb4_backend *lb4_select_backend(const struct flow *f,
							      const struct lb4_service *svc)
{
	struct lb4_affinity_key akey = { .client = f->saddr.v4, .rev_nat = svc->rev_nat };
	struct lb4_affinity_val *aff;
	struct lb4_backend *b;
	__u32 now, id;

	if (svc->count == 0)
		return NULL;
	now = now_seconds();
	if (lb4_svc_has_affinity(svc)) {
		aff = lb4_affinity.lookup(&akey);
		if (aff && now - aff->last_used <= svc->affinity_timeout) {
			b = lb4_backend_usable(aff->backend_id, 1);
			if (b) {
				trace_note(TRACE_LB, svc->rev_nat, aff->backend_id, TRACE_LB_AFFINITY, 0, 0);
				aff->last_used = now;
				return b;
			}
		}
	}
	id = lb4_svc_is_maglev(svc) ? lb4_pick_maglev(f, svc) : lb4_pick_random(f, svc);
	b = lb4_backend_usable(id, 1);
	trace_note(TRACE_LB, svc->rev_nat, id, TRACE_LB_PICKED, 0, 0);
	if (b && lb4_svc_has_affinity(svc)) {
		struct lb4_affinity_val val = { .backend_id = id, .last_used = now };

		lb4_affinity.update(&akey, &val);
	}
	return b;
}

#define PORIN_F_NO_COMMON_LRU 2 /* BPF_F_NO_COMMON_LRU: an LRU list per CPU */

struct lb4_flow_key {
	__be32 client;
	__be32 frontend;
	__be16 client_port;
	__be16 frontend_port;
	__u8 proto;
	__u8 pad[3];
};

struct lb4_flow {
	__u32 backend_id;
	__u16 rev_nat;  /* the frontend's: a flow of a frontend since re-made is chosen again */
	__u16 pad;
};

PORIN_MAP_F("lru_hash", struct lb4_flow_key, struct lb4_flow, lb4_flows,
	    LB4_FLOWS_MAP_SIZE, PORIN_F_NO_COMMON_LRU);

/* The backend of NodePort flow `f` (XDP, and tc for a new flow): the one
 * the flow table remembers while usable, else chosen and remembered, so a
 * flow keeps its backend whichever of XDP and tc its packets take. */
static __always_inline struct lb4_backend *lb4_flow_backend(const struct flow *f,
							   const struct lb4_service *svc)
{
	struct lb4_flow_key key = {
		.client = f->saddr.v4,
		.frontend = f->daddr.v4,
		.client_port = f->sport,
		.frontend_port = f->dport,
		.proto = f->proto,
	};
	struct lb4_flow *known = lb4_flows.lookup(&key);
	struct lb4_flow fresh = {};
	struct lb4_backend *b;

	if (known && known->rev_nat == svc->rev_nat) {
		b = lb4_backend_usable(known->backend_id, 0);
		if (b) {
			trace_note(TRACE_LB, svc->rev_nat, known->backend_id, TRACE_LB_FLOW, 0, 0);
			return b;
		}
	}
	b = lb4_select_backend(f, svc);
	if (!b)
		return NULL;
	fresh.backend_id = b->id;
	fresh.rev_nat = svc->rev_nat;
	lb4_flows.update(&key, &fresh);
	return b;
}

#ifndef PORIN_CTX_XDP /* rewrites through the skb's helpers (XDP's: lib/xdp_lb.h) */
/* DNAT to backend `b`; a client reaching itself through the service is
 * sourced from the hairpin address, and *hairpin says so.
 * Returns 0 or DROP(DROP_NAT_FAILED). */
static __always_inline int lb4_to_backend(struct __sk_buff *ctx, struct flow *f,
					  const struct lb4_backend *b, int *hairpin)
{
	int ret = nat4_rewrite(ctx, f, 0, b->address, b->port);

	*hairpin = 0;
	if (ret || f->daddr.v4 != f->saddr.v4)
		return ret;
	*hairpin = 1;
	return nat4_rewrite(ctx, f, 1, bpf_htonl(LB_HAIRPIN_IPV4), 0);
}

/* The frontend replies of reverse-NAT id `id` are sourced from, or NULL
 * when the service is gone (its replies are then left as they are). */
static __always_inline struct lb4_reverse_nat *lb4_frontend_of(__u16 id)
{
	return lb4_reverse_nat.lookup(&id);
}

/* A reply of a service flow: source back to the frontend `rn` and, for a
 * hairpin flow, destination back to the pod. Returns 0 or DROP(...). */
static __always_inline int lb4_rev_nat(struct __sk_buff *ctx, struct flow *f,
				       const struct lb4_reverse_nat *rn, int hairpin)
{
	int ret;

	if (hairpin) {
		ret = nat4_rewrite(ctx, f, 0, f->saddr.v4, 0);
		if (ret)
			return ret;
	}
	return nat4_rewrite(ctx, f, 1, rn->address, rn->port);
}

/* An ICMP error about a service flow's packet to its backend (the quoted
 * header reads client -> backend) goes to the client as one about the
 * frontend `rn`, as the kernel's NAT treats related ICMP: the quoted
 * destination address and port become the frontend's and, when the backend
 * itself sent the error, so does the outer source. Hairpin flows and
 * quoted ICMP are left as they are. Returns 0 or DROP(DROP_NAT_FAILED). */
static __always_inline int lb4_icmp_error_rev_nat(struct __sk_buff *ctx, struct flow *f,
						  const struct flow *inner,
						  const struct lb4_reverse_nat *rn, int hairpin)
{
	int ret;

	if (hairpin || inner->proto == IPPROTO_ICMP)
		return 0;
	if (f->saddr.v4 == inner->daddr.v4) {
		ret = nat4_rewrite(ctx, f, 1, rn->address, 0);
		if (ret)
			return ret;
	}
	return icmp_quote_rewrite(ctx, f, inner, 0, rn->address, rn->port);
}
#endif /* !PORIN_CTX_XDP */

#endif /* PORIN_LB_H */
