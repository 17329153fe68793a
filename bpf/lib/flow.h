/* The flow record: what the datapath knows about one packet after parsing,
 * for either address family (Katran's flow_key).
 *
 * Per-family parsers fill it (flow_parse4 in lib/ipv4.h; IPv6 next);
 * conntrack's state machine, service selection, metrics and policy read it
 * without caring about the family. Only wire-format code (header
 * validation, per-family map keys, address rewrites, ICMP generation)
 * looks at `family`.
 */
#ifndef PORIN_FLOW_H
#define PORIN_FLOW_H

#include "common.h"
/* before the flag names below: tcp.h has an enum of the same names */
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>
#include <uapi/linux/icmp.h>

#define FAMILY_IPV4 4
#define FAMILY_IPV6 6

union l3addr {
	__be32 v4;
	__be32 v6[4];
};

struct flow {
	union l3addr saddr;
	union l3addr daddr;
	__be16 sport;       /* ICMP echo: the echo id */
	__be16 dport;       /* ICMP echo reply: the echo id */
	__u8 family;        /* FAMILY_* */
	__u8 proto;         /* the L4 protocol */
	__u8 tcp_flags;     /* the byte at offset 13 of a TCP header */
	__u8 icmp_type;
	__u8 is_fragment;   /* a non-first fragment: no L4 header */
	__u8 pad;
	__u16 l3_off;       /* from the start of the frame */
	__u16 l4_off;
	__u16 pad2;
};

/* TCP flag bits as stored in conntrack. */
#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

/* A TCP SYN without ACK: someone opening a connection. */
static __always_inline int flow_is_syn(const struct flow *f)
{
	return f->proto == IPPROTO_TCP &&
	       (f->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
}

#endif /* PORIN_FLOW_H */
