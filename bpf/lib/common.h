/* Common includes, types and conventions for every Porin program.
 *
 * bcc compiles each entry file with node settings passed as -D flags by the
 * agent (daemon/datapath.py, sizes from daemon/map_specs.py). A size or
 * setting the agent did not pass is a compile error, never a silent default.
 *
 * Return convention of every helper that can end a packet's path (Cilium's
 * IS_ERR, Katran's FURTHER_PROCESSING):
 *   >= 0        a final TC/XDP action, the verdict's reason set in struct verdict
 *   CTX_GO_ON   nothing decided yet: the caller goes on
 *   < CTX_GO_ON DROP(reason): the packet is dropped for that reason (reasons.h)
 * A helper that only transforms a packet returns 0 or DROP(reason).
 * Helpers describe; only the entry program's exit (lib/verdict.h) counts.
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
#error "PIN_ROOT must be defined (the agent passes its bpffs root)"
#endif

#define CTX_GO_ON (-1)
#define IS_ERR(ret) ((ret) < CTX_GO_ON)
#define DROP(reason) (-(int)(reason))

/* A pinned map under the agent's bpffs root. Pins are reused across agent
 * restarts, which is what keeps restarts hitless. Every map is declared
 * through one of these two; daemon/map_specs.py passes its size. */
#define PORIN_MAP(type, key, value, name, size) \
	BPF_TABLE_PINNED(type, key, value, name, size, PIN_ROOT "/" #name)
#define PORIN_MAP_F(type, key, value, name, size, flags) \
	BPF_TABLE_PINNED(type, key, value, name, size, PIN_ROOT "/" #name, flags)

#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif

/* bpf_htons() is not a constant expression under bcc; case labels need one. */
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define const_htons(x) ((__u16)((((x) & 0xff) << 8) | (((x) >> 8) & 0xff)))
#else
#define const_htons(x) ((__u16)(x))
#endif

#include "ctx.h"
#include "trace.h"

#endif /* PORIN_COMMON_H */
