/* Programs on the node's uplinks (the devices in the agent's config) and on
 * its loopback device.
 *
 *   from_netdev   tc ingress of an uplink: what arrives from the network
 *   to_netdev     tc egress of an uplink:  what the node sends out
 *   from_host_lo  tc ingress of lo: the node's own traffic to its addresses
 *
 * Packet path of from_netdev, top to bottom:
 *   1. not IPv4, or not addressed to this uplink's node IP -> stack (REASON_HOST_PASS)
 *   2. IPIP from a node of the cluster (else DROP_UNKNOWN_NODE) -> decapsulated,
 *      conntrack, delivered into the pod (REASON_FROM_TUNNEL)
 *   3. header and L4 tuple valid (DROP_TRUNCATED / DROP_IP_OPTIONS_BAD)
 *   3. ICMP error quoting a masqueraded flow -> translated back to the pod
 *      (outer destination, quoted source and port, checksums), delivered
 *   4. reply to a masqueraded flow (nat4 IN entry) -> destination back to the
 *      pod, conntrack accounted, delivered into the pod (REASON_REV_SNAT)
 *   5. NodePort frontend (node IP:port) -> backend from conntrack or chosen,
 *      DNAT, conntrack, delivered into the backend pod (REASON_NODEPORT); no
 *      active backend -> ICMP port unreachable back out (DROP_NO_SERVICE_BACKEND)
 *   6. otherwise -> stack (REASON_HOST_PASS)
 *
 * Packet path of to_netdev:
 *   1. not IPv4, or not from a local pod -> out untouched (REASON_HOST_PASS)
 *   2. destination in the non-masquerade CIDRs -> out untouched
 *   3. masquerade: source becomes the node IP and a NAT port (REASON_MASQUERADED;
 *      DROP_NAT_MAP_FULL / DROP_NAT_NO_PORT when no translation can be made)
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
#include "lib/snat.h"
#include "lib/ipcache.h"
#include "lib/tunnel.h"
#include "lib/lxc.h"

/* IPIP from another node: the outer source must be a node of the cluster;
 * the sender's identity is the ipcache's for the inner source. */
static __always_inline int handle_ipip(struct __sk_buff *skb, struct iphdr *outer)
{
	struct remote_endpoint_info *node;
	struct ipv4_flow flow;
	struct iphdr *ip;
	__u8 reason = 0;
	int ret;

	if (!tunnel_cfg())
		return verdict(skb, TC_ACT_OK, REASON_HOST_PASS, DIR_INGRESS);
	node = ipcache_lookup(outer->saddr);
	if (!node || !(node->flags & IPCACHE_F_NODE))
		return drop(skb, DROP_UNKNOWN_NODE, DIR_INGRESS);
	if (tunnel_ipip_decap(skb) < 0)
		return drop(skb, DROP_ENCAP_FAILED, DIR_INGRESS);
	ip = ipv4_header(skb, &reason);
	if (!ip)
		return drop(skb, reason, DIR_INGRESS);
	if (identity_of(ip->saddr) == IDENTITY_HOST)
		return drop(skb, DROP_INVALID_IDENTITY, DIR_INGRESS);
	ret = ipv4_flow_parse(skb, ip, &flow);
	if (ret)
		return drop(skb, ret, DIR_INGRESS);
	ret = ct_process(skb, &flow, CT_DIR_IN, 0, 0);
	if (ret)
		return drop(skb, ret, DIR_INGRESS);
	return deliver_to_pod(skb, flow.daddr, REASON_FROM_TUNNEL);
}

static __always_inline int handle_ipv4_from_netdev(struct __sk_buff *skb, __be32 node_ip)
{
	struct ipv4_flow flow;
	struct iphdr *ip;
	__u8 reason = 0, ct_flags = 0;
	__u16 rev_nat = 0;
	int icmp_sent = 0, ret;

	ip = ipv4_header(skb, &reason);
	if (!ip)
		return drop(skb, reason, DIR_INGRESS);
	if (ip->daddr != node_ip)
		return verdict(skb, TC_ACT_OK, REASON_HOST_PASS, DIR_INGRESS);
	if (ip->protocol == IPPROTO_IPIP)
		return handle_ipip(skb, ip);
	ret = ipv4_flow_parse(skb, ip, &flow);
	if (ret)
		return drop(skb, ret, DIR_INGRESS);
	/* the overlay's own packets go to the kernel's VXLAN device (the port is
	 * outside the SNAT and NodePort ranges, so no NAT or service lookup) */
	if (flow.proto == IPPROTO_UDP && flow.dport == bpf_htons(VXLAN_PORT))
		return verdict(skb, TC_ACT_OK, REASON_HOST_PASS, DIR_INGRESS);

	if (flow.proto == IPPROTO_ICMP && icmp_is_error(flow.icmp_type)) {
		ret = snat_icmp_error_ingress(skb, &flow);
		if (ret < 0)
			return drop(skb, -ret, DIR_INGRESS);
		if (ret > 0) {
			ct_process(skb, &flow, CT_DIR_IN, 0, 0);
			return deliver_to_pod(skb, flow.daddr, REASON_REV_SNAT);
		}
		return verdict(skb, TC_ACT_OK, REASON_HOST_PASS, DIR_INGRESS);
	}

	ret = snat_ingress(skb, &flow);
	if (ret < 0)
		return drop(skb, -ret, DIR_INGRESS);
	if (ret > 0) {
		ret = ct_process(skb, &flow, CT_DIR_IN, 0, 0);
		if (ret)
			return drop(skb, ret, DIR_INGRESS);
		return deliver_to_pod(skb, flow.daddr, REASON_REV_SNAT);
	}

	ret = lb4_dnat(skb, &flow, CT_DIR_IN, &rev_nat, &ct_flags, &icmp_sent);
	if (icmp_sent) {
		count_verdict(skb, DROP_NO_SERVICE_BACKEND, DIR_INGRESS);
		return bpf_redirect(skb->ifindex, 0);
	}
	if (ret)
		return drop(skb, ret, DIR_INGRESS);
	if (!rev_nat)
		return verdict(skb, TC_ACT_OK, REASON_HOST_PASS, DIR_INGRESS);
	ret = ct_process(skb, &flow, CT_DIR_IN, rev_nat, ct_flags);
	if (ret)
		return drop(skb, ret, DIR_INGRESS);
	return deliver_to_pod(skb, flow.daddr, REASON_NODEPORT);
}

