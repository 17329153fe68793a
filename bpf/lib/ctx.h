/* The packet context, whatever the hook.
 *
 * Parsing and lookup helpers take `struct __ctx_buff *` and read the packet
 * only through these accessors, so that an XDP program (which defines
 * PORIN_CTX_XDP before including common.h) compiles the same parsers,
 * endpoint, ipcache and service lookups and backend selection against
 * `struct xdp_md`. Rewrite, redirect and metadata helpers stay per hook.
 * Cilium does the same with lib/ctx/{skb,xdp}.h.
 */
#ifndef PORIN_CTX_H
#define PORIN_CTX_H

#ifdef PORIN_CTX_XDP
#define __ctx_buff xdp_md
#define CTX_DATA_OFF offsetof(struct xdp_md, data)
#define CTX_DATA_END_OFF offsetof(struct xdp_md, data_end)
#else
#define __ctx_buff __sk_buff
#define CTX_DATA_OFF offsetof(struct __sk_buff, data)
#define CTX_DATA_END_OFF offsetof(struct __sk_buff, data_end)
#endif

/* data and data_end, each read with one load from the context: otherwise
 * clang may keep &ctx->data in a register and dereference it later, which
 * the verifier refuses ("dereference of modified ctx ptr"). */
static __always_inline void *ctx_data(struct __ctx_buff *ctx)
{
	void *ptr;

	asm volatile("%0 = *(u32 *)(%1 + %2)" : "=r"(ptr) : "r"(ctx), "i"(CTX_DATA_OFF));
	return ptr;
}

static __always_inline void *ctx_data_end(struct __ctx_buff *ctx)
{
	void *ptr;

	asm volatile("%0 = *(u32 *)(%1 + %2)" : "=r"(ptr) : "r"(ctx), "i"(CTX_DATA_END_OFF));
	return ptr;
}

/* the hook's actions for "on to the stack" and "drop" (verdict_exit maps
 * the helpers' return convention to them) */
#ifdef PORIN_CTX_XDP
#define CTX_ACT_OK XDP_PASS
#define CTX_ACT_DROP XDP_DROP
#else
#define CTX_ACT_OK TC_ACT_OK
#define CTX_ACT_DROP TC_ACT_SHOT
#endif

#ifdef PORIN_CTX_XDP
/* bpf_xdp_load_bytes (kernel 5.18) is newer than bcc 0.26's helper list */
static long (*porin_xdp_load_bytes)(struct xdp_md *ctx, __u32 off, void *buf,
				    __u32 len) = (void *)189;

static __always_inline long ctx_load_bytes(struct xdp_md *ctx, __u32 off, void *buf, __u32 len)
{
	return porin_xdp_load_bytes(ctx, off, buf, len);
}

static __always_inline __u32 ctx_len(struct xdp_md *ctx)
{
	return ctx_data_end(ctx) - ctx_data(ctx);
}

static __always_inline __u32 ctx_ifindex(struct xdp_md *ctx)
{
	return ctx->ingress_ifindex;
}
#else
static __always_inline long ctx_load_bytes(struct __sk_buff *ctx, __u32 off, void *buf,
					   __u32 len)
{
	return bpf_skb_load_bytes(ctx, off, buf, len);
}

static __always_inline __u32 ctx_len(struct __sk_buff *ctx)
{
	return ctx->len;
}

static __always_inline __u32 ctx_ifindex(struct __sk_buff *ctx)
{
	return ctx->ifindex;
}
#endif

#endif /* PORIN_CTX_H */
