/*
 * stream.c - one client stream, from lease to final line.  Item lines move
 * from the client's input to its workers in batches, by credit: when every
 * leased worker's window is full the client is not read any more, so a
 * fast producer is slowed down instead of buffered.  The master never
 * parses an item; workers report rejected lines and their results.
 */
#include <inttypes.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "consumersd.h"

#define BATCH_MAX	(256u << 10)	/* bytes in one ITEMS frame */

static uint64_t	stream_next_id = 1;

static void	stream_finish(struct stream *);
static void	stream_orphaned(struct stream *);

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
	s->client = c;
	s->pool = p;
	s->want = want;
	s->params = params != NULL ? json_incref(params) : json_null();
	s->errors = json_array();
	s->completion = json_null();
	s->state = S_QUEUED;
	TAILQ_INSERT_TAIL(&p->queue, s, qentry);
	s->timer = evtimer_new(cns_base, stream_timeout, s);
	tv.tv_sec = (time_t)p->pc->queue_timeout;
	tv.tv_usec = (suseconds_t)((p->pc->queue_timeout - (double)tv.tv_sec) *
	    1e6);
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
	json_decref(s->params);
	json_decref(s->results);
	json_decref(s->errors);
	json_decref(s->completion);
	free(s->w);
	free(s);
}

/* The stream's workers are leased: tell them, tell the client, go. */
void
stream_leased(struct stream *s, struct worker **ws, unsigned n)
{
	json_t *begin, *reply;

	evtimer_del(s->timer);
	s->state = S_RUNNING;
	s->w = ws;
	s->nw = s->nlive = n;
	s->results = json_array();
	begin = json_pack("{s:O}", "params", s->params);
	for (unsigned i = 0; i < n; i++) {
		struct worker *w = ws[i];
		w->stream = s;
		w->index = i;
		memset(&w->credit, 0, sizeof w->credit);
		w->sent = w->rejected = 0;
		w->nranges = 0;
		w->ranges_inexact = 0;
		w->returned = 0;
		json_array_append_new(s->results, json_null());
		worker_send_json(w, F_BEGIN, s->id, begin);
	}
	json_decref(begin);
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
		if (w != NULL && worker_output(w) != NULL &&
		    credit_room(&w->credit, c->window_bytes, c->window_items,
		    c->max_item_bytes, room))
			return w;
	}
	return NULL;
}

static void
stream_send_batch(struct stream *s, struct worker *w, struct evbuffer *in,
    const struct cut *cut)
{
	struct frame_hdr h = {
		.version = FRAME_VERSION, .type = F_ITEMS,
		.len = (uint32_t)(ITEMS_HDR_SIZE + cut->nbytes), .stream = s->id
	};
	struct evbuffer *out = worker_output(w);
	uint64_t first = s->seq + 1;
	uint32_t count = cut->n;

	evbuffer_add(out, &h, sizeof h);
	evbuffer_add(out, &first, sizeof first);
	evbuffer_add(out, &count, sizeof count);
	evbuffer_remove_buffer(in, out, cut->nbytes);
	credit_take(&w->credit, cut->n, cut->nbytes);
	worker_add_range(w, first, first + cut->n - 1);
	w->sent += cut->n;
	s->seq += cut->n;
}

static void
stream_end(struct stream *s)
{
	s->ended = 1;
	for (unsigned i = 0; i < s->nw; i++)
		if (s->w[i] != NULL)
			worker_send(s->w[i], F_END, s->id, NULL, 0);
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

	if (s->state != S_RUNNING || s->ended)
		return;
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
		if (s->nlive > 0)
			stream_end(s);
		else
			stream_orphaned(s);
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
	if (s->state != S_RUNNING || w->returned || w->rejected >= w->sent ||
	    w->nranges == 0 || seq < w->ranges[0].first ||
	    seq > w->ranges[w->nranges - 1].last)
		return -1;
	w->rejected++;
	stream_send_reject(s, seq, why);
	return 0;
}

static void
stream_error(struct stream *s, const char *stage, struct worker *w,
    const char *msg)
{
	json_t *e = json_pack("{s:s,s:i,s:I,s:s}", "stage", stage, "worker",
	    (int)w->slot, "pid", (json_int_t)w->pid, "error", msg);

	log_warnx("stream %" PRIu64 ": pool %s: worker %u: %s: %s", s->id,
	    s->pool->pc->name, w->slot, stage, msg);
	json_array_append_new(s->errors, e);
}

