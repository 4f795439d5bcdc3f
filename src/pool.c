/*
 * pool.c - the pool table: keeping each pool's workers alive, leasing idle
 * workers to streams, and the FIFO of streams waiting for a worker.
 * Respawns after failed starts back off exponentially.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>

#include "consumersd.h"

static struct poolq	pools = TAILQ_HEAD_INITIALIZER(pools);
static struct poolq	retired = TAILQ_HEAD_INITIALIZER(retired);

static void	pool_manage(evutil_socket_t, short, void *);
static int		pools_stopping;

struct poolq *
pool_all(void)
{
	return &pools;
}

/* Pools a reload replaced or removed, while their streams finish. */
struct poolq *
pool_retired(void)
{
	return &retired;
}

struct pool *
pool_find(const char *name)
{
	struct pool *p;

	TAILQ_FOREACH(p, &pools, entry)
		if (strcmp(p->pc->name, name) == 0)
			return p;
	return NULL;
}

static void
pool_respawn(evutil_socket_t fd, short ev, void *arg)
{
	struct pool *p = arg;

	(void)fd;
	(void)ev;
	pool_start(p);
}

/* item_timeout: look at every leased worker's current item. */
static void
pool_watch(evutil_socket_t fd, short ev, void *arg)
{
	struct pool *p = arg;
	struct worker *w, *next;
	struct timespec ts;

	(void)fd;
	(void)ev;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	for (w = TAILQ_FIRST(&p->workers); w != NULL; w = next) {
		next = TAILQ_NEXT(w, entry);
		worker_watch(w, (double)ts.tv_sec + ts.tv_nsec / 1e9);
	}
}

struct pool *
pool_new(struct pool_conf *pc)
{
	struct pool *p;

	if ((p = calloc(1, sizeof *p)) == NULL)
		fatal("%s: calloc", __func__);
	p->pc = pc;
	TAILQ_INIT(&p->workers);
	TAILQ_INIT(&p->queue);
	TAILQ_INIT(&p->lanes);
	if (cns_base != NULL)
		p->respawn_ev = evtimer_new(cns_base, pool_respawn, p);
	p->spawn_rate = 1;
	p->since = cns_now();
	if (cns_base != NULL && pc->mode != MODE_STATIC) {
		/* A tick of a second; ondemand's idle limit may ask less. */
		double every = pc->mode == MODE_ONDEMAND &&
		    pc->idle_timeout / 4 < 1 ? pc->idle_timeout / 4 : 1;
		struct timeval tv;
		if (every < 0.05)
			every = 0.05;
		tv = cns_tv(every);
		p->manage_ev = event_new(cns_base, -1, EV_PERSIST, pool_manage,
		    p);
		event_add(p->manage_ev, &tv);
	}
	if (cns_base != NULL && pc->item_timeout > 0) {
		/* Look five times per timeout: a stuck item is killed
		 * within 1.2 timeouts, or 1 s after, whichever is less. */
		double every = pc->item_timeout / 5;
		struct timeval tv;
		if (every < 0.01)
			every = 0.01;
		if (every > 1)
			every = 1;
		tv = cns_tv(every);
		p->watch_ev = event_new(cns_base, -1, EV_PERSIST, pool_watch, p);
		event_add(p->watch_ev, &tv);
	}
	return p;
}

void
pool_lane_wait(struct pool *p, struct lane *l)
{
	TAILQ_INSERT_TAIL(&p->lanes, l, wentry);
}

void
pool_lane_unwait(struct pool *p, struct lane *l)
{
	TAILQ_REMOVE(&p->lanes, l, wentry);
}

void
pool_add(struct pool *p)
{
	TAILQ_INSERT_TAIL(&pools, p, entry);
}

void
pool_free(struct pool *p)
{
	if (p->respawn_ev != NULL)
		event_free(p->respawn_ev);
	if (p->watch_ev != NULL)
		event_free(p->watch_ev);
	if (p->manage_ev != NULL)
		event_free(p->manage_ev);
	free(p->last_error);
	conf_unref(p->conf);
	free(p);
}

