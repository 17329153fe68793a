/* Security identities. Reserved ones are fixed; the rest are allocated
 * cluster-wide by the agents (through the kvstore) from endpoint labels. */
#ifndef PORIN_IDENTITY_H
#define PORIN_IDENTITY_H

#define IDENTITY_UNKNOWN 0
#define IDENTITY_HOST 1          /* the local node */
#define IDENTITY_WORLD 2         /* outside the cluster */
#define IDENTITY_REMOTE_NODE 6   /* another node of the cluster */
#define IDENTITY_FIRST_ALLOCATED 256

#endif /* PORIN_IDENTITY_H */
