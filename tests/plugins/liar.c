/*
 * liar - a test plugin that breaks the worker protocol from inside: after
 * taking one item it writes, on the worker's socket (fd 3), a rejection
 * frame for a sequence number it never held.  params give the stream id
 * and the seq: {"stream": ID, "seq": N}.  The master must kill the worker
 * and keep its counts right.  With params "on": V it lies on the first
 * item equal to V instead (other items are counted), and with "hold":
 * true it then waits, holding that item, until it is killed.
 */
#include <string.h>
#include <unistd.h>

#include <consumers/plugin.h>
#include "proto.h"

static json_t *
liar_consume(cns_items *items, const cns_ctx *ctx)
{
	json_t *p = cns_params(ctx);
	struct frame_hdr h = { .version = FRAME_VERSION, .type = F_REJECT };
	const char why[] = "made up";
	char buf[FRAME_HDR_SIZE + 8 + sizeof why];
	json_t *on = json_object_get(p, "on"), *item;
	json_int_t n = 0;
	uint64_t seq;

	while ((item = cns_next(items)) != NULL && on != NULL &&
	    !json_equal(item, on))
		n++;
	if (item == NULL)
		return json_integer(n);
	h.stream = (uint64_t)json_integer_value(json_object_get(p, "stream"));
	h.len = 8 + (uint32_t)strlen(why);
	seq = (uint64_t)json_integer_value(json_object_get(p, "seq"));
	memcpy(buf, &h, sizeof h);
	memcpy(buf + sizeof h, &seq, 8);
	memcpy(buf + sizeof h + 8, why, strlen(why));
	if (write(3, buf, sizeof h + h.len) == -1)
		cns_fail(ctx, "write failed");
	while (json_is_true(json_object_get(p, "hold")))
		pause();
	while (cns_next(items) != NULL)
		n++;
	return json_integer(on != NULL ? n : 1);
}

CONSUMERS_PLUGIN(.consume = liar_consume);
