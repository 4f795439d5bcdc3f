/*
 * util.c - helpers every room of the master uses: the monotonic clock and
 * timevals for libevent, the process title, how a process ended, work
 * put off to the next loop turn, and JSON with reals in their fewest
 * digits.
 *
 * Work put off (cns_later) is how the master frees a worker or a pool that
 * went away while a call chain may still hold it (tmux frees its clients
 * the same way): the chain marks it gone and returns, and the free runs
 * once that callback has returned.  The daemon's own "is the stop done,
 * are the first workers up" check (cns_changed) runs the same way, so the
 * rooms below consumersd.c never call up into it.
 */
#include <sys/prctl.h>
#include <sys/queue.h>
#include <sys/wait.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>

#include "consumersd.h"

struct event_base *cns_base;	/* the master's loop; NULL: none yet */
struct conf	*cns_conf;	/* the configuration running now */
int		 cns_stopping;
const char	*cns_socket_abs;
const char	*cns_activated_socket;

double
cns_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Seconds as a timeval, for libevent's timers. */
struct timeval
cns_tv(double seconds)
{
	struct timeval tv;

	tv.tv_sec = (time_t)seconds;
	tv.tv_usec = (suseconds_t)((seconds - (double)tv.tv_sec) * 1e6);
	return tv;
}

static char	*title_base;	/* argv's storage, for the title */
static size_t	 title_len;
/* The moved environment, kept reachable for the leak checker once a
 * worker's clearenv() drops it: volatile, or the store is optimised out. */
static char	**volatile title_env;

/*
 * The title may use argv's strings and, past them, the environment's,
 * which are moved first (as setproctitle implementations do): started
 * as "/usr/sbin/consumersd" with nothing else, argv alone holds 21 bytes.
 * The kernel shows a cmdline written past argv's end up to the first NUL.
 */
void
cns_proctitle_init(int argc, char **argv)
{
	extern char **environ;
	char *end = argv[0] + strlen(argv[0]);
	char **env;
	size_t n = 0;

	for (int i = 1; i < argc; i++)
		if (argv[i] == end + 1)
			end = argv[i] + strlen(argv[i]);
	while (environ[n] != NULL)
		n++;
	if ((env = calloc(n + 1, sizeof *env)) == NULL)
		fatal("%s: calloc", __func__);
	for (size_t i = 0; i < n; i++) {
		if (environ[i] == end + 1)
			end = environ[i] + strlen(environ[i]);
		if ((env[i] = strdup(environ[i])) == NULL)
			fatal("%s: strdup", __func__);
	}
	/* Owned for the life of the process, even once a worker's
	 * clearenv() has let go of it. */
	environ = title_env = env;
	title_base = argv[0];
	title_len = (size_t)(end - argv[0]) + 1;
}

