/*
 * consumers/plugin.h - the contract between consumersd and a consumer plugin.
 *
 * A plugin is a shared object that exports one descriptor, built with the
 * CONSUMERS_PLUGIN() macro.  consumersd loads it with dlopen() inside a worker
 * process (never in the master), calls init() once per process, consume() once
 * per stream leased to that process, complete() once per stream on one of the
 * stream's workers, and fini() when the process exits.
 *
 * Ownership follows jansson's rules: values handed to the plugin are borrowed,
 * values the plugin returns are new references that consumersd releases.
 *
 * Build a plugin with:  cc -shared -fPIC $(pkg-config --cflags
 * consumers-plugin) -o NAME.so NAME.c $(pkg-config --libs consumers-plugin)
 */
#ifndef CONSUMERS_PLUGIN_H
#define CONSUMERS_PLUGIN_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped whenever struct cns_plugin or a cns_ function changes incompatibly;
 * consumersd refuses a plugin built for another version. */
#define CNS_PLUGIN_ABI 1

/* The name of the descriptor symbol consumersd looks up. */
#define CNS_PLUGIN_SYMBOL "consumers_plugin"

typedef struct cns_items cns_items;	/* one stream's items, for one consumer */
typedef struct cns_ctx cns_ctx;		/* pool, worker and stream context */

struct cns_plugin {
	unsigned abi;		/* CNS_PLUGIN_ABI the plugin was built with */
	size_t size;		/* sizeof(struct cns_plugin) at build time */

	/* Once per worker process, before any stream.  Store per-process
	 * state (a connection, a buffer) in *state; cns_state() returns it
	 * later.  Return 0, or -1 after cns_fail() to refuse to start. */
	int (*init)(const cns_ctx *ctx, void **state);

	/* Required.  Once per stream per leased worker: pull items with
	 * cns_next() (or cns_next_raw()) until it returns NULL, then return
	 * this consumer's result (a new reference; NULL means JSON null). */
	json_t *(*consume)(cns_items *items, const cns_ctx *ctx);

	/* The pool's completion handler: once per stream, after every consume
	 * call returned, with the array of their results (borrowed).  Its
	 * return value (a new reference) reaches the client as "completion". */
	json_t *(*complete)(json_t *results, const cns_ctx *ctx);

	/* When the worker process leaves its stream loop to exit, with
	 * init's state.  Not called when the process is killed or told to
	 * stop while inside consume. */
	void (*fini)(void *state);
};

/* Optional, beside the descriptor: "consumersd -t" calls a function
 * exported under this name, int consumers_plugin_check(const cns_ctx *),
 * in a child process as the pool's user, to check the pool's settings
 * without starting it (no init).  Return 0, or -1 after cns_fail(): the
 * message is the config error. */
#define CNS_PLUGIN_CHECK_SYMBOL "consumers_plugin_check"

/* The descriptor must be visible to dlsym, from C and from C++. */
#ifdef __cplusplus
#define CNS_PLUGIN_EXPORT extern "C" __attribute__((visibility("default")))
#else
#define CNS_PLUGIN_EXPORT __attribute__((visibility("default")))
#endif

/* Define the plugin's descriptor: CONSUMERS_PLUGIN(.consume = fn, ...); */
#define CONSUMERS_PLUGIN(...)						\
	CNS_PLUGIN_EXPORT const struct cns_plugin consumers_plugin = {	\
		.abi = CNS_PLUGIN_ABI,					\
		.size = sizeof(struct cns_plugin),			\
		__VA_ARGS__						\
	}

/* The next item as parsed JSON, borrowed: valid until the next call.  NULL
 * when the stream's items for this consumer have ended.  Lines that are not
 * valid JSON never reach the plugin: they are reported to the client. */
json_t *cns_next(cns_items *items);

/* The next item's line as bytes (NUL-terminated, without its newline; *len
 * gets its length), valid until the next call; NULL at the end.  No JSON
 * validation is done on this path: the plugin parses the bytes itself. */
const char *cns_next_raw(cns_items *items, size_t *len);

/* The sequence number (1-based, per stream) of the item last returned. */
uint64_t cns_seq(const cns_items *items);

/* Hand back an item this consume call took (cns_next) but did not process,
 * by its sequence number (cns_seq), in increasing order (others are
 * ignored): it is counted "unconsumed", with its seq, in the stream's
 * final line instead of "consumed".  Items never taken when consume returns
 * are counted so already. */
void cns_unread(cns_items *items, uint64_t seq);

/* The pool's "args" (an array) and "kwargs" (an object), borrowed.  In
 * consume and complete, a stream's own args/kwargs when its client gave
 * them and the pool has "client_args": true. */
json_t *cns_args(const cns_ctx *ctx);
json_t *cns_kwargs(const cns_ctx *ctx);

/* The pool's "plugin_options" (any JSON, borrowed; JSON null when the pool
 * file has none): the plugin's own settings, in every call.  Added in
 * ABI 1 without a bump (a new function; a plugin using it does not load
 * in an older daemon, whose dlopen fails on the missing symbol). */
json_t *cns_options(const cns_ctx *ctx);

/* The stream's "params" from the client's header (borrowed; JSON null when
 * the client gave none, and in init and fini). */
json_t *cns_params(const cns_ctx *ctx);

/* The state init stored (NULL without init). */
void *cns_state(const cns_ctx *ctx);

/* The pool's name, and this worker's slot in the pool (1-based). */
const char *cns_pool(const cns_ctx *ctx);
unsigned cns_worker(const cns_ctx *ctx);

/* Report an error from init, consume or complete.  The message reaches the
 * client in the stream's "errors" (and the daemon's log); the last call wins.
 * A consume or complete that reported an error may still return a value. */
void cns_fail(const cns_ctx *ctx, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

#ifdef __cplusplus
}
#endif

#endif /* CONSUMERS_PLUGIN_H */
