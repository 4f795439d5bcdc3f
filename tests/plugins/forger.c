/*
 * forger - a test plugin that forges the worker's shared progress page
 * (struct worker_shm in consumersd.h: a MAP_SHARED page the master reads
 * after a crash) and then dies.  It finds the page in /proc/self/maps.
 * On the item "forge", once (while the file params.once does not
 * exist; it creates it), it stores params.cur, params.last_done and
 * params.ndone, and exits 1.  Other lines are counted; the result is the
 * count.
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <consumers/plugin.h>

struct page { uint64_t cur, last_done, ndone, started, ended; };

static struct page *
find_page(void)
{
	FILE *f = fopen("/proc/self/maps", "r");
	char line[512];
	struct page *found = NULL;

	if (f == NULL)
		return NULL;
	while (fgets(line, sizeof line, f) != NULL) {
		unsigned long lo, hi;
		char perms[8];
		if (sscanf(line, "%lx-%lx %7s", &lo, &hi, perms) != 3)
			continue;
		if (hi - lo == 4096 && strcmp(perms, "rw-s") == 0 &&
		    strstr(line, "/dev/zero") != NULL)
			found = (struct page *)lo;
	}
	fclose(f);
	return found;
}

static json_t *
forger_consume(cns_items *items, const cns_ctx *ctx)
{
	json_t *p = cns_params(ctx);
	const char *once = json_string_value(json_object_get(p, "once"));
	json_int_t n = 0;
	json_t *item;

	while ((item = cns_next(items)) != NULL) {
		struct page *pg;
		int fd;
		if (!json_is_string(item) ||
		    strcmp(json_string_value(item), "forge") != 0 ||
		    once == NULL || access(once, F_OK) == 0 ||
		    (pg = find_page()) == NULL) {
			n++;
			continue;
		}
		if ((fd = open(once, O_WRONLY | O_CREAT, 0600)) != -1)
			close(fd);
		pg->cur = (uint64_t)json_integer_value(json_object_get(p,
		    "cur"));
		pg->last_done = (uint64_t)json_integer_value(
		    json_object_get(p, "last_done"));
		pg->ndone = (uint64_t)json_integer_value(json_object_get(p,
		    "ndone"));
		_exit(1);
	}
	return json_integer(n);
}

CONSUMERS_PLUGIN(.consume = forger_consume);
