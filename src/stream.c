/*
 * stream.c - one stream's life, from lease to final line: leasing its
 * workers, a lane (one consume call) per worker, the results, the
 * completion handler, and the final line through its source's finish.
 * Items move in feed.c; when a lane's worker dies this file gathers the
 * facts, crash.c gives the verdict, and this file applies it: the lane
 * runs again on a new worker (replay, redeliver), or its items are
 * reported lost (fail); an item quarantined is reported with its line.
 */
#include <sys/wait.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "consumersd.h"

static uint64_t	stream_next_id = 1;
static unsigned	stream_total;		/* allocated, not yet freed */
static TAILQ_HEAD(, stream) streams = TAILQ_HEAD_INITIALIZER(streams);

unsigned
stream_count(void)
{
	return stream_total;
}

/* Every stream not yet freed, done ones included: start with NULL. */
struct stream *
stream_next(struct stream *s)
{
	return s == NULL ? TAILQ_FIRST(&streams) : TAILQ_NEXT(s, entry);
}

/* Seconds since the stream was opened: how long a queued one waited. */
double
stream_waited(const struct stream *s)
{
	return cns_now() - s->since;
}

static struct event	*rate_timer;	/* min_item_rate, while due */

static void	stream_finish(struct stream *);
static void	rate_arm(void);
static json_t	*stream_error(struct stream *, const char *, struct worker *,
		    const char *);
static void	stream_orphaned(struct stream *);
static void	stream_consumed(struct stream *);
static void	lane_fail(struct stream *, struct lane *, const char *);
static void	stream_spool_pause(struct stream *);

static void
stream_timeout(evutil_socket_t fd, short ev, void *arg)
{
	struct stream *s = arg;
	char msg[256];

	(void)fd;
	(void)ev;
	snprintf(msg, sizeof msg, "pool busy: no %s worker became free within "
	    "queue_timeout (%g s)", s->pool->pc->name,
	    s->pool->pc->queue_timeout);
	stream_refuse(s, "busy", msg);
}

/* The journal's fields for what is logged about s: pool, stream, client. */
void
stream_log_fields(struct stream *s, struct log_fields *f)
{
	struct peer *pr = s->src.ops->peer != NULL ?
	    s->src.ops->peer(s->src.arg) : NULL;

	f->pool = s->pool->pc->name;
	f->stream = s->id;
	f->worker_pid = 0;
	f->client_uid = pr != NULL ? pr->uid : (uid_t)-1;
}

static void
stream_log_about(struct stream *s, struct worker *w)
{
	struct log_fields f;

	stream_log_fields(s, &f);
	if (w != NULL)
		f.worker_pid = w->pid;
	log_set_fields(&f);
}

/*
 * slow_stream: the stream is open longer than that; say what each of its
 * lanes is doing (php-fpm's slowlog).  Once per stream.
 */
static void
stream_slow(evutil_socket_t fd, short ev, void *arg)
{
	static const char *states[] = { "live", "waiting for a worker",
	    "returned", "dead" };
	struct stream *s = arg;
	char lanes[1024] = "";
	size_t n = 0;

	(void)fd;
	(void)ev;
	if (s->state == S_DONE)
		return;
	if (s->state == S_QUEUED)
		snprintf(lanes, sizeof lanes, "; queued, no worker yet");
	for (unsigned i = 0; i < s->nw && n < sizeof lanes; i++) {
		const struct lane *l = &s->lanes[i];
		const struct worker *w = s->w[i];
		int r;

		if (w != NULL)
			r = snprintf(lanes + n, sizeof lanes - n, "; lane %u: "
			    "%s, worker %u pid %ld, %" PRIu64 " items", i + 1,
			    states[l->state], w->slot, (long)w->pid,
			    l->items);
		else
			r = snprintf(lanes + n, sizeof lanes - n, "; lane %u: "
			    "%s, no worker, %" PRIu64 " items", i + 1,
			    states[l->state], l->items);
		if (r < 0)
			break;
		n += (size_t)r;
	}
	stream_log_about(s, NULL);
	log_warnx("slow stream %" PRIu64 ": pool %s: open %.3f s (slow_stream "
	    "%g s), %" PRIu64 " items read%s%s", s->id, s->pool->pc->name,
	    cns_now() - s->since, s->pool->pc->slow_stream, s->seq,
	    s->eof ? ", input ended" : "", lanes);
	log_set_fields(NULL);
}

/* A stream not on its pool's queue yet (a cluster ingress stays off it). */
struct stream *
stream_alloc(const struct source_ops *ops, void *arg, struct pool *p,
    json_t *params)
{
	struct stream *s;

	if ((s = calloc(1, sizeof *s)) == NULL)
		fatal("%s: calloc", __func__);
	s->id = stream_next_id++;
	stream_total++;
	TAILQ_INSERT_TAIL(&streams, s, entry);
	s->src.ops = ops;
	s->src.arg = arg;
	s->since = cns_now();
	s->pool = p;
	pool_stream_new(p);
	s->params = params != NULL ? json_incref(params) : json_null();
	s->errors = json_array();
	s->completion = json_null();
	s->state = S_QUEUED;
	return s;
}

