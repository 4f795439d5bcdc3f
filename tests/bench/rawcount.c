/*
 * rawcount - the plugin of make bench's W1-raw: counts the stream's items
 * through the raw iterator, without parsing them, so that the time
 * measured is the daemon's routing alone.  Each consumer returns its count;
 * the completion handler returns the total.
 */
#include <consumers/plugin.h>
#include "../plugins/total.h"

static json_t *
rawcount_consume(cns_items *items, const cns_ctx *ctx)
{
	json_int_t n = 0;
	size_t len;

	(void)ctx;
	while (cns_next_raw(items, &len) != NULL)
		n++;
	return json_integer(n);
}

CONSUMERS_PLUGIN(.consume = rawcount_consume, .complete = total_complete);
