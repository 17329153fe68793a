/* Network policy: the verdict of a new connection, per endpoint and direction.
 *
 * The agent compiles every policy into entries of one LPM trie (maps/policy.py,
 * daemon/policy_compile.py), keyed like Cilium's lib/policy.h:
 *
 *   endpoint, direction, remote identity   always matched (identity 0: any)
 *   protocol                               matched, or not (any protocol, any port)
 *   destination port                       its leading bits: port ranges are prefixes
 *
 * A decision looks up, for the packet's protocol and port (the ICMP type
 * for ICMP), the remote's security identity, any identity, and the CIDR
 * identity of the remote address (`policy_cidr`, the longest of the
 * prefixes policies name). A deny entry among them wins (DROP_POLICY_DENY),
 * else an allow allows; nothing: DROP_POLICY when the endpoint is isolated
 * in that direction (ENDPOINT_F_POLICY_*), allowed otherwise. The rule of
 * the deciding entry goes to the verdict (monitor) and the entry counts
 * the packets and bytes it decided.
 *
 * A connection's allow is decided once and cached in its conntrack entry
 * with the endpoint's policy revision (endpoint_info.policy_rev), which the
 * agent bumps whenever anything that endpoint's verdicts depend on changes:
 * an established packet compares two numbers, and re-decides when they
 * differ. lib/pipeline.h calls this at step 6 and on established packets.
 */
#ifndef PORIN_POLICY_H
#define PORIN_POLICY_H

#include "common.h"
#include "reasons.h"
#include "flow.h"
#include "endpoint.h"
#include "ipcache.h"
#include "verdict.h"

#ifndef POLICY_MAP_SIZE
#error "POLICY_MAP_SIZE must be defined (daemon/datapath.py:build_flags passes it)"
#endif
#ifndef POLICY_CIDR_MAP_SIZE
#error "POLICY_CIDR_MAP_SIZE must be defined (daemon/datapath.py:build_flags passes it)"
#endif

#define POLICY_F_DENY 1

/* prefix lengths, in bits after `prefixlen` */
#define POLICY_PREFIX_ANY_PROTO 64 /* ep_id, dir, pad0, identity */
#define POLICY_PREFIX_ANY_PORT 80  /* ... proto, pad1 */
#define POLICY_PREFIX_FULL 96      /* ... dport */

struct policy_key {
	__u32 prefixlen;
	__u16 ep_id;
	__u8 dir;               /* DIR_INGRESS, DIR_EGRESS */
	__u8 pad0;
	__u32 identity;         /* the remote's; 0: any */
	__u8 proto;
	__u8 pad1;
	__be16 dport;           /* ICMP: the type */
};

struct policy_entry {
	__u32 rule_id;          /* the policy rule this entry came from (agent's numbering) */
	__u8 flags;             /* POLICY_F_* */
	__u8 pad[3];
	__u64 packets;          /* packets this entry decided */
	__u64 bytes;
};

struct policy_cidr_key {
	__u32 prefixlen;
	__be32 ip;
};

PORIN_MAP_F("lpm_trie", struct policy_key, struct policy_entry, policy, POLICY_MAP_SIZE,
	    BPF_F_NO_PREALLOC);
PORIN_MAP_F("lpm_trie", struct policy_cidr_key, __u32, policy_cidr, POLICY_CIDR_MAP_SIZE,
	    BPF_F_NO_PREALLOC);

static __always_inline struct policy_entry *policy_lookup(__u16 ep_id, __u8 dir, __u32 identity,
							  __u8 proto, __be16 dport)
{
	struct policy_key key = {
		.prefixlen = POLICY_PREFIX_FULL,
		.ep_id = ep_id,
		.dir = dir,
		.identity = identity,
		.proto = proto,
		.dport = dport,
	};

	return policy.lookup(&key);
}

static __always_inline __u32 policy_cidr_identity(__be32 ip)
{
	struct policy_cidr_key key = { .prefixlen = 32, .ip = ip };
	__u32 *id = policy_cidr.lookup(&key);

	return id ? *id : 0;
}

/* `e` unless it is missing or only allows and `t` is a deny. */
static __always_inline struct policy_entry *policy_stronger(struct policy_entry *e,
							    struct policy_entry *t)
{
	if (t && (!e || (t->flags & POLICY_F_DENY)))
		return t;
	return e;
}

/* The verdict for a packet between the local endpoint `ep` and a remote
 * (`remote_id` at `remote_ip`) in direction `dir` (DIR_*, seen from ep):
 * CTX_GO_ON (allowed) or DROP(DROP_POLICY / DROP_POLICY_DENY). */
static __always_inline int policy_decide(const struct endpoint_info *ep, __u8 dir,
					 __u32 remote_id, __be32 remote_ip, const struct flow *f,
					 __u32 len, struct verdict *v)
{
	__u16 want = dir == DIR_INGRESS ? ENDPOINT_F_POLICY_INGRESS : ENDPOINT_F_POLICY_EGRESS;
	__be16 port = f->proto == IPPROTO_ICMP ? bpf_htons(f->icmp_type) : f->dport;
	struct policy_entry *e = NULL;
	__u32 cidr_id, rule = 0;
	__u8 reason = 0;

	if (!(ep->flags & want))
		return CTX_GO_ON;
	if (remote_id)
		e = policy_lookup(ep->ep_id, dir, remote_id, f->proto, port);
	if (!e || !(e->flags & POLICY_F_DENY))
		e = policy_stronger(e, policy_lookup(ep->ep_id, dir, 0, f->proto, port));
	if (!e || !(e->flags & POLICY_F_DENY)) {
		cidr_id = policy_cidr_identity(remote_ip);
		if (cidr_id)
			e = policy_stronger(e, policy_lookup(ep->ep_id, dir, cidr_id, f->proto, port));
	}
	if (!e) {
		reason = DROP_POLICY;
	} else {
		rule = e->rule_id;
		__sync_fetch_and_add(&e->packets, 1);
		__sync_fetch_and_add(&e->bytes, len);
		if (e->flags & POLICY_F_DENY)
			reason = DROP_POLICY_DENY;
	}
	verdict_policy(v, dir, ep->ep_id, rule, reason);
	return reason ? DROP(reason) : CTX_GO_ON;
}

/* Egress of a pod's packet, `f` as it leaves (after service translation). */
static __always_inline int policy_egress(const struct endpoint_info *src, const struct flow *f,
					 __u32 len, struct verdict *v)
{
	if (!(src->flags & ENDPOINT_F_POLICY_EGRESS))
		return CTX_GO_ON;
	return policy_decide(src, DIR_EGRESS, identity_of(f->daddr.v4), f->daddr.v4, f, len, v);
}

/* Ingress into a local pod from the sender the verdict names. A refusal
 * is the receiver's: counted and reported as its ingress, whichever program
 * the packet came through. */
static __always_inline int policy_ingress(const struct endpoint_info *dst, const struct flow *f,
					  __u32 len, struct verdict *v)
{
	int ret = policy_decide(dst, DIR_INGRESS, v->src_identity, f->saddr.v4, f, len, v);

	if (IS_ERR(ret)) {
		v->dir = DIR_INGRESS;
		v->ep_id = dst->ep_id;
	}
	return ret;
}

#endif /* PORIN_POLICY_H */
