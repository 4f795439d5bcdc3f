/*
 * hog - a test plugin that allocates without bound on the item "hog": it
 * maps and touches memory 1 MiB at a time until the system says no, then
 * aborts.  So the test machine survives, it first lowers its own
 * RLIMIT_DATA to kwargs.limit_mb (default 256) more than it uses; the
 * kernel refuses the mapping past that, as an rlimit_as or the OOM killer
 * would stop a real one.  Where the rlimit does not hold (valgrind
 * emulates mmap), it aborts at four times the limit anyway.  Other items
 * are counted; the result is the count.
 */
#include <sys/mman.h>
#include <sys/resource.h>
#include <stdlib.h>
#include <string.h>

#include <consumers/plugin.h>

static _Noreturn void
hog(json_int_t limit_mb)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_DATA, &rl) == 0) {
		rl.rlim_cur = (rlim_t)limit_mb << 20;
		setrlimit(RLIMIT_DATA, &rl);
	}
	for (json_int_t mb = 0;; mb++) {
		char *p = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE,
		    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (p == MAP_FAILED || mb >= 4 * limit_mb)
			abort();		/* out of memory: die */
		memset(p, 1, 1 << 20);
	}
}

static json_t *
hog_consume(cns_items *items, const cns_ctx *ctx)
{
	json_t *lim = json_object_get(cns_kwargs(ctx), "limit_mb");
	json_int_t n = 0;
	json_t *item;

	while ((item = cns_next(items)) != NULL) {
		if (json_is_string(item) &&
		    strcmp(json_string_value(item), "hog") == 0)
			hog(json_is_integer(lim) ? json_integer_value(lim) : 256);
		n++;
	}
	return json_integer(n);
}

CONSUMERS_PLUGIN(.consume = hog_consume);