/*
 * A reload replaced the pool (`successor`) or removed it (NULL).  It takes
 * no new streams: queued ones move to the successor or are refused.  Its
 * running streams finish on its own workers, which then exit; the pool is
 * freed when nothing points to it any more.
 */
void
pool_retire(struct pool *p, struct pool *successor)
{
	struct stream *s;
	char msg[200];

	TAILQ_REMOVE(&pools, p, entry);
	TAILQ_INSERT_TAIL(&retired, p, entry);
	p->retiring = 1;
	while ((s = TAILQ_FIRST(&p->queue)) != NULL) {
		if (successor == NULL) {
			snprintf(msg, sizeof msg, "pool %s was removed by a "
			    "configuration reload", p->pc->name);
			stream_refuse(s, "unknown_pool", msg);
			continue;
		}
		TAILQ_REMOVE(&p->queue, s, qentry);
		p->nstreams--;
		s->pool = successor;
		successor->nstreams++;
		TAILQ_INSERT_TAIL(&successor->queue, s, qentry);
	}
	pool_retire_check(p);
}

static void
pool_free_cb(void *arg)
{
	pool_free(arg);
}

/*
 * A pool's counters belong to its name: what a retired pool counted goes
 * to the pool of its name, if there is one, when it goes (status adds
 * them up until then).
 */
static void
pool_fold(struct pool *into, const struct pool *from)
{
	into->respawns += from->respawns;
	into->streams_done += from->streams_done;
	into->crashes += from->crashes;
	into->done_in += from->done_in;
	into->done_consumed += from->done_consumed;
	into->done_rejected += from->done_rejected;
	into->done_quarantined += from->done_quarantined;
	for (int64_t t = from->rate.sec - RATE_SECONDS + 1;
	    t <= from->rate.sec; t++)
		if (t >= 0 && from->rate.n[t % RATE_SECONDS] > 0)
			rate_add(&into->rate, t,
			    from->rate.n[t % RATE_SECONDS]);
}

/* A retiring pool: stop its workers once its streams are done; free it
 * once nothing points to it. */
void
pool_retire_check(struct pool *p)
{
	struct worker *w, *next;

	if (!p->retiring)
		return;
	if (p->nrunning == 0)
		for (w = TAILQ_FIRST(&p->workers); w != NULL; w = next) {
			next = TAILQ_NEXT(w, entry);
			if (w->state != W_EXITING)
				worker_stop(w);
		}
	if (p->nworkers == 0 && p->nstreams == 0 && !p->freeing) {
		struct pool *heir = pool_find(p->pc->name);

		log_info("pool %s: the configuration it ran under is retired",
		    p->pc->name);
		TAILQ_REMOVE(&retired, p, entry);
		if (heir != NULL)
			pool_fold(heir, p);
		/* Callers up the stack may still hold it: freed later. */
		p->freeing = 1;
		cns_later(pool_free_cb, p);
	}
}

void
pool_stream_new(struct pool *p)
{
	p->nstreams++;
}

void
pool_stream_free(struct pool *p)
{
	p->nstreams--;
	pool_retire_check(p);
}

/* The lowest slot number no live worker of the pool uses. */
unsigned
pool_slot(struct pool *p)
{
	for (unsigned slot = 1;; slot++) {
		struct worker *w;
		int used = 0;
		TAILQ_FOREACH(w, &p->workers, entry)
			if (w->slot == slot && w->state != W_EXITING)
				used = 1;
		if (!used)
			return slot;
	}
}

/* Workers that streams are waiting for: queued wants and lanes. */
static unsigned
pool_wanted(struct pool *p)
{
	struct stream *s;
	struct lane *l;
	unsigned n = 0;

	TAILQ_FOREACH(s, &p->queue, qentry)
		n += s->want;
	TAILQ_FOREACH(l, &p->lanes, wentry)
		n++;
	return n;
}

/*
 * How many workers the pool should have now, by its mode: static keeps
 * `workers`; dynamic keeps min_spare idle ones on top of the busy ones,
 * and more while streams wait; ondemand has only what streams need.
 */
