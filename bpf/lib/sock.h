/* Socket-level translation (Cilium's socket LB, for the loopback only):
 * the node's own sockets reaching a service frontend on a loopback address
 * (a pod's host port on 127.0.0.1) are pointed at the backend when they
 * connect or send, so no packet to 127.0.0.1 ever needs translating (a
 * packet DNATed from lo to a pod could not be answered: its source is the
 * loopback). What the socket is told about its peer is translated back.
 *
 *   sock_config  array[1]: the node's network namespace cookie. The hooks
 *                are attached to the whole cgroup tree, which spans every
 *                namespace; they act only on the agent's own.
 *   sock_rev4    LRU {socket cookie, backend address, port} -> the frontend
 *                it was asked for, for recvmsg and getpeername.
 */
#ifndef PORIN_SOCK_H
#define PORIN_SOCK_H

#include "common.h"
#include "flow.h"
#include "lb.h"

#ifndef SOCK_REV4_MAP_SIZE
#error "SOCK_REV4_MAP_SIZE must be defined (daemon/datapath.py:build_flags passes it)"
#endif

struct sock_config {
	__u64 netns_cookie;  /* 0: translate nothing */
};

struct sock_rev4_key {
	__u64 cookie;
	__be32 address;
	__be16 port;
	__u16 pad;
};

struct sock_rev4_val {
	__be32 address;
	__be16 port;
	__u16 pad;
};

PORIN_MAP("array", __u32, struct sock_config, sock_config, 1);
PORIN_MAP("lru_hash", struct sock_rev4_key, struct sock_rev4_val, sock_rev4, SOCK_REV4_MAP_SIZE);

/* The kernel's helper takes any context; bcc 0.26 does not declare it. */
static __u64 (*porin_get_netns_cookie)(void *ctx) = (void *)BPF_FUNC_get_netns_cookie;

/* Is this socket the agent's namespace's, and is its peer a loopback address? */
static __always_inline int sock4_wanted(struct bpf_sock_addr *ctx)
{
	__u32 zero = 0;
	struct sock_config *cfg = sock_config.lookup(&zero);

	if (!cfg || !cfg->netns_cookie || porin_get_netns_cookie(ctx) != cfg->netns_cookie)
		return 0;
	return (bpf_ntohl(ctx->user_ip4) >> 24) == 127;
}

/* connect() and sendmsg(): a frontend on a loopback address becomes its
 * backend, and the way back is remembered. */
static __always_inline void sock4_forward(struct bpf_sock_addr *ctx)
{
	struct sock_rev4_key rkey = {};
	struct sock_rev4_val rval = {};
	struct lb4_service *svc;
	struct lb4_backend *b;
	struct flow f = {};

	if (!sock4_wanted(ctx))
		return;
	f.daddr.v4 = ctx->user_ip4;
	f.dport = (__be16)ctx->user_port;
	f.proto = ctx->protocol;
	svc = lb4_lookup_service(&f);
	if (!svc)
		return;
	b = lb4_select_backend(&f, svc);
	if (!b)
		return; /* no backend: the connection is refused by the loopback */
	rkey.cookie = bpf_get_socket_cookie(ctx);
	rkey.address = b->address;
	rkey.port = b->port;
	rval.address = f.daddr.v4;
	rval.port = f.dport;
	sock_rev4.update(&rkey, &rval);
	ctx->user_ip4 = b->address;
	ctx->user_port = b->port;
}

/* recvmsg() and getpeername(): a backend this socket was pointed at shows
 * as the frontend it asked for. */
static __always_inline void sock4_reverse(struct bpf_sock_addr *ctx)
{
	struct sock_rev4_key rkey = {};
	struct sock_rev4_val *rval;
	__u32 zero = 0;
	struct sock_config *cfg = sock_config.lookup(&zero);

	if (!cfg || !cfg->netns_cookie || porin_get_netns_cookie(ctx) != cfg->netns_cookie)
		return;
	rkey.cookie = bpf_get_socket_cookie(ctx);
	rkey.address = ctx->user_ip4;
	rkey.port = (__be16)ctx->user_port;
	rval = sock_rev4.lookup(&rkey);
	if (!rval)
		return;
	ctx->user_ip4 = rval->address;
	ctx->user_port = rval->port;
}

#endif /* PORIN_SOCK_H */
