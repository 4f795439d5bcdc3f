/*
 * stream.c - one client stream, from lease to final line.  Item lines move
 * from the client's input to its workers in batches, by credit: when every
 * leased worker's window is full the client is not read any more, so a
 * fast producer is slowed down instead of buffered.  The master never
 * parses an item; workers report rejected lines and their results.
 *
 * Each leased worker runs one lane: one consume call of the stream.  When
 * a lane's worker dies the pool's on_crash policy decides: replay (a new
 * worker runs the call again over every line the spool file kept, then
 * goes on with live ones), redeliver (only the lines the dead worker had
 * not finished), or fail (the lane's lines are reported lost).  An item a
 * worker died on max_attempts times is quarantined: reported and skipped.
 */
#include <sys/wait.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "consumersd.h"

#define BATCH_MAX	(256u << 10)	/* bytes in one ITEMS frame */
#define RANGES_MAX	65536	/* seq ranges kept per lane */
#define CRASHES_MAX	1000	/* workers a stream may lose in all */

static uint64_t	stream_next_id = 1;
static unsigned	stream_total;		/* allocated, not yet freed */

unsigned
stream_count(void)
{
	return stream_total;
}

static void	stream_finish(struct stream *);
static void	stream_orphaned(struct stream *);
static void	stream_check(struct stream *);
static void	lane_spool_close(struct lane *);

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
	stream_refuse(s, msg);
}

struct stream *
stream_new(struct client *c, struct pool *p, unsigned want, json_t *params)
{
	struct stream *s;
	struct timeval tv;

	if ((s = calloc(1, sizeof *s)) == NULL)
		fatal("%s: calloc", __func__);
	s->id = stream_next_id++;
	stream_total++;
	s->client = c;
	s->pool = p;
	pool_stream_new(p);
	s->want = want;
	s->params = params != NULL ? json_incref(params) : json_null();
	s->errors = json_array();
	s->completion = json_null();
	s->state = S_QUEUED;
	TAILQ_INSERT_TAIL(&p->queue, s, qentry);
	pool_demand(p);
	s->timer = evtimer_new(cns_base, stream_timeout, s);
	tv = cns_tv(p->pc->queue_timeout);
	evtimer_add(s->timer, &tv);
	return s;
}

void
stream_free(struct stream *s)
{
	if (s->state == S_QUEUED)
		TAILQ_REMOVE(&s->pool->queue, s, qentry);
	if (s->timer != NULL)
		event_free(s->timer);
	for (unsigned i = 0; i < s->nw; i++) {
		struct lane *l = &s->lanes[i];
		if (l->state == L_WAITING)
			pool_lane_unwait(s->pool, l);
		lane_spool_close(l);
		free(l->ranges);
	}
	free(s->lanes);
	free(s->attempts);
	json_decref(s->params);
	json_decref(s->results);
	json_decref(s->errors);
	json_decref(s->completion);
	free(s->w);
	pool_stream_free(s->pool);	/* may free a retiring pool */
	free(s);
	stream_total--;
	cns_stream_freed();
}

/* A worker starts a consume call for lane i. */
static void
stream_bind(struct stream *s, unsigned i, struct worker *w)
{
	json_t *begin = json_pack("{s:O}", "params", s->params);

	s->w[i] = w;
	w->stream = s;
	w->index = i;
	memset(&w->credit, 0, sizeof w->credit);
	w->sent = w->rejected = 0;
	w->returned = 0;
	w->watch_cur = w->watch_started = 0;
	w->timed_out = 0;
	/* The page still says where its last stream was; a worker that dies
	 * before it reads BEGIN must not be taken to be there. */
	if (w->shm != NULL)
		memset(w->shm, 0, sizeof *w->shm);
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
	s->pool->nrunning++;
	s->w = ws;
	s->nw = s->nlive = n;
	s->results = json_array();
	if ((s->lanes = calloc(n, sizeof *s->lanes)) == NULL)
		fatal("%s: calloc", __func__);
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
	client_send_json(s->client, reply);
	json_decref(reply);
	stream_input(s);
}

void
stream_refuse(struct stream *s, const char *why)
{
	json_t *reply;

	if (s->state == S_QUEUED) {
		TAILQ_REMOVE(&s->pool->queue, s, qentry);
		evtimer_del(s->timer);
	}
	s->state = S_DONE;
	log_info("stream %" PRIu64 ": refused: %s", s->id, why);
	reply = json_pack("{s:b,s:s}", "ok", 0, "error", why);
	client_finish(s->client, reply);
}

