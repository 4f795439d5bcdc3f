/*
 * sqlite - writes a stream's items as rows of an SQLite table.
 *
 * Each worker opens the database once (init) and keeps the connection
 * across streams.  A consume call first puts its rows in a TEMP table of
 * its own connection (temp.cns_stage: no lock on the database file, and it
 * spills to a temporary file, so memory stays bounded), then copies them
 * into the real table in one short write transaction when its items end.
 * SQLite has one write lock per database file: holding it for a whole
 * stream would make every other worker writing the same file wait, then
 * fail with SQLITE_BUSY.  This way a stream's rows appear all at once, at
 * its commit, or not at all.
 *
 * kwargs: database (required), table ("items"), columns ({"column":
 * "field", ...}; without it one column "item" holds the item's JSON text),
 * create (true), busy_timeout (5000 ms).  See consumers-plugin(3).
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sqlite3.h>

#include <consumers/plugin.h>

#define IDENT_MAX	128	/* longest table or column name we accept */
#define COLUMNS_MAX	1000	/* below SQLite's default SQLITE_MAX_COLUMN */

struct db {
	sqlite3		*conn;
	char		*path;
	char		 table[IDENT_MAX + 1];
	size_t		 ncols;
	char	       **cols;		/* column names; NULL: one "item" */
	char	       **fields;	/* the item field of each column */
	sqlite3_stmt	*stage;		/* INSERT INTO temp.cns_stage */
	sqlite3_stmt	*flush;		/* INSERT INTO main.T SELECT ... */
	sqlite3_stmt	*clear;		/* DELETE FROM temp.cns_stage */
	char		*buf;		/* compact JSON text of a value */
	size_t		 bufsz;
};

static const char *known[] = {
	"database", "table", "columns", "create", "busy_timeout", NULL
};

/* Letters, digits and underscores, not starting with a digit: such a name
 * can be put between double quotes in SQL as it is. */
