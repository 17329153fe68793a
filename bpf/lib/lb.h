/* Service load balancing: frontend lookup, backend selection, DNAT and
 * reverse NAT. The agent programs the maps (maps/services.py):
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
 *
 * A service is published by writing backends, then slots or the Maglev
 * table, then slot 0 last, so a packet never sees a half-written service.
 */
#ifndef PORIN_LB_H
#define PORIN_LB_H

#include "common.h"
#include "hash.h"
#include "l4.h"
#include "nat.h"
#include "conntrack.h"
#include "icmp.h"

#ifndef LB_SERVICES_MAP_SIZE
#define LB_SERVICES_MAP_SIZE 131072
#endif
#ifndef LB_BACKENDS_MAP_SIZE
#define LB_BACKENDS_MAP_SIZE 131072
#endif
#if LB_BACKENDS_MAP_SIZE & (LB_BACKENDS_MAP_SIZE - 1)
#error "LB_BACKENDS_MAP_SIZE must be a power of two"
#endif
#ifndef LB_MAGLEV_MAP_SIZE
#define LB_MAGLEV_MAP_SIZE 1024
#endif
#ifndef LB_MAGLEV_TABLE_SIZE
#define LB_MAGLEV_TABLE_SIZE 16381
#endif
#ifndef LB_AFFINITY_MAP_SIZE
#define LB_AFFINITY_MAP_SIZE 65536
#endif
/* a pod reaching itself through a service is sourced from this address */
#ifndef LB_HAIRPIN_IPV4
#define LB_HAIRPIN_IPV4 0xa9fe2a01 /* 169.254.42.1 */
#endif

/* lb4_established / lb4_ct_fast: leave the packet to lb4_dnat + ct_process */
#define CT_SLOW_PATH (-1)

#define SVC_F_MAGLEV 1
#define SVC_F_AFFINITY 2

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
BPF_TABLE_PINNED("hash", __u16, struct lb4_maglev_table, lb4_maglev, LB_MAGLEV_MAP_SIZE,
		 PIN_ROOT "/lb4_maglev", BPF_F_NO_PREALLOC);
PORIN_MAP("lru_hash", struct lb4_affinity_key, struct lb4_affinity_val, lb4_affinity,
	  LB_AFFINITY_MAP_SIZE);