struct stream *
stream_new(const struct source_ops *ops, void *arg, struct pool *p,
    unsigned want, json_t *params)
{
	struct stream *s = stream_alloc(ops, arg, p, params);
	struct timeval tv;

	s->want = want;
	TAILQ_INSERT_TAIL(&p->queue, s, qentry);
	pool_demand(p);
	s->timer = evtimer_new(cns_base, stream_timeout, s);
	tv = cns_tv(p->pc->queue_timeout);
	evtimer_add(s->timer, &tv);
	if (p->pc->min_item_rate > 0)
		rate_arm();
	if (p->pc->slow_stream > 0) {
		s->slow_timer = evtimer_new(cns_base, stream_slow, s);
		tv = cns_tv(p->pc->slow_stream);
		evtimer_add(s->slow_timer, &tv);
	}
	return s;
}

/* The source is done with the stream. */
void
stream_free(struct stream *s)
{
	struct pool *p = s->pool;

	if (s->cl != NULL)
		s->cl_ops->free(s);
	else if (s->state == S_QUEUED)
		TAILQ_REMOVE(&p->queue, s, qentry);
	if (s->timer != NULL)
		event_free(s->timer);
	if (s->slow_timer != NULL)
		event_free(s->slow_timer);
	if (s->spool_timer != NULL)
		event_free(s->spool_timer);
	for (unsigned i = 0; i < s->nw; i++) {
		struct lane *l = &s->lanes[i];
		if (l->state == L_WAITING)
			pool_lane_unwait(p, l);
		feed_spool_close(l);
		free(l->ranges);
	}
	/* What the stream brought stays in the pool's counts. */
	p->done_in += s->seq;
	p->done_consumed += s->consumed;
	p->done_rejected += s->rejected;
	p->done_quarantined += s->quarantined;
	free(s->lanes);
	free(s->attempts);
	json_decref(s->params);
	json_decref(s->args);
	json_decref(s->kwargs);
	json_decref(s->results);
	json_decref(s->errors);
	json_decref(s->completion);
	json_decref(s->complete_only);
	free(s->w);
	TAILQ_REMOVE(&streams, s, entry);
	free(s);
	stream_total--;
	pool_stream_free(p);	/* a retiring pool may go, later */
	cns_changed();		/* a stop may wait for the last stream */
}

/* A worker starts a consume call for lane i. */
static void
stream_bind(struct stream *s, unsigned i, struct worker *w)
{
	json_t *begin = json_pack("{s:O,s:O?,s:O?}", "params", s->params,
	    "args", s->args, "kwargs", s->kwargs);

	s->w[i] = w;
	worker_bind(w, s, i);
	worker_send_json(w, F_BEGIN, s->id, begin);
	json_decref(begin);
}

/* The stream's workers are leased: tell them, tell the client, go. */
void
stream_leased(struct stream *s, struct worker **ws, unsigned n)
{
	json_t *reply;

	evtimer_del(s->timer);
	s->state = S_RUNNING;
	s->leased_at = cns_now();
	s->pool->nrunning++;
	s->w = ws;
	s->nw = s->nlive = n;
	s->results = json_array();
	if ((s->lanes = calloc(n, sizeof *s->lanes)) == NULL)
		fatal("%s: calloc", __func__);
	if (s->complete_only != NULL) {
		/* A cluster stream's completion: its lanes ran elsewhere. */
		s->nreturned = n;
		s->ended = 1;
		json_decref(s->results);
		s->results = json_incref(s->complete_only);
		for (unsigned i = 0; i < n; i++) {
			s->lanes[i].stream = s;
			s->lanes[i].index = i;
			s->lanes[i].state = L_RETURNED;
			s->lanes[i].spool = -1;
			s->w[i] = ws[i];
			worker_bind(ws[i], s, i);
			ws[i]->returned = 1;
		}
		stream_consumed(s);
		return;
	}
	for (unsigned i = 0; i < n; i++) {
		struct lane *l = &s->lanes[i];
		l->stream = s;
		l->index = i;
		l->state = L_LIVE;
		l->spool = -1;
		json_array_append_new(s->results, json_null());
		stream_bind(s, i, ws[i]);
	}
	log_debug("stream %" PRIu64 ": pool %s, %u worker%s", s->id,
	    s->pool->pc->name, n, n == 1 ? "" : "s");
	reply = json_pack("{s:b,s:I,s:i}", "ok", 1, "stream",
	    (json_int_t)s->id, "workers", (int)n);
	s->src.ops->event(s->src.arg, reply);
	json_decref(reply);
	stream_input(s);
}

/*
 * One access line per stream, as php-fpm's access.log: who (pid, uid,
 * user), which pool, how many items in how long, and how it ended.
 */
