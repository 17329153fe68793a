#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/in.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/pkt_cls.h>

struct flow_key {
    __be32 saddr;
    __be32 daddr;
    __be16 sport;
    __be16 dport;
    __u8 proto;
    __u8 pad[3];
};

BPF_HASH(flows, struct flow_key, __u64, 1024);

int minimal(struct __sk_buff *skb)
{
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    struct iphdr *ip = data + sizeof(*eth);
    struct tcphdr *tcp;
    struct flow_key key = {};

    if ((void *)(ip + 1) > end)
        return TC_ACT_SHOT;
    if (eth->h_proto != bpf_htons(ETH_P_IP) || ip->ihl != 5 || ip->protocol != IPPROTO_TCP)
        return TC_ACT_SHOT;
    tcp = (void *)(ip + 1);
    if ((void *)(tcp + 1) > end)
        return TC_ACT_SHOT;
    key.saddr = ip->saddr;
    key.daddr = ip->daddr;
    key.sport = tcp->source;
    key.dport = tcp->dest;
    key.proto = ip->protocol;
    return flows.lookup(&key) ? TC_ACT_OK : TC_ACT_SHOT;
}

int empty(struct __sk_buff *skb)
{
    return TC_ACT_OK;
}
