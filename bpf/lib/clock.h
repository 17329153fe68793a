/* The datapath's clock: whole seconds of CLOCK_MONOTONIC, which is what
 * conntrack and NAT entries store and what user space compares them with.
 *
 * It is read from the kernel's tick counter (bpf_jiffies64(), a plain load)
 * rather than bpf_ktime_get_ns(), which costs about 30 ns a call on a VM.
 * The agent passes the kernel's HZ at build time (daemon/jiffies.py).
 * jiffies_64 starts at INITIAL_JIFFIES, (unsigned int)(-300 * HZ), so that
 * 32-bit jiffies wrap five minutes after boot; taking it away gives ticks
 * since boot. The result follows CLOCK_MONOTONIC to within a tick plus the
 * sub-second delay before the first tick at boot.
 */
#ifndef PORIN_CLOCK_H
#define PORIN_CLOCK_H

#include "common.h"

#ifndef KERNEL_HZ
#error "KERNEL_HZ must be defined (the agent passes the running kernel's HZ)"
#endif

#define INITIAL_JIFFIES64 ((__u64)(__u32)(-300 * KERNEL_HZ))

static __always_inline __u32 now_seconds(void)
{
	return (bpf_jiffies64() - INITIAL_JIFFIES64) / KERNEL_HZ;
}

#endif /* PORIN_CLOCK_H */
