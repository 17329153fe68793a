/* The conntrack-driven part of every program's path: conntrack, service
 * translation, (policy next) and entry creation, in one visible order.
 *
 * conntrack.h owns the table and lb.h the services; neither calls the
 * other. This header drives both, for one packet:
 *
 *   1. an ICMP error -> matched to the flow it quotes (CT_RELATED); about a
 *      service flow's packet to its backend: made about the frontend
 *   2. fragments (lib/frag.h), on the way in (CT_DIR_IN: NodePort, DSR,
 *      the overlay, to pods): a first one's ports remembered; a non-first
 *      one takes them and goes on as its first did (tracked, balanced to
 *      the same backend, translated: its address only). One whose first was
 *      not seen, or any from a pod: passes untracked, or, to a service
 *      frontend, goes to the stack (REASON_FRAG_UNKNOWN)
 *   3. one conntrack lookup on the tuple as it arrived
 *   4. established (from the initiator): a service flow's packet is DNATed
 *      to the backend its flow entry names, a plain flow's accounted -> done
 *      reply: accounted, a service flow's translated back -> done
 *   5. otherwise (new, the flow's backend gone, a SYN reusing the tuple),
 *      when services are translated: a service frontend? -> the flow
 *      entry's backend while usable, else one chosen (none: ICMP port
 *      unreachable back to the sender, DROP_NO_SERVICE_BACKEND); DNAT
 *   6. network policy (lib/policy.h) of a new flow, as it leaves (after
 *      translation): the sender's egress when a local pod sent it; refused:
 *      dropped before anything is created (DROP_POLICY, DROP_POLICY_DENY).
 *      The receiver's ingress is decided where every path into a pod ends,
 *      lib/lxc.h:local_delivery
 *   7. conntrack: a new flow's entries are created (a service flow's flow
 *      entry, then its reply entry) with the egress policy revision its
 *      allow was decided at, an existing one is accounted
 *
 * Policy on the other packets: replies, related ICMP errors and non-first
 * fragments pass; an established packet's cached allow holds while the
 * endpoint's policy revision is the one in its entry, else it is decided
 * again (egress here, after translation; ingress in lib/lxc.h:local_delivery,
 * which the entry is passed to in the verdict).
 *
 * Returns CTX_GO_ON, a final action (the ICMP reply), or DROP(reason).
 */
#ifndef PORIN_PIPELINE_H
#define PORIN_PIPELINE_H

#include "common.h"
#include "reasons.h"
#include "flow.h"
#include "icmp.h"
#include "conntrack.h"
#include "lb.h"
#include "frag.h"
#include "policy.h"
#include "verdict.h"

#define VERDICT_P_DONE (VERDICT_P_EGRESS_DONE | VERDICT_P_INGRESS_DONE)

/* Step 6: a new flow's egress verdict when a local pod sent it, `f` as it
 * leaves; the revision it was decided at goes to `n` for the entries step 7
 * creates. (Ingress is the receiver's: lib/lxc.h:local_delivery.) */
static __always_inline int policy_new_flow(struct __sk_buff *ctx, const struct flow *f,
					   const struct endpoint_info *src, struct ct_new *n,
					   struct verdict *v)
{
	int ret;

	v->policy |= VERDICT_P_EGRESS_DONE;
	if (!src)
		return CTX_GO_ON;
	ret = policy_egress(src, f, ctx->len, v);
	if (IS_ERR(ret))
		return ret;
	n->egress_rev = src->policy_rev;
	return CTX_GO_ON;
}

/* A reply of a tracked flow (`e` the entry it matched swapped): counted,
 * and a service flow's translated back to its frontend. */
