/*
 * feed.c - the master's side of one item: bytes from the stream's source
 * are cut into lines, each line gets its sequence number, a lane is picked
 * by credit, the batch is spooled (for a replay) and leaves as an ITEMS
 * frame; acks give the credit back; after a crash a lane's spool is sent
 * again to its new worker.  When every window is full the source is not
 * read any more, so a fast producer is slowed down instead of buffered.
 * The master never parses an item: workers report rejected lines.
 *
 * Mechanics only: what a crash means is crash.c's, and what to do about a
 * lane or a stream that ends is stream.c's; feed_pump tells its caller.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>

#include "consumersd.h"

#define BATCH_MAX	(256u << 10)	/* bytes in one ITEMS frame */
#define RANGES_MAX	65536	/* seq ranges kept per lane */
#define SPOOL_STAGE_MAX	(64u << 10)	/* bytes staged before a write */

/* Tell the source a line is rejected. */
void
feed_reject(struct stream *s, uint64_t seq, const char *why)
{
	json_t *v = json_pack("{s:{s:I,s:s}}", "rejected", "seq",
	    (json_int_t)seq, "error", why);

	s->rejected++;
	s->src.ops->event(s->src.arg, v);
	json_decref(v);
}

/* The next leased worker, round robin, whose window has room. */
static struct worker *
feed_pick(struct stream *s, struct flow_room *room, unsigned *tried)
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
int
feed_holds(const struct lane *l, uint64_t seq)
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

/*
 * A lane's items cannot be spooled: the source hears it at once, as a
 * warning line, and the final line's errors say it again.  Once per lane.
 */
static void
feed_spool_warn(struct stream *s, struct lane *l, const char *what, int err)
{
	const struct pool_conf *pc = s->pool->pc;
	const char *dir = cns_conf->spool_dir;
	char msg[768];
	json_t *e, *v;

	if (l->spool_warned)
		return;
	l->spool_warned = 1;
	if (s->w[l->index] == NULL && pc->spool_full == SPOOL_FULL_CONTINUE)
		/* its worker died (lane_crashed): the lane is lost */
		snprintf(msg, sizeof msg, "%s %s: %s (make room there, or "
		    "set spool_dir to a writable directory with more)", what,
		    dir, strerror(err));
	else if (pc->spool_full == SPOOL_FULL_CONTINUE)
		snprintf(msg, sizeof msg, "%s %s: %s; the lane's items go on "
		    "without a copy (spool_full \"continue\"), so if its "
		    "worker dies the items it took are lost (make room there, "
		    "or set spool_dir to a writable directory with more)",
		    what, dir, strerror(err));
	else
		snprintf(msg, sizeof msg, "%s %s: %s; reading the stream is "
		    "paused until the spool can be written (spool_full "
		    "\"pause\"), for at most spool_wait (%g s) (make room "
		    "there, or set spool_dir to a writable directory with "
		    "more)", what, dir, strerror(err), pc->spool_wait);
	utf8_clean(msg);
	log_warnx("stream %" PRIu64 ": pool %s: lane %u: %s", s->id, pc->name,
	    l->index + 1, msg);
	e = json_pack("{s:s,s:i,s:s}", "stage", "spool", "lane",
	    (int)l->index + 1, "error", msg);
	v = json_pack("{s:O}", "warning", e);
	s->src.ops->event(s->src.arg, v);
	json_decref(v);
	json_array_append_new(s->errors, e);
}

/*
 * Write the lane's staged records to its file; -1 with errno if that
 * failed.  Then, as crash_spool_full says, the lane goes on without a
 * copy (spool_broken) or waits for room (spool_paused: the pump sends
 * nothing new, and stream.c retries the write).
 */
int
feed_spool_flush(struct stream *s, struct lane *l)
{
	const struct pool_conf *pc = s->pool->pc;
	const char *what = NULL;
	int err;

	if (l->spool_stage == NULL || l->spool_broken)
		return l->spool_broken ? -1 : 0;
	/* The file is made on the first write: a stream whose lanes stay
	 * within the stage (most short ones) costs no file at all. */
	if (l->spool == -1 &&
	    (l->spool = spool_open(cns_conf->spool_dir)) == -1)
		what = "cannot create a spool file in";
	else if (spool_flush(l->spool, l->spool_stage) == -1)
		what = "cannot write the spool file in";
	if (what == NULL) {
		l->spool_paused = 0;
		return 0;
	}
	err = errno;
	feed_spool_warn(s, l, what, err);
	if (crash_spool_full(pc->spool_full, 0, pc->spool_wait) ==
	    SPOOL_UNPROTECTED)
		l->spool_broken = 1;
	else
		l->spool_paused = 1;
	errno = err;
	return -1;
}

/* Whether a lane waits for room in the spool: nothing new goes out. */
int
feed_spool_paused(const struct stream *s)
{
	for (unsigned i = 0; i < s->nw; i++)
		if (s->lanes[i].spool_paused)
			return 1;
	return 0;
}

/* Try the paused lanes' writes again; -1 with why if one still fails. */
int
feed_spool_retry(struct stream *s, char *why, size_t whylen)
{
	int rc = 0;

	for (unsigned i = 0; i < s->nw; i++) {
		struct lane *l = &s->lanes[i];
		if (l->spool_paused && feed_spool_flush(s, l) == -1) {
			snprintf(why, whylen, "lane %u: %s", i + 1,
			    strerror(errno));
			rc = -1;
		}
	}
	return rc;
}

