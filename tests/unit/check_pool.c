/*
 * check_pool.c - unit tests for src/pool.c: slots, leasing, the FIFO of
 * waiting streams, refusing streams when workers fail to start, and the
 * respawn backoff (checked by the order timers fire in, never by a clock).
 *
 * Workers and streams are plain structs made here.  worker_spawn,
 * worker_watch, worker_stop, stream_leased, stream_refuse,
 * stream_lane_leased and stream_lane_fail are fakes that record what
 * pool.c asked for, so worker.o and stream.o are not linked in; pool.c's
 * decisions come from the real crash.c, and cns_base (util.c) is NULL
 * but in the respawn tests.
 */
#include <sys/time.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <check.h>
#include <event2/event.h>

#include "consumersd.h"

/* ---- fakes ---- */

#define MAXREC	64

/* What happened, one letter an event: S for each worker_spawn() call. */
static char		 evlog[MAXREC + 1];
static unsigned		 nevlog;

static void
note(char c)
{
	if (nevlog < MAXREC)
		evlog[nevlog++] = c;
	evlog[nevlog] = '\0';
}

static int		 spawn_budget = -1;	/* successes left, -1: any */
static unsigned		 spawn_calls;
static unsigned		 spawned;
static unsigned		 spawn_slots[MAXREC];
static pid_t		 next_pid = 1000;

struct worker *
worker_spawn(struct pool *p, unsigned slot)
{
	struct worker *w;

	spawn_calls++;
	note('S');
	if (spawn_budget == 0)
		return NULL;
	if (spawn_budget > 0)
		spawn_budget--;
	ck_assert_uint_lt(spawned, MAXREC);
	w = calloc(1, sizeof *w);
	w->pid = next_pid++;
	w->pool = p;
	w->slot = slot;
	w->state = W_STARTING;
	TAILQ_INSERT_TAIL(&p->workers, w, entry);
	p->nworkers++;
	spawn_slots[spawned++] = slot;
	return w;
}

struct lease {
	struct stream	*s;
	unsigned	 n;
	struct worker	*w[8];
};
static struct lease	 leases[MAXREC];
static unsigned		 nleases;

static int
in_queue(struct pool *p, struct stream *s)
{
	struct stream *q;

	TAILQ_FOREACH(q, &p->queue, qentry)
		if (q == s)
			return 1;
	return 0;
}

void
stream_leased(struct stream *s, struct worker **ws, unsigned n)
{
	struct lease *l;

	ck_assert_uint_lt(nleases, MAXREC);
	ck_assert_uint_le(n, 8);
	/* Off the queue and running before it is told. */
	ck_assert(!in_queue(s->pool, s));
	ck_assert_int_eq(s->state, S_RUNNING);
	l = &leases[nleases++];
	l->s = s;
	l->n = n;
	for (unsigned i = 0; i < n; i++) {
		l->w[i] = ws[i];
		ws[i]->stream = s;
		ws[i]->index = i;
	}
	s->w = ws;
	s->nw = s->nlive = n;
}

struct refusal {
	struct stream	*s;
	char		*why;
};
static struct refusal	 refusals[MAXREC];
static unsigned		 nrefusals;

void
stream_refuse(struct stream *s, const char *code, const char *why)
{
	(void)code;
	ck_assert_uint_lt(nrefusals, MAXREC);
	if (s->state == S_QUEUED)
		TAILQ_REMOVE(&s->pool->queue, s, qentry);
	s->state = S_DONE;
	refusals[nrefusals].s = s;
	refusals[nrefusals].why = strdup(why);
	nrefusals++;
}

/* Lanes of running streams that lost their worker. */
static struct lane	*lane_got[MAXREC];
static struct worker	*lane_worker[MAXREC];
static unsigned		 nlane_got;
static struct lane	*lane_failed[MAXREC];
static unsigned		 nlane_failed;

void
stream_lane_leased(struct lane *l, struct worker *w)
{
	ck_assert_uint_lt(nlane_got, MAXREC);
	ck_assert_int_eq(w->state, W_LEASED);
	l->state = L_LIVE;
	lane_got[nlane_got] = l;
	lane_worker[nlane_got++] = w;
}

void
stream_lane_fail(struct lane *l, const char *why)
{
	ck_assert_uint_lt(nlane_failed, MAXREC);
	ck_assert_ptr_nonnull(strstr(why, "cannot start its workers"));
	pool_lane_unwait(l->stream->pool, l);
	l->state = L_DEAD;
	lane_failed[nlane_failed++] = l;
}

unsigned
worker_count(void)
{
	return spawned;
}