static void
stream_send_reject(struct stream *s, uint64_t seq, const char *why)
{
	json_t *v = json_pack("{s:{s:I,s:s}}", "rejected", "seq",
	    (json_int_t)seq, "error", why);

	s->rejected++;
	client_send_json(s->client, v);
	json_decref(v);
}

/* The next leased worker, round robin, whose window has room. */
static struct worker *
stream_pick(struct stream *s, struct flow_room *room, unsigned *tried)
{
	const struct conf *c = cns_conf;

	while (*tried < s->nw) {
		struct worker *w = s->w[s->rr % s->nw];
		s->rr++;
		(*tried)++;
		if (w != NULL && worker_alive(w) &&
		    s->lanes[w->index].resend_off >=
		    s->lanes[w->index].resend_end &&
		    credit_room(&w->credit, c->window_bytes, c->window_items,
		    c->max_item_bytes, room))
			return w;
	}
	return NULL;
}

/*
 * Remember the seqs a lane took; adjacent batches merge into one range.
 * The list is bounded: past RANGES_MAX the last range grows to cover the
 * new one (gaps included) and the report says the ranges are inexact.
 */
static void
lane_add_range(struct lane *l, uint64_t first, uint64_t last)
{
	if (l->nranges > 0 && (l->ranges[l->nranges - 1].last + 1 == first ||
	    l->nranges == RANGES_MAX)) {
		l->ranges_inexact |= l->ranges[l->nranges - 1].last + 1 != first;
		l->ranges[l->nranges - 1].last = last;
		return;
	}
	if (l->nranges == l->caprange) {
		size_t cap = l->caprange ? l->caprange * 2 : 16;
		struct range *r = reallocarray(l->ranges, cap, sizeof *r);
		if (r == NULL)
			fatal("%s: reallocarray", __func__);
		l->ranges = r;
		l->caprange = cap;
	}
	l->ranges[l->nranges].first = first;
	l->ranges[l->nranges].last = last;
	l->nranges++;
}

/* Whether `seq` went to the lane; ranges ascend, so a binary search. */
static int
lane_holds(const struct lane *l, uint64_t seq)
{
	size_t lo = 0, hi = l->nranges;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (seq < l->ranges[mid].first)
			hi = mid;
		else if (seq > l->ranges[mid].last)
			lo = mid + 1;
		else
			return 1;
	}
	return 0;
}

#define SPOOL_STAGE_MAX	(64u << 10)	/* bytes staged before a write */

/* Write the lane's staged records to its file; -1 if that failed. */
static int
lane_spool_flush(struct stream *s, struct lane *l)
{
	if (l->spool_stage == NULL || l->spool_broken)
		return l->spool_broken ? -1 : 0;
	/* The file is made on the first write: a stream whose lanes stay
	 * within the stage (most short ones) costs no file at all. */
	if (l->spool == -1 &&
	    (l->spool = spool_open(cns_conf->spool_dir)) == -1) {
		log_warn("stream %" PRIu64 ": cannot create a spool file in "
		    "%s; a crash of its lane %u will lose its items", s->id,
		    cns_conf->spool_dir, l->index + 1);
		l->spool_broken = 1;
		return -1;
	}
	if (spool_flush(l->spool, l->spool_stage) == -1) {
		log_warn("stream %" PRIu64 ": writing the spool file in %s; "
		    "a crash of its lane %u will lose its items", s->id,
		    cns_conf->spool_dir, l->index + 1);
		l->spool_broken = 1;
		return -1;
	}
	return 0;
}

static void
lane_spool_close(struct lane *l)
{
	if (l->spool != -1) {
		close(l->spool);
		l->spool = -1;
	}
	if (l->spool_stage != NULL) {
		evbuffer_free(l->spool_stage);
		l->spool_stage = NULL;
	}
}

/*
 * Keep a batch in the lane's spool, for a replay after a crash.  Batches
 * are staged and written 64 KiB at a time: a write per batch would cost
 * more than the batch.
 */
static void
lane_spool(struct stream *s, struct lane *l, uint64_t first, uint32_t count,
    struct evbuffer *in, size_t nbytes)
{
	if (s->pool->pc->on_crash == CRASH_FAIL || l->spool_broken)
		return;
	if (l->spool_stage == NULL && (l->spool_stage = evbuffer_new()) ==
	    NULL)
		fatalx("%s: evbuffer_new", __func__);
	spool_stage(l->spool_stage, first, count, in, nbytes);
	l->spool_len += sizeof(struct spool_rec) + nbytes;
	if (evbuffer_get_length(l->spool_stage) >= SPOOL_STAGE_MAX)
		lane_spool_flush(s, l);
}

