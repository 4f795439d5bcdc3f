/*
 * sum - adds numeric items, or the numeric field named by kwargs.field of
 * object items.  Each consumer returns its sum; the completion handler
 * returns the total of all results.  Integers stay exact integers; a real
 * anywhere makes the sum a real.  An item without a number is an error
 * reported to the client, and the rest still count.
 */
#include <inttypes.h>

#include <consumers/plugin.h>

struct acc {
	json_int_t	 i;
	double		 d;
	int		 real;
};

static void
add(struct acc *a, json_t *v)
{
	if (json_is_integer(v) && !a->real) {
		a->i += json_integer_value(v);
		return;
	}
	if (!a->real) {
		a->real = 1;
		a->d = (double)a->i;
	}
	a->d += json_number_value(v);
}

static json_t *
acc_json(const struct acc *a)
{
	return a->real ? json_real(a->d) : json_integer(a->i);
}

static json_t *
sum(cns_items *items, const cns_ctx *ctx)
{
	json_t *field = json_object_get(cns_kwargs(ctx), "field");
	struct acc a = { 0 };
	uint64_t bad = 0, first_bad = 0;
	json_t *item;

	while ((item = cns_next(items)) != NULL) {
		json_t *v = json_is_string(field) ?
		    json_object_get(item, json_string_value(field)) : item;
		if (json_is_number(v)) {
			add(&a, v);
		} else if (bad++ == 0)
			first_bad = cns_seq(items);
	}
	if (bad > 0)
		cns_fail(ctx, "%" PRIu64 " item%s had no number%s%s%s (first: "
		    "item %" PRIu64 ")", bad, bad == 1 ? "" : "s",
		    json_is_string(field) ? " in field \"" : "",
		    json_is_string(field) ? json_string_value(field) : "",
		    json_is_string(field) ? "\"" : "", first_bad);
	return acc_json(&a);
}

static json_t *
total(json_t *results, const cns_ctx *ctx)
{
	struct acc a = { 0 };
	size_t i;
	json_t *r;

	(void)ctx;
	json_array_foreach(results, i, r)
		if (json_is_number(r))
			add(&a, r);
	return acc_json(&a);
}

CONSUMERS_PLUGIN(.consume = sum, .complete = total);
