/*
 * slow - a test plugin slower than any producer: it sleeps kwargs.usec
 * microseconds every kwargs.every items, and returns how many items it
 * consumed.  complete returns the total.
 */
#include <unistd.h>

#include <consumers/plugin.h>
#include "total.h"

static json_int_t
knob(const cns_ctx *ctx, const char *name, json_int_t dflt)
{
	json_t *v = json_object_get(cns_kwargs(ctx), name);

	return json_is_integer(v) ? json_integer_value(v) : dflt;
}

static json_t *
slow_consume(cns_items *items, const cns_ctx *ctx)
{
	json_int_t usec = knob(ctx, "usec", 1000), every = knob(ctx, "every",
	    1), n = 0;

	while (cns_next(items) != NULL)
		if (++n % every == 0)
			usleep((useconds_t)usec);
	return json_integer(n);
}

CONSUMERS_PLUGIN(.consume = slow_consume, .complete = total_complete);
