/*
 * hang - a test plugin that stops forever on the item "hang" (a consumer
 * stuck on one item, for item_timeout), and after its items ended when
 * params say {"end": "hang"}.  Other items are added up when they are
 * integers; the result is the sum.  complete hangs when params say
 * {"complete": "hang"}, else returns the total.
 */
#include <string.h>
#include <unistd.h>

#include <consumers/plugin.h>

static void
hang_if(json_t *params, const char *when)
{
	const char *v = json_string_value(json_object_get(params, when));

	if (v != NULL && strcmp(v, "hang") == 0)
		for (;;)
			pause();
}

static json_t *
hang_consume(cns_items *items, const cns_ctx *ctx)
{
	json_int_t sum = 0;
	json_t *item;

	while ((item = cns_next(items)) != NULL) {
		if (json_is_string(item) &&
		    strcmp(json_string_value(item), "hang") == 0)
			for (;;)
				pause();
		sum += json_integer_value(item);
	}
	hang_if(cns_params(ctx), "end");
	return json_integer(sum);
}

static json_t *
hang_complete(json_t *results, const cns_ctx *ctx)
{
	json_int_t total = 0;
	size_t i;
	json_t *r;

	hang_if(cns_params(ctx), "complete");
	json_array_foreach(results, i, r)
		total += json_integer_value(r);
	return json_integer(total);
}

CONSUMERS_PLUGIN(.consume = hang_consume, .complete = hang_complete);
