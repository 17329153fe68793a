/* ipcache: IP prefix -> (security identity, tunnel endpoint), longest match.
 *
 * Written by the agent from the kvstore: every pod of the cluster (/32,
 * with the node it lives on as tunnel endpoint), every node IP (identity
 * remote-node) and every other node's pod CIDR (the route for pods not
 * known one by one yet). maps/ipcache.py mirrors the layout. */
#ifndef PORIN_IPCACHE_H
#define PORIN_IPCACHE_H

#include "common.h"
#include "identity.h"

#ifndef IPCACHE_MAP_SIZE
#error "IPCACHE_MAP_SIZE must be defined (daemon/datapath.py:build_flags passes it)"
#endif

#define IPCACHE_F_NODE 1         /* the prefix is a node's own address */

struct ipcache_key {
	__u32 prefixlen;
	__be32 ip;
};

struct remote_endpoint_info {
	__u32 sec_identity;
	__be32 tunnel_endpoint;  /* 0: not behind a tunnel (local, or world) */
	__u8 flags;
	__u8 pad[3];
};

PORIN_MAP_F("lpm_trie", struct ipcache_key, struct remote_endpoint_info, ipcache,
	    IPCACHE_MAP_SIZE, BPF_F_NO_PREALLOC);

static __always_inline struct remote_endpoint_info *ipcache_lookup(__be32 ip)
{
	struct ipcache_key key = { .prefixlen = 32, .ip = ip };

	return ipcache.lookup(&key);
}

/* The identity of an address: the ipcache's, else world. */
static __always_inline __u32 identity_of(__be32 ip)
{
	struct remote_endpoint_info *info = ipcache_lookup(ip);

	return info ? info->sec_identity : IDENTITY_WORLD;
}

#endif /* PORIN_IPCACHE_H */
