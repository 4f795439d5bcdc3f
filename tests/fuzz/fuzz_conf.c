/*
 * fuzz_conf.c - libFuzzer harness for the config loader.  conf_load()
 * reads files, so each input is written into a private directory made once
 * per process:
 *
 *	DIR/consumersd.conf	the input up to its first NUL byte
 *	DIR/pools.d/p.json	the rest; {"plugin":"x"} when there is no NUL
 *	DIR/plugins/x.so	an empty file, so plugin lookups can succeed
 *
 * and loaded with plugin_dir overridden to DIR/plugins.  Whatever it says,
 * the load must either succeed with no error and a sane result, or fail
 * with at least one error, and free everything (LeakSanitizer checks
 * after each input).
 */
#include <sys/stat.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "consumersd.h"
#include "fuzz.h"

int	LLVMFuzzerTestOneInput(const uint8_t *, size_t);

static char	 dir[PATH_MAX];
static char	 conf_file[PATH_MAX];
static char	 pool_file[PATH_MAX];
static char	 plugin_dir[PATH_MAX];

/*
 * conf.c's keys, for conf_keypos() to look for: the same lists as its
 * daemon_keys[] and pool_keys[].  `make check` runs
 * tests/fuzz/check_conf_keys.py, which fails when they differ, or when
 * conf.dict or the seeds in corpus/conf miss a key.
 */
static const char *const daemon_keys[] = {
	"socket", "socket_mode", "plugin_dir", "pools_dir", "max_item_bytes",
	"window_bytes", "window_items", "log_level", "spool_dir",
	"header_timeout", "idle_timeout", "max_connections_per_uid",
	"shutdown_timeout", "admin_group", "socket_group", "root_workers",
	"max_workers", "max_client_buffer", "cluster", NULL
};
static const char *const pool_keys[] = {
	"plugin", "workers", "stream_workers", "args", "kwargs",
	"queue_timeout", "on_crash", "max_attempts", "item_timeout",
	"max_init_failures", "allow", "user", "group", "rlimit_nofile",
	"rlimit_as", "nice", "env", "env_keep", "mode", "min_spare",
	"max_spare", "worker_idle_timeout", "max_streams", "plugin_options",
	"client_args", "start_seconds", "min_item_rate", "slow_stream",
	"cluster", "spool_full", "spool_wait", NULL
};

static int
rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

static void
rm_dir(void)
{
	if (dir[0] != '\0')
		nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/*
 * A new file each time: truncating or renaming over the old one makes
 * ext4 flush it to disk on close, which slows the fuzzer to a crawl.
 */
static void
write_file(const char *path, const uint8_t *p, size_t n)
{
	int fd;

	if (unlink(path) == -1 && errno != ENOENT) {
		perror(path);
		abort();
	}
	if ((fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC,
	    0600)) == -1) {
		perror(path);
		abort();
	}
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w <= 0) {
			perror(path);
			abort();
		}
		p += w;
		n -= (size_t)w;
	}
	close(fd);
}

static void
setup(void)
{
	const char *tmp = getenv("TMPDIR");
	char path[PATH_MAX];

	if (tmp == NULL || *tmp == '\0')
		tmp = "/tmp";
	snprintf(dir, sizeof dir, "%s/fuzz_conf.XXXXXX", tmp);
	if (mkdtemp(dir) == NULL) {
		perror(dir);
		abort();
	}
	atexit(rm_dir);
	snprintf(conf_file, sizeof conf_file, "%s/consumersd.conf", dir);
	snprintf(pool_file, sizeof pool_file, "%s/pools.d/p.json", dir);
	snprintf(plugin_dir, sizeof plugin_dir, "%s/plugins", dir);
	snprintf(path, sizeof path, "%s/pools.d", dir);
	if (mkdir(path, 0700) == -1 || mkdir(plugin_dir, 0700) == -1) {
		perror(path);
		abort();
	}
	snprintf(path, sizeof path, "%s/x.so", plugin_dir);
	write_file(path, (const uint8_t *)"", 0);
}

/* A group name that loaded stands for the gid stored beside it. */
static int
same_group(const char *name, gid_t gid)
{
	struct group *g = getgrnam(name);

	return g != NULL && g->gr_gid == gid;
}

