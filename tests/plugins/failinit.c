/* failinit - a test plugin whose init always fails with a message. */
#include <consumers/plugin.h>

static int
failinit_init(const cns_ctx *ctx, void **state)
{
	(void)state;
	cns_fail(ctx, "cannot reach the test database (pool %s)",
	    cns_pool(ctx));
	return -1;
}

static json_t *
failinit_consume(cns_items *items, const cns_ctx *ctx)
{
	(void)items;
	(void)ctx;
	return NULL;
}

CONSUMERS_PLUGIN(.init = failinit_init, .consume = failinit_consume);
