/*
 * status.c - what the "status" and "pools" ops answer: the daemon, each
 * pool, and each worker process, built from the tables as they are.  A
 * worker's memory comes from /proc, with bounded reads that cannot
 * block (procfs files answer at once); what /proc cannot say is null.
 * Start times are the ones the master recorded when it forked.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "consumersd.h"

/* Read at most len - 1 bytes of a /proc file, NUL-terminated; -1 if not. */
static ssize_t
proc_read(const char *path, char *buf, size_t len)
{
	ssize_t n;
	int fd;

	if ((fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)) == -1)
		return -1;
	do
		n = read(fd, buf, len - 1);
	while (n == -1 && errno == EINTR);
	close(fd);
	if (n < 0)
		return -1;
	buf[n] = '\0';
	return n;
}

/* Resident memory of pid in KiB, or -1. */
static long long
proc_rss_kib(pid_t pid)
{
	char path[64], buf[256];
	unsigned long long size, resident;

	snprintf(path, sizeof path, "/proc/%ld/statm", (long)pid);
	if (proc_read(path, buf, sizeof buf) <= 0 ||
	    sscanf(buf, "%llu %llu", &size, &resident) != 2)
		return -1;
	return (long long)(resident * (unsigned long long)sysconf(
	    _SC_PAGESIZE) / 1024);
}

static const char *
worker_state_name(enum worker_state st)
{
	switch (st) {
	case W_STARTING:	return "starting";
	case W_IDLE:		return "idle";
	case W_LEASED:		return "busy";
	case W_EXITING:		return "exiting";
	}
	return "?";
}

/* Round to milliseconds: the replies stay short and readable. */
static json_t *
seconds(double s)
{
	return json_real(s < 0 ? 0 : (double)(long long)(s * 1000 + 0.5) /
	    1000);
}

static json_t *
status_worker(struct worker *w)
{
	long long rss = proc_rss_kib(w->pid);
	json_t *v;

	v = json_pack("{s:i,s:i,s:s,s:o,s:I,s:I,s:o,s:o}",
	    "pid", (int)w->pid,
	    "slot", (int)w->slot,
	    "state", worker_state_name(w->state),
	    "stream", w->stream != NULL ? json_integer(
		(json_int_t)w->stream->id) : json_null(),
	    "items", (json_int_t)(w->stream != NULL ? w->sent : 0),
	    "streams_served", (json_int_t)w->streams_served,
	    "rss_kib", rss >= 0 ? json_integer(rss) : json_null(),
	    "start", json_integer((json_int_t)w->forked_wall));
	if (v == NULL)
		fatalx("%s: json_pack", __func__);
	return v;
}

struct pool_tally {
	unsigned	 open, queued;
	double		 wait;		/* the oldest queued stream's */
	uint64_t	 in, consumed, rejected, quarantined;
};

static void
status_tally(struct pool *p, struct pool_tally *t)
{
	struct stream *s = NULL;

	memset(t, 0, sizeof *t);
	t->in = p->done_in;
	t->consumed = p->done_consumed;
	t->rejected = p->done_rejected;
	t->quarantined = p->done_quarantined;
	while ((s = stream_next(s)) != NULL) {
		if (s->pool != p)
			continue;
		if (s->state == S_QUEUED) {
			double waited = stream_waited(s);
			t->queued++;
			if (waited > t->wait)
				t->wait = waited;
		} else if (s->state != S_DONE)
			t->open++;
		/* Streams not yet freed, done or not: stream_free adds
		 * them to the pool's done_ counts. */
		t->in += s->seq;
		t->consumed += s->consumed;
		t->rejected += s->rejected;
		t->quarantined += s->quarantined;
	}
}

