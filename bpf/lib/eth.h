/* Ethernet helpers. */
#ifndef PORIN_ETH_H
#define PORIN_ETH_H

#include "common.h"

static __always_inline int mac_equal(const __u8 *a, const __u8 *b)
{
	return ((*(__u32 *)a) == (*(__u32 *)b)) &&
	       ((*(__u16 *)(a + 4)) == (*(__u16 *)(b + 4)));
}

static __always_inline void mac_copy(__u8 *dst, const __u8 *src)
{
	*(__u32 *)dst = *(__u32 *)src;
	*(__u16 *)(dst + 4) = *(__u16 *)(src + 4);
}

/* Rewrite both MACs of a frame being routed to `dst` from `src`. */
static __always_inline void eth_rewrite(struct ethhdr *eth, const __u8 *dst, const __u8 *src)
{
	mac_copy(eth->h_dest, dst);
	mac_copy(eth->h_source, src);
}

#endif /* PORIN_ETH_H */
