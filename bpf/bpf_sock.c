/* cgroup socket hooks of the node's own sockets (attached to the cgroup
 * tree's root by daemon/sock.py; each returns 1: the call goes on).
 *
 *   sock4_connect      connect() of TCP and UDP sockets
 *   sock4_sendmsg      sendmsg() of unconnected UDP sockets
 *   sock4_recvmsg      recvmsg() of UDP sockets: the peer's address as asked
 *   sock4_getpeername  getpeername(): the same
 *
 * Path of sock4_connect and sock4_sendmsg:
 *   1. not the agent's network namespace, or the address is not on the
 *      loopback (127.0.0.0/8) -> untouched (the tc programs translate the
 *      node's packets to its other addresses, bpf_host.c from_host_lo)
 *   2. no service frontend on that address and port -> untouched
 *   3. no active backend -> untouched (the loopback refuses it)
 *   4. the address becomes the backend's, remembered for the way back
 *      (lib/sock.h)
 */
#include "lib/common.h"
#include "lib/sock.h"

int sock4_connect(struct bpf_sock_addr *ctx)
{
	sock4_forward(ctx);
	return 1;
}

int sock4_sendmsg(struct bpf_sock_addr *ctx)
{
	sock4_forward(ctx);
	return 1;
}

int sock4_recvmsg(struct bpf_sock_addr *ctx)
{
	sock4_reverse(ctx);
	return 1;
}

int sock4_getpeername(struct bpf_sock_addr *ctx)
{
	sock4_reverse(ctx);
	return 1;
}