/* What worker.c's does to the pool: the worker is on its way out. */
void
worker_stop(struct worker *w)
{
	if (w->state == W_IDLE)
		w->pool->nidle--;
	w->state = W_EXITING;
}

void
worker_watch(struct worker *w, double now)
{
	(void)w;
	(void)now;
}

/* ---- helpers ---- */

static struct pool_conf	 pc;
static struct stream	*streams[MAXREC];
static unsigned		 nstreams;

static void
setup(void)
{
	memset(&pc, 0, sizeof pc);
	pc.name = "tp";
	pc.workers = 3;
	pc.stream_workers = 3;
	pc.queue_timeout = 30;
	pc.max_init_failures = 5;
	spawn_budget = -1;
	spawn_calls = spawned = 0;
	nlane_got = nlane_failed = 0;
	nleases = nrefusals = nstreams = 0;
	nevlog = 0;
	evlog[0] = '\0';
	cns_base = NULL;
	log_setlevel(LOG_LVL_ERR);
}

static void
teardown(void)
{
	for (unsigned i = 0; i < nrefusals; i++)
		free(refusals[i].why);
	for (unsigned i = 0; i < nstreams; i++) {
		free(streams[i]->w);
		free(streams[i]);
	}
	nrefusals = nstreams = 0;
}

static struct worker *
add_worker(struct pool *p, unsigned slot, enum worker_state state)
{
	struct worker *w = calloc(1, sizeof *w);

	w->pid = next_pid++;
	w->pool = p;
	w->slot = slot;
	w->state = state;
	TAILQ_INSERT_TAIL(&p->workers, w, entry);
	p->nworkers++;
	if (state == W_IDLE)
		p->nidle++;
	return w;
}

/* What worker_gone does before it calls pool_worker_gone. */
static void
remove_worker(struct pool *p, struct worker *w)
{
	TAILQ_REMOVE(&p->workers, w, entry);
	p->nworkers--;
	if (w->state == W_IDLE)
		p->nidle--;
}

static void
free_pool(struct pool *p)
{
	struct worker *w;

	while ((w = TAILQ_FIRST(&p->workers)) != NULL) {
		TAILQ_REMOVE(&p->workers, w, entry);
		free(w);
	}
	pool_free(p);
}

static struct stream *
queue_stream(struct pool *p, unsigned want)
{
	struct stream *s = calloc(1, sizeof *s);

	ck_assert_uint_lt(nstreams, MAXREC);
	streams[nstreams++] = s;
	s->id = nstreams;
	s->pool = p;
	s->want = want;
	s->state = S_QUEUED;
	TAILQ_INSERT_TAIL(&p->queue, s, qentry);
	return s;
}

static unsigned
count_state(struct pool *p, enum worker_state st)
{
	struct worker *w;
	unsigned n = 0;

	TAILQ_FOREACH(w, &p->workers, entry)
		if (w->state == st)
			n++;
	return n;
}

/* ---- tests ---- */

START_TEST(test_new)
{
	struct pool *p = pool_new(&pc);

	ck_assert_ptr_eq(p->pc, &pc);
	ck_assert_ptr_null(p->respawn_ev);
	ck_assert(TAILQ_EMPTY(&p->workers));
	ck_assert(TAILQ_EMPTY(&p->queue));
	ck_assert_uint_eq(p->nworkers, 0);
	ck_assert_uint_eq(p->nidle, 0);
	ck_assert_uint_eq(p->init_failures, 0);
	ck_assert_ptr_null(p->last_error);
	ck_assert_ptr_null(pool_unavailable(p));
	pool_free(p);
}
END_TEST

START_TEST(test_slot)
{
	struct pool *p = pool_new(&pc);
	struct worker *w1;

	ck_assert_uint_eq(pool_slot(p), 1);
	add_worker(p, 2, W_IDLE);
	ck_assert_uint_eq(pool_slot(p), 1);
	w1 = add_worker(p, 1, W_STARTING);
	add_worker(p, 4, W_LEASED);
	ck_assert_uint_eq(pool_slot(p), 3);
	add_worker(p, 3, W_IDLE);
	ck_assert_uint_eq(pool_slot(p), 5);
	/* An exiting worker's slot is free again. */
	w1->state = W_EXITING;
	ck_assert_uint_eq(pool_slot(p), 1);
	free_pool(p);
}
END_TEST

