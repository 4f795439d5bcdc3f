/*
 * notify.c - what the master tells systemd: READY=1, RELOADING=1,
 * STOPPING=1, a STATUS= line every few seconds, and WATCHDOG=1 pings.
 *
 * The watchdog pings come from a timer on the master's event loop, so they
 * stop when the loop stops turning: a master stuck in a busy loop or a
 * blocking call is killed and restarted by systemd, which is the point.
 * Built without libsystemd, or run without NOTIFY_SOCKET, every call here
 * does nothing.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>

#ifdef HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

#include "consumersd.h"

#define STATUS_EVERY	5	/* seconds between STATUS= lines */

/* Items handed to workers since the start (stream.c counts them). */
uint64_t		 cns_items_in;

#ifdef HAVE_SYSTEMD

static struct event	*status_ev;
static struct event	*watchdog_ev;
static int		 enabled;	/* NOTIFY_SOCKET was set */
static const char	*phase = "starting";
static char		 note[256];	/* notify_status(): sticky, appended */
static uint64_t		 last_items;
static double		 last_time;

/*
 * One STATUS= line: the streams not yet done (as `status` counts them),
 * the workers, and items/s since the last line.
 */
static void
send_status(void)
{
	unsigned open = 0, queued = 0, busy = 0, idle = 0;
	struct stream *s = NULL;
	struct worker *w;
	struct pool *p;
	double t = cns_now(), rate = 0;

	while ((s = stream_next(s)) != NULL) {
		queued += s->state == S_QUEUED;
		open += s->state != S_DONE;
	}
	TAILQ_FOREACH(p, pool_all(), entry)
		TAILQ_FOREACH(w, &p->workers, entry) {
			idle += w->state == W_IDLE;
			busy += w->state == W_LEASED;
		}
	if (t > last_time)
		rate = (double)(cns_items_in - last_items) / (t - last_time);
	last_items = cns_items_in;
	last_time = t;
	sd_notifyf(0, "STATUS=%s: streams %u open (%u queued), workers %u "
	    "busy, %u idle, %u total, %.0f items/s%s%s", phase, open, queued,
	    busy, idle, worker_count(), rate, note[0] != '\0' ? "; " : "",
	    note);
}

static void
on_status(evutil_socket_t fd, short ev, void *arg)
{
	struct timeval tv = { STATUS_EVERY, 0 };

	(void)fd;
	(void)ev;
	(void)arg;
	send_status();
	evtimer_add(status_ev, &tv);
}

static void
on_watchdog(evutil_socket_t fd, short ev, void *arg)
{
	(void)fd;
	(void)ev;
	(void)arg;
	sd_notify(0, "WATCHDOG=1");
}

void
notify_init(struct event_base *base)
{
	struct timeval tv;
	uint64_t usec;
	int r;

	if (getenv("NOTIFY_SOCKET") == NULL)
		return;
	enabled = 1;
	last_time = cns_now();
	status_ev = evtimer_new(base, on_status, NULL);
	if (status_ev == NULL)
		fatalx("%s: event_new", __func__);
	/* sd_watchdog_enabled() checks WATCHDOG_PID against our pid. */
	if ((r = sd_watchdog_enabled(0, &usec)) < 0) {
		log_warnx("systemd watchdog: WATCHDOG_USEC is not valid: %s",
		    strerror(-r));
		return;
	}
	if (r == 0 || usec == 0)
		return;
	/* Half the interval, as sd_watchdog_enabled(3) advises. */
	tv.tv_sec = (time_t)(usec / 2 / 1000000);
	tv.tv_usec = (suseconds_t)(usec / 2 % 1000000);
	watchdog_ev = event_new(base, -1, EV_PERSIST, on_watchdog, NULL);
	if (watchdog_ev == NULL)
		fatalx("%s: event_new", __func__);
	evtimer_add(watchdog_ev, &tv);
	log_debug("systemd watchdog: WATCHDOG=1 every %" PRIu64 " ms",
	    usec / 2000);
}

void
notify_ready(void)
{
	struct timeval soon = { 0, 0 };

	if (!enabled)
		return;
	phase = "running";
	sd_notify(0, "READY=1");
	/* The first STATUS= line on the next turn of the loop: the worker
	 * whose start made us ready is idle by then. */
	evtimer_add(status_ev, &soon);
}

void
notify_reloading(void)
{
	struct timespec ts;

	if (!enabled)
		return;
	/* MONOTONIC_USEC is what Type=notify-reload (systemd 253) wants
	 * with it; older managers ignore it. */
	clock_gettime(CLOCK_MONOTONIC, &ts);
	phase = "reloading";
	sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=%" PRIu64 "\n"
	    "STATUS=reloading the configuration",
	    (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000);
}

void
notify_stopping(void)
{
	if (!enabled)
		return;
	phase = "stopping";
	sd_notify(0, "STOPPING=1");
	send_status();
}

void
notify_status(const char *fmt, ...)
{
	va_list ap;

	if (!enabled)
		return;
	va_start(ap, fmt);
	vsnprintf(note, sizeof note, fmt, ap);
	va_end(ap);
	/* One line: a newline would start another assignment. */
	for (char *c = note; *c != '\0'; c++)
		if (*c == '\n' || *c == '\r')
			*c = ' ';
	utf8_clean(note);
	send_status();
}

void
notify_status_clear(void)
{
	note[0] = '\0';
}

void
notify_free(void)
{
	if (status_ev != NULL)
		event_free(status_ev);
	if (watchdog_ev != NULL)
		event_free(watchdog_ev);
	status_ev = watchdog_ev = NULL;
	enabled = 0;
}

#else /* !HAVE_SYSTEMD */

void
notify_init(struct event_base *base)
{
	(void)base;
}

void
notify_ready(void)
{
}

void
notify_reloading(void)
{
}

void
notify_stopping(void)
{
}

void
notify_status(const char *fmt, ...)
{
	(void)fmt;
}

void
notify_status_clear(void)
{
}

void
notify_free(void)
{
}

#endif /* HAVE_SYSTEMD */