/*
 * The head of an ITEMS frame of `count` lines (`nbytes`) from seq
 * `first`, in one piece, with the worker's window and count charged;
 * the caller adds the lines.
 */
static struct evbuffer *
items_head(struct stream *s, struct worker *w, uint64_t first,
    uint32_t count, size_t nbytes)
{
	struct {
		struct frame_hdr h;
		uint64_t	 first;
		uint32_t	 count;
	} __attribute__((packed)) head = {
		.h = { .version = FRAME_VERSION, .type = F_ITEMS,
		    .len = (uint32_t)(ITEMS_HDR_SIZE + nbytes),
		    .stream = s->id },
		.first = first, .count = count
	};
	struct evbuffer *out = worker_output(w);

	_Static_assert(sizeof head == FRAME_HDR_SIZE + ITEMS_HDR_SIZE,
	    "items head");
	evbuffer_add(out, &head, sizeof head);
	credit_take(&w->credit, count, nbytes);
	w->sent += count;
	return out;
}

static void
stream_send_batch(struct stream *s, struct worker *w, struct evbuffer *in,
    const struct cut *cut)
{
	struct lane *l = &s->lanes[w->index];
	uint64_t first = s->seq + 1;

	lane_spool(s, l, first, cut->n, in, cut->nbytes);
	evbuffer_remove_buffer(in, items_head(s, w, first, cut->n,
	    cut->nbytes), cut->nbytes);
	lane_add_range(l, first, first + cut->n - 1);
	l->items += cut->n;
	s->seq += cut->n;
	cns_items_in += cut->n;		/* for the items/s in STATUS= */
}

static int
stream_quarantined(const struct stream *s, uint64_t seq)
{
	for (size_t i = 0; i < s->nattempts; i++)
		if (s->attempts[i].seq == seq)
			return s->attempts[i].n >= s->pool->pc->max_attempts;
	return 0;
}

/* One ITEMS frame of `count` lines from `p` to the lane's worker. */
static void
lane_send(struct stream *s, struct worker *w, uint64_t first, uint32_t count,
    const char *p, size_t nbytes)
{
	evbuffer_add(items_head(s, w, first, count, nbytes), p, nbytes);
}

/*
 * Resend the spool to the lane's new worker, as its window allows: every
 * line from resend_from on, but no quarantined one.  Live lines wait
 * until it has caught up.  Returns -1 if the lane failed.
 */
static int
lane_resend(struct stream *s, struct lane *l)
{
	const struct conf *c = cns_conf;
	struct worker *w = s->w[l->index];

	while (w != NULL && worker_alive(w) &&
	    l->resend_off < l->resend_end) {
		struct spool_rec r;
		char *buf, *p, *run, *end;
		uint64_t seq, run_first = 0;
		uint32_t run_n = 0;

		if (spool_rec_at(l->spool, l->resend_off, &r) == -1)
			goto unreadable;
		if (r.first + r.count <= l->resend_from) {
			/* redeliver: all of it was done before the crash */
			l->resend_off += sizeof r + r.nbytes;
			continue;
		}
		if (w->credit.items > 0 && (w->credit.items + r.count >
		    c->window_items || w->credit.bytes + r.nbytes >
		    c->window_bytes))
			break;		/* wait for acks */
		if ((buf = spool_lines(l->spool, l->resend_off, &r)) == NULL)
			goto unreadable;
		p = run = buf;
		end = buf + r.nbytes;
		for (seq = r.first; seq < r.first + r.count && p < end; seq++) {
			char *nl = memchr(p, '\n', (size_t)(end - p));
			int keep = seq >= l->resend_from &&
			    !stream_quarantined(s, seq);
			if (nl == NULL)
				break;
			if (!keep) {
				if (run_n > 0)
					lane_send(s, w, run_first, run_n, run,
					    (size_t)(p - run));
				run_n = 0;
				run = nl + 1;
			} else if (run_n++ == 0) {
				run_first = seq;
				run = p;
			}
			p = nl + 1;
		}
		if (run_n > 0)
			lane_send(s, w, run_first, run_n, run, (size_t)(p - run));
		free(buf);
		l->resend_off += sizeof r + r.nbytes;
	}
	return 0;

unreadable: {
	char why[200];
	snprintf(why, sizeof why, "the spool file could not be read back: "
	    "%s", strerror(errno));
	stream_lane_fail(l, why);
	return -1;
	}
}