START_TEST(test_start)
{
	struct pool *p = pool_new(&pc);
	struct worker *w;

	pool_start(p);
	ck_assert_uint_eq(spawned, 3);
	ck_assert_uint_eq(spawn_slots[0], 1);
	ck_assert_uint_eq(spawn_slots[1], 2);
	ck_assert_uint_eq(spawn_slots[2], 3);
	ck_assert_uint_eq(p->nworkers, 3);
	/* Full: nothing more. */
	pool_start(p);
	ck_assert_uint_eq(spawn_calls, 3);
	/* The worker in slot 2 is on its way out: replaced in slot 2. */
	TAILQ_FOREACH(w, &p->workers, entry)
		if (w->slot == 2)
			w->state = W_EXITING;
	pool_start(p);
	ck_assert_uint_eq(spawned, 4);
	ck_assert_uint_eq(spawn_slots[3], 2);
	ck_assert_uint_eq(count_state(p, W_STARTING), 3);
	free_pool(p);
}
END_TEST

START_TEST(test_start_spawn_fails)
{
	struct pool *p = pool_new(&pc);

	/* The second spawn fails: pool_start stops there. */
	spawn_budget = 1;
	pool_start(p);
	ck_assert_uint_eq(spawned, 1);
	ck_assert_uint_eq(spawn_calls, 2);
	ck_assert_uint_eq(p->nworkers, 1);
	spawn_budget = -1;
	pool_start(p);
	ck_assert_uint_eq(spawned, 3);
	ck_assert_uint_eq(spawn_slots[1], 2);
	ck_assert_uint_eq(spawn_slots[2], 3);
	free_pool(p);
}
END_TEST

START_TEST(test_lease)
{
	struct pool *p = pool_new(&pc);
	struct worker *w[5], *out[6];

	w[0] = add_worker(p, 1, W_IDLE);
	w[1] = add_worker(p, 2, W_STARTING);
	w[2] = add_worker(p, 3, W_IDLE);
	w[3] = add_worker(p, 4, W_LEASED);
	w[4] = add_worker(p, 5, W_IDLE);
	ck_assert_uint_eq(p->nidle, 3);

	for (int i = 0; i < 6; i++)
		out[i] = (struct worker *)&out;	/* sentinel */
	ck_assert_uint_eq(pool_lease(p, 0, out), 0);
	ck_assert_uint_eq(p->nidle, 3);
	ck_assert_ptr_eq(out[0], (struct worker *)&out);

	ck_assert_uint_eq(pool_lease(p, 2, out), 2);
	ck_assert_ptr_eq(out[0], w[0]);
	ck_assert_ptr_eq(out[1], w[2]);
	ck_assert_ptr_eq(out[2], (struct worker *)&out);
	ck_assert_int_eq(w[0]->state, W_LEASED);
	ck_assert_int_eq(w[2]->state, W_LEASED);
	ck_assert_int_eq(w[1]->state, W_STARTING);
	ck_assert_int_eq(w[4]->state, W_IDLE);
	ck_assert_uint_eq(p->nidle, 1);

	/* Wanting more than there is gets what there is. */
	ck_assert_uint_eq(pool_lease(p, 5, out), 1);
	ck_assert_ptr_eq(out[0], w[4]);
	ck_assert_int_eq(w[4]->state, W_LEASED);
	ck_assert_uint_eq(p->nidle, 0);
	ck_assert_uint_eq(pool_lease(p, 3, out), 0);
	ck_assert_uint_eq(count_state(p, W_LEASED), 4);
	ck_assert_uint_eq(count_state(p, W_STARTING), 1);
	free_pool(p);
}
END_TEST

START_TEST(test_idle_no_queue)
{
	struct pool *p = pool_new(&pc);
	struct worker *w = add_worker(p, 1, W_LEASED);
	struct stream *s = queue_stream(p, 1);

	/* A worker coming back from a stream that is over. */
	TAILQ_REMOVE(&p->queue, s, qentry);
	s->state = S_DONE;
	w->stream = s;
	pool_idle(p, w);
	ck_assert_int_eq(w->state, W_IDLE);
	ck_assert_ptr_null(w->stream);
	ck_assert_uint_eq(p->nidle, 1);
	ck_assert_uint_eq(nleases, 0);
	free_pool(p);
}
END_TEST