/* What the daemon relies on in a pool that loaded. */
static void
check_pool(const struct pool_conf *pc)
{
	size_t i;
	const char *k;
	json_t *e;

	FUZZ_CHECK(pc->name != NULL && pc->plugin != NULL);
	FUZZ_CHECK(access(pc->plugin, R_OK) == 0);
	FUZZ_CHECK(pc->workers >= 1 && pc->workers <= CNS_MAX_WORKERS);
	FUZZ_CHECK(pc->stream_workers >= 1 &&
	    pc->stream_workers <= pc->workers);
	FUZZ_CHECK(json_is_array(pc->args) && json_is_object(pc->kwargs));
	FUZZ_CHECK(pc->plugin_options != NULL);
	FUZZ_CHECK(pc->client_args == 0 || pc->client_args == 1);
	FUZZ_CHECK(pc->queue_timeout >= 0 && pc->queue_timeout <= 86400);
	FUZZ_CHECK(pc->min_item_rate >= 0 && pc->min_item_rate <= 1e6);
	FUZZ_CHECK(pc->item_timeout >= 0 && pc->item_timeout <= 86400);
	FUZZ_CHECK(pc->on_crash >= 0 && pc->on_crash < CRASH_NPOLICIES);
	FUZZ_CHECK(pc->max_attempts >= 1 && pc->max_init_failures >= 1);
	FUZZ_CHECK(pc->plugin_line >= 1 && pc->plugin_column >= 1);

	/* The process manager. */
	FUZZ_CHECK(pc->mode >= 0 && pc->mode < MODE_NMODES);
	FUZZ_CHECK(pc->max_spare >= 1 && pc->max_spare <= CNS_MAX_WORKERS &&
	    pc->min_spare <= CNS_MAX_WORKERS);
	if (pc->mode == MODE_DYNAMIC)
		FUZZ_CHECK(pc->min_spare <= pc->max_spare &&
		    pc->max_spare <= pc->workers);
	FUZZ_CHECK(pc->idle_timeout >= 0 && pc->idle_timeout <= 86400);

	/* Who the workers run as: only root switches users. */
	FUZZ_CHECK(pc->group == NULL || pc->user != NULL);
	if (geteuid() != 0)
		FUZZ_CHECK(pc->user == NULL && pc->group == NULL);
	if (pc->user != NULL) {
		struct passwd *pw = getpwnam(pc->user);
		FUZZ_CHECK(pw != NULL && pw->pw_uid == pc->uid);
		FUZZ_CHECK(pc->group != NULL ? same_group(pc->group,
		    pc->gid) : pw->pw_gid == pc->gid);
	}

	/* Their limits and environment. */
	FUZZ_CHECK(pc->rlimit_nofile == 0 || (pc->rlimit_nofile >= 16 &&
	    pc->rlimit_nofile <= 1u << 20));
	FUZZ_CHECK(pc->rlimit_as == 0 || (pc->rlimit_as >= 16u << 20 &&
	    pc->rlimit_as <= UINT64_MAX >> 1));
	FUZZ_CHECK(pc->nice == NICE_INHERITED ||
	    (pc->nice >= -20 && pc->nice <= 19));
	FUZZ_CHECK(json_is_object(pc->env));
	json_object_foreach(pc->env, k, e)
		FUZZ_CHECK(json_is_string(e) && k[0] != '\0' &&
		    strchr(k, '=') == NULL);
	FUZZ_CHECK(json_is_array(pc->env_keep));
	json_array_foreach(pc->env_keep, i, e)
		FUZZ_CHECK(json_is_string(e) && json_string_length(e) > 0);

	/* Who may submit: ids looked up, none without "allow". */
	if (pc->allow)
		FUZZ_CHECK(pc->allow_uids != NULL && pc->allow_gids != NULL);
	else
		FUZZ_CHECK(pc->nallow_uids == 0 && pc->nallow_gids == 0);
	for (i = 0; i < pc->nallow_uids; i++)
		FUZZ_CHECK(getpwuid(pc->allow_uids[i]) != NULL);
	for (i = 0; i < pc->nallow_gids; i++)
		FUZZ_CHECK(getgrgid(pc->allow_gids[i]) != NULL);
}

