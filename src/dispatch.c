/*
 * dispatch.c - what the master hears from its workers, routed to the room
 * it concerns: READY and INITFAIL to the pool, ACK, REJECT, RESULT and
 * COMPLETION to the stream the worker is leased to, and a worker's end to
 * its stream (the crash policy, through stream.c and crash.c) and then to
 * its pool (a respawn).  worker.c calls in here only through the hooks
 * that dispatch_init sets: it knows processes, not what they say.
 * Payloads are checked here before use; a frame that does not fit what
 * the worker holds kills the worker (worker_protocol), never the master.
 */
#include <inttypes.h>
#include <stdlib.h>

#include <event2/buffer.h>

#include "consumersd.h"

static json_t *
dispatch_json(struct worker *w, struct evbuffer *in, size_t len)
{
	json_t *v = json_loadb((const char *)evbuffer_pullup(in,
	    (ev_ssize_t)len), len, JSON_DECODE_ANY, NULL);

	evbuffer_drain(in, len);
	if (v == NULL || !json_is_object(v)) {
		json_decref(v);
		worker_protocol(w, "payload is not a JSON object");
		return NULL;
	}
	return v;
}

/*
 * One frame of a worker, whose header frame_pull checked (type, and a
 * length that fits the type); returns -1 when the worker was dropped.
 */
int
dispatch_frame(struct worker *w, const struct frame_hdr *h,
    struct evbuffer *in)
{
	struct stream *s = w->stream;
	uint32_t ack[2];
	uint64_t seq;
	json_t *v;
	int r;

	if (h->type != F_READY && h->type != F_INITFAIL &&
	    (s == NULL || h->stream != s->id)) {
		if (w->state == W_EXITING) {
			/* Stopped inside a stream that ended without it:
			 * what it still says is moot. */
			evbuffer_drain(in, h->len);
			return 0;
		}
		worker_protocol(w, "frame for a stream it does not hold");
		return -1;
	}
	/* The worker's output before its verdict, in the log. */
	if (h->type == F_RESULT || h->type == F_COMPLETION ||
	    h->type == F_INITFAIL)
		tap_sync(w->pid);
	switch (h->type) {
	case F_READY:
		if (w->state == W_EXITING) {
			/* Stopped while it started (its pool retired). */
			evbuffer_drain(in, h->len);
			break;
		}
		if (w->state != W_STARTING) {
			worker_protocol(w, "READY twice");
			return -1;
		}
		if ((v = dispatch_json(w, in, h->len)) == NULL)
			return -1;
		w->pool->has_complete = json_is_true(json_object_get(v,
		    "complete"));
		json_decref(v);
		w->ready_at = cns_now();
		log_debug("pool %s: worker %u (pid %ld) ready",
		    w->pool->pc->name, w->slot, (long)w->pid);
		if (w->startup) {
			w->startup = 0;
			cns_changed();	/* the first start may wait for it */
		}
		pool_idle(w->pool, w);
		break;
	case F_INITFAIL: {
		char *msg = malloc((size_t)h->len + 1);
		if (msg == NULL)
			fatal("%s: malloc", __func__);
		evbuffer_remove(in, msg, h->len);
		msg[h->len] = '\0';
		utf8_clean(msg);
		log_warnx("pool %s: worker %u (pid %ld) failed to start: %s",
		    w->pool->pc->name, w->slot, (long)w->pid, msg);
		pool_start_failed(w->pool, msg);
		w->init_failed = 1;
		break;
	}
	case F_ACK:
		evbuffer_remove(in, ack, sizeof ack);
		if (stream_ack(s, w, ack[0], ack[1]) == -1) {
			worker_protocol(w, "acknowledged more than it was sent");
			return -1;
		}
		break;
	case F_REJECT: {
		size_t tlen = h->len - 8;
		char *why = malloc(tlen + 1);
		if (why == NULL)
			fatal("%s: malloc", __func__);
		evbuffer_remove(in, &seq, 8);
		evbuffer_remove(in, why, tlen);
		why[tlen] = '\0';
		utf8_clean(why);
		r = stream_reject(s, w, seq, why);
		free(why);
		if (r == -1) {
			worker_protocol(w, "a rejection for an item it does "
			    "not hold");
			return -1;
		}
		break;
	}
	case F_RESULT:
		if ((v = dispatch_json(w, in, h->len)) == NULL)
			return -1;
		r = stream_result(s, w, v);
		json_decref(v);
		if (r == -1) {
			worker_protocol(w, "a result that does not add up");
			return -1;
		}
		break;
	case F_COMPLETION:
		if ((v = dispatch_json(w, in, h->len)) == NULL)
			return -1;
		stream_completion(s, w, v);
		json_decref(v);
		break;
	}
	return 0;
}

/* A worker is gone: its stream first (its lane's verdict), then its pool. */
void
dispatch_gone(struct worker *w, const char *how)
{
	struct start_facts f = {
		.init_failed = w->init_failed,
		.ready = w->ready_at > 0,
		.up = w->ready_at > 0 ? cns_now() - w->ready_at : 0,
		.start_seconds = w->pool->pc->start_seconds,
		.streams_served = w->streams_served,
		.in_stream = w->stream != NULL,
		.exiting = w->state == W_EXITING,
	};

	if (w->stream != NULL)
		stream_worker_gone(w->stream, w, how);
	pool_worker_gone(w->pool, w, crash_start(&f));
}

void
dispatch_init(void)
{
	worker_on(dispatch_frame, dispatch_gone);
}