static unsigned
pool_target(struct pool *p, unsigned busy)
{
	const struct pool_conf *pc = p->pc;
	unsigned want = pool_wanted(p), t;

	if (p->retiring)
		return busy + want;
	switch (pc->mode) {
	case MODE_DYNAMIC:
		t = busy + (want > pc->min_spare ? want : pc->min_spare);
		break;
	case MODE_ONDEMAND:
		t = busy + want;
		break;
	default:
		t = pc->workers;
	}
	return t < pc->workers ? t : pc->workers;
}

/* Bring the pool up to its size. */
void
pool_start(struct pool *p)
{
	struct worker *w;
	unsigned live = 0, busy = 0, target, spawned = 0;

	/* A retiring pool starts workers only for lanes of its streams. */
	if (pools_stopping || (p->retiring && TAILQ_EMPTY(&p->lanes)))
		return;
	TAILQ_FOREACH(w, &p->workers, entry) {
		if (w->state != W_EXITING)
			live++;
		if (w->state == W_LEASED)
			busy++;
	}
	target = pool_target(p, busy);
	while (live < target) {
		/* dynamic ramps up: 1, 2, 4... spawns a tick, up to 32. */
		if (p->pc->mode == MODE_DYNAMIC && spawned >= p->spawn_rate &&
		    live >= busy + p->pc->min_spare)
			break;
		if (cns_conf != NULL && cns_conf->max_workers > 0 &&
		    worker_count() >= cns_conf->max_workers) {
			/* Try again in a second: nothing else would for a
			 * static pool once others' workers exit. */
			struct timeval tv = { 1, 0 };
			if (!p->capped)
				log_warnx("pool %s: max_workers (%u) reached; "
				    "%u more worker%s wait for others to exit",
				    p->pc->name, cns_conf->max_workers,
				    target - live, target - live == 1 ? "" : "s");
			p->capped = 1;
			if (p->respawn_ev != NULL &&
			    !evtimer_pending(p->respawn_ev, NULL))
				evtimer_add(p->respawn_ev, &tv);
			return;
		}
		p->capped = 0;
		if (worker_spawn(p, pool_slot(p)) == NULL) {
			/* Out of fds or processes: try again shortly. */
			struct timeval tv = { 1, 0 };
			if (p->respawn_ev != NULL &&
			    !evtimer_pending(p->respawn_ev, NULL))
				evtimer_add(p->respawn_ev, &tv);
			break;
		}
		live++;
		spawned++;
	}
}

/* A stream waits for workers: ondemand and dynamic pools start some. */
void
pool_demand(struct pool *p)
{
	if (p->pc->mode != MODE_STATIC)
		pool_start(p);
}

/*
 * Once a tick for dynamic and ondemand pools: spare idle workers beyond
 * max_spare, or idle longer than idle_timeout, exit; the dynamic spawn
 * rate doubles while it is short of spare workers.
 */
static void
pool_manage(evutil_socket_t fd, short ev, void *arg)
{
	struct pool *p = arg;
	const struct pool_conf *pc = p->pc;
	struct worker *w, *next;
	double now = cns_now();
	unsigned idle = p->nidle;

	(void)fd;
	(void)ev;
	for (w = TAILQ_FIRST(&p->workers); w != NULL; w = next) {
		next = TAILQ_NEXT(w, entry);
		if (w->state != W_IDLE)
			continue;
		if ((pc->mode == MODE_DYNAMIC && idle > pc->max_spare) ||
		    (pc->mode == MODE_ONDEMAND &&
		    now - w->idle_since >= pc->idle_timeout)) {
			log_debug("pool %s: worker %u (pid %ld) is not needed; "
			    "stopping it", pc->name, w->slot, (long)w->pid);
			worker_stop(w);
			idle--;
		}
	}
	if (pc->mode == MODE_DYNAMIC) {
		if (p->nidle < pc->min_spare)
			p->spawn_rate = p->spawn_rate < 32 ? p->spawn_rate * 2 :
			    32;
		else
			p->spawn_rate = 1;
	}
	pool_start(p);
}

