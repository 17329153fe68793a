/* XDP on the node's uplinks (config `devices`), before the kernel makes an skb.
 *
 *   from_xdp  every frame received on the device
 *
 * Packet path, top to bottom (ending in xdp_exit: the verdict recorded once,
 * lib/verdict.h, and counted by its reason and XDP action, which gives both
 * the metrics and Katran's per-action counters):
 *   1. Ethernet header present, else DROP_TRUNCATED
 *   2. not IPv4 (ARP, IPv6, ...) -> on to tc and the stack (REASON_XDP_PASS)
 *   3. prefilter: the source of the IPv4 header is on the deny list (an
 *      exact address or a prefix) -> DROP_PREFILTER, counted on the entry
 *      (lib/prefilter.h); no 20-byte header -> DROP_TRUNCATED. A listed
 *      source is dropped whatever the rest of its header says
 *   4. IPv4 header valid, else DROP_TRUNCATED / DROP_IP_OPTIONS_BAD
 *   5. not addressed to this device's node address -> on to tc
 *   6. an ICMP echo request, not a fragment -> answered in place and sent
 *      back out (XDP_TX, REASON_XDP_ECHO); nodePortMode dsr: an ICMP error
 *      quoting a flow XDP balanced to another node (the frontend as its
 *      source) -> to that flow's backend, the quote made about it, DSR as
 *      the flow (REASON_NODEPORT_DSR)
 *   7. TCP or UDP to a NodePort frontend. nodePortMode dsr (lib/xdp_lb.h):
 *      the flow's backend (per-CPU LRU, else Maglev or random); one on
 *      another node -> DNAT, DSR header, out of the device the FIB names
 *      (XDP_TX or redirect, REASON_NODEPORT_DSR); too big for the way there and
 *      DF -> ICMP fragmentation needed back (DROP_FRAG_NEEDED). Fragments
 *      follow their first (lib/frag.h: its ports, so its flow and backend);
 *      one whose first was not seen -> on to tc (REASON_FRAG_UNKNOWN). A
 *      local backend, none, or no route -> on to tc, which serves it
 *      (bpf_host.c from_netdev).
 *      nodePortMode snat (lib/xdp_snat.h): an established flow's packet
 *      (conntrack knows it, tc made it) to a backend on another node ->
 *      conntrack counts it, DNAT, source to this node and the flow's NAT
 *      port, the overlay's IPIP or VXLAN header, out of the device the FIB
 *      names (REASON_NODEPORT_SNAT); a SYN, a flow not known, a fragment,
 *      a local backend, too big for the overlay -> on to tc
 *   8. otherwise -> on to tc (bpf_host.c from_netdev) and the stack
 *      (REASON_XDP_PASS)
 */
#define PORIN_CTX_XDP 1
/* as bpf_host.c: the agent's GC protects the NodePort flows of the uplinks */
#define CT_PROTECT_ON_LOOKUP 0
#include "lib/common.h"
#include "lib/reasons.h"
#include "lib/verdict.h"
#include "lib/eth.h"
#include "lib/flow.h"
#include "lib/ipv4.h"
#include "lib/csum.h"
#include "lib/host_device.h"
#include "lib/prefilter.h"
#include "lib/frag.h"
#include "lib/xdp_lb.h"
#include "lib/xdp_snat.h"

#ifndef NODEPORT_DSR
#error "NODEPORT_DSR must be defined (daemon/datapath.py:build_flags passes it)"
#endif

/* Every verdict of from_xdp, counted once by (reason, XDP action): one
 * per-CPU lookup where the metrics map and an action counter took two.
 * User space reads them as metrics (reason, ingress), folded into those of
 * the `metrics` map, and as Katran's per-action counters (aborted, drop,
 * pass, tx, redirect) summed over the reasons (maps/xdp_metrics.py). */
#define XDP_ACTIONS 5
#define XDP_METRICS_INDEX(reason, action) (((__u32)(reason) << 3) | ((action) & 7))
#ifndef XDP_METRICS_SLOTS
#error "XDP_METRICS_SLOTS must be defined (daemon/datapath.py:build_flags passes it)"
#endif
PORIN_MAP("percpu_array", __u32, struct metrics_value, xdp_metrics, XDP_METRICS_SLOTS);

/* Any fragment, the first one too: an echo is only answered whole. */
static __always_inline int xdp_fragmented(struct xdp_md *ctx)
{
	struct iphdr *ip = ctx_data(ctx) + ETH_HLEN;

	if ((void *)(ip + 1) > ctx_data_end(ctx))
		return 1;
	return (ip->frag_off & bpf_htons(0x3fff)) != 0;
}

/* Step 6: turn an echo request into its reply, in place. */
static __always_inline int xdp_echo_reply(struct xdp_md *ctx, const struct flow *f,
					  struct verdict *v)
{
	struct ethhdr *eth = ctx_data(ctx);
	struct iphdr *ip = ctx_data(ctx) + ETH_HLEN;
	struct icmphdr *icmp = ctx_data(ctx) + (f->l4_off & 0xff);
	__u8 mac[ETH_ALEN];
	__be32 addr;
	__u16 old;

