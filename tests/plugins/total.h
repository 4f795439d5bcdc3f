/*
 * total.h - the completion handler several test plugins share: the sum of
 * the integer results of their consume calls.
 */
#ifndef CNS_TEST_TOTAL_H
#define CNS_TEST_TOTAL_H

#include <consumers/plugin.h>

static json_t *
total_complete(json_t *results, const cns_ctx *ctx)
{
	json_int_t total = 0;
	size_t i;
	json_t *r;

	(void)ctx;
	json_array_foreach(results, i, r)
		total += json_integer_value(r);
	return json_integer(total);
}

#endif
