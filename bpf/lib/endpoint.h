/* Local endpoints: pod IPv4 address -> where and how to deliver.
 *
 * Written by the agent at CNI ADD (maps/endpoints.py and
 * maps/endpoint_slots.py mirror the layout). The same entry validates a
 * pod's source (ifindex, MAC) and delivers to it, so every pod packet looks
 * endpoints up twice. Two maps keep that cheap:
 *
 *   endpoint_slots  array, indexed by the low ENDPOINT_SLOT_BITS bits of the
 *                   address (host order): the endpoint whose address the slot
 *                   holds, or an empty slot (ip 0). ENDPOINT_F_SLOT_SHARED
 *                   says that other endpoints have the same index and are
 *                   only in the hash.
 *   endpoints       hash, address -> endpoint: every endpoint. What the agent
 *                   and `porin bpf endpoint list` read.
 *
 * A lookup takes the slot when it holds the address, asks the hash only when
 * the slot is shared, and otherwise knows the address is no local endpoint.
 * With pod addresses from one CIDR of /16 or smaller (Porin's IPAM) no two
 * endpoints share a slot, and both lookups are an array access the verifier
 * inlines, about 20 ns less each than a hash lookup.
 *
 * The agent writes a slot so that a packet never matches a half-written one:
 * a new or moved endpoint is written with ip 0 first, the address last.
 */
#ifndef PORIN_ENDPOINT_H
#define PORIN_ENDPOINT_H

#include "common.h"

#ifndef ENDPOINTS_MAP_SIZE
#error "ENDPOINTS_MAP_SIZE must be defined (daemon/datapath.py:build_flags passes it)"
#endif
#ifndef ENDPOINT_SLOT_BITS
#error "ENDPOINT_SLOT_BITS must be defined (daemon/datapath.py:build_flags passes it)"
#endif
#define ENDPOINT_SLOTS (1 << ENDPOINT_SLOT_BITS)

/* endpoint_info.flags */
#define ENDPOINT_F_SLOT_SHARED 0x8000 /* slots only: other endpoints share the index */
#define ENDPOINT_F_POLICY_INGRESS 1   /* isolated for ingress: only what policy allows */
#define ENDPOINT_F_POLICY_EGRESS 2    /* isolated for egress */

struct endpoint_key {
	__be32 ip;
};

struct endpoint_info {
	__u32 ifindex;      /* host-side veth (lxc...) */
	__u16 ep_id;        /* agent's endpoint id */
	__u16 flags;
	__u8 mac[6];        /* pod interface MAC */
	__u8 node_mac[6];   /* host-side veth MAC: the pod's gateway MAC */
	__u32 sec_identity; /* security identity */
	__be32 ip;          /* the endpoint's address (what a slot holds) */
	__u32 policy_rev;   /* bumped when anything its policy verdicts depend on changes */
};

PORIN_MAP("hash", struct endpoint_key, struct endpoint_info, endpoints, ENDPOINTS_MAP_SIZE);
PORIN_MAP("array", __u32, struct endpoint_info, endpoint_slots, ENDPOINT_SLOTS);

static __always_inline struct endpoint_info *lookup_endpoint(__be32 ip)
{
	__u32 idx = bpf_ntohl(ip) & (ENDPOINT_SLOTS - 1);
	struct endpoint_key key = { .ip = ip };
	struct endpoint_info *slot = endpoint_slots.lookup(&idx);

	if (slot && slot->ip == ip && ip)
		return slot;
	if (slot && !(slot->flags & ENDPOINT_F_SLOT_SHARED))
		return NULL;
	return endpoints.lookup(&key);
}

#endif /* PORIN_ENDPOINT_H */
