/*
 * tap.c - what workers write to standard output and standard error.  Each
 * worker's two streams share one pipe to the master, which reads it
 * whenever it has data (the pipe holds 1 MiB, so a worker blocks only if
 * the master's loop stalls) and logs each line tagged with the pool, the
 * worker's slot and its pid.  A line longer than TAP_LINE is logged in
 * pieces.  The tap outlives its worker until the pipe's end, so the last
 * words of a dying worker (a sanitizer report, say) are not lost.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "consumersd.h"

#define TAP_LINE	4096		/* logged in pieces past this */
#define TAP_PIPE	(1u << 20)	/* pipe capacity asked for */

struct tap {
	struct bufferevent	*bev;
	char			 tag[96];
	TAILQ_ENTRY(tap)	 entry;
};

static TAILQ_HEAD(, tap) taps = TAILQ_HEAD_INITIALIZER(taps);
static unsigned		 ntaps;

unsigned
tap_count(void)
{
	return ntaps;
}

static void
tap_line(struct tap *t, const char *line, size_t len)
{
	char *s;

	if (len > 0 && line[len - 1] == '\r')
		len--;
	if ((s = strndup(line, len)) == NULL)
		fatal("%s: strndup", __func__);
	utf8_clean(s);
	log_info("%s: %s", t->tag, s);
	free(s);
}

static void
tap_flush(struct tap *t, int all)
{
	struct evbuffer *in = bufferevent_get_input(t->bev);

	for (;;) {
		size_t len = evbuffer_get_length(in), n;
		struct evbuffer_ptr e;
		char *p;

		if (len == 0)
			return;
		e = evbuffer_search(in, "\n", 1, NULL);
		if (e.pos != -1 && (size_t)e.pos < TAP_LINE)
			n = (size_t)e.pos;
		else if (len >= TAP_LINE || all)
			n = len < TAP_LINE ? len : TAP_LINE;
		else
			return;		/* wait for the rest of the line */
		/* An empty line: evbuffer_pullup(in, 0) returns NULL. */
		p = n > 0 ? (char *)evbuffer_pullup(in, (ev_ssize_t)n) : "";
		tap_line(t, p, n);
		evbuffer_drain(in, n + (e.pos != -1 && (size_t)e.pos == n));
	}
}

static void
tap_free(struct tap *t)
{
	TAILQ_REMOVE(&taps, t, entry);
	ntaps--;
	bufferevent_free(t->bev);
	free(t);
	cns_changed();		/* a stop may wait for its last lines */
}

static void
tap_readcb(struct bufferevent *bev, void *arg)
{
	(void)bev;
	tap_flush(arg, 0);
}

static void
tap_eventcb(struct bufferevent *bev, short what, void *arg)
{
	struct tap *t = arg;

	(void)bev;
	if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
		tap_flush(t, 1);
		tap_free(t);
	}
}

/*
 * A pipe for a worker about to be forked: fds[1] becomes its stdout and
 * stderr, fds[0] stays here.  -1 (and the worker keeps the daemon's
 * stderr) if no pipe can be made.
 */
int
tap_pipe(int fds[2])
{
	if (pipe2(fds, O_CLOEXEC) == -1) {
		log_warn("pipe for a worker's output");
		return -1;
	}
	fcntl(fds[0], F_SETPIPE_SZ, TAP_PIPE);	/* best effort */
	return 0;
}

/* After the fork: read fd, tagging lines as pool/slot/pid. */
void
tap_start(int fd, const char *pool, unsigned slot, pid_t pid)
{
	struct tap *t;

	if ((t = calloc(1, sizeof *t)) == NULL)
		fatal("%s: calloc", __func__);
	snprintf(t->tag, sizeof t->tag, "pool %s worker %u (pid %ld)", pool,
	    slot, (long)pid);
	evutil_make_socket_nonblocking(fd);
	t->bev = bufferevent_socket_new(cns_base, fd, BEV_OPT_CLOSE_ON_FREE);
	if (t->bev == NULL)
		fatalx("%s: bufferevent_socket_new", __func__);
	bufferevent_setcb(t->bev, tap_readcb, NULL, tap_eventcb, t);
	bufferevent_enable(t->bev, EV_READ);
	TAILQ_INSERT_TAIL(&taps, t, entry);
	ntaps++;
}

/* At exit: what is left is logged, and the taps go. */
void
tap_free_all(void)
{
	struct tap *t;

	while ((t = TAILQ_FIRST(&taps)) != NULL) {
		tap_flush(t, 1);
		TAILQ_REMOVE(&taps, t, entry);
		ntaps--;
		bufferevent_free(t->bev);
		free(t);
	}
}
