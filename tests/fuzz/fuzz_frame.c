/*
 * fuzz_frame.c - libFuzzer harness for the master <-> worker framing.
 *
 * Worker to master: the input is what a worker (so, plugin code) wrote to
 * its socket.  frame_pull() takes frames off an evbuffer until it wants
 * more bytes or refuses a header, and each frame's payload is taken apart
 * the way worker_dispatch() in worker.c does.  That function is static
 * and needs live workers and streams, so its payload steps are repeated
 * here from the same primitives (evbuffer_remove, json_loadb, credit_ack,
 * utf8_clean); the stream-level checks (stream_reject, stream_result) are
 * not reached.
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

/* worker_json(): the payload must be a JSON object. */
static json_t *
payload_json(struct evbuffer *in, size_t len)
{
	json_t *v = json_loadb((const char *)evbuffer_pullup(in,
	    (ev_ssize_t)len), len, JSON_DECODE_ANY, NULL);

	evbuffer_drain(in, len);
	if (v != NULL && !json_is_object(v)) {
		json_decref(v);
		v = NULL;
	}
	return v;
}

/*
 * Text from a worker (INITFAIL, REJECT): copied, cut at its first NUL and
 * cleaned, then sent to clients inside JSON, so jansson must accept it as
 * client_send_json() expects.  (corpus/frame/regress-* are inputs that
 * once got invalid UTF-8 through utf8_clean().)
 */
static void
payload_text(struct evbuffer *in, size_t len)
{
	char *msg = malloc(len + 1);

	if (msg == NULL)
		abort();
	FUZZ_CHECK(evbuffer_remove(in, msg, len) == (int)len);
	msg[len] = '\0';
	utf8_clean(msg);
	FUZZ_CHECK(strlen(msg) <= len);
	{
		/* Cleaned text is always a JSON string. */
		json_t *s = json_string(msg);
		FUZZ_CHECK(s != NULL);
		json_decref(s);
	}
	free(msg);
}

static void
worker_to_master(const uint8_t *data, size_t size, size_t piece)
{
	struct evbuffer *in = evbuffer_new();
	/* A window with something in flight, for the acks to return. */
	struct credit cr = { 1u << 20, 8192 };
	struct frame_hdr h;
	char why[128];
	size_t before;
	uint32_t ack[2];
	uint64_t seq;
	json_t *v;
	int r;

	if (in == NULL)
		abort();
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
		switch (h.type) {
		case F_READY:
		case F_RESULT:
		case F_COMPLETION:
			if ((v = payload_json(in, h.len)) == NULL)
				goto out;	/* the worker is killed */
			/* The fields the master reads, as it reads them. */
			(void)json_is_true(json_object_get(v, "complete"));
			(void)json_integer_value(json_object_get(v,
			    "consumed"));
			(void)json_integer_value(json_object_get(v,
			    "rejected"));
			(void)json_integer_value(json_object_get(v, "skipped"));
			(void)json_string_value(json_object_get(v, "error"));
			json_decref(v);
			break;
		case F_INITFAIL:
			payload_text(in, h.len);
			break;
		case F_ACK:
			FUZZ_CHECK(h.len == sizeof ack);
			FUZZ_CHECK(evbuffer_remove(in, ack, sizeof ack) ==
			    (int)sizeof ack);
			{
				struct credit old = cr;
				int bad = ack[0] > old.items ||
				    ack[1] > old.bytes;
				FUZZ_CHECK(credit_ack(&cr, ack[0], ack[1]) ==
				    (bad ? -1 : 0));
				if (bad)
					FUZZ_CHECK(cr.items == old.items &&
					    cr.bytes == old.bytes);
				else
					FUZZ_CHECK(cr.items == old.items -
					    ack[0] && cr.bytes == old.bytes -
					    ack[1]);
			}
			break;
		case F_REJECT:
			FUZZ_CHECK(h.len >= sizeof seq);
			FUZZ_CHECK(evbuffer_remove(in, &seq, sizeof seq) ==
			    (int)sizeof seq);
			payload_text(in, h.len - sizeof seq);
			break;
		default:
			FUZZ_CHECK(!"frame_check let an unknown type through");
		}
		/* The payload is used up: the next frame starts here. */
		FUZZ_CHECK(evbuffer_get_length(in) ==
		    before - FRAME_HDR_SIZE - h.len);
	}
out:
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