/* Streams wait in order; each freed worker goes to the oldest. */
START_TEST(test_queue_fifo)
{
	struct pool *p = pool_new(&pc);
	struct worker *w[3];
	struct stream *s[3];

	for (int i = 0; i < 3; i++)
		w[i] = add_worker(p, (unsigned)i + 1, W_STARTING);
	s[0] = queue_stream(p, 2);
	s[1] = queue_stream(p, 1);
	s[2] = queue_stream(p, 1);
	pool_dispatch(p);
	ck_assert_uint_eq(nleases, 0);

	pool_idle(p, w[1]);
	ck_assert_uint_eq(nleases, 1);
	ck_assert_ptr_eq(leases[0].s, s[0]);
	ck_assert_uint_eq(leases[0].n, 1);
	ck_assert_ptr_eq(leases[0].w[0], w[1]);
	ck_assert_int_eq(w[1]->state, W_LEASED);
	ck_assert_ptr_eq(w[1]->stream, s[0]);
	ck_assert_uint_eq(p->nidle, 0);
	ck_assert_ptr_eq(TAILQ_FIRST(&p->queue), s[1]);

	pool_idle(p, w[0]);
	pool_idle(p, w[2]);
	ck_assert_uint_eq(nleases, 3);
	ck_assert_ptr_eq(leases[1].s, s[1]);
	ck_assert_ptr_eq(leases[1].w[0], w[0]);
	ck_assert_ptr_eq(leases[2].s, s[2]);
	ck_assert_ptr_eq(leases[2].w[0], w[2]);
	for (int i = 0; i < 3; i++)
		ck_assert_int_eq(s[i]->state, S_RUNNING);
	ck_assert(TAILQ_EMPTY(&p->queue));
	ck_assert_uint_eq(p->nidle, 0);
	ck_assert_uint_eq(count_state(p, W_LEASED), 3);

	/* Now a worker comes back with nobody waiting. */
	pool_idle(p, w[1]);
	ck_assert_uint_eq(nleases, 3);
	ck_assert_uint_eq(p->nidle, 1);
	free_pool(p);
}
END_TEST

/* Several idle workers: the first stream takes what it wants. */
START_TEST(test_dispatch_several)
{
	struct pool *p = pool_new(&pc);
	struct worker *w[4];
	struct stream *s[3];

	for (int i = 0; i < 4; i++)
		w[i] = add_worker(p, (unsigned)i + 1, W_IDLE);
	s[0] = queue_stream(p, 3);
	s[1] = queue_stream(p, 3);
	s[2] = queue_stream(p, 1);
	pool_dispatch(p);
	ck_assert_uint_eq(nleases, 2);
	ck_assert_ptr_eq(leases[0].s, s[0]);
	ck_assert_uint_eq(leases[0].n, 3);
	ck_assert_ptr_eq(leases[0].w[0], w[0]);
	ck_assert_ptr_eq(leases[0].w[1], w[1]);
	ck_assert_ptr_eq(leases[0].w[2], w[2]);
	ck_assert_ptr_eq(leases[1].s, s[1]);
	ck_assert_uint_eq(leases[1].n, 1);
	ck_assert_ptr_eq(leases[1].w[0], w[3]);
	ck_assert_uint_eq(p->nidle, 0);
	ck_assert_int_eq(s[2]->state, S_QUEUED);
	ck_assert_ptr_eq(TAILQ_FIRST(&p->queue), s[2]);
	ck_assert_ptr_eq(TAILQ_LAST(&p->queue, streamq), s[2]);
	ck_assert_uint_eq(nrefusals, 0);
	free_pool(p);
}
END_TEST

START_TEST(test_unavailable)
{
	struct pool *p = pool_new(&pc);
	struct worker *w;
	const char *why;

	ck_assert_ptr_null(pool_unavailable(p));
	/* Only backing off, or failed with a last start that got past
	 * init: streams wait (crash_refuse). */
	p->init_failures = 1;
	ck_assert_ptr_null(pool_unavailable(p));
	p->failed = 1;
	ck_assert_ptr_null(pool_unavailable(p));
	/* Failed, and its last start died in init: refused at once. */
	p->last_in_init = 1;
	why = pool_unavailable(p);
	ck_assert_ptr_nonnull(why);
	ck_assert(why[0] != '\0');
	p->last_error = strdup("plugin init: no database");
	ck_assert_ptr_eq(pool_unavailable(p), p->last_error);
	/* Starting or exiting workers do not make it available. */
	w = add_worker(p, 1, W_STARTING);
	ck_assert_ptr_eq(pool_unavailable(p), p->last_error);
	add_worker(p, 2, W_EXITING);
	ck_assert_ptr_eq(pool_unavailable(p), p->last_error);
	/* One that is up does. */
	w->state = W_LEASED;
	ck_assert_ptr_null(pool_unavailable(p));
	w->state = W_IDLE;
	p->nidle = 1;
	ck_assert_ptr_null(pool_unavailable(p));
	/* A fresh start clears it. */
	w->state = W_STARTING;
	p->nidle = 0;
	p->init_failures = 0;
	p->failed = 0;
	ck_assert_ptr_null(pool_unavailable(p));
	free_pool(p);
}
END_TEST

