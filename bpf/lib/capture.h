/* The first bytes of a packet, for the events of `porin monitor`
 * (lib/monitor.h) and of the flow log (lib/flowlog.h). */
#ifndef PORIN_CAPTURE_H
#define PORIN_CAPTURE_H

#include "common.h"

#define CAPTURE_BYTES 128 /* a power of two: the bound below is a mask */

/* Copy up to CAPTURE_BYTES of the packet from its start into `buf`; returns
 * how many were copied, 0 when the copy failed. */
static __always_inline __u16 capture_head(struct __ctx_buff *ctx, __u8 *buf)
{
	__u32 cap = ctx_len(ctx);

	if (cap >= CAPTURE_BYTES)
		cap = CAPTURE_BYTES;
	else /* 1..CAPTURE_BYTES-1 in a form the verifier can bound (len >= 14) */
		cap = ((cap - 1) & (CAPTURE_BYTES - 1)) + 1;
	return ctx_load_bytes(ctx, 0, buf, cap) == 0 ? cap : 0;
}

#endif /* PORIN_CAPTURE_H */
