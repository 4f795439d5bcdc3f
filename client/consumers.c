/*
 * consumers - the command-line client of consumersd.
 *
 *   consumers [-q] [-s socket] submit [-w workers] [-p params] [--json]
 *       POOL [FILE...]
 *
 * streams NDJSON from the files (or standard input) to a pool, reports
 * rejected items and warnings on stderr, prints the daemon's final line on
 * stdout (a short summary instead when stdout is a terminal, unless --json)
 * and exits 0 only when the stream completed with nothing rejected or
 * quarantined, no warning and no consumer error.  libconsumers sends and
 * reads at once, so replies never back up.  On a terminal, stderr shows one
 * progress line while it runs.
 *
 *   consumers [-s socket] status [--json] [--wide] [--watch [SECONDS]]
 *             [POOL]
 *   consumers [-s socket] pools [--json]
 *
 * ask the daemon one question each and print its answer as a table, or as
 * the JSON it sent.
 *
 * The commands are the table `cmds` (name, options, help), at the end.
 * The options every command has (-s, -q, -h, -V) may come anywhere on the
 * line; a command's own options anywhere after its name.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "consumers/client.h"

#ifndef CNS_DEFAULT_SOCKET
#define CNS_DEFAULT_SOCKET "/run/consumersd/consumersd.sock"
#endif

#define CHUNK		(256u << 10)

enum { EXIT_CLEAN = 0, EXIT_STREAM = 1, EXIT_LOCAL = 2 };

static const char *prog = "consumers";
static int quiet;		/* -q: nothing but errors */

/* A command: its name, what runs it, and what its help says. */
struct cmd {
	const char	*name;
	int		(*run)(const char *sockpath, int argc, char **argv);
	const char	*valued;	/* its short options that take a value */
	const char	*args;		/* its synopsis, after its name */
	const char	*summary;	/* one line */
	const char	*help;		/* its options, one a line */
};
static _Noreturn void usage(void);
static _Noreturn void usage_of(const char *, const char *, ...)
    __attribute__((format(printf, 2, 3)));