START_TEST(test_dispatch_refuses)
{
	struct pool *p = pool_new(&pc);
	struct stream *s[3];

	add_worker(p, 1, W_STARTING);
	for (int i = 0; i < 3; i++)
		s[i] = queue_stream(p, 1);
	p->init_failures = 2;
	p->last_error = strdup("cannot load x.so");
	/* Only backing off: they wait. */
	pool_dispatch(p);
	ck_assert_uint_eq(nrefusals, 0);
	/* Failed, the last start died in init: refused. */
	p->failed = 1;
	p->last_in_init = 1;
	pool_dispatch(p);
	ck_assert_uint_eq(nleases, 0);
	ck_assert_uint_eq(nrefusals, 3);
	for (int i = 0; i < 3; i++) {
		ck_assert_ptr_eq(refusals[i].s, s[i]);
		ck_assert_int_eq(s[i]->state, S_DONE);
		ck_assert_ptr_nonnull(strstr(refusals[i].why, "tp"));
		ck_assert_ptr_nonnull(strstr(refusals[i].why,
		    "cannot load x.so"));
	}
	ck_assert(TAILQ_EMPTY(&p->queue));
	free_pool(p);
}
END_TEST

START_TEST(test_worker_gone_no_base)
{
	struct pool *p = pool_new(&pc);
	struct worker *w;
	struct stream *s;

	ck_assert_ptr_null(p->respawn_ev);
	w = add_worker(p, 1, W_STARTING);
	s = queue_stream(p, 1);

	/* A worker that failed to start, and nobody else is up: the pool
	 * backs off, and the stream waits (queue_timeout). */
	remove_worker(p, w);
	pool_worker_gone(p, w, START_FAILED);
	ck_assert_uint_eq(p->init_failures, 1);
	ck_assert_int_eq(p->last_in_init, 1);
	ck_assert_uint_eq(nrefusals, 0);
	ck_assert(in_queue(p, s));
	pool_worker_gone(p, w, START_FAILED);
	ck_assert_uint_eq(p->init_failures, 2);
	/* Any other exit does not count. */
	pool_worker_gone(p, w, START_NONE);
	ck_assert_uint_eq(p->init_failures, 2);
	/* Up start_seconds: it had started, the backoff starts over. */
	pool_worker_gone(p, w, START_STARTED);
	ck_assert_uint_eq(p->init_failures, 0);
	/* Failed starts in init up to max_init_failures: refused. */
	for (unsigned i = 0; i < pc.max_init_failures; i++)
		pool_worker_gone(p, w, START_FAILED);
	ck_assert_int_eq(p->failed, 1);
	ck_assert_uint_eq(nrefusals, 1);
	ck_assert_ptr_eq(refusals[0].s, s);
	ck_assert(TAILQ_EMPTY(&p->queue));
	/* Without a base nothing is respawned behind our back. */
	ck_assert_uint_eq(spawn_calls, 0);
	free(w);
	free_pool(p);
}
END_TEST

/* A worker that died after it was up: waiting streams still get the
 * idle ones. */
START_TEST(test_worker_gone_dispatches)
{
	struct pool *p = pool_new(&pc);
	struct worker *dead, *idle;
	struct stream *s;

	dead = add_worker(p, 1, W_LEASED);
	idle = add_worker(p, 2, W_IDLE);
	s = queue_stream(p, 1);
	/* Queued while the idle one was not yet dispatched. */
	remove_worker(p, dead);
	pool_worker_gone(p, dead, START_NONE);
	ck_assert_uint_eq(p->init_failures, 0);
	ck_assert_uint_eq(nleases, 1);
	ck_assert_ptr_eq(leases[0].s, s);
	ck_assert_ptr_eq(leases[0].w[0], idle);
	ck_assert_uint_eq(nrefusals, 0);
	free(dead);
	free_pool(p);
}
END_TEST

