/* The hook-neutral half of the datapath compiled as an XDP program: the
 * parsers, the endpoint, ipcache and service lookups and backend selection
 * take struct __ctx_buff, which is xdp_md here (lib/ctx.h). Used by
 * tests/bpf/test_bpf_xdp_seam.py; the XDP programs proper come with
 * bpf_xdp.c.
 *
 * What it found goes to a small array the test reads: [0] the parser's drop
 * reason (0: parsed), [1] the destination's endpoint id, [2] its ipcache
 * identity, [3] the backend a service frontend would give the flow.
 */
#define PORIN_CTX_XDP 1
#include "lib/common.h"
#include "lib/reasons.h"
#include "lib/flow.h"
#include "lib/ipv4.h"
#include "lib/endpoint.h"
#include "lib/ipcache.h"
#include "lib/lb.h"

BPF_ARRAY(seam_out, __u32, 4);

static __always_inline void put(__u32 idx, __u32 value)
{
	seam_out.update(&idx, &value);
}

int xdp_seam(struct xdp_md *ctx)
{
	struct ethhdr *eth = ctx_data(ctx);
	struct remote_endpoint_info *info;
	struct endpoint_info *ep;
	struct lb4_service *svc;
	struct lb4_backend *b;
	struct flow f;
	int ret;

	if ((void *)(eth + 1) > ctx_data_end(ctx) || eth->h_proto != const_htons(ETH_P_IP))
		return XDP_PASS;
	ret = flow_parse4(ctx, &f);
	put(0, IS_ERR(ret) ? -ret : 0);
	if (ret)
		return XDP_DROP;
	ep = lookup_endpoint(f.daddr.v4);
	put(1, ep ? ep->ep_id : 0);
	info = ipcache_lookup(f.daddr.v4);
	put(2, info ? info->sec_identity : 0);
	svc = lb4_lookup_service(&f);
	b = svc ? lb4_select_backend(&f, svc) : NULL;
	put(3, b ? b->id : 0);
	return XDP_PASS;
}
