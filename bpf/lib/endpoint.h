/* Local endpoints: pod IPv4 address -> where and how to deliver.
 *
 * Written by the agent at CNI ADD (maps/endpoints.py mirrors the layout).
 * The same entry validates a pod's source (ifindex, MAC) and delivers to it.
 */
#ifndef PORIN_ENDPOINT_H
#define PORIN_ENDPOINT_H

#include "common.h"

struct endpoint_key {
	__be32 ip;
};

struct endpoint_info {
	__u32 ifindex;      /* host-side veth (lxc...) */
	__u16 ep_id;        /* agent's endpoint id */
	__u16 flags;
	__u8 mac[6];        /* pod interface MAC */
	__u8 node_mac[6];   /* host-side veth MAC: the pod's gateway MAC */
	__u32 sec_identity; /* security identity (policy, later) */
	__u32 pad;
};

PORIN_MAP("hash", struct endpoint_key, struct endpoint_info, endpoints, ENDPOINTS_MAP_SIZE);

static __always_inline struct endpoint_info *lookup_endpoint(__be32 ip)
{
	struct endpoint_key key = { .ip = ip };

	return endpoints.lookup(&key);
}

#endif /* PORIN_ENDPOINT_H */
