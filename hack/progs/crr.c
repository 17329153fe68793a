#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define BUCKET_US 2
#define NBUCKETS 500000 /* 1 s */
#define MAX_PEERS 64

static unsigned hist[NBUCKETS + 1];

static double now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec * 1e-9;
}

static void set_timeouts(int fd, int sec)
{
	struct timeval tv = { .tv_sec = sec };

	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)); /* bounds connect() too */
}

static int addr_of(const char *ip, int port, struct sockaddr_in *a)
{
	memset(a, 0, sizeof(*a));
	a->sin_family = AF_INET;
	a->sin_port = htons(port);
	if (inet_pton(AF_INET, ip, &a->sin_addr) != 1) {
		fprintf(stderr, "bad address %s\n", ip);
		return -1;
	}
	return 0;
}

static int serve(int port)
{
	static struct { in_addr_t addr; unsigned long n; } peers[MAX_PEERS];
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };
	int npeers = 0, one = 1, s = socket(AF_INET, SOCK_STREAM, 0);

	setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(s, (struct sockaddr *)&a, sizeof(a)) || listen(s, 4096)) {
		perror("bind/listen");
		return 1;
	}
	printf("ready\n");
	fflush(stdout);
	for (;;) {
		struct sockaddr_in p;
		socklen_t plen = sizeof(p);
		char b, out[4096];
		int c = accept(s, (struct sockaddr *)&p, &plen), i, len;

		if (c < 0)
			continue;
		for (i = 0; i < npeers && peers[i].addr != p.sin_addr.s_addr; i++)
			;
		if (i == npeers && npeers < MAX_PEERS)
			peers[npeers++].addr = p.sin_addr.s_addr;
		if (i < npeers)
			peers[i].n++;
		setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		set_timeouts(c, 5);
		while (read(c, &b, 1) == 1) {
			if (b == '?') {
				len = snprintf(out, sizeof(out), "{");
				for (i = 0; i < npeers; i++) {
					struct in_addr ia = { .s_addr = peers[i].addr };

					len += snprintf(out + len, sizeof(out) - len, "%s\"%s\": %lu",
							i ? ", " : "", inet_ntoa(ia), peers[i].n);
				}
				len += snprintf(out + len, sizeof(out) - len, "}\n");
				if (write(c, out, len) != len)
					perror("write");
				break;
			}
			if (write(c, &b, 1) != 1)
				break;
		}
		close(c);
	}
}

static int one_conn(const struct sockaddr_in *a, int *err)
{
	char b = 'x';
	int ok, s = socket(AF_INET, SOCK_STREAM, 0);

	if (s < 0) {
		*err = errno;
		return -1;
	}
	set_timeouts(s, 3);
	errno = 0;
	ok = connect(s, (const struct sockaddr *)a, sizeof(*a)) == 0 && write(s, &b, 1) == 1 &&
		read(s, &b, 1) == 1 && b == 'x';
	if (!ok) {
		struct sockaddr_in me = {};
		socklen_t len = sizeof(me);

		*err = errno ? errno : EPROTO;
		getsockname(s, (struct sockaddr *)&me, &len);
		fprintf(stderr, "failed: local port %d: %s\n", ntohs(me.sin_port), strerror(*err));
	}
	close(s);
	return ok ? 0 : -1;
}

static double percentile(unsigned long n, double q)
{
	unsigned long want = (unsigned long)(q * n), seen = 0;

	for (int i = 0; i <= NBUCKETS; i++) {
		seen += hist[i];
		if (seen > want)
			return (i + 0.5) * BUCKET_US;
	}
	return (double)NBUCKETS * BUCKET_US;
}

static int client(const char *ip, int port, double duration)
{
	unsigned long ok = 0, errors = 0, stalls = 0;
	int err = 0;
	struct sockaddr_in a;
	double start, last;

	if (addr_of(ip, port, &a))
		return 2;
	for (int i = 0; i < 50; i++) /* warm-up: neighbour entries, caches */
		if (one_conn(&a, &err))
			break;
	start = last = now();
	while (last - start < duration) {
		int r = one_conn(&a, &err);
		double t = now(), us = (t - last) * 1e6;

		if (r == 0) {
			ok++;
			hist[us < NBUCKETS * BUCKET_US ? (int)(us / BUCKET_US) : NBUCKETS]++;
		} else {
			errors++;
		}
		if (us > 200000) /* a lost SYN costs a 1 s retransmit */
			stalls++;
		last = t;
	}
	printf("{\"ok\": %lu, \"errors\": %lu, \"stalls\": %lu, \"seconds\": %.6f, "
		"\"p50_us\": %.1f, \"p99_us\": %.1f}\n",
		ok, errors, stalls, last - start, percentile(ok, 0.5), percentile(ok, 0.99));
	return 0;
}

/* one connection, 1-byte request/response for `duration` seconds */
static int rr(const char *ip, int port, double duration)
{
	unsigned long ok = 0;
	struct sockaddr_in a;
	int one = 1, s = socket(AF_INET, SOCK_STREAM, 0);
	double start, last;
	char b = 'r';

	if (addr_of(ip, port, &a))
		return 2;
	set_timeouts(s, 3);
	setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (connect(s, (struct sockaddr *)&a, sizeof(a))) {
		perror("connect");
		return 1;
	}
	for (int i = 0; i < 200; i++) /* warm-up */
		if (write(s, &b, 1) != 1 || read(s, &b, 1) != 1)
			return 1;
	start = last = now();
	while (last - start < duration) {
		double t;

		if (write(s, &b, 1) != 1 || read(s, &b, 1) != 1) {
			fprintf(stderr, "rr: %s\n", strerror(errno));
			break;
		}
		t = now();
		double us = (t - last) * 1e6;
		hist[us < NBUCKETS * BUCKET_US ? (int)(us / BUCKET_US) : NBUCKETS]++;
		ok++;
		last = t;
	}
	close(s);
	printf("{\"ok\": %lu, \"errors\": 0, \"stalls\": 0, \"seconds\": %.6f, "
	       "\"p50_us\": %.1f, \"p99_us\": %.1f}\n",
	       ok, last - start, percentile(ok, 0.5), percentile(ok, 0.99));
	return 0;
}

static int stats(const char *ip, int port)
{
	struct sockaddr_in a;
	char buf[4096];
	int s = socket(AF_INET, SOCK_STREAM, 0);
	ssize_t n;

	if (addr_of(ip, port, &a))
		return 2;
	set_timeouts(s, 3);
	if (connect(s, (struct sockaddr *)&a, sizeof(a)) || write(s, "?", 1) != 1) {
		perror("stats");
		return 1;
	}
	while ((n = read(s, buf, sizeof(buf))) > 0)
		fwrite(buf, 1, n, stdout);
	close(s);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 3 && !strcmp(argv[1], "server"))
		return serve(atoi(argv[2]));
	if (argc == 5 && !strcmp(argv[1], "client"))
		return client(argv[2], atoi(argv[3]), atof(argv[4]));
	if (argc == 5 && !strcmp(argv[1], "rr"))
		return rr(argv[2], atoi(argv[3]), atof(argv[4]));
	if (argc == 4 && !strcmp(argv[1], "stats"))
		return stats(argv[2], atoi(argv[3]));
	fprintf(stderr, "usage: crr server PORT | client IP PORT SECONDS | rr IP PORT SECONDS | "
		"stats IP PORT\n");
	return 2;
}
