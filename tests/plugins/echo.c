/*
 * echo - a test plugin that reports what reached it: init's view of args
 * and kwargs (kept in per-process state), consume's view of args, kwargs
 * and params, its worker slot and pid, how many times init ran in this
 * process, and the items it saw.  complete returns the results' count and
 * the params it was given.
 */
#include <stdlib.h>
#include <unistd.h>

#include <consumers/plugin.h>

struct state {
	json_t	*init_args;
	json_t	*init_kwargs;
	int	 inits;
	int	 streams;
};

static int
echo_init(const cns_ctx *ctx, void **statep)
{
	static int inits;	/* counts init calls in this process */
	struct state *st = calloc(1, sizeof *st);

	if (st == NULL)
		return -1;
	st->init_args = json_deep_copy(cns_args(ctx));
	st->init_kwargs = json_deep_copy(cns_kwargs(ctx));
	st->inits = ++inits;
	*statep = st;
	return 0;
}

static json_t *
echo_consume(cns_items *items, const cns_ctx *ctx)
{
	struct state *st = cns_state(ctx);
	json_t *seen = json_array(), *item;

	while ((item = cns_next(items)) != NULL)
		json_array_append(seen, item);
	st->streams++;
	return json_pack("{s:O,s:O,s:O,s:O,s:O,s:i,s:i,s:i,s:i,s:s,s:o}",
	    "init_args", st->init_args, "init_kwargs", st->init_kwargs,
	    "args", cns_args(ctx), "kwargs", cns_kwargs(ctx),
	    "params", cns_params(ctx), "worker", (int)cns_worker(ctx),
	    "pid", (int)getpid(), "inits", st->inits,
	    "streams", st->streams, "pool", cns_pool(ctx), "items", seen);
}

static json_t *
echo_complete(json_t *results, const cns_ctx *ctx)
{
	return json_pack("{s:i,s:O}", "results", (int)json_array_size(results),
	    "params", cns_params(ctx));
}

static void
echo_fini(void *state)
{
	struct state *st = state;

	json_decref(st->init_args);
	json_decref(st->init_kwargs);
	free(st);
}

CONSUMERS_PLUGIN(.init = echo_init, .consume = echo_consume,
    .complete = echo_complete, .fini = echo_fini);