/* END to every lane whose worker has had all of its lines. */
static void
stream_end_lanes(struct stream *s)
{
	for (unsigned i = 0; i < s->nw; i++) {
		struct lane *l = &s->lanes[i];
		if (s->w[i] == NULL || l->state != L_LIVE || l->end_sent ||
		    l->resend_off < l->resend_end)
			continue;
		l->end_sent = 1;
		worker_send(s->w[i], F_END, s->id, NULL, 0);
	}
}

/* Resends first; returns -1 if the stream is over. */
static int
stream_resend(struct stream *s)
{
	for (unsigned i = 0; i < s->nw; i++) {
		struct lane *l = &s->lanes[i];
		if (l->state == L_LIVE && l->resend_off < l->resend_end &&
		    lane_resend(s, l) == -1 && s->state != S_RUNNING)
			return -1;
	}
	return 0;
}

/*
 * Move what the client sent to workers with room.  Runs on client input,
 * on acks (room came back) and when the client's output drained.
 */
void
stream_input(struct stream *s)
{
	struct evbuffer *in = client_input(s->client);
	const size_t max_item = cns_conf->max_item_bytes;

	if (s->state != S_RUNNING)
		return;
	if (stream_resend(s) == -1)
		return;
	if (s->ended) {
		stream_end_lanes(s);
		return;
	}
	for (;;) {
		struct flow_room room;
		struct worker *w;
		struct cut cut;
		unsigned tried = 0;
		size_t share;


		if (s->skipping) {
			struct evbuffer_ptr e = evbuffer_search(in, "\n", 1,
			    NULL);
			if (e.pos == -1) {
				evbuffer_drain(in, evbuffer_get_length(in));
				break;
			}
			evbuffer_drain(in, (size_t)e.pos + 1);
			s->skipping = 0;
		}
		if (evbuffer_get_length(in) == 0)
			break;
		if (client_output_full(s->client)) {
			client_read(s->client, 0);
			return;
		}
		if (s->nlive == 0 && s->nwaiting > 0) {
			/* Every lane waits for a new worker. */
			client_read(s->client, 0);
			return;
		}
		if (s->nlive == 0) {
			/* No worker left: count the rest, to report it. */
			struct flow_room all = { max_item, SIZE_MAX, SIZE_MAX,
			    UINT_MAX };
			w = NULL;
			flow_cut(in, &all, &cut);
		} else {
			/* Spread what is buffered over the workers: small
			 * streams reach every consumer, large ones move in
			 * big batches. */
			share = evbuffer_get_length(in) / s->nlive;
			for (;;) {
				if ((w = stream_pick(s, &room, &tried)) == NULL)
					break;
				if (room.soft_bytes > share)
					room.soft_bytes = share;
				if (room.soft_bytes > BATCH_MAX)
					room.soft_bytes = BATCH_MAX;
				flow_cut(in, &room, &cut);
				if (cut.kind != CUT_FULL)
					break;
			}
			if (w == NULL) {
				/* Every window is full: wait for acks. */
				client_read(s->client, 0);
				return;
			}
		}
		switch (cut.kind) {
		case CUT_BATCH:
			if (w != NULL)
				stream_send_batch(s, w, in, &cut);
			else {
				s->seq += cut.n;
				s->unconsumed += cut.n;
				evbuffer_drain(in, cut.nbytes);
			}
			continue;
		case CUT_EMPTY:
			evbuffer_drain(in, cut.nbytes);
			continue;
		case CUT_LONG: {
			char why[160];
			snprintf(why, sizeof why, "line of %s%zu bytes exceeds "
			    "max_item_bytes (%zu)", cut.newline ? "" :
			    "at least ", cut.nbytes - (cut.newline ? 1 : 0),
			    max_item);
			stream_send_reject(s, ++s->seq, why);
			evbuffer_drain(in, cut.nbytes);
			s->skipping = !cut.newline;
			continue;
		}
		case CUT_NEED:
		case CUT_FULL:
			break;
		}
		break;
	}
	if (s->eof && !s->skipping && evbuffer_get_length(in) > 0) {
		/* The client closed with an unterminated last line. */
		stream_send_reject(s, ++s->seq, "truncated: the last line has "
		    "no newline before the end of the stream");
		evbuffer_drain(in, evbuffer_get_length(in));
	}
	if (s->eof && evbuffer_get_length(in) == 0) {
		s->ended = 1;
		if (s->nlive == 0 && s->nwaiting == 0)
			stream_orphaned(s);
		else
			stream_end_lanes(s);
	} else
		client_read(s->client, 1);
}

