/* nodesc - a test shared object with no consumers_plugin descriptor. */
#include <consumers/plugin.h>

json_t *nodesc_consume(cns_items *items, const cns_ctx *ctx);

json_t *
nodesc_consume(cns_items *items, const cns_ctx *ctx)
{
	(void)items;
	(void)ctx;
	return NULL;
}