int from_netdev(struct __sk_buff *skb)
{
	struct ethhdr *eth = ctx_data(skb);
	__u32 ifindex = skb->ifindex;
	struct host_device *dev;

	if ((void *)(eth + 1) > ctx_data_end(skb))
		return drop(skb, DROP_TRUNCATED, DIR_INGRESS);
	if (eth->h_proto != const_htons(ETH_P_IP))
		return verdict(skb, TC_ACT_OK, REASON_HOST_PASS, DIR_INGRESS);
	dev = host_devices.lookup(&ifindex);
	if (!dev)
		return verdict(skb, TC_ACT_OK, REASON_HOST_PASS, DIR_INGRESS);
	return handle_ipv4_from_netdev(skb, dev->node_ip);
}

int to_netdev(struct __sk_buff *skb)
{
	struct ethhdr *eth = ctx_data(skb);
	__u32 ifindex = skb->ifindex;
	struct host_device *dev;
	struct ipv4_flow flow;
	struct iphdr *ip;
	__u8 reason = 0;
	int ret;

	if ((void *)(eth + 1) > ctx_data_end(skb))
		return drop(skb, DROP_TRUNCATED, DIR_EGRESS);
	if (eth->h_proto != const_htons(ETH_P_IP))
		return verdict(skb, TC_ACT_OK, REASON_HOST_PASS, DIR_EGRESS);
	dev = host_devices.lookup(&ifindex);
	if (!dev || !(dev->flags & HOST_DEV_MASQUERADE))
		return verdict(skb, TC_ACT_OK, REASON_HOST_PASS, DIR_EGRESS);
	ip = ipv4_header(skb, &reason);
	if (!ip)
		return drop(skb, reason, DIR_EGRESS);
	if (!lookup_endpoint(ip->saddr) || !snat_wanted(ip->daddr))
		return verdict(skb, TC_ACT_OK, REASON_HOST_PASS, DIR_EGRESS);
	ret = ipv4_flow_parse(skb, ip, &flow);
	if (ret)
		return drop(skb, ret, DIR_EGRESS);
	if (flow.is_fragment)
		return drop(skb, DROP_FRAG_NOT_SUPPORTED, DIR_EGRESS);
	ret = snat_egress(skb, &flow, dev->node_ip);
	if (ret)
		return drop(skb, ret, DIR_EGRESS);
	return verdict(skb, TC_ACT_OK, REASON_MASQUERADED, DIR_EGRESS);
}

/* The node's own connections to its addresses loop through lo: a NodePort
 * frontend there is translated and delivered like one from the network. */
int from_host_lo(struct __sk_buff *skb)
{
	struct ethhdr *eth = ctx_data(skb);
	struct ipv4_flow flow;
	struct iphdr *ip;
	__u8 reason = 0, ct_flags = 0;
	__u16 rev_nat = 0;
	int icmp_sent = 0, ret;

	if ((void *)(eth + 1) > ctx_data_end(skb) || eth->h_proto != const_htons(ETH_P_IP))
		return TC_ACT_OK;
	ip = ipv4_header(skb, &reason);
	if (!ip || ip->protocol == IPPROTO_ICMP)
		return TC_ACT_OK;
	ret = ipv4_flow_parse(skb, ip, &flow);
	if (ret || !lb4_lookup_service(&flow))
		return TC_ACT_OK;
	ret = lb4_dnat(skb, &flow, CT_DIR_IN, &rev_nat, &ct_flags, &icmp_sent);
	if (icmp_sent) {
		count_verdict(skb, DROP_NO_SERVICE_BACKEND, DIR_INGRESS);
		return bpf_redirect(skb->ifindex, BPF_F_INGRESS);
	}
	if (ret)
		return drop(skb, ret, DIR_INGRESS);
	ret = ct_process(skb, &flow, CT_DIR_IN, rev_nat, ct_flags);
	if (ret)
		return drop(skb, ret, DIR_INGRESS);
	return deliver_to_pod(skb, flow.daddr, REASON_NODEPORT);
}
