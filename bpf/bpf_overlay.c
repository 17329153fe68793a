/* Program on the node's VXLAN device (porin_vxlan, collect-metadata mode).
 *
 *   from_overlay  tc ingress: decapsulated packets from other nodes
 *
 * Packet path, top to bottom:
 *   1. tunnel metadata present, else DROP_NO_TUNNEL_KEY
 *   2. the outer source is a node of the cluster (ipcache), else DROP_UNKNOWN_NODE
 *   3. the VNI is the sender's identity: the host identity is never accepted
 *      from the wire (DROP_INVALID_IDENTITY)
 *   4. inner Ethernet/IPv4 valid (DROP_TRUNCATED / DROP_IP_OPTIONS_BAD)
 *   5. conntrack; a reply of a service flow this node balanced is translated
 *      back to the frontend
 *   6. destination is a local endpoint -> into the pod (REASON_FROM_TUNNEL);
 *      otherwise -> the stack
 */
#include "lib/common.h"
#include "lib/reasons.h"
#include "lib/metrics.h"
#include "lib/eth.h"
#include "lib/endpoint.h"
#include "lib/ipv4.h"
#include "lib/l4.h"
#include "lib/nat.h"
#include "lib/conntrack.h"
#include "lib/lb.h"
#include "lib/identity.h"
#include "lib/ipcache.h"
#include "lib/tunnel.h"
#include "lib/lxc.h"

int from_overlay(struct __sk_buff *skb)
{
	struct bpf_tunnel_key key = {};
	struct remote_endpoint_info *node;
	struct endpoint_info *ep;
	struct ethhdr *eth = ctx_data(skb);
	struct ipv4_flow flow;
	struct iphdr *ip;
	__u8 reason = 0;
	int ret;

	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0) < 0)
		return drop(skb, DROP_NO_TUNNEL_KEY, DIR_INGRESS);
	node = ipcache_lookup(bpf_htonl(key.remote_ipv4));
	if (!node || !(node->flags & IPCACHE_F_NODE))
		return drop(skb, DROP_UNKNOWN_NODE, DIR_INGRESS);
	if (key.tunnel_id == IDENTITY_HOST)
		return drop(skb, DROP_INVALID_IDENTITY, DIR_INGRESS);

	if ((void *)(eth + 1) > ctx_data_end(skb))
		return drop(skb, DROP_TRUNCATED, DIR_INGRESS);
	if (eth->h_proto != const_htons(ETH_P_IP))
		return verdict(skb, TC_ACT_OK, REASON_HOST_PASS, DIR_INGRESS);
	ip = ipv4_header(skb, &reason);
	if (!ip)
		return drop(skb, reason, DIR_INGRESS);
	ret = ipv4_flow_parse(skb, ip, &flow);
	if (ret)
		return drop(skb, ret, DIR_INGRESS);
	ret = ct_process(skb, &flow, CT_DIR_IN, 0, 0);
	if (ret)
		return drop(skb, ret, DIR_INGRESS);
	return deliver_to_pod(skb, flow.daddr, REASON_FROM_TUNNEL);
}