/* A lane whose worker died is served before streams that wait. */
START_TEST(test_lane_first)
{
	struct pool *p = pool_new(&pc);
	struct stream *running, *queued;
	struct lane l = { .state = L_WAITING };
	struct worker *idle;

	running = calloc(1, sizeof *running);
	running->pool = p;
	running->state = S_RUNNING;
	l.stream = running;
	queued = queue_stream(p, 1);
	pool_lane_wait(p, &l);
	idle = add_worker(p, 1, W_IDLE);
	pool_dispatch(p);
	ck_assert_uint_eq(nlane_got, 1);
	ck_assert_ptr_eq(lane_got[0], &l);
	ck_assert_ptr_eq(lane_worker[0], idle);
	ck_assert(TAILQ_EMPTY(&p->lanes));
	ck_assert_uint_eq(nleases, 0);
	ck_assert(in_queue(p, queued));
	/* The next idle worker goes to the queued stream. */
	pool_idle(p, add_worker(p, 2, W_LEASED));
	ck_assert_uint_eq(nleases, 1);
	ck_assert_ptr_eq(leases[0].s, queued);
	free(running);
	free_pool(p);
}
END_TEST

/* A pool that cannot start workers fails waiting lanes, not just
 * queued streams. */
START_TEST(test_lane_fails_when_unavailable)
{
	struct pool *p = pool_new(&pc);
	struct stream *running;
	struct lane l = { .state = L_WAITING };

	running = calloc(1, sizeof *running);
	running->pool = p;
	running->state = S_RUNNING;
	l.stream = running;
	pool_lane_wait(p, &l);
	p->last_error = strdup("init failed: no database");
	pool_worker_gone(p, NULL, START_FAILED);
	ck_assert_uint_eq(nlane_failed, 0);	/* only backing off */
	for (unsigned i = 1; i < pc.max_init_failures; i++)
		pool_worker_gone(p, NULL, START_FAILED);
	ck_assert_uint_eq(nlane_failed, 1);
	ck_assert_ptr_eq(lane_failed[0], &l);
	ck_assert(TAILQ_EMPTY(&p->lanes));
	free(running);
	free_pool(p);
}
END_TEST

/* max_init_failures starts in a row mark the pool failed; one start that
 * works clears it. */
START_TEST(test_failed_mark)
{
	struct pool *p;
	struct worker *w;

	pc.max_init_failures = 3;
	p = pool_new(&pc);
	p->last_error = strdup("init failed: nope");
	pool_worker_gone(p, NULL, START_FAILED);
	pool_worker_gone(p, NULL, START_FAILED);
	ck_assert_int_eq(p->failed, 0);
	pool_worker_gone(p, NULL, START_FAILED);
	ck_assert_int_eq(p->failed, 1);
	ck_assert_str_eq(pool_unavailable(p), "init failed: nope");
	w = add_worker(p, 1, W_STARTING);
	pool_idle(p, w);		/* it sent READY */
	ck_assert_int_eq(p->failed, 0);
	ck_assert_ptr_null(pool_unavailable(p));
	free_pool(p);
}
END_TEST

/* A worker whose socket closed (dead, not yet reaped) is never leased. */
START_TEST(test_lease_skips_dead)
{
	struct pool *p = pool_new(&pc);
	struct worker *dead, *live, *got[2] = { NULL, NULL };

	dead = add_worker(p, 1, W_IDLE);
	dead->closed = 1;
	live = add_worker(p, 2, W_IDLE);
	ck_assert_uint_eq(pool_lease(p, 2, got), 1);
	ck_assert_ptr_eq(got[0], live);
	ck_assert_int_eq(dead->state, W_IDLE);
	free_pool(p);
}
END_TEST

START_TEST(test_table)
{
	struct pool_conf pa = pc, pb = pc;
	struct pool *a, *b, *q;
	int n = 0;

	pa.name = "alpha";
	pb.name = "beta";
	ck_assert_ptr_null(pool_find("alpha"));
	a = pool_new(&pa);
	b = pool_new(&pb);
	pool_add(a);
	pool_add(b);
	ck_assert_ptr_eq(pool_find("alpha"), a);
	ck_assert_ptr_eq(pool_find("beta"), b);
	ck_assert_ptr_null(pool_find("gamma"));
	ck_assert_ptr_null(pool_find("alph"));
	TAILQ_FOREACH(q, pool_all(), entry)
		ck_assert_ptr_eq(q, n++ == 0 ? a : b);
	ck_assert_int_eq(n, 2);
	pool_free_all();
	ck_assert(TAILQ_EMPTY(pool_all()));
	ck_assert_ptr_null(pool_find("alpha"));
}
END_TEST

/* ---- with an event base: the respawn timer ---- */

/*
 * No assertion here reads a clock.  A respawn's delay is checked against
 * marker timers: one made just before the failure with a shorter delay
 * must fire (or be due) before the respawn, and one made just after it
 * with a longer delay must fire after.  libevent runs expired timers in
 * the order they are due, so that order holds however late the process
 * gets to run; a respawn that comes too soon, too late or never puts the
 * events in another order.
 *
 * A marker logs its own letter when it fires, after the S of each
 * worker_spawn() call before it.
 */