static int
identifier(const char *s)
{
	size_t i;

	if (s[0] == '\0' || (s[0] >= '0' && s[0] <= '9'))
		return 0;
	for (i = 0; s[i] != '\0'; i++) {
		char c = s[i];
		if (i >= IDENT_MAX || !((c >= 'a' && c <= 'z') ||
		    (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		    c == '_'))
			return 0;
	}
	return 1;
}

static void
db_free(struct db *db)
{
	size_t i;

	if (db == NULL)
		return;
	sqlite3_finalize(db->stage);
	sqlite3_finalize(db->flush);
	sqlite3_finalize(db->clear);
	sqlite3_close(db->conn);	/* NULL is a no-op */
	for (i = 0; db->cols != NULL && i < db->ncols; i++) {
		free(db->cols[i]);
		free(db->fields[i]);
	}
	free(db->cols);
	free(db->fields);
	free(db->path);
	free(db->buf);
	free(db);
}

/* Check kwargs: names, types; fill table and columns.  0, or -1 after
 * cns_fail. */
static int
read_kwargs(const cns_ctx *ctx, struct db *db, json_t *kw, int *create,
    int *busy)
{
	const char *key;
	json_t *v;
	size_t i;

	if (json_array_size(cns_args(ctx)) > 0) {
		cns_fail(ctx, "sqlite: the plugin takes no args; give its "
		    "settings in kwargs (database, table, columns, create, "
		    "busy_timeout)");
		return -1;
	}
	json_object_foreach(kw, key, v) {
		for (i = 0; known[i] != NULL; i++)
			if (strcmp(key, known[i]) == 0)
				break;
		if (known[i] == NULL) {
			cns_fail(ctx, "sqlite: unknown key \"%s\" in kwargs "
			    "(known: database, table, columns, create, "
			    "busy_timeout)", key);
			return -1;
		}
	}

	v = json_object_get(kw, "table");
	if (v != NULL && !json_is_string(v)) {
		cns_fail(ctx, "sqlite: kwargs.table must be a string");
		return -1;
	}
	key = v != NULL ? json_string_value(v) : "items";
	if (!identifier(key) || (v != NULL && strlen(key) !=
	    json_string_length(v))) {
		cns_fail(ctx, "sqlite: kwargs.table \"%s\" is not a plain SQL "
		    "name: use letters, digits and underscores (not first), "
		    "at most %d characters", key, IDENT_MAX);
		return -1;
	}
	snprintf(db->table, sizeof db->table, "%s", key);

	v = json_object_get(kw, "create");
	if (v != NULL && !json_is_boolean(v)) {
		cns_fail(ctx, "sqlite: kwargs.create must be true or false");
		return -1;
	}
	*create = v == NULL || json_is_true(v);

	v = json_object_get(kw, "busy_timeout");
	if (v != NULL && (!json_is_integer(v) || json_integer_value(v) < 0 ||
	    json_integer_value(v) > INT_MAX)) {
		cns_fail(ctx, "sqlite: kwargs.busy_timeout must be an integer "
		    "number of milliseconds, 0 to %d", INT_MAX);
		return -1;
	}
	*busy = v != NULL ? (int)json_integer_value(v) : 5000;

	v = json_object_get(kw, "columns");
	if (v == NULL)
		return 0;
	if (!json_is_object(v) || json_object_size(v) == 0 ||
	    json_object_size(v) > COLUMNS_MAX) {
		cns_fail(ctx, "sqlite: kwargs.columns must be an object "
		    "{\"column\": \"field\", ...} with 1 to %d columns; leave "
		    "it out to store each item's JSON text in one column "
		    "\"item\"", COLUMNS_MAX);
		return -1;
	}
	db->cols = calloc(json_object_size(v), sizeof *db->cols);
	db->fields = calloc(json_object_size(v), sizeof *db->fields);
	if (db->cols == NULL || db->fields == NULL) {
		cns_fail(ctx, "sqlite: out of memory");
		return -1;
	}
	{
		json_t *f;

		json_object_foreach(v, key, f) {
			if (!identifier(key)) {
				cns_fail(ctx, "sqlite: kwargs.columns: \"%s\" "
				    "is not a plain SQL name: use letters, "
				    "digits and underscores (not first), at "
				    "most %d characters", key, IDENT_MAX);
				return -1;
			}
			if (!json_is_string(f)) {
				cns_fail(ctx, "sqlite: kwargs.columns.%s must "
				    "be a string: the name of the item field "
				    "that fills the column", key);
				return -1;
			}
			db->cols[db->ncols] = strdup(key);
			db->fields[db->ncols] = strdup(json_string_value(f));
			db->ncols++;
			if (db->cols[db->ncols - 1] == NULL ||
			    db->fields[db->ncols - 1] == NULL) {
				cns_fail(ctx, "sqlite: out of memory");
				return -1;
			}
		}
	}
	return 0;
}

/* kwargs.database, made absolute: a relative path is taken in
 * $STATE_DIRECTORY (systemd's StateDirectory=; the first one when it
 * names several). */
static int
resolve_path(const cns_ctx *ctx, struct db *db, json_t *kw)
{
	json_t *v = json_object_get(kw, "database");
	const char *name, *state;
	size_t n;

	if (v == NULL) {
		cns_fail(ctx, "sqlite: kwargs.database is missing: name the "
		    "database file, e.g. \"kwargs\": {\"database\": "
		    "\"/var/lib/consumersd/items.db\"}");
		return -1;
	}
	if (!json_is_string(v) || json_string_length(v) == 0 ||
	    strlen(json_string_value(v)) != json_string_length(v)) {
		cns_fail(ctx, "sqlite: kwargs.database must be a file name "
		    "(a non-empty string)");
		return -1;
	}
	name = json_string_value(v);
	if (name[0] == '/') {
		db->path = strdup(name);
	} else {
		state = getenv("STATE_DIRECTORY");
		if (state == NULL || state[0] != '/') {
			cns_fail(ctx, "sqlite: kwargs.database \"%s\" is a "
			    "relative path and STATE_DIRECTORY is not set "
			    "(to an absolute path) in the worker's "
			    "environment: give an absolute path, or run the "
			    "daemon with StateDirectory= (systemd) and add "
			    "\"env_keep\": [\"STATE_DIRECTORY\"] to the pool",
			    name);
			return -1;
		}
		n = strcspn(state, ":");
		if (asprintf(&db->path, "%.*s/%s", (int)n, state, name) == -1)
			db->path = NULL;
	}
	if (db->path == NULL) {
		cns_fail(ctx, "sqlite: out of memory");
		return -1;
	}
	return 0;
}

/* Run one statement of SQL text; 0, or -1 after cns_fail. */
static int
exec(const cns_ctx *ctx, struct db *db, const char *sql, const char *what)
{
	char *err = NULL;

	if (sqlite3_exec(db->conn, sql, NULL, NULL, &err) == SQLITE_OK)
		return 0;
	cns_fail(ctx, "sqlite: %s: %s: %s", db->path, what,
	    err != NULL ? err : sqlite3_errmsg(db->conn));
	sqlite3_free(err);
	return -1;
}

static int
prepare(const cns_ctx *ctx, struct db *db, const char *sql,
    sqlite3_stmt **st)
{
	if (sqlite3_prepare_v3(db->conn, sql, -1, SQLITE_PREPARE_PERSISTENT,
	    st, NULL) == SQLITE_OK)
		return 0;
	cns_fail(ctx, "sqlite: %s: %s (in: %s)", db->path,
	    sqlite3_errmsg(db->conn), sql);
	return -1;
}

/* The SQL text of the column list, "a","b" (or "item"), in a new string. */
static char *
column_list(const struct db *db)
{
	char *s = NULL, *t;
	size_t i;

	if (db->cols == NULL)
		return strdup("\"item\"");
	for (i = 0; i < db->ncols; i++) {
		if (asprintf(&t, "%s%s\"%s\"", s != NULL ? s : "",
		    i > 0 ? "," : "", db->cols[i]) == -1)
			t = NULL;
		free(s);
		if ((s = t) == NULL)
			return NULL;
	}
	return s;
}

/* The table (when create), the stage, the statements. */
static int
setup(const cns_ctx *ctx, struct db *db, int create)
{
	char *cols, *sql = NULL, *q;
	size_t i, n;
	int rc = -1;

	if ((cols = column_list(db)) == NULL) {
		cns_fail(ctx, "sqlite: out of memory");
		return -1;
	}
	/* Untyped columns keep each value as it came (an integer stays an
	 * INTEGER, text stays TEXT). */
	if (create && asprintf(&sql, "CREATE TABLE IF NOT EXISTS main.\"%s\""
	    "(%s%s)", db->table, cols, db->cols == NULL ? " TEXT" : "") == -1) {
		sql = NULL;
		goto oom;
	}
	if (create && exec(ctx, db, sql, "cannot create the table") == -1)
		goto out;
	free(sql);
	if (asprintf(&sql, "CREATE TEMP TABLE IF NOT EXISTS cns_stage(%s)",
	    cols) == -1) {
		sql = NULL;
		goto oom;
	}
	if (exec(ctx, db, sql, "cannot create the staging table") == -1)
		goto out;
	free(sql);
	n = db->cols == NULL ? 1 : db->ncols;
	if ((q = malloc(2 * n)) == NULL) {
		sql = NULL;
		goto oom;
	}
	for (i = 0; i < n; i++) {
		q[2 * i] = '?';
		q[2 * i + 1] = i + 1 < n ? ',' : '\0';
	}
	if (asprintf(&sql, "INSERT INTO temp.cns_stage VALUES(%s)", q) == -1)
		sql = NULL;
	free(q);
	if (sql == NULL)
		goto oom;
	if (prepare(ctx, db, sql, &db->stage) == -1)
		goto out;
	free(sql);
	if (asprintf(&sql, "INSERT INTO main.\"%s\"(%s) SELECT %s FROM "
	    "temp.cns_stage ORDER BY rowid", db->table, cols, cols) == -1) {
		sql = NULL;
		goto oom;
	}
	if (prepare(ctx, db, sql, &db->flush) == -1) {
		if (!create)
			cns_fail(ctx, "sqlite: %s: cannot write table \"%s\" "
			    "(%s); with \"create\": false the table must "
			    "exist with these columns: %s", db->path,
			    db->table, sqlite3_errmsg(db->conn), cols);
		goto out;
	}
	if (prepare(ctx, db, "DELETE FROM temp.cns_stage", &db->clear) == -1)
		goto out;
	rc = 0;
	goto out;
oom:
	cns_fail(ctx, "sqlite: out of memory");
out:
	free(sql);
	free(cols);
	return rc;
}

/*
 * consumersd -t: the settings parse and the database could be opened as
 * the pool's user: an existing file readable and writable, or a new one's
 * directory writable.  Nothing is created.
 */
CNS_PLUGIN_EXPORT int consumers_plugin_check(const cns_ctx *);

int
consumers_plugin_check(const cns_ctx *ctx)
{
	json_t *kw = cns_kwargs(ctx);
	struct db *db;
	char *dir, *slash;
	int create, busy, rc = -1;

	if ((db = calloc(1, sizeof *db)) == NULL) {
		cns_fail(ctx, "sqlite: out of memory");
		return -1;
	}
	const char *name = json_string_value(json_object_get(kw,
	    "database")), *state = getenv("STATE_DIRECTORY");

	if (read_kwargs(ctx, db, kw, &create, &busy) == -1)
		goto out;
	/* A name under StateDirectory= (systemd): that directory exists
	 * once the service runs, not necessarily now. */
	if (name != NULL && name[0] != '/' && (state == NULL ||
	    state[0] != '/')) {
		rc = 0;
		goto out;
	}
	if (resolve_path(ctx, db, kw) == -1)
		goto out;
	if (access(db->path, F_OK) == 0) {
		if (access(db->path, R_OK | W_OK) == -1) {
			cns_fail(ctx, "sqlite: cannot open database %s as uid "
			    "%u: %s; the file must be readable and writable by "
			    "the pool's user", db->path, (unsigned)getuid(),
			    strerror(errno));
			goto out;
		}
	}
	if ((dir = strdup(db->path)) == NULL) {
		cns_fail(ctx, "sqlite: out of memory");
		goto out;
	}
	slash = strrchr(dir, '/');
	if (slash == dir)
		slash[1] = '\0';
	else
		*slash = '\0';
	if (access(dir, W_OK | X_OK) == -1) {
		cns_fail(ctx, "sqlite: cannot open database %s as uid %u: its "
		    "directory %s: %s; the directory must exist and be "
		    "writable by the pool's user (SQLite creates its -wal and "
		    "-shm files beside the database)", db->path,
		    (unsigned)getuid(), dir, strerror(errno));
		free(dir);
		goto out;
	}
	free(dir);
	rc = 0;
out:
	db_free(db);
	return rc;
}

static int
open_db(const cns_ctx *ctx, void **state)
{
	json_t *kw = cns_kwargs(ctx);
	struct db *db;
	sqlite3_stmt *st = NULL;
	const char *mode;
	int create, busy, rc, waited;

	if ((db = calloc(1, sizeof *db)) == NULL) {
		cns_fail(ctx, "sqlite: out of memory");
		return -1;
	}
	if (read_kwargs(ctx, db, kw, &create, &busy) == -1 ||
	    resolve_path(ctx, db, kw) == -1)
		goto fail;
	rc = sqlite3_open_v2(db->path, &db->conn, SQLITE_OPEN_READWRITE |
	    SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
	if (rc != SQLITE_OK) {
		int e = db->conn != NULL ? sqlite3_system_errno(db->conn) : 0;
		cns_fail(ctx, "sqlite: cannot open database %s as uid %u: "
		    "%s%s%s%s; the file and its directory must be writable by "
		    "the pool's user (SQLite creates its -wal and -shm files "
		    "beside the database)", db->path, (unsigned)getuid(),
		    db->conn != NULL ? sqlite3_errmsg(db->conn) :
		    sqlite3_errstr(rc), e != 0 ? " (" : "",
		    e != 0 ? strerror(e) : "", e != 0 ? ")" : "");
		goto fail;
	}
	sqlite3_extended_result_codes(db->conn, 1);
	sqlite3_busy_timeout(db->conn, busy);
	/* Readers do not block the writer, and the writer not readers;
	 * checked against what SQLite answers (a file system without shared
	 * memory keeps the rollback journal).  Workers that start together
	 * on a new file all try to switch it: SQLite answers SQLITE_BUSY to
	 * the losers without waiting (it would deadlock), so wait here. */
	for (waited = 0;; waited += 10) {
		rc = sqlite3_prepare_v2(db->conn, "PRAGMA journal_mode=WAL", -1,
		    &st, NULL);
		if (rc == SQLITE_OK)
			rc = sqlite3_step(st);
		if (rc == SQLITE_ROW)
			break;
		sqlite3_finalize(st);
		st = NULL;
		if ((rc & 0xff) != SQLITE_BUSY || waited >= busy) {
			cns_fail(ctx, "sqlite: %s: cannot set journal_mode=WAL: "
			    "%s", db->path, sqlite3_errmsg(db->conn));
			goto fail;
		}
		usleep(10000);
	}
	mode = (const char *)sqlite3_column_text(st, 0);
	if (mode == NULL || strcmp(mode, "wal") != 0)
		fprintf(stderr, "sqlite: %s: journal_mode stays %s (WAL is not "
		    "possible here); writers will wait for each other and for "
		    "readers\n", db->path, mode != NULL ? mode : "unknown");
	sqlite3_finalize(st);
	if (setup(ctx, db, create) == -1)
		goto fail;
	fprintf(stderr, "sqlite: opened %s (pid %ld), table %s\n", db->path,
	    (long)getpid(), db->table);
	*state = db;
	return 0;
fail:
	db_free(db);
	return -1;
}

/* The compact JSON text of v in db->buf; NULL when out of memory. */
static const char *
json_text(struct db *db, json_t *v, size_t *len)
{
	size_t n = json_dumpb(v, db->buf, db->bufsz,
	    JSON_COMPACT | JSON_ENCODE_ANY);

	if (n == 0)
		return NULL;
	if (n > db->bufsz) {
		char *b = realloc(db->buf, n);
		if (b == NULL)
			return NULL;
		db->buf = b;
		db->bufsz = n;
		if (json_dumpb(v, db->buf, db->bufsz,
		    JSON_COMPACT | JSON_ENCODE_ANY) != n)
			return NULL;
	}
	*len = n;
	return db->buf;
}

/* Bind column i (1-based) to JSON value v (NULL: missing). */
static int
bind(struct db *db, int i, json_t *v)
{
	const char *s;
	size_t len;

	switch (v != NULL ? json_typeof(v) : JSON_NULL) {
	case JSON_INTEGER:
		return sqlite3_bind_int64(db->stage, i, json_integer_value(v));
	case JSON_REAL:
		return sqlite3_bind_double(db->stage, i, json_real_value(v));
	case JSON_STRING:
		/* Valid until the next cns_next: the row is stepped first. */
		return sqlite3_bind_text64(db->stage, i, json_string_value(v),
		    json_string_length(v), SQLITE_STATIC, SQLITE_UTF8);
	case JSON_TRUE:
		return sqlite3_bind_int(db->stage, i, 1);
	case JSON_FALSE:
		return sqlite3_bind_int(db->stage, i, 0);
	case JSON_NULL:
		return sqlite3_bind_null(db->stage, i);
	default:	/* object, array: its text, copied (the buffer is
			 * reused by the next column) */
		if ((s = json_text(db, v, &len)) == NULL)
			return SQLITE_NOMEM;
		return sqlite3_bind_text64(db->stage, i, s, len,
		    SQLITE_TRANSIENT, SQLITE_UTF8);
	}
}

/* Put one item in the stage: SQLITE_DONE, or an SQLite error code. */
static int
stage(struct db *db, json_t *item)
{
	const char *s;
	size_t i, len;
	int rc = SQLITE_OK;

	if (db->cols == NULL) {
		if ((s = json_text(db, item, &len)) == NULL)
			return SQLITE_NOMEM;
		rc = sqlite3_bind_text64(db->stage, 1, s, len, SQLITE_STATIC,
		    SQLITE_UTF8);
	} else
		for (i = 0; i < db->ncols && rc == SQLITE_OK; i++)
			rc = bind(db, (int)i + 1,
			    json_object_get(item, db->fields[i]));
	if (rc == SQLITE_OK)
		rc = sqlite3_step(db->stage);
	sqlite3_reset(db->stage);
	return rc;
}

/* Copy the stage into the table in one write transaction: the rows it
 * committed, or -1 (rolled back) after cns_fail. */
static int64_t
commit(const cns_ctx *ctx, struct db *db, uint64_t staged)
{
	int rc;

	if (staged == 0)
		return 0;
	/* The write lock, waiting up to busy_timeout for another writer. */
	rc = sqlite3_exec(db->conn, "BEGIN IMMEDIATE", NULL, NULL, NULL);
	if (rc == SQLITE_OK) {
		rc = sqlite3_step(db->flush);
		sqlite3_reset(db->flush);
	}
	/* INSERT ... SELECT put every staged row, or failed. */
	if (rc == SQLITE_DONE && sqlite3_exec(db->conn, "COMMIT", NULL, NULL,
	    NULL) == SQLITE_OK)
		return (int64_t)staged;
	cns_fail(ctx, "sqlite: %s: cannot commit %" PRIu64 " row%s to table "
	    "%s: %s; nothing was committed", db->path, staged,
	    staged == 1 ? "" : "s", db->table, sqlite3_errmsg(db->conn));
	if (!sqlite3_get_autocommit(db->conn))
		sqlite3_exec(db->conn, "ROLLBACK", NULL, NULL, NULL);
	return -1;
}

static json_t *
consume(cns_items *items, const cns_ctx *ctx)
{
	struct db *db = cns_state(ctx);
	uint64_t staged = 0, bad = 0, first_bad = 0, lost = 0, first_lost = 0;
	char err[512] = "";
	json_t *item;
	int64_t rows;
	int rc;

	/* A stage left by a call that did not finish (it cannot be: a
	 * worker leaves consume only through here; but be sure). */
	sqlite3_step(db->clear);
	sqlite3_reset(db->clear);
	while ((item = cns_next(items)) != NULL) {
		if (db->cols != NULL && !json_is_object(item)) {
			if (bad++ == 0)
				first_bad = cns_seq(items);
			continue;
		}
		if (lost > 0) {		/* the stage failed: drain */
			lost++;
			continue;
		}
		if ((rc = stage(db, item)) == SQLITE_DONE) {
			staged++;
			continue;
		}
		lost = 1;
		first_lost = cns_seq(items);
		snprintf(err, sizeof err, "%s", rc == SQLITE_NOMEM ?
		    "out of memory" : sqlite3_errmsg(db->conn));
	}
	if (lost > 0) {
		cns_fail(ctx, "sqlite: %s: cannot stage item %" PRIu64 ": %s; "
		    "none of this consumer's %" PRIu64 " items were committed",
		    db->path, first_lost, err, staged + lost);
		rows = 0;
	} else if ((rows = commit(ctx, db, staged)) == -1)
		rows = 0;
	else if (bad > 0)
		cns_fail(ctx, "sqlite: %" PRIu64 " item%s %s not %s "
		    "(first: seq %" PRIu64 "); %s not inserted", bad,
		    bad == 1 ? "" : "s", bad == 1 ? "was" : "were",
		    bad == 1 ? "a JSON object" : "JSON objects", first_bad,
		    bad == 1 ? "it was" : "they were");
	sqlite3_step(db->clear);
	sqlite3_reset(db->clear);
	return json_integer(rows);
}

static json_t *
total(json_t *results, const cns_ctx *ctx)
{
	json_int_t sum = 0;
	size_t i;
	json_t *r;

	(void)ctx;
	json_array_foreach(results, i, r)
		if (json_is_integer(r))
			sum += json_integer_value(r);
	return json_integer(sum);
}

static void
close_db(void *state)
{
	db_free(state);
}

CONSUMERS_PLUGIN(.init = open_db, .consume = consume, .complete = total,
    .fini = close_db);