	if ((void *)(eth + 1) > ctx_data_end(ctx) || (void *)(ip + 1) > ctx_data_end(ctx) ||
	    (void *)(icmp + 1) > ctx_data_end(ctx))
		return DROP(DROP_TRUNCATED);
	__builtin_memcpy(mac, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, mac, ETH_ALEN);
	/* swapping the addresses leaves the IP checksum as it was */
	addr = ip->saddr;
	ip->saddr = ip->daddr;
	ip->daddr = addr;
	old = *(__u16 *)&ip->ttl;
	ip->ttl = 64;
	ipv4_csum_update16(ip, old, *(__u16 *)&ip->ttl);
	old = *(__u16 *)icmp;
	icmp->type = ICMP_ECHOREPLY;
	icmp->checksum = csum_replace16(icmp->checksum, old, *(__u16 *)icmp);
	v->reason = REASON_XDP_ECHO;
	return XDP_TX;
}

/* Step 7. */
static __always_inline int xdp_nodeport(struct xdp_md *ctx, struct flow *f, __be32 node_ip,
					struct verdict *v)
{
	struct lb4_service *svc;
	int ret;

	ret = flow_parse4_l4(ctx, f);
	if (ret)
		return ret;
	if (frag4_track(ctx, f) == CTX_GO_ON) {
		v->reason = REASON_FRAG_UNKNOWN;
		return XDP_PASS;
	}
	svc = lb4_lookup_service(f);
	if (!svc || !(svc->flags & SVC_F_XDP))
		return XDP_PASS;
	if (NODEPORT_DSR)
		ret = xdp_nodeport4(ctx, f, svc, node_ip, v);
	else
		ret = xdp_nodeport4_snat(ctx, f, node_ip, v);
	return ret == CTX_GO_ON ? XDP_PASS : ret;
}

static __always_inline int handle_from_xdp(struct xdp_md *ctx, struct verdict *v)
{
	struct ethhdr *eth = ctx_data(ctx);
	__u32 ifindex = ctx_ifindex(ctx);
	struct host_device *dev;
	struct iphdr *ip;
	struct flow f;
	int ret;

	v->reason = REASON_XDP_PASS;
	if ((void *)(eth + 1) > ctx_data_end(ctx))
		return DROP(DROP_TRUNCATED);
	if (eth->h_proto != const_htons(ETH_P_IP))
		return XDP_PASS;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > ctx_data_end(ctx))
		return DROP(DROP_TRUNCATED);
	ret = prefilter4(ip->saddr, ctx_len(ctx));
	if (ret != CTX_GO_ON)
		return ret;
	ret = flow_parse4_l3(ctx, &f);
	if (ret)
		return ret;
	dev = host_device_of(ifindex);
	if (!dev || f.daddr.v4 != dev->node_ip)
		return XDP_PASS;
	if (f.proto == IPPROTO_ICMP) {
		if (xdp_fragmented(ctx))
			return XDP_PASS;
		ret = flow_parse4_l4(ctx, &f);
		if (ret)
			return ret;
		if (NODEPORT_DSR && flow_is_icmp_error(&f)) {
			ret = xdp_nodeport4_icmp_error(ctx, &f, dev->node_ip, v);
			return ret == CTX_GO_ON ? XDP_PASS : ret;
		}
		if (f.icmp_type != ICMP_ECHO)
			return XDP_PASS;
		return xdp_echo_reply(ctx, &f, v);
	}
	if (f.proto == IPPROTO_TCP || f.proto == IPPROTO_UDP)
		return xdp_nodeport(ctx, &f, dev->node_ip, v);
	return XDP_PASS;
}

/* The verdict, then counted by reason and action. */
static __always_inline int xdp_exit(struct xdp_md *ctx, int ret, struct verdict *v)
{
	struct metrics_value *m;
	__u32 action, idx;

	action = verdict_exit(ctx, ret, v);
	if (action >= XDP_ACTIONS)
		action = XDP_ABORTED;
	idx = XDP_METRICS_INDEX(v->reason, action);
	m = xdp_metrics.lookup(&idx);
	if (m) {
		m->packets += 1;
		m->bytes += ctx_len(ctx);
	}
	return action;
}

int from_xdp(struct xdp_md *ctx)
{
	struct verdict v;
	int ret;

	verdict_init(&v, DIR_INGRESS);
	ret = handle_from_xdp(ctx, &v);
	/* The same exit, but with the reason a constant, which the compiler folds
	 * into the recording: a flood the prefilter drops takes this way, about
	 * 1.5 ns a packet faster (measured against the generic exit in one
	 * process, next to hack/bench_xdp.py's XDP_DROP floor). */
	if (ret == DROP(DROP_PREFILTER))
		return xdp_exit(ctx, DROP(DROP_PREFILTER), &v);
	return xdp_exit(ctx, ret, &v);
}
