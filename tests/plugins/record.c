/*
 * record - a test plugin with an effect per item, for on_crash redeliver:
 * it appends "SEQ LINE\n" for every item to the file kwargs.path (opened
 * with O_APPEND, one write per item), and adds up integer items.  The
 * result is the sum; complete returns the total.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <consumers/plugin.h>
#include "total.h"

static int
record_init(const cns_ctx *ctx, void **state)
{
	const char *path = json_string_value(json_object_get(cns_kwargs(ctx),
	    "path"));
	int *fd;

	if (path == NULL) {
		cns_fail(ctx, "kwargs.path is required");
		return -1;
	}
	if ((fd = malloc(sizeof *fd)) == NULL)
		return -1;
	if ((*fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC,
	    0600)) == -1) {
		cns_fail(ctx, "cannot open %s", path);
		free(fd);
		return -1;
	}
	*state = fd;
	return 0;
}

static json_t *
record_consume(cns_items *items, const cns_ctx *ctx)
{
	int fd = *(int *)cns_state(ctx);
	json_int_t sum = 0;
	const char *line;
	size_t len;

	while ((line = cns_next_raw(items, &len)) != NULL) {
		char buf[128];
		int n = snprintf(buf, sizeof buf, "%llu %.*s\n",
		    (unsigned long long)cns_seq(items), (int)(len < 80 ? len :
		    80), line);
		if (write(fd, buf, (size_t)n) != n)
			cns_fail(ctx, "short write");
		sum += strtoll(line, NULL, 10);
	}
	return json_integer(sum);
}

static void
record_fini(void *state)
{
	close(*(int *)state);
	free(state);
}

CONSUMERS_PLUGIN(.init = record_init, .consume = record_consume,
    .complete = total_complete, .fini = record_fini);