static json_t *
status_pool(struct pool *p)
{
	struct pool_tally t;
	struct worker *w;
	unsigned busy = 0, starting = 0, exiting = 0;
	json_t *v, *procs;

	if ((procs = json_array()) == NULL)
		fatalx("%s: json_array", __func__);
	TAILQ_FOREACH(w, &p->workers, entry) {
		busy += w->state == W_LEASED;
		starting += w->state == W_STARTING;
		exiting += w->state == W_EXITING;
		json_array_append_new(procs, status_worker(w));
	}
	status_tally(p, &t);
	v = json_pack("{s:s,s:s,s:s,s:i,s:i,"
	    "s:{s:i,s:i,s:i,s:i,s:i},"
	    "s:{s:i,s:i,s:I},"
	    "s:{s:I,s:I,s:I,s:I},"
	    "s:I,s:I,s:b,s:s?,s:o,s:o}",
	    "name", p->pc->name,
	    "plugin", p->pc->plugin,
	    "mode", conf_mode(p->pc->mode),
	    "capacity", (int)p->pc->workers,
	    "stream_workers", (int)p->pc->stream_workers,
	    "workers",
		"total", (int)p->nworkers, "idle", (int)p->nidle,
		"busy", (int)busy, "starting", (int)starting,
		"exiting", (int)exiting,
	    "streams",
		"open", (int)t.open, "queued", (int)t.queued,
		"completed", (json_int_t)p->streams_done,
	    "items",
		"in", (json_int_t)t.in, "consumed", (json_int_t)t.consumed,
		"rejected", (json_int_t)t.rejected,
		"quarantined", (json_int_t)t.quarantined,
	    "crashes", (json_int_t)p->crashes,
	    "respawns", (json_int_t)p->respawns,
	    "failed", p->failed,
	    "last_error", p->last_error,
	    "queue_wait", seconds(t.wait),
	    "processes", procs);
	if (v == NULL)
		fatalx("%s: json_pack", __func__);
	/* Where its Redis is, whether it is up, every instance serving it. */
	if (p->pc->cluster)
		json_object_set_new(v, "cluster", cluster_status(p));
	return v;
}

/*
 * {"ok":true,"daemon":{...},"pools":[...]}: every pool, or only `only`.
 */
json_t *
status_reply(struct pool *only)
{
	struct stream *s = NULL;
	struct pool *p;
	unsigned open = 0;
	json_t *pools, *v;

	if ((pools = json_array()) == NULL)
		fatalx("%s: json_array", __func__);
	TAILQ_FOREACH(p, pool_all(), entry)
		if (only == NULL || p == only)
			json_array_append_new(pools, status_pool(p));
	while ((s = stream_next(s)) != NULL)
		open += s->state != S_DONE;
	v = json_pack("{s:b,s:{s:i,s:s,s:o,s:o,s:i,s:i,s:I},s:o}",
	    "ok", 1,
	    "daemon",
		"pid", (int)getpid(),
		"version", PACKAGE_VERSION,
		"uptime", seconds(cns_now() - cns_started_at),
		"start", json_integer((json_int_t)cns_started_wall),
		"streams_open", (int)open,
		"workers", (int)worker_count(),
		"client_output", (json_int_t)cns_client_out,
	    "pools", pools);
	if (v == NULL)
		fatalx("%s: json_pack", __func__);
	return v;
}

/* {"ok":true,"pools":[{"name","plugin","mode","workers","stream_workers"}]} */
json_t *
status_pools(void)
{
	struct pool *p;
	json_t *pools, *v;

	if ((pools = json_array()) == NULL)
		fatalx("%s: json_array", __func__);
	TAILQ_FOREACH(p, pool_all(), entry) {
		v = json_pack("{s:s,s:s,s:s,s:i,s:i}",
		    "name", p->pc->name,
		    "plugin", p->pc->plugin,
		    "mode", conf_mode(p->pc->mode),
		    "workers", (int)p->pc->workers,
		    "stream_workers", (int)p->pc->stream_workers);
		if (v == NULL)
			fatalx("%s: json_pack", __func__);
		json_array_append_new(pools, v);
	}
	return json_pack("{s:b,s:o}", "ok", 1, "pools", pools);
}
