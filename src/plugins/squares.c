/*
 * squares - squares numbers and streams the squares into another pool,
 * kwargs.to (the consumers package's cross-pool example: square numbers
 * in one pool, feed them to another).  Each consume call opens one stream
 * to that pool, puts each square in it, closes it, and returns
 * {"count":N,"sum":S,"downstream":C}: how many numbers it squared, the sum
 * of their squares, and the downstream stream's completion.  The
 * completion handler adds counts and sums, and lists the downstream
 * completions.  A downstream pool that refuses the stream or fails, or
 * does not consume every square (some rejected or quarantined), is an
 * error of this stream, with the downstream's reason or counts.
 *
 * It reaches the daemon through $CONSUMERS_SOCKET, which consumersd sets
 * for every worker.  The client library is linked in (a static copy), so
 * the plugin loads wherever it is copied.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include <consumers/client.h>
#include <consumers/plugin.h>

struct acc {
	json_int_t	 i;
	double		 d;
	int		 real;
};

static void
add(struct acc *a, json_int_t i, double d, int real)
{
	if (!real && !a->real && !__builtin_add_overflow(a->i, i, &a->i))
		return;
	if (!a->real) {
		a->real = 1;
		a->d = (double)a->i;
	}
	a->d += real ? d : (double)i;
}

static json_t *
acc_json(const struct acc *a)
{
	return a->real ? json_real(a->d) : json_integer(a->i);
}

static int
init(const cns_ctx *ctx, void **state)
{
	(void)state;
	if (!json_is_string(json_object_get(cns_kwargs(ctx), "to"))) {
		cns_fail(ctx, "squares needs kwargs.to, the name of the pool "
		    "to stream the squares to (e.g. \"kwargs\": {\"to\": "
		    "\"sum\"})");
		return -1;
	}
	return 0;
}

/* Put one square downstream; a stream that ended takes no more. */
static void
put_square(cns_stream **st, json_t *v, struct acc *a)
{
	char line[64];
	json_int_t i = json_integer_value(v), sq;
	int n;

	if (json_is_integer(v) && !__builtin_mul_overflow(i, i, &sq)) {
		add(a, sq, 0, 0);
		n = snprintf(line, sizeof line, "%" JSON_INTEGER_FORMAT, sq);
		if (*st != NULL && cns_stream_put_line(*st, line, (size_t)n) ==
		    -1)
			*st = NULL;
	} else {
		double d = json_number_value(v) * json_number_value(v);
		json_t *r = json_real(d);
		add(a, 0, d, 1);
		if (*st != NULL && (r == NULL || cns_stream_put(*st, r) == -1))
			*st = NULL;
		json_decref(r);
	}
}

static json_t *
squares(cns_items *items, const cns_ctx *ctx)
{
	const char *to = json_string_value(json_object_get(cns_kwargs(ctx),
	    "to"));
	cns_stream *st, *live;
	struct acc a = { 0 };
	uint64_t count = 0, bad = 0, first_bad = 0;
	json_t *item, *final = NULL, *downstream = NULL;
	char err[1024];

	/* Opened before the first item: a downstream that cannot be reached
	 * is reported, and the items are still counted here. */
	st = live = cns_stream_open(NULL, to, NULL, 0, err, sizeof err);
	if (st == NULL)
		cns_fail(ctx, "pool %s: %s", to, err);
	while ((item = cns_next(items)) != NULL) {
		if (!json_is_number(item)) {
			if (bad++ == 0)
				first_bad = cns_seq(items);
			continue;
		}
		count++;
		put_square(&live, item, &a);
	}
	if (bad > 0)
		cns_fail(ctx, "%" PRIu64 " item%s %s not a number (first: item %"
		    PRIu64 ")", bad, bad == 1 ? "" : "s", bad == 1 ? "was" :
		    "were", first_bad);
	/* A downstream failure outranks bad items: it is the one said. */
	if (st != NULL) {
		/* close reads the reason the downstream ended, if it did. */
		if ((final = cns_stream_close(st, err, sizeof err)) == NULL)
			cns_fail(ctx, "pool %s: %s", to, err);
		else if (!json_is_true(json_object_get(final, "ok")))
			cns_fail(ctx, "pool %s: %s", to, err);
		else if (json_integer_value(json_object_get(final,
		    "consumed")) != json_integer_value(json_object_get(final,
		    "items")))
			cns_fail(ctx, "pool %s consumed %" JSON_INTEGER_FORMAT
			    " of %" JSON_INTEGER_FORMAT " squares (%"
			    JSON_INTEGER_FORMAT " rejected, %" JSON_INTEGER_FORMAT
			    " quarantined)", to, json_integer_value(
			    json_object_get(final, "consumed")),
			    json_integer_value(json_object_get(final, "items")),
			    json_integer_value(json_object_get(final,
			    "rejected")), json_integer_value(json_object_get(
			    final, "quarantined")));
		else
			downstream = json_incref(json_object_get(final,
			    "completion"));
		json_decref(final);
		cns_stream_free(st);
	}
	return json_pack("{s:I,s:o,s:o}", "count", (json_int_t)count, "sum",
	    acc_json(&a), "downstream", downstream != NULL ? downstream :
	    json_null());
}

static json_t *
total(json_t *results, const cns_ctx *ctx)
{
	struct acc a = { 0 };
	json_int_t count = 0;
	json_t *r, *s, *down = json_array();
	size_t i;

	(void)ctx;
	json_array_foreach(results, i, r) {
		if (!json_is_object(r))
			continue;
		count += json_integer_value(json_object_get(r, "count"));
		s = json_object_get(r, "sum");
		add(&a, json_integer_value(s), json_number_value(s),
		    json_is_real(s));
		json_array_append(down, json_object_get(r, "downstream"));
	}
	return json_pack("{s:I,s:o,s:o}", "count", count, "sum", acc_json(&a),
	    "downstream", down);
}

CONSUMERS_PLUGIN(.init = init, .consume = squares, .complete = total);
