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

PORIN_MAP("hash", __u32, struct host_device, host_devices, HOST_DEVICES_MAP_SIZE);

#endif /* PORIN_HOST_DEVICE_H */
