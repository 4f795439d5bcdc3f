/*
 * flow.c - flow control on the master's hot path.  flow_cut() finds how many
 * complete item lines at the front of a client's input fit a worker's window,
 * without parsing them: it only looks for newlines and measures lengths.
 * The credit functions keep each worker's window of unacked items and bytes.
 */
#include <event2/buffer.h>

#include "consumersd.h"

void
flow_cut(struct evbuffer *in, const struct flow_room *room, struct cut *c)
{
	size_t total = evbuffer_get_length(in);
	size_t start = 0, eol_len;
	struct evbuffer_ptr p, e;

	c->kind = CUT_NEED;
	c->n = 0;
	c->nbytes = 0;
	c->newline = 0;
	if (total == 0)
		return;
	evbuffer_ptr_set(in, &p, 0, EVBUFFER_PTR_SET);
	while (c->n < room->items) {
		size_t len, end;

		e = evbuffer_search_eol(in, &p, &eol_len, EVBUFFER_EOL_LF);
		if (e.pos == -1) {
			/* The line at `start` is not complete yet. */
			if (c->n > 0)
				break;
			if (total - start > room->max_item) {
				c->kind = CUT_LONG;
				c->nbytes = total;
			}
			return;
		}
		len = (size_t)e.pos - start;
		end = (size_t)e.pos + 1;
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
		evbuffer_ptr_set(in, &p, end, EVBUFFER_PTR_SET);
	}
	c->kind = CUT_BATCH;
}

/*
 * Fill `room` with what a worker's window can take now; 0 when it is full.
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
