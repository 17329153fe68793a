/* Common includes, types and helpers for every Porin program.
 *
 * bcc compiles each entry file with node settings passed as -D flags by the
 * agent (see daemon/datapath.py); the defaults below only exist so a header
 * can be read on its own.
 */
#ifndef PORIN_COMMON_H
#define PORIN_COMMON_H

#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/if_arp.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/in.h>
#include <uapi/linux/pkt_cls.h>

#ifndef PIN_ROOT
#define PIN_ROOT "/sys/fs/bpf/porin"
#endif

#ifndef ENDPOINTS_MAP_SIZE
#define ENDPOINTS_MAP_SIZE 65536
#endif

/* A pinned map under the agent's bpffs root. Pins are reused across agent
 * restarts, which is what keeps restarts hitless. */
#define PORIN_MAP(type, key, value, name, size) \
	BPF_TABLE_PINNED(type, key, value, name, size, PIN_ROOT "/" #name)

#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif

/* bpf_htons() is not a constant expression under bcc; case labels need one. */
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define const_htons(x) ((__u16)((((x) & 0xff) << 8) | (((x) >> 8) & 0xff)))
#else
#define const_htons(x) ((__u16)(x))
#endif

/* skb->data and skb->data_end, each read with one load from the context:
 * otherwise clang may keep &skb->data in a register and dereference it
 * later, which the verifier refuses ("dereference of modified ctx ptr"). */
static __always_inline void *ctx_data(struct __sk_buff *skb)
{
	void *ptr;

	asm volatile("%0 = *(u32 *)(%1 + %2)"
		     : "=r"(ptr)
		     : "r"(skb), "i"(offsetof(struct __sk_buff, data)));
	return ptr;
}

static __always_inline void *ctx_data_end(struct __sk_buff *skb)
{
	void *ptr;

	asm volatile("%0 = *(u32 *)(%1 + %2)"
		     : "=r"(ptr)
		     : "r"(skb), "i"(offsetof(struct __sk_buff, data_end)));
	return ptr;
}

#endif /* PORIN_COMMON_H */
