/*
 * consumers - the command-line client of consumersd.
 *
 *   consumers [-s socket] submit [-w workers] [-p params] POOL [FILE...]
 *
 * streams NDJSON from the files (or standard input) to a pool, reports
 * rejected items on stderr, prints the daemon's final line on stdout and
 * exits 0 only when the stream completed with nothing rejected or
 * quarantined and no consumer error.  It sends and reads at once, so replies never back up.
 */
#include <sys/socket.h>
#include <sys/un.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#ifndef CNS_DEFAULT_SOCKET
#define CNS_DEFAULT_SOCKET "/run/consumersd/consumersd.sock"
#endif

#define CHUNK		(256u << 10)
#define LINE_MAX_REPLY	(512u << 20)	/* a final line with big results */

enum { EXIT_CLEAN = 0, EXIT_STREAM = 1, EXIT_LOCAL = 2 };

static const char *prog = "consumers";

static _Noreturn void
usage(void)
{
	fprintf(stderr,
	    "usage: %s [-s socket] submit [-w workers] [-p params] POOL "
	    "[FILE...]\n"
	    "       %s -V\n"
	    "The socket is -s, else $CONSUMERS_SOCKET, else %s.\n",
	    prog, prog, CNS_DEFAULT_SOCKET);
	exit(EXIT_LOCAL);
}

static _Noreturn void
die(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static _Noreturn void
die(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "%s: ", prog);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(EXIT_LOCAL);
}

static int
connect_to(const char *path)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	int fd;

	if (strlen(path) >= sizeof sun.sun_path)
		die("socket path %s is too long", path);
	strcpy(sun.sun_path, path);
	if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) == -1)
		die("socket: %s", strerror(errno));
	if (connect(fd, (struct sockaddr *)&sun, sizeof sun) == -1)
		die("cannot connect to consumersd at %s: %s (is the daemon "
		    "running? use -s or $CONSUMERS_SOCKET to name its socket)",
		    path, strerror(errno));
	return fd;
}

/* Replies from the daemon, split into lines. */
struct replies {
	char	*buf;
	size_t	 len, cap;
	json_t	*final;
	int	 eof;
};

static void
handle_line(struct replies *r, const char *line, size_t len)
{
	json_error_t err;
	json_t *v = json_loadb(line, len, 0, &err), *rej;

	if (v == NULL)
		die("the daemon sent a line that is not JSON: %s", err.text);
	/* An event carries an object under its name; the final line has
	 * counts under the same names, and "ok". */
	if (json_is_object(rej = json_object_get(v, "rejected"))) {
		fprintf(stderr, "%s: item %lld rejected: %s\n", prog,
		    (long long)json_integer_value(json_object_get(rej, "seq")),
		    json_string_value(json_object_get(rej, "error")));
		json_decref(v);
		return;
	}
	if (json_is_object(rej = json_object_get(v, "quarantined"))) {
		char *item = json_dumps(json_object_get(rej, "item"),
		    JSON_COMPACT | JSON_ENCODE_ANY);
		fprintf(stderr, "%s: item %lld quarantined: %s: %.200s\n", prog,
		    (long long)json_integer_value(json_object_get(rej, "seq")),
		    json_string_value(json_object_get(rej, "reason")),
		    item != NULL ? item : "?");
		free(item);
		json_decref(v);
		return;
	}
	if (json_is_false(json_object_get(v, "ok")) ||
	    json_object_get(v, "items") != NULL) {
		json_decref(r->final);
		r->final = v;
		return;
	}
	json_decref(v);
}

/* Read what is there; returns -1 at EOF. */
static int
read_replies(int fd, struct replies *r)
{
	char *nl, *start;
	ssize_t n;

	if (r->cap - r->len < CHUNK) {
		r->cap = r->cap ? r->cap * 2 : 2 * CHUNK;
		if (r->cap > LINE_MAX_REPLY)
			die("a reply line is longer than %u bytes",
			    LINE_MAX_REPLY);
		if ((r->buf = realloc(r->buf, r->cap)) == NULL)
			die("out of memory");
	}
	n = read(fd, r->buf + r->len, r->cap - r->len);
	if (n == -1) {
		if (errno == EAGAIN || errno == EINTR)
			return 0;
		if (errno == ECONNRESET) {
			r->eof = 1;
			return -1;
		}
		die("read from the daemon: %s", strerror(errno));
	}
	if (n == 0) {
		r->eof = 1;
		return -1;
	}
	r->len += (size_t)n;
	start = r->buf;
	while ((nl = memchr(start, '\n', r->len - (size_t)(start - r->buf)))) {
		handle_line(r, start, (size_t)(nl - start));
		start = nl + 1;
	}
	r->len -= (size_t)(start - r->buf);
	memmove(r->buf, start, r->len);
	return 0;
}

