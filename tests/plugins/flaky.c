/*
 * flaky - a test plugin whose init fails while the file kwargs.fail_if
 * exists (a replacement worker that cannot start), and whose consume adds
 * up integer items, stops forever on the item "hang" and sleeps N ms on
 * {"sleep": N}.  complete returns the sum of the results.
 */
#include <string.h>
#include <unistd.h>

#include <consumers/plugin.h>
#include "total.h"

static int
flaky_init(const cns_ctx *ctx, void **state)
{
	const char *path = json_string_value(json_object_get(cns_kwargs(ctx),
	    "fail_if"));

	(void)state;
	if (path != NULL && access(path, F_OK) == 0) {
		cns_fail(ctx, "%s exists", path);
		return -1;
	}
	return 0;
}

static json_t *
flaky_consume(cns_items *items, const cns_ctx *ctx)
{
	json_int_t sum = 0;
	json_t *item;

	(void)ctx;
	while ((item = cns_next(items)) != NULL) {
		if (json_is_string(item) &&
		    strcmp(json_string_value(item), "hang") == 0)
			for (;;)
				pause();
		if (json_is_integer(json_object_get(item, "sleep")))
			usleep((useconds_t)json_integer_value(
			    json_object_get(item, "sleep")) * 1000);
		sum += json_integer_value(item);
	}
	return json_integer(sum);
}

CONSUMERS_PLUGIN(.init = flaky_init, .consume = flaky_consume,
    .complete = total_complete);
