/*
 * whoami - a test plugin that reports the process it runs in: its uid,
 * gid, supplementary groups and environment, as the consume result.
 * Items are ignored.
 */
#include <sys/types.h>
#include <string.h>
#include <unistd.h>

#include <consumers/plugin.h>

extern char **environ;

static json_t *
whoami_consume(cns_items *items, const cns_ctx *ctx)
{
	json_t *env = json_object(), *groups = json_array();
	gid_t gs[64];
	int n;

	(void)ctx;
	while (cns_next_raw(items, &(size_t){ 0 }) != NULL)
		;
	for (char **e = environ; *e != NULL; e++) {
		const char *eq = strchr(*e, '=');
		char name[256];
		if (eq == NULL || (size_t)(eq - *e) >= sizeof name)
			continue;
		memcpy(name, *e, (size_t)(eq - *e));
		name[eq - *e] = '\0';
		json_object_set_new(env, name, json_string(eq + 1));
	}
	n = getgroups(64, gs);
	for (int i = 0; i < n; i++)
		json_array_append_new(groups, json_integer(gs[i]));
	return json_pack("{s:I,s:I,s:o,s:o}", "uid", (json_int_t)getuid(),
	    "gid", (json_int_t)getgid(), "groups", groups, "env", env);
}

CONSUMERS_PLUGIN(.consume = whoami_consume);
