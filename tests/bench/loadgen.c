/*
 * loadgen - the clients of make bench's stream workloads (W2, W4, W5).
 *
 *   loadgen -s SOCKET -p POOL -c CLIENTS -n STREAMS -i ITEMS
 *
 * CLIENTS threads open STREAMS streams in all, one at a time each, over
 * the daemon's plain protocol (doc/protocol.md): the header, ITEMS items
 * like {"n":12345,"s":"xxxxxxxxxxxxxxxx"}, a half-close, then every reply
 * up to the final line.  Every final line is checked: ok, all items
 * counted as consumed, and (for the sum plugin) the completion equal to
 * the sum of the n fields sent.  Each stream's latency runs from the
 * connect to the final line.  Prints one JSON object: counts, wall time,
 * streams/s and latency percentiles in microseconds.  Exits 1 if any
 * stream failed or lost an item.
 */
#include <sys/socket.h>
#include <sys/un.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

struct opts {
	const char	*sock;
	const char	*pool;
	unsigned	 clients;
	unsigned	 streams;
	unsigned	 items;
};

static struct opts o;
static atomic_uint next_stream;
static atomic_uint failed;
static atomic_uint lost;
static double *lat_us;			/* per stream */
static char first_error[512];
static pthread_mutex_t err_lock = PTHREAD_MUTEX_INITIALIZER;

static double
now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static void
note_error(unsigned idx, const char *what)
{
	atomic_fetch_add(&failed, 1);
	pthread_mutex_lock(&err_lock);
	if (first_error[0] == '\0')
		snprintf(first_error, sizeof first_error, "stream %u: %s", idx,
		    what);
	pthread_mutex_unlock(&err_lock);
}

static int
write_all(int fd, const char *p, size_t len)
{
	while (len > 0) {
		ssize_t w = send(fd, p, len, MSG_NOSIGNAL);
		if (w == -1 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		p += w;
		len -= (size_t)w;
	}
	return 0;
}

/* The request of stream idx in buf (header and items); its n total. */
static size_t
build(unsigned idx, char *buf, size_t cap, json_int_t *sum)
{
	size_t off;

	off = (size_t)snprintf(buf, cap, "{\"op\":\"submit\",\"pool\":\"%s\"}\n",
	    o.pool);
	*sum = 0;
	for (unsigned j = 0; j < o.items; j++) {
		unsigned n = (unsigned)(((uint64_t)idx * o.items + j) % 100000);
		off += (size_t)snprintf(buf + off, cap - off,
		    "{\"n\":%u,\"s\":\"xxxxxxxxxxxxxxxx\"}\n", n);
		*sum += n;
	}
	return off;
}

static void
check_final(unsigned idx, const char *line, json_int_t sum)
{
	json_error_t jerr;
	json_t *f = json_loads(line, 0, &jerr);
	char why[256];

	if (f == NULL) {
		note_error(idx, "the last reply is not JSON");
		return;
	}
	if (!json_is_true(json_object_get(f, "ok"))) {
		snprintf(why, sizeof why, "refused: %s", json_string_value(
		    json_object_get(f, "error")));
		note_error(idx, why);
	} else if (json_integer_value(json_object_get(f, "items")) !=
	    (json_int_t)o.items || json_integer_value(json_object_get(f,
	    "consumed")) != (json_int_t)o.items) {
		atomic_fetch_add(&lost, 1);
		note_error(idx, "items not all consumed");
	} else if (json_is_integer(json_object_get(f, "completion")) &&
	    json_integer_value(json_object_get(f, "completion")) != sum) {
		snprintf(why, sizeof why, "completion %" JSON_INTEGER_FORMAT
		    ", expected %" JSON_INTEGER_FORMAT, json_integer_value(
		    json_object_get(f, "completion")), sum);
		note_error(idx, why);
	}
	json_decref(f);
}

static void
one_stream(unsigned idx, char *buf, size_t cap, char *rbuf, size_t rcap)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	json_int_t sum;
	size_t len = build(idx, buf, cap, &sum), have = 0;
	double t0 = now_us();
	char *last;
	int fd;

	snprintf(sa.sun_path, sizeof sa.sun_path, "%s", o.sock);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd == -1 || connect(fd, (struct sockaddr *)&sa, sizeof sa) == -1) {
		note_error(idx, strerror(errno));
		if (fd != -1)
			close(fd);
		return;
	}
	if (write_all(fd, buf, len) == -1 || shutdown(fd, SHUT_WR) == -1) {
		note_error(idx, "write failed");
		close(fd);
		return;
	}
	for (;;) {
		ssize_t r = read(fd, rbuf + have, rcap - 1 - have);
		if (r == -1 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		have += (size_t)r;
		if (have == rcap - 1) {
			note_error(idx, "replies too long");
			close(fd);
			return;
		}
	}
	close(fd);
	lat_us[idx] = now_us() - t0;
	rbuf[have] = '\0';
	if (have == 0 || rbuf[have - 1] != '\n') {
		note_error(idx, "no final line");
		return;
	}
	rbuf[have - 1] = '\0';
	last = strrchr(rbuf, '\n');
	check_final(idx, last != NULL ? last + 1 : rbuf, sum);
}

