/*
 * forker - a test plugin whose consume starts a process that outlives it:
 * for each item, a string path, it forks a child that writes its pid to
 * that file and sleeps forever (in a process group of its own when params
 * say {"escape": true}, as a program run by exec is; an orphan in the
 * worker's group when they say {"orphan": true}: a grandchild whose parent
 * exits, as a daemon's double fork leaves).  It returns how many it
 * started, or waits forever when params say {"hang": true}.  Either way,
 * the children must die with the worker.
 */
#include <sys/types.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <consumers/plugin.h>

static void
spawn(const char *path, int escape, int orphan)
{
	char buf[32];
	int fd, n;
	pid_t pid;

	if ((pid = fork()) != 0) {
		if (orphan && pid > 0)
			waitpid(pid, NULL, 0);
		return;
	}
	if (orphan && fork() != 0)
		_exit(0);
	if (escape)
		setpgid(0, 0);
	n = snprintf(buf, sizeof buf, "%ld\n", (long)getpid());
	if ((fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
	    0644)) != -1) {
		if (write(fd, buf, (size_t)n) == -1)
			_exit(1);
		close(fd);
	}
	for (;;)
		pause();
}

static json_t *
forker_consume(cns_items *items, const cns_ctx *ctx)
{
	json_t *params = cns_params(ctx), *item;
	int escape = json_is_true(json_object_get(params, "escape"));
	int orphan = json_is_true(json_object_get(params, "orphan"));
	json_int_t n = 0;

	while ((item = cns_next(items)) != NULL)
		if (json_is_string(item)) {
			spawn(json_string_value(item), escape, orphan);
			n++;
		}
	if (json_is_true(json_object_get(params, "hang")))
		for (;;)
			pause();
	return json_integer(n);
}

CONSUMERS_PLUGIN(.consume = forker_consume);
