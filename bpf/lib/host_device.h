/* The node's uplinks (config `devices`): ifindex -> the node address on it
 * and what the datapath does there. Written by the agent
 * (maps/host_devices.py); read by bpf_host.c and bpf_xdp.c. */
#ifndef PORIN_HOST_DEVICE_H
#define PORIN_HOST_DEVICE_H

#include "common.h"

#ifndef HOST_DEVICES_MAP_SIZE
#error "HOST_DEVICES_MAP_SIZE must be defined (daemon/datapath.py:build_flags passes it)"
#endif

struct host_device {
	__be32 node_ip;
	__u32 flags;
};

#define HOST_DEV_MASQUERADE 1

/* host_device_slots: the same, in an array by ifindex modulo its size, as
 * endpoint_slots is for endpoints: read on every packet of XDP and of the
 * uplinks' tc programs, an inlined array lookup (about 2 ns) where the hash
 * costs about 25. A slot holding another ifindex sends the lookup to the
 * hash. */
#ifndef HOST_DEVICE_SLOTS
#error "HOST_DEVICE_SLOTS must be defined (daemon/datapath.py:build_flags passes it)"
#endif
#if HOST_DEVICE_SLOTS & (HOST_DEVICE_SLOTS - 1)
#error "HOST_DEVICE_SLOTS must be a power of two"
#endif

struct host_device_slot {
	__u32 ifindex;
	struct host_device dev;
};

PORIN_MAP("hash", __u32, struct host_device, host_devices, HOST_DEVICES_MAP_SIZE);
PORIN_MAP("array", __u32, struct host_device_slot, host_device_slots, HOST_DEVICE_SLOTS);

/* The uplink `ifindex` is, or NULL. */
static __always_inline struct host_device *host_device_of(__u32 ifindex)
{
	__u32 idx = ifindex & (HOST_DEVICE_SLOTS - 1);
	struct host_device_slot *s = host_device_slots.lookup(&idx);

	if (s && s->ifindex == ifindex && ifindex)
		return &s->dev;
	return host_devices.lookup(&ifindex);
}

#endif /* PORIN_HOST_DEVICE_H */
