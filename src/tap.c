/*
 * tap.c - what workers write to standard output and standard error.  Each
 * worker's two streams share one pipe to the master, which reads it
 * whenever it has data (the pipe holds 1 MiB, so a worker blocks only if
 * the master's loop stalls) and logs each line tagged with the pool, the
 * worker's slot and its pid.  A line longer than TAP_LINE is logged in
 * pieces.  Lines that make one message (a traceback: log_joins) are
 * logged as one entry, once its last line is in or no more comes soon.  The tap outlives its worker until the pipe's end, so the last
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
#define TAP_MSG		(64u << 10)	/* a message is logged at this size */
#define TAP_PIPE	(1u << 20)	/* pipe capacity asked for */

/* How long a message waits for more of its lines: a traceback's frames
 * are surely followed by its exception's line. */
static const struct timeval tap_wait = { 0, 100000 };
static const struct timeval tap_wait_open = { 1, 0 };

struct tap {
	struct bufferevent	*bev;
	struct event		*timer;	/* logs the message when no more */
	char			 tag[96];
	char			 pool[72];
	pid_t			 pid;
	char			*msg;	/* its message so far, or NULL */
	size_t			 msglen;
	int			 join;	/* log_joins' state */
	struct log_fields	 fields; /* when the message began */
	TAILQ_ENTRY(tap)	 entry;
};

static TAILQ_HEAD(, tap) taps = TAILQ_HEAD_INITIALIZER(taps);
static unsigned		 ntaps;
static int		 tap_exiting;	/* the workers are freed */

unsigned
tap_count(void)
{
	return ntaps;
}

/* The message, one entry, with the fields of when it began. */
static void
tap_emit(struct tap *t)
{
	if (t->msg == NULL)
		return;
	evtimer_del(t->timer);
	/* Blank lines after a traceback, in case a chained one followed. */
	while (t->msglen > 0 && t->msg[t->msglen - 1] == '\n')
		t->msg[--t->msglen] = '\0';
	utf8_clean(t->msg);
	log_set_fields(&t->fields);
	log_lines(LOG_LVL_INFO, t->tag, t->msg);
	log_set_fields(NULL);
	free(t->msg);
	t->msg = NULL;
	t->msglen = 0;
}

/* What the message is about: its worker, and the stream it serves. */
static void
tap_fields(struct tap *t)
{
	struct worker *w = tap_exiting ? NULL : worker_find(t->pid);

	if (w != NULL && w->stream != NULL)
		stream_log_fields(w->stream, &t->fields);
	else {
		t->fields.stream = 0;
		t->fields.client_uid = (uid_t)-1;
	}
	t->fields.pool = t->pool;
	t->fields.worker_pid = t->pid;
}

/* A line joins the message, or logs it and begins the next. */
static void
tap_line(struct tap *t, const char *line, size_t len)
{
	int joins;
	char *m;

	if (len > 0 && line[len - 1] == '\r')
		len--;
	len = strnlen(line, len);
	if (t->msg == NULL)
		t->join = 0;
	joins = log_joins(&t->join, line, len);
	if (t->msg != NULL && (!joins || t->msglen + 1 + len > TAP_MSG))
		tap_emit(t);
	if (t->msg == NULL)
		tap_fields(t);
	if ((m = realloc(t->msg, t->msglen + len + 2)) == NULL)
		fatal("%s: realloc", __func__);
	if (t->msg != NULL)
		m[t->msglen++] = '\n';
	memcpy(m + t->msglen, line, len);
	t->msglen += len;
	m[t->msglen] = '\0';
	t->msg = m;
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
			break;
		e = evbuffer_search(in, "\n", 1, NULL);
		if (e.pos != -1 && (size_t)e.pos < TAP_LINE)
			n = (size_t)e.pos;
		else if (len >= TAP_LINE || all)
			n = len < TAP_LINE ? len : TAP_LINE;
		else
			break;		/* wait for the rest of the line */
		/* An empty line: evbuffer_pullup(in, 0) returns NULL. */
		p = n > 0 ? (char *)evbuffer_pullup(in, (ev_ssize_t)n) : "";
		tap_line(t, p, n);
		evbuffer_drain(in, n + (e.pos != -1 && (size_t)e.pos == n));
	}
	if (all)
		tap_emit(t);
	else if (t->msg != NULL)
		evtimer_add(t->timer, log_join_open(t->join) ? &tap_wait_open :
		    &tap_wait);
}

static void
tap_timercb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	tap_emit(arg);
}

static void
tap_free(struct tap *t)
{
	TAILQ_REMOVE(&taps, t, entry);
	ntaps--;
	bufferevent_free(t->bev);
	event_free(t->timer);
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
	snprintf(t->pool, sizeof t->pool, "%s", pool);
	t->pid = pid;
	if ((t->timer = evtimer_new(cns_base, tap_timercb, t)) == NULL)
		fatalx("%s: evtimer_new", __func__);
	evutil_make_socket_nonblocking(fd);
	t->bev = bufferevent_socket_new(cns_base, fd, BEV_OPT_CLOSE_ON_FREE);
	if (t->bev == NULL)
		fatalx("%s: bufferevent_socket_new", __func__);
	bufferevent_setcb(t->bev, tap_readcb, NULL, tap_eventcb, t);
	bufferevent_enable(t->bev, EV_READ);
	TAILQ_INSERT_TAIL(&taps, t, entry);
	ntaps++;
}

/*
 * Before the master acts on what a worker says (its result, its end):
 * what the worker wrote before it is read and logged now, its last
 * message too, so its output comes first in the log.
 */
void
tap_sync(pid_t pid)
{
	struct evbuffer *in;
	struct tap *t;
	int fd;

	TAILQ_FOREACH(t, &taps, entry)
		if (t->pid == pid)
			break;
	if (t == NULL)
		return;
	in = bufferevent_get_input(t->bev);
	fd = bufferevent_getfd(t->bev);
	while (fd != -1 && evbuffer_read(in, fd, -1) > 0)
		;	/* to EAGAIN, or the end (the next read sees it) */
	tap_flush(t, 0);
	tap_emit(t);
}

/* At exit: what is left is logged, and the taps go. */
void
tap_free_all(void)
{
	struct tap *t;

	tap_exiting = 1;
	while ((t = TAILQ_FIRST(&taps)) != NULL) {
		tap_flush(t, 1);
		TAILQ_REMOVE(&taps, t, entry);
		ntaps--;
		bufferevent_free(t->bev);
		event_free(t->timer);
		free(t);
	}
}
