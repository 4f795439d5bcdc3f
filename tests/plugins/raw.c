/*
 * raw - a test plugin on the raw iterator: counts lines and their bytes
 * without parsing, and records the sequence numbers it saw as ranges.
 */
#include <consumers/plugin.h>

static json_t *
raw_consume(cns_items *items, const cns_ctx *ctx)
{
	json_int_t n = 0, bytes = 0, seqsum = 0;
	const char *line;
	size_t len;

	(void)ctx;
	while ((line = cns_next_raw(items, &len)) != NULL) {
		if (line[len] != '\0')
			cns_fail(ctx, "line %llu is not NUL-terminated",
			    (unsigned long long)cns_seq(items));
		n++;
		bytes += (json_int_t)len;
		seqsum += (json_int_t)cns_seq(items);
	}
	return json_pack("{s:I,s:I,s:I}", "lines", n, "bytes", bytes,
	    "seqsum", seqsum);
}

CONSUMERS_PLUGIN(.consume = raw_consume);
