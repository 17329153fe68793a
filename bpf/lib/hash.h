/* Bob Jenkins' lookup3 final mix (jhash), as Katran and the kernel use it. */
#ifndef PORIN_HASH_H
#define PORIN_HASH_H

#include "common.h"

#define JHASH_INITVAL 0xdeadbeef

static __always_inline __u32 porin_rol32(__u32 word, unsigned int shift)
{
	return (word << shift) | (word >> ((-shift) & 31));
}

#define __jhash_final(a, b, c)        \
	{                              \
		c ^= b;                \
		c -= porin_rol32(b, 14);     \
		a ^= c;                \
		a -= porin_rol32(c, 11);     \
		b ^= a;                \
		b -= porin_rol32(a, 25);     \
		c ^= b;                \
		c -= porin_rol32(b, 16);     \
		a ^= c;                \
		a -= porin_rol32(c, 4);      \
		b ^= a;                \
		b -= porin_rol32(a, 14);     \
		c ^= b;                \
		c -= porin_rol32(b, 24);     \
	}

static __always_inline __u32 jhash_3words(__u32 a, __u32 b, __u32 c, __u32 initval)
{
	a += JHASH_INITVAL + (3 << 2) + initval;
	b += JHASH_INITVAL + (3 << 2) + initval;
	c += JHASH_INITVAL + (3 << 2) + initval;
	__jhash_final(a, b, c);
	return c;
}

#endif /* PORIN_HASH_H */
