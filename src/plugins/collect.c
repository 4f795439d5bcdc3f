/*
 * collect - returns the array of the items it consumed, in the order it
 * took them.  With one worker that is the stream's order.
 */
#include <consumers/plugin.h>

static json_t *
collect(cns_items *items, const cns_ctx *ctx)
{
	json_t *all = json_array(), *item;

	(void)ctx;
	while ((item = cns_next(items)) != NULL)
		json_array_append(all, item);
	return all;
}

CONSUMERS_PLUGIN(.consume = collect);
