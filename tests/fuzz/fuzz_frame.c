/*
 * fuzz_frame.c - libFuzzer harness for the master <-> worker framing.
 *
 * Worker to master: the input is what a worker (so, plugin code) wrote to
 * its socket.  frame_pull() takes frames off an evbuffer until it wants
 * more bytes or refuses a header, and each frame goes to the master's own
 * dispatch_frame() (dispatch.c), which checks and takes its payload apart.
 * What dispatch_frame hands on (to the stream, the pool, or
 * worker_protocol to kill the worker) is received by the fakes below,
 * which check that what they get is what the rooms behind them may rely
 * on: a JSON object, text that is valid in JSON, acks within the window.
 *
 * Master to worker: the same bytes read as the worker's child_read() reads
 * them, checked with frame_check(h, 0), ITEMS and JSON payloads taken
 * apart as child.c does.
 */
#include <stdint.h>
#include <string.h>

#include <event2/buffer.h>
#include <jansson.h>

#include "consumersd.h"
#include "fuzz.h"

int	LLVMFuzzerTestOneInput(const uint8_t *, size_t);

#define STREAM_ID	7	/* the seeds' (make_frame_seeds.py) */

static int	killed;		/* worker_protocol was called */

/* ---- what dispatch_frame calls, received here ---- */

void
worker_protocol(struct worker *w, const char *why)
{
	(void)w;
	FUZZ_CHECK(why != NULL && why[0] != '\0');
	killed = 1;
}

/* Text from a worker reaches clients inside JSON: it must be valid. */
static void
check_text(const char *msg)
{
	json_t *s = json_string(msg);

	FUZZ_CHECK(s != NULL);
	json_decref(s);
}

void
pool_idle(struct pool *p, struct worker *w)
{
	(void)p;
	FUZZ_CHECK(w->state == W_STARTING);
	w->state = W_IDLE;
}

void
pool_start_failed(struct pool *p, char *msg)
{
	(void)p;
	check_text(msg);
	free(msg);
}

int
stream_ack(struct stream *s, struct worker *w, unsigned items, size_t bytes)
{
	struct credit old = w->credit;
	int bad = items > old.items || bytes > old.bytes;
	int r = credit_ack(&w->credit, items, bytes);

	(void)s;
	FUZZ_CHECK(r == (bad ? -1 : 0));
	if (bad)
		FUZZ_CHECK(w->credit.items == old.items &&
		    w->credit.bytes == old.bytes);
	return r;
}

int
stream_reject(struct stream *s, struct worker *w, uint64_t seq,
    const char *why)
{
	(void)s;
	(void)w;
	(void)seq;
	check_text(why);
	return 0;
}

int
stream_result(struct stream *s, struct worker *w, json_t *v)
{
	(void)s;
	(void)w;
	FUZZ_CHECK(json_is_object(v));
	return 0;
}

void
stream_completion(struct stream *s, struct worker *w, json_t *v)
{
	(void)s;
	(void)w;
	FUZZ_CHECK(json_is_object(v));
}

/* The worker's output: there is none here. */
void
tap_sync(pid_t pid)
{
	(void)pid;
}

/* Not reached from dispatch_frame. */
void
stream_worker_gone(struct stream *s, struct worker *w, const char *how)
{
	(void)s;
	(void)w;
	(void)how;
	abort();
}

void
pool_worker_gone(struct pool *p, struct worker *w, enum start_verdict v)
{
	(void)p;
	(void)w;
	(void)v;
	abort();
}

void
worker_on(int (*frame)(struct worker *, const struct frame_hdr *,
    struct evbuffer *), void (*gone)(struct worker *, const char *))
{
	(void)frame;
	(void)gone;
}

/* ---- the harness ---- */

