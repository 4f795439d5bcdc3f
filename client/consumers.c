/*
 * consumers - the command-line client of consumersd.
 *
 *   consumers [-s socket] submit [-w workers] [-p params] POOL [FILE...]
 *
 * streams NDJSON from the files (or standard input) to a pool, reports
 * rejected items on stderr, prints the daemon's final line on stdout and
 * exits 0 only when the stream completed with nothing rejected or
 * quarantined and no consumer error.  libconsumers sends and reads at once,
 * so replies never back up.
 *
 *   consumers [-s socket] status [--json] [--watch [SECONDS]] [POOL]
 *   consumers [-s socket] pools [--json]
 *
 * ask the daemon one question each and print its answer as a table, or as
 * the JSON it sent.
 */
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

#include "consumers/client.h"

#ifndef CNS_DEFAULT_SOCKET
#define CNS_DEFAULT_SOCKET "/run/consumersd/consumersd.sock"
#endif

#define CHUNK		(256u << 10)

enum { EXIT_CLEAN = 0, EXIT_STREAM = 1, EXIT_LOCAL = 2 };

static const char *prog = "consumers";

static _Noreturn void
usage(void)
{
	fprintf(stderr,
	    "usage: %s [-s socket] submit [-w workers] [-p params] POOL "
	    "[FILE...]\n"
	    "       %s [-s socket] status [--json] [--watch [SECONDS]] "
	    "[POOL]\n"
	    "       %s [-s socket] pools [--json]\n"
	    "       %s [-s socket] reload\n"
	    "       %s [-s socket] result STREAM\n"
	    "       %s -V\n"
	    "The socket is -s, else $CONSUMERS_SOCKET, else %s.\n",
	    prog, prog, prog, prog, prog, prog, CNS_DEFAULT_SOCKET);
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

/* Rejections and quarantines, as they come: one line each on stderr. */
static void
on_reply(const json_t *v, void *arg)
{
	json_t *ev;

	(void)arg;
	if (json_is_object(ev = json_object_get(v, "rejected"))) {
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
	json_t *params = NULL, *rejected, *errors, *final;
	const char *pool;
	/* static: still reachable if die() exits */
	static char *buf;
	static cns_stream *st;
	char err[1024], *hs;
	time_t last_progress = 0;
	int ch, workers = 0, status;
	size_t n;

	optind = 1;
	while ((ch = getopt(argc, argv, "p:w:")) != -1) {
		switch (ch) {
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
	if ((buf = malloc(CHUNK)) == NULL)
		die("out of memory");

	st = cns_stream_open(sockpath, pool, params, (unsigned)workers, err,
	    sizeof err);
	json_decref(params);
	if (st == NULL)
		die("%s", err);
	cns_stream_on_reply(st, on_reply, NULL);
	/* A write that fails means the daemon ended the stream early: its
	 * final line, read by close, says why. */
	while ((n = source_read(&src, buf, CHUNK)) > 0) {
		if (cns_stream_write(st, buf, n) == -1)
			break;
		if (isatty(STDERR_FILENO) && time(NULL) != last_progress) {
			last_progress = time(NULL);
			fprintf(stderr, "\r%s: %llu bytes sent", prog,
			    (unsigned long long)cns_stream_sent(st));
		}
	}
	final = cns_stream_close(st, err, sizeof err);
	if (isatty(STDERR_FILENO) && last_progress != 0)
		fprintf(stderr, "\r%s: %llu bytes sent\n", prog,
		    (unsigned long long)cns_stream_sent(st));
	cns_stream_free(st);
	st = NULL;
	free(buf);
	buf = NULL;
	free(src.fds);
	if (final == NULL)
		die("%s", err);
	hs = json_dumps(final, JSON_COMPACT);
	printf("%s\n", hs);
	free(hs);
	rejected = json_object_get(final, "rejected");
	errors = json_object_get(final, "errors");
	if (!json_is_true(json_object_get(final, "ok"))) {
		json_t *e = json_object_get(final, "error");
		if (json_is_string(e))
			fprintf(stderr, "%s: %s\n", prog, json_string_value(e));
		status = EXIT_STREAM;
	} else if (json_integer_value(rejected) != 0 ||
	    json_integer_value(json_object_get(final, "quarantined")) != 0 ||
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

static void
print_worker(json_t *w, long long now)
{
	json_t *stream = json_object_get(w, "stream"),
	    *rss = json_object_get(w, "rss_kib"),
	    *start = json_object_get(w, "start");
	char sid[32] = "-", mem[32] = "-", up[32];
	json_t *upv = NULL;

	if (json_is_integer(stream))
		snprintf(sid, sizeof sid, "%lld",
		    (long long)json_integer_value(stream));
	if (json_is_integer(rss))
		snprintf(mem, sizeof mem, "%lld KiB",
		    (long long)json_integer_value(rss));
	if (json_is_integer(start))
		upv = json_integer(now - json_integer_value(start));
	printf("  worker %-3lld pid %-7lld %-8s stream %-6s items %-9lld "
	    "served %-6lld rss %-12s up %s\n", num(w, "slot"), num(w, "pid"),
	    json_string_value(json_object_get(w, "state")), sid,
	    num(w, "items"), num(w, "streams_served"), mem,
	    age(upv, up, sizeof up));
	json_decref(upv);
}

static void	print_cluster(json_t *);

static void
print_status(json_t *v)
{
	json_t *d = json_object_get(v, "daemon"), *pools, *p, *w;
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
		int n = (int)strlen(json_string_value(json_object_get(p,
		    "name")));
		if (n > width)
			width = n;
	}
	printf("%-*s  %-8s %7s %5s %5s %5s %5s %6s %9s %10s %10s %8s %11s "
	    "%7s %8s %7s\n", width, "POOL", "MODE", "WORKERS", "BUSY", "IDLE",
	    "START", "OPEN", "QUEUED", "COMPLETED", "ITEMS_IN", "CONSUMED",
	    "REJECTED", "QUARANTINED", "CRASHES", "RESPAWNS", "WAIT");
	json_array_foreach(pools, i, p) {
		char cap[32], wait[32];
		json_t *err = json_object_get(p, "last_error");
		snprintf(cap, sizeof cap, "%lld/%lld",
		    num2(p, "workers", "total"), num(p, "capacity"));
		snprintf(wait, sizeof wait, "%.1fs",
		    json_number_value(json_object_get(p, "queue_wait")));
		printf("%-*s  %-8s %7s %5lld %5lld %5lld %5lld %6lld %9lld "
		    "%10lld %10lld %8lld %11lld %7lld %8lld %7s\n", width,
		    json_string_value(json_object_get(p, "name")),
		    json_string_value(json_object_get(p, "mode")), cap,
		    num2(p, "workers", "busy"), num2(p, "workers", "idle"),
		    num2(p, "workers", "starting"), num2(p, "streams", "open"),
		    num2(p, "streams", "queued"),
		    num2(p, "streams", "completed"), num2(p, "items", "in"),
		    num2(p, "items", "consumed"), num2(p, "items", "rejected"),
		    num2(p, "items", "quarantined"), num(p, "crashes"),
		    num(p, "respawns"), wait);
		if (json_is_true(json_object_get(p, "failed")))
			printf("  FAILED: %s\n", json_is_string(err) ?
			    json_string_value(err) : "its workers keep dying "
			    "while they start");
		json_array_foreach(json_object_get(p, "processes"), j, w)
			print_worker(w, now);
		print_cluster(json_object_get(p, "cluster"));
	}
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
	int json = 0, tty = isatty(STDOUT_FILENO), first = 1, rc;
	json_t *header, *v;

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--json") == 0)
			json = 1;
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
			usage();
		else if (pool == NULL)
			pool = argv[i];
		else
			usage();
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
			print_status(v);
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
			usage();
	}
	header = json_pack("{s:s}", "op", "pools");
	v = ask(sockpath, header);
	json_decref(header);
	if (v == NULL)
		die("pools: no answer from the daemon");
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

	if (argc != 2)
		usage();
	errno = 0;
	id = strtoll(argv[1], &end, 10);
	if (*argv[1] == '\0' || *end != '\0' || errno != 0 || id < 1)
		die("result: \"%s\" is not a stream id (a positive integer)",
		    argv[1]);
	header = json_pack("{s:s,s:I}", "op", "result", "stream",
	    (json_int_t)id);
	v = ask(sockpath, header);
	json_decref(header);
	if (v == NULL)
		die("result: no answer from the daemon");
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

	(void)argv;
	if (argc != 1)
		usage();
	header = json_pack("{s:s}", "op", "reload");
	v = ask(sockpath, header);
	json_decref(header);
	if (v == NULL)
		die("reload: no answer from the daemon");
	if ((rc = refused(v)) == 0)
		printf("reloaded: %s\n", json_string_value(json_object_get(v,
		    "reloaded")));
	json_decref(v);
	return rc;
}

int
main(int argc, char **argv)
{
	const char *sockpath = NULL;
	int ch;

	/* SIGPIPE keeps its default: the daemon's socket is written with
	 * MSG_NOSIGNAL, and a closed standard output (status --watch | head)
	 * ends the program. */
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
	sockpath = cns_socket_path(sockpath);
	argc -= optind;
	argv += optind;
	if (argc < 1)
		usage();
	if (strcmp(argv[0], "submit") == 0)
		return submit(sockpath, argc, argv);
	if (strcmp(argv[0], "status") == 0)
		return status(sockpath, argc, argv);
	if (strcmp(argv[0], "pools") == 0)
		return pools(sockpath, argc, argv);
	if (strcmp(argv[0], "reload") == 0)
		return reload(sockpath, argc, argv);
	if (strcmp(argv[0], "result") == 0)
		return result(sockpath, argc, argv);
	fprintf(stderr, "%s: unknown command \"%s\" (commands: submit, "
	    "status, pools, reload, result)\n", prog, argv[0]);
	return EXIT_LOCAL;
}