static void *
client(void *arg)
{
	size_t cap = 256 + (size_t)o.items * 48, rcap = 1 << 16;
	char *buf = malloc(cap), *rbuf = malloc(rcap);
	unsigned idx;

	(void)arg;
	if (buf == NULL || rbuf == NULL) {
		perror("malloc");
		exit(2);
	}
	while ((idx = atomic_fetch_add(&next_stream, 1)) < o.streams)
		one_stream(idx, buf, cap, rbuf, rcap);
	free(buf);
	free(rbuf);
	return NULL;
}

static int
cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static double
pct(const double *v, size_t n, double p)
{
	size_t i = (size_t)(p / 100.0 * (double)(n - 1) + 0.5);

	return v[i < n ? i : n - 1];
}

static unsigned
num(const char *s, const char *what)
{
	char *end;
	unsigned long v = strtoul(s, &end, 10);

	if (*s == '\0' || *end != '\0' || v == 0 || v > 10000000) {
		fprintf(stderr, "loadgen: bad %s \"%s\"\n", what, s);
		exit(2);
	}
	return (unsigned)v;
}

int
main(int argc, char **argv)
{
	pthread_t *th;
	double t0, wall;
	int ch;

	o.clients = 1;
	o.streams = 1;
	o.items = 1;
	while ((ch = getopt(argc, argv, "s:p:c:n:i:")) != -1) {
		switch (ch) {
		case 's': o.sock = optarg; break;
		case 'p': o.pool = optarg; break;
		case 'c': o.clients = num(optarg, "client count"); break;
		case 'n': o.streams = num(optarg, "stream count"); break;
		case 'i': o.items = num(optarg, "item count"); break;
		default:
			fprintf(stderr, "usage: loadgen -s SOCKET -p POOL "
			    "[-c CLIENTS] [-n STREAMS] [-i ITEMS]\n");
			return 2;
		}
	}
	if (o.sock == NULL || o.pool == NULL) {
		fprintf(stderr, "loadgen: -s SOCKET and -p POOL are needed\n");
		return 2;
	}
	if ((lat_us = calloc(o.streams, sizeof *lat_us)) == NULL ||
	    (th = calloc(o.clients, sizeof *th)) == NULL) {
		perror("calloc");
		return 2;
	}
	t0 = now_us();
	for (unsigned i = 0; i < o.clients; i++)
		if ((errno = pthread_create(&th[i], NULL, client, NULL)) != 0) {
			perror("pthread_create");
			return 2;
		}
	for (unsigned i = 0; i < o.clients; i++)
		pthread_join(th[i], NULL);
	wall = (now_us() - t0) / 1e6;
	qsort(lat_us, o.streams, sizeof *lat_us, cmp_double);
	{
		json_t *out = json_pack("{s:I,s:I,s:I,s:I,s:I,s:f,s:f,s:f,s:f,"
		    "s:f,s:s}", "clients", (json_int_t)o.clients, "streams",
		    (json_int_t)o.streams, "items_per_stream",
		    (json_int_t)o.items, "failed",
		    (json_int_t)atomic_load(&failed), "lost",
		    (json_int_t)atomic_load(&lost), "seconds", wall,
		    "streams_per_s", (double)o.streams / wall, "p50_us",
		    pct(lat_us, o.streams, 50), "p99_us",
		    pct(lat_us, o.streams, 99), "max_us",
		    lat_us[o.streams - 1], "first_error", first_error);
		char *text = out != NULL ? json_dumps(out, JSON_COMPACT) : NULL;
		if (text == NULL) {
			fprintf(stderr, "loadgen: cannot format the summary\n");
			return 2;
		}
		printf("%s\n", text);
		free(text);
		json_decref(out);
	}
	free(lat_us);
	free(th);
	return atomic_load(&failed) == 0 ? 0 : 1;
}
