/* Layer-4 parsing: the flow tuple of an IPv4 packet. */
#ifndef PORIN_L4_H
#define PORIN_L4_H

#include "common.h"
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>
#include <uapi/linux/icmp.h>

#define TCP_CSUM_OFF offsetof(struct tcphdr, check)
#define UDP_CSUM_OFF offsetof(struct udphdr, check)

/* TCP flag bits as stored in conntrack (the byte at offset 13 of the header). */
#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

/* What the datapath knows about one IPv4 packet after parsing. */
struct ipv4_flow {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;       /* ICMP echo: the echo id */
	__be16 dport;       /* ICMP echo: 0 */
	__u8 proto;
	__u8 tcp_flags;
	__u8 icmp_type;
	__u8 is_fragment;   /* non-first fragment: no L4 header */
	__u32 l4_off;       /* from the start of the frame */
};

static __always_inline int ipv4_is_fragment(const struct iphdr *ip)
{
	return ip->frag_off & bpf_htons(0x1fff);
}

/* Fill `flow` from the packet; 0 on success, a drop reason otherwise. */
static __always_inline int ipv4_flow_parse(struct __sk_buff *skb, struct iphdr *ip,
					   struct ipv4_flow *flow)
{
	void *data_end = ctx_data_end(skb);
	void *l4 = (void *)ip + ip->ihl * 4;

	flow->saddr = ip->saddr;
	flow->daddr = ip->daddr;
	flow->proto = ip->protocol;
	flow->sport = 0;
	flow->dport = 0;
	flow->tcp_flags = 0;
	flow->icmp_type = 0;
	flow->l4_off = ETH_HLEN + ip->ihl * 4;
	flow->is_fragment = ipv4_is_fragment(ip) ? 1 : 0;
	if (flow->is_fragment)
		return 0;

	switch (ip->protocol) {
	case IPPROTO_TCP: {
		struct tcphdr *tcp = l4;

		if ((void *)(tcp + 1) > data_end)
			return DROP_TRUNCATED;
		flow->sport = tcp->source;
		flow->dport = tcp->dest;
		flow->tcp_flags = ((__u8 *)tcp)[13];
		break;
	}
	case IPPROTO_UDP: {
		struct udphdr *udp = l4;

		if ((void *)(udp + 1) > data_end)
			return DROP_TRUNCATED;
		flow->sport = udp->source;
		flow->dport = udp->dest;
		break;
	}
	case IPPROTO_ICMP: {
		struct icmphdr *icmp = l4;

		if ((void *)(icmp + 1) > data_end)
			return DROP_TRUNCATED;
		flow->icmp_type = icmp->type;
		if (icmp->type == ICMP_ECHO) {
			flow->sport = icmp->un.echo.id;
		} else if (icmp->type == ICMP_ECHOREPLY) {
			flow->dport = icmp->un.echo.id;
		}
		break;
	}
	default:
		break;
	}
	return 0;
}

static __always_inline int icmp_is_error(__u8 type)
{
	return type == ICMP_DEST_UNREACH || type == ICMP_TIME_EXCEEDED ||
	       type == ICMP_PARAMETERPROB || type == ICMP_SOURCE_QUENCH;
}

/* The tuple of the packet quoted inside an ICMP error (as its sender sent it). */
static __always_inline int icmp_inner_flow(struct __sk_buff *skb, const struct ipv4_flow *outer,
					   struct ipv4_flow *inner)
{
	void *data_end = ctx_data_end(skb);
	struct iphdr *ip = ctx_data(skb) + outer->l4_off + sizeof(struct icmphdr);
	__be16 *ports;

	if ((void *)(ip + 1) > data_end)
		return DROP_TRUNCATED;
	if (ip->ihl != 5)
		return DROP_IP_OPTIONS_BAD;
	ports = (void *)(ip + 1);
	if ((void *)(ports + 2) > data_end)
		return DROP_TRUNCATED;
	inner->saddr = ip->saddr;
	inner->daddr = ip->daddr;
	inner->proto = ip->protocol;
	inner->tcp_flags = 0;
	inner->is_fragment = 0;
	inner->l4_off = outer->l4_off + sizeof(struct icmphdr) + sizeof(struct iphdr);
	inner->icmp_type = 0;
	if (ip->protocol == IPPROTO_ICMP) {
		struct icmphdr *icmp = (void *)(ip + 1);

		if ((void *)(icmp + 1) > data_end)
			return DROP_TRUNCATED;
		inner->icmp_type = icmp->type;
		inner->sport = icmp->type == ICMP_ECHO ? icmp->un.echo.id : 0;
		inner->dport = icmp->type == ICMP_ECHOREPLY ? icmp->un.echo.id : 0;
	} else {
		inner->sport = ports[0];
		inner->dport = ports[1];
	}
	return 0;
}

#endif /* PORIN_L4_H */