#define POLL_MAX	10000	/* polls of POLL_NS: 10 s and more */
#define POLL_NS		1000000

struct marker {
	struct event	*ev;
	char		 c;
};

static void
marker_fired(evutil_socket_t fd, short ev, void *arg)
{
	struct marker *m = arg;

	(void)fd;
	(void)ev;
	note(m->c);
}

/* A marker that logs `c` when `ms` milliseconds from now have passed. */
static void
marker_set(struct marker *m, char c, unsigned ms)
{
	struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };

	m->c = c;
	m->ev = evtimer_new(cns_base, marker_fired, m);
	ck_assert_ptr_nonnull(m->ev);
	ck_assert_int_eq(evtimer_add(m->ev, &tv), 0);
}

static void
marker_free(struct marker *m)
{
	event_free(m->ev);
	m->ev = NULL;
}

/* Run the loop until `c` is in the log, polling, for 10 s at most. */
static void
run_until(char c)
{
	struct timespec nap = { 0, POLL_NS };

	for (int i = 0; i < POLL_MAX && strchr(evlog, c) == NULL; i++) {
		ck_assert_int_ne(event_base_loop(cns_base, EVLOOP_NONBLOCK),
		    -1);
		if (strchr(evlog, c) == NULL)
			nanosleep(&nap, NULL);
	}
	ck_assert_msg(strchr(evlog, c) != NULL, "'%c' never came; events: "
	    "\"%s\"", c, evlog);
}

/* Whether pending timer `a` is due before pending timer `b`. */
static int
due_before(struct event *a, struct event *b)
{
	struct timeval ta, tb;

	ck_assert(evtimer_pending(a, &ta));
	ck_assert(evtimer_pending(b, &tb));
	return evutil_timercmp(&ta, &tb, <);
}

/* Drop the worker the respawn started, as if it died at once. */
static void
drop_spawned(struct pool *p)
{
	struct worker *w = TAILQ_FIRST(&p->workers);

	ck_assert_ptr_nonnull(w);
	ck_assert_uint_eq(w->slot, 1);
	remove_worker(p, w);
	free(w);
}

static void
base_setup(void)
{
	setup();
	cns_base = event_base_new();
	ck_assert_ptr_nonnull(cns_base);
}

static void
base_teardown(void)
{
	teardown();
	event_base_free(cns_base);
	cns_base = NULL;
}

/*
 * Workers that die while starting are replaced after 100 ms, then 200,
 * 400... up to 30 s.
 */
START_TEST(test_respawn_backoff)
{
	struct pool *p = pool_new(&pc);
	struct worker *w;
	struct marker a, b, c, d, e, f, g, h;

	ck_assert_ptr_nonnull(p->respawn_ev);
	pc.workers = 1;
	w = add_worker(p, 1, W_STARTING);
	remove_worker(p, w);

	/* First failure: a try in 100 ms, which starts the pool. */
	marker_set(&a, 'a', 50);
	pool_worker_gone(p, w, START_FAILED);
	marker_set(&b, 'b', 150);
	ck_assert_uint_eq(p->init_failures, 1);
	ck_assert(evtimer_pending(p->respawn_ev, NULL));
	ck_assert_uint_eq(spawn_calls, 0);
	run_until('b');
	ck_assert_str_eq(evlog, "aSb");
	ck_assert_uint_eq(spawned, 1);
	ck_assert(!evtimer_pending(p->respawn_ev, NULL));
	free(w);
	drop_spawned(p);

	/* It fails too: twice as long, 200 ms. */
	marker_set(&c, 'c', 150);
	pool_worker_gone(p, NULL, START_FAILED);
	marker_set(&d, 'd', 250);
	ck_assert_uint_eq(p->init_failures, 2);
	run_until('d');
	ck_assert_str_eq(evlog, "aSbcSd");
	ck_assert_uint_eq(spawned, 2);
	drop_spawned(p);

	/* A timer already set is not pushed back by another failure: the
	 * 3rd is due in 400 ms, and the 4th (800 ms) leaves it there. */
	marker_set(&e, 'e', 300);
	pool_worker_gone(p, NULL, START_FAILED);
	pool_worker_gone(p, NULL, START_FAILED);
	marker_set(&f, 'f', 500);
	ck_assert_uint_eq(p->init_failures, 4);
	run_until('f');
	ck_assert_str_eq(evlog, "aSbcSdeSf");
	ck_assert_uint_eq(spawned, 3);
	drop_spawned(p);
	ck_assert(!evtimer_pending(p->respawn_ev, NULL));

	/* 100 << 8 = 25.6 s, not yet at the cap: only how the timers are
	 * due is looked at, none of them is waited for. */
	p->init_failures = 8;
	marker_set(&g, 'g', 25500);
	pool_worker_gone(p, NULL, START_FAILED);
	marker_set(&h, 'h', 25700);
	ck_assert(due_before(g.ev, p->respawn_ev));
	ck_assert(due_before(p->respawn_ev, h.ev));
	evtimer_del(p->respawn_ev);
	marker_free(&g);
	marker_free(&h);

	/* The delay stops growing at 30 s. */
	p->init_failures = 20;
	marker_set(&g, 'g', 29900);
	pool_worker_gone(p, NULL, START_FAILED);
	marker_set(&h, 'h', 30100);
	ck_assert(due_before(g.ev, p->respawn_ev));
	ck_assert(due_before(p->respawn_ev, h.ev));
	evtimer_del(p->respawn_ev);
	marker_free(&g);
	marker_free(&h);

	ck_assert_uint_eq(spawn_calls, 3);
	ck_assert_str_eq(evlog, "aSbcSdeSf");
	marker_free(&a);
	marker_free(&b);
	marker_free(&c);
	marker_free(&d);
	marker_free(&e);
	marker_free(&f);
	free_pool(p);
}
END_TEST

