/*
 * badcomplete - a test plugin whose completion handler fails: with
 * params {"complete":"error"} it reports an error through cns_fail, with
 * {"complete":"segv"} it crashes, with {"complete":"exit"} it calls
 * exit(3).  consume adds up integer items; the result is the sum.
 */
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include <consumers/plugin.h>

static json_t *
bc_consume(cns_items *items, const cns_ctx *ctx)
{
	json_int_t sum = 0;
	json_t *item;

	(void)ctx;
	while ((item = cns_next(items)) != NULL)
		sum += json_integer_value(item);
	return json_integer(sum);
}

static json_t *
bc_complete(json_t *results, const cns_ctx *ctx)
{
	const char *how = json_string_value(json_object_get(cns_params(ctx),
	    "complete"));

	(void)results;
	if (how != NULL && strcmp(how, "error") == 0) {
		cns_fail(ctx, "the completion handler refused: %s", "on purpose");
		return NULL;
	}
	if (how != NULL && strcmp(how, "segv") == 0)
		raise(SIGSEGV);
	if (how != NULL && strcmp(how, "exit") == 0)
		exit(3);
	return json_string("completed");
}

CONSUMERS_PLUGIN(.consume = bc_consume, .complete = bc_complete);