/* Take up to `want` idle workers for a stream; returns how many. */
unsigned
pool_lease(struct pool *p, unsigned want, struct worker **out)
{
	struct worker *w;
	unsigned n = 0;

	TAILQ_FOREACH(w, &p->workers, entry) {
		if (n == want)
			break;
		if (w->state != W_IDLE || w->closed || w->reaped)
			continue;	/* dead, not yet declared gone */
		w->state = W_LEASED;
		p->nidle--;
		out[n++] = w;
	}
	return n;
}

/* A worker is free: give it to the stream that waited longest. */
void
pool_idle(struct pool *p, struct worker *w)
{
	if (w->streams_served > 0 || w->state == W_STARTING) {
		if (p->failed)
			log_info("pool %s: a worker started; the pool serves "
			    "again", p->pc->name);
		p->failed = 0;
		p->last_in_init = 0;
	}
	if (w->streams_served > 0)
		p->init_failures = 0;	/* it works: no more backoff */
	w->stream = NULL;
	if (p->pc->max_streams > 0 && w->streams_served >= p->pc->max_streams) {
		/* Recycled: a fresh process takes its place. */
		log_debug("pool %s: worker %u (pid %ld) served %u streams "
		    "(max_streams); replacing it", p->pc->name, w->slot,
		    (long)w->pid, w->streams_served);
		w->state = W_LEASED;	/* not idle: worker_stop leaves nidle */
		worker_stop(w);
		pool_start(p);
		pool_dispatch(p);
		return;
	}
	w->state = W_IDLE;
	w->idle_since = cns_now();
	p->nidle++;
	pool_dispatch(p);
}

/*
 * Why the pool cannot take streams now, or NULL: its workers keep failing
 * to start and none is up, so waiting would only end in a timeout.
 */
static const char *pool_broken(struct pool *, int lanes);

const char *
pool_unavailable(struct pool *p)
{
	if (cns_stopping)
		return "consumersd is shutting down";
	return pool_broken(p, 0);
}

/*
 * Why the pool's own workers cannot serve its queued streams (or, with
 * `lanes`, the lanes of its running ones), or NULL: crash_refuse says, and
 * no worker is up.  A pool that only backs off keeps its streams waiting
 * (queue_timeout), and one whose other workers run serves with them.
 */
static const char *
pool_broken(struct pool *p, int lanes)
{
	struct worker *w;

	if (!crash_refuse(p->failed, p->last_in_init, lanes))
		return NULL;
	TAILQ_FOREACH(w, &p->workers, entry)
		if (w->state == W_IDLE || w->state == W_LEASED)
			return NULL;
	if (p->last_error != NULL)
		return p->last_error;
	return p->failed ? "its workers keep dying while they start" :
	    "its workers fail to start";
}

void
pool_dispatch(struct pool *p)
{
	struct worker **ws;
	struct stream *s;
	const char *why;

	/* Lanes of running streams are served while the daemon stops, since
	 * open streams may finish; only a broken pool fails them. */
	if ((why = pool_broken(p, 1)) != NULL) {
		struct lane *l;
		while ((l = TAILQ_FIRST(&p->lanes)) != NULL) {
			char msg[1200];
			snprintf(msg, sizeof msg, "pool %s cannot start its "
			    "workers: %s", p->pc->name, why);
			stream_lane_fail(l, msg);
		}
	}
	if ((why = pool_broken(p, 0)) != NULL) {
		while ((s = TAILQ_FIRST(&p->queue)) != NULL) {
			char msg[1200];
			snprintf(msg, sizeof msg, "pool %s cannot start its "
			    "workers: %s", p->pc->name, why);
			stream_refuse(s, "pool_failed", msg);
		}
		return;
	}
	/* Lanes of running streams first: their clients are waiting. */
	while (p->nidle > 0 && !TAILQ_EMPTY(&p->lanes)) {
		struct lane *l = TAILQ_FIRST(&p->lanes);
		if (l->stream->state != S_RUNNING) {
			/* Never queued outside S_RUNNING; a guard all the
			 * same, since leasing to it would outlive it. */
			pool_lane_unwait(p, l);
			continue;
		}
		struct worker *w;
		if (pool_lease(p, 1, &w) != 1)
			break;
		pool_lane_unwait(p, l);
		stream_lane_leased(l, w);
	}
	if (cns_stopping) {
		/* Queued streams have not started: they are refused. */
		while ((s = TAILQ_FIRST(&p->queue)) != NULL)
			stream_refuse(s, "draining",
			    "consumersd is shutting down");
		return;
	}
	while (p->nidle > 0 && (s = TAILQ_FIRST(&p->queue)) != NULL) {
		unsigned n;
		if ((ws = calloc(s->want, sizeof *ws)) == NULL)
			fatal("%s: calloc", __func__);
		/* Idle workers may all be dead, not yet reaped: then the
		 * stream waits for the ones that replace them. */
		if ((n = pool_lease(p, s->want, ws)) == 0) {
			free(ws);
			break;
		}
		TAILQ_REMOVE(&p->queue, s, qentry);
		s->state = S_RUNNING;
		stream_leased(s, ws, n);
	}
}