void
feed_spool_close(struct lane *l)
{
	l->spool_paused = 0;
	if (l->spool != -1) {
		close(l->spool);
		l->spool = -1;
	}
	if (l->spool_stage != NULL) {
		evbuffer_free(l->spool_stage);
		l->spool_stage = NULL;
	}
}

/* The line of `seq` from the lane's spool (malloc'ed), or NULL. */
char *
feed_spool_line(struct stream *s, struct lane *l, uint64_t seq)
{
	if (l->spool_stage == NULL || feed_spool_flush(s, l) == -1)
		return NULL;
	return spool_find(l->spool, l->spool_len, seq);
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
	if (!crash_spools(s->pool->pc->on_crash) || l->spool_broken)
		return;
	if (l->spool_stage == NULL && (l->spool_stage = evbuffer_new()) ==
	    NULL)
		fatalx("%s: evbuffer_new", __func__);
	spool_stage(l->spool_stage, first, count, in, nbytes);
	l->spool_len += sizeof(struct spool_rec) + nbytes;
	if (evbuffer_get_length(l->spool_stage) >= SPOOL_STAGE_MAX)
		feed_spool_flush(s, l);
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
feed_batch(struct stream *s, struct worker *w, struct evbuffer *in,
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
	rate_add(&s->rate, (int64_t)cns_now(), cut->n);	/* min_item_rate */
	rate_add(&s->pool->rate, (int64_t)cns_now(), cut->n);	/* status */
}

static int
feed_quarantined(const struct stream *s, uint64_t seq)
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
 * until it has caught up.  Returns -1 with why if the spool could not be
 * read back: the lane is lost.
 */
static int
lane_resend(struct stream *s, struct lane *l, char *why, size_t whylen)
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
			    !feed_quarantined(s, seq);
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

unreadable:
	snprintf(why, whylen, "the spool file could not be read back: %s",
	    strerror(errno));
	return -1;
}

/* END to every lane whose worker has had all of its lines. */
static void
feed_end_lanes(struct stream *s)
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

/* Resends first; the first lane lost on the way, or NULL. */
static struct lane *
feed_resend(struct stream *s, char *why, size_t whylen)
{
	for (unsigned i = 0; i < s->nw; i++) {
		struct lane *l = &s->lanes[i];
		/* A paused lane's spool is not all written yet: its
		 * resend waits (stream.c retries the write). */
		if (l->state == L_LIVE && l->resend_off < l->resend_end &&
		    !l->spool_paused && lane_resend(s, l, why, whylen) == -1)
			return l;
	}
	return NULL;
}

/*
 * Move what the source holds to workers with room: resends first, then
 * live lines, then END once the source ended.  Returns FEED_LANE_LOST
 * with *lost and why when a lane's spool could not be read back (the
 * caller ends that lane and calls again), FEED_ORPHANED when the input
 * ended with no lane left to take it, else FEED_OK.
 */
enum feed_result
feed_pump(struct stream *s, struct lane **lost, char *why, size_t whylen)
{
	const struct source *src = &s->src;
	struct evbuffer *in = src->ops->input(src->arg);
	const size_t max_item = cns_conf->max_item_bytes;

	if ((*lost = feed_resend(s, why, whylen)) != NULL)
		return FEED_LANE_LOST;
	if (s->ended) {
		feed_end_lanes(s);
		return FEED_OK;
	}
	for (;;) {
		struct flow_room room;
		struct worker *w;
		struct cut cut;
		unsigned tried = 0;
		size_t share;

		if (s->spool_cut) {
			/* spool_wait ended the stream: the rest is not read. */
			evbuffer_drain(in, evbuffer_get_length(in));
			break;
		}
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
		if (feed_spool_paused(s)) {
			/* A lane's spool is full: no line goes to a worker
			 * without its copy; stream.c retries the write. */
			src->ops->reading(src->arg, 0);
			return FEED_OK;
		}
		if (src->ops->full(src->arg)) {
			src->ops->reading(src->arg, 0);
			return FEED_OK;
		}
		if (s->nlive == 0 && s->nwaiting > 0) {
			/* Every lane waits for a new worker. */
			src->ops->reading(src->arg, 0);
			return FEED_OK;
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
				if ((w = feed_pick(s, &room, &tried)) == NULL)
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
				src->ops->reading(src->arg, 0);
				return FEED_OK;
			}
		}
		switch (cut.kind) {
		case CUT_BATCH:
			if (w != NULL)
				feed_batch(s, w, in, &cut);
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
			char msg[160];
			feed_reject(s, ++s->seq, flow_too_long(&cut, max_item,
			    msg, sizeof msg));
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
		/* The source ended with an unterminated last line. */
		feed_reject(s, ++s->seq, FLOW_TRUNCATED);
		evbuffer_drain(in, evbuffer_get_length(in));
	}
	if (s->eof && evbuffer_get_length(in) == 0) {
		s->ended = 1;
		if (s->nlive == 0 && s->nwaiting == 0)
			return FEED_ORPHANED;
		feed_end_lanes(s);
	} else
		src->ops->reading(src->arg, !feed_spool_paused(s));
	return FEED_OK;
}