static void
stream_access(struct stream *s, const char *outcome)
{
	struct peer *pr = s->src.ops->peer != NULL ?
	    s->src.ops->peer(s->src.arg) : NULL;
	const char *user = pr != NULL ? peer_user(pr) : NULL;
	double took = cns_now() - s->since;

	stream_log_about(s, NULL);
	if (pr == NULL)
		log_info("access: pool %s stream %" PRIu64 ": %" PRIu64
		    " item%s in %.3f s (%.0f items/s): %s", s->pool->pc->name,
		    s->id, s->seq, s->seq == 1 ? "" : "s", took, took > 0 ? (double)s->seq / took : 0,
		    outcome);
	else
		log_info("access: pid %ld uid %lu user %s pool %s stream %"
		    PRIu64 ": %" PRIu64 " item%s in %.3f s (%.0f items/s): %s",
		    (long)pr->pid, (unsigned long)pr->uid, user != NULL ?
		    user : "-", s->pool->pc->name, s->id, s->seq,
		    s->seq == 1 ? "" : "s", took,
		    took > 0 ? (double)s->seq / took : 0, outcome);
	log_set_fields(NULL);
}

void
stream_refuse(struct stream *s, const char *code, const char *why)
{
	json_t *reply;

	if (s->state == S_QUEUED) {
		TAILQ_REMOVE(&s->pool->queue, s, qentry);
		evtimer_del(s->timer);
	}
	s->state = S_DONE;
	log_info("stream %" PRIu64 ": refused: %s", s->id, why);
	stream_access(s, "refused");
	reply = json_pack("{s:b,s:s,s:s}", "ok", 0, "error", why, "code",
	    code);
	s->src.ops->finish(s->src.arg, reply);
}

/*
 * The stream moves on: resends, then what its source holds, then the end;
 * and it finishes once nothing is left to wait for.  Runs on input, on
 * acks (room came back), when the source's output drained, and after
 * every change of a lane.  A lane lost on the way (its spool could not be
 * read back) is ended here and the pump runs again: each lane is lost at
 * most once, so the loop is bounded and nothing recurses.
 */
void
stream_input(struct stream *s)
{
	if (s->cl != NULL) {
		s->cl_ops->input(s);
		return;
	}
	for (unsigned i = 0; i <= s->nw && s->state == S_RUNNING; i++) {
		struct lane *l;
		char why[200];

		if (s->nlive == 0 && s->nwaiting == 0) {
			if (s->ended) {
				stream_finish(s);
				return;
			}
			/* Nobody is left to take the rest: read it to the
			 * end and report it, so no item goes unaccounted. */
			if (s->orphan_from == 0)
				s->orphan_from = s->seq + 1;
		} else if (s->ended && s->nwaiting == 0 &&
		    s->nreturned == s->nlive) {
			stream_consumed(s);
			return;
		}
		switch (feed_pump(s, &l, why, sizeof why)) {
		case FEED_LANE_LOST:
			lane_fail(s, l, why);
			continue;
		case FEED_ORPHANED:
			stream_orphaned(s);
			return;
		case FEED_OK:
			if (feed_spool_paused(s))
				stream_spool_pause(s);
			else	/* the paused lanes returned or were lost */
				s->spool_paused_at = 0;
			return;
		}
	}
}

/*
 * spool_full "pause": a lane's spool could not be written, so the stream
 * stopped reading its source (feed.c); retry the write every second (or
 * sooner, at spool_wait).
 */
static void
stream_spool_arm(struct stream *s)
{
	double left = s->pool->pc->spool_wait - (cns_now() -
	    s->spool_paused_at);
	struct timeval tv = cns_tv(left < 0 ? 0 : left > 1 ? 1 : left);

	evtimer_add(s->spool_timer, &tv);
}

/*
 * A lane whose worker died while its spool waited for room: its lines
 * wait in memory, to be sent again once written.
 */
static int
lane_spool_waits(const struct lane *l)
{
	return l->spool_paused && (l->state == L_WAITING ||
	    l->resend_off < l->resend_end);
}

/*
 * spool_wait is over: what the client sent after the items read is
 * dropped, a lane that waited to run again is lost, and the client is
 * told.
 */
static void
stream_spool_end(struct stream *s, double paused, const char *why)
{
	char msg[512];

	snprintf(msg, sizeof msg, "the replay spool in %s could not be "
	    "written for %.1f s (spool_wait %g s): %s; %s %" PRIu64 "%s",
	    cns_conf->spool_dir, paused, s->pool->pc->spool_wait, why,
	    s->ended ? "the stream's input had ended, at item" :
	    "the stream was ended after item", s->seq, s->ended ? "" :
	    ", and what the client sent after it was not read");
	utf8_clean(msg);
	stream_error(s, "spool", NULL, msg);
	for (unsigned i = 0; i < s->nw; i++)
		if (lane_spool_waits(&s->lanes[i]))
			lane_fail(s, &s->lanes[i], "its items could not be "
			    "written to the replay spool within spool_wait");
	s->spool_cut = 1;
	if (!s->eof) {
		s->src.ops->reading(s->src.arg, 0);
		s->eof = 1;
	}
	stream_input(s);
}