static _Noreturn void
die(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void	progress_clear(void);
static long long num(json_t *, const char *);

static _Noreturn void
die(const char *fmt, ...)
{
	va_list ap;

	progress_clear();
	fprintf(stderr, "%s: ", prog);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(EXIT_LOCAL);
}

/*
 * The progress line, on stderr when it is a terminal: items sent, their
 * rate, and how far through the input when its size is known (files).
 * It rewrites itself in place; a message to stderr clears it first.
 */
static struct progress {
	int		 on;		/* stderr is a terminal, no -q */
	int		 shown;		/* it is on the screen now */
	double		 start, last;	/* monotonic seconds */
	unsigned long long items, bytes; /* handed to the stream */
	unsigned long long total;	/* bytes of input; 0: unknown */
} prog_line;

static double
mono(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void
progress_clear(void)
{
	if (prog_line.shown) {
		fputs("\r\033[K", stderr);
		prog_line.shown = 0;
	}
}

/* Count what was sent; redraw at most twice a second, or `now`. */
static void
progress(const char *buf, size_t len, int now)
{
	struct progress *p = &prog_line;
	double t, took;
	const char *nl = buf, *end = buf + len;

	if (!p->on)
		return;
	while ((nl = memchr(nl, '\n', (size_t)(end - nl))) != NULL) {
		p->items++;
		nl++;
	}
	p->bytes += len;
	t = mono();
	if (!now && t - p->last < 0.5)
		return;
	p->last = t;
	took = t - p->start;
	fprintf(stderr, "\r\033[K%s: %llu items sent, %.0f items/s", prog,
	    p->items, took > 0 ? (double)p->items / took : 0.0);
	if (p->total > 0)
		fprintf(stderr, ", %.0f%%", p->bytes >= p->total ? 100.0 :
		    100.0 * (double)p->bytes / (double)p->total);
	fflush(stderr);
	p->shown = 1;
}

/* A warning came (a full spool, say): the exit status is 1. */
static int warned;

/* Rejections, quarantines and warnings, as they come: one line each on
 * stderr. */
static void
on_reply(const json_t *v, void *arg)
{
	json_t *ev;

	(void)arg;
	progress_clear();
	if (json_is_object(ev = json_object_get(v, "warning"))) {
		json_t *lane = json_object_get(ev, "lane");
		warned = 1;
		fprintf(stderr, "%s: warning: %s", prog, json_string_value(
		    json_object_get(ev, "stage")));
		if (json_is_integer(lane))
			fprintf(stderr, " (lane %lld)",
			    (long long)json_integer_value(lane));
		fprintf(stderr, ": %s\n", json_string_value(
		    json_object_get(ev, "error")));
	} else if (json_is_object(ev = json_object_get(v, "rejected"))) {
		fprintf(stderr, "%s: item %lld rejected: %s\n", prog,
		    (long long)json_integer_value(json_object_get(ev, "seq")),
		    json_string_value(json_object_get(ev, "error")));
	} else if (json_is_object(ev = json_object_get(v, "quarantined"))) {
		char *item = json_dumps(json_object_get(ev, "item"),
		    JSON_COMPACT | JSON_ENCODE_ANY);
		fprintf(stderr, "%s: item %lld quarantined: %s: %.200s\n", prog,
		    (long long)json_integer_value(json_object_get(ev, "seq")),
		    json_string_value(json_object_get(ev, "reason")),
		    item != NULL ? item : "?");
		free(item);
	}
}

/* The item source: the files in turn, each ending in a newline. */
struct source {
	char	**files;
	int	*fds;		/* all opened before anything is sent */
	int	 nfiles, cur;
	char	 last;		/* last byte read from the current file */
	unsigned long long size; /* bytes to send; 0: not known */
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
	/* The progress line's percent: known when every input is a file. */
	for (int i = 0; i < s->nfiles; i++) {
		struct stat sb;
		off_t at = lseek(s->fds[i], 0, SEEK_CUR);

		if (fstat(s->fds[i], &sb) == -1 || !S_ISREG(sb.st_mode) ||
		    at == -1 || sb.st_size < at) {
			s->size = 0;
			break;
		}
		s->size += (unsigned long long)(sb.st_size - at);
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

/* A value for a person: a real in its fewest digits, the rest as JSON,
 * cut at a line's worth. */
static void
print_value(const json_t *v)
{
	char *s;

	if (json_is_real(v)) {
		char buf[40];
		for (int p = 15; p <= 17; p++) {
			snprintf(buf, sizeof buf, "%.*g", p, json_real_value(v));
			if (strtod(buf, NULL) == json_real_value(v))
				break;
		}
		printf("%s\n", buf);
		return;
	}
	if ((s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY)) == NULL)
		die("out of memory");
	if (strlen(s) > 200)
		printf("%.200s... (%zu bytes; --json prints it all)\n", s,
		    strlen(s));
	else
		printf("%s\n", s);
	free(s);
}

/* What a person at a terminal sees of the final line. */
static void
summary(const json_t *final, const char *pool, double took)
{
	static const char *const counts[] = { "rejected", "quarantined",
	    "unconsumed", "crashes", NULL };
	json_t *completion = json_object_get(final, "completion"),
	    *results = json_object_get(final, "results");

	if (!json_is_true(json_object_get(final, "ok"))) {
		printf("pool %s: the stream failed (%s)\n", pool,
		    json_is_string(json_object_get(final, "code")) ?
		    json_string_value(json_object_get(final, "code")) :
		    "see above");
		return;
	}
	printf("stream %lld, pool %s: %lld item%s, %lld consumed",
	    num((json_t *)final, "stream"), pool, num((json_t *)final,
	    "items"), num((json_t *)final, "items") == 1 ? "" : "s",
	    num((json_t *)final, "consumed"));
	for (int i = 0; counts[i] != NULL; i++)
		if (num((json_t *)final, counts[i]) != 0)
			printf(", %lld %s", num((json_t *)final, counts[i]),
			    counts[i]);
	printf(", in %.1fs\n", took);
	if (!json_is_null(completion) && completion != NULL) {
		printf("completion: ");
		print_value(completion);
	} else if (json_array_size(results) > 0) {
		printf("results: ");
		print_value(results);
	}
}

static int
submit(const char *sockpath, int argc, char **argv)
{
	static char *stdin_only[] = { "-" };
	struct source src = { 0 };
	json_t *params = NULL, *rejected, *errors, *final;
	const char *pool;
	/* static: still reachable if die() exits */
	static char *buf;
	static cns_stream *st;
	char err[1024], *hs;
	int ch, workers = 0, status, json = 0;
	size_t n;

	static const struct option longopts[] = {
		{ "params",	required_argument,	NULL, 'p' },
		{ "workers",	required_argument,	NULL, 'w' },
		{ "json",	no_argument,		NULL, 'j' },
		{ NULL,		0,			NULL, 0 }
	};

	optind = 0;	/* glibc: start again, options after operands too */
	opterr = 0;	/* usage_of says what is wrong */
	while ((ch = getopt_long(argc, argv, ":p:w:", longopts, NULL)) != -1) {
		switch (ch) {
		case 'j':
			json = 1;
			break;
		case 'p': {
			json_error_t jerr;
			json_decref(params);
			params = json_loads(optarg, JSON_DECODE_ANY, &jerr);
			if (params == NULL)
				die("-p: params must be JSON: %s", jerr.text);
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
		case ':':
			usage_of("submit", "%s needs a value",
			    argv[optind - 1]);
		default:
			if (optopt)
				usage_of("submit", "unknown option \"-%c\"",
				    optopt);
			usage_of("submit", "unknown option \"%s\"",
			    argv[optind - 1]);
		}
	}
	argc -= optind;
	argv += optind;
	if (argc < 1)
		usage_of("submit", "the pool is missing: name the pool to "
		    "stream to");
	pool = argv[0];
	src.files = argc > 1 ? argv + 1 : stdin_only;
	src.nfiles = argc > 1 ? argc - 1 : 1;
	source_open_all(&src);
	if ((buf = malloc(CHUNK)) == NULL)
		die("out of memory");

	st = cns_stream_open(sockpath, pool, params, (unsigned)workers, err,
	    sizeof err);
	json_decref(params);
	if (st == NULL)
		die("%s", err);
	cns_stream_on_reply(st, on_reply, NULL);
	prog_line.on = !quiet && isatty(STDERR_FILENO);
	prog_line.start = prog_line.last = mono();
	prog_line.total = src.size;
	/* A write that fails means the daemon ended the stream early: its
	 * final line, read by close, says why. */
	while ((n = source_read(&src, buf, CHUNK)) > 0) {
		if (cns_stream_write(st, buf, n) == -1)
			break;
		progress(buf, n, 0);
	}
	if (prog_line.shown) {	/* where it ended, and it stays */
		progress("", 0, 1);
		fputc('\n', stderr);
		prog_line.shown = 0;
	}
	final = cns_stream_close(st, err, sizeof err);
	/* The daemon's line byte for byte: re-encoding it would change its
	 * numbers (0.1 came out as 0.10000000000000001).  A person at a
	 * terminal gets a summary instead. */
	if (final != NULL && !json && isatty(STDOUT_FILENO))
		summary(final, pool, mono() - prog_line.start);
	else if (final != NULL) {
		if (cns_stream_final_line(st) != NULL)
			printf("%s\n", cns_stream_final_line(st));
		else {
			hs = json_dumps(final, JSON_COMPACT);
			printf("%s\n", hs);
			free(hs);
		}
	}
	cns_stream_free(st);
	st = NULL;
	free(buf);
	buf = NULL;
	free(src.fds);
	if (final == NULL)
		die("%s", err);
	rejected = json_object_get(final, "rejected");
	errors = json_object_get(final, "errors");
	if (!json_is_true(json_object_get(final, "ok"))) {
		json_t *e = json_object_get(final, "error");
		if (json_is_string(e))
			fprintf(stderr, "%s: %s\n", prog, json_string_value(e));
		status = EXIT_STREAM;
	} else if (json_integer_value(rejected) != 0 ||
	    json_integer_value(json_object_get(final, "quarantined")) != 0 ||
	    json_array_size(errors) != 0 || warned)
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
	json_decref(final);
	return status;
}

/* ---- status and pools: one question, one answer ---- */

static volatile sig_atomic_t interrupted;

static void
on_sigint(int sig)
{
	(void)sig;
	interrupted = 1;
}

/*
 * Send one header and read the one line that answers it.  NULL only when
 * SIGINT came while waiting (with --watch); any other failure is a local
 * error.
 */
static json_t *
ask(const char *sockpath, json_t *header)
{
	char err[1024];
	json_t *v;

	if ((v = cns_ask(sockpath, header, err, sizeof err)) == NULL) {
		if (errno == EINTR && interrupted)
			return NULL;
		die("%s", err);
	}
	return v;
}

/* ask() for a one-shot command, which owns header: an answer or exit. */
static json_t *
ask_once(const char *sockpath, json_t *header, const char *cmd)
{
	json_t *v = ask(sockpath, header);

	json_decref(header);
	if (v == NULL)
		die("%s: no answer from the daemon", cmd);
	return v;
}

/* A refusal: its message on stderr; status 1. */
static int
refused(json_t *v)
{
	json_t *e = json_object_get(v, "error");

	if (json_is_true(json_object_get(v, "ok")))
		return 0;
	fprintf(stderr, "%s: %s\n", prog, json_is_string(e) ?
	    json_string_value(e) : "the daemon refused, without a reason");
	return 1;
}

static void
print_json(json_t *v)
{
	char *s = json_dumps(v, JSON_COMPACT);

	if (s == NULL)
		die("out of memory");
	printf("%s\n", s);
	free(s);
}

/* A duration, short: 45s, 3m07s, 2h05m, 4d03h. */
static const char *
age(json_t *v, char *buf, size_t len)
{
	long long s;

	if (!json_is_number(v))
		return "-";
	s = (long long)json_number_value(v);
	if (s < 60)
		snprintf(buf, len, "%llds", s);
	else if (s < 3600)
		snprintf(buf, len, "%lldm%02llds", s / 60, s % 60);
	else if (s < 86400)
		snprintf(buf, len, "%lldh%02lldm", s / 3600, s % 3600 / 60);
	else
		snprintf(buf, len, "%lldd%02lldh", s / 86400, s % 86400 / 3600);
	return buf;
}

static long long
num(json_t *obj, const char *key)
{
	return (long long)json_number_value(json_object_get(obj, key));
}

static long long
num2(json_t *obj, const char *key, const char *sub)
{
	return num(json_object_get(obj, key), sub);
}

/*
 * A count in at most `width` characters: as it is when it fits, else
 * scaled (12.3k, 4.5M, 678G), so the narrow table keeps its columns.
 */
static const char *
count(long long n, int width, char *buf, size_t len)
{
	static const char units[] = "kMGTPE";
	double d = (double)n;

	if (snprintf(buf, len, "%lld", n) <= width)
		return buf;
	for (int i = 0; units[i] != '\0'; i++) {
		d /= 1000;
		if (snprintf(buf, len, "%.1f%c", d, units[i]) <= width ||
		    snprintf(buf, len, "%.0f%c", d, units[i]) <= width)
			break;
	}
	return buf;
}

/* Items per second in at most `width` characters: one decimal, or a
 * scaled count. */
static const char *
rate(json_t *v, int width, char *buf, size_t len)
{
	double r = json_number_value(v);

	if (snprintf(buf, len, "%.1f", r) <= width)
		return buf;
	return count((long long)r, width, buf, len);
}

/* A pool name in at most `width` characters: a longer one ends in "~". */
static const char *
clip(const char *s, int width, char *buf, size_t len)
{
	snprintf(buf, len, "%s", s != NULL ? s : "?");
	if ((int)strlen(buf) > width && width > 1 && (size_t)width < len) {
		buf[width - 1] = '~';
		buf[width] = '\0';
	}
	return buf;
}

/* Columns of the narrow view: a pool name is cut at NAME_MAX_NARROW, so
 * every line fits 80 columns. */
#define NAME_MAX_NARROW	14

static void
print_worker(json_t *w, long long now, int wide)
{
	json_t *stream = json_object_get(w, "stream"),
	    *rss = json_object_get(w, "rss_kib"),
	    *start = json_object_get(w, "start");
	char sid[32] = "-", mem[32] = "-", up[32], items[32];
	json_t *upv = NULL;

	if (json_is_integer(stream))
		snprintf(sid, sizeof sid, "%lld",
		    (long long)json_integer_value(stream));
	if (json_is_integer(rss))
		snprintf(mem, sizeof mem, "%lld KiB",
		    (long long)json_integer_value(rss));
	if (json_is_integer(start))
		upv = json_integer(now - json_integer_value(start));
	if (wide)
		printf("  worker %-3lld pid %-7lld %-8s stream %-6s items "
		    "%-9lld served %-6lld rss %-12s up %s\n", num(w, "slot"),
		    num(w, "pid"), json_string_value(json_object_get(w,
		    "state")), sid, num(w, "items"), num(w, "streams_served"),
		    mem, age(upv, up, sizeof up));
	else
		printf("  worker %-3lld pid %-7lld %-8s stream %-8s items %-8s "
		    "up %s\n", num(w, "slot"), num(w, "pid"),
		    json_string_value(json_object_get(w, "state")), sid,
		    count(num(w, "items"), 8, items, sizeof items),
		    age(upv, up, sizeof up));
	json_decref(upv);
}

static void	print_cluster(json_t *);

/* The open streams: who sent each, where, how far, how fast. */
static void
print_streams(json_t *streams, int width, int wide)
{
	json_t *s, *c;
	size_t i;
	char name[80], pid[32], uid[32], up[32], in[32], done[32], per[32];

	if (json_array_size(streams) == 0)
		return;
	printf("%-7s %-*s %-10s %7s %6s %6s %7s %7s %7s%s\n", "STREAM", width,
	    "POOL", "STATE", "PID", "UID", "AGE", "IN", "DONE", "ITEMS/S",
	    wide ? " WORKERS" : "");
	json_array_foreach(streams, i, s) {
		const char *pool = json_string_value(json_object_get(s,
		    "pool"));

		c = json_object_get(s, "client");
		snprintf(pid, sizeof pid, "-");
		snprintf(uid, sizeof uid, "-");
		if (json_is_object(c)) {
			snprintf(pid, sizeof pid, "%lld", num(c, "pid"));
			snprintf(uid, sizeof uid, "%lld", num(c, "uid"));
		}
		printf("%-7lld %-*s %-10s %7s %6s %6s %7s %7s %7s",
		    num(s, "id"), width, wide ? pool : clip(pool, width, name,
		    sizeof name),
		    json_string_value(json_object_get(s, "state")), pid, uid,
		    age(json_object_get(s, "age"), up, sizeof up),
		    count(num2(s, "items", "in"), wide ? 20 : 7, in, sizeof in),
		    count(num2(s, "items", "done"), wide ? 20 : 7, done,
		    sizeof done), rate(json_object_get(s, "rate"),
		    wide ? 20 : 7, per, sizeof per));
		if (wide)
			printf(" %7lld", num(s, "workers"));
		putchar('\n');
	}
}

/* At most `max` bytes of s, cut at a character, "..." where cut. */
static const char *
fit(const char *s, size_t max, char *buf, size_t len)
{
	size_t n = strlen(s);

	if (n <= max || max < 4 || max + 1 > len) {
		snprintf(buf, len, "%s", s);
		return buf;
	}
	n = max - 3;
	while (n > 0 && ((unsigned char)s[n] & 0xc0) == 0x80)
		n--;
	snprintf(buf, len, "%.*s...", (int)n, s);
	return buf;
}

/*
 * The daemon, its pools with their workers, and its open streams.  The
 * narrow view fits 80 columns (long names cut, large counts scaled);
 * `wide` has every column in full.
 */
static void
print_status(json_t *v, int wide)
{
	json_t *d = json_object_get(v, "daemon"), *pools, *p, *w, *s;
	long long now = (long long)time(NULL);
	int width = 4;
	size_t i, j;
	char up[32];

	printf("consumersd %s, pid %lld, up %s, %lld stream%s open, %lld "
	    "worker%s\n", json_string_value(json_object_get(d, "version")),
	    num(d, "pid"), age(json_object_get(d, "uptime"), up, sizeof up),
	    num(d, "streams_open"), num(d, "streams_open") == 1 ? "" : "s",
	    num(d, "workers"), num(d, "workers") == 1 ? "" : "s");
	pools = json_object_get(v, "pools");
	json_array_foreach(pools, i, p) {
		const char *name = json_string_value(json_object_get(p,
		    "name"));
		int n = name != NULL ? (int)strlen(name) : 1;
		if (n > width)
			width = n;
	}
	json_array_foreach(json_object_get(v, "streams"), i, s) {
		const char *name = json_string_value(json_object_get(s,
		    "pool"));
		int n = name != NULL ? (int)strlen(name) : 1;
		if (n > width)
			width = n;
	}
	if (!wide && width > NAME_MAX_NARROW)
		width = NAME_MAX_NARROW;
	if (wide)
		printf("%-*s  %-8s %7s %5s %5s %5s %5s %6s %9s %10s %10s %8s "
		    "%11s %7s %8s %7s %8s\n", width, "POOL", "MODE", "WORKERS",
		    "BUSY", "IDLE", "START", "OPEN", "QUEUED", "COMPLETED",
		    "ITEMS_IN", "CONSUMED", "REJECTED", "QUARANTINED",
		    "CRASHES", "RESPAWNS", "WAIT", "ITEMS/S");
	else
		printf("%-*s %-8s %7s %4s %4s %4s %6s %7s %8s %7s\n", width,
		    "POOL", "MODE", "WORKERS", "BUSY", "IDLE", "OPEN", "QUEUED",
		    "ITEMS/S", "CONSUMED", "CRASHES");
	json_array_foreach(pools, i, p) {
		char cap[64], wait[32], name[80], b[6][32], per[32], msg[1200];
		json_t *err = json_object_get(p, "last_error");
		snprintf(cap, sizeof cap, "%lld/%lld",
		    num2(p, "workers", "total"), num(p, "capacity"));
		snprintf(wait, sizeof wait, "%.1fs",
		    json_number_value(json_object_get(p, "queue_wait")));
		if (wide)
			printf("%-*s  %-8s %7s %5lld %5lld %5lld %5lld %6lld "
			    "%9lld %10lld %10lld %8lld %11lld %7lld %8lld %7s "
			    "%8s\n", width,
			    json_string_value(json_object_get(p, "name")),
			    json_string_value(json_object_get(p, "mode")), cap,
			    num2(p, "workers", "busy"),
			    num2(p, "workers", "idle"),
			    num2(p, "workers", "starting"),
			    num2(p, "streams", "open"),
			    num2(p, "streams", "queued"),
			    num2(p, "streams", "completed"),
			    num2(p, "items", "in"),
			    num2(p, "items", "consumed"),
			    num2(p, "items", "rejected"),
			    num2(p, "items", "quarantined"), num(p, "crashes"),
			    num(p, "respawns"), wait,
			    rate(json_object_get(p, "items_per_second"), 20,
			    per, sizeof per));
		else {
			if (strlen(cap) > 7)
				count(num2(p, "workers", "total"), 7, cap,
				    sizeof cap);
			printf("%-*s %-8s %7s %4s %4s %4s %6s %7s %8s %7s\n",
			    width, clip(json_string_value(json_object_get(p,
			    "name")), width, name, sizeof name),
			    json_string_value(json_object_get(p, "mode")), cap,
			    count(num2(p, "workers", "busy"), 4, b[0], 32),
			    count(num2(p, "workers", "idle"), 4, b[1], 32),
			    count(num2(p, "streams", "open"), 4, b[2], 32),
			    count(num2(p, "streams", "queued"), 6, b[3], 32),
			    rate(json_object_get(p, "items_per_second"), 7, per,
			    sizeof per),
			    count(num2(p, "items", "consumed"), 8, b[4], 32),
			    count(num(p, "crashes"), 7, b[5], 32));
		}
		if (json_is_true(json_object_get(p, "failed")))
			printf("  FAILED: %s\n", fit(json_is_string(err) ?
			    json_string_value(err) : "its workers keep dying "
			    "while they start", wide ? sizeof msg - 1 : 70, msg,
			    sizeof msg));
		json_array_foreach(json_object_get(p, "processes"), j, w)
			print_worker(w, now, wide);
		print_cluster(json_object_get(p, "cluster"));
	}
	print_streams(json_object_get(v, "streams"), width, wide);
}

/* A cluster pool: its Redis, and every instance serving it. */
static void
print_cluster(json_t *cl)
{
	json_t *insts = json_object_get(cl, "instances"), *i;
	json_t *down = json_object_get(cl, "unavailable");
	const char *name;

	if (!json_is_object(cl))
		return;
	printf("  cluster: instance %s, redis %s: %s%s\n",
	    json_string_value(json_object_get(cl, "instance")),
	    json_string_value(json_object_get(cl, "redis")),
	    json_is_string(down) ? "DOWN, cluster streams refused: " : "up",
	    json_is_string(down) ? json_string_value(down) : "");
	json_object_foreach(insts, name, i)
		printf("    instance %-20s workers %lld, idle %lld%s\n", name,
		    num(i, "workers"), num(i, "idle"),
		    json_is_true(json_object_get(i, "failed")) ? ", FAILED" :
		    "");
}

static void
print_pools(json_t *v)
{
	json_t *pools = json_object_get(v, "pools"), *p;
	int width = 4;
	size_t i;

	json_array_foreach(pools, i, p) {
		int n = (int)strlen(json_string_value(json_object_get(p,
		    "name")));
		if (n > width)
			width = n;
	}
	printf("%-*s  %-8s %7s %14s  %s\n", width, "POOL", "MODE", "WORKERS",
	    "STREAM_WORKERS", "PLUGIN");
	json_array_foreach(pools, i, p)
		printf("%-*s  %-8s %7lld %14lld  %s\n", width,
		    json_string_value(json_object_get(p, "name")),
		    json_string_value(json_object_get(p, "mode")),
		    num(p, "workers"), num(p, "stream_workers"),
		    json_string_value(json_object_get(p, "plugin")));
}

/* A positive number of seconds, or -1. */
static double
interval(const char *s)
{
	char *end;
	double d;

	errno = 0;
	d = strtod(s, &end);
	if (*s == '\0' || *end != '\0' || errno != 0 || !(d > 0) ||
	    d > 86400)
		return -1;
	return d;
}

static int
status(const char *sockpath, int argc, char **argv)
{
	struct sigaction sa;
	const char *pool = NULL;
	double every = 0;
	int json = 0, wide = 0, tty = isatty(STDOUT_FILENO), first = 1, rc;
	json_t *header, *v;

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--json") == 0)
			json = 1;
		else if (strcmp(argv[i], "--wide") == 0)
			wide = 1;
		else if (strcmp(argv[i], "--watch") == 0) {
			every = 2;
			/* A number after --watch is its interval. */
			if (i + 1 < argc && interval(argv[i + 1]) > 0)
				every = interval(argv[++i]);
		} else if (strncmp(argv[i], "--watch=", 8) == 0) {
			if ((every = interval(argv[i] + 8)) < 0)
				die("--watch: the interval must be a number of "
				    "seconds above 0, not \"%s\"", argv[i] + 8);
		} else if (argv[i][0] == '-' && argv[i][1] != '\0')
			usage_of("status", "unknown option \"%s\"", argv[i]);
		else if (pool == NULL)
			pool = argv[i];
		else
			usage_of("status", "one pool at most, not \"%s\" "
			    "and \"%s\"", pool, argv[i]);
	}
	header = json_pack("{s:s}", "op", "status");
	if (pool != NULL)
		json_object_set_new(header, "pool", json_string(pool));
	if (every > 0) {
		/* No SA_RESTART: a wait for the daemon ends on ^C too. */
		memset(&sa, 0, sizeof sa);
		sa.sa_handler = on_sigint;
		sigemptyset(&sa.sa_mask);
		sigaction(SIGINT, &sa, NULL);
		sigaction(SIGTERM, &sa, NULL);
	}
	for (;;) {
		struct timespec ts;
		if (interrupted || (v = ask(sockpath, header)) == NULL)
			break;
		if ((rc = refused(v)) != 0) {
			if (json)
				print_json(v);
			json_decref(v);
			json_decref(header);
			return rc;
		}
		if (every > 0 && tty)
			fputs("\033[H\033[2J", stdout);
		else if (!first)
			putchar('\n');
		first = 0;
		if (json)
			print_json(v);
		else
			print_status(v, wide);
		json_decref(v);
		/* A reader that went away (SIGPIPE ignored by whoever started
		 * us) or a full disk ends a watch instead of looping. */
		if (fflush(stdout) == EOF || ferror(stdout)) {
			json_decref(header);
			die("standard output: %s", strerror(errno));
		}
		if (every <= 0)
			break;
		ts.tv_sec = (time_t)every;
		ts.tv_nsec = (long)((every - (double)ts.tv_sec) * 1e9);
		nanosleep(&ts, NULL);	/* EINTR: the loop sees the flag */
	}
	json_decref(header);
	return EXIT_CLEAN;
}

static int
pools(const char *sockpath, int argc, char **argv)
{
	json_t *header, *v;
	int json = 0, rc;

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--json") == 0)
			json = 1;
		else
			usage_of("pools", "unknown %s \"%s\"",
			    argv[i][0] == '-' ? "option" : "argument", argv[i]);
	}
	header = json_pack("{s:s}", "op", "pools");
	v = ask_once(sockpath, header, "pools");
	if ((rc = refused(v)) == 0) {
		if (json)
			print_json(v);
		else
			print_pools(v);
	} else if (json)
		print_json(v);
	json_decref(v);
	return rc;
}

/* consumers result STREAM: a cluster stream's final line, by its id. */
static int
result(const char *sockpath, int argc, char **argv)
{
	json_t *header, *v;
	char *end;
	long long id;

	if (argc < 2)
		usage_of("result", "the stream id is missing");
	if (argc > 2)
		usage_of("result", "one stream id, not %d arguments", argc - 1);
	errno = 0;
	id = strtoll(argv[1], &end, 10);
	if (*argv[1] == '\0' || *end != '\0' || errno != 0 || id < 1)
		die("result: \"%s\" is not a stream id (a positive integer)",
		    argv[1]);
	header = json_pack("{s:s,s:I}", "op", "result", "stream",
	    (json_int_t)id);
	v = ask_once(sockpath, header, "result");
	if (json_object_get(v, "items") == NULL) {
		refused(v);
		json_decref(v);
		return EXIT_STREAM;
	}
	print_json(v);
	id = json_is_true(json_object_get(v, "ok")) ? EXIT_CLEAN : EXIT_STREAM;
	json_decref(v);
	return (int)id;
}

/* consumers reload: the daemon reads its configuration again. */
static int
reload(const char *sockpath, int argc, char **argv)
{
	json_t *header, *v;
	int rc;

	if (argc != 1)
		usage_of("reload", "no arguments, not \"%s\"", argv[1]);
	header = json_pack("{s:s}", "op", "reload");
	v = ask_once(sockpath, header, "reload");
	if ((rc = refused(v)) == 0)
		printf("reloaded: %s\n", json_string_value(json_object_get(v,
		    "reloaded")));
	else {
		json_t *r;
		size_t i;

		json_array_foreach(json_object_get(v, "reasons"), i, r)
			if (json_is_string(r))
				fprintf(stderr, "  %s\n", json_string_value(r));
	}
	json_decref(v);
	return rc;
}

/* consumers metrics: every pool's counters as OpenMetrics text. */
static int
metrics(const char *sockpath, int argc, char **argv)
{
	json_t *header, *v;
	int rc;

	if (argc != 1)
		usage_of("metrics", "no arguments, not \"%s\"", argv[1]);
	header = json_pack("{s:s}", "op", "metrics");
	v = ask_once(sockpath, header, "metrics");
	if ((rc = refused(v)) == 0) {
		const char *m = json_string_value(json_object_get(v,
		    "metrics"));

		if (m == NULL)
			die("metrics: the daemon's answer has no \"metrics\"");
		fputs(m, stdout);
	}
	json_decref(v);
	return rc;
}

static int	help(const char *, int, char **);

/*
 * The commands.  A new one is a row here and its function; its options
 * are parsed by it, anywhere after its name (getopt permutes), and those
 * that take a value are named in `valued` so that main skips the value.
 */
static const struct cmd cmds[] = {
	{ "submit", submit, "wp",
	    "[-w workers] [-p params] [--json] POOL [FILE...]",
	    "stream NDJSON items to a pool and wait for its final line",
	    "Stream the items (one JSON value a line) of the FILEs, or of "
	    "standard input\n"
	    "(also FILE -), to POOL and wait for the daemon's final line.  "
	    "Rejected and\n"
	    "quarantined items are reported on stderr as they come.  The exit "
	    "status is 0\n"
	    "only when every item was consumed and no consumer failed.\n\n"
	    "  -w, --workers N   at most N consumers (default: the pool's "
	    "stream_workers)\n"
	    "  -p, --params JSON the stream's params, any JSON value\n"
	    "  --json            print the daemon's final line as it sent "
	    "it (the default\n"
	    "                    when standard output is not a terminal; on "
	    "one, a summary)\n"
	    "  -q, --quiet       print nothing but errors (no final line, "
	    "no progress)\n" },
	{ "status", status, "",
	    "[--json] [--wide] [--watch [SECONDS]] [POOL]",
	    "the daemon's pools, workers and streams, now",
	    "Print the daemon's status: each pool's workers, streams and "
	    "counts, and its\n"
	    "worker processes; of one POOL if named.\n\n"
	    "  --json            the daemon's answer as JSON, one line\n"
	    "  --wide            every column (the default fits 80 columns)\n"
	    "  --watch [SECONDS] print it again every SECONDS (default 2) "
	    "until ^C\n" },
	{ "pools", pools, "", "[--json]",
	    "the configured pools",
	    "Print the configured pools: mode, workers, stream_workers, "
	    "plugin.\n\n"
	    "  --json            the daemon's answer as JSON, one line\n" },
	{ "reload", reload, "", "",
	    "read the configuration again (SIGHUP)",
	    "Ask the daemon to read its configuration again; prints what "
	    "changed.\n" },
	{ "metrics", metrics, "", "",
	    "every pool's counters as OpenMetrics text",
	    "Print every pool's counters as OpenMetrics text, ending in "
	    "\"# EOF\": what a\n"
	    "Prometheus textfile collector reads.\n" },
	{ "result", result, "", "STREAM",
	    "a cluster stream's final line, by its id",
	    "Print the final line of cluster stream STREAM (the id its lease "
	    "and final\n"
	    "lines gave), from any instance serving its pool, for 10 minutes "
	    "after it\n"
	    "ended.  The exit status is that of submit.\n" },
	{ "help", help, "", "[COMMAND]",
	    "this help, or a command's",
	    "Print the commands, or what COMMAND does and its options.\n" },
	{ NULL, NULL, NULL, NULL, NULL, NULL }
};

static _Noreturn void
usage(void)
{
	fprintf(stderr, "usage:");
	for (const struct cmd *c = cmds; c->name != NULL; c++)
		fprintf(stderr, "%s %s [-q] [-s socket] %s%s%s\n", c == cmds ?
		    "" : "      ", prog, c->name, *c->args ? " " : "", c->args);
	fprintf(stderr, "       %s -V | --version\n"
	    "The socket is -s, else $CONSUMERS_SOCKET, else %s.\n"
	    "Try \"%s help\" or \"%s help COMMAND\".\n", prog,
	    CNS_DEFAULT_SOCKET, prog, prog);
	exit(EXIT_LOCAL);
}

static const struct cmd *
cmd_find(const char *name)
{
	for (const struct cmd *c = cmds; c->name != NULL; c++)
		if (strcmp(c->name, name) == 0)
			return c;
	return NULL;
}

/* A usage error of the command name: what is wrong, and its synopsis. */
static _Noreturn void
usage_of(const char *name, const char *fmt, ...)
{
	const struct cmd *c = cmd_find(name);
	va_list ap;

	progress_clear();
	fprintf(stderr, "%s: %s: ", prog, name);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\nusage: %s [-q] [-s socket] %s%s%s\n"
	    "Try \"%s help %s\".\n", prog, name, *c->args ? " " : "",
	    c->args, prog, name);
	exit(EXIT_LOCAL);
}

static void
help_cmd(const struct cmd *c)
{
	printf("usage: %s [-q] [-s socket] %s%s%s\n%s.\n\n%s", prog,
	    c->name, *c->args ? " " : "", c->args, c->summary, c->help);
	printf("\nThe options every command has may come anywhere; see "
	    "\"%s help\".\n", prog);
}

static void
help_all(void)
{
	printf("usage: %s [-q] [-s socket] COMMAND [ARGS...]\n"
	    "Stream items to consumersd's pools, and ask it how they "
	    "are doing.\n\nCommands:\n", prog);
	for (const struct cmd *c = cmds; c->name != NULL; c++)
		printf("  %-8s %s\n", c->name, c->summary);
	printf("\nOptions of every command, before or after it:\n"
	    "  -s, --socket PATH the daemon's socket (default "
	    "$CONSUMERS_SOCKET, else\n"
	    "                    %s)\n"
	    "  -q, --quiet       print nothing but errors\n"
	    "  -h, --help        print help and exit\n"
	    "  -V, --version     print the version and exit\n\n"
	    "\"%s help COMMAND\" says what a command does.  See "
	    "consumers(1).\n", CNS_DEFAULT_SOCKET, prog);
}

/* consumers help [COMMAND] */
static int
help(const char *sockpath, int argc, char **argv)
{
	const struct cmd *c;

	(void)sockpath;
	if (argc > 2)
		usage_of("help", "one command at most, not \"%s\" and \"%s\"",
		    argv[1], argv[2]);
	if (argc < 2) {
		help_all();
		return EXIT_CLEAN;
	}
	if ((c = cmd_find(argv[1])) == NULL)
		die("help: unknown command \"%s\"; \"%s help\" lists them",
		    argv[1], prog);
	help_cmd(c);
	return EXIT_CLEAN;
}

/*
 * The options every command has, wherever they are on the line (up to a
 * "--"): 1 if argv[*i] was one (*i then past its value), else 0.
 */
static int
global_opt(int argc, char **argv, int *i, const char **sockpath, int *want)
{
	const char *a = argv[*i], *path = NULL;

	if (strcmp(a, "-s") == 0 || strcmp(a, "--socket") == 0) {
		if (*i + 1 >= argc)
			die("%s: the daemon's socket path is missing", a);
		path = argv[++*i];
	} else if (strncmp(a, "--socket=", 9) == 0)
		path = a + 9;
	else if (strncmp(a, "-s", 2) == 0)
		path = a + 2;
	else if (strcmp(a, "-q") == 0 || strcmp(a, "--quiet") == 0)
		quiet = 1;
	else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0)
		*want = 'h';
	else if (strcmp(a, "-V") == 0 || strcmp(a, "--version") == 0)
		*want = 'V';
	else
		return 0;
	if (path != NULL && *path == '\0')
		die("%s: the daemon's socket path is empty; name it, or leave "
		    "it out for $CONSUMERS_SOCKET, else %s", a,
		    CNS_DEFAULT_SOCKET);
	if (path != NULL)
		*sockpath = path;
	return 1;
}

