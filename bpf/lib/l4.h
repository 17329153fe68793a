/* Layer-4 parsing, the same for either address family: ports, TCP flags
 * and ICMP echo ids into the flow record. */
#ifndef PORIN_L4_H
#define PORIN_L4_H

#include "common.h"
#include "reasons.h"
#include "flow.h"

#define TCP_CSUM_OFF offsetof(struct tcphdr, check)
#define UDP_CSUM_OFF offsetof(struct udphdr, check)

/* The L4 fields of `f` from the header at `l4` (f->proto set).
 * Returns 0 or DROP(DROP_TRUNCATED). */
static __always_inline int flow_parse_l4(struct flow *f, void *l4, void *data_end)
{
	switch (f->proto) {
	case IPPROTO_TCP: {
		struct tcphdr *tcp = l4;

		if ((void *)(tcp + 1) > data_end)
			return DROP(DROP_TRUNCATED);
		f->sport = tcp->source;
		f->dport = tcp->dest;
		f->tcp_flags = ((__u8 *)tcp)[13];
		break;
	}
	case IPPROTO_UDP: {
		struct udphdr *udp = l4;

		if ((void *)(udp + 1) > data_end)
			return DROP(DROP_TRUNCATED);
		f->sport = udp->source;
		f->dport = udp->dest;
		break;
	}
	case IPPROTO_ICMP: {
		struct icmphdr *icmp = l4;

		if ((void *)(icmp + 1) > data_end)
			return DROP(DROP_TRUNCATED);
		f->icmp_type = icmp->type;
		if (icmp->type == ICMP_ECHO)
			f->sport = icmp->un.echo.id;
		else if (icmp->type == ICMP_ECHOREPLY)
			f->dport = icmp->un.echo.id;
		break;
	}
	default:
		break;
	}
	return 0;
}

#endif /* PORIN_L4_H */