static void
stream_spool_retry(evutil_socket_t fd, short ev, void *arg)
{
	struct stream *s = arg;
	const struct pool_conf *pc = s->pool->pc;
	double paused = cns_now() - s->spool_paused_at;
	char why[200];
	int waits;

	(void)fd;
	(void)ev;
	if (s->state != S_RUNNING || s->spool_cut || s->spool_paused_at == 0)
		return;
	if (feed_spool_retry(s, why, sizeof why) == 0) {
		log_info("stream %" PRIu64 ": pool %s: the spool is written "
		    "again; reading goes on after %.1f s paused", s->id,
		    pc->name, paused);
		s->spool_paused_at = 0;
		stream_input(s);
		return;
	}
	/* Once all input is out, there is nothing left to hold back: the
	 * writes are retried (a crash needs them) but the stream runs,
	 * unless a lane waits for them to run again. */
	waits = 0;
	for (unsigned i = 0; i < s->nw; i++)
		waits |= lane_spool_waits(&s->lanes[i]);
	if ((!s->ended || waits) && crash_spool_full(pc->spool_full, paused,
	    pc->spool_wait) == SPOOL_END) {
		stream_spool_end(s, paused, why);
		return;
	}
	stream_spool_arm(s);
}

static void
stream_spool_pause(struct stream *s)
{
	if (s->spool_cut)
		return;
	if (s->spool_paused_at == 0)
		s->spool_paused_at = cns_now();
	if (s->spool_timer == NULL && (s->spool_timer = evtimer_new(cns_base,
	    stream_spool_retry, s)) == NULL)
		fatalx("%s: evtimer_new", __func__);
	if (!evtimer_pending(s->spool_timer, NULL))
		stream_spool_arm(s);
}

/* The source ended: no more items. */
void
stream_eof(struct stream *s)
{
	s->eof = 1;
	stream_input(s);
}

/*
 * The stream stops reading its source before the source ended: idle_timeout
 * (client.c), min_item_rate (below).  What was read goes on as at the end
 * of input (an unterminated last line is rejected as truncated), and the
 * final line says why.
 */
void
stream_cut(struct stream *s, const char *why)
{
	if (s->state != S_RUNNING || s->eof)
		return;
	stream_error(s, "stream", NULL, why);
	s->src.ops->reading(s->src.arg, 0);
	stream_eof(s);
}

/*
 * min_item_rate: once a second, while a stream waits for a pool that has
 * it, each running stream of that pool that sent fewer items a second
 * than that over the last RATE_SECONDS is cut (crash_too_slow decides),
 * so its workers go to the waiting one.  The timer runs only while some
 * stream waits for such a pool.
 */
static void
rate_check(evutil_socket_t fd, short ev, void *arg)
{
	double now = cns_now();
	int due = 0;

	(void)fd;
	(void)ev;
	(void)arg;
	for (struct stream *s = TAILQ_FIRST(&streams); s != NULL;
	    s = TAILQ_NEXT(s, entry)) {
		const struct pool_conf *pc = s->pool->pc;
		char msg[256];

		if (pc->min_item_rate <= 0)
			continue;
		if (s->state == S_QUEUED)
			due = 1;
		if (s->state != S_RUNNING || s->eof ||
		    TAILQ_EMPTY(&s->pool->queue) ||
		    !crash_too_slow(&s->rate, (int64_t)now, now - s->leased_at,
		    pc->min_item_rate))
			continue;
		snprintf(msg, sizeof msg, "%.3g items/s over the last %d s, "
		    "below min_item_rate (%g), while other streams wait for "
		    "pool %s", rate_avg(&s->rate, (int64_t)now), RATE_SECONDS,
		    pc->min_item_rate, pc->name);
		stream_cut(s, msg);
	}
	if (due)
		rate_arm();
}

static void
rate_arm(void)
{
	struct timeval tv = { 1, 0 };

	if (rate_timer == NULL &&
	    (rate_timer = evtimer_new(cns_base, rate_check, NULL)) == NULL)
		fatalx("%s: evtimer_new", __func__);
	if (!evtimer_pending(rate_timer, NULL))
		evtimer_add(rate_timer, &tv);
}

int
stream_ack(struct stream *s, struct worker *w, unsigned items, size_t bytes)
{
	if (credit_ack(&w->credit, items, bytes) == -1)
		return -1;
	stream_input(s);
	return 0;
}

/* A worker rejected a line; -1 if it cannot hold that line. */
int
stream_reject(struct stream *s, struct worker *w, uint64_t seq,
    const char *why)
{
	struct lane *l;

	if (s->state != S_RUNNING || w->returned || w->rejected >= w->sent)
		return -1;
	l = &s->lanes[w->index];
	if (!feed_holds(l, seq))
		return -1;
	w->rejected++;
	/* A worker running the call again rejects the same lines again:
	 * the client heard of those already.  A lane's lines go out in
	 * order, so "already" is "not above the highest one reported". */
	if (seq <= l->reject_hwm)
		return 0;
	l->reject_hwm = seq;
	l->rejected++;
	feed_reject(s, seq, why);
	return 0;
}

