/*
 * failinit - a test plugin whose init fails with a message: in every
 * worker, or only in the worker slots kwargs.fail_slots lists.  A worker
 * that starts returns how many items it consumed.
 */
#include <consumers/plugin.h>

static int
failinit_init(const cns_ctx *ctx, void **state)
{
	json_t *slots = json_object_get(cns_kwargs(ctx), "fail_slots"), *v;
	size_t i;

	(void)state;
	if (json_is_array(slots)) {
		int listed = 0;
		json_array_foreach(slots, i, v)
			listed |= json_integer_value(v) == cns_worker(ctx);
		if (!listed)
			return 0;
	}
	cns_fail(ctx, "cannot reach the test database (pool %s)",
	    cns_pool(ctx));
	return -1;
}

static json_t *
failinit_consume(cns_items *items, const cns_ctx *ctx)
{
	json_int_t n = 0;

	(void)ctx;
	while (cns_next(items) != NULL)
		n++;
	return json_integer(n);
}

CONSUMERS_PLUGIN(.init = failinit_init, .consume = failinit_consume);
