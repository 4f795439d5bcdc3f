/*
 * liar - a test plugin that breaks the worker protocol from inside: after
 * taking one item it writes, on the worker's socket (fd 3), a rejection
 * frame for a sequence number it never held.  params give the stream id
 * and the seq: {"stream": ID, "seq": N}.  The master must kill the worker
 * and keep its counts right.
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
	uint64_t seq;

	cns_next(items);
	h.stream = (uint64_t)json_integer_value(json_object_get(p, "stream"));
	h.len = 8 + (uint32_t)strlen(why);
	seq = (uint64_t)json_integer_value(json_object_get(p, "seq"));
	memcpy(buf, &h, sizeof h);
	memcpy(buf + sizeof h, &seq, 8);
	memcpy(buf + sizeof h + 8, why, strlen(why));
	if (write(3, buf, sizeof h + h.len) == -1)
		cns_fail(ctx, "write failed");
	while (cns_next(items) != NULL)
		;
	return json_integer(1);
}

CONSUMERS_PLUGIN(.consume = liar_consume);