static json_t *
stream_error(struct stream *s, const char *stage, struct worker *w,
    const char *msg)
{
	json_t *e;

	stream_log_about(s, w);
	if (w != NULL) {
		e = json_pack("{s:s,s:i,s:I,s:s}", "stage", stage, "worker",
		    (int)w->slot, "pid", (json_int_t)w->pid, "error", msg);
		log_warnx("stream %" PRIu64 ": pool %s: worker %u: %s: %s",
		    s->id, s->pool->pc->name, w->slot, stage, msg);
	} else {
		e = json_pack("{s:s,s:s}", "stage", stage, "error", msg);
		log_warnx("stream %" PRIu64 ": pool %s: %s: %s", s->id,
		    s->pool->pc->name, stage, msg);
	}
	log_set_fields(NULL);
	json_array_append_new(s->errors, e);
	return e;
}

/* Every consume returned: run the completion handler, or finish. */
static void
stream_consumed(struct stream *s)
{
	struct worker *keep = NULL;
	json_t *req;

	/* A worker that returned may have died since, not yet reaped: the
	 * completion handler goes to one still alive. */
	if (s->pool->has_complete && !s->lane_only)
		for (unsigned i = 0; i < s->nw && keep == NULL; i++)
			if (s->w[i] != NULL && !s->w[i]->closed &&
			    !s->w[i]->reaped && worker_alive(s->w[i]))
				keep = s->w[i];
	if (keep == NULL) {
		stream_finish(s);
		return;
	}
	s->state = S_COMPLETING;
	s->completer = keep;
	keep->watch_cur = 0;	/* item_timeout counts from here */
	req = json_pack("{s:O,s:O,s:O?,s:O?}", "results", s->results,
	    "params", s->params, "args", s->args, "kwargs", s->kwargs);
	worker_send_json(keep, F_COMPLETE, s->id, req);
	json_decref(req);
	/* The others are free already. */
	for (unsigned i = 0; i < s->nw; i++) {
		struct worker *w = s->w[i];
		if (w != NULL && w != keep) {
			s->w[i] = NULL;
			w->streams_served++;
			pool_idle(w->pool, w);
		}
	}
}

/* What a lane can still account for: its items not reported otherwise. */
static uint64_t
lane_open(const struct lane *l)
{
	uint64_t done = l->rejected + l->quarantined;

	return l->items > done ? l->items - done : 0;
}

/*
 * A lane returned.  Its items are counted here in closed form, so the
 * stream's sums hold whatever its workers said: consumed is what the last
 * consume call took, plus (redeliver) what workers that died had
 * finished, but never more than the lane's items not rejected or
 * quarantined; the rest is unconsumed and said so.  (A line rejected by
 * a worker that died, then skipped by a consume call that returned
 * early, is counted once this way.)
 */
static void
lane_account(struct stream *s, struct lane *l, struct worker *w,
    uint64_t consumed, json_t *seqs, int inexact, json_t *e)
{
	uint64_t open = lane_open(l), c = consumed + l->acked, u;

	if (c > open) {
		log_warnx("stream %" PRIu64 ": pool %s: worker %u counts %"
		    PRIu64 " items consumed where %" PRIu64 " were open; "
		    "counting %" PRIu64, s->id, s->pool->pc->name, w->slot, c,
		    open, open);
		c = open;
	}
	u = open - c;
	s->consumed += c;
	if (u > 0) {
		char msg[160];
		snprintf(msg, sizeof msg, "consume returned before its items "
		    "ended; %" PRIu64 " item%s not consumed", u,
		    u == 1 ? " was" : "s were");
		s->unconsumed += u;
		/* The call's own error (exec's "N items not read") says it
		 * already: the seqs go with it. */
		if (e == NULL)
			e = stream_error(s, "consume", w, msg);
		json_object_set_new(e, "unconsumed", json_integer(
		    (json_int_t)u));
		if (seqs != NULL)
			json_object_set(e, "seqs", seqs);
		if (seqs != NULL && inexact)
			json_object_set_new(e, "seqs_inexact", json_true());
	}
}

/*
 * The seq ranges a worker says its call did not consume (handed back, or
 * left when it returned): each within what the lane holds, in order, and
 * (unless merged, inexact) `skipped` seqs in all; NULL when absent, and
 * -1 when they do not add up.
 */
static int
lane_unconsumed(struct lane *l, json_t *v, uint64_t skipped, json_t **out)
{
	json_t *seqs = json_object_get(v, "unconsumed"), *r;
	uint64_t total = 0, prev = 0;
	size_t i;

	*out = NULL;
	if (seqs == NULL)
		return 0;
	if (!json_is_array(seqs))
		return -1;
	json_array_foreach(seqs, i, r) {
		json_int_t a = json_integer_value(json_array_get(r, 0)),
		    b = json_integer_value(json_array_get(r, 1));
		if (!json_is_array(r) || json_array_size(r) != 2 || a <= 0 ||
		    b < a || (uint64_t)a <= prev ||
		    !feed_holds(l, (uint64_t)a) || !feed_holds(l, (uint64_t)b))
			return -1;
		total += (uint64_t)(b - a) + 1;
		prev = (uint64_t)b;
	}
	if (!json_is_true(json_object_get(v, "unconsumed_inexact")) &&
	    total != skipped)
		return -1;
	*out = seqs;
	return 0;
}

