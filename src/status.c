/*
 * status.c - what the "status" and "pools" ops answer: the daemon, each
 * pool, and each worker process, built from the tables as they are.  A
 * worker's memory comes from /proc, with bounded reads that cannot
 * block (procfs files answer at once); what /proc cannot say is null.
 * Start times are the ones the master recorded when it forked.  A pool
 * is shown by name: the pools of that name a reload retired add their
 * counts and their workers (as "retiring") while their streams finish.
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

/* A worker; `retiring`: of a pool a reload replaced, finishing its
 * streams. */
static json_t *
status_worker(struct worker *w, int retiring)
{
	long long rss = proc_rss_kib(w->pid);
	json_t *v;

	v = json_pack("{s:i,s:i,s:s,s:o,s:I,s:I,s:o,s:o}",
	    "pid", (int)w->pid,
	    "slot", (int)w->slot,
	    "state", retiring ? "retiring" : worker_state_name(w->state),
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

/*
 * Items per second over the last RATE_SECONDS, or since `since` if that
 * is later; over a second at least, so a first burst is not taken for a
 * rate.
 */
static double
recent_rate(const struct item_rate *r, double since)
{
	double now = cns_now(), from, span;

	from = (double)(int64_t)now - (RATE_SECONDS - 1);
	if (since > from)
		from = since;
	if ((span = now - from) < 1)
		span = 1;
	return rate_avg(r, (int64_t)now) * RATE_SECONDS / span;
}

static const char *
stream_state_name(enum stream_state st)
{
	switch (st) {
	case S_QUEUED:		return "queued";
	case S_RUNNING:		return "running";
	case S_COMPLETING:	return "completing";
	case S_DONE:		return "done";
	}
	return "?";
}

/*
 * Items the stream's workers have finished: those its returned consume
 * calls consumed, and those the running ones have moved past (each
 * worker's page says how many; trusted no further than its lane's items).
 */
static uint64_t
stream_done(const struct stream *s)
{
	uint64_t done = s->consumed;

	for (unsigned i = 0; i < s->nw; i++) {
		const struct lane *l = &s->lanes[i];
		const struct worker *w = s->w[i];
		uint64_t n = l->acked;

		if (l->state != L_LIVE)
			continue;
		if (w != NULL && w->stream == s && w->shm != NULL)
			n += shm_load(&w->shm->ndone);
		done += n < l->items ? n : l->items;
	}
	return done < s->seq ? done : s->seq;
}

/* An open stream: who sent it, to which pool, how far it is. */
static json_t *
status_stream(struct stream *s)
{
	struct peer *peer = s->src.ops->peer != NULL ?
	    s->src.ops->peer(s->src.arg) : NULL;
	json_t *v;

	v = json_pack("{s:I,s:s,s:s,s:o,s:o,s:i,s:{s:I,s:I},s:o}",
	    "id", (json_int_t)s->id,
	    "pool", s->pool->pc->name,
	    "state", stream_state_name(s->state),
	    "client", peer != NULL ? json_pack("{s:i,s:I}", "pid",
		(int)peer->pid, "uid", (json_int_t)peer->uid) : json_null(),
	    "age", seconds(cns_now() - s->since),
	    "workers", (int)s->nlive,
	    "items", "in", (json_int_t)s->seq,
		"done", (json_int_t)stream_done(s),
	    "rate", seconds(s->state == S_QUEUED ? 0 :
		recent_rate(&s->rate, s->leased_at)));
	if (v == NULL)
		fatalx("%s: json_pack", __func__);
	return v;
}

struct pool_tally {
	unsigned	 open, queued;
	double		 wait;		/* the oldest queued stream's */
	double		 rate;		/* items/s */
	uint64_t	 in, consumed, rejected, quarantined;
	uint64_t	 completed, crashes, respawns;
};

/*
 * A pool's counts belong to its name: those of the pools of that name a
 * reload retired (their streams finish on their own workers) are added,
 * until they go (pool_retire_check adds them to the pool then).
 */
static int
same_name(const struct pool *a, const struct pool *b)
{
	return a == b || strcmp(a->pc->name, b->pc->name) == 0;
}

static void
status_tally(struct pool *p, struct pool_tally *t)
{
	struct stream *s = NULL;
	struct pool *q;

	memset(t, 0, sizeof *t);
	t->rate = recent_rate(&p->rate, p->since);
	t->in = p->done_in;
	t->consumed = p->done_consumed;
	t->rejected = p->done_rejected;
	t->quarantined = p->done_quarantined;
	t->completed = p->streams_done;
	t->crashes = p->crashes;
	t->respawns = p->respawns;
	TAILQ_FOREACH(q, pool_retired(), entry) {
		if (!same_name(q, p))
			continue;
		t->rate += recent_rate(&q->rate, q->since);
		t->in += q->done_in;
		t->consumed += q->done_consumed;
		t->rejected += q->done_rejected;
		t->quarantined += q->done_quarantined;
		t->completed += q->streams_done;
		t->crashes += q->crashes;
		t->respawns += q->respawns;
	}
	while ((s = stream_next(s)) != NULL) {
		if (!same_name(s->pool, p))
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
	unsigned busy = 0, starting = 0, exiting = 0, retiring = 0;
	struct pool *q;
	json_t *v, *procs;

	if ((procs = json_array()) == NULL)
		fatalx("%s: json_array", __func__);
	TAILQ_FOREACH(w, &p->workers, entry) {
		busy += w->state == W_LEASED;
		starting += w->state == W_STARTING;
		exiting += w->state == W_EXITING;
		json_array_append_new(procs, status_worker(w, 0));
	}
	TAILQ_FOREACH(q, pool_retired(), entry)
		if (same_name(q, p))
			TAILQ_FOREACH(w, &q->workers, entry) {
				retiring++;
				json_array_append_new(procs,
				    status_worker(w, 1));
			}
	status_tally(p, &t);
	v = json_pack("{s:s,s:s,s:s,s:i,s:i,"
	    "s:{s:i,s:i,s:i,s:i,s:i,s:i},"
	    "s:{s:i,s:i,s:I},"
	    "s:{s:I,s:I,s:I,s:I},"
	    "s:I,s:I,s:b,s:s?,s:o,s:o,s:o}",
	    "name", p->pc->name,
	    "plugin", p->pc->plugin,
	    "mode", conf_mode(p->pc->mode),
	    "capacity", (int)p->pc->workers,
	    "stream_workers", (int)p->pc->stream_workers,
	    "workers",
		"total", (int)p->nworkers, "idle", (int)p->nidle,
		"busy", (int)busy, "starting", (int)starting,
		"exiting", (int)exiting, "retiring", (int)retiring,
	    "streams",
		"open", (int)t.open, "queued", (int)t.queued,
		"completed", (json_int_t)t.completed,
	    "items",
		"in", (json_int_t)t.in, "consumed", (json_int_t)t.consumed,
		"rejected", (json_int_t)t.rejected,
		"quarantined", (json_int_t)t.quarantined,
	    "crashes", (json_int_t)t.crashes,
	    "respawns", (json_int_t)t.respawns,
	    "failed", p->failed,
	    "last_error", p->last_error,
	    "queue_wait", seconds(t.wait),
	    "items_per_second", seconds(t.rate),
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
	json_t *pools, *streams, *v;

	if ((pools = json_array()) == NULL || (streams = json_array()) == NULL)
		fatalx("%s: json_array", __func__);
	TAILQ_FOREACH(p, pool_all(), entry)
		if (only == NULL || p == only)
			json_array_append_new(pools, status_pool(p));
	while ((s = stream_next(s)) != NULL) {
		if (s->state == S_DONE)
			continue;
		open++;
		if (only == NULL || strcmp(s->pool->pc->name,
		    only->pc->name) == 0)
			json_array_append_new(streams, status_stream(s));
	}
	v = json_pack("{s:b,s:{s:i,s:s,s:o,s:o,s:i,s:i,s:I},s:o,s:o}",
	    "ok", 1,
	    "daemon",
		"pid", (int)getpid(),
		"version", PACKAGE_VERSION,
		"uptime", seconds(cns_now() - cns_started_at),
		"start", json_integer((json_int_t)cns_started_wall),
		"streams_open", (int)open,
		"workers", (int)worker_count(),
		"client_output", (json_int_t)cns_client_out,
	    "pools", pools,
	    "streams", streams);
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

/* A label value as OpenMetrics quotes it: \\, \" and \n escaped. */
static void
metrics_label(FILE *f, const char *s)
{
	for (; *s != '\0'; s++) {
		if (*s == '\\' || *s == '"')
			fputc('\\', f);
		if (*s == '\n')
			fputs("\\n", f);
		else
			fputc(*s, f);
	}
}

/*
 * One family: its metadata, then one sample per pool of the value at
 * pools[i].path (path "a/b": member b of member a).  label/value, if
 * set, add a second label.
 */
static void
metrics_family(FILE *f, json_t *pools, const char *name, const char *type,
    const char *unit, const char *help, const char *suffix,
    const char *label, const char *const *values, const char *const *paths)
{
	json_t *p, *v;
	size_t i, k;
	char key[64], *sub;

	fprintf(f, "# TYPE consumersd_%s %s\n", name, type);
	if (unit != NULL)
		fprintf(f, "# UNIT consumersd_%s %s\n", name, unit);
	fprintf(f, "# HELP consumersd_%s %s\n", name, help);
	json_array_foreach(pools, i, p) {
		for (k = 0; paths[k] != NULL; k++) {
			snprintf(key, sizeof key, "%s", paths[k]);
			v = p;
			if ((sub = strchr(key, '/')) != NULL) {
				*sub++ = '\0';
				v = json_object_get(v, key);
				v = json_object_get(v, sub);
			} else
				v = json_object_get(v, key);
			fprintf(f, "consumersd_%s%s{pool=\"", name, suffix);
			metrics_label(f, json_string_value(json_object_get(p,
			    "name")));
			fputc('"', f);
			if (label != NULL)
				fprintf(f, ",%s=\"%s\"", label, values[k]);
			if (json_is_integer(v))
				fprintf(f, "} %" JSON_INTEGER_FORMAT "\n",
				    json_integer_value(v));
			else
				fprintf(f, "} %.6f\n", json_number_value(v));
		}
	}
}

/*
 * {"ok":true,"metrics":"..."}: every pool's counters as OpenMetrics text,
 * ending in "# EOF".  The same numbers as the status op.
 */
json_t *
status_metrics(void)
{
	static const char *const wstates[] = { "idle", "busy", "starting",
	    "exiting", "retiring", NULL };
	static const char *const wpaths[] = { "workers/idle", "workers/busy",
	    "workers/starting", "workers/exiting", "workers/retiring", NULL };
	static const char *const sstates[] = { "open", "queued", NULL };
	static const char *const spaths[] = { "streams/open",
	    "streams/queued", NULL };
	static const char *const outcomes[] = { "in", "consumed", "rejected",
	    "quarantined", NULL };
	static const char *const ipaths[] = { "items/in", "items/consumed",
	    "items/rejected", "items/quarantined", NULL };
	static const char *const completed[] = { "streams/completed", NULL };
	static const char *const crashes[] = { "crashes", NULL };
	static const char *const respawns[] = { "respawns", NULL };
	static const char *const wait[] = { "queue_wait", NULL };
	json_t *st, *pools, *v;
	char *text = NULL;
	size_t len = 0;
	FILE *f;

	st = status_reply(NULL);
	pools = json_object_get(st, "pools");
	if ((f = open_memstream(&text, &len)) == NULL)
		fatal("%s: open_memstream", __func__);
	metrics_family(f, pools, "workers", "gauge", NULL,
	    "Worker processes of a pool, by state.", "", "state", wstates,
	    wpaths);
	metrics_family(f, pools, "streams", "gauge", NULL,
	    "Streams of a pool that are open or queued.", "", "state",
	    sstates, spaths);
	metrics_family(f, pools, "streams_completed", "counter", NULL,
	    "Streams of a pool that have ended.", "_total", NULL, NULL,
	    completed);
	metrics_family(f, pools, "items", "counter", NULL,
	    "Items of a pool: received (in), and by outcome.", "_total",
	    "outcome", outcomes, ipaths);
	metrics_family(f, pools, "crashes", "counter", NULL,
	    "Worker crashes in a pool.", "_total", NULL, NULL, crashes);
	metrics_family(f, pools, "respawns", "counter", NULL,
	    "Workers started again after one ended.", "_total", NULL, NULL,
	    respawns);
	metrics_family(f, pools, "queue_wait_seconds", "gauge", "seconds",
	    "Time streams of a pool waited for workers.", "", NULL, NULL,
	    wait);
	fputs("# EOF\n", f);
	if (fclose(f) != 0)
		fatal("%s: fclose", __func__);
	v = json_pack("{s:b,s:s%}", "ok", 1, "metrics", text, len);
	if (v == NULL)
		fatalx("%s: json_pack", __func__);
	free(text);
	json_decref(st);
	return v;
}
