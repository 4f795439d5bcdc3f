/*
 * fuzz_header.c - libFuzzer harness for what the master does with a
 * client's bytes before any worker sees them: header_parse() on the
 * header line, and flow_cut() cutting the item lines that follow into
 * batches, driven the way stream_input() drives it.
 *
 * The first input bytes also choose the window (max_item, window size and
 * items, workers alive, read sizes), so the fuzzer explores small windows
 * where every cut kind happens, on the same bytes it feeds the parser.
 */
#include <limits.h>
#include <stdint.h>
#include <string.h>

#include <event2/buffer.h>
#include <jansson.h>

#include "consumersd.h"
#include "fuzz.h"

#define BATCH_MAX	(256u << 10)	/* as in stream.c */

int	LLVMFuzzerTestOneInput(const uint8_t *, size_t);

static void
check_header(const uint8_t *data, size_t size)
{
	char why[512];
	const char *op;
	json_t *h, *s;

	memset(why, 0, sizeof why);
	h = header_parse((const char *)data, size, why, sizeof why);
	if (h == NULL) {
		/*
		 * client_refuse() cleans `why` and sends it inside JSON: it
		 * must say something, and jansson must take it then, or the
		 * refusal turns into "internal error".
		 */
		FUZZ_CHECK(why[0] != '\0');
		FUZZ_CHECK(memchr(why, '\0', sizeof why) != NULL);
		utf8_clean(why);
		s = json_string(why);
		FUZZ_CHECK(s != NULL);
		json_decref(s);
		return;
	}
	/* What client.c relies on without looking again. */
	FUZZ_CHECK(size <= CNS_HEADER_MAX);
	FUZZ_CHECK(json_is_object(h));
	FUZZ_CHECK(json_is_string(json_object_get(h, "op")));
	op = json_string_value(json_object_get(h, "op"));
	if (strcmp(op, "submit") == 0) {
		FUZZ_CHECK(json_is_string(json_object_get(h, "pool")));
		s = json_object_get(h, "workers");
		FUZZ_CHECK(s == NULL || (json_is_integer(s) &&
		    json_integer_value(s) >= 1));
	} else if (strcmp(op, "status") == 0) {
		s = json_object_get(h, "pool");
		FUZZ_CHECK(s == NULL || json_is_string(s));
		FUZZ_CHECK(json_object_size(h) <= 2);
	} else if (strcmp(op, "result") == 0) {
		s = json_object_get(h, "stream");
		FUZZ_CHECK(json_is_integer(s) && json_integer_value(s) >= 1);
		FUZZ_CHECK(json_object_size(h) == 2);
	} else {
		FUZZ_CHECK(strcmp(op, "pools") == 0 ||
		    strcmp(op, "reload") == 0 ||
		    strcmp(op, "metrics") == 0 ||
		    strcmp(op, "hello") == 0);
		FUZZ_CHECK(json_object_size(h) == 1);
	}
	json_decref(h);
}

static size_t
count_nl(const uint8_t *p, size_t n)
{
	size_t k = 0;

	for (size_t i = 0; i < n; i++)
		k += p[i] == '\n';
	return k;
}

/* Check one cut of the bytes `p` (all that is buffered, `len` long). */
static void
check_cut(const uint8_t *p, size_t len, const struct flow_room *room,
    const struct cut *c, int empty_window)
{
	const uint8_t *nl = memchr(p, '\n', len);
	size_t first = nl != NULL ? (size_t)(nl - p) : len;

	FUZZ_CHECK(c->nbytes <= len);
	switch (c->kind) {
	case CUT_BATCH:
		/* A batch that moves nothing would spin the caller. */
		FUZZ_CHECK(c->n >= 1 && c->n <= room->items);
		FUZZ_CHECK(c->nbytes >= 2 && p[c->nbytes - 1] == '\n');
		FUZZ_CHECK(count_nl(p, c->nbytes) == c->n);
		FUZZ_CHECK(first >= 1 && first <= room->max_item);
		FUZZ_CHECK(first + 1 <= room->bytes);
		FUZZ_CHECK(c->n == 1 || c->nbytes <= room->soft_bytes);
		/* Every line in it is an item: not empty, not too long. */
		for (size_t at = 0; at < c->nbytes; ) {
			size_t l = (size_t)((const uint8_t *)memchr(p + at,
			    '\n', c->nbytes - at) - (p + at));
			FUZZ_CHECK(l >= 1 && l <= room->max_item);
			at += l + 1;
		}
		/* And it is as large as the room allows. */
		if (c->n < room->items && c->nbytes < len) {
			const uint8_t *q = p + c->nbytes;
			const uint8_t *e = memchr(q, '\n', len - c->nbytes);
			if (e != NULL) {
				size_t l = (size_t)(e - q);
				FUZZ_CHECK(l == 0 || l > room->max_item ||
				    c->nbytes + l + 1 > room->soft_bytes);
			}
		}
		break;
	case CUT_EMPTY:
		FUZZ_CHECK(c->n == 0 && c->nbytes == 1 && p[0] == '\n');
		break;
	case CUT_LONG:
		FUZZ_CHECK(c->n == 0 && first > room->max_item);
		if (c->newline)
			FUZZ_CHECK(c->nbytes == first + 1);
		else
			FUZZ_CHECK(nl == NULL && c->nbytes == len);
		break;
	case CUT_NEED:
		FUZZ_CHECK(c->n == 0 && c->nbytes == 0);
		FUZZ_CHECK(nl == NULL && len <= room->max_item);
		break;
	case CUT_FULL:
		/* An empty window always takes one line: no deadlock. */
		FUZZ_CHECK(!empty_window);
		FUZZ_CHECK(c->n == 0 && c->nbytes == 0);
		FUZZ_CHECK(nl != NULL && first >= 1 &&
		    first <= room->max_item && first + 1 > room->bytes);
		break;
	default:
		FUZZ_CHECK(!"unknown cut kind");
	}
}

