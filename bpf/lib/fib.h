/* Sending a packet out of an uplink as the kernel's FIB routes it, past the
 * node's IP forwarding path (Cilium's BPF host routing), for packets the
 * datapath has finished translating. tc only. */
#ifndef PORIN_FIB_H
#define PORIN_FIB_H

#include "common.h"
#include "flow.h"
#include "ipv4.h"
#include "host_device.h"

/* Route `f` (as it now stands) out of the uplink the FIB names: the TTL
 * decremented, the MACs set, redirected. CTX_GO_ON leaves it to the host
 * stack: no route, neighbour not resolved yet, not an uplink of the config,
 * TTL exhausted. */
static __always_inline int fib_redirect_uplink(struct __sk_buff *ctx, const struct flow *f)
{
	struct bpf_fib_lookup fib = {};
	struct ethhdr *eth;
	struct iphdr *ip;
	__u32 out;

	fib.family = 2; /* AF_INET */
	fib.ipv4_src = f->saddr.v4;
	fib.ipv4_dst = f->daddr.v4;
	fib.ifindex = ctx->ifindex;
	/* tot_len 0: the kernel checks the MTU itself, aware of GSO */
	if (bpf_fib_lookup(ctx, &fib, sizeof(fib), 0) != BPF_FIB_LKUP_RET_SUCCESS)
		return CTX_GO_ON;
	out = fib.ifindex;
	if (!host_device_of(out))
		return CTX_GO_ON;
	ip = ipv4_hdr(ctx);
	if (!ip || ip->ttl <= 1)
		return CTX_GO_ON;
	ipv4_dec_ttl(ip);
	eth = ctx_data(ctx);
	if ((void *)(eth + 1) > ctx_data_end(ctx))
		return DROP(DROP_TRUNCATED);
	__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
	return bpf_redirect(out, 0);
}

#endif /* PORIN_FIB_H */
