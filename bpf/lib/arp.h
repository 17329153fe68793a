/* ARP responder: a pod's ARP requests are answered with the MAC of its
 * host-side veth, so the pod's gateway (and anything else it may ARP for)
 * resolves to the datapath without static neighbour entries. */
#ifndef PORIN_ARP_H
#define PORIN_ARP_H

#include "common.h"
#include "eth.h"
#include "endpoint.h"
#include "reasons.h"
#include "verdict.h"

struct arp_eth_ipv4 {
	__u8 sha[ETH_ALEN];
	__be32 sip;
	__u8 tha[ETH_ALEN];
	__be32 tip;
} __attribute__((packed));

struct arp_packet {
	struct ethhdr eth;
	struct arphdr arp;
	struct arp_eth_ipv4 body;
} __attribute__((packed));

static __always_inline int arp_is_ipv4_over_eth(const struct arphdr *arp)
{
	return arp->ar_hrd == bpf_htons(ARPHRD_ETHER) && arp->ar_pro == bpf_htons(ETH_P_IP) &&
	       arp->ar_hln == ETH_ALEN && arp->ar_pln == 4;
}

/* Turn the request in place into the reply and send it back out of the
 * interface it came from. */
static __always_inline int arp_respond(struct __sk_buff *skb, struct arp_packet *p,
				       const __u8 *mac, struct verdict *v)
{
	__be32 sip = p->body.sip;
	__be32 tip = p->body.tip;

	eth_rewrite(&p->eth, p->body.sha, mac);
	p->arp.ar_op = bpf_htons(ARPOP_REPLY);
	mac_copy(p->body.tha, p->body.sha);
	p->body.tip = sip;
	mac_copy(p->body.sha, mac);
	p->body.sip = tip;
	v->reason = REASON_ARP_REPLY;
	return bpf_redirect(skb->ifindex, 0);
}

/* ARP from a pod: validate the sender, answer requests, pass the rest. */
static __always_inline int handle_arp_from_endpoint(struct __sk_buff *skb, struct verdict *v)
{
	struct arp_packet *p = ctx_data(skb);
	struct endpoint_info *ep;

	if ((void *)(p + 1) > ctx_data_end(skb))
		return DROP(DROP_TRUNCATED);
	if (!arp_is_ipv4_over_eth(&p->arp))
		return DROP(DROP_INVALID_ARP);

	ep = lookup_endpoint(p->body.sip);
	if (!ep || ep->ifindex != skb->ifindex || !mac_equal(ep->mac, p->body.sha) ||
	    !mac_equal(ep->mac, p->eth.h_source))
		return DROP(DROP_ARP_SPOOFED);
	v->ep_id = ep->ep_id;
	v->src_identity = ep->sec_identity;

	if (p->arp.ar_op == bpf_htons(ARPOP_REQUEST) && p->body.tip != p->body.sip)
		return arp_respond(skb, p, ep->node_mac, v);
	v->reason = REASON_ARP_PASS;
	return TC_ACT_OK;
}

#endif /* PORIN_ARP_H */
