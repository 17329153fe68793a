/* flood IP PORT SECONDS: UDP datagrams of 64 bytes to IP:PORT as fast as one
 * CPU sends them (sendmmsg, batches of 64); prints {"sent": N, "seconds": S}. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define BATCH 64

static double now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	struct mmsghdr msgs[BATCH];
	struct iovec iov[BATCH];
	char payload[64];
	unsigned long sent = 0;
	double start, duration;
	int s;

	if (argc != 4) {
		fprintf(stderr, "usage: flood IP PORT SECONDS\n");
		return 2;
	}
	a.sin_port = htons(atoi(argv[2]));
	if (inet_pton(AF_INET, argv[1], &a.sin_addr) != 1)
		return 2;
	duration = atof(argv[3]);
	s = socket(AF_INET, SOCK_DGRAM, 0);
	if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof(a))) {
		perror("socket");
		return 1;
	}
	memset(payload, 'f', sizeof(payload));
	memset(msgs, 0, sizeof(msgs));
	for (int i = 0; i < BATCH; i++) {
		iov[i].iov_base = payload;
		iov[i].iov_len = sizeof(payload);
		msgs[i].msg_hdr.msg_iov = &iov[i];
		msgs[i].msg_hdr.msg_iovlen = 1;
	}
	start = now();
	while (now() - start < duration) {
		int n = sendmmsg(s, msgs, BATCH, 0);

		if (n > 0)
			sent += n;
	}
	printf("{\"sent\": %lu, \"seconds\": %.6f}\n", sent, now() - start);
	return 0;
}
