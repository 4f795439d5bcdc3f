/*
 * frame.c - the master's side of master <-> worker framing: header checks,
 * appending frames to an output evbuffer and pulling whole frames off an
 * input evbuffer.  The worker's blocking side lives in child.c.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "consumersd.h"

/* Check a header before anything reads its payload. */
int
frame_check(const struct frame_hdr *h, int from_worker, char *why,
    size_t whylen)
{
	int lo = from_worker ? F_READY : F_BEGIN;
	int hi = from_worker ? F_WORKER_LAST : F_MASTER_LAST;

	if (h->version != FRAME_VERSION) {
		snprintf(why, whylen, "frame version %u, expected %u",
		    h->version, FRAME_VERSION);
		return -1;
	}
	if (h->type < lo || h->type > hi) {
		snprintf(why, whylen, "unexpected frame type %u", h->type);
		return -1;
	}
	if (h->len > FRAME_MAX) {
		snprintf(why, whylen, "frame of %u bytes exceeds the %u limit",
		    h->len, FRAME_MAX);
		return -1;
	}
	switch (h->type) {
	case F_ITEMS:
		if (h->len < ITEMS_HDR_SIZE)
			goto short_frame;
		break;
	case F_ACK:
		if (h->len != ACK_SIZE)
			goto short_frame;
		break;
	case F_REJECT:
		if (h->len < REJECT_MIN)
			goto short_frame;
		break;
	case F_END:
		if (h->len != 0)
			goto short_frame;
		break;
	}
	return 0;
short_frame:
	snprintf(why, whylen, "frame type %u has a bad length %u", h->type,
	    h->len);
	return -1;
}

void
frame_put(struct evbuffer *out, uint16_t type, uint64_t stream,
    const void *payload, size_t len)
{
	struct frame_hdr h = {
		.version = FRAME_VERSION, .type = type,
		.len = (uint32_t)len, .stream = stream
	};

	evbuffer_add(out, &h, sizeof h);
	if (len > 0)
		evbuffer_add(out, payload, len);
}

void
frame_put_json(struct evbuffer *out, uint16_t type, uint64_t stream,
    json_t *v)
{
	char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);

	if (s == NULL)
		fatalx("%s: json_dumps", __func__);
	frame_put(out, type, stream, s, strlen(s));
	free(s);
}

/*
 * Take the next frame's header off `in` when the whole frame has arrived:
 * returns 1 with *h filled and the payload left at the front of `in`,
 * 0 when more bytes are needed, -1 (with why) on a malformed header.
 */
int
frame_pull(struct evbuffer *in, struct frame_hdr *h, char *why, size_t whylen)
{
	if (evbuffer_get_length(in) < FRAME_HDR_SIZE)
		return 0;
	if (evbuffer_copyout(in, h, sizeof *h) != (ev_ssize_t)sizeof *h)
		return 0;
	if (frame_check(h, 1, why, whylen) == -1)
		return -1;
	if (evbuffer_get_length(in) < FRAME_HDR_SIZE + (size_t)h->len)
		return 0;
	evbuffer_drain(in, FRAME_HDR_SIZE);
	return 1;
}
