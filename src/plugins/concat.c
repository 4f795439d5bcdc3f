/*
 * concat - joins string items with a separator: the Python consumers
 * README example, def concatenate(letters): return '-'.join(letters).
 * The separator is the pool's args[0] (default "-"); a stream's params
 * may override it with {"separator": "..."}.  Items that are not strings
 * are joined as their JSON text.
 */
#include <stdlib.h>
#include <string.h>

#include <consumers/plugin.h>

static const char *
separator(const cns_ctx *ctx)
{
	json_t *p = json_object_get(cns_params(ctx), "separator");
	json_t *a = json_array_get(cns_args(ctx), 0);

	if (json_is_string(p))
		return json_string_value(p);
	if (json_is_string(a))
		return json_string_value(a);
	return "-";
}

static json_t *
concat(cns_items *items, const cns_ctx *ctx)
{
	const char *sep = separator(ctx);
	size_t seplen = strlen(sep), len = 0, cap = 256;
	char *out = malloc(cap);
	json_t *item, *result;
	int first = 1;

	if (out == NULL) {
		cns_fail(ctx, "out of memory");
		return NULL;
	}
	while ((item = cns_next(items)) != NULL) {
		char *dumped = NULL;
		const char *s;
		size_t n;

		if (json_is_string(item)) {
			s = json_string_value(item);
			n = json_string_length(item);
		} else {
			dumped = json_dumps(item, JSON_COMPACT |
			    JSON_ENCODE_ANY);
			s = dumped != NULL ? dumped : "";
			n = strlen(s);
		}
		while (len + seplen + n + 1 > cap) {
			char *bigger = realloc(out, cap * 2);
			if (bigger == NULL) {
				free(out);
				free(dumped);
				cns_fail(ctx, "out of memory");
				return NULL;
			}
			out = bigger;
			cap *= 2;
		}
		if (!first) {
			memcpy(out + len, sep, seplen);
			len += seplen;
		}
		memcpy(out + len, s, n);
		len += n;
		first = 0;
		free(dumped);
	}
	result = json_stringn(out, len);
	free(out);
	return result;
}

CONSUMERS_PLUGIN(.consume = concat);