static __always_inline int ct_reply(struct __sk_buff *ctx, struct flow *f, struct ct4_entry *e,
				    __u32 len, struct verdict *v)
{
	struct lb4_reverse_nat *rn;
	int ret;

	ct_account(e, f, len, 1);
	/* a SYN-ACK answers a connection (also one reusing an old tuple) */
	if (e->rx_packets == 1 ||
	    (f->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == (TCP_FLAG_SYN | TCP_FLAG_ACK))
		v->flags |= VERDICT_F_FIRST_REPLY;
	if (!e->rev_nat)
		return CTX_GO_ON;
	v->rev_nat = e->rev_nat;
	rn = lb4_frontend_of(e->rev_nat);
	if (!rn)
		return CTX_GO_ON;
	ret = lb4_rev_nat(ctx, f, rn, e->flags & CT_F_HAIRPIN);
	if (ret)
		return ret;
	ct_follow_flow_entry(e, f, len);
	return CTX_GO_ON;
}

/* Step 1: an ICMP error, matched to the flow it quotes; one that quotes
 * nothing tracked is left to policy like any ICMP packet (*unrelated). */
static __always_inline int ct_related(struct __sk_buff *ctx, struct flow *f, struct verdict *v,
				      int *unrelated)
{
	struct lb4_reverse_nat *rn;
	struct ct4_entry *e;
	struct flow inner;
	int status;

	if (icmp_inner_flow(ctx, f, &inner)) {
		*unrelated = 1;
		return CTX_GO_ON;
	}
	status = ct_lookup(&inner, &e);
	if (status == CT_NEW) {
		*unrelated = 1;
		return CTX_GO_ON;
	}
	v->ct_status = CT_RELATED;
	v->policy |= VERDICT_P_DONE;
	e->flags |= CT_F_RELATED;
	/* about a service flow's packet to its backend: its reply entry */
	if (status != CT_ESTABLISHED || !e->rev_nat || e->backend_id)
		return CTX_GO_ON;
	rn = lb4_frontend_of(e->rev_nat);
	if (!rn)
		return CTX_GO_ON;
	return lb4_icmp_error_rev_nat(ctx, f, &inner, rn, e->flags & CT_F_HAIRPIN) ?: CTX_GO_ON;
}

/* Steps 1-7. `dir` says where a new flow's initiator is (CT_DIR_*); `lb`
 * whether service frontends are translated here; `bounce_flags` how
 * bpf_redirect sends a packet back to its sender; `src` the local pod that
 * sent it (its egress policy applies), NULL when none did. */
static __always_inline int ct_lb_process(struct __sk_buff *ctx, struct flow *f, __u8 dir, int lb,
					 __u64 bounce_flags, const struct endpoint_info *src,
					 struct verdict *v)
{
	__u32 len = ctx->len, now;
	struct ct4_entry *e = NULL, *flow_entry = NULL;
	struct lb4_service *svc = NULL;
	struct ct_new fresh = { .dir = dir };
	struct lb4_backend *b = NULL;
	struct flow orig;
	__u8 state;
	int status, ret, hairpin, untracked = 0;

	if (flow_is_icmp_error(f)) {
		ret = ct_related(ctx, f, v, &untracked);
		if (!untracked)
			return ret;
		goto decide; /* step 6 for it, nothing created */
	}
	/* dir is a constant of each caller: from_container (out) does not
	 * follow fragments, which keeps its program within the verifier's
	 * budget; its masqueraded datagrams are followed in to_netdev */
	ret = dir == CT_DIR_IN ? frag4_track(ctx, f) : (f->is_fragment ? CTX_GO_ON : 0);
	if (ret == CTX_GO_ON) {
		/* a fragment whose first was not seen: a plain flow's passes
		 * (nothing to translate), one to a service frontend goes to the
		 * stack, which has no use for it either */
		v->policy |= VERDICT_P_DONE;
		if (lb && lb4_lookup_service(f)) {
			v->reason = REASON_FRAG_UNKNOWN;
			return TC_ACT_OK;
		}
		return CTX_GO_ON;
	}
	if (f->is_fragment)
		v->policy |= VERDICT_P_DONE; /* the first fragment was judged */

	status = ct_lookup_flow(f, &e);
	v->ct_status = status;
	if (status != CT_NEW) {
		v->ct = e;
		if (status == CT_ESTABLISHED && e->state >= CT_STATE_FIN_WAIT &&
		    e->state <= CT_STATE_CLOSED && flow_is_syn(f))
			v->flags |= VERDICT_F_REOPENED;
		ct_note_bulk_cpu(e, ctx->gso_segs);
		if (e->flags & CT_F_MULTI_CPU)
			v->flags |= VERDICT_F_VIA_VETH;
	}
	if (status == CT_REPLY) {
		v->policy |= VERDICT_P_DONE;
		return ct_reply(ctx, f, e, len, v);
	}
	if (status == CT_ESTABLISHED && !lb) {
		/* untranslated here: whatever service the tuple served, it is a
		 * plain flow now */
		e->rev_nat = 0;
		e->backend_id = 0;
		e->flags &= ~CT_F_HAIRPIN;
		ct_account(e, f, len, 0);
		goto established;
	}
	/* a SYN reusing the tuple may be a new connection through another
	 * frontend: the slow path re-points the reply entry */
	if (status == CT_ESTABLISHED && !flow_is_syn(f)) {
		if (e->backend_id) {
			b = lb4_backend_usable(e->backend_id, 0);
			if (b) {
				now = now_seconds();
				state = e->state;
				ct_account_at(e, f, len, 0, now);
				ret = lb4_to_backend(ctx, f, b, &hairpin);
				if (ret)
					return ret;
				ct_refresh_reply_entry(e, f, state, hairpin ? CT_F_HAIRPIN : 0, now);
				goto established;
			}
		} else if (!e->rev_nat) {
			ct_account(e, f, len, 0);
			goto established;
		}
	}

	/* step 5 */
	if (lb)
		svc = lb4_lookup_service(f);
	if (svc) {
		if (status == CT_ESTABLISHED) {
			flow_entry = e;
			b = lb4_backend_usable(e->backend_id, 0);
		}
		if (b) {
			ct_account(flow_entry, f, len, 0);
		} else {
			/* NodePort (from the network or the node): the flow
			 * table's, as XDP may have balanced the flow already */
			b = dir == CT_DIR_IN ? lb4_flow_backend(f, svc) : lb4_select_backend(f, svc);
			if (!b) {
				ret = icmp4_reply_error(ctx, f->daddr.v4, ICMP_DEST_UNREACH,
							ICMP_PORT_UNREACH, 0, DROP_NO_SERVICE_BACKEND);
				if (IS_ERR(ret))
					return ret;
				v->reason = DROP_NO_SERVICE_BACKEND;
				return bpf_redirect(ctx->ifindex, bounce_flags);
			}
			if (flow_entry) {
				/* its backend was removed (or the entry was no service
				 * flow's): the flow is balanced afresh */
				flow_entry->backend_id = b->id;
				flow_entry->rev_nat = svc->rev_nat;
				flow_entry->peer_seen = now_seconds();
				ct_account(flow_entry, f, len, 0);
			}
		}
		fresh.rev_nat = svc->rev_nat;
		v->rev_nat = svc->rev_nat;
		if (!flow_entry) {
			fresh.backend_id = b->id;
			orig = *f;
		}
		ret = lb4_to_backend(ctx, f, b, &hairpin);
		if (ret)
			return ret;
		fresh.flags = hairpin ? CT_F_HAIRPIN : 0;
		/* the tuple the backend sees: the flow's reply entry */
		status = ct_lookup(f, &e);
	}

decide:
	/* step 6 */
	ret = policy_new_flow(ctx, f, src, &fresh, v);
	if (ret != CTX_GO_ON || untracked)
		return ret;
	if (flow_entry) {
		flow_entry->egress_rev = fresh.egress_rev;
		flow_entry->ingress_rev = fresh.ingress_rev;
	}

	/* step 7: a new service flow's flow entry, whatever became of the tuple
	 * the backend sees (a reply entry may outlive its flow entry) */
	if (fresh.backend_id) {
		struct ct_new fn = { .backend_id = fresh.backend_id,
				     .rev_nat = fresh.rev_nat,
				     .dir = dir,
				     .egress_rev = fresh.egress_rev,
				     .ingress_rev = fresh.ingress_rev };

		ret = ct_create(&orig, len, &fn, NULL);
		if (ret)
			return ret;
		fresh.backend_id = 0;
	}
	switch (status) {
	case CT_NEW:
		return ct_create(f, len, &fresh, NULL) ?: CTX_GO_ON;
	case CT_ESTABLISHED:
		/* The initiator's packets decide which frontend replies are
		 * translated to: a reused source port may reach the same backend
		 * through another service, or directly. */
		e->rev_nat = fresh.rev_nat;
		e->flags = (e->flags & ~CT_F_HAIRPIN) | fresh.flags;
		if (!fresh.rev_nat)
			e->backend_id = 0;
		e->egress_rev = fresh.egress_rev;
		e->ingress_rev = fresh.ingress_rev;
		ct_account(e, f, len, 0);
		return CTX_GO_ON;
	default:
		return ct_reply(ctx, f, e, len, v);
	}

established:
	/* an established packet, `f` as it leaves: the sender's cached egress
	 * allow, decided again when its policy revision moved */
	v->policy |= VERDICT_P_EGRESS_DONE;
	if (!src || !e || e->egress_rev == src->policy_rev)
		return CTX_GO_ON;
	ret = policy_egress(src, f, len, v);
	if (IS_ERR(ret))
		return ret;
	e->egress_rev = src->policy_rev;
	return CTX_GO_ON;
}

/* Conntrack alone, for paths that translate no service. */
static __always_inline int ct_process(struct __sk_buff *ctx, struct flow *f, __u8 dir,
				      struct verdict *v)
{
	return ct_lb_process(ctx, f, dir, 0, 0, NULL, v);
}

/* An ICMP error the datapath made itself out of a packet it had translated
 * (fragmentation needed for the tunnel): about the frontend, like any other. */
static __always_inline void ct_own_icmp_error(struct __sk_buff *ctx, struct verdict *v)
{
	struct flow f;

	int unrelated = 0;

	if (!flow_parse4(ctx, &f))
		ct_related(ctx, &f, v, &unrelated);
}

#endif /* PORIN_PIPELINE_H */