/* The item source: the files in turn, each ending in a newline. */
struct source {
	char	**files;
	int	*fds;		/* all opened before anything is sent */
	int	 nfiles, cur;
	char	 last;		/* last byte read from the current file */
};

static void
source_open_all(struct source *s)
{
	if ((s->fds = calloc((size_t)s->nfiles, sizeof *s->fds)) == NULL)
		die("out of memory");
	for (int i = 0; i < s->nfiles; i++) {
		const char *f = s->files[i];
		if (strcmp(f, "-") == 0)
			s->fds[i] = STDIN_FILENO;
		else if ((s->fds[i] = open(f, O_RDONLY | O_CLOEXEC)) == -1)
			die("%s: %s", f, strerror(errno));
	}
	s->last = '\n';
}

/* Fill `buf` with up to `cap` bytes of items; 0 when all are sent. */
static size_t
source_read(struct source *s, char *buf, size_t cap)
{
	for (;;) {
		ssize_t n;

		if (s->cur >= s->nfiles)
			return 0;
		n = read(s->fds[s->cur], buf, cap);
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1)
			die("%s: %s", s->files[s->cur], strerror(errno));
		if (n > 0) {
			s->last = buf[n - 1];
			return (size_t)n;
		}
		if (s->fds[s->cur] != STDIN_FILENO)
			close(s->fds[s->cur]);
		s->cur++;
		if (s->last != '\n') {
			/* Files are joined line by line, never mid-line. */
			s->last = '\n';
			buf[0] = '\n';
			return 1;
		}
	}
}

