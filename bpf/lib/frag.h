/* IPv4 fragments followed (Cilium's IPV4_FRAG_DATAGRAMS_MAP): a non-first
 * fragment has no L4 header, so the ports its first fragment carried are
 * remembered by datagram, and every fragment is balanced, tracked and
 * translated as its first was (rewrites of a fragment leave the L4 header
 * and checksum alone: they are in the first).
 *
 *   frag4  LRU {source, destination, IP id, protocol} -> {sport, dport}
 *
 * Each hook records and looks up the datagram as it sees it, so fragments
 * follow their first through the same hook. A fragment whose first was not
 * seen (reordered, or the entry aged out) is passed to the stack, counted
 * (REASON_FRAG_UNKNOWN), never dropped silently.
 */
#ifndef PORIN_FRAG_H
#define PORIN_FRAG_H

#include "common.h"
#include "flow.h"
#include "ipv4.h"

#ifndef FRAG4_MAP_SIZE
#error "FRAG4_MAP_SIZE must be defined (daemon/datapath.py:build_flags passes it)"
#endif

#define IP_MF_BIT 0x2000

struct frag4_key {
	__be32 saddr;
	__be32 daddr;
	__be16 id;
	__u8 proto;
	__u8 pad;
};

struct frag4_ports {
	__be16 sport;
	__be16 dport;
};

PORIN_MAP("lru_hash", struct frag4_key, struct frag4_ports, frag4, FRAG4_MAP_SIZE);

static __always_inline int frag4_key_of(struct __ctx_buff *ctx, const struct flow *f,
					struct frag4_key *key)
{
	struct iphdr *ip = ctx_data(ctx) + ETH_HLEN;

	if ((void *)(ip + 1) > ctx_data_end(ctx))
		return -1;
	key->saddr = f->saddr.v4;
	key->daddr = f->daddr.v4;
	key->id = ip->id;
	key->proto = f->proto;
	key->pad = 0;
	return (ip->frag_off & bpf_htons(IP_MF_BIT)) ? 1 : 0;
}

/* A first fragment (ports parsed, more to come): remember its ports. */
static __always_inline void frag4_note_first(struct __ctx_buff *ctx, const struct flow *f)
{
	struct frag4_ports ports = { .sport = f->sport, .dport = f->dport };
	struct frag4_key key;

	if (f->is_fragment || (f->proto != IPPROTO_TCP && f->proto != IPPROTO_UDP))
		return;
	if (frag4_key_of(ctx, f, &key) == 1)
		frag4.update(&key, &ports);
}

/* A non-first fragment: its first's ports into `f`. 0, or CTX_GO_ON when
 * its first was not seen (f unchanged). */
static __always_inline int frag4_follow(struct __ctx_buff *ctx, struct flow *f)
{
	struct frag4_ports *ports;
	struct frag4_key key;

	if (frag4_key_of(ctx, f, &key) < 0)
		return CTX_GO_ON;
	ports = frag4.lookup(&key);
	if (!ports)
		return CTX_GO_ON;
	f->sport = ports->sport;
	f->dport = ports->dport;
	return 0;
}

/* Any TCP or UDP packet: a first fragment's ports remembered, a non-first
 * fragment given its first's. 0, or CTX_GO_ON for a fragment whose first
 * was not seen. */
static __always_inline int frag4_track(struct __ctx_buff *ctx, struct flow *f)
{
	if (f->proto != IPPROTO_TCP && f->proto != IPPROTO_UDP)
		return 0;
	if (!f->is_fragment) {
		frag4_note_first(ctx, f);
		return 0;
	}
	return frag4_follow(ctx, f);
}

#endif /* PORIN_FRAG_H */
