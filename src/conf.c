/*
 * conf.c - reads consumersd.conf and pools.d/NAME.json into a fresh struct
 * conf.  Every problem is reported as "file:line:column: message" and the
 * load fails as a whole: a bad file never yields a half-read configuration.
 * Relative paths are relative to the file that holds them.
 */
#include <sys/stat.h>
#include <ctype.h>
#include <grp.h>
#include <pwd.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "consumersd.h"

#ifndef CNS_DEFAULT_SOCKET
#define CNS_DEFAULT_SOCKET "/run/consumersd/consumersd.sock"
#endif
#ifndef CNS_PLUGIN_DIR
#define CNS_PLUGIN_DIR "/usr/lib/consumersd/plugins"
#endif

#define CONF_FILE_MAX	(1u << 20)

/* One file being read: its text, for positions, and where errors go. */
struct cfile {
	const char	*path;
	char		*text;
	size_t		 len;
	json_t		*errors;
	size_t		 first;		/* its first error in errors */
};

static void
cfile_error(struct cfile *f, int line, int col, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/*
 * Add a message to `errors`.  Paths, keys and jansson's context come from
 * outside and may not be UTF-8 (or be cut inside a character): cleaned,
 * the message is always a JSON string, so no error is ever dropped.
 */
static void
add_error(json_t *errors, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void
add_error(json_t *errors, const char *fmt, ...)
{
	char msg[2048];
	va_list ap;
	json_t *v;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	utf8_clean(msg);
	if ((v = json_string(msg)) == NULL)
		fatalx("%s: a cleaned message is not a JSON string", __func__);
	json_array_append_new(errors, v);
}

static void
cfile_error(struct cfile *f, int line, int col, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	add_error(f->errors, "%s:%d:%d: %s", f->path, line, col, msg);
}

/* An error about `key`, placed where the key stands in the file. */
static void
key_error(struct cfile *f, const char *key, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void
key_error(struct cfile *f, const char *key, const char *fmt, ...)
{
	char msg[1024];
	int line = 1, col = 1;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	conf_keypos(f->text, f->len, key, &line, &col);
	cfile_error(f, line, col, "%s", msg);
}

static const char *
skip_ws(const char *p, const char *end)
{
	while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
		p++;
	return p;
}

static const char *
skip_string(const char *p, const char *end)
{
	for (p++; p < end && *p != '"'; p++)
		if (*p == '\\')
			p++;
	return p < end ? p + 1 : end;
}

/* Skip one member's value: it ends at a ',' or '}' outside any nesting. */
static const char *
skip_value(const char *p, const char *end)
{
	int depth = 0;

	while (p < end) {
		if (*p == '"') {
			p = skip_string(p, end);
			continue;
		}
		if (*p == '{' || *p == '[')
			depth++;
		else if (*p == '}' || *p == ']') {
			if (depth == 0)
				return p;
			depth--;
		} else if (*p == ',' && depth == 0)
			return p;
		p++;
	}
	return p;
}

static int
line_of(const char *text, size_t at)
{
	int line = 1;

	for (size_t i = 0; i < at; i++)
		line += text[i] == '\n';
	return line;
}

/* 1-based, in bytes, like conf_keypos. */
static int
column_of(const char *text, size_t at)
{
	size_t i = at;

	while (i > 0 && text[i - 1] != '\n')
		i--;
	return (int)(at - i) + 1;
}

/* The opening quote of the last string that closes at or before `end`. */
static size_t
key_start(const char *text, size_t end)
{
	size_t i = end;

	while (i > 0 && text[i - 1] != '"')
		i--;
	if (i == 0)
		return 0;
	for (i = i - 1; i > 0; i--) {
		size_t bs = 0;
		if (text[i - 1] != '"')
			continue;
		while (i >= bs + 2 && text[i - 2 - bs] == '\\')
			bs++;
		if (bs % 2 == 0)
			return i - 1;
	}
	return 0;
}

/*
 * Find where `key` stands in a top-level JSON object: 1-based line and
 * column of its opening quote.  Returns 0 when found, -1 when not (and the
 * position is left alone).  Keys are compared as they are written.
 */
int
conf_keypos(const char *text, size_t len, const char *key, int *line,
    int *column)
{
	const char *p = text, *end = text + len, *k;
	size_t klen = strlen(key);

	p = skip_ws(p, end);
	if (p >= end || *p != '{')
		return -1;
	p++;
	for (;;) {
		p = skip_ws(p, end);
		if (p >= end || *p != '"')
			return -1;
		k = p;
		p = skip_string(p, end);
		if ((size_t)(p - k) == klen + 2 && memcmp(k + 1, key, klen) == 0) {
			*line = line_of(text, (size_t)(k - text));
			*column = column_of(text, (size_t)(k - text));
			return 0;
		}
		p = skip_ws(p, end);
		if (p >= end || *p != ':')
			return -1;
		p = skip_value(p + 1, end);
		p = skip_ws(p, end);
		if (p >= end || *p != ',')
			return -1;
		p++;
	}
}

static int
cfile_read(struct cfile *f, json_t **root)
{
	json_error_t jerr;
	FILE *fp;
	size_t n;

	*root = NULL;
	if ((fp = fopen(f->path, "re")) == NULL) {
		cfile_error(f, 0, 0, "cannot open: %s", strerror(errno));
		return -1;
	}
	f->text = malloc(CONF_FILE_MAX + 1);
	if (f->text == NULL)
		fatal("%s: malloc", __func__);
	n = fread(f->text, 1, CONF_FILE_MAX + 1, fp);
	if (ferror(fp)) {
		cfile_error(f, 0, 0, "cannot read: %s", strerror(errno));
		fclose(fp);
		return -1;
	}
	fclose(fp);
	if (n > CONF_FILE_MAX) {
		cfile_error(f, 0, 0, "file is larger than %u bytes",
		    CONF_FILE_MAX);
		return -1;
	}
	f->len = n;
	if (skip_ws(f->text, f->text + n) == f->text + n) {
		cfile_error(f, 1, 1, "the file is empty: it must hold a JSON "
		    "object, at least {}");
		return -1;
	}
	*root = json_loadb(f->text, n, JSON_REJECT_DUPLICATES, &jerr);
	if (*root == NULL) {
		if (json_error_code(&jerr) == json_error_duplicate_key) {
			/* jansson points past the key; point at its start. */
			size_t at = key_start(f->text, (size_t)jerr.position);
			cfile_error(f, line_of(f->text, at),
			    column_of(f->text, at), "%s", jerr.text);
		} else
			cfile_error(f, jerr.line, jerr.column, "%s", jerr.text);
		return -1;
	}
	if (!json_is_object(*root)) {
		size_t at = (size_t)(skip_ws(f->text, f->text + n) - f->text);
		cfile_error(f, line_of(f->text, at), column_of(f->text, at),
		    "must be a JSON object");
		json_decref(*root);
		*root = NULL;
		return -1;
	}
	return 0;
}

/* "PATH:LINE:COL: ..." -> line and column, for file order. */
static void
error_pos(json_t *e, size_t plen, long *line, long *col)
{
	const char *s = json_string_value(e);

	*line = *col = 0;
	if (s != NULL && strlen(s) > plen)
		sscanf(s + plen, ":%ld:%ld:", line, col);
}

/* The file's errors in the order of the file, not of the checks. */
static void
cfile_sort(struct cfile *f)
{
	size_t n = json_array_size(f->errors), plen = strlen(f->path);

	/* An insertion sort: a file has a handful of errors. */
	for (size_t i = f->first + 1; i < n; i++)
		for (size_t j = i; j > f->first; j--) {
			json_t *a = json_array_get(f->errors, j - 1);
			json_t *b = json_array_get(f->errors, j);
			long al, ac, bl, bc;

			error_pos(a, plen, &al, &ac);
			error_pos(b, plen, &bl, &bc);
			if (al < bl || (al == bl && ac <= bc))
				break;
			json_incref(a);
			json_array_set(f->errors, j - 1, b);
			json_array_set_new(f->errors, j, a);
		}
}

static void
cfile_done(struct cfile *f)
{
	cfile_sort(f);
	free(f->text);
	f->text = NULL;
}

/* Edits from a to b (insert, delete, replace, swap two neighbours). */
static size_t
key_distance(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b), d[3][65];

	if (la > 64 || lb > 64)
		return (size_t)-1;
	/* Rows i-2, i-1 and i of the table, by i % 3. */
	for (size_t j = 0; j <= lb; j++)
		d[0][j] = j;
	for (size_t i = 1; i <= la; i++) {
		size_t *r = d[i % 3], *p = d[(i - 1) % 3], *pp = d[(i + 1) % 3];

		r[0] = i;
		for (size_t j = 1; j <= lb; j++) {
			size_t cost = a[i - 1] != b[j - 1], v = p[j - 1] + cost;

			if (p[j] + 1 < v)
				v = p[j] + 1;
			if (r[j - 1] + 1 < v)
				v = r[j - 1] + 1;
			if (i > 1 && j > 1 && a[i - 1] == b[j - 2] &&
			    a[i - 2] == b[j - 1] && pp[j - 2] + 1 < v)
				v = pp[j - 2] + 1;
			r[j] = v;
		}
	}
	return d[la % 3][lb];
}

/* The known key nearest to `key`, if it is a likely typo; NULL if not. */
static const char *
key_nearest(const char *key, const char *const *keys)
{
	const char *best = NULL;
	size_t bestd = (size_t)-1, limit = strlen(key) < 6 ? 1 : 2;

	for (const char *const *k = keys; *k != NULL; k++) {
		size_t d = key_distance(key, *k);
		if (d < bestd) {
			bestd = d;
			best = *k;
		}
	}
	return bestd <= limit ? best : NULL;
}

static int
known_keys(struct cfile *f, json_t *root, const char *const *keys)
{
	const char *key;
	json_t *v;
	int bad = 0;

	json_object_foreach(root, key, v) {
		int ok = 0;
		for (const char *const *k = keys; *k != NULL; k++)
			if (strcmp(*k, key) == 0)
				ok = 1;
		if (!ok && strcmp(key, "idle_timeout") == 0 &&
		    key_nearest("worker_idle_timeout", keys) != NULL) {
			key_error(f, key, "\"idle_timeout\" is not a pool key: "
			    "a pool's idle workers exit after "
			    "\"worker_idle_timeout\" (rename it); the daemon's "
			    "\"idle_timeout\" closes idle clients");
			bad = 1;
		} else if (!ok && key_nearest(key, keys) != NULL) {
			key_error(f, key, "unknown key \"%s\": did you mean "
			    "\"%s\"?", key, key_nearest(key, keys));
			bad = 1;
		} else if (!ok) {
			char known[512] = "";
			for (const char *const *k = keys; *k != NULL; k++) {
				strncat(known, k == keys ? "" : ", ",
				    sizeof known - strlen(known) - 1);
				strncat(known, *k,
				    sizeof known - strlen(known) - 1);
			}
			key_error(f, key, "unknown key \"%s\" (known keys: %s)",
			    key, known);
			bad = 1;
		}
	}
	return bad ? -1 : 0;
}

static const char *
type_name(json_t *v)
{
	switch (json_typeof(v)) {
	case JSON_OBJECT:	return "an object";
	case JSON_ARRAY:	return "an array";
	case JSON_STRING:	return "a string";
	case JSON_INTEGER:	return "an integer";
	case JSON_REAL:		return "a number with a fraction";
	case JSON_TRUE:
	case JSON_FALSE:	return "a boolean";
	default:		return "null";
	}
}

static int
get_string(struct cfile *f, json_t *root, const char *key, char **out)
{
	json_t *v = json_object_get(root, key);

	if (v == NULL)
		return 0;
	if (!json_is_string(v) || json_string_length(v) == 0 ||
	    strlen(json_string_value(v)) != json_string_length(v)) {
		key_error(f, key, "\"%s\" must be a non-empty string, not %s",
		    key, json_is_string(v) ? "an empty one" : type_name(v));
		return -1;
	}
	free(*out);
	if ((*out = strdup(json_string_value(v))) == NULL)
		fatal("%s: strdup", __func__);
	return 0;
}

static int
get_uint(struct cfile *f, json_t *root, const char *key, uint64_t lo,
    uint64_t hi, uint64_t *out)
{
	json_t *v = json_object_get(root, key);

	if (v == NULL)
		return 0;
	if (!json_is_integer(v) || json_integer_value(v) < (json_int_t)lo ||
	    (uint64_t)json_integer_value(v) > hi) {
		if (json_is_integer(v))
			key_error(f, key, "\"%s\": %lld must be from %llu to "
			    "%llu", key, (long long)json_integer_value(v),
			    (unsigned long long)lo, (unsigned long long)hi);
		else
			key_error(f, key, "\"%s\" must be an integer from "
			    "%llu to %llu, not %s", key, (unsigned long long)lo,
			    (unsigned long long)hi, type_name(v));
		return -1;
	}
	*out = (uint64_t)json_integer_value(v);
	return 0;
}

/* Resolve `path` against the directory of the file that named it. */
static char *
resolve(const char *file, const char *path)
{
	const char *slash;
	char *out;

	if (path[0] == '/' || (slash = strrchr(file, '/')) == NULL) {
		if ((out = strdup(path)) == NULL)
			fatal("%s: strdup", __func__);
		return out;
	}
	if (asprintf(&out, "%.*s/%s", (int)(slash - file), file, path) == -1)
		fatal("%s: asprintf", __func__);
	return out;
}

static int
valid_pool_name(const char *s, size_t len)
{
	if (len == 0 || len > 64)
		return 0;
	for (size_t i = 0; i < len; i++)
		if (!isalnum((unsigned char)s[i]) && !strchr("_-.", s[i]))
			return 0;
	return 1;
}

static const char *const pool_keys[] = {
	"plugin", "workers", "stream_workers", "args", "kwargs",
	"queue_timeout", "on_crash", "max_attempts", "item_timeout",
	"max_init_failures", "allow", "user", "group", "rlimit_nofile",
	"rlimit_as", "nice", "env", "env_keep", "mode", "min_spare",
	"max_spare", "worker_idle_timeout", "max_streams", "plugin_options",
	"client_args", "start_seconds", "min_item_rate", "slow_stream",
	"cluster", "spool_full", "spool_wait", NULL
};

static int	get_seconds(struct cfile *, json_t *, const char *, double,
		    double *);

static const char *const modes[] = {
	[MODE_STATIC] = "static", [MODE_DYNAMIC] = "dynamic",
	[MODE_ONDEMAND] = "ondemand"
};

const char *
conf_mode(int mode)
{
	return modes[mode];
}

/* The process manager: mode, spare workers, idle life, recycling. */
static int
get_mode(struct cfile *f, json_t *root, struct pool_conf *pc)
{
	json_t *v = json_object_get(root, "mode");
	uint64_t u;
	int bad = 0;

	pc->mode = MODE_STATIC;
	if (v != NULL) {
		int found = -1;
		for (int i = 0; i < MODE_NMODES; i++)
			if (json_is_string(v) &&
			    strcmp(json_string_value(v), modes[i]) == 0)
				found = i;
		if (found == -1) {
			key_error(f, "mode", "\"mode\" must be \"static\", "
			    "\"dynamic\" or \"ondemand\"");
			bad = 1;
		} else
			pc->mode = found;
	}
	u = 1;
	bad |= get_uint(f, root, "min_spare", 0, CNS_MAX_WORKERS, &u);
	pc->min_spare = (unsigned)u;
	u = pc->workers;
	bad |= get_uint(f, root, "max_spare", 1, CNS_MAX_WORKERS, &u);
	pc->max_spare = (unsigned)u;
	pc->idle_timeout = 10;
	bad |= get_seconds(f, root, "worker_idle_timeout", 86400,
	    &pc->idle_timeout);
	u = 0;
	bad |= get_uint(f, root, "max_streams", 0, UINT32_MAX, &u);
	pc->max_streams = (unsigned)u;
	if (!bad && pc->mode == MODE_DYNAMIC && (pc->min_spare >
	    pc->max_spare || pc->max_spare > pc->workers)) {
		key_error(f, "max_spare", "dynamic pools need min_spare (%u) <= "
		    "max_spare (%u) <= workers (%u)", pc->min_spare,
		    pc->max_spare, pc->workers);
		bad = 1;
	}
	return bad ? -1 : 0;
}

static int	group_id(struct cfile *, const char *, const char *, gid_t *);


/*
 * A daemon running as root runs plugin code as root only when told to:
 * each pool needs a "user", or the daemon config "root_workers".  A
 * policy of the running daemon (consumersd -t, start, reload), not of the
 * file format, so the parser's own tests do not depend on who runs them.
 */
int
conf_check_root(const struct conf *c, json_t *errors)
{
	int bad = 0;

	if (geteuid() != 0 || c->root_workers)
		return 0;
	for (size_t i = 0; i < c->npools; i++)
		if (c->pools[i].user == NULL) {
			add_error(errors, "%s:1:1: pool \"%s\" needs a \"user\" "
			    "(and maybe \"group\") for its workers, since "
			    "consumersd runs as root; or set \"root_workers\": "
			    "true in the daemon config to run them as root",
			    c->pools[i].file, c->pools[i].name);
			bad = 1;
		}
	return bad ? -1 : 0;
}

/* user, group, limits and environment of a pool's workers */
static int
get_identity(struct cfile *f, json_t *root, struct pool_conf *pc)
{
	json_t *v, *e;
	const char *k;
	uint64_t u;
	size_t i;
	int bad = 0;

	if (get_string(f, root, "user", &pc->user) == -1)
		bad = 1;
	else if (pc->user != NULL) {
		struct passwd *pw = getpwnam(pc->user);
		if (pw == NULL) {
			key_error(f, "user", "\"user\": no user named \"%.100s\" "
			    "on this system", pc->user);
			bad = 1;
		} else {
			pc->uid = pw->pw_uid;
			pc->gid = pw->pw_gid;
		}
	}
	if (get_string(f, root, "group", &pc->group) == -1 ||
	    (pc->group != NULL && group_id(f, "group", pc->group, &pc->gid) ==
	    -1))
		bad = 1;
	if (pc->group != NULL && pc->user == NULL) {
		key_error(f, "group", "\"group\" needs \"user\"");
		bad = 1;
	}
	if (pc->user != NULL && geteuid() != 0) {
		/* Only root can switch; a user-run daemon's workers are its
		 * own user's, as any process it starts. */
		log_info("%s: pool \"%s\": \"user\" applies only when "
		    "consumersd runs as root; its workers run as uid %lu",
		    f->path, pc->name, (unsigned long)geteuid());
		free(pc->user);
		free(pc->group);
		pc->user = pc->group = NULL;
	}
	u = 0;
	bad |= get_uint(f, root, "rlimit_nofile", 16, 1u << 20, &u);
	pc->rlimit_nofile = u;
	u = 0;
	bad |= get_uint(f, root, "rlimit_as", 16u << 20, UINT64_MAX >> 1, &u);
	pc->rlimit_as = u;
	v = json_object_get(root, "nice");
	if (v != NULL) {
		if (!json_is_integer(v) || json_integer_value(v) < -20 ||
		    json_integer_value(v) > 19) {
			key_error(f, "nice", "\"nice\" must be an integer from "
			    "-20 to 19");
			bad = 1;
		} else
			pc->nice = (int)json_integer_value(v);
	}
	v = json_object_get(root, "env");
	if (v != NULL) {
		int ok = json_is_object(v);
		json_object_foreach(v, k, e)
			ok &= json_is_string(e) && k[0] != '\0' &&
			    strchr(k, '=') == NULL;
		if (!ok) {
			key_error(f, "env", "\"env\" must be an object of "
			    "strings, like {\"LANG\": \"C.UTF-8\"}");
			bad = 1;
		}
	}
	pc->env = v != NULL && json_is_object(v) ? json_incref(v) :
	    json_object();
	v = json_object_get(root, "env_keep");
	if (v != NULL) {
		int ok = json_is_array(v);
		json_array_foreach(v, i, e)
			ok &= json_is_string(e) && json_string_length(e) > 0;
		if (!ok) {
			key_error(f, "env_keep", "\"env_keep\" must be an array "
			    "of variable names, like [\"TZ\", \"LANG\"]");
			bad = 1;
		}
	}
	pc->env_keep = v != NULL && json_is_array(v) ? json_incref(v) :
	    json_array();
	return bad ? -1 : 0;
}


/* A group name from the system's database; -1 with an error if unknown. */
static int
group_id(struct cfile *f, const char *key, const char *name, gid_t *out)
{
	struct group *g = getgrnam(name);

	if (g == NULL) {
		key_error(f, key, "\"%s\": no group named \"%.100s\" on this "
		    "system", key, name);
		return -1;
	}
	*out = g->gr_gid;
	return 0;
}

/*
 * "allow": {"users": [names], "groups": [names]}: who may submit to the
 * pool.  Names are looked up once, here.
 */
static int
get_allow(struct cfile *f, json_t *root, struct pool_conf *pc)
{
	json_t *v = json_object_get(root, "allow"), *users, *groups, *e;
	const char *key;
	size_t i;
	int bad = 0;

	if (v == NULL)
		return 0;
	json_object_foreach(v, key, e)
		if (strcmp(key, "users") != 0 && strcmp(key, "groups") != 0) {
			key_error(f, "allow", "\"allow\" takes \"users\" and "
			    "\"groups\", not \"%.100s\"", key);
			return -1;
		}
	users = json_object_get(v, "users");
	groups = json_object_get(v, "groups");
	if (!json_is_object(v) || (users != NULL && !json_is_array(users)) ||
	    (groups != NULL && !json_is_array(groups))) {
		key_error(f, "allow", "\"allow\" must be like {\"users\": "
		    "[\"alice\"], \"groups\": [\"etl\"]}");
		return -1;
	}
	pc->allow = 1;
	pc->allow_uids = calloc(json_array_size(users) + 1, sizeof(uid_t));
	pc->allow_gids = calloc(json_array_size(groups) + 1, sizeof(gid_t));
	if (pc->allow_uids == NULL || pc->allow_gids == NULL)
		fatal("%s: calloc", __func__);
	json_array_foreach(users, i, e) {
		struct passwd *pw = json_is_string(e) ?
		    getpwnam(json_string_value(e)) : NULL;
		if (pw == NULL) {
			key_error(f, "allow", "\"allow\": %s%.100s%s is not a "
			    "user on this system", json_is_string(e) ? "\"" :
			    "", json_is_string(e) ? json_string_value(e) :
			    "a non-string", json_is_string(e) ? "\"" : "");
			bad = 1;
			continue;
		}
		pc->allow_uids[pc->nallow_uids++] = pw->pw_uid;
	}
	json_array_foreach(groups, i, e) {
		if (!json_is_string(e) || group_id(f, "allow",
		    json_string_value(e), &pc->allow_gids[pc->nallow_gids]) ==
		    -1) {
			if (!json_is_string(e))
				key_error(f, "allow", "\"allow\": group names "
				    "are strings");
			bad = 1;
			continue;
		}
		pc->nallow_gids++;
	}
	return bad ? -1 : 0;
}

/* A number of seconds in [0, hi]; 0 may mean "none" to the caller. */
static int
get_seconds(struct cfile *f, json_t *root, const char *key, double hi,
    double *out)
{
	json_t *v = json_object_get(root, key);

	if (v == NULL)
		return 0;
	if (!json_is_number(v) || json_number_value(v) < 0 ||
	    json_number_value(v) > hi) {
		if (json_is_number(v))
			key_error(f, key, "\"%s\": %g must be a number of "
			    "seconds from 0 to %g", key, json_number_value(v),
			    hi);
		else
			key_error(f, key, "\"%s\" must be a number of seconds "
			    "from 0 to %g, not %s", key, hi, type_name(v));
		return -1;
	}
	*out = json_number_value(v);
	return 0;
}

/* A number of items per second in [0, hi]; 0 means "off". */
static int
get_rate(struct cfile *f, json_t *root, const char *key, double hi,
    double *out)
{
	json_t *v = json_object_get(root, key);

	if (v == NULL)
		return 0;
	if (!json_is_number(v) || json_number_value(v) < 0 ||
	    json_number_value(v) > hi) {
		key_error(f, key, "\"%s\" must be a number of items per second "
		    "from 0 (off) to %g, not %s", key, hi, json_is_number(v) ?
		    "that value" : type_name(v));
		return -1;
	}
	*out = json_number_value(v);
	return 0;
}

static const char *const crash_policies[] = {
	[CRASH_REPLAY] = "replay", [CRASH_REDELIVER] = "redeliver",
	[CRASH_FAIL] = "fail"
};

const char *
conf_crash_policy(int policy)
{
	return crash_policies[policy];
}

/*
 * A pool's "cluster": true.  Its lanes come from every instance serving
 * the pool through Redis (cluster.c); it needs the daemon's "cluster"
 * section, which says where Redis is.
 */
static int
get_pool_cluster(struct conf *c, struct cfile *f, json_t *root,
    struct pool_conf *pc)
{
	json_t *v = json_object_get(root, "cluster");

	if (v == NULL)
		return 0;
	if (!json_is_boolean(v)) {
		key_error(f, "cluster", "\"cluster\" must be true or false, not "
		    "%s", type_name(v));
		return -1;
	}
	pc->cluster = json_is_true(v);
	if (!pc->cluster)
		return 0;
#ifndef HAVE_HIREDIS
	(void)c;
	key_error(f, "cluster", "\"cluster\": this consumersd was built "
	    "without cluster support (hiredis): install libhiredis-dev and "
	    "rebuild, or remove \"cluster\"");
#else
	if (c->cluster != NULL)
		return 0;
	key_error(f, "cluster", "\"cluster\": true needs a \"cluster\" "
	    "section (where Redis is) in the daemon config %s", c->file);
#endif
	return -1;
}

static const char *const spool_fulls[] = {
	[SPOOL_FULL_PAUSE] = "pause", [SPOOL_FULL_CONTINUE] = "continue"
};

/* spool_full: "pause" or "continue". */
static int
get_spool_full(struct cfile *f, json_t *root, int *out)
{
	json_t *v = json_object_get(root, "spool_full");

	if (v == NULL)
		return 0;
	for (int i = 0; i < SPOOL_FULL_NMODES; i++)
		if (json_is_string(v) && strcmp(json_string_value(v),
		    spool_fulls[i]) == 0) {
			*out = i;
			return 0;
		}
	key_error(f, "spool_full", "\"spool_full\" must be \"pause\" (stop "
	    "reading the client until the spool can be written) or "
	    "\"continue\" (send on without a copy, warned)");
	return -1;
}

static int
pool_load(struct conf *c, const char *path, const char *name,
    struct pool_conf *pc, json_t *errors)
{
	struct cfile f = { .path = path, .errors = errors,
	    .first = json_array_size(errors) };
	json_t *root, *v;
	char *plugin = NULL;
	uint64_t u;
	int bad = 0;

	memset(pc, 0, sizeof *pc);
	if ((pc->name = strdup(name)) == NULL ||
	    (pc->file = strdup(path)) == NULL)
		fatal("%s: strdup", __func__);
	pc->workers = 1;
	pc->queue_timeout = 30;
	pc->on_crash = CRASH_REPLAY;
	pc->max_attempts = 3;
	pc->spool_full = SPOOL_FULL_PAUSE;
	pc->spool_wait = 30;
	pc->max_init_failures = 5;
	pc->start_seconds = 1;
	pc->nice = NICE_INHERITED;
	if (cfile_read(&f, &root) == -1) {
		cfile_done(&f);
		return -1;
	}
	bad |= known_keys(&f, root, pool_keys);
	if (json_object_get(root, "plugin") == NULL) {
		cfile_error(&f, 1, 1, "pool \"%s\" needs a \"plugin\" (a name "
		    "in plugin_dir, or a path to a .so)", name);
		bad = 1;
	} else if (get_string(&f, root, "plugin", &plugin) == -1)
		bad = 1;
	u = pc->workers;
	bad |= get_uint(&f, root, "workers", 1, CNS_MAX_WORKERS, &u);
	pc->workers = (unsigned)u;
	u = pc->workers;
	bad |= get_uint(&f, root, "stream_workers", 1, CNS_MAX_WORKERS, &u);
	pc->stream_workers = (unsigned)u;
	if (pc->stream_workers > pc->workers) {
		key_error(&f, "stream_workers", "\"stream_workers\" (%u) "
		    "cannot exceed \"workers\" (%u)", pc->stream_workers,
		    pc->workers);
		bad = 1;
	}
	v = json_object_get(root, "args");
	if (v != NULL && !json_is_array(v)) {
		key_error(&f, "args", "\"args\" must be an array, not %s",
		    type_name(v));
		bad = 1;
	}
	pc->args = v != NULL && json_is_array(v) ? json_incref(v) :
	    json_array();
	v = json_object_get(root, "kwargs");
	if (v != NULL && !json_is_object(v)) {
		key_error(&f, "kwargs", "\"kwargs\" must be an object, not %s",
		    type_name(v));
		bad = 1;
	}
	pc->kwargs = v != NULL && json_is_object(v) ? json_incref(v) :
	    json_object();
	/* The plugin's own settings: any JSON, read by the plugin alone
	 * (cns_options); null when absent. */
	v = json_object_get(root, "plugin_options");
	pc->plugin_options = v != NULL ? json_incref(v) : json_null();
	v = json_object_get(root, "client_args");
	if (v != NULL && !json_is_boolean(v)) {
		key_error(&f, "client_args", "\"client_args\" must be true or "
		    "false, not %s", type_name(v));
		bad = 1;
	}
	pc->client_args = v != NULL && json_is_true(v);
	bad |= get_pool_cluster(c, &f, root, pc);
	bad |= get_seconds(&f, root, "queue_timeout", 86400,
	    &pc->queue_timeout);
	bad |= get_seconds(&f, root, "item_timeout", 86400, &pc->item_timeout);
	bad |= get_rate(&f, root, "min_item_rate", 1e6, &pc->min_item_rate);
	bad |= get_seconds(&f, root, "start_seconds", 3600,
	    &pc->start_seconds);
	bad |= get_seconds(&f, root, "slow_stream", 86400, &pc->slow_stream);
	bad |= get_seconds(&f, root, "spool_wait", 86400, &pc->spool_wait);
	bad |= get_spool_full(&f, root, &pc->spool_full);
	u = pc->max_attempts;
	bad |= get_uint(&f, root, "max_attempts", 1, 100, &u);
	pc->max_attempts = (unsigned)u;
	u = pc->max_init_failures;
	bad |= get_uint(&f, root, "max_init_failures", 1, 1000, &u);
	pc->max_init_failures = (unsigned)u;
	bad |= get_allow(&f, root, pc);
	bad |= get_identity(&f, root, pc);
	bad |= get_mode(&f, root, pc);
	v = json_object_get(root, "on_crash");
	if (v != NULL) {
		int found = -1;
		for (int i = 0; i < CRASH_NPOLICIES; i++)
			if (json_is_string(v) && strcmp(json_string_value(v),
			    crash_policies[i]) == 0)
				found = i;
		if (found == -1) {
			key_error(&f, "on_crash", "\"on_crash\" must be "
			    "\"replay\", \"redeliver\" or \"fail\"");
			bad = 1;
		} else
			pc->on_crash = found;
	}
	if (plugin != NULL) {
		pc->plugin_line = pc->plugin_column = 1;
		conf_keypos(f.text, f.len, "plugin", &pc->plugin_line,
		    &pc->plugin_column);
		if (strchr(plugin, '/') != NULL)
			pc->plugin = resolve(path, plugin);
		else if (asprintf(&pc->plugin, "%s/%s.so", c->plugin_dir,
		    plugin) == -1)
			fatal("%s: asprintf", __func__);
		if (access(pc->plugin, R_OK) == -1) {
			key_error(&f, "plugin", "plugin \"%s\" not found: %s: "
			    "%s (install it there, set \"plugin_dir\" in the "
			    "daemon config, or give a path)", plugin,
			    pc->plugin, strerror(errno));
			bad = 1;
		} else {
			/* Which file it is: a rebuilt plugin is a change. */
			struct stat st;
			if (stat(pc->plugin, &st) == 0) {
				pc->plugin_dev = st.st_dev;
				pc->plugin_ino = st.st_ino;
				pc->plugin_mtime = st.st_mtim;
			}
		}
	}
	free(plugin);
	json_decref(root);
	cfile_done(&f);
	return bad ? -1 : 0;
}

static void
pool_conf_clear(struct pool_conf *pc)
{
	free(pc->name);
	free(pc->file);
	free(pc->plugin);
	json_decref(pc->args);
	json_decref(pc->kwargs);
	json_decref(pc->plugin_options);
	free(pc->allow_uids);
	free(pc->allow_gids);
	free(pc->user);
	free(pc->group);
	json_decref(pc->env);
	json_decref(pc->env_keep);
}

static int
json_file(const struct dirent *d)
{
	size_t n = strlen(d->d_name);
	return d->d_name[0] != '.' && n > 5 &&
	    strcmp(d->d_name + n - 5, ".json") == 0;
}

static int
pools_load(struct conf *c, json_t *errors)
{
	struct dirent **ents;
	int n, bad = 0;

	n = scandir(c->pools_dir, &ents, json_file, alphasort);
	if (n == -1) {
		add_error(errors, "%s: cannot read the pools directory: %s",
		    c->pools_dir, strerror(errno));
		return -1;
	}
	c->pools = calloc(n > 0 ? (size_t)n : 1, sizeof *c->pools);
	if (c->pools == NULL)
		fatal("%s: calloc", __func__);
	for (int i = 0; i < n; i++) {
		const char *fn = ents[i]->d_name;
		size_t stem = strlen(fn) - 5;
		char *path, name[128];

		if (asprintf(&path, "%s/%s", c->pools_dir, fn) == -1)
			fatal("%s: asprintf", __func__);
		if (!valid_pool_name(fn, stem)) {
			add_error(errors, "%s:0:0: a pool name (the file name "
			    "before .json) is 1 to 64 letters, digits, '_', "
			    "'-' or '.'", path);
			bad = 1;
		} else {
			snprintf(name, sizeof name, "%.*s", (int)stem, fn);
			if (pool_load(c, path, name, &c->pools[c->npools],
			    errors) == -1)
				bad = 1;
			c->npools++;
		}
		free(path);
		free(ents[i]);
	}
	free(ents);
	return bad ? -1 : 0;
}

static const char *const daemon_keys[] = {
	"socket", "socket_mode", "plugin_dir", "pools_dir", "max_item_bytes",
	"window_bytes", "window_items", "log_level", "spool_dir",
	"header_timeout", "idle_timeout", "max_connections_per_uid",
	"shutdown_timeout", "admin_group", "socket_group", "root_workers",
	"max_workers", "max_client_buffer", "cluster", NULL
};

static const char *const cluster_keys[] = {
	"redis", "instance", "password_file", "heartbeat", "claim_idle", NULL
};

static void
cluster_conf_free(struct cluster_conf *cc)
{
	if (cc == NULL)
		return;
	free(cc->redis);
	free(cc->instance);
	free(cc->password_file);
	free(cc);
}

/* "unix:/absolute/path" or "redis://host[:port][/db]". */
static int
valid_redis_address(const char *s)
{
	const char *p, *host;
	char *end;

	if (strncmp(s, "unix:", 5) == 0)
		return s[5] == '/' && strlen(s + 5) < 108;
	if (strncmp(s, "redis://", 8) != 0)
		return 0;
	host = s + 8;
	p = host + strcspn(host, ":/");
	if (p == host)
		return 0;
	for (const char *h = host; h < p; h++)
		if (!isalnum((unsigned char)*h) && !strchr(".-_", *h))
			return 0;
	if (*p == ':') {
		unsigned long port = strtoul(p + 1, &end, 10);
		if (end == p + 1 || port == 0 || port > 65535 ||
		    !isdigit((unsigned char)p[1]))
			return 0;
		p = end;
	}
	if (*p == '/') {
		if (p[1] == '\0')
			return 1;
		if (!isdigit((unsigned char)p[1]))
			return 0;
		unsigned long db = strtoul(p + 1, &end, 10);
		if (db > 15 || *end != '\0')
			return 0;
		return 1;
	}
	return *p == '\0';
}

/*
 * The daemon's "cluster": {"redis", "instance", "password_file",
 * "heartbeat", "claim_idle"}: where the cluster pools' Redis is.
 */
static int
get_cluster(struct conf *c, struct cfile *f, json_t *root)
{
	json_t *cl = json_object_get(root, "cluster"), *v;
	struct cluster_conf *cc;
	const char *key;
	char host[256];
	int bad = 0;

	if (cl == NULL)
		return 0;
#ifndef HAVE_HIREDIS
	key_error(f, "cluster", "\"cluster\": this consumersd was built "
	    "without cluster support (hiredis): install libhiredis-dev and "
	    "rebuild, or remove \"cluster\"");
	return -1;
#endif
	if (!json_is_object(cl)) {
		key_error(f, "cluster", "\"cluster\" must be an object like "
		    "{\"redis\": \"unix:/run/redis/redis.sock\"}, not %s",
		    type_name(cl));
		return -1;
	}
	json_object_foreach(cl, key, v) {
		int ok = 0;
		for (const char *const *k = cluster_keys; *k != NULL; k++)
			if (strcmp(*k, key) == 0)
				ok = 1;
		if (!ok) {
			key_error(f, "cluster", "\"cluster\": unknown key "
			    "\"%.100s\" (known keys: redis, instance, "
			    "password_file, heartbeat, claim_idle)", key);
			bad = 1;
		}
	}
	if ((cc = calloc(1, sizeof *cc)) == NULL)
		fatal("%s: calloc", __func__);
	cluster_conf_free(c->cluster);
	c->cluster = cc;
	cc->heartbeat = 0.5;
	cc->claim_idle = 3;
	v = json_object_get(cl, "redis");
	if (v == NULL || !json_is_string(v) ||
	    !valid_redis_address(json_string_value(v))) {
		key_error(f, "cluster", "\"cluster\": \"redis\" must be "
		    "\"unix:/path/to/redis.sock\" or \"redis://host:port/db\" "
		    "(db 0 to 15)%s", v == NULL ? ", and it is missing" : "");
		bad = 1;
	} else if ((cc->redis = strdup(json_string_value(v))) == NULL)
		fatal("%s: strdup", __func__);
	v = json_object_get(cl, "instance");
	if (v != NULL) {
		if (!json_is_string(v) || !valid_pool_name(json_string_value(v),
		    strlen(json_string_value(v)))) {
			key_error(f, "cluster", "\"cluster\": \"instance\" is "
			    "1 to 64 letters, digits, '_', '-' or '.'");
			bad = 1;
		} else if ((cc->instance = strdup(json_string_value(v))) ==
		    NULL)
			fatal("%s: strdup", __func__);
	} else {
		if (gethostname(host, sizeof host) == -1)
			host[0] = '\0';
		host[sizeof host - 1] = '\0';
		host[strcspn(host, ".")] = '\0';
		if (!valid_pool_name(host, strlen(host))) {
			key_error(f, "cluster", "\"cluster\": the host name "
			    "\"%.64s\" is no instance name: set \"instance\"",
			    host);
			bad = 1;
		} else if ((cc->instance = strdup(host)) == NULL)
			fatal("%s: strdup", __func__);
	}
	v = json_object_get(cl, "password_file");
	if (v != NULL) {
		if (!json_is_string(v) || json_string_length(v) == 0) {
			key_error(f, "cluster", "\"cluster\": \"password_file\" "
			    "must be a path");
			bad = 1;
		} else {
			cc->password_file = resolve(f->path,
			    json_string_value(v));
			if (access(cc->password_file, R_OK) == -1) {
				key_error(f, "cluster", "\"cluster\": "
				    "\"password_file\" %s: %s (the daemon "
				    "reads Redis's password there)",
				    cc->password_file, strerror(errno));
				bad = 1;
			}
		}
	}
	v = json_object_get(cl, "heartbeat");
	if (v != NULL && (!json_is_number(v) || json_number_value(v) < 0.05 ||
	    json_number_value(v) > 60)) {
		key_error(f, "cluster", "\"cluster\": \"heartbeat\" must be a "
		    "number of seconds from 0.05 to 60");
		bad = 1;
	} else if (v != NULL)
		cc->heartbeat = json_number_value(v);
	v = json_object_get(cl, "claim_idle");
	if (v != NULL && (!json_is_number(v) || json_number_value(v) < 0.1 ||
	    json_number_value(v) > 3600)) {
		key_error(f, "cluster", "\"cluster\": \"claim_idle\" must be a "
		    "number of seconds from 0.1 to 3600");
		bad = 1;
	} else if (v != NULL)
		cc->claim_idle = json_number_value(v);
	if (!bad && cc->claim_idle < 2 * cc->heartbeat) {
		key_error(f, "cluster", "\"cluster\": \"claim_idle\" (%g s) "
		    "must be at least twice \"heartbeat\" (%g s), or live "
		    "instances lose their jobs", cc->claim_idle,
		    cc->heartbeat);
		bad = 1;
	}
	return bad ? -1 : 0;
}

static int
daemon_load(struct conf *c, struct cfile *f, json_t *root)
{
	char *s = NULL;
	uint64_t u;
	json_t *v;
	int bad = 0;

	bad |= known_keys(f, root, daemon_keys);
	bad |= get_cluster(c, f, root);
	if (get_string(f, root, "socket", &s) == -1)
		bad = 1;
	else if (s != NULL) {
		free(c->socket);
		c->socket = resolve(f->path, s);
	}
	free(s);
	s = NULL;
	if (get_string(f, root, "plugin_dir", &s) == -1)
		bad = 1;
	else if (s != NULL) {
		free(c->plugin_dir);
		c->plugin_dir = resolve(f->path, s);
	}
	free(s);
	s = NULL;
	if (get_string(f, root, "pools_dir", &s) == -1)
		bad = 1;
	if (s != NULL) {
		free(c->pools_dir);
		c->pools_dir = resolve(f->path, s);
	}
	free(s);
	s = NULL;
	v = json_object_get(root, "socket_mode");
	if (v != NULL) {
		char *end = NULL;
		unsigned long m = 0;
		if (json_is_string(v))
			m = strtoul(json_string_value(v), &end, 8);
		if (!json_is_string(v) || *end != '\0' || end ==
		    json_string_value(v) || m > 0777) {
			key_error(f, "socket_mode", "\"socket_mode\" must be an "
			    "octal string such as \"0660\"");
			bad = 1;
		} else
			c->socket_mode = (mode_t)m;
	}
	if (get_string(f, root, "spool_dir", &s) == -1)
		bad = 1;
	if (s != NULL) {
		free(c->spool_dir);
		c->spool_dir = resolve(f->path, s);
	}
	free(s);
	s = NULL;
	bad |= get_seconds(f, root, "header_timeout", 3600, &c->header_timeout);
	bad |= get_seconds(f, root, "idle_timeout", 86400, &c->idle_timeout);
	bad |= get_seconds(f, root, "shutdown_timeout", 86400,
	    &c->shutdown_timeout);
	v = json_object_get(root, "root_workers");
	if (v != NULL && !json_is_boolean(v)) {
		key_error(f, "root_workers", "\"root_workers\" must be true or "
		    "false");
		bad = 1;
	} else
		c->root_workers = json_is_true(v);
	if (get_string(f, root, "admin_group", &c->admin_group) == -1 ||
	    (c->admin_group != NULL && group_id(f, "admin_group",
	    c->admin_group, &c->admin_gid) == -1))
		bad = 1;
	if (get_string(f, root, "socket_group", &c->socket_group) == -1 ||
	    (c->socket_group != NULL && group_id(f, "socket_group",
	    c->socket_group, &c->socket_gid) == -1))
		bad = 1;
	u = 0;
	bad |= get_uint(f, root, "max_workers", 0, 1u << 20, &u);
	c->max_workers = (unsigned)u;
	u = c->max_client_buffer;
	bad |= get_uint(f, root, "max_client_buffer", 1u << 16, 1ull << 40,
	    &u);
	c->max_client_buffer = (size_t)u;
	u = c->max_conn_per_uid;
	bad |= get_uint(f, root, "max_connections_per_uid", 0, 1000000, &u);
	c->max_conn_per_uid = (unsigned)u;
	u = c->max_item_bytes;
	bad |= get_uint(f, root, "max_item_bytes", 16, CNS_MAX_ITEM_BYTES, &u);
	c->max_item_bytes = u;
	u = c->window_bytes;
	bad |= get_uint(f, root, "window_bytes", 4096, 64u << 20, &u);
	c->window_bytes = u;
	u = c->window_items;
	bad |= get_uint(f, root, "window_items", 1, 1u << 20, &u);
	c->window_items = (unsigned)u;
	if (get_string(f, root, "log_level", &s) == -1)
		bad = 1;
	else if (s != NULL && (c->log_level = log_parse_level(s)) == -1) {
		key_error(f, "log_level", "\"log_level\" must be one of "
		    "\"error\", \"warning\", \"info\", \"debug\"");
		bad = 1;
	}
	free(s);
	return bad ? -1 : 0;
}

struct conf *
conf_load(const char *file, const struct conf_overrides *ov, json_t *errors)
{
	struct cfile f = { .path = file, .errors = errors,
	    .first = json_array_size(errors) };
	struct conf *c;
	json_t *root;
	int bad = 0;

	if ((c = calloc(1, sizeof *c)) == NULL)
		fatal("%s: calloc", __func__);
	c->refs = 1;
	if ((c->file = strdup(file)) == NULL ||
	    (c->socket = strdup(CNS_DEFAULT_SOCKET)) == NULL ||
	    (c->plugin_dir = strdup(CNS_PLUGIN_DIR)) == NULL)
		fatal("%s: strdup", __func__);
	c->pools_dir = resolve(file, "pools.d");
	c->socket_mode = 0660;
	c->max_item_bytes = 1u << 20;
	c->window_bytes = 1u << 20;
	c->window_items = 8192;
	c->log_level = LOG_LVL_INFO;
	c->header_timeout = 10;
	c->shutdown_timeout = 30;
	c->idle_timeout = 300;
	c->max_conn_per_uid = 256;
	c->max_client_buffer = 64u << 20;
	if (cfile_read(&f, &root) == -1 || daemon_load(c, &f, root) == -1)
		bad = 1;
	json_decref(root);
	cfile_done(&f);
	if (ov != NULL && ov->socket != NULL) {
		free(c->socket);
		if ((c->socket = strdup(ov->socket)) == NULL)
			fatal("%s: strdup", __func__);
	}
	if (ov != NULL && ov->plugin_dir != NULL) {
		free(c->plugin_dir);
		if ((c->plugin_dir = strdup(ov->plugin_dir)) == NULL)
			fatal("%s: strdup", __func__);
	}
	if (c->spool_dir == NULL) {
		/* The daemon's runtime directory: systemd's (RuntimeDirectory=,
		 * the first if there are several), else that of the socket it
		 * listens on: systemd's when activated, else the configured. */
		const char *rt = getenv("RUNTIME_DIRECTORY");
		const char *sock = cns_activated_socket != NULL ?
		    cns_activated_socket : c->socket;
		char *slash = strrchr(sock, '/');
		if (rt != NULL && rt[0] == '/')
			c->spool_dir = strndup(rt, strcspn(rt, ":"));
		else if (slash == NULL)
			c->spool_dir = strdup(".");
		else if (slash == sock)
			c->spool_dir = strdup("/");
		else
			c->spool_dir = strndup(sock, (size_t)(slash - sock));
		if (c->spool_dir == NULL)
			fatal("%s: strdup", __func__);
	}
	if (!bad && pools_load(c, errors) == -1)
		bad = 1;
	if (!bad && c->npools == 0) {
		add_error(errors, "%s: no pools: put one NAME.json file per "
		    "pool in this directory", c->pools_dir);
		bad = 1;
	}
	if (bad) {
		conf_free(c);
		return NULL;
	}
	return c;
}

void
conf_free(struct conf *c)
{
	if (c == NULL)
		return;
	for (size_t i = 0; i < c->npools; i++)
		pool_conf_clear(&c->pools[i]);
	free(c->pools);
	free(c->file);
	free(c->socket);
	free(c->plugin_dir);
	free(c->pools_dir);
	free(c->spool_dir);
	free(c->admin_group);
	free(c->socket_group);
	cluster_conf_free(c->cluster);
	free(c);
}

struct conf *
conf_ref(struct conf *c)
{
	c->refs++;
	return c;
}

void
conf_unref(struct conf *c)
{
	if (c != NULL && --c->refs == 0)
		conf_free(c);
}

static int
same_ids(const void *a, size_t na, const void *b, size_t nb, size_t size)
{
	return na == nb && (na == 0 || memcmp(a, b, na * size) == 0);
}

/* Whether a reload leaves a pool as it is: same plugin file, same keys. */
int
conf_pool_same(const struct pool_conf *a, const struct pool_conf *b)
{
	return strcmp(a->plugin, b->plugin) == 0 &&
	    a->plugin_dev == b->plugin_dev && a->plugin_ino == b->plugin_ino &&
	    a->plugin_mtime.tv_sec == b->plugin_mtime.tv_sec &&
	    a->plugin_mtime.tv_nsec == b->plugin_mtime.tv_nsec &&
	    a->workers == b->workers && a->stream_workers == b->stream_workers &&
	    json_equal(a->args, b->args) && json_equal(a->kwargs, b->kwargs) &&
	    json_equal(a->plugin_options, b->plugin_options) &&
	    a->client_args == b->client_args &&
	    a->queue_timeout == b->queue_timeout &&
	    a->on_crash == b->on_crash && a->max_attempts == b->max_attempts &&
	    a->spool_full == b->spool_full && a->spool_wait == b->spool_wait &&
	    a->item_timeout == b->item_timeout &&
	    a->min_item_rate == b->min_item_rate &&
	    a->max_init_failures == b->max_init_failures &&
	    a->start_seconds == b->start_seconds &&
	    a->slow_stream == b->slow_stream && a->cluster == b->cluster &&
	    a->mode == b->mode && a->min_spare == b->min_spare &&
	    a->max_spare == b->max_spare && a->idle_timeout == b->idle_timeout &&
	    a->max_streams == b->max_streams &&
	    a->allow == b->allow && a->uid == b->uid && a->gid == b->gid &&
	    (a->user == NULL) == (b->user == NULL) &&
	    a->rlimit_nofile == b->rlimit_nofile &&
	    a->rlimit_as == b->rlimit_as && a->nice == b->nice &&
	    json_equal(a->env, b->env) && json_equal(a->env_keep, b->env_keep) &&
	    same_ids(a->allow_uids, a->nallow_uids, b->allow_uids,
	    b->nallow_uids, sizeof(uid_t)) &&
	    same_ids(a->allow_gids, a->nallow_gids, b->allow_gids,
	    b->nallow_gids, sizeof(gid_t));
}

struct pool_conf *
conf_pool(struct conf *c, const char *name)
{
	for (size_t i = 0; i < c->npools; i++)
		if (strcmp(c->pools[i].name, name) == 0)
			return &c->pools[i];
	return NULL;
}