/*
 * After a worker is gone: replace it, at once or, after a failed start
 * (crash_start), after a backoff.  A worker that had started resets the
 * backoff: its death is a crash of a running worker.
 */
void
pool_worker_gone(struct pool *p, struct worker *w, enum start_verdict v)
{
	struct timeval tv = { 0, 0 };

	if (pools_stopping)
		return;
	/* A worker a retiring pool stopped is not replaced. */
	if (!p->retiring || w == NULL || w->state != W_EXITING)
		p->respawns++;
	if (v == START_STARTED)
		p->init_failures = 0;
	if (v == START_FAILED) {
		unsigned ms = crash_backoff_ms(p->init_failures);
		p->last_in_init = w == NULL || w->ready_at == 0;
		p->init_failures++;
		tv.tv_sec = ms / 1000;
		tv.tv_usec = (ms % 1000) * 1000;
		log_warnx("pool %s: %u failed start%s in a row; next try in "
		    "%u ms", p->pc->name, p->init_failures,
		    p->init_failures == 1 ? "" : "s", ms);
		if (crash_pool_failed(p->init_failures,
		    p->pc->max_init_failures) && !p->failed) {
			p->failed = 1;
			log_warnx("pool %s failed: its workers died while "
			    "starting %u times in a row (max_init_failures); "
			    "while none of its workers is up it refuses "
			    "streams, and keeps trying every %u s at most",
			    p->pc->name,
			    p->init_failures, RESPAWN_MAX_MS / 1000);
		}
	}
	if (p->respawn_ev != NULL && !evtimer_pending(p->respawn_ev, NULL))
		evtimer_add(p->respawn_ev, &tv);
	pool_dispatch(p);
	pool_retire_check(p);	/* may free p, later */
}

/* A consume call of the pool took an item: its plugin works, so a failed
 * start from now on backs off from the start again. */
void
pool_works(struct pool *p)
{
	p->init_failures = 0;
}

/* A worker said why it cannot start (INITFAIL); the pool keeps `msg`. */
void
pool_start_failed(struct pool *p, char *msg)
{
	free(p->last_error);
	p->last_error = msg;
}

/* A pool's own timers: respawns, item_timeout's watch, its manager. */
static void
pool_timers_del(struct pool *p)
{
	if (p->respawn_ev != NULL)
		evtimer_del(p->respawn_ev);
	if (p->watch_ev != NULL)
		event_del(p->watch_ev);
	if (p->manage_ev != NULL)
		event_del(p->manage_ev);
}

void
pool_stop_all(void)
{
	struct pool *p;

	pools_stopping = 1;
	TAILQ_FOREACH(p, &pools, entry)
		pool_timers_del(p);
	TAILQ_FOREACH(p, &retired, entry)
		pool_timers_del(p);
}

void
pool_free_all(void)
{
	struct pool *p;

	while ((p = TAILQ_FIRST(&pools)) != NULL) {
		TAILQ_REMOVE(&pools, p, entry);
		pool_free(p);
	}
	while ((p = TAILQ_FIRST(&retired)) != NULL) {
		TAILQ_REMOVE(&retired, p, entry);
		pool_free(p);
	}
}
