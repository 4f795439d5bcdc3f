/*
 * crash - a test plugin that dies on demand: the item "segv" raises
 * SIGSEGV, {"exit": N} calls exit(N).  Other items are counted; the result
 * is the count.  complete dies the same way when params say
 * {"complete": "segv"}, consume dies before it takes an item when they say
 * {"start": "segv"}, and after its items ended when they say
 * {"end": "segv"} or {"end": {"exit": N}}.
 */
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include <consumers/plugin.h>

static void
maybe_die(json_t *v)
{
	json_t *code = json_object_get(v, "exit");

	if (json_is_string(v) && strcmp(json_string_value(v), "segv") == 0)
		raise(SIGSEGV);
	if (json_is_integer(code))
		exit((int)json_integer_value(code));
}

static json_t *
crash_consume(cns_items *items, const cns_ctx *ctx)
{
	json_int_t n = 0;
	json_t *item;

	maybe_die(json_object_get(cns_params(ctx), "start"));
	while ((item = cns_next(items)) != NULL) {
		maybe_die(item);
		n++;
	}
	maybe_die(json_object_get(cns_params(ctx), "end"));
	return json_integer(n);
}

static json_t *
crash_complete(json_t *results, const cns_ctx *ctx)
{
	maybe_die(json_object_get(cns_params(ctx), "complete"));
	return json_integer((json_int_t)json_array_size(results));
}

CONSUMERS_PLUGIN(.consume = crash_consume, .complete = crash_complete);