static void
worker_to_master(const uint8_t *data, size_t size, size_t piece)
{
	struct evbuffer *in = evbuffer_new();
	struct pool_conf pc = { .name = "fuzz" };
	struct pool pool = { .pc = &pc };
	struct stream stream = { .id = STREAM_ID, .state = S_RUNNING };
	/* A starting worker, leased at once: READY and stream frames both
	 * get through dispatch_frame's first check.  A window with
	 * something in flight, for the acks to return. */
	struct worker w = { .pid = 1, .pool = &pool, .slot = 1,
	    .state = W_STARTING, .stream = &stream,
	    .credit = { 1u << 20, 8192 } };
	struct frame_hdr h;
	char why[128];
	size_t before;
	int r;

	if (in == NULL)
		abort();
	killed = 0;
	fuzz_add_pieces(in, data, size, piece);
	for (;;) {
		before = evbuffer_get_length(in);
		memset(why, 0, sizeof why);
		r = frame_pull(in, &h, why, sizeof why);
		if (r == 0) {
			/* Nothing taken while it waits for more. */
			FUZZ_CHECK(evbuffer_get_length(in) == before);
			break;
		}
		if (r == -1) {
			FUZZ_CHECK(why[0] != '\0');
			FUZZ_CHECK(evbuffer_get_length(in) == before);
			break;
		}
		FUZZ_CHECK(r == 1);
		/* Only a header that passed the checks, with its payload. */
		FUZZ_CHECK(frame_check(&h, 1, why, sizeof why) == 0);
		FUZZ_CHECK(h.type >= F_READY && h.type <= F_WORKER_LAST);
		FUZZ_CHECK(before >= FRAME_HDR_SIZE + (size_t)h.len);
		FUZZ_CHECK(evbuffer_get_length(in) == before - FRAME_HDR_SIZE);
		r = dispatch_frame(&w, &h, in);
		/* -1 exactly when the worker was killed for the frame. */
		FUZZ_CHECK((r == -1) == killed);
		if (r == -1)
			break;
		if (w.state == W_IDLE)
			w.state = W_LEASED;	/* leased to the stream */
		/* The payload is used up: the next frame starts here. */
		FUZZ_CHECK(evbuffer_get_length(in) ==
		    before - FRAME_HDR_SIZE - h.len);
	}
	evbuffer_free(in);
}

static void
master_to_worker(const uint8_t *data, size_t size)
{
	struct frame_hdr h;
	char why[128];
	uint32_t count;
	json_t *v;
	size_t at = 0;

	while (size - at >= FRAME_HDR_SIZE) {
		const uint8_t *p;

		memcpy(&h, data + at, sizeof h);
		memset(why, 0, sizeof why);
		if (frame_check(&h, 0, why, sizeof why) == -1) {
			FUZZ_CHECK(why[0] != '\0');
			return;
		}
		FUZZ_CHECK(h.type >= F_BEGIN && h.type <= F_MASTER_LAST);
		FUZZ_CHECK(h.len <= FRAME_MAX);
		if (size - at - FRAME_HDR_SIZE < h.len)
			return;		/* a truncated frame */
		p = data + at + FRAME_HDR_SIZE;
		switch (h.type) {
		case F_BEGIN:
		case F_COMPLETE:
			v = json_loadb((const char *)p, h.len, 0, NULL);
			json_decref(v);
			break;
		case F_ITEMS:
			FUZZ_CHECK(h.len >= ITEMS_HDR_SIZE);
			memcpy(&count, p + 8, sizeof count);
			/* child.c's batch check, then its line walk. */
			if (count == 0 || h.len == ITEMS_HDR_SIZE ||
			    p[h.len - 1] != '\n')
				return;
			for (size_t i = ITEMS_HDR_SIZE; i < h.len; ) {
				const uint8_t *nl = memchr(p + i, '\n',
				    h.len - i);
				FUZZ_CHECK(nl != NULL);
				v = json_loadb((const char *)p + i,
				    (size_t)(nl - (p + i)), JSON_DECODE_ANY,
				    NULL);
				json_decref(v);
				i = (size_t)(nl - p) + 1;
			}
			break;
		case F_END:
			FUZZ_CHECK(h.len == 0);
			break;
		}
		at += FRAME_HDR_SIZE + h.len;
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* Read sizes from the last byte, so the frames stay where seeds
	 * put them. */
	size_t piece = size > 0 ? (size_t)data[size - 1] * 5 : 0;

	worker_to_master(data, size, piece);
	master_to_worker(data, size);
	return 0;
}