int
stream_result(struct stream *s, struct worker *w, json_t *v)
{
	json_int_t consumed, rejected, skipped;
	json_t *err = json_object_get(v, "error"), *seqs, *e = NULL;
	struct lane *l;

	if (s->state != S_RUNNING || w->returned)
		return -1;
	l = &s->lanes[w->index];
	if (!l->end_sent)
		return -1;
	consumed = json_integer_value(json_object_get(v, "consumed"));
	rejected = json_integer_value(json_object_get(v, "rejected"));
	skipped = json_integer_value(json_object_get(v, "skipped"));
	/* Each bounded first, so the sum cannot overflow. */
	if (consumed < 0 || skipped < 0 || rejected < 0 ||
	    (uint64_t)consumed > w->sent || (uint64_t)skipped > w->sent ||
	    (uint64_t)rejected != w->rejected ||
	    (uint64_t)consumed + (uint64_t)rejected + (uint64_t)skipped !=
	    w->sent)
		return -1;
	if (lane_unconsumed(l, v, (uint64_t)skipped, &seqs) == -1)
		return -1;
	w->returned = 1;
	l->state = L_RETURNED;
	feed_spool_close(l);	/* the call returned: nothing to replay */
	s->nreturned++;
	json_array_set(s->results, w->index, json_object_get(v, "result"));
	if (json_is_string(err))
		e = stream_error(s, "consume", w, json_string_value(err));
	lane_account(s, l, w, (uint64_t)consumed, seqs,
	    json_is_true(json_object_get(v, "unconsumed_inexact")), e);
	stream_input(s);
	return 0;
}

void
stream_completion(struct stream *s, struct worker *w, json_t *v)
{
	json_t *err = json_object_get(v, "error");

	if (s->state != S_COMPLETING || w != s->completer)
		return;
	json_decref(s->completion);
	s->completion = json_incref(json_object_get(v, "completion"));
	if (s->completion == NULL)
		s->completion = json_null();
	if (json_is_string(err))
		stream_error(s, "complete", w, json_string_value(err));
	stream_finish(s);
}

/* A lane gives up: what it held and did not finish is reported lost. */
static void
lane_dead(struct stream *s, struct lane *l, struct worker *w,
    const char *how, int status, const char *why)
{
	uint64_t open = lane_open(l), done = l->acked < open ? l->acked :
	    open, lost = open - done;
	json_t *seqs = json_array(), *e;
	char msg[512];

	l->state = L_DEAD;
	s->consumed += done;	/* redeliver: finished by workers that died */
	for (size_t i = 0; i < l->nranges; i++)
		json_array_append_new(seqs, json_pack("[I,I]",
		    (json_int_t)l->ranges[i].first,
		    (json_int_t)l->ranges[i].last));
	snprintf(msg, sizeof msg, "%s%s%s; %" PRIu64 " item%s it had taken "
	    "%s lost", how != NULL ? "worker died: " : "", how != NULL ? how :
	    "", why != NULL ? why : "", lost, lost == 1 ? "" : "s",
	    lost == 1 ? "is" : "are");
	utf8_clean(msg);
	e = stream_error(s, "consume", w, msg);
	json_object_set_new(e, "seqs", seqs);
	if (l->ranges_inexact)
		json_object_set_new(e, "seqs_inexact", json_true());
	if (w != NULL && w->timed_out == 0 && WIFEXITED(status))
		json_object_set_new(e, "exit", json_integer(WEXITSTATUS(status)));
	else if (w != NULL && WIFSIGNALED(status))
		json_object_set_new(e, "signal", json_integer(WTERMSIG(status)));
	s->unconsumed += lost;
	feed_spool_close(l);
}

/* Tell the source an item is quarantined, with its line. */
static void
stream_quarantine(struct stream *s, struct lane *l, uint64_t seq,
    const char *reason)
{
	char *line = feed_spool_line(s, l, seq);
	json_t *item = NULL, *v;

	if (line != NULL) {
		item = json_loads(line, JSON_DECODE_ANY, NULL);
		if (item == NULL) {
			utf8_clean(line);
			item = json_string(line);
		}
	}
	free(line);
	s->quarantined++;
	l->quarantined++;
	log_warnx("stream %" PRIu64 ": pool %s: item %" PRIu64 " quarantined: "
	    "%s", s->id, s->pool->pc->name, seq, reason);
	v = json_pack("{s:{s:I,s:o,s:s}}", "quarantined", "seq",
	    (json_int_t)seq, "item", item != NULL ? item : json_null(),
	    "reason", reason);
	s->src.ops->event(s->src.arg, v);
	json_decref(v);
}

/* Crashes so far on `seq`. */
static unsigned
stream_attempts(const struct stream *s, uint64_t seq)
{
	for (size_t i = 0; i < s->nattempts; i++)
		if (s->attempts[i].seq == seq)
			return s->attempts[i].n;
	return 0;
}