/* Every consume returned: run the completion handler, or finish. */
static void
stream_consumed(struct stream *s)
{
	struct worker *keep = NULL;
	json_t *req;

	if (s->pool->has_complete)
		for (unsigned i = 0; i < s->nw && keep == NULL; i++)
			keep = s->w[i];
	if (keep == NULL) {
		stream_finish(s);
		return;
	}
	s->state = S_COMPLETING;
	s->completer = keep;
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

int
stream_result(struct stream *s, struct worker *w, json_t *v)
{
	json_int_t consumed, rejected, skipped;
	json_t *err = json_object_get(v, "error");

	if (s->state != S_RUNNING || w->returned || !s->ended)
		return -1;
	consumed = json_integer_value(json_object_get(v, "consumed"));
	rejected = json_integer_value(json_object_get(v, "rejected"));
	skipped = json_integer_value(json_object_get(v, "skipped"));
	if (consumed < 0 || skipped < 0 || (uint64_t)rejected != w->rejected ||
	    (uint64_t)(consumed + rejected + skipped) != w->sent)
		return -1;
	w->returned = 1;
	s->nreturned++;
	s->consumed += (uint64_t)consumed;
	json_array_set(s->results, w->index, json_object_get(v, "result"));
	if (json_is_string(err))
		stream_error(s, "consume", w, json_string_value(err));
	if (skipped > 0) {
		char msg[160];
		snprintf(msg, sizeof msg, "consume returned before its items "
		    "ended; %" PRId64 " item%s not consumed", (int64_t)skipped,
		    skipped == 1 ? " was" : "s were");
		s->unconsumed += (uint64_t)skipped;
		stream_error(s, "consume", w, msg);
	}
	if (s->nreturned == s->nlive)
		stream_consumed(s);
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

/* A leased worker died: what it held is reported, the stream goes on. */
void
stream_worker_gone(struct stream *s, struct worker *w, const char *how)
{
	char msg[256];

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
	s->nlive--;
	if (w->returned) {
		s->nreturned--;
	} else {
		json_t *seqs = json_array(), *e;
		uint64_t lost = w->sent > w->rejected ?
		    w->sent - w->rejected : 0;
		for (size_t i = 0; i < w->nranges; i++)
			json_array_append_new(seqs, json_pack("[I,I]",
			    (json_int_t)w->ranges[i].first,
			    (json_int_t)w->ranges[i].last));
		snprintf(msg, sizeof msg, "worker died: %s; %" PRIu64 " item%s "
		    "it had taken %s lost", how, lost, lost == 1 ? "" : "s",
		    lost == 1 ? "is" : "are");
		stream_error(s, "consume", w, msg);
		e = json_array_get(s->errors, json_array_size(s->errors) - 1);
		json_object_set_new(e, "seqs", seqs);
		if (w->ranges_inexact)
			json_object_set_new(e, "seqs_inexact", json_true());
		s->unconsumed += lost;
	}
	if (s->nlive == 0) {
		if (s->ended) {
			stream_finish(s);
			return;
		}
		/* Nobody is left to take the rest: read it to the end and
		 * report it, so no item goes unaccounted. */
		s->orphan_from = s->seq + 1;
		stream_input(s);
		return;
	}
	if (s->ended && s->nreturned == s->nlive)
		stream_consumed(s);
	else
		stream_input(s);
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
	final = json_pack("{s:b,s:I,s:I,s:I,s:I,s:I,s:O,s:O,s:O}",
	    "ok", json_array_size(s->errors) == 0,
	    "stream", (json_int_t)s->id,
	    "items", (json_int_t)s->seq,
	    "consumed", (json_int_t)s->consumed,
	    "rejected", (json_int_t)s->rejected,
	    "unconsumed", (json_int_t)s->unconsumed,
	    "results", s->results,
	    "completion", s->completion,
	    "errors", s->errors);
	if (final == NULL)
		fatalx("%s: json_pack", __func__);
	log_info("stream %" PRIu64 ": pool %s: %" PRIu64 " items, %" PRIu64
	    " consumed, %" PRIu64 " rejected, %" PRIu64 " unconsumed, %zu "
	    "error%s", s->id, s->pool->pc->name, s->seq, s->consumed,
	    s->rejected, s->unconsumed, json_array_size(s->errors),
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
		s->unconsumed = s->seq - s->consumed - s->rejected;
	stream_finish(s);
}