static int
submit(const char *sockpath, int argc, char **argv)
{
	static char *stdin_only[] = { "-" };
	struct source src = { 0 };
	struct replies r = { 0 };
	json_t *header, *params = NULL, *rejected, *errors;
	const char *pool;
	static char *out;	/* static: still reachable if die() exits */
	char *hs;
	size_t outlen = 0, outoff = 0;
	unsigned long long sent_bytes = 0;
	time_t last_progress = 0;
	int fd, ch, workers = 0, sending = 1, status;

	optind = 1;
	while ((ch = getopt(argc, argv, "p:w:")) != -1) {
		switch (ch) {
		case 'p': {
			json_error_t err;
			json_decref(params);
			params = json_loads(optarg, JSON_DECODE_ANY, &err);
			if (params == NULL)
				die("-p: params must be JSON: %s", err.text);
			break;
		}
		case 'w': {
			char *end;
			long w = strtol(optarg, &end, 10);
			if (*optarg == '\0' || *end != '\0' || w < 1 ||
			    w > 1000000)
				die("-w: workers must be a positive integer, "
				    "not \"%s\"", optarg);
			workers = (int)w;
			break;
		}
		default:
			usage();
		}
	}
	argc -= optind;
	argv += optind;
	if (argc < 1)
		usage();
	pool = argv[0];
	src.files = argc > 1 ? argv + 1 : stdin_only;
	src.nfiles = argc > 1 ? argc - 1 : 1;
	source_open_all(&src);

	header = json_pack("{s:s,s:s}", "op", "submit", "pool", pool);
	if (workers > 0)
		json_object_set_new(header, "workers", json_integer(workers));
	if (params != NULL)
		json_object_set_new(header, "params", params);
	hs = json_dumps(header, JSON_COMPACT);
	json_decref(header);
	if (hs == NULL || (out = malloc(CHUNK + 1)) == NULL)
		die("out of memory");
	outlen = (size_t)snprintf(out, CHUNK + 1, "%s\n", hs);
	free(hs);
	if (outlen > CHUNK)
		die("the header is too long");
	/* Connect last: die() after this point leaves nothing allocated
	 * that the exit does not take back. */
	fd = connect_to(sockpath);
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);

	while (!r.eof) {
		struct pollfd pfd = { .fd = fd, .events = POLLIN };

		if (sending && outoff == outlen) {
			outoff = 0;
			outlen = source_read(&src, out, CHUNK);
			if (outlen == 0) {
				shutdown(fd, SHUT_WR);
				sending = 0;
			}
		}
		if (sending)
			pfd.events |= POLLOUT;
		if (poll(&pfd, 1, -1) == -1) {
			if (errno == EINTR)
				continue;
			die("poll: %s", strerror(errno));
		}
		if (pfd.revents & (POLLIN | POLLHUP | POLLERR))
			read_replies(fd, &r);
		if (sending && (pfd.revents & POLLOUT)) {
			ssize_t n = write(fd, out + outoff, outlen - outoff);
			if (n == -1 && (errno == EPIPE ||
			    errno == ECONNRESET)) {
				/* The daemon ended the stream early: its
				 * final line says why. */
				sending = 0;
			} else if (n == -1 && errno != EAGAIN &&
			    errno != EINTR)
				die("write to the daemon: %s", strerror(errno));
			else if (n > 0) {
				outoff += (size_t)n;
				sent_bytes += (unsigned long long)n;
			}
		}
		if (isatty(STDERR_FILENO) && time(NULL) != last_progress) {
			last_progress = time(NULL);
			fprintf(stderr, "\r%s: %llu bytes sent", prog,
			    sent_bytes);
		}
	}
	if (isatty(STDERR_FILENO) && last_progress != 0)
		fprintf(stderr, "\r%s: %llu bytes sent\n", prog, sent_bytes);
	close(fd);
	free(out);
	free(r.buf);
	free(src.fds);
	if (r.final == NULL)
		die("the daemon closed the connection without a final line");
	hs = json_dumps(r.final, JSON_COMPACT);
	printf("%s\n", hs);
	free(hs);
	rejected = json_object_get(r.final, "rejected");
	errors = json_object_get(r.final, "errors");
	if (!json_is_true(json_object_get(r.final, "ok"))) {
		json_t *e = json_object_get(r.final, "error");
		if (json_is_string(e))
			fprintf(stderr, "%s: %s\n", prog, json_string_value(e));
		status = EXIT_STREAM;
	} else if (json_integer_value(rejected) != 0 ||
	    json_integer_value(json_object_get(r.final, "quarantined")) != 0 ||
	    json_array_size(errors) != 0)
		status = EXIT_STREAM;
	else
		status = EXIT_CLEAN;
	if (json_array_size(errors) != 0) {
		size_t i;
		json_t *e;
		json_array_foreach(errors, i, e) {
			json_t *w = json_object_get(e, "worker");
			fprintf(stderr, "%s: %s error", prog, json_string_value(
			    json_object_get(e, "stage")));
			if (json_is_integer(w))
				fprintf(stderr, " (worker %lld)",
				    (long long)json_integer_value(w));
			fprintf(stderr, ": %s\n", json_string_value(
			    json_object_get(e, "error")));
		}
	}
	json_decref(r.final);
	return status;
}

int
main(int argc, char **argv)
{
	const char *sockpath = getenv("CONSUMERS_SOCKET");
	int ch;

	signal(SIGPIPE, SIG_IGN);
	while ((ch = getopt(argc, argv, "+s:V")) != -1) {
		switch (ch) {
		case 's':
			sockpath = optarg;
			break;
		case 'V':
			printf("consumers %s\n", PACKAGE_VERSION);
			return 0;
		default:
			usage();
		}
	}
	if (sockpath == NULL || *sockpath == '\0')
		sockpath = CNS_DEFAULT_SOCKET;
	argc -= optind;
	argv += optind;
	if (argc < 1)
		usage();
	if (strcmp(argv[0], "submit") == 0)
		return submit(sockpath, argc, argv);
	fprintf(stderr, "%s: unknown command \"%s\" (commands: submit)\n",
	    prog, argv[0]);
	return EXIT_LOCAL;
}