static void
stream_set_attempts(struct stream *s, uint64_t seq, unsigned n)
{
	struct attempt *a;

	for (size_t i = 0; i < s->nattempts; i++)
		if (s->attempts[i].seq == seq) {
			s->attempts[i].n = n;
			return;
		}
	a = reallocarray(s->attempts, s->nattempts + 1, sizeof *a);
	if (a == NULL)
		fatal("%s: reallocarray", __func__);
	s->attempts = a;
	a[s->nattempts].seq = seq;
	a[s->nattempts].n = n;
	s->nattempts++;
}

/*
 * A lane's worker died inside its consume call: the facts (where its
 * page says it was, checked against what it was sent) go to crash.c, and
 * its verdict is applied here.
 */
static void
lane_crashed(struct stream *s, struct lane *l, struct worker *w,
    const char *how)
{
	const struct pool_conf *pc = s->pool->pc;
	struct crash_facts f = { 0 };
	struct crash_verdict v;
	char why[600];

	s->crashes++;
	s->pool->crashes++;
	if (w->shm != NULL) {
		f.blame = shm_load(&w->shm->cur);
		f.last_done = shm_load(&w->shm->last_done);
		f.ndone = shm_load(&w->shm->ndone);
		f.started = shm_load(&w->shm->started);
		f.ended = shm_load(&w->shm->ended);
	}
	f.blame = crash_blame(f.blame, f.last_done, w->timed_out);
	f.blame_held = f.blame != 0 && feed_holds(l, f.blame);
	f.last_done_held = f.last_done != 0 && feed_holds(l, f.last_done);
	f.policy = pc->on_crash;
	f.max_attempts = pc->max_attempts;
	f.resend_from = l->resend_from;
	f.sent = w->sent;
	f.rejected = w->rejected;
	/* The spool is written now: a replay reads it back. */
	f.spool_ok = !crash_spools(f.policy) || feed_spool_flush(s, l) == 0;
	f.spool_pending = !f.spool_ok && l->spool_paused;
	f.stream_crashes = s->crashes;
	f.end_crashes = l->end_crashes;
	f.fruitless = l->fruitless;
	if (f.blame_held)
		f.attempts = stream_attempts(s, f.blame);
	crash_lane(&f, &v);

	l->end_crashes = v.end_crashes;
	l->fruitless = v.fruitless;
	if (v.blame != 0) {
		stream_set_attempts(s, v.blame, v.attempts);
		log_warnx("stream %" PRIu64 ": pool %s: worker %u died on item "
		    "%" PRIu64 " (%u of %u attempts): %s", s->id, pc->name,
		    w->slot, v.blame, v.attempts, pc->max_attempts, how);
	}
	if (v.action == CRASH_LANE_LOST) {
		lane_dead(s, l, w, how, w->status, v.why[0] != '\0' ? v.why :
		    NULL);
		return;
	}
	if (v.quarantine) {
		snprintf(why, sizeof why, "its consumer died on it %u time%s: "
		    "%s", v.attempts, v.attempts == 1 ? "" : "s", how);
		utf8_clean(why);
		stream_quarantine(s, l, v.blame, why);
	}
	if (v.note == CRASH_NOTE_BETWEEN)
		log_warnx("stream %" PRIu64 ": pool %s: worker %u died between "
		    "items: %s", s->id, pc->name, w->slot, how);
	if (v.bad_progress)
		log_warnx("stream %" PRIu64 ": pool %s: worker %u left a "
		    "progress record that does not add up; its items go "
		    "again", s->id, pc->name, w->slot);
	if (v.plugin_works)
		pool_works(s->pool);
	l->acked += v.acked;
	l->resend_from = v.resend_from;
	l->state = L_WAITING;
	l->end_sent = 0;
	l->resend_off = l->resend_end = 0;
	s->nwaiting++;
	pool_lane_wait(s->pool, l);
	pool_demand(s->pool);
}

/* A leased worker died: its lane runs again, or what it held is lost. */
void
stream_worker_gone(struct stream *s, struct worker *w, const char *how)
{
	struct lane *l;
	char msg[256];

	if (s->w[w->index] != w)
		return;
	s->w[w->index] = NULL;
	if (s->state == S_COMPLETING && w == s->completer) {
		snprintf(msg, sizeof msg, "worker died in the completion "
		    "handler: %s", how);
		stream_error(s, "complete", w, msg);
		stream_finish(s);
		return;
	}
	if (s->state != S_RUNNING)
		return;
	l = &s->lanes[w->index];
	s->nlive--;
	if (w->returned)
		s->nreturned--;
	else
		lane_crashed(s, l, w, how);
	stream_input(s);
}

/* A new worker for a lane whose worker died: run the call again. */
void
stream_lane_leased(struct lane *l, struct worker *w)
{
	struct stream *s = l->stream;

	s->nwaiting--;
	s->nlive++;
	l->state = L_LIVE;
	l->resend_off = 0;
	/* The lane's staged records were flushed when its worker died. */
	l->resend_end = l->spool != -1 ? l->spool_len : 0;
	log_info("stream %" PRIu64 ": pool %s: worker %u takes over lane %u "
	    "(%" PRIu64 " bytes to resend)", s->id, s->pool->pc->name, w->slot,
	    l->index + 1, l->resend_end);
	stream_bind(s, l->index, w);
	stream_input(s);
}