/* -q: standard output goes nowhere; errors still reach stderr. */
static void
silence(void)
{
	int fd = open("/dev/null", O_WRONLY | O_CLOEXEC);

	if (fd == -1 || dup2(fd, STDOUT_FILENO) == -1)
		die("-q: /dev/null: %s", strerror(errno));
	close(fd);
}

/* rc, unless what was printed could not be written (a full disk, a
 * closed pipe with SIGPIPE ignored): that is lost output, not a success. */
static int
written(int rc)
{
	if (fflush(stdout) == EOF || ferror(stdout))
		die("cannot write to standard output: %s", strerror(errno));
	return rc;
}

int
main(int argc, char **argv)
{
	const char *sockpath = NULL;
	const struct cmd *c = NULL;
	static char **rest;
	int want = 0, n = 0, dashdash = 0;

	/* SIGPIPE keeps its default: the daemon's socket is written with
	 * MSG_NOSIGNAL, and a closed standard output (status --watch | head)
	 * ends the program. */
	/* static: still reachable when a command exits */
	if ((rest = calloc((size_t)argc + 1, sizeof *rest)) == NULL)
		die("out of memory");
	rest[n++] = argv[0];
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];

		if (!dashdash && global_opt(argc, argv, &i, &sockpath, &want))
			continue;
		if (strcmp(a, "--") == 0)
			dashdash = 1;
		if (c == NULL && a[0] == '-' && a[1] != '\0' && !dashdash) {
			fprintf(stderr, "%s: unknown option \"%s\" before the "
			    "command\n", prog, a);
			usage();
		}
		if (c == NULL && !dashdash && (c = cmd_find(a)) == NULL) {
			fprintf(stderr, "%s: unknown command \"%s\" (commands:",
			    prog, a);
			for (c = cmds; c->name != NULL; c++)
				fprintf(stderr, "%s %s", c == cmds ? "" : ",",
				    c->name);
			fprintf(stderr, ")\n");
			return EXIT_LOCAL;
		}
		rest[n++] = argv[i];
		/* A value of the command's own option is not an option. */
		if (!dashdash && a[0] == '-' && a[1] != '\0' && a[2] == '\0' &&
		    c != NULL && strchr(c->valued, a[1]) != NULL &&
		    i + 1 < argc)
			rest[n++] = argv[++i];
	}
	if (want == 'V') {
		printf("consumers %s\n", PACKAGE_VERSION);
		return written(EXIT_CLEAN);
	}
	if (want == 'h') {
		if (c != NULL && c->run != help)
			help_cmd(c);
		else
			help_all();
		return written(EXIT_CLEAN);
	}
	if (c == NULL) {
		fprintf(stderr, "%s: the command is missing\n", prog);
		usage();
	}
	if (quiet)
		silence();
	sockpath = cns_socket_path(sockpath);
	/* rest[0] is the program; the command sees itself as argv[0]. */
	return written(c->run(sockpath, n - 1, rest + 1));
}
