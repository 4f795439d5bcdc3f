/* badabi - a test plugin whose descriptor claims another plugin ABI. */
#include <consumers/plugin.h>

static json_t *
badabi_consume(cns_items *items, const cns_ctx *ctx)
{
	(void)items;
	(void)ctx;
	return NULL;
}

const struct cns_plugin consumers_plugin = {
	.abi = CNS_PLUGIN_ABI + 98,
	.size = sizeof(struct cns_plugin),
	.consume = badabi_consume,
};
