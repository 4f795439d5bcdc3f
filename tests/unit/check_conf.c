/*
 * check_conf.c - unit tests for src/conf.c.  Each test writes a daemon
 * config, pool files and empty stand-in plugins into a fresh mkdtemp()
 * directory and loads it with conf_load().
 *
 * Bad files are written with an '@' where the error must point: the
 * helper removes it and turns its offset into the expected line:column.
 */
/* config.h (included first by the build) defines _GNU_SOURCE. */
#include <sys/stat.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <check.h>
#include <jansson.h>

#include "consumersd.h"

static char	 dir[256];
static char	 conf_path[512];
static json_t	*errors;

/* dir/rel, in a static ring so a few can be used in one call. */
static const char *
at(const char *fmt, ...)
{
	static char ring[8][1024];
	static int next;
	char rel[512];
	char *out = ring[next++ % 8];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(rel, sizeof rel, fmt, ap);
	va_end(ap);
	snprintf(out, 1024, "%s/%s", dir, rel);
	return out;
}

static void
mkdirs_for(const char *path)
{
	char buf[PATH_MAX];

	snprintf(buf, sizeof buf, "%s", path);
	for (char *p = buf + strlen(dir) + 1; (p = strchr(p, '/')) != NULL;
	    p++) {
		*p = '\0';
		if (mkdir(buf, 0755) == -1 && errno != EEXIST)
			ck_abort_msg("mkdir %s: %s", buf, strerror(errno));
		*p = '/';
	}
}

/* Write `text` to dir/rel, creating directories on the way. */
static const char *
put(const char *rel, const char *text)
{
	const char *path = at("%s", rel);
	FILE *fp;

	mkdirs_for(path);
	fp = fopen(path, "w");
	ck_assert_msg(fp != NULL, "%s: %s", path, strerror(errno));
	fputs(text, fp);
	ck_assert_int_eq(fclose(fp), 0);
	return path;
}

/*
 * `marked` less its '@' marker (malloc'd), and where the marker stood as
 * 1-based line and column.
 */
static char *
unmark(const char *marked, int *line, int *col)
{
	const char *m = strchr(marked, '@');
	char *clean;

	ck_assert_msg(m != NULL, "no marker in %s", marked);
	*line = 1;
	*col = 1;
	for (const char *q = marked; q < m; q++) {
		if (*q == '\n') {
			(*line)++;
			*col = 1;
		} else
			(*col)++;
	}
	clean = malloc(strlen(marked));
	memcpy(clean, marked, (size_t)(m - marked));
	strcpy(clean + (m - marked), m + 1);
	return clean;
}

/* Write a marked text, without its marker. */
static void
put_marked(const char *rel, const char *marked, int *line, int *col)
{
	char *clean = unmark(marked, line, col);

	put(rel, clean);
	free(clean);
}

static int
rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

/*
 * Each tcase works under one base directory, made and removed by an
 * unchecked fixture: that runs in the parent, so a test that fails in
 * CK_FORK mode (and exits without its teardown) leaves nothing behind.
 */
static char	 base[200];

static void
base_setup(void)
{
	snprintf(base, sizeof base, "%s/check_conf.XXXXXX",
	    getenv("TMPDIR") != NULL ? getenv("TMPDIR") : "/tmp");
	if (mkdtemp(base) == NULL) {
		perror(base);
		abort();
	}
}