/* A lane will not run again: what it held is reported lost. */
static void
lane_fail(struct stream *s, struct lane *l, const char *why)
{
	char msg[600];

	if (l->state == L_WAITING) {
		pool_lane_unwait(s->pool, l);
		s->nwaiting--;
	} else if (l->state == L_LIVE && s->w[l->index] != NULL) {
		struct worker *w = s->w[l->index];
		s->w[l->index] = NULL;
		s->nlive--;
		w->stream = NULL;
		worker_stop(w);
	} else
		return;
	snprintf(msg, sizeof msg, "the consume call could not run again: %s",
	    why);
	lane_dead(s, l, NULL, NULL, 0, msg);
}

/* No worker will come for a waiting lane (its pool cannot start any). */
void
stream_lane_fail(struct lane *l, const char *why)
{
	lane_fail(l->stream, l, why);
	stream_input(l->stream);
}

/* Every worker died before the source's end: report what was left. */
static void
stream_orphaned(struct stream *s)
{
	if (s->seq >= s->orphan_from) {
		char msg[200];
		snprintf(msg, sizeof msg, "every worker of the stream died; "
		    "items %" PRIu64 " to %" PRIu64 " were not consumed",
		    s->orphan_from, s->seq);
		json_array_append_new(s->errors, json_pack("{s:s,s:s,s:[[I,I]]}",
		    "stage", "stream", "error", msg, "seqs",
		    (json_int_t)s->orphan_from, (json_int_t)s->seq));
	}
	stream_finish(s);
}

static void
stream_finish(struct stream *s)
{
	json_t *final;

	s->state = S_DONE;
	if (s->spool_timer != NULL)
		evtimer_del(s->spool_timer);
	/* Off the pool's queue before any worker goes back to the pool,
	 * or pool_idle would hand one to a lane of this very stream. */
	for (unsigned i = 0; i < s->nw; i++) {
		struct lane *l = &s->lanes[i];
		if (l->state == L_WAITING) {
			pool_lane_unwait(s->pool, l);
			l->state = L_DEAD;
		}
		feed_spool_close(l);
	}
	s->nwaiting = 0;
	for (unsigned i = 0; i < s->nw; i++) {
		struct worker *w = s->w[i];
		if (w == NULL)
			continue;
		s->w[i] = NULL;
		w->stream = NULL;
		w->streams_served++;
		if (!w->returned && w->bev != NULL) {
			/* Still inside consume with no stream left to serve:
			 * it cannot be reused. */
			worker_stop(w);
			continue;
		}
		pool_idle(w->pool, w);
	}
	s->pool->streams_done++;
	s->pool->nrunning--;
	pool_retire_check(s->pool);	/* stops a retired pool's workers */
	final = json_pack("{s:b,s:I,s:I,s:I,s:I,s:I,s:I,s:i,s:O,s:O,s:O}",
	    "ok", json_array_size(s->errors) == 0,
	    "stream", (json_int_t)s->id,
	    "items", (json_int_t)s->seq,
	    "consumed", (json_int_t)s->consumed,
	    "rejected", (json_int_t)s->rejected,
	    "quarantined", (json_int_t)s->quarantined,
	    "unconsumed", (json_int_t)s->unconsumed,
	    "crashes", (int)s->crashes,
	    "results", s->results,
	    "completion", s->completion,
	    "errors", s->errors);
	if (final == NULL)
		fatalx("%s: json_pack", __func__);
	stream_log_about(s, NULL);
	log_info("stream %" PRIu64 ": pool %s: %" PRIu64 " item%s, %" PRIu64
	    " consumed, %" PRIu64 " rejected, %" PRIu64 " quarantined, %"
	    PRIu64 " unconsumed, %u crash%s, %zu error%s", s->id,
	    s->pool->pc->name, s->seq, s->seq == 1 ? "" : "s", s->consumed,
	    s->rejected,
	    s->quarantined, s->unconsumed, s->crashes,
	    s->crashes == 1 ? "" : "es", json_array_size(s->errors),
	    json_array_size(s->errors) == 1 ? "" : "s");
	log_set_fields(NULL);
	stream_access(s, json_array_size(s->errors) == 0 ? "ok" : "failed");
	s->src.ops->finish(s->src.arg, final);
}

/* Shutdown: every open stream ends now, with the reason. */
void
stream_abort(struct stream *s, const char *why)
{
	if (s->cl != NULL) {
		s->cl_ops->abort(s, why);
		return;
	}
	if (s->state == S_QUEUED) {
		stream_refuse(s, "draining", why);
		return;
	}
	if (s->state == S_DONE)
		return;
	json_array_append_new(s->errors, json_pack("{s:s,s:s}", "stage",
	    "daemon", "error", why));
	if (s->state == S_RUNNING)
		s->unconsumed = s->seq - s->consumed - s->rejected -
		    s->quarantined;
	stream_finish(s);
}