/* A worker that was up died: replaced at once, in its slot, with no
 * backoff: before a marker due in 50 ms (half the first backoff). */
START_TEST(test_respawn_now)
{
	struct pool *p = pool_new(&pc);
	struct worker *w = add_worker(p, 2, W_IDLE);
	struct marker m;

	pc.workers = 2;
	add_worker(p, 1, W_IDLE);
	remove_worker(p, w);
	pool_worker_gone(p, w, START_NONE);
	marker_set(&m, 'm', 50);
	ck_assert(due_before(p->respawn_ev, m.ev));
	ck_assert_uint_eq(spawn_calls, 0);
	run_until('m');
	ck_assert_str_eq(evlog, "Sm");
	ck_assert_uint_eq(spawned, 1);
	ck_assert_uint_eq(spawn_slots[0], 2);
	ck_assert_uint_eq(p->init_failures, 0);
	marker_free(&m);
	free(w);
	free_pool(p);
}
END_TEST

/* Last: stopping is for good in this process. */
START_TEST(test_stop_all)
{
	struct pool *p = pool_new(&pc);

	pool_add(p);
	pool_worker_gone(p, NULL, START_FAILED);
	ck_assert(evtimer_pending(p->respawn_ev, NULL));
	pool_stop_all();
	ck_assert(!evtimer_pending(p->respawn_ev, NULL));
	/* Nothing is started or counted any more. */
	pool_worker_gone(p, NULL, START_FAILED);
	ck_assert_uint_eq(p->init_failures, 1);
	ck_assert(!evtimer_pending(p->respawn_ev, NULL));
	pool_start(p);
	ck_assert_uint_eq(spawn_calls, 0);
	pool_free_all();
}
END_TEST

static Suite *
pool_suite(void)
{
	Suite *s = suite_create("pool");
	TCase *tc;

	tc = tcase_create("lease");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_new);
	tcase_add_test(tc, test_slot);
	tcase_add_test(tc, test_start);
	tcase_add_test(tc, test_start_spawn_fails);
	tcase_add_test(tc, test_lease);
	tcase_add_test(tc, test_idle_no_queue);
	tcase_add_test(tc, test_queue_fifo);
	tcase_add_test(tc, test_dispatch_several);
	tcase_add_test(tc, test_unavailable);
	tcase_add_test(tc, test_dispatch_refuses);
	tcase_add_test(tc, test_worker_gone_no_base);
	tcase_add_test(tc, test_worker_gone_dispatches);
	tcase_add_test(tc, test_table);
	tcase_add_test(tc, test_lane_first);
	tcase_add_test(tc, test_lane_fails_when_unavailable);
	tcase_add_test(tc, test_failed_mark);
	tcase_add_test(tc, test_lease_skips_dead);
	suite_add_tcase(s, tc);

	tc = tcase_create("respawn");
	tcase_add_checked_fixture(tc, base_setup, base_teardown);
	tcase_add_test(tc, test_respawn_backoff);
	tcase_add_test(tc, test_respawn_now);
	tcase_add_test(tc, test_stop_all);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(pool_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed != 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
