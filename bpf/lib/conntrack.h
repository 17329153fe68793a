/* Connection tracking for all pod traffic.
 *
 * One entry per connection, keyed by the tuple as the *initiator* sent it
 * (saddr/sport = initiator, daddr/dport = responder); a reply is found by
 * looking up its swapped tuple. "tx" counts the initiator's packets, "rx"
 * the responder's.
 *
 * This header owns the map: the lookup (a status plus the entry), the TCP
 * state machine, and ct_create(), the only place an entry is made. The
 * order in which programs use it is lib/pipeline.h's.
 *
 * A service flow has two entries:
 *   the flow entry   client -> frontend, as the client sent it: the chosen
 *                    backend (backend_id), the frontend (rev_nat), the state
 *                    and the counters of both directions. An established
 *                    packet from the client finds everything it needs here,
 *                    in the one lookup every packet makes.
 *   the reply entry  client -> backend, as the backend sees the connection:
 *                    how to translate its replies back (rev_nat, hairpin).
 *                    Replies keep it in step with the flow entry; packets
 *                    from the client refresh it every CT_PEER_REFRESH seconds.
 *
 * Protected flows. ct4_global is an LRU: full, a new entry evicts the
 * least recently used one, which a flood of connection attempts would make
 * every idle connection's. So a confirmed flow (TCP once its handshake
 * completed or both directions were seen mid-stream, anything else once
 * answered) also gets a copy in ct4_confirmed, a hash nothing evicts (Linux
 * conntrack's "assured" flows): when its entry is gone from ct4_global, the
 * next packet's lookup puts the copy back and the flow goes on as before
 * (backend, translation, policy revisions). The copy is made at the first
 * lookup that finds the entry confirmed, follows it into closing (so a
 * closed flow's copy goes soon), and is removed with the entry by the
 * agent's GC. While ct4_confirmed is full, new flows are refused
 * (DROP_CT_MAP_FULL): the flows it holds are never the ones given up.
 * ct4_stats counts ct4_confirmed's entries (set to what the GC finds after
 * each pass), the copies made, the flows confirmed while it was full and
 * the entries put back.
 *
 * Lifetimes (seconds of CLOCK_MONOTONIC, lib/clock.h) follow Cilium's defaults and are
 * build flags: TCP SYN 60, established 21600, closing 10, non-TCP 60.
 */
#ifndef PORIN_CONNTRACK_H
#define PORIN_CONNTRACK_H

#include "common.h"
#include "flow.h"
#include "verdict.h"
#include "clock.h"

#ifndef CT_MAP_SIZE
#error "CT_MAP_SIZE must be defined (daemon/datapath.py:build_flags passes it)"
#endif
#ifndef CT_CONFIRMED_MAP_SIZE
#error "CT_CONFIRMED_MAP_SIZE must be defined (daemon/datapath.py:build_flags passes it)"
#endif
#ifndef CT_LIFETIME_TCP_SYN
#error "CT_LIFETIME_TCP_SYN must be defined (daemon/datapath.py:build_flags passes it)"
#endif
#ifndef CT_LIFETIME_TCP
#error "CT_LIFETIME_TCP must be defined (daemon/datapath.py:build_flags passes it)"
#endif
#ifndef CT_LIFETIME_TCP_CLOSE
#error "CT_LIFETIME_TCP_CLOSE must be defined (daemon/datapath.py:build_flags passes it)"
#endif
#ifndef CT_LIFETIME_NONTCP
#error "CT_LIFETIME_NONTCP must be defined (daemon/datapath.py:build_flags passes it)"
#endif

/* a flow entry renews its reply entry's lifetime this often (seconds) */
#define CT_PEER_REFRESH 5

/* entry->state */
#define CT_STATE_NEW 0          /* non-TCP, or TCP first seen without SYN */
#define CT_STATE_SYN_SENT 1
#define CT_STATE_SYN_RECV 2
#define CT_STATE_ESTABLISHED 3
#define CT_STATE_FIN_WAIT 4     /* FIN seen in one direction */
#define CT_STATE_CLOSING 5      /* FIN both ways */
#define CT_STATE_CLOSED 6       /* RST */
#define CT_STATE_REPLIED 7      /* non-TCP that has seen a reply */

/* entry->dir: where the initiator is */
#define CT_DIR_OUT 1            /* a local pod initiated (from_container) */
#define CT_DIR_IN 2             /* initiated towards a local pod (to_container) */