static void
base_teardown(void)
{
	nftw(base, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static void
setup(void)
{
	snprintf(dir, sizeof dir, "%s/t.XXXXXX", base);
	ck_assert_ptr_nonnull(mkdtemp(dir));
	snprintf(conf_path, sizeof conf_path, "%s/consumersd.conf", dir);
	errors = json_array();
	/* Stand-in plugins: conf only checks they are readable. */
	put("plugins/good.so", "");
	put("plugins/other.so", "");
	log_setlevel(LOG_LVL_ERR);
}

static void
teardown(void)
{
	json_decref(errors);
	errors = NULL;
	nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* A pool file naming the good plugin by path: fine as it is. */
static const char *
good_pool_text(void)
{
	static char buf[PATH_MAX + 64];
	snprintf(buf, sizeof buf, "{\"plugin\": \"%s\"}\n",
	    at("plugins/good.so"));
	return buf;
}

static struct conf *
load(const struct conf_overrides *ov)
{
	return conf_load(conf_path, ov, errors);
}

/* The errors as text, for messages (static: a failed assertion must not
 * leak it). */
static const char *
errors_text(void)
{
	static char buf[8192];
	size_t n = json_dumpb(errors, buf, sizeof buf - 1, JSON_COMPACT);

	buf[n < sizeof buf ? n : sizeof buf - 1] = '\0';
	return buf;
}

static void
assert_no_errors(const struct conf *c)
{
	ck_assert_msg(c != NULL && json_array_size(errors) == 0,
	    "load failed: %s", errors_text());
}

/*
 * The load failed with exactly one error, at file:line:col, saying
 * something that contains `what`.
 */
static void
assert_error_at(struct conf *c, const char *file, int line, int col,
    const char *what)
{
	char prefix[1200];
	const char *e;

	if (c != NULL)
		conf_free(c);
	ck_assert_msg(c == NULL, "loaded a bad config");
	ck_assert_msg(json_array_size(errors) == 1, "%zu errors: %s",
	    json_array_size(errors), errors_text());
	e = json_string_value(json_array_get(errors, 0));
	ck_assert_ptr_nonnull(e);
	snprintf(prefix, sizeof prefix, "%s:%d:%d: ", file, line, col);
	ck_assert_msg(strncmp(e, prefix, strlen(prefix)) == 0,
	    "error \"%s\" does not start with \"%s\"", e, prefix);
	ck_assert_msg(strstr(e + strlen(prefix), what) != NULL,
	    "error \"%s\" does not mention \"%s\"", e, what);
}

/* Some error in the list starts with `prefix` and mentions `what`. */
static int
has_error(const char *prefix, const char *what)
{
	size_t i;
	json_t *v;

	json_array_foreach(errors, i, v) {
		const char *e = json_string_value(v);
		if (e != NULL && strncmp(e, prefix, strlen(prefix)) == 0 &&
		    strstr(e, what) != NULL)
			return 1;
	}
	return 0;
}

/* ---- good files ---- */

START_TEST(test_defaults)
{
	struct conf *c;
	struct pool_conf *pc;

	put("consumersd.conf", "{}\n");
	put("pools.d/p.json", good_pool_text());
	c = load(NULL);
	assert_no_errors(c);
	ck_assert_str_eq(c->file, conf_path);
	ck_assert_str_eq(c->socket, CNS_DEFAULT_SOCKET);
	ck_assert_uint_eq(c->socket_mode, 0660);
	ck_assert_str_eq(c->plugin_dir, CNS_PLUGIN_DIR);
	ck_assert_str_eq(c->pools_dir, at("pools.d"));
	ck_assert_uint_eq(c->max_item_bytes, 1u << 20);
	ck_assert_uint_eq(c->window_bytes, 1u << 20);
	ck_assert_uint_eq(c->window_items, 8192);
	ck_assert_int_eq(c->log_level, LOG_LVL_INFO);
	ck_assert_uint_eq(c->npools, 1);
	pc = &c->pools[0];
	ck_assert_str_eq(pc->name, "p");
	ck_assert_str_eq(pc->file, at("pools.d/p.json"));
	ck_assert_str_eq(pc->plugin, at("plugins/good.so"));
	ck_assert_uint_eq(pc->workers, 1);
	ck_assert_uint_eq(pc->stream_workers, 1);
	ck_assert(json_is_array(pc->args));
	ck_assert_uint_eq(json_array_size(pc->args), 0);
	ck_assert(json_is_object(pc->kwargs));
	ck_assert_uint_eq(json_object_size(pc->kwargs), 0);
	ck_assert(pc->queue_timeout == 30.0);
	ck_assert_int_eq(pc->spool_full, SPOOL_FULL_PAUSE);
	ck_assert(pc->spool_wait == 30.0);
	ck_assert_ptr_eq(conf_pool(c, "p"), pc);
	ck_assert_ptr_null(conf_pool(c, "q"));
	conf_free(c);
}
END_TEST

START_TEST(test_stream_workers_default)
{
	char text[PATH_MAX + 64];
	struct conf *c;

	put("consumersd.conf", "{}");
	snprintf(text, sizeof text, "{\"plugin\": \"%s\", \"workers\": 4}",
	    at("plugins/good.so"));
	put("pools.d/p.json", text);
	c = load(NULL);
	assert_no_errors(c);
	ck_assert_uint_eq(c->pools[0].workers, 4);
	ck_assert_uint_eq(c->pools[0].stream_workers, 4);
	conf_free(c);
}
END_TEST

START_TEST(test_all_keys)
{
	struct conf *c;
	struct pool_conf *pc;
	json_t *want;

	put("consumersd.conf",
	    "{\n"
	    "  \"socket\": \"run/d.sock\",\n"
	    "  \"socket_mode\": \"0600\",\n"
	    "  \"plugin_dir\": \"lib\",\n"
	    "  \"pools_dir\": \"etc/mypools\",\n"
	    "  \"max_item_bytes\": 16,\n"
	    "  \"window_bytes\": 4096,\n"
	    "  \"window_items\": 1,\n"
	    "  \"log_level\": \"debug\"\n"
	    "}\n");
	put("lib/x.so", "");
	put("etc/mypools/main.json",
	    "{\n"
	    "  \"plugin\": \"x\",\n"
	    "  \"workers\": 3,\n"
	    "  \"stream_workers\": 2,\n"
	    "  \"args\": [1, \"a\"],\n"
	    "  \"kwargs\": {\"k\": true, \"n\": {\"deep\": [null]}},\n"
	    "  \"queue_timeout\": 2.5,\n"
	    "  \"spool_full\": \"continue\",\n"
	    "  \"spool_wait\": 0.5\n"
	    "}\n");
	c = load(NULL);
	assert_no_errors(c);
	ck_assert_str_eq(c->socket, at("run/d.sock"));
	ck_assert_uint_eq(c->socket_mode, 0600);
	ck_assert_str_eq(c->plugin_dir, at("lib"));
	ck_assert_str_eq(c->pools_dir, at("etc/mypools"));
	ck_assert_uint_eq(c->max_item_bytes, 16);
	ck_assert_uint_eq(c->window_bytes, 4096);
	ck_assert_uint_eq(c->window_items, 1);
	ck_assert_int_eq(c->log_level, LOG_LVL_DEBUG);
	ck_assert_uint_eq(c->npools, 1);
	pc = conf_pool(c, "main");
	ck_assert_ptr_nonnull(pc);
	ck_assert_str_eq(pc->file, at("etc/mypools/main.json"));
	/* A plugin name is NAME.so in plugin_dir. */
	ck_assert_str_eq(pc->plugin, at("lib/x.so"));
	ck_assert_uint_eq(pc->workers, 3);
	ck_assert_uint_eq(pc->stream_workers, 2);
	want = json_pack("[i,s]", 1, "a");
	ck_assert(json_equal(pc->args, want));
	json_decref(want);
	want = json_pack("{s:b,s:{s:[n]}}", "k", 1, "n", "deep");
	ck_assert(json_equal(pc->kwargs, want));
	json_decref(want);
	ck_assert(pc->queue_timeout == 2.5);
	ck_assert_int_eq(pc->spool_full, SPOOL_FULL_CONTINUE);
	ck_assert(pc->spool_wait == 0.5);
	conf_free(c);
}
END_TEST

START_TEST(test_upper_limits)
{
	char text[PATH_MAX + 128];
	struct conf *c;

	put("consumersd.conf", "{\"max_item_bytes\": 67108864, "
	    "\"window_bytes\": 67108864, \"window_items\": 1048576, "
	    "\"socket_mode\": \"777\", \"log_level\": \"error\"}");
	snprintf(text, sizeof text, "{\"plugin\": \"%s\", \"workers\": 1024, "
	    "\"stream_workers\": 1024, \"queue_timeout\": 86400}",
	    at("plugins/good.so"));
	put("pools.d/p.json", text);
	c = load(NULL);
	assert_no_errors(c);
	ck_assert_uint_eq(c->max_item_bytes, CNS_MAX_ITEM_BYTES);
	ck_assert_uint_eq(c->window_bytes, 64u << 20);
	ck_assert_uint_eq(c->window_items, 1u << 20);
	ck_assert_uint_eq(c->socket_mode, 0777);
	ck_assert_int_eq(c->log_level, LOG_LVL_ERR);
	ck_assert_uint_eq(c->pools[0].workers, CNS_MAX_WORKERS);
	ck_assert_uint_eq(c->pools[0].stream_workers, CNS_MAX_WORKERS);
	ck_assert(c->pools[0].queue_timeout == 86400.0);
	conf_free(c);
}
END_TEST

/* A relative plugin path is relative to the pool file, not the cwd. */
START_TEST(test_plugin_relative_path)
{
	char a[PATH_MAX], b[PATH_MAX];
	struct conf *c;

	put("consumersd.conf", "{}");
	put("pools.d/sub/local.so", "");
	put("pools.d/p.json", "{\"plugin\": \"../plugins/good.so\"}");
	put("pools.d/q.json", "{\"plugin\": \"sub/local.so\"}");
	c = load(NULL);
	assert_no_errors(c);
	ck_assert_uint_eq(c->npools, 2);
	ck_assert_ptr_nonnull(realpath(conf_pool(c, "p")->plugin, a));
	ck_assert_ptr_nonnull(realpath(at("plugins/good.so"), b));
	ck_assert_str_eq(a, b);
	ck_assert_str_eq(conf_pool(c, "q")->plugin, at("pools.d/sub/local.so"));
	conf_free(c);
}
END_TEST

START_TEST(test_plugin_by_name)
{
	struct conf *c;

	put("consumersd.conf", "{\"plugin_dir\": \"plugins\"}");
	put("pools.d/p.json", "{\"plugin\": \"other\"}");
	c = load(NULL);
	assert_no_errors(c);
	ck_assert_str_eq(c->pools[0].plugin, at("plugins/other.so"));
	conf_free(c);
}
END_TEST

/* The config file named without a directory: paths stay relative. */
START_TEST(test_relative_conf_file)
{
	int cwd = open(".", O_RDONLY | O_DIRECTORY);
	struct conf *c;

	ck_assert_int_ge(cwd, 0);
	put("consumersd.conf", "{\"plugin_dir\": \"plugins\"}");
	put("pools.d/p.json", "{\"plugin\": \"good\"}");
	ck_assert_int_eq(chdir(dir), 0);
	c = conf_load("consumersd.conf", NULL, errors);
	ck_assert_int_eq(fchdir(cwd), 0);
	close(cwd);
	assert_no_errors(c);
	ck_assert_str_eq(c->pools_dir, "pools.d");
	ck_assert_str_eq(c->plugin_dir, "plugins");
	ck_assert_str_eq(c->pools[0].plugin, "plugins/good.so");
	conf_free(c);
}
END_TEST

START_TEST(test_overrides)
{
	struct conf_overrides ov = { NULL, NULL };
	struct conf *c;

	put("consumersd.conf", "{\"socket\": \"file.sock\", "
	    "\"plugin_dir\": \"plugins\"}");
	put("elsewhere/only.so", "");
	put("pools.d/p.json", "{\"plugin\": \"only\"}");
	/* Without the override the plugin is not in plugin_dir. */
	c = load(&ov);
	ck_assert_ptr_null(c);
	ck_assert(has_error(at("pools.d/p.json:1:2: "), "only"));
	json_array_clear(errors);

	ov.socket = "/run/elsewhere.sock";
	ov.plugin_dir = at("elsewhere");
	c = load(&ov);
	assert_no_errors(c);
	ck_assert_str_eq(c->socket, "/run/elsewhere.sock");
	ck_assert_str_eq(c->plugin_dir, at("elsewhere"));
	ck_assert_str_eq(c->pools[0].plugin, at("elsewhere/only.so"));
	conf_free(c);

	/* An override left NULL keeps the file's value. */
	put("pools.d/p.json", "{\"plugin\": \"good\"}");
	ov.plugin_dir = NULL;
	c = load(&ov);
	assert_no_errors(c);
	ck_assert_str_eq(c->socket, "/run/elsewhere.sock");
	ck_assert_str_eq(c->plugin_dir, at("plugins"));
	ov.socket = NULL;
	conf_free(c);
	c = load(&ov);
	assert_no_errors(c);
	ck_assert_str_eq(c->socket, at("file.sock"));
	conf_free(c);
}
END_TEST

START_TEST(test_several_pools)
{
	struct conf *c;

	put("consumersd.conf", "{\"plugin_dir\": \"plugins\"}");
	put("pools.d/zeta.json", "{\"plugin\": \"good\"}");
	put("pools.d/a.b-c_9.json", "{\"plugin\": \"other\"}");
	put("pools.d/Mid.json", "{\"plugin\": \"good\", \"workers\": 2}");
	/* Not pool files. */
	put("pools.d/README", "not json");
	put("pools.d/.hidden.json", "not json");
	put("pools.d/old.json~", "not json");
	put("pools.d/.json", "not json");
	c = load(NULL);
	assert_no_errors(c);
	ck_assert_uint_eq(c->npools, 3);
	ck_assert_ptr_nonnull(conf_pool(c, "zeta"));
	ck_assert_ptr_nonnull(conf_pool(c, "a.b-c_9"));
	ck_assert_uint_eq(conf_pool(c, "Mid")->workers, 2);
	ck_assert_str_eq(conf_pool(c, "a.b-c_9")->plugin,
	    at("plugins/other.so"));
	ck_assert_ptr_null(conf_pool(c, "README"));
	ck_assert_ptr_null(conf_pool(c, ".hidden"));
	conf_free(c);
}
END_TEST

/* ---- bad files ---- */

/* A bad daemon config (with a good pool), marked where the error is. */
static void
check_bad_daemon(const char *marked, const char *what)
{
	int line, col;
	struct conf *c;

	json_array_clear(errors);
	put_marked("consumersd.conf", marked, &line, &col);
	put("pools.d/p.json", good_pool_text());
	c = load(NULL);
	assert_error_at(c, conf_path, line, col, what);
}

/* A bad pool file (the good plugin is at plugins/good.so). */
static void
check_bad_pool(const char *marked, const char *what)
{
	int line, col;
	struct conf *c;

	json_array_clear(errors);
	put("consumersd.conf", "{\"plugin_dir\": \"plugins\"}");
	put_marked("pools.d/p.json", marked, &line, &col);
	c = load(NULL);
	assert_error_at(c, at("pools.d/p.json"), line, col, what);
}

START_TEST(test_unknown_key)
{
	check_bad_daemon("{\n  \"log_level\": \"info\",\n  @\"bogus\": 1\n}\n",
	    "\"bogus\"");
	/* After a nested value full of look-alikes, on the same line. */
	check_bad_daemon("{\"pools_dir\": \"pools.d\", \"socket\": \"a,\\\"}b\","
	    " @\"sockets\": \"x\"}", "\"sockets\"");
	check_bad_pool("{\n  \"plugin\": \"good\",\n  \"kwargs\": {\"colour\": "
	    "1},\n\t@\"colour\": \"red\"\n}\n", "\"colour\"");
}
END_TEST

START_TEST(test_two_unknown_keys)
{
	struct conf *c;

	put("consumersd.conf", "{\n  \"alpha\": 1,\n    \"beta\": 2\n}");
	put("pools.d/p.json", good_pool_text());
	c = load(NULL);
	ck_assert_ptr_null(c);
	ck_assert_uint_eq(json_array_size(errors), 2);
	ck_assert(has_error(at("consumersd.conf:2:3: "), "alpha"));
	ck_assert(has_error(at("consumersd.conf:3:5: "), "beta"));
}
END_TEST

START_TEST(test_wrong_type)
{
	check_bad_pool("{\n  \"plugin\": \"good\",\n  @\"workers\": \"two\"\n}",
	    "\"workers\"");
	check_bad_pool("{\"plugin\": \"good\", @\"workers\": 2.0}",
	    "\"workers\"");
	check_bad_pool("{\"plugin\": \"good\",\n @\"args\": {}}", "\"args\"");
	check_bad_pool("{\"plugin\": \"good\",\n @\"kwargs\": []}",
	    "\"kwargs\"");
	check_bad_pool("{\"plugin\": \"good\",\n @\"queue_timeout\": \"soon\"}",
	    "\"queue_timeout\"");
	check_bad_pool("{@\"plugin\": 7}", "\"plugin\"");
	check_bad_pool("{\n@\"plugin\": \"\"}", "\"plugin\"");
	check_bad_daemon("{\n  \"socket_mode\": \"0660\",\n  @\"socket\": 5\n}",
	    "\"socket\"");
	check_bad_daemon("{\"log_level\": \"info\", @\"window_items\": true}",
	    "\"window_items\"");
	check_bad_daemon("{@\"plugin_dir\": null}", "\"plugin_dir\"");
	check_bad_daemon("{\n\n  @\"pools_dir\": [\"pools.d\"]}", "\"pools_dir\"");
}
END_TEST

START_TEST(test_out_of_range)
{
	check_bad_pool("{\n  \"plugin\": \"good\",\n  @\"workers\": 0\n}",
	    "\"workers\"");
	check_bad_pool("{\n  \"plugin\": \"good\",\n  @\"workers\": 1025\n}",
	    "\"workers\"");
	check_bad_pool("{\n  \"plugin\": \"good\",\n  @\"workers\": -1\n}",
	    "\"workers\"");
	check_bad_pool("{\"plugin\": \"good\", @\"stream_workers\": 0}",
	    "\"stream_workers\"");
	check_bad_pool("{\"plugin\": \"good\", @\"queue_timeout\": -0.5}",
	    "\"queue_timeout\"");
	check_bad_pool("{\"plugin\": \"good\", @\"queue_timeout\": 86401}",
	    "\"queue_timeout\"");
	check_bad_pool("{\"plugin\": \"good\", @\"spool_wait\": -1}",
	    "\"spool_wait\"");
	check_bad_pool("{\"plugin\": \"good\", @\"spool_wait\": 86401}",
	    "\"spool_wait\"");
	check_bad_pool("{\"plugin\": \"good\", @\"spool_full\": \"drop\"}",
	    "\"spool_full\"");
	check_bad_pool("{\"plugin\": \"good\", @\"spool_full\": true}",
	    "\"spool_full\"");
	check_bad_daemon("{\n  @\"max_item_bytes\": 15\n}", "\"max_item_bytes\"");
	check_bad_daemon("{\n  @\"max_item_bytes\": 67108865\n}",
	    "\"max_item_bytes\"");
	check_bad_daemon("{\n  @\"window_bytes\": 4095\n}", "\"window_bytes\"");
	check_bad_daemon("{\n  @\"window_items\": 0\n}", "\"window_items\"");
	check_bad_daemon("{\n  @\"window_items\": 1048577\n}",
	    "\"window_items\"");
}
END_TEST

START_TEST(test_stream_workers_exceed)
{
	check_bad_pool("{\n  \"plugin\": \"good\",\n  \"workers\": 2,\n"
	    "  @\"stream_workers\": 3\n}", "\"stream_workers\"");
	/* Wherever the two stand. */
	check_bad_pool("{@\"stream_workers\": 2, \"plugin\": \"good\"}",
	    "\"stream_workers\"");
}
END_TEST

START_TEST(test_syntax_error)
{
	/* jansson's position: the (one-character) token it stopped at. */
	check_bad_daemon("{\n  \"log_level\": \"info\",\n  \"socket\" @5\n}",
	    "':' expected");
	check_bad_daemon("{\n  \"log_level\": \"info\",\n@}", "expected");
	check_bad_pool("{\n  \"plugin\": \"good\",\n  \"workers\": @:2\n}",
	    "unexpected");
	check_bad_pool("{\"plugin\": \"good\", \"workers\": 2@]", "expected");
}
END_TEST

/* The second of two equal keys is where the problem is. */
START_TEST(test_duplicate_key)
{
	check_bad_pool("{\n  \"plugin\": \"good\",\n  \"workers\": 1,\n"
	    "  @\"workers\": 2\n}", "duplicate");
}
END_TEST

START_TEST(test_not_an_object)
{
	check_bad_daemon("@[1, 2]\n", "object");
	check_bad_pool("@[{\"plugin\": \"good\"}]", "object");
}
END_TEST

START_TEST(test_missing_plugin)
{
	check_bad_pool("@{\n  \"workers\": 2\n}\n", "\"plugin\"");
	check_bad_pool("@{}", "\"plugin\"");
}
END_TEST

START_TEST(test_plugin_not_found)
{
	/* By name: NAME.so is not in plugin_dir. */
	check_bad_pool("{\n  \"workers\": 1,\n  @\"plugin\": \"nope\"\n}",
	    "nope");
	ck_assert(strstr(json_string_value(json_array_get(errors, 0)),
	    at("plugins/nope.so")) != NULL);
	/* By path, relative to the pool file. */
	check_bad_pool("{ @\"plugin\": \"../plugins/nope.so\" }", "nope.so");
	check_bad_pool("{ @\"plugin\": \"/nonexistent/x.so\" }", "x.so");
	/* A name, with a plugin_dir that does not exist. */
	json_array_clear(errors);
	put("consumersd.conf", "{\"plugin_dir\": \"no-such-dir\"}");
	put("pools.d/p.json", "{\"workers\": 1, \"plugin\": \"good\"}");
	ck_assert_ptr_null(load(NULL));
	ck_assert_uint_eq(json_array_size(errors), 1);
	ck_assert(has_error(at("pools.d/p.json:1:16: "), "good"));
}
END_TEST

START_TEST(test_bad_socket_mode)
{
	const char *bad[] = {
		"\"0999\"", "\"\"", "\"rw-rw----\"", "660", "\"01000\"",
		"\"-1\"", "\"0660x\"", "null"
	};
	char text[128];

	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		snprintf(text, sizeof text, "{\n  \"log_level\": \"info\",\n"
		    "  @\"socket_mode\": %s\n}\n", bad[i]);
		check_bad_daemon(text, "socket_mode");
	}
}
END_TEST

START_TEST(test_bad_log_level)
{
	const char *bad[] = { "\"verbose\"", "\"INFO\"", "\"\"", "3", "\"warn\"" };
	char text[128];

	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		snprintf(text, sizeof text, "{\"socket_mode\": \"0660\",\n"
		    "    @\"log_level\": %s}", bad[i]);
		check_bad_daemon(text, "log_level");
	}
}
END_TEST

START_TEST(test_empty_pools_dir)
{
	struct conf *c;
	char prefix[PATH_MAX];

	put("consumersd.conf", "{}");
	ck_assert_int_eq(mkdir(at("pools.d"), 0755), 0);
	put("pools.d/README", "no pools here");
	c = load(NULL);
	ck_assert_ptr_null(c);
	ck_assert_uint_eq(json_array_size(errors), 1);
	snprintf(prefix, sizeof prefix, "%s: ", at("pools.d"));
	ck_assert(has_error(prefix, "no pools"));

	/* A pools_dir that is not there. */
	json_array_clear(errors);
	put("consumersd.conf", "{\"pools_dir\": \"missing\"}");
	c = load(NULL);
	ck_assert_ptr_null(c);
	ck_assert_uint_eq(json_array_size(errors), 1);
	snprintf(prefix, sizeof prefix, "%s: ", at("missing"));
	ck_assert(has_error(prefix, "pools directory"));
}
END_TEST

static const char *
pool_rel(const char *fn)
{
	static char rel[PATH_MAX];
	snprintf(rel, sizeof rel, "pools.d/%s", fn);
	return rel;
}

START_TEST(test_bad_pool_name)
{
	char name[80], prefix[PATH_MAX];
	struct conf *c;

	put("consumersd.conf", "{}");
	put("pools.d/ok.json", good_pool_text());
	put("pools.d/bad name.json", good_pool_text());
	c = load(NULL);
	ck_assert_ptr_null(c);
	ck_assert_uint_eq(json_array_size(errors), 1);
	snprintf(prefix, sizeof prefix, "%s:0:0: ", at("pools.d/bad name.json"));
	ck_assert(has_error(prefix, "pool name"));

	/* 64 characters are fine, 65 are not. */
	json_array_clear(errors);
	remove(at("pools.d/bad name.json"));
	memset(name, 'n', 64);
	strcpy(name + 64, ".json");
	put(pool_rel(name), good_pool_text());
	c = load(NULL);
	assert_no_errors(c);
	ck_assert_uint_eq(c->npools, 2);
	conf_free(c);
	memset(name, 'n', 65);
	strcpy(name + 65, ".json");
	put(pool_rel(name), good_pool_text());
	c = load(NULL);
	ck_assert_ptr_null(c);
	ck_assert_uint_eq(json_array_size(errors), 1);
	snprintf(prefix, sizeof prefix, "%s:0:0: ", at("pools.d/%s", name));
	ck_assert(has_error(prefix, "pool name"));
}
END_TEST

/* Every bad pool file is reported, each in its own file. */
START_TEST(test_errors_in_two_pools)
{
	struct conf *c;

	put("consumersd.conf", "{\"plugin_dir\": \"plugins\"}");
	put("pools.d/a.json", "{\"plugin\": \"good\",\n \"workers\": \"x\"}");
	put("pools.d/b.json", "{\"plugin\": \"good\"}");
	put("pools.d/c.json", "{\"plugin\": \"good\",\n\n   \"wrkers\": 2}");
	c = load(NULL);
	ck_assert_ptr_null(c);
	ck_assert_uint_eq(json_array_size(errors), 2);
	ck_assert(has_error(at("pools.d/a.json:2:2: "), "workers"));
	ck_assert(has_error(at("pools.d/c.json:3:4: "), "wrkers"));
}
END_TEST

START_TEST(test_missing_conf_file)
{
	char prefix[PATH_MAX];
	struct conf *c;

	c = load(NULL);
	ck_assert_ptr_null(c);
	ck_assert_uint_eq(json_array_size(errors), 1);
	snprintf(prefix, sizeof prefix, "%s:", conf_path);
	ck_assert(has_error(prefix, "cannot open"));
}
END_TEST

/* ---- conf_keypos ---- */

static void
assert_keypos(const char *marked, const char *key)
{
	int want_line, want_col, line = -7, col = -7, r;
	char *text = unmark(marked, &want_line, &want_col);

	r = conf_keypos(text, strlen(text), key, &line, &col);
	free(text);
	ck_assert_msg(r == 0, "key %s not found in %s", key, marked);
	ck_assert_msg(line == want_line && col == want_col,
	    "key %s at %d:%d, want %d:%d in %s", key, line, col, want_line,
	    want_col, marked);
}

static void
assert_no_keypos(const char *text, size_t len, const char *key)
{
	int line = -7, col = -9;

	ck_assert_msg(conf_keypos(text, len, key, &line, &col) == -1,
	    "key %s found in %.*s", key, (int)len, text);
	ck_assert_int_eq(line, -7);
	ck_assert_int_eq(col, -9);
}

START_TEST(test_keypos)
{
	assert_keypos("{@\"a\": 1}", "a");
	assert_keypos("{\"a\": 1, @\"b\": 2}", "b");
	assert_keypos("\n\n  {\n\t\"a\" :\n 1 ,\n   @\"key\"\t: 3}", "key");
	/* Values with braces, brackets, commas and quotes in strings. */
	assert_keypos("{\"a\": {\"x\": \"}\", \"y\": [1, {\"z\": \",\"}]}, "
	    "\"b\": \"he said \\\"hi\\\", {ok}]\", \"c\": \"\\\\\", "
	    "@\"key\": 1}", "key");
	/* A key with an escaped quote, and a string ending in a
	 * backslash. */
	assert_keypos("{\"we\\\"ird\": \"\\\\\",\n  @\"k\": [\"]\", \"\\\"\"]}",
	    "k");
	/* The top-level key, not the same name nested before it. */
	assert_keypos("{\"kwargs\": {\"workers\": 1, \"x\": {\"workers\": 2}},"
	    "\n  @\"workers\": 3}", "workers");
	/* The first of duplicates. */
	assert_keypos("{@\"d\": 1, \"d\": 2}", "d");
	/* Over several lines of nesting. */
	assert_keypos("{\n  \"args\": [\n    {\"a\": \"{[\"},\n    \"]}\"\n  ],\n"
	    "  @\"plugin\": \"x\"\n}\n", "plugin");
}
END_TEST

START_TEST(test_keypos_not_found)
{
	const char *t;

	t = "{\"kwargs\": {\"workers\": 1}}";
	assert_no_keypos(t, strlen(t), "workers");
	t = "{\"workers\": 1}";
	assert_no_keypos(t, strlen(t), "work");
	assert_no_keypos(t, strlen(t), "workers2");
	t = "{\"a\": \"\\\"b\\\": 1\"}";	/* "b" only inside a string */
	assert_no_keypos(t, strlen(t), "b");
	t = "[\"a\", \"b\"]";
	assert_no_keypos(t, strlen(t), "a");
	assert_no_keypos("", 0, "a");
	/* The length is respected: the key lies past it. */
	t = "{\"a\": 1, \"b\": 2}";
	assert_no_keypos(t, 9, "b");
	/* Broken text ends the search without a crash. */
	t = "{\"a\" 1, \"b\": 2}";
	assert_no_keypos(t, strlen(t), "b");
	t = "{\"a\": \"unterminated";
	assert_no_keypos(t, strlen(t), "b");
	t = "{\"a\": \"ends in a backslash\\";
	assert_no_keypos(t, strlen(t), "b");
}
END_TEST

static Suite *
conf_suite(void)
{
	Suite *s = suite_create("conf");
	TCase *tc;

	tc = tcase_create("good");
	tcase_add_unchecked_fixture(tc, base_setup, base_teardown);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_defaults);
	tcase_add_test(tc, test_stream_workers_default);
	tcase_add_test(tc, test_all_keys);
	tcase_add_test(tc, test_upper_limits);
	tcase_add_test(tc, test_plugin_relative_path);
	tcase_add_test(tc, test_plugin_by_name);
	tcase_add_test(tc, test_relative_conf_file);
	tcase_add_test(tc, test_overrides);
	tcase_add_test(tc, test_several_pools);
	suite_add_tcase(s, tc);

	tc = tcase_create("bad");
	tcase_add_unchecked_fixture(tc, base_setup, base_teardown);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_unknown_key);
	tcase_add_test(tc, test_two_unknown_keys);
	tcase_add_test(tc, test_wrong_type);
	tcase_add_test(tc, test_out_of_range);
	tcase_add_test(tc, test_stream_workers_exceed);
	tcase_add_test(tc, test_syntax_error);
	tcase_add_test(tc, test_duplicate_key);
	tcase_add_test(tc, test_not_an_object);
	tcase_add_test(tc, test_missing_plugin);
	tcase_add_test(tc, test_plugin_not_found);
	tcase_add_test(tc, test_bad_socket_mode);
	tcase_add_test(tc, test_bad_log_level);
	tcase_add_test(tc, test_empty_pools_dir);
	tcase_add_test(tc, test_bad_pool_name);
	tcase_add_test(tc, test_errors_in_two_pools);
	tcase_add_test(tc, test_missing_conf_file);
	suite_add_tcase(s, tc);

	tc = tcase_create("keypos");
	tcase_add_test(tc, test_keypos);
	tcase_add_test(tc, test_keypos_not_found);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(conf_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed != 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
