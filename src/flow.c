/*
 * flow.c - flow control on the master's hot path.  flow_cut() finds how many
 * complete item lines at the front of a client's input fit a worker's window,
 * without parsing them: it only looks for newlines and measures lengths.
 * The credit functions keep each worker's window of unacked items and bytes.
 */
#include <stdio.h>
#include <string.h>

#include <event2/buffer.h>

#include "consumersd.h"

/*
 * Newlines are looked for with memchr over the buffer's extents as
 * evbuffer_peek shows them, a few chains at a time: no per-line search
 * through libevent, which costs a pointer walk from the buffer's start.
 */
#define SCAN_VECS	16

struct eolscan {
	struct evbuffer		*in;
	struct evbuffer_iovec	 v[SCAN_VECS];
	int			 nv, i;
	size_t			 base;	/* offset of v[i] in the buffer */
	size_t			 next;	/* offset just past v[nv - 1] */
	size_t			 limit;	/* look no further than this */
};

static void
scan_fill(struct eolscan *sc)
{
	struct evbuffer_ptr p;
	int n;

	sc->i = sc->nv = 0;
	sc->base = sc->next;
	if (sc->next >= sc->limit ||
	    evbuffer_ptr_set(sc->in, &p, sc->next, EVBUFFER_PTR_SET) == -1)
		return;
	n = evbuffer_peek(sc->in, (ev_ssize_t)(sc->limit - sc->next), &p,
	    sc->v, SCAN_VECS);
	sc->nv = n < SCAN_VECS ? n : SCAN_VECS;
	for (int k = 0; k < sc->nv; k++)
		sc->next += sc->v[k].iov_len;
}

/* Offset of the first newline at or after `from` (never before the last
 * one found), below the limit; -1 if there is none. */
static ssize_t
scan_eol(struct eolscan *sc, size_t from)
{
	for (;;) {
		for (; sc->i < sc->nv; sc->i++) {
			const char *b = sc->v[sc->i].iov_base, *nl;
			size_t len = sc->v[sc->i].iov_len, off;

			if (sc->base + len > sc->limit)
				len = sc->limit - sc->base;
			if (from < sc->base + len) {
				off = from > sc->base ? from - sc->base : 0;
				nl = memchr(b + off, '\n', len - off);
				if (nl != NULL)
					return (ssize_t)(sc->base +
					    (size_t)(nl - b));
			}
			sc->base += sc->v[sc->i].iov_len;
		}
		if (sc->nv == 0)
			return -1;
		scan_fill(sc);
	}
}

/* Why a CUT_LONG line is rejected, in buf. */
const char *
flow_too_long(const struct cut *c, size_t max_item, char *buf, size_t len)
{
	snprintf(buf, len, "line of %s%zu bytes exceeds max_item_bytes (%zu)",
	    c->newline ? "" : "at least ", c->nbytes - (c->newline ? 1 : 0),
	    max_item);
	return buf;
}

void
flow_cut(struct evbuffer *in, const struct flow_room *room, struct cut *c)
{
	size_t total = evbuffer_get_length(in);
	size_t start = 0, look;
	struct eolscan sc = { .in = in };

	c->kind = CUT_NEED;
	c->n = 0;
	c->nbytes = 0;
	c->newline = 0;
	if (total == 0)
		return;
	/* The first line may be up to max_item long (or room->bytes); a
	 * batch stops at soft_bytes: nothing past those is looked at. */
	look = room->max_item + 1;
	if (look < room->bytes)
		look = room->bytes;
	if (look < room->soft_bytes)
		look = room->soft_bytes;
	sc.limit = look < total ? look : total;
	scan_fill(&sc);
	while (c->n < room->items) {
		ssize_t e = scan_eol(&sc, start);
		size_t len, end;

		if (e == -1 && c->n == 0 && sc.limit < total) {
			/* The first line is longer than max_item: find its
			 * end anyway, so its length can be reported. */
			struct evbuffer_ptr p, f;
			evbuffer_ptr_set(in, &p, sc.limit, EVBUFFER_PTR_SET);
			f = evbuffer_search(in, "\n", 1, &p);
			e = f.pos;
		}

		if (e == -1) {
			/* The line at `start` is not complete yet (or lies
			 * past what this batch may take). */
			if (c->n > 0)
				break;
			if (total - start > room->max_item) {
				c->kind = CUT_LONG;
				c->nbytes = total;
			}
			return;
		}
		len = (size_t)e - start;
		end = (size_t)e + 1;
		if (len == 0 || len > room->max_item) {
			if (c->n > 0)
				break;
			c->kind = len == 0 ? CUT_EMPTY : CUT_LONG;
			c->nbytes = end;
			c->newline = 1;
			return;
		}
		if (c->n == 0 && end > room->bytes) {
			c->kind = CUT_FULL;
			return;
		}
		if (c->n > 0 && end > room->soft_bytes)
			break;
		c->n++;
		c->nbytes = end;
		start = end;
		if (end >= total)
			break;
	}
	c->kind = CUT_BATCH;
}

/*
 * Fill `room` with what a worker's window can take now; 0 when it is full
 * (or, holding items, has less than a quarter free).
 * An empty window always takes one line, however long, so a line up to
 * max_item always moves even when it is larger than the window.
 */
int
credit_room(const struct credit *cr, size_t win_bytes, unsigned win_items,
    size_t max_item, struct flow_room *room)
{
	if (cr->items >= win_items)
		return 0;
	if (cr->items > 0 && cr->bytes >= win_bytes)
		return 0;
	/* A window that holds items takes more only once a quarter of it is
	 * free: refilled an ack at a time, a busy worker would get a few
	 * items per frame, and each frame costs a write, a read and an ack
	 * ("silly window syndrome").  Its pending items keep it busy. */
	if (cr->items > 0 && (win_items - cr->items < win_items / 4 ||
	    win_bytes - cr->bytes < win_bytes / 4))
		return 0;
	room->max_item = max_item;
	room->items = win_items - cr->items;
	room->soft_bytes = cr->bytes < win_bytes ? win_bytes - cr->bytes : 0;
	room->bytes = room->soft_bytes;
	if (cr->items == 0 && room->bytes < max_item + 1)
		room->bytes = max_item + 1;
	return 1;
}

void
credit_take(struct credit *cr, unsigned items, size_t bytes)
{
	cr->items += items;
	cr->bytes += bytes;
}

/* Return what a worker acknowledged; -1 if it acked more than it was sent. */
int
credit_ack(struct credit *cr, unsigned items, size_t bytes)
{
	if (items > cr->items || bytes > cr->bytes)
		return -1;
	cr->items -= items;
	cr->bytes -= bytes;
	return 0;
}