/*
 * stream_input()'s loop over one worker window, with the worker acking
 * everything whenever the window is full, until the input is used up or
 * the front line is incomplete.
 */
static void
check_flow(const uint8_t *data, size_t size)
{
	uint8_t b[4] = { 0, 0, 0, 0 };
	struct evbuffer *in;
	struct credit cr = { 0, 0 };
	size_t max_item, win_bytes, off = 0, steps = 0;
	unsigned win_items, nlive;
	int skipping = 0;

	memcpy(b, data, size < sizeof b ? size : sizeof b);
	max_item = 1 + (size_t)b[0];
	win_items = 1 + b[1] % 8;
	win_bytes = 1 + (size_t)b[2] * 2;
	nlive = b[3] & 3;		/* 0: no worker left, read to the end */

	if ((in = evbuffer_new()) == NULL)
		abort();
	fuzz_add_pieces(in, data, size, (size_t)(b[3] >> 2) * 3);

	for (;;) {
		struct flow_room room;
		struct cut cut;
		size_t len;
		int empty;

		/* Each step moves bytes or empties the window. */
		FUZZ_CHECK(++steps <= 2 * size + 4);
		len = evbuffer_get_length(in);
		FUZZ_CHECK(len == size - off);
		if (skipping) {
			const uint8_t *nl = memchr(data + off, '\n', len);
			size_t skip = nl != NULL ? (size_t)(nl - (data + off)) +
			    1 : len;
			evbuffer_drain(in, skip);
			off += skip;
			skipping = nl == NULL;
			len -= skip;
		}
		if (len == 0)
			break;
		if (nlive == 0) {
			struct flow_room all = { max_item, SIZE_MAX, SIZE_MAX,
			    UINT_MAX };
			room = all;
			empty = 1;
		} else {
			size_t share = len / nlive;
			if (!credit_room(&cr, win_bytes, win_items, max_item,
			    &room)) {
				FUZZ_CHECK(cr.items > 0);
				FUZZ_CHECK(credit_ack(&cr, cr.items,
				    cr.bytes) == 0);
				continue;
			}
			FUZZ_CHECK(room.items >= 1);
			empty = cr.items == 0;
			if (empty)
				FUZZ_CHECK(room.bytes >= max_item + 1);
			if (room.soft_bytes > share)
				room.soft_bytes = share;
			if (room.soft_bytes > BATCH_MAX)
				room.soft_bytes = BATCH_MAX;
		}
		memset(&cut, 0xa5, sizeof cut);
		flow_cut(in, &room, &cut);
		/* flow_cut only looks. */
		FUZZ_CHECK(evbuffer_get_length(in) == len);
		check_cut(data + off, len, &room, &cut, empty);
		switch (cut.kind) {
		case CUT_BATCH:
			if (nlive > 0)
				credit_take(&cr, cut.n, cut.nbytes);
			/* FALLTHROUGH */
		case CUT_EMPTY:
			evbuffer_drain(in, cut.nbytes);
			off += cut.nbytes;
			continue;
		case CUT_LONG:
			evbuffer_drain(in, cut.nbytes);
			off += cut.nbytes;
			skipping = !cut.newline;
			continue;
		case CUT_FULL:
			/* Wait for the ack, which frees the whole window. */
			FUZZ_CHECK(credit_ack(&cr, cr.items, cr.bytes) == 0);
			continue;
		case CUT_NEED:
			break;
		}
		break;
	}
	evbuffer_free(in);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	check_header(data, size);
	check_flow(data, size);
	return 0;
}