/* entry->flags */
#define CT_F_HAIRPIN 1          /* pod reached itself through a service */
#define CT_F_TX_FIN 2
#define CT_F_RX_FIN 4
#define CT_F_RELATED 8          /* an ICMP error about this flow was seen */
#define CT_F_MULTI_CPU 16       /* bulk packets of the flow came from more than one CPU */
#define CT_F_DSR 32             /* came in DSR (lib/dsr.h): replies sourced from its frontend */
#define CT_F_PROTECTED 64       /* confirmed: a copy is in ct4_confirmed */
#define CT_F_UNPROTECTED 128    /* confirmed while ct4_confirmed was full: no copy */

/* ct4_stats' one element */
struct ct_stats {
	__u64 entries;          /* of ct4_confirmed (the agent's GC sets it after each pass) */
	__u64 protected;        /* copies made */
	__u64 protect_full;     /* flows confirmed while ct4_confirmed was full: no copy */
	__u64 restored;         /* entries put back into ct4_global from their copy */
};

struct ct4_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 flags;             /* reserved, 0 */
	__u16 pad;
};

struct ct4_entry {
	__u64 tx_packets;
	__u64 tx_bytes;
	__u64 rx_packets;
	__u64 rx_bytes;
	__u32 lifetime;         /* expiry, seconds of CLOCK_MONOTONIC */
	__u32 created;          /* seconds of CLOCK_MONOTONIC */
	__u32 backend_id;       /* a service flow's flow entry: the chosen backend */
	__u16 rev_nat;          /* replies are translated back to this frontend */
	__u8 tx_flags;          /* TCP flags seen from the initiator */
	__u8 rx_flags;          /* TCP flags seen from the responder */
	__u8 state;
	__u8 dir;
	__u8 flags;
	__u8 bulk_cpu;          /* 1 + the CPU of the flow's last GSO packet, 0: none yet */
	__u32 peer_seen;        /* flow entry: when its reply entry was last renewed */
	__u32 egress_rev;       /* the sender's policy revision its egress allow was decided at */
	__u32 ingress_rev;      /* the receiver's, for its ingress allow (lib/policy.h) */
};

/* What a new entry records besides the packet (ct_create). */
struct ct_new {
	__u32 backend_id;       /* a flow entry: the backend chosen */
	__u16 rev_nat;          /* replies translated back to this frontend */
	__u8 dir;               /* CT_DIR_* */
	__u8 flags;             /* CT_F_HAIRPIN */
	__u32 egress_rev;       /* the policy revisions its allow was decided at */
	__u32 ingress_rev;
};

PORIN_MAP("lru_hash", struct ct4_key, struct ct4_entry, ct4_global, CT_MAP_SIZE);
PORIN_MAP("hash", struct ct4_key, struct ct4_entry, ct4_confirmed, CT_CONFIRMED_MAP_SIZE);
PORIN_MAP("array", __u32, struct ct_stats, ct4_stats, 1);

static __always_inline struct ct_stats *ct_stats(void)
{
	__u32 zero = 0;

	return ct4_stats.lookup(&zero);
}

/* No room for one more confirmed flow's copy. */
static __always_inline int ct_confirmed_full(void)
{
	struct ct_stats *st = ct_stats();

	return st && st->entries >= CT_CONFIRMED_MAP_SIZE;
}

/* The per-family key of a flow (IPv6 gets its own map and key). */
static __always_inline void ct4_key_from_flow(struct ct4_key *key, const struct flow *f)
{
	key->saddr = f->saddr.v4;
	key->daddr = f->daddr.v4;
	key->sport = f->sport;
	key->dport = f->dport;
	key->proto = f->proto;
	key->flags = 0;
	key->pad = 0;
}

static __always_inline void ct4_key_swap(struct ct4_key *key)
{
	__be32 a = key->saddr;
	__be16 p = key->sport;

	key->saddr = key->daddr;
	key->daddr = a;
	key->sport = key->dport;
	key->dport = p;
}

/* The entry of `f` as its initiator sent it, or NULL. */
static __always_inline struct ct4_entry *ct_entry_of(const struct flow *f)
{
	struct ct4_key key;

	ct4_key_from_flow(&key, f);
	return ct4_global.lookup(&key);
}