static __always_inline struct lb4_service *lb4_lookup_service(const struct ipv4_flow *f)
{
	struct lb4_key key = {
		.address = f->daddr,
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

static __always_inline __u32 lb4_pick_random(const struct ipv4_flow *f,
					     const struct lb4_service *svc)
{
	struct lb4_key key = {
		.address = f->daddr,
		.dport = f->dport,
		.proto = f->proto,
	};
	struct lb4_service *slot;

	key.slot = (bpf_get_prandom_u32() % svc->count) + 1;
	slot = lb4_services.lookup(&key);
	return slot ? slot->backend_id : 0;
}

static __always_inline __u32 lb4_pick_maglev(const struct ipv4_flow *f,
					     const struct lb4_service *svc)
{
	__u16 id = svc->rev_nat;
	struct lb4_maglev_table *t = lb4_maglev.lookup(&id);
	__u32 h, idx;

	if (!t)
		return 0;
	h = jhash_3words(f->saddr, f->daddr,
			 ((__u32)f->sport << 16) | f->dport, f->proto);
	idx = h % LB_MAGLEV_TABLE_SIZE;
	/* keep the bound check: the verifier cannot see through the modulo */
	asm volatile("" : "+r"(idx));
	if (idx >= LB_MAGLEV_TABLE_SIZE)
		return 0;
	return t->backend_ids[idx];
}

/* Choose a backend for a new flow: affinity first, then the algorithm. */
static __always_inline __u32 lb4_select_backend(const struct ipv4_flow *f,
						const struct lb4_service *svc)
{
	struct lb4_affinity_key akey = { .client = f->saddr, .rev_nat = svc->rev_nat };
	struct lb4_affinity_val *aff;
	__u32 now = now_seconds();
	__u32 id;

	if (svc->flags & SVC_F_AFFINITY) {
		aff = lb4_affinity.lookup(&akey);
		if (aff && now - aff->last_used <= svc->affinity_timeout &&
		    lb4_backend_usable(aff->backend_id, 1)) {
			aff->last_used = now;
			return aff->backend_id;
		}
	}
	id = (svc->flags & SVC_F_MAGLEV) ? lb4_pick_maglev(f, svc) : lb4_pick_random(f, svc);
	if (id && (svc->flags & SVC_F_AFFINITY)) {
		struct lb4_affinity_val val = { .backend_id = id, .last_used = now };

		lb4_affinity.update(&akey, &val);
	}
	return id;
}

/* The backend of a service flow: the one its flow entry remembers while it
 * is still there (even terminating), else a fresh choice recorded in a flow
 * entry (created here, `dir` saying where the client is). Returns NULL when
 * the service has no usable backend. */
static __always_inline struct lb4_backend *lb4_flow_backend(const struct ipv4_flow *f,
							    const struct lb4_service *svc,
							    __u32 len, __u8 dir, int *ct_err)
{
	struct ct4_key key;
	struct ct4_entry *e;
	struct lb4_backend *b;
	__u32 id;

	ct_key_from_flow(&key, f);
	e = ct4_global.lookup(&key);
	if (e) {
		b = lb4_backend_usable(e->backend_id, 0);
		if (b) {
			ct_account(e, f, len, 0);
			return b;
		}
	}
	if (svc->count == 0)
		return NULL;
	id = lb4_select_backend(f, svc);
	b = lb4_backend_usable(id, 1);
	if (!b)
		return NULL;
	if (e) {
		/* its backend was removed (or the entry was no service flow's):
		 * re-balance the flow; conntrack makes the new reply entry */
		e->backend_id = id;
		e->rev_nat = svc->rev_nat;
		e->peer_seen = now_seconds();
		ct_account(e, f, len, 0);
	} else {
		struct ct4_entry ne = {};

		ne.created = now_seconds();
		ne.peer_seen = ne.created;
		ne.backend_id = id;
		ne.rev_nat = svc->rev_nat;
		ne.dir = dir;
		ne.state = ct_initial_state(f);
		ct_account(&ne, f, len, 0);
		if (ct4_global.update(&key, &ne) < 0)
			*ct_err = DROP_CT_CREATE_FAILED;
	}
	return b;
}

/* A reply of a service flow (`e` its reply entry): source back to the
 * frontend (and, for a hairpin flow, destination back to the pod). The flow
 * entry counts the reply and advances its state; the reply entry takes the
 * flow entry's state and outlives it, so it is there as long as the flow. */
static __always_inline int lb4_rev_nat(struct __sk_buff *skb, struct ipv4_flow *f,
				       struct ct4_entry *e, __u32 len)
{
	__u16 id = e->rev_nat;
	struct lb4_reverse_nat *rn = lb4_reverse_nat.lookup(&id);
	struct ct4_key key;
	struct ct4_entry *flow;

	if (!rn)
		return 0; /* service deleted: leave the reply as it is */
	if (e->flags & CT_F_HAIRPIN) {
		if (nat_rewrite(skb, f, 0, f->saddr, 0) < 0)
			return DROP_NAT_FAILED;
		f->daddr = f->saddr;
	}
	if (nat_rewrite(skb, f, 1, rn->address, rn->port) < 0)
		return DROP_NAT_FAILED;
	f->saddr = rn->address;
	f->sport = rn->port;

	key.saddr = f->daddr;
	key.daddr = f->saddr;
	key.sport = f->dport;
	key.dport = f->sport;
	key.proto = f->proto;
	key.flags = 0;
	key.pad = 0;
	flow = ct4_global.lookup(&key);
	if (flow) {
		ct_account(flow, f, len, 1);
		e->state = flow->state;
		e->lifetime = flow->lifetime + CT_PEER_REFRESH;
	}
	return 0;
}

/* DNAT to backend `b`; a client reaching itself through the service is
 * sourced from the hairpin address. Returns 0, CT_F_HAIRPIN, or -1. */
static __always_inline int lb4_to_backend(struct __sk_buff *skb, struct ipv4_flow *f,
					  const struct lb4_backend *b)
{
	if (nat_rewrite(skb, f, 0, b->address, b->port) < 0)
		return -1;
	f->daddr = b->address;
	f->dport = b->port;
	if (f->daddr != f->saddr)
		return 0;
	if (nat_rewrite(skb, f, 1, bpf_htonl(LB_HAIRPIN_IPV4), 0) < 0)
		return -1;
	f->saddr = bpf_htonl(LB_HAIRPIN_IPV4);
	return CT_F_HAIRPIN;
}

/* A packet in the responder's direction: counted, and a service flow's
 * reply translated back to its frontend. */
static __always_inline int lb4_reply(struct __sk_buff *skb, struct ipv4_flow *f,
				     struct ct4_entry *e, __u32 len)
{
	ct_account(e, f, len, 1);
	return e->rev_nat ? lb4_rev_nat(skb, f, e, len) : 0;
}

/* An ICMP error about a service flow's packet to its backend (the quoted
 * header reads client -> backend, `e` is the flow's reply entry) goes to the
 * client as one about the frontend, as the kernel's NAT treats related ICMP:
 * the quoted destination address and port become the frontend's and, when
 * the backend itself sent the error, so does the outer source. The quoted
 * header's checksum follows its address, so the ICMP checksum only changes
 * by the port. Hairpin flows are left as they are. Returns 0 or a drop reason. */
static __always_inline int lb4_icmp_error_rev_nat(struct __sk_buff *skb, struct ipv4_flow *f,
						  const struct ipv4_flow *inner,
						  const struct ct4_entry *e)
{
	__u16 id = e->rev_nat;
	struct lb4_reverse_nat *rn = lb4_reverse_nat.lookup(&id);
	int inner_ip = f->l4_off + sizeof(struct icmphdr);
	int icmp_csum = f->l4_off + offsetof(struct icmphdr, checksum);
	__be32 vip;
	__be16 vport;

	if (!rn || (e->flags & CT_F_HAIRPIN) || inner->proto == IPPROTO_ICMP)
		return 0;
	vip = rn->address;
	vport = rn->port;
	if (f->saddr == inner->daddr) {
		if (nat_rewrite(skb, f, 1, vip, 0) < 0)
			return DROP_NAT_FAILED;
		f->saddr = vip;
	}
	if (bpf_l3_csum_replace(skb, inner_ip + offsetof(struct iphdr, check), inner->daddr, vip,
				sizeof(vip)) < 0 ||
	    bpf_skb_store_bytes(skb, inner_ip + offsetof(struct iphdr, daddr), &vip, sizeof(vip),
				0) < 0)
		return DROP_NAT_FAILED;
	if (vport != inner->dport &&
	    (bpf_l4_csum_replace(skb, icmp_csum, inner->dport, vport, sizeof(vport)) < 0 ||
	     bpf_skb_store_bytes(skb, inner->l4_off + 2, &vport, sizeof(vport), 0) < 0))
		return DROP_NAT_FAILED;
	return 0;
}

/* An established packet of a service flow from its client (`e` its flow
 * entry): DNAT to the recorded backend, hairpin SNAT when the client is the
 * backend, and the reply entry kept in step (made again if the table lost
 * it). Returns 0, a drop reason, or CT_SLOW_PATH when the backend is gone
 * and the flow needs balancing afresh. */
static __always_inline int lb4_established(struct __sk_buff *skb, struct ipv4_flow *f,
					   struct ct4_entry *e, __u32 len)
{
	struct lb4_backend *b = lb4_backend_usable(e->backend_id, 0);
	struct ct4_entry *reply;
	struct ct4_key key;
	__u8 state = e->state;
	__u32 now;
	int hairpin;

	if (!b)
		return CT_SLOW_PATH;
	now = now_seconds();
	ct_account_at(e, f, len, 0, now);
	hairpin = lb4_to_backend(skb, f, b);
	if (hairpin < 0)
		return DROP_NAT_FAILED;
	/* the reply entry follows: at once when the state moved (the handshake's
	 * last ACK makes a long-lived flow of it), else every few seconds */
	if (e->state != state || now - e->peer_seen >= CT_PEER_REFRESH) {
		ct_key_from_flow(&key, f);
		reply = ct4_global.lookup(&key);
		if (reply) {
			reply->state = e->state;
			reply->lifetime = e->lifetime + CT_PEER_REFRESH;
			/* the same tuple last used through another frontend */
			reply->rev_nat = e->rev_nat;
		} else {
			/* evicted from a full table: without it replies would
			 * leave untranslated */
			struct ct4_entry ne = {};

			ne.created = now;
			ne.dir = e->dir;
			ne.rev_nat = e->rev_nat;
			ne.flags = hairpin;
			ne.state = e->state;
			ne.lifetime = e->lifetime + CT_PEER_REFRESH;
			ct4_global.update(&key, &ne);
		}
		e->peer_seen = now;
	}
	return 0;
}

/* Service translation of a packet towards a frontend: DNAT to the flow's
 * backend (and hairpin SNAT). Returns 0 (also when *f is no frontend),
 * or a drop reason; *icmp_sent tells that the packet became an ICMP port
 * unreachable to send back. *rev_nat and *ct_flags describe the flow for
 * conntrack. */
static __always_inline int lb4_dnat(struct __sk_buff *skb, struct ipv4_flow *f, __u8 dir,
				    __u16 *rev_nat, __u8 *ct_flags, int *icmp_sent)
{
	struct lb4_service *svc = lb4_lookup_service(f);
	struct lb4_backend *b;
	__be32 vip = f->daddr;
	int err = 0, ret;

	if (!svc)
		return 0;
	if (f->is_fragment)
		return DROP_FRAG_NOT_SUPPORTED;
	b = lb4_flow_backend(f, svc, skb->len, dir, &err);
	if (!b) {
		if (icmp_reply_unreach(skb, vip, ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, 0) == 0)
			*icmp_sent = 1;
		return DROP_NO_SERVICE_BACKEND;
	}
	if (err)
		return err;
	ret = lb4_to_backend(skb, f, b);
	if (ret < 0)
		return DROP_NAT_FAILED;
	*rev_nat = svc->rev_nat;
	*ct_flags = ret;
	return 0;
}

/* Conntrack for a packet after service translation; replies of service
 * flows are translated back. `dir` says where a new flow's initiator is.
 * Returns 0 or a drop reason. */
static __always_inline int ct_process(struct __sk_buff *skb, struct ipv4_flow *f, __u8 dir,
				      __u16 rev_nat, __u8 ct_flags)
{
	__u32 len = skb->len;
	struct ct4_entry *e;

	if (f->proto == IPPROTO_ICMP && icmp_is_error(f->icmp_type)) {
		struct ipv4_flow inner;
		int found;

		if (icmp_inner_flow(skb, f, &inner))
			return 0;
		found = ct_lookup(&inner, &e);
		if (found == CT_NEW)
			return 0;
		e->flags |= CT_F_RELATED;
		/* about a service flow's packet to its backend: a reply entry */
		if (found == CT_ESTABLISHED && e->rev_nat && !e->backend_id)
			return lb4_icmp_error_rev_nat(skb, f, &inner, e);
		return 0;
	}
	if (f->is_fragment)
		return 0;
	switch (ct_lookup(f, &e)) {
	case CT_NEW:
		return ct_create(f, len, dir, rev_nat, ct_flags);
	case CT_ESTABLISHED:
		/* The initiator's packets decide which frontend replies are
		 * translated to: a reused source port may reach the same backend
		 * through another service, or directly. An untranslated packet
		 * on a flow entry means its service is gone: a plain flow now. */
		e->rev_nat = rev_nat;
		e->flags = (e->flags & ~CT_F_HAIRPIN) | ct_flags;
		if (!rev_nat)
			e->backend_id = 0;
		ct_account(e, f, len, 0);
		return 0;
	case CT_REPLY:
		return lb4_reply(skb, f, e, len);
	}
	return 0;
}

/* An ICMP error the datapath made itself out of a packet it had translated
 * (fragmentation needed for the tunnel): about the frontend, like any other. */
static __always_inline void lb4_own_icmp_error(struct __sk_buff *skb)
{
	struct ipv4_flow f;
	struct iphdr *ip;
	__u8 reason = 0;

	ip = ipv4_header(skb, &reason);
	if (ip && !ipv4_flow_parse(skb, ip, &f))
		ct_process(skb, &f, CT_DIR_OUT, 0, 0);
}

/* Established flows first, in one conntrack lookup on the tuple as it
 * arrived: a service flow's packet from its client finds its flow entry
 * (backend and all), any other flow its own entry, a reply its flow's entry
 * swapped. Returns 0 when done (packet translated as its flow wants, and
 * counted), a drop reason, or CT_SLOW_PATH for everything else: new flows,
 * ICMP errors, fragments, a flow whose backend is gone, and a packet that
 * reuses a service reply entry's tuple directly. */
static __always_inline int lb4_ct_fast(struct __sk_buff *skb, struct ipv4_flow *f)
{
	__u32 len = skb->len;
	struct ct4_entry *e;

	if (f->is_fragment || (f->proto == IPPROTO_ICMP && icmp_is_error(f->icmp_type)))
		return CT_SLOW_PATH;
	switch (ct_lookup(f, &e)) {
	case CT_ESTABLISHED:
		/* a SYN reusing the tuple may be a new connection through
		 * another frontend: conntrack re-points the reply entry */
		if ((f->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN)
			return CT_SLOW_PATH;
		if (e->backend_id)
			return lb4_established(skb, f, e, len);
		if (e->rev_nat)
			return CT_SLOW_PATH;
		ct_account(e, f, len, 0);
		return 0;
	case CT_REPLY:
		return lb4_reply(skb, f, e, len);
	}
	return CT_SLOW_PATH;
}

#endif /* PORIN_LB_H */