/* Show what this process is in ps: argv's storage is rewritten. */
void
cns_proctitle(const char *fmt, ...)
{
	char buf[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	prctl(PR_SET_NAME, buf + (strncmp(buf, "consumersd: ", 12) == 0 ?
	    12 : 0));
	if (title_base == NULL || title_len < 2)
		return;
	memset(title_base, 0, title_len);
	snprintf(title_base, title_len, "%s", buf);
}

char *
cns_describe_exit(int status)
{
	char *s = NULL;
	int r;

	if (WIFSIGNALED(status))
		r = asprintf(&s, "killed by signal %d (%s)%s", WTERMSIG(status),
		    strsignal(WTERMSIG(status)),
		    WCOREDUMP(status) ? ", core dumped" : "");
	else
		r = asprintf(&s, "exited with status %d", WEXITSTATUS(status));
	if (r == -1)
		fatal("%s: asprintf", __func__);
	return s;
}

struct later {
	void		(*fn)(void *);
	void		*arg;
	STAILQ_ENTRY(later) entry;
};
static STAILQ_HEAD(, later) laterq = STAILQ_HEAD_INITIALIZER(laterq);
static struct event	*later_ev;
static void		(*change_fn)(void);
static int		 change_queued;

/* Run what was put off, in order; what it puts off runs too. */
void
cns_later_run(void)
{
	struct later *l;

	while ((l = STAILQ_FIRST(&laterq)) != NULL) {
		STAILQ_REMOVE_HEAD(&laterq, entry);
		l->fn(l->arg);
		free(l);
	}
}

static void
later_cb(evutil_socket_t fd, short ev, void *arg)
{
	(void)fd;
	(void)ev;
	(void)arg;
	cns_later_run();
}

/*
 * Call fn(arg) once the callback running now has returned: in the same
 * pass of the loop, after the callbacks already active.  Without a loop
 * (cns_base NULL: unit tests) the call is made at once; after the loop,
 * main() runs what is left with cns_later_free().
 */
void
cns_later(void (*fn)(void *), void *arg)
{
	struct later *l;

	if (cns_base == NULL) {
		fn(arg);
		return;
	}
	if (later_ev == NULL &&
	    (later_ev = event_new(cns_base, -1, 0, later_cb, NULL)) == NULL)
		fatalx("%s: event_new", __func__);
	if ((l = malloc(sizeof *l)) == NULL)
		fatal("%s: malloc", __func__);
	l->fn = fn;
	l->arg = arg;
	STAILQ_INSERT_TAIL(&laterq, l, entry);
	if (!event_pending(later_ev, EV_TIMEOUT, NULL))
		event_active(later_ev, EV_TIMEOUT, 0);
}

void
cns_later_free(void)
{
	cns_later_run();
	if (later_ev != NULL) {
		event_free(later_ev);
		later_ev = NULL;
	}
	change_queued = 0;
}

static void
change_cb(void *arg)
{
	(void)arg;
	change_queued = 0;
	if (change_fn != NULL)
		change_fn();
}

/* Who wants to hear that a worker, a stream or a tap came or went. */
void
cns_on_change(void (*fn)(void))
{
	change_fn = fn;
}

/* A worker, a stream or a tap came or went: tell the daemon, later. */
void
cns_changed(void)
{
	if (change_fn == NULL || change_queued)
		return;
	change_queued = 1;
	cns_later(change_cb, NULL);
}

/*
 * d in the fewest digits (15 to 17) that read back as d, spelled the way
 * jansson spells reals (always a '.' or an 'e'); its length, 0 if none
 * fits in len.
 */
static size_t
real_shortest(double d, char *buf, size_t len)
{
	json_t	*r = json_real(d);
	size_t	 n = 0;
	int	 p;

	for (p = 15; r != NULL && p <= 17; p++) {
		n = json_dumpb(r, buf, len - 1, JSON_ENCODE_ANY |
		    JSON_REAL_PRECISION(p));
		if (n == 0 || n >= len - 1) {
			n = 0;
			break;
		}
		buf[n] = '\0';
		if (strtod(buf, NULL) == d)
			break;
	}
	json_decref(r);
	return n;
}

/*
 * json_dumps, but each real in the fewest digits that read back as the
 * same double: 0.1, not 0.10000000000000001.  jansson takes one precision
 * for a whole dump, and 15 digits lose what a value with 17 holds; so this
 * dumps at 17 (flags without JSON_REAL_PRECISION) and rewrites each real
 * into a new string.  Fewer digits can take more characters (between
 * 1e15 and 1e17 jansson writes 17 digits plain and fewer with an
 * exponent), so the copy may grow.  NULL when json_dumps or malloc fails;
 * the caller frees the string.
 */
char *
cns_json_dumps(const json_t *v, size_t flags)
{
	char	*s = json_dumps(v, flags), *o = NULL, *t;
	char	 tok[40];
	size_t	 r = 0, w = 0, cap, n, m;
	int	 quoted = 0;

	if (s == NULL)
		return NULL;
	cap = strlen(s) + 64;
	if ((o = malloc(cap)) == NULL)
		goto fail;
	while (s[r] != '\0') {
		char c = s[r];

		if (cap - w < sizeof tok + 2) {
			if ((t = realloc(o, cap * 2)) == NULL)
				goto fail;
			o = t;
			cap *= 2;
		}
		if (quoted || c == '"') {
			o[w++] = s[r++];
			if (quoted && c == '\\' && s[r] != '\0')
				o[w++] = s[r++];
			else if (c == '"')
				quoted = !quoted;
			continue;
		}
		if (c != '-' && (c < '0' || c > '9')) {
			o[w++] = s[r++];
			continue;
		}
		n = strspn(s + r, "-+.0123456789eE");
		m = 0;
		if (n < sizeof tok) {
			memcpy(tok, s + r, n);
			tok[n] = '\0';
			if (strpbrk(tok, ".eE") != NULL)	/* a real */
				m = real_shortest(strtod(tok, NULL), tok,
				    sizeof tok);
		}
		if (m > 0) {
			memcpy(o + w, tok, m);
			w += m;
			r += n;
			continue;
		}
		/* Not a real, or too long to be one of jansson's: as is. */
		while (n > 0 && cap - w < n + 1) {
			if ((t = realloc(o, cap * 2)) == NULL)
				goto fail;
			o = t;
			cap *= 2;
		}
		memcpy(o + w, s + r, n);
		w += n;
		r += n;
	}
	o[w] = '\0';
	free(s);
	return o;
fail:
	free(o);
	free(s);
	return NULL;
}
