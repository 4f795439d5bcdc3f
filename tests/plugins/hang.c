/*
 * hang - a test plugin that stops forever on the item "hang" (a consumer
 * stuck on one item, for item_timeout).  Other items are added up when
 * they are integers; the result is the sum.
 */
#include <string.h>
#include <unistd.h>

#include <consumers/plugin.h>

static json_t *
hang_consume(cns_items *items, const cns_ctx *ctx)
{
	json_int_t sum = 0;
	json_t *item;

	(void)ctx;
	while ((item = cns_next(items)) != NULL) {
		if (json_is_string(item) &&
		    strcmp(json_string_value(item), "hang") == 0)
			for (;;)
				pause();
		sum += json_integer_value(item);
	}
	return json_integer(sum);
}

CONSUMERS_PLUGIN(.consume = hang_consume);
