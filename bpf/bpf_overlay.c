/* Programs of the overlay between nodes.
 *
 *   from_overlay     tc ingress of porin_vxlan (collect-metadata mode, VXLAN
 *                    only): decapsulated packets from other nodes
 *   host_to_overlay  tc egress of porin_host: the node's own packets to pods
 *                    of other nodes (the agent routes each remote pod CIDR
 *                    there, sourced from this node's pod gateway address)
 *
 * Packet path of host_to_overlay, top to bottom:
 *   1. not IPv4, malformed, or no overlay configured -> on untouched
 *      (REASON_HOST_PASS: porin_net drops it, nothing else is routed here)
 *   2. the destination's ipcache entry names a tunnel endpoint (a remote
 *      pod, or a remote node's gateway), else on untouched
 *   3. into the overlay as the remote-node identity (the host identity is
 *      never put on the wire: other nodes refuse it), VXLAN or IPIP
 *      (REASON_TUNNELED; DROP_ENCAP_FAILED). The route's MTU is the pods'
 *      MTU, so the stack has already made the packet fit the tunnel.
 *
 * Packet path of from_overlay, top to bottom:
 *   1. tunnel metadata present, else DROP_NO_TUNNEL_KEY
 *   2. the outer source is a node of the cluster (ipcache), else DROP_UNKNOWN_NODE
 *   3. the VNI is the sender's identity, carried on in the verdict: the
 *      host identity is never accepted from the wire (DROP_INVALID_IDENTITY)
 *   4. inner Ethernet/IPv4 valid (DROP_TRUNCATED / DROP_IP_OPTIONS_BAD);
 *      not IPv4 -> the stack (REASON_HOST_PASS); the inner source must live
 *      behind the sending node and the VNI be its identity (the ipcache's;
 *      a pod only known by its node's pod CIDR yet: the node), else
 *      DROP_FORGED_TUNNEL
 *   5. conntrack; a reply of a service flow this node balanced is translated
 *      back to the frontend
 *   6. destination is a local endpoint -> local_delivery into the pod
 *      (REASON_FROM_TUNNEL); otherwise -> the stack (REASON_HOST_PASS), as
 *      a packet for this host when it is addressed to one of the node's
 *      own addresses (a reply to host_to_overlay)
 */
#include "lib/common.h"
#include "lib/reasons.h"
#include "lib/verdict.h"
#include "lib/eth.h"
#include "lib/flow.h"
#include "lib/ipv4.h"
#include "lib/endpoint.h"
#include "lib/conntrack.h"
#include "lib/pipeline.h"
#include "lib/identity.h"
#include "lib/ipcache.h"
#include "lib/tunnel.h"
#include "lib/lxc.h"

static __always_inline int handle_from_overlay(struct __sk_buff *ctx, struct verdict *v)
{
	struct bpf_tunnel_key key = {};
	struct remote_endpoint_info *node, *dst;
	struct endpoint_info *ep;
	struct ethhdr *eth;
	struct flow f;
	int ret;

	if (bpf_skb_get_tunnel_key(ctx, &key, sizeof(key), 0) < 0)
		return DROP(DROP_NO_TUNNEL_KEY);
	node = ipcache_lookup(bpf_htonl(key.remote_ipv4));
	if (!node || !(node->flags & IPCACHE_F_NODE))
		return DROP(DROP_UNKNOWN_NODE);
	if (key.tunnel_id == IDENTITY_HOST)
		return DROP(DROP_INVALID_IDENTITY);
	v->src_identity = key.tunnel_id;

	v->reason = REASON_HOST_PASS;
	eth = ctx_data(ctx);
	if ((void *)(eth + 1) > ctx_data_end(ctx))
		return DROP(DROP_TRUNCATED);
	if (eth->h_proto != const_htons(ETH_P_IP))
		return TC_ACT_OK;
	ret = flow_parse4(ctx, &f);
	if (ret)
		return ret;
	ret = tunnel_check_sender(bpf_htonl(key.remote_ipv4), f.saddr.v4, key.tunnel_id);
	if (ret)
		return ret;
	ret = ct_process(ctx, &f, CT_DIR_IN, v);
	if (ret != CTX_GO_ON)
		return ret;
	ep = lookup_endpoint(f.daddr.v4);
	if (!ep) {
		/* to the node itself (a reply to host_to_overlay's packets): the
		 * inner frame is addressed to the sender's gateway MAC, which the
		 * stack would take for another host's */
		dst = ipcache_lookup(f.daddr.v4);
		if (dst && dst->sec_identity == IDENTITY_HOST)
			bpf_skb_change_type(ctx, PACKET_HOST);
		return TC_ACT_OK;
	}
	v->reason = REASON_FROM_TUNNEL;
	return local_delivery(ctx, &f, ep, v, DELIVER_REDIRECT);
}

int from_overlay(struct __sk_buff *ctx)
{
	struct verdict v;

	verdict_init(&v, DIR_INGRESS);
	return verdict_exit(ctx, handle_from_overlay(ctx, &v), &v);
}

static __always_inline int handle_host_to_overlay(struct __sk_buff *ctx, struct verdict *v)
{
	struct remote_endpoint_info *info;
	struct tunnel_config *cfg;
	struct ethhdr *eth;
	struct flow f;

	v->reason = REASON_HOST_PASS;
	v->src_identity = IDENTITY_HOST;
	eth = ctx_data(ctx);
	if ((void *)(eth + 1) > ctx_data_end(ctx) || eth->h_proto != const_htons(ETH_P_IP))
		return TC_ACT_OK;
	cfg = tunnel_cfg();
	if (!cfg || flow_parse4(ctx, &f))
		return TC_ACT_OK;
	info = ipcache_lookup(f.daddr.v4);
	if (!info || !info->tunnel_endpoint)
		return TC_ACT_OK;
	v->dst_identity = info->sec_identity;
	v->reason = REASON_TUNNELED;
	if (cfg->mode == TUNNEL_VXLAN)
		return tunnel_vxlan_redirect(ctx, cfg, info->tunnel_endpoint, IDENTITY_REMOTE_NODE);
	return tunnel_ipip_redirect(ctx, cfg, info->tunnel_endpoint);
}

int host_to_overlay(struct __sk_buff *ctx)
{
	struct verdict v;

	verdict_init(&v, DIR_EGRESS);
	return verdict_exit(ctx, handle_host_to_overlay(ctx, &v), &v);
}
