/*
 * flush.c - the master writes what a loop turn queued for a worker or a
 * client at the end of that turn, straight from the bufferevent's output,
 * rather than through libevent's write event.  A write event costs an
 * epoll_ctl to add it, a wakeup, and an epoll_ctl to remove it, for every
 * burst of frames or replies, and a one-item stream has five bursts.
 *
 * A bufferevent under flush keeps EV_WRITE disabled, so queueing output
 * costs no system call.  Only what the socket does not take at once is
 * left to the bufferevent: EV_WRITE is enabled, and libevent's write
 * event, its write timeout and the owner's write callback run until the
 * output drains; the owner's write callback then calls flush_drained().
 * An owner that asks (flush_init's notify) has its write callback run
 * once the output has drained, whoever wrote it, as with libevent's own
 * writes.
 */
#include <errno.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "consumersd.h"

static TAILQ_HEAD(, flushable) flushq = TAILQ_HEAD_INITIALIZER(flushq);
static struct event *flush_ev;

/* Write what the socket takes now; the rest goes to libevent. */
static void
flush_now(struct flushable *f)
{
	struct evbuffer *out = bufferevent_get_output(f->bev);
	int fd = bufferevent_getfd(f->bev);

	int wrote = 0, left;

	if (evbuffer_get_length(out) == 0)
		return;
	/* A bufferevent keeps its output's start frozen but while it
	 * writes. */
	evbuffer_unfreeze(out, 1);
	while (evbuffer_get_length(out) > 0) {
		int n = evbuffer_write(out, fd);
		if (n > 0) {
			wrote = 1;
			continue;
		}
		if (n == -1 && errno == EINTR)
			continue;
		break;
	}
	evbuffer_freeze(out, 1);
	left = evbuffer_get_length(out) > 0;
	if (left) {
		/* EAGAIN, or an error libevent will meet and report: its
		 * write event takes over, and calls the owner's write
		 * callback once the output drained. */
		bufferevent_enable(f->bev, EV_WRITE);
	} else if (wrote && f->notify)
		/* Drained here: the owner's write callback, as libevent
		 * would have called it (on the next loop turn). */
		bufferevent_trigger(f->bev, EV_WRITE,
		    BEV_TRIG_DEFER_CALLBACKS | BEV_TRIG_IGNORE_WATERMARKS);
}

static void
flush_run(evutil_socket_t fd, short ev, void *arg)
{
	struct flushable *f;

	(void)fd;
	(void)ev;
	(void)arg;
	while ((f = TAILQ_FIRST(&flushq)) != NULL) {
		TAILQ_REMOVE(&flushq, f, entry);
		f->queued = 0;
		flush_now(f);
	}
}

/* notify: the owner's write callback wants to know whenever the output
 * drained (a client: to close, or to read again); else only libevent's
 * write event, after a partial write, calls it. */
void
flush_init(struct flushable *f, struct bufferevent *bev, int notify)
{
	if (flush_ev == NULL &&
	    (flush_ev = event_new(cns_base, -1, 0, flush_run, NULL)) == NULL)
		fatalx("%s: event_new", __func__);
	f->bev = bev;
	f->queued = 0;
	f->notify = notify;
	bufferevent_disable(bev, EV_WRITE);
}

/* Output was queued: write it at the end of this loop turn. */
void
flush_later(struct flushable *f)
{
	if (f->bev == NULL || f->queued)
		return;
	f->queued = 1;
	TAILQ_INSERT_TAIL(&flushq, f, entry);
	if (!event_pending(flush_ev, EV_TIMEOUT, NULL))
		event_active(flush_ev, EV_TIMEOUT, 0);
}

/* Before the bufferevent is freed (or its socket shut down): write now
 * what it holds, and forget it. */
void
flush_cancel(struct flushable *f, int write_first)
{
	if (f->queued) {
		TAILQ_REMOVE(&flushq, f, entry);
		f->queued = 0;
	}
	if (write_first && f->bev != NULL)
		flush_now(f);
	if (!write_first)
		f->bev = NULL;
}

/* The owner's write callback: the output drained, so back to writing it
 * at the end of each turn. */
void
flush_drained(struct flushable *f)
{
	if (f->bev != NULL && evbuffer_get_length(bufferevent_get_output(
	    f->bev)) == 0)
		bufferevent_disable(f->bev, EV_WRITE);
}
