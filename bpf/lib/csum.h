/* Internet checksum arithmetic (RFC 1071, RFC 1624), one copy for every user. */
#ifndef PORIN_CSUM_H
#define PORIN_CSUM_H

#include "common.h"

/* Fold a 32-bit one's complement sum to 16 bits. */
static __always_inline __u16 csum_fold32(__u32 c)
{
	c = (c & 0xffff) + (c >> 16);
	c = (c & 0xffff) + (c >> 16);
	return (__u16)c;
}

/* The checksum field for a sum: its folded complement. */
static __always_inline __u16 csum_finish(__u32 c)
{
	return (__u16)~csum_fold32(c);
}

/* A checksum field `check` updated in place for a 16-bit word old -> new. */
static __always_inline __u16 csum_replace16(__u16 check, __u16 old, __u16 new)
{
	return csum_finish((__u16)~check + (__u16)~old + new);
}

/* The same for a 32-bit word (an IPv4 address), as stored. */
static __always_inline __u16 csum_replace32(__u16 check, __u32 old, __u32 new)
{
	__u32 sum = (__u16)~check;

	sum += (__u16)~(old & 0xffff) + (__u16)~(old >> 16);
	sum += (new & 0xffff) + (new >> 16);
	return csum_finish(sum);
}

#endif /* PORIN_CSUM_H */