void
stream_client_eof(struct stream *s)
{
	s->eof = 1;
	stream_input(s);
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
	if (!lane_holds(l, seq))
		return -1;
	w->rejected++;
	/* A worker running the call again rejects the same lines again:
	 * the client heard of those already.  A lane's lines go out in
	 * order, so "already" is "not above the highest one reported". */
	if (seq <= l->reject_hwm)
		return 0;
	l->reject_hwm = seq;
	l->rejected++;
	stream_send_reject(s, seq, why);
	return 0;
}

static json_t *
stream_error(struct stream *s, const char *stage, struct worker *w,
    const char *msg)
{
	json_t *e;

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
	if (s->pool->has_complete)
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
	req = json_pack("{s:O,s:O}", "results", s->results, "params",
	    s->params);
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
    uint64_t consumed)
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
		stream_error(s, "consume", w, msg);
	}
}

int
stream_result(struct stream *s, struct worker *w, json_t *v)
{
	json_int_t consumed, rejected, skipped;
	json_t *err = json_object_get(v, "error");

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
	w->returned = 1;
	l->state = L_RETURNED;
	lane_spool_close(l);	/* the call returned: nothing to replay */
	s->nreturned++;
	json_array_set(s->results, w->index, json_object_get(v, "result"));
	if (json_is_string(err))
		stream_error(s, "consume", w, json_string_value(err));
	lane_account(s, l, w, (uint64_t)consumed);
	stream_check(s);
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

/* Every lane returned, failed, or took nothing more: go on. */
static void
stream_check(struct stream *s)
{
	if (s->state != S_RUNNING)
		return;
	if (s->nlive == 0 && s->nwaiting == 0) {
		if (s->ended) {
			stream_finish(s);
			return;
		}
		/* Nobody is left to take the rest: read it to the end and
		 * report it, so no item goes unaccounted. */
		if (s->orphan_from == 0)
			s->orphan_from = s->seq + 1;
		stream_input(s);
		return;
	}
	if (s->ended && s->nwaiting == 0 && s->nreturned == s->nlive)
		stream_consumed(s);
	else
		stream_input(s);
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
	lane_spool_close(l);
}

/* Tell the client an item is quarantined, with its line. */
static void
stream_quarantine(struct stream *s, struct lane *l, uint64_t seq,
    const char *reason)
{
	char *line = l->spool_stage != NULL && lane_spool_flush(s, l) == 0 ?
	    spool_find(l->spool, l->spool_len, seq) : NULL;
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
	client_send_json(s->client, v);
	json_decref(v);
}

/* One more crash on `seq`; returns how many there were. */
static unsigned
stream_attempt(struct stream *s, uint64_t seq)
{
	struct attempt *a;

	for (size_t i = 0; i < s->nattempts; i++)
		if (s->attempts[i].seq == seq)
			return ++s->attempts[i].n;
	a = reallocarray(s->attempts, s->nattempts + 1, sizeof *a);
	if (a == NULL)
		fatal("%s: reallocarray", __func__);
	s->attempts = a;
	a[s->nattempts].seq = seq;
	a[s->nattempts].n = 1;
	s->nattempts++;
	return 1;
}

/*
 * A lane's worker died inside its consume call.  Decide from where it was
 * (the shared page, checked against what it was sent) whether an item is
 * to blame, and whether the lane runs again on a new worker.
 */
static void
lane_crashed(struct stream *s, struct lane *l, struct worker *w,
    const char *how)
{
	const struct pool_conf *pc = s->pool->pc;
	uint64_t cur = 0, last_done = 0, ndone = 0, started = 0, ended = 0;
	char why[600];

	s->crashes++;
	s->pool->crashes++;
	if (w->shm != NULL) {
		cur = shm_load(&w->shm->cur);
		last_done = shm_load(&w->shm->last_done);
		ndone = shm_load(&w->shm->ndone);
		started = shm_load(&w->shm->started);
		ended = shm_load(&w->shm->ended);
	}
	/* Killed for item_timeout, unless it finished that item between
	 * the look and the kill. */
	if (w->timed_out != 0 && w->timed_out < TIMEOUT_COMPLETE &&
	    last_done < w->timed_out)
		cur = w->timed_out;
	if (cur != 0 && (!lane_holds(l, cur) || cur < l->resend_from))
		cur = 0;		/* not one of its items: no blame */
	if (pc->on_crash == CRASH_FAIL) {
		lane_dead(s, l, w, how, w->status, NULL);
		return;
	}
	if (lane_spool_flush(s, l) == -1) {
		lane_dead(s, l, w, how, w->status, " (its items could not be "
		    "spooled, so they cannot be sent again)");
		return;
	}
	if (s->crashes > CRASHES_MAX) {
		snprintf(why, sizeof why, " (the stream lost %u workers, the "
		    "most it may)", CRASHES_MAX);
		lane_dead(s, l, w, how, w->status, why);
		return;
	}
	if (cur != 0) {
		unsigned n = stream_attempt(s, cur);
		log_warnx("stream %" PRIu64 ": pool %s: worker %u died on item "
		    "%" PRIu64 " (%u of %u attempts): %s", s->id, pc->name,
		    w->slot, cur, n, pc->max_attempts, how);
		if (n >= pc->max_attempts) {
			snprintf(why, sizeof why, "its consumer died on it %u "
			    "time%s: %s", n, n == 1 ? "" : "s", how);
			utf8_clean(why);
			stream_quarantine(s, l, cur, why);
		}
	} else if (ended) {
		if (++l->end_crashes >= pc->max_attempts) {
			snprintf(why, sizeof why, " (consume died after its "
			    "items ended %u times)", l->end_crashes);
			lane_dead(s, l, w, how, w->status, why);
			return;
		}
	} else if (w->sent > w->rejected && started == 0) {
		if (++l->fruitless >= pc->max_attempts) {
			snprintf(why, sizeof why, " (consume died %u times "
			    "before it took an item)", l->fruitless);
			lane_dead(s, l, w, how, w->status, why);
			return;
		}
	} else
		log_warnx("stream %" PRIu64 ": pool %s: worker %u died between "
		    "items: %s", s->id, pc->name, w->slot, how);
	if (started > 0) {
		l->fruitless = 0;
		s->pool->init_failures = 0;	/* its plugin does work */
	}
	if (pc->on_crash == CRASH_REDELIVER) {
		/* What it finished stays done; the rest goes again. */
		uint64_t from = cur != 0 ? cur : last_done != 0 &&
		    lane_holds(l, last_done) ? last_done + 1 : 0;
		if (ndone <= w->sent - w->rejected && from != 0 &&
		    from >= l->resend_from) {
			l->acked += ndone;
			l->resend_from = from;
		} else if (ndone > 0)
			log_warnx("stream %" PRIu64 ": pool %s: worker %u left "
			    "a progress record that does not add up; its "
			    "items go again", s->id, pc->name, w->slot);
	}
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
	stream_check(s);
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

/* No worker will come for a waiting lane. */
void
stream_lane_fail(struct lane *l, const char *why)
{
	struct stream *s = l->stream;
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
	stream_check(s);
}

/* Every worker died before the client's end: report what was left. */
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
	/* Off the pool's queue before any worker goes back to the pool,
	 * or pool_idle would hand one to a lane of this very stream. */
	for (unsigned i = 0; i < s->nw; i++) {
		struct lane *l = &s->lanes[i];
		if (l->state == L_WAITING) {
			pool_lane_unwait(s->pool, l);
			l->state = L_DEAD;
		}
		lane_spool_close(l);
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
	log_info("stream %" PRIu64 ": pool %s: %" PRIu64 " items, %" PRIu64
	    " consumed, %" PRIu64 " rejected, %" PRIu64 " quarantined, %"
	    PRIu64 " unconsumed, %u crash%s, %zu error%s", s->id,
	    s->pool->pc->name, s->seq, s->consumed, s->rejected,
	    s->quarantined, s->unconsumed, s->crashes,
	    s->crashes == 1 ? "" : "es", json_array_size(s->errors),
	    json_array_size(s->errors) == 1 ? "" : "s");
	client_finish(s->client, final);
}

/* Shutdown: every open stream ends now, with the reason. */
void
stream_abort(struct stream *s, const char *why)
{
	if (s->state == S_QUEUED) {
		stream_refuse(s, why);
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