static __always_inline __u32 ct_lifetime(const struct ct4_entry *e, __u8 proto)
{
	if (proto != IPPROTO_TCP)
		return CT_LIFETIME_NONTCP;
	switch (e->state) {
	case CT_STATE_ESTABLISHED:
	case CT_STATE_FIN_WAIT:
		return CT_LIFETIME_TCP;
	case CT_STATE_CLOSING:
	case CT_STATE_CLOSED:
		return CT_LIFETIME_TCP_CLOSE;
	default:
		return CT_LIFETIME_TCP_SYN;
	}
}

/* Advance the TCP state machine with one packet's flags. */
static __always_inline void ct_tcp_advance(struct ct4_entry *e, __u8 flags, int reply)
{
	if (flags & TCP_FLAG_RST) {
		e->state = CT_STATE_CLOSED;
		return;
	}
	if (flags & TCP_FLAG_FIN) {
		e->flags |= reply ? CT_F_RX_FIN : CT_F_TX_FIN;
		if ((e->flags & (CT_F_TX_FIN | CT_F_RX_FIN)) == (CT_F_TX_FIN | CT_F_RX_FIN))
			e->state = CT_STATE_CLOSING;
		else if (e->state != CT_STATE_CLOSING && e->state != CT_STATE_CLOSED)
			e->state = CT_STATE_FIN_WAIT;
		return;
	}
	switch (e->state) {
	case CT_STATE_SYN_SENT:
		if (reply && (flags & TCP_FLAG_SYN) && (flags & TCP_FLAG_ACK))
			e->state = CT_STATE_SYN_RECV;
		break;
	case CT_STATE_SYN_RECV:
		if (!reply && (flags & TCP_FLAG_ACK) && !(flags & TCP_FLAG_SYN))
			e->state = CT_STATE_ESTABLISHED;
		break;
	case CT_STATE_NEW:
		/* picked up mid-stream: established once both sides were seen */
		if (e->rx_packets && e->tx_packets)
			e->state = CT_STATE_ESTABLISHED;
		break;
	case CT_STATE_CLOSED:
	case CT_STATE_CLOSING:
		/* a new SYN reuses the tuple */
		if ((flags & TCP_FLAG_SYN) && !(flags & TCP_FLAG_ACK) && !reply) {
			e->state = CT_STATE_SYN_SENT;
			e->flags &= ~(CT_F_TX_FIN | CT_F_RX_FIN);
		}
		break;
	default:
		break;
	}
}

/* Count a packet on its entry, advance the TCP state, renew the lifetime
 * from `now` (seconds, lib/clock.h). */
static __always_inline void ct_account_at(struct ct4_entry *e, const struct flow *f, __u32 len,
					  int reply, __u32 now)
{
	if (reply) {
		e->rx_packets += 1;
		e->rx_bytes += len;
		e->rx_flags |= f->tcp_flags;
		if (f->proto != IPPROTO_TCP)
			e->state = CT_STATE_REPLIED;
	} else {
		e->tx_packets += 1;
		e->tx_bytes += len;
		e->tx_flags |= f->tcp_flags;
	}
	if (f->proto == IPPROTO_TCP)
		ct_tcp_advance(e, f->tcp_flags, reply);
	e->lifetime = now + ct_lifetime(e, f->proto);
}

static __always_inline void ct_account(struct ct4_entry *e, const struct flow *f, __u32 len,
				       int reply)
{
	ct_account_at(e, f, len, reply, now_seconds());
}

/* Note which CPU a bulk (GSO) packet of the flow came from. TCP transmits
 * a flow's data from more than one CPU when its sender is not pinned (the
 * application, and ACK processing in softirq elsewhere); the kernel queues
 * each CPU's packets in that CPU's backlog, so they can reach the receiver
 * out of order. Delivered straight into the pod (bpf_redirect_peer), the
 * path is so short that TCP's reordering window (a quarter of the minimum
 * RTT) is smaller than that reordering, and the sender retransmits
 * segments that were never lost. Such a flow is marked once, and is from
 * then on delivered through the veth like routed traffic (lib/lxc.h). */
static __always_inline void ct_note_bulk_cpu(struct ct4_entry *e, __u32 gso_segs)
{
	__u8 cpu;

	if (gso_segs <= 1 || (e->flags & CT_F_MULTI_CPU))
		return;
	cpu = (__u8)(bpf_get_smp_processor_id() + 1);
	if (e->bulk_cpu && e->bulk_cpu != cpu)
		e->flags |= CT_F_MULTI_CPU;
	e->bulk_cpu = cpu;
}