/* What the daemon relies on in a configuration that loaded. */
static void
check_conf(const struct conf *c)
{
	FUZZ_CHECK(c->socket != NULL && c->socket[0] != '\0');
	FUZZ_CHECK(c->plugin_dir != NULL && strcmp(c->plugin_dir,
	    plugin_dir) == 0);
	FUZZ_CHECK(c->pools_dir != NULL && c->spool_dir != NULL);
	FUZZ_CHECK(c->socket_mode <= 0777);
	FUZZ_CHECK(c->max_item_bytes >= 16 &&
	    c->max_item_bytes <= CNS_MAX_ITEM_BYTES);
	FUZZ_CHECK(c->window_items >= 1 && c->window_bytes >= 4096);
	FUZZ_CHECK(c->log_level >= LOG_LVL_ERR &&
	    c->log_level <= LOG_LVL_DEBUG);
	FUZZ_CHECK(c->header_timeout >= 0 && c->header_timeout <= 3600);
	FUZZ_CHECK(c->idle_timeout >= 0 && c->idle_timeout <= 86400);
	FUZZ_CHECK(c->shutdown_timeout >= 0 && c->shutdown_timeout <= 86400);
	FUZZ_CHECK(c->root_workers == 0 || c->root_workers == 1);
	FUZZ_CHECK(c->max_workers <= 1u << 20);
	FUZZ_CHECK(c->max_conn_per_uid <= 1000000);
	FUZZ_CHECK(c->admin_group == NULL || same_group(c->admin_group,
	    c->admin_gid));
	FUZZ_CHECK(c->socket_group == NULL || same_group(c->socket_group,
	    c->socket_gid));
	FUZZ_CHECK(c->npools >= 1);
	for (size_t i = 0; i < c->npools; i++)
		check_pool(&c->pools[i]);
}

/*
 * conf_keypos() on raw text: a key it finds starts where it says.  Errors
 * are only placed in text jansson parsed, so only then must the key be
 * complete and in the object; in broken text a string cut short by the
 * end may match.
 */
static void
check_keypos(const uint8_t *text, size_t len, const char *const *keys)
{
	json_t *root = json_loadb((const char *)text, len, 0, NULL);

	if (!json_is_object(root)) {
		json_decref(root);
		root = NULL;
	}
	for (const char *const *k = keys; *k != NULL; k++) {
		size_t klen = strlen(*k), at = 0;
		int line = 0, col = 0, l = 1;

		if (conf_keypos((const char *)text, len, *k, &line, &col) ==
		    -1) {
			FUZZ_CHECK(line == 0 && col == 0);
			continue;
		}
		FUZZ_CHECK(line >= 1 && col >= 1);
		while (l < line && at < len)
			if (text[at++] == '\n')
				l++;
		FUZZ_CHECK(l == line);
		at += (size_t)col - 1;
		FUZZ_CHECK(at + klen + 1 <= len);
		FUZZ_CHECK(text[at] == '"' && memcmp(text + at + 1, *k,
		    klen) == 0);
		if (root != NULL) {
			FUZZ_CHECK(at + klen + 2 <= len &&
			    text[at + klen + 1] == '"');
			FUZZ_CHECK(json_object_get(root, *k) != NULL);
		}
	}
	json_decref(root);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char default_pool[] = "{\"plugin\": \"x\"}";
	struct conf_overrides ov = { NULL, plugin_dir };
	const uint8_t *nul = memchr(data, '\0', size);
	size_t dlen = nul != NULL ? (size_t)(nul - data) : size;
	struct conf *c;
	json_t *errors;

	if (dir[0] == '\0')
		setup();
	write_file(conf_file, data, dlen);
	if (nul != NULL)
		write_file(pool_file, nul + 1, size - dlen - 1);
	else
		write_file(pool_file, (const uint8_t *)default_pool,
		    sizeof default_pool - 1);
	check_keypos(data, dlen, daemon_keys);
	if (nul != NULL)
		check_keypos(nul + 1, size - dlen - 1, pool_keys);

	if ((errors = json_array()) == NULL)
		abort();
	c = conf_load(conf_file, &ov, errors);
	if (c != NULL) {
		FUZZ_CHECK(json_array_size(errors) == 0);
		check_conf(c);
		conf_free(c);
	} else {
		/* A refused config always says why. */
		size_t i;
		json_t *e;
		FUZZ_CHECK(json_array_size(errors) > 0);
		json_array_foreach(errors, i, e)
			FUZZ_CHECK(json_is_string(e));
	}
	json_decref(errors);
	return 0;
}
