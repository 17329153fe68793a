/* Decision notes of the trace build (`porin trace`, daemon/trace.py).
 *
 * The agent compiles the same entry files a second time with -DPORIN_TRACE
 * and PIN_ROOT under <bpffsRoot>/trace: the trace build's maps are its own,
 * filled from copies of the live maps before each trace, so nothing a traced
 * packet does (conntrack and NAT entries, affinity, counters) reaches the
 * live datapath. Along the path the trace build writes what it decided into
 * the trace_notes ring, in order: the backend chosen and why, and where the
 * packet was sent (the redirect helpers, the tunnel key and the FIB lookups
 * are wrapped below). The verdict and the policy decisions come from the
 * trace build's own monitor ring (lib/monitor.h, every kind switched on),
 * written at the program's exit, after every note. The agent runs one packet
 * at a time (BPF_PROG_TEST_RUN), then drains both (daemon/trace.py).
 *
 * Notes stay out of verdict_exit and the policy path: there, on entry
 * programs close to the verifier's budget, they would cost more than the
 * monitor event that already says the same.
 *
 * In the live build every note is an empty statement: it costs nothing.
 */
#ifndef PORIN_TRACE_H
#define PORIN_TRACE_H

#define TRACE_LB 1          /* a: rev_nat, b: backend id (0: none usable), c: TRACE_LB_* */
#define TRACE_REDIRECT 2    /* a: ifindex, b: TRACE_REDIR_* */
#define TRACE_TUNNEL_KEY 3  /* a: remote (network order), b: tunnel id */
#define TRACE_FIB 4         /* a: result, b: ifindex, c: destination asked (network order) */

#define TRACE_LB_AFFINITY 1  /* the client's affinity entry */
#define TRACE_LB_PICKED 2    /* the service's algorithm (Maglev: the agent names the slot) */
#define TRACE_LB_FLOW 3      /* the NodePort flow table remembered it */

#define TRACE_REDIR_PLAIN 1  /* bpf_redirect: out of the device (XDP: XDP_REDIRECT) */
#define TRACE_REDIR_PEER 2   /* bpf_redirect_peer: into the namespace of the device's peer */
#define TRACE_REDIR_NEIGH 3  /* bpf_redirect_neigh: out of the device, L2 by the kernel */

struct trace_note {
	__u32 kind;
	__u32 a, b, c, d, e;
};

#ifdef PORIN_TRACE
struct trace_notes_table_t {
	int key;
	__u32 leaf;
	int (*ringbuf_output)(void *, __u64, __u64);
	void *(*ringbuf_reserve)(__u64);
	void (*ringbuf_discard)(void *, __u64);
	void (*ringbuf_submit)(void *, __u64);
	__u32 max_entries;
};
/* a ring buffer, not an array: one helper call per note and no branch, so
 * the notes add next to nothing to what the verifier has to follow */
__attribute__((section("maps/ringbuf:" PIN_ROOT "/trace_notes")))
struct trace_notes_table_t trace_notes = { .max_entries = 1 << 16 };

static __always_inline void trace_note(__u32 kind, __u32 a, __u32 b, __u32 c, __u32 d, __u32 e)
{
	struct trace_note n = { .kind = kind, .a = a, .b = b, .c = c, .d = d, .e = e };

	trace_notes.ringbuf_output(&n, sizeof(n), 0);
}

/* bcc declares the helpers as function pointers; each wrapper calls the
 * real one (the macros below are defined after the wrappers) */
static __always_inline long trace_redirect(__u32 ifindex, __u64 flags)
{
	trace_note(TRACE_REDIRECT, ifindex, TRACE_REDIR_PLAIN, 0, 0, 0);
	return bpf_redirect(ifindex, flags);
}

static __always_inline long trace_redirect_peer(__u32 ifindex, __u64 flags)
{
	trace_note(TRACE_REDIRECT, ifindex, TRACE_REDIR_PEER, 0, 0, 0);
	return bpf_redirect_peer(ifindex, flags);
}

static __always_inline long trace_set_tunnel_key(void *skb, struct bpf_tunnel_key *key,
						 __u32 size, __u64 flags)
{
	trace_note(TRACE_TUNNEL_KEY, __builtin_bswap32(key->remote_ipv4), key->tunnel_id, 0, 0, 0);
	return bpf_skb_set_tunnel_key(skb, key, size, flags);
}

static __always_inline long trace_fib_lookup(void *ctx, struct bpf_fib_lookup *fib, int plen,
					     __u32 flags)
{
	__be32 dst = fib->ipv4_dst;
	long ret = bpf_fib_lookup(ctx, fib, plen, flags);

	trace_note(TRACE_FIB, ret, fib->ifindex, dst, 0, 0);
	return ret;
}

#define bpf_redirect(i, f) trace_redirect(i, f)
#define bpf_redirect_peer(i, f) trace_redirect_peer(i, f)
#define bpf_skb_set_tunnel_key(s, k, l, f) trace_set_tunnel_key(s, k, l, f)
#define bpf_fib_lookup(c, p, l, f) trace_fib_lookup(c, p, l, f)
#define TRACE_NEIGH(ifindex) trace_note(TRACE_REDIRECT, ifindex, TRACE_REDIR_NEIGH, 0, 0, 0)
#else
#define trace_note(kind, a, b, c, d, e) do { } while (0)
#define TRACE_NEIGH(ifindex) do { } while (0)
#endif

#endif /* PORIN_TRACE_H */