/* Whether `e`, looked up for packet `f` (`reply`: from the responder), is
 * of a confirmed flow: TCP whose handshake completes (the initiator's ACK
 * after the answer) or completed, anything else once answered. A SYN the
 * responder answered is not enough: half-open connections must not take
 * the room of working ones. */
static __always_inline int ct_is_confirmed(const struct ct4_entry *e, const struct flow *f,
					   int reply)
{
	if (f->proto != IPPROTO_TCP)
		return e->state == CT_STATE_REPLIED;
	if (e->state == CT_STATE_ESTABLISHED)
		return 1;
	return e->state == CT_STATE_SYN_RECV && !reply &&
	       (f->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK | TCP_FLAG_RST)) == TCP_FLAG_ACK;
}

/* A confirmed entry's copy into ct4_confirmed, once; a flow confirmed
 * while that is full is marked unprotected instead (and counted once). */
static __always_inline void ct_protect(struct ct4_key *key, struct ct4_entry *e,
				       const struct flow *f, int reply)
{
	struct ct4_entry *copy;
	struct ct_stats *st;
	int ret;

	if (e->flags & (CT_F_PROTECTED | CT_F_UNPROTECTED) || !ct_is_confirmed(e, f, reply))
		return;
	e->flags |= CT_F_PROTECTED;
	ret = ct4_confirmed.insert(key, e);
	st = ct_stats();
	if (ret == -EEXIST || !st)
		return; /* another CPU's copy */
	if (ret) {
		e->flags ^= CT_F_PROTECTED | CT_F_UNPROTECTED;
		__sync_fetch_and_add(&st->protect_full, 1);
		return;
	}
	__sync_fetch_and_add(&st->entries, 1);
	__sync_fetch_and_add(&st->protected, 1);
	/* the completing ACK: the copy holds what its accounting makes of the
	 * entry's state (the entry itself moves there in the pipeline, which
	 * notices the move and renews a service flow's reply entry) */
	if (f->proto == IPPROTO_TCP) {
		copy = ct4_confirmed.lookup(key);
		if (copy)
			copy->state = CT_STATE_ESTABLISHED;
	}
}

/* `key`'s entry put back into ct4_global from its copy (the LRU evicted
 * it): 0, or -1 when it has none. */
static __always_inline int ct_restore(struct ct4_key *key)
{
	struct ct4_entry *copy = ct4_confirmed.lookup(key);
	struct ct_stats *st;

	if (!copy)
		return -1;
	copy->lifetime = now_seconds() + ct_lifetime(copy, key->proto);
	if (ct4_global.update(key, copy) < 0)
		return -1;
	st = ct_stats();
	if (st)
		__sync_fetch_and_add(&st->restored, 1);
	return 0;
}

/* Look a packet up: CT_ESTABLISHED (its own tuple: from the initiator) or
 * CT_REPLY (the swapped tuple) with *entry set, or CT_NEW. */
static __always_inline int ct_lookup(const struct flow *f, struct ct4_entry **entry)
{
	struct ct4_key key;

	ct4_key_from_flow(&key, f);
	*entry = ct4_global.lookup(&key);
	if (*entry)
		return CT_ESTABLISHED;
	ct4_key_swap(&key);
	*entry = ct4_global.lookup(&key);
	if (*entry)
		return CT_REPLY;
	return CT_NEW;
}

/* Whether the pipeline's lookup makes a confirmed flow's copy. bpf_host.c
 * turns it off: from_netdev has no verifier budget left for it (its five
 * pipelines are inlined), and every flow into or out of a local pod is
 * protected by bpf_lxc.c's programs anyway; the agent's GC protects what
 * only passes the uplinks (NodePort flows sent on to another node). */
#ifndef CT_PROTECT_ON_LOOKUP
#define CT_PROTECT_ON_LOOKUP 1
#endif

/* ct_lookup for the packet's own path through the pipeline (step 3): an
 * entry the LRU evicted is put back from its protected copy first, and a
 * confirmed one gets its copy. (Lookups made on the side, for an ICMP
 * error's quote or the tuple after translation, do neither.) */
