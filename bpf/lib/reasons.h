/* Verdict reasons, shared by the datapath and user space.
 *
 * Every packet a Porin program handles is counted under exactly one reason
 * and direction in the metrics map. Reasons below 128 are successful
 * verdicts, 128 and above are drops. The agent and CLI parse this file for
 * the names: keep one `#define NAME value  // description` per line.
 */
#ifndef PORIN_REASONS_H
#define PORIN_REASONS_H

/* successful verdicts */
#define REASON_FORWARDED 0         // forwarded to a local endpoint
#define REASON_TO_STACK 1          // passed to the host stack
#define REASON_ARP_REPLY 2         // ARP request answered by the datapath
#define REASON_ARP_PASS 3          // ARP reply or announcement passed to the stack
/* 4 was REASON_IPV6_PASS: pods' IPv6 is dropped now (lib/ipv6.h) */
#define REASON_TTL_EXPIRED 5       // TTL exhausted, stack sends time-exceeded
#define REASON_MASQUERADED 6       // source translated to the node address
#define REASON_REV_SNAT 7          // reply to a masqueraded flow delivered to its pod
#define REASON_NODEPORT 8          // NodePort packet delivered to its backend
#define REASON_HOST_PASS 9         // not Porin's: passed to or from the node untouched
#define REASON_TUNNELED 10         // sent to another node through the overlay
#define REASON_FROM_TUNNEL 11      // received from another node through the overlay
#define REASON_XDP_PASS 12         // XDP: on to the tc path and the stack
#define REASON_XDP_ECHO 13         // XDP: ping of the node answered in place
#define REASON_NODEPORT_DSR 14     // NodePort packet sent to its backend's node in IPIP with DSR
#define REASON_DSR_IN 15           // DSR packet from a frontend node delivered to its backend
#define REASON_DSR_REPLY 16        // backend's reply sent straight to the client, as the frontend
#define REASON_NODEPORT_SNAT 17    // NodePort packet sent to a backend on another node, source translated
#define REASON_FRAG_UNKNOWN 18     // non-first fragment whose first was not seen: to the stack

/* drops */
#define FIRST_DROP_REASON 128 /* every reason from here on is a drop */
#define DROP_TRUNCATED 130         // truncated or malformed header
#define DROP_INVALID_SIP 131       // source IP is not the endpoint's
#define DROP_INVALID_SMAC 132      // source MAC is not the endpoint's
#define DROP_UNKNOWN_L3 133        // unsupported ethertype
#define DROP_INVALID_ARP 134       // malformed or non-IPv4 ARP
#define DROP_ARP_SPOOFED 135       // ARP sender is not the endpoint
#define DROP_IP_OPTIONS_BAD 136    // bad IPv4 version or header length
#define DROP_CSUM_FAILED 137       // checksum rewrite failed
#define DROP_REDIRECT_FAILED 138   // redirect to endpoint failed
#define DROP_NO_SERVICE_BACKEND 139 // service has no active backend (ICMP unreachable sent)
#define DROP_CT_CREATE_FAILED 140  // conntrack entry not created
#define DROP_NAT_FAILED 141        // address translation failed
#define DROP_NAT_MAP_FULL 143      // NAT table full: no new masqueraded flow
#define DROP_NAT_NO_PORT 144       // no free SNAT port towards that peer
#define DROP_NO_TUNNEL_KEY 145     // overlay packet without tunnel metadata
#define DROP_INVALID_IDENTITY 146  // overlay packet claims the host identity
#define DROP_UNKNOWN_NODE 147      // tunnel packet from an address that is no node
#define DROP_ENCAP_FAILED 148      // tunnel encapsulation failed
#define DROP_FRAG_NEEDED 149       // too big for the tunnel (ICMP frag-needed sent)
#define DROP_POLICY 150            // no policy rule allows it (the endpoint is isolated)
#define DROP_POLICY_DENY 151       // a policy deny rule matched
#define DROP_FORGED_TUNNEL 152     // overlay packet whose identity or source does not fit its node
#define DROP_POD_TO_OVERLAY 153    // a pod sent to the overlay's port of a node
#define DROP_PREFILTER 154         // XDP: source on the prefilter deny list
#define DROP_DSR_NO_BACKEND 155    // DSR packet for a backend that is not on this node
#define DROP_IPV6_NDP 156          // IPv6 neighbour discovery (RS, RA, NS, NA, redirect) on a pod's veth
#define DROP_IPV6_NOT_ROUTED 157   // IPv6 on a pod's veth: Porin does not route IPv6 yet
#define DROP_CT_MAP_FULL 158       // conntrack table of confirmed flows full: no new flow

/* directions, seen from the endpoint */
#define DIR_INGRESS 1              // towards the endpoint
#define DIR_EGRESS 2               // from the endpoint

#endif /* PORIN_REASONS_H */
