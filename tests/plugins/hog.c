/*
 * hog - a test plugin that allocates without bound on the item "hog":
 * it touches memory until the kernel or an rlimit stops it.  Other items
 * are counted; the result is the count.
 */
#include <stdlib.h>
#include <string.h>

#include <consumers/plugin.h>

static json_t *
hog_consume(cns_items *items, const cns_ctx *ctx)
{
	json_int_t n = 0;
	json_t *item;

	(void)ctx;
	while ((item = cns_next(items)) != NULL) {
		if (json_is_string(item) &&
		    strcmp(json_string_value(item), "hog") == 0) {
			for (;;) {
				char *p = malloc(1 << 20);
				if (p == NULL)
					abort();	/* out of memory: die */
				memset(p, 1, 1 << 20);
			}
		}
		n++;
	}
	return json_integer(n);
}

CONSUMERS_PLUGIN(.consume = hog_consume);