static __always_inline int ct_lookup_flow(const struct flow *f, struct ct4_entry **entry)
{
	struct ct4_key key;
	int status = CT_ESTABLISHED;

	ct4_key_from_flow(&key, f);
	*entry = ct4_global.lookup(&key);
	if (!*entry) {
		ct4_key_swap(&key);
		status = CT_REPLY;
		*entry = ct4_global.lookup(&key);
		if (!*entry) {
			if (ct_restore(&key)) { /* the reply's tuple, then the own */
				ct4_key_swap(&key);
				status = CT_ESTABLISHED;
				if (ct_restore(&key))
					return CT_NEW;
			}
			*entry = ct4_global.lookup(&key);
			if (!*entry)
				return CT_NEW;
		}
	}
#if CT_PROTECT_ON_LOOKUP
	ct_protect(&key, *entry, f, status == CT_REPLY);
#endif
	return status;
}

static __always_inline __u8 ct_initial_state(const struct flow *f)
{
	return flow_is_syn(f) ? CT_STATE_SYN_SENT : CT_STATE_NEW;
}

/* Create the entry of a new flow, keyed by `f` as its initiator sent it.
 * `len` > 0 counts the packet on it. An entry made to follow another
 * (`follows`: a reply entry made again for its flow entry) takes that
 * one's state and outlives it. The only place an entry is made.
 * Returns 0, DROP(DROP_CT_MAP_FULL) for a new flow while ct4_confirmed is
 * full, or DROP(DROP_CT_CREATE_FAILED). */
static __always_inline int ct_create(const struct flow *f, __u32 len, const struct ct_new *n,
				     const struct ct4_entry *follows)
{
	struct ct4_entry e = {};
	struct ct4_key key;

	if (!follows && ct_confirmed_full())
		return DROP(DROP_CT_MAP_FULL);
	ct4_key_from_flow(&key, f);
	e.created = now_seconds();
	if (n->backend_id)
		e.peer_seen = e.created;
	e.dir = n->dir;
	e.rev_nat = n->rev_nat;
	e.backend_id = n->backend_id;
	e.flags = n->flags;
	e.egress_rev = n->egress_rev;
	e.ingress_rev = n->ingress_rev;
	if (follows) {
		e.state = follows->state;
		e.lifetime = follows->lifetime + CT_PEER_REFRESH;
	} else {
		e.state = ct_initial_state(f);
		if (len)
			ct_account_at(&e, f, len, 0, e.created);
		else
			e.lifetime = e.created + ct_lifetime(&e, f->proto);
	}
	if (ct4_global.update(&key, &e) < 0)
		return DROP(DROP_CT_CREATE_FAILED);
	return 0;
}

/* A service flow's flow entry `flow` (client -> frontend) after one of the
 * client's packets, `to_backend` that packet after DNAT: its reply entry
 * takes the flow's state and lifetime, at once when the state moved (the
 * handshake's last ACK makes a long-lived flow of it), else every
 * CT_PEER_REFRESH seconds; it is made again if a full table evicted it
 * (without it replies would leave untranslated). */
static __always_inline void ct_refresh_reply_entry(struct ct4_entry *flow,
						   const struct flow *to_backend, __u8 old_state,
						   __u8 hairpin, __u32 now)
{
	struct ct4_entry *reply;
	struct ct_new n;

	if (flow->state == old_state && now - flow->peer_seen < CT_PEER_REFRESH)
		return;
	reply = ct_entry_of(to_backend);
	if (reply) {
		reply->state = flow->state;
		reply->lifetime = flow->lifetime + CT_PEER_REFRESH;
		/* the same tuple last used through another frontend */
		reply->rev_nat = flow->rev_nat;
	} else {
		n.backend_id = 0;
		n.rev_nat = flow->rev_nat;
		n.dir = flow->dir;
		n.flags = hairpin;
		n.egress_rev = flow->egress_rev;
		n.ingress_rev = flow->ingress_rev;
		ct_create(to_backend, 0, &n, flow);
	}
	flow->peer_seen = now;
}

/* A reply of a service flow, translated back (`to_client` reads frontend ->
 * client): its flow entry counts it and advances the state, and the reply
 * entry `reply` takes that state and outlives the flow entry, so it is
 * there as long as the flow. */
static __always_inline void ct_follow_flow_entry(struct ct4_entry *reply,
						 const struct flow *to_client, __u32 len)
{
	struct ct4_key key;
	struct ct4_entry *flow;

	ct4_key_from_flow(&key, to_client);
	ct4_key_swap(&key);
	flow = ct4_global.lookup(&key);
	if (flow) {
		ct_account(flow, to_client, len, 1);
		reply->state = flow->state;
		reply->lifetime = flow->lifetime + CT_PEER_REFRESH;
	}
}

#endif /* PORIN_CONNTRACK_H */
