/*
 * pairs - a test plugin for the Python client's "multiple data" example
 * (consumers: pool.put(index, letter) hands the consumer (index, letter)
 * tuples; here each item is the JSON array [index, letter]).  The result
 * is the array of "LETTER is at index INDEX" lines, in the order taken;
 * an item that is not such a pair is an error reported to the client,
 * and the other items still count.
 */
#include <inttypes.h>

#include <consumers/plugin.h>

static json_t *
pairs_consume(cns_items *items, const cns_ctx *ctx)
{
	json_t *lines = json_array(), *item;
	uint64_t bad = 0, first_bad = 0;

	while ((item = cns_next(items)) != NULL) {
		json_t *index = json_array_get(item, 0);
		json_t *letter = json_array_get(item, 1);

		if (!json_is_array(item) || json_array_size(item) != 2 ||
		    !json_is_integer(index) || !json_is_string(letter)) {
			if (bad++ == 0)
				first_bad = cns_seq(items);
			continue;
		}
		json_array_append_new(lines, json_sprintf("%s is at index %"
		    JSON_INTEGER_FORMAT, json_string_value(letter),
		    json_integer_value(index)));
	}
	if (bad > 0)
		cns_fail(ctx, "%" PRIu64 " item%s not [index, letter] (first: "
		    "item %" PRIu64 ")", bad, bad == 1 ? " was" : "s were",
		    first_bad);
	return lines;
}

CONSUMERS_PLUGIN(.consume = pairs_consume);
