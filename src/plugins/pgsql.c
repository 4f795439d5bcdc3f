/*
 * pgsql - inserts a stream's items into a PostgreSQL table (libpq).
 *
 * Each worker opens one connection in init and keeps it for its life.  Each
 * consume call is one transaction: the items go in with COPY ... FROM STDIN
 * (text format) as they arrive, and the transaction commits when the
 * iterator ends; the result is the number of rows committed, the
 * completion the stream's total.
 *
 * A lost connection must neither drop nor duplicate rows.  So the rows of
 * the open transaction are also written to an unlinked temporary file (the
 * "spool"; memory stays bounded), and every transaction inserts a random
 * token into a bookkeeping table.  When the connection goes before the
 * COMMIT is known to have succeeded, the plugin reconnects and sends the
 * whole transaction again from the spool; when it went during the COMMIT,
 * the token says whether that transaction made it.  A row the server
 * refuses (a data error in COPY, "line N") is left out and the transaction
 * sent again without it.  Every such event reaches the client through
 * cns_fail.  See consumers-pgsql(3).
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

#include <consumers/plugin.h>

#define PG_FLUSH	(64u << 10)	/* bytes of rows per COPY/spool write */
#define PG_RESTARTS	16		/* new transactions per consume call */
#define PG_TRIES	5		/* reconnect attempts in a row */
#define PG_BACKOFF_MS	100		/* first pause between them, doubled */
#define PG_IDENT_MAX	63		/* NAMEDATALEN - 1 */
#define PG_REPORT_RUNS	8		/* seq ranges named in a report */
#define PG_BOOK		"consumersd_pgsql_commits"
#define PG_LOCK_KEY	"7236104591"	/* advisory lock around the DDL */

struct col {
	char		*field;		/* the item's top-level key */
	char		*name;		/* the column, quoted */
};

struct buf {
	char		*p;
	size_t		 len, cap;
};

/* A run of consecutive seqs that became consecutive rows in the spool. */
struct run {
	uint64_t	 seq;
	uint64_t	 row;		/* spool row of seq */
};

enum outcome {
	PG_OK,
	PG_LOST,	/* the connection is gone: reconnect, send again */
	PG_RETRY,	/* serialization failure, deadlock: send again */
	PG_BADROW,	/* the server refused one row: leave it out */
	PG_FATAL	/* anything else: this transaction cannot commit */
};

struct pg {
	PGconn		*conn;
	char		*conninfo;
	char		 appname[96];
	char		*table;		/* quoted */
	struct col	*cols;		/* NULL: one jsonb column "item" */
	size_t		 ncols;
	char		*copy_sql;

	/* The current transaction. */
	int		 spool_fd;
	uint64_t	 spool_size;	/* bytes written to the spool */
	int		 spool_ok;
	char		 spool_err[160];
	struct buf	 out;		/* rows not yet written or sent */
	struct buf	 row;
	struct run	*runs;
	size_t		 nruns, runcap;
	uint64_t	 rows, last_seq;
	uint64_t	*skip;		/* refused spool rows, sorted */
	size_t		 nskip, skipcap;
	char		 token[33];
	int		 sending;	/* COPY open, spool fully sent */
	int		 down;		/* no connection: reconnect at end */
	int		 failed;	/* this transaction cannot commit */
	unsigned	 restarts;
	char		 why[512];	/* the failure that ended it */

	/* What the client is told. */
	unsigned	 losses;
	uint64_t	 lost_seq;
	char		 lost_why[256];
	uint64_t	 local_bad, local_first;
	char		 local_why[160];
	uint64_t	 bad_first;
	char		 bad_why[256];
	int		 commit_found;
};

/* ---- small helpers ---- */

static int
buf_grow(struct buf *b, size_t more)
{
	size_t cap;
	char *p;

	if (b->len + more <= b->cap)
		return 0;
	cap = b->cap ? b->cap : 256;
	while (cap < b->len + more)
		cap *= 2;
	if ((p = realloc(b->p, cap)) == NULL)
		return -1;
	b->p = p;
	b->cap = cap;
	return 0;
}

static int
buf_add(struct buf *b, const char *s, size_t n)
{
	if (buf_grow(b, n) != 0)
		return -1;
	memcpy(b->p + b->len, s, n);
	b->len += n;
	return 0;
}

/* Append s in COPY text format: backslash, and the characters that would
 * end a field or a row, escaped. */
static int
buf_add_copy(struct buf *b, const char *s, size_t n)
{
	size_t i;

	if (buf_grow(b, 2 * n) != 0)
		return -1;
	for (i = 0; i < n; i++) {
		char c = s[i], e = 0;

		switch (c) {
		case '\\': e = '\\'; break;
		case '\n': e = 'n'; break;
		case '\r': e = 'r'; break;
		case '\t': e = 't'; break;
		case '\b': e = 'b'; break;
		case '\f': e = 'f'; break;
		case '\v': e = 'v'; break;
		}
		if (e != 0) {
			b->p[b->len++] = '\\';
			b->p[b->len++] = e;
		} else
			b->p[b->len++] = c;
	}
	return 0;
}

static int
dump_cb(const char *s, size_t n, void *b)
{
	return buf_add_copy(b, s, n);
}

/* A libpq message on one line, without its trailing newline. */
static void
oneline(char *dst, size_t size, const char *msg)
{
	size_t n = 0;
	int space = 0;

	for (; msg != NULL && *msg != '\0' && n + 1 < size; msg++) {
		if (isspace((unsigned char)*msg)) {
			space = n > 0;
			continue;
		}
		if (space && n + 2 < size)
			dst[n++] = ' ';
		space = 0;
		dst[n++] = *msg;
	}
	dst[n] = '\0';
}

static const char *
type_name(const json_t *v)
{
	switch (json_typeof(v)) {
	case JSON_OBJECT: return "an object";
	case JSON_ARRAY: return "an array";
	case JSON_STRING: return "a string";
	case JSON_INTEGER: return "an integer";
	case JSON_REAL: return "a real";
	case JSON_TRUE: case JSON_FALSE: return "a boolean";
	default: return "null";
	}
}

/* A plain SQL identifier, quoted; NULL (with *why) if it is not one. */
static char *
ident(const char *s, const char **why)
{
	size_t i, n = strlen(s);
	char *q;

	*why = NULL;
	if (n == 0 || n > PG_IDENT_MAX)
		*why = "must be 1 to 63 bytes long";
	else if (isdigit((unsigned char)s[0]))
		*why = "must not start with a digit";
	for (i = 0; *why == NULL && i < n; i++)
		if (!isalnum((unsigned char)s[i]) && s[i] != '_')
			*why = "may hold only ASCII letters, digits and "
			    "underscores";
	if (*why != NULL)
		return NULL;
	if ((q = malloc(n + 3)) == NULL) {
		*why = "out of memory";
		return NULL;
	}
	snprintf(q, n + 3, "\"%s\"", s);
	return q;
}

/* ---- the spool: this transaction's rows, to send them again ---- */

static int
spool_open(struct pg *pg, const cns_ctx *ctx)
{
	const char *dir = getenv("TMPDIR");
	char path[4096];
	int fd;

	if (dir == NULL || *dir == '\0')
		dir = "/tmp";
	fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	if (fd == -1) {
		/* File systems without O_TMPFILE: create, then unlink. */
		snprintf(path, sizeof(path), "%s/consumersd-pgsql-XXXXXX",
		    dir);
		if ((fd = mkostemp(path, O_CLOEXEC)) != -1)
			unlink(path);
	}
	if (fd == -1) {
		cns_fail(ctx, "cannot create a temporary file in %s (%s): "
		    "set TMPDIR to a writable directory", dir,
		    strerror(errno));
		return -1;
	}
	pg->spool_fd = fd;
	return 0;
}

static void
spool_write(struct pg *pg, const char *p, size_t n)
{
	ssize_t w;

	while (pg->spool_ok && n > 0) {
		w = pwrite(pg->spool_fd, p, n, (off_t)pg->spool_size);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			snprintf(pg->spool_err, sizeof(pg->spool_err),
			    "cannot write the transaction's temporary file "
			    "(%s), so it could not be sent again",
			    w < 0 ? strerror(errno) : "no space");
			pg->spool_ok = 0;
			return;
		}
		p += w;
		n -= (size_t)w;
		pg->spool_size += (uint64_t)w;
	}
}

/* The seq of spool row r. */
static uint64_t
row_seq(const struct pg *pg, uint64_t r)
{
	size_t lo = 0, hi = pg->nruns;

	while (hi - lo > 1) {
		size_t mid = lo + (hi - lo) / 2;
		if (pg->runs[mid].row <= r)
			lo = mid;
		else
			hi = mid;
	}
	return pg->nruns == 0 ? 0 : pg->runs[lo].seq + (r - pg->runs[lo].row);
}

static int
skipped(const struct pg *pg, uint64_t r)
{
	size_t i;

	for (i = 0; i < pg->nskip; i++)
		if (pg->skip[i] == r)
			return 1;
	return 0;
}

/* The spool row of line n (1-based) of the last COPY, which left out the
 * skipped rows. */
static uint64_t
line_row(const struct pg *pg, uint64_t n)
{
	uint64_t r = n - 1;
	size_t i;

	for (i = 0; i < pg->nskip; i++)
		if (pg->skip[i] <= r)
			r++;
	return r;
}

static int
skip_add(struct pg *pg, uint64_t r)
{
	size_t i;
	uint64_t *p;

	if (pg->nskip == pg->skipcap) {
		size_t cap = pg->skipcap ? 2 * pg->skipcap : 8;
		p = realloc(pg->skip, cap * sizeof(*p));
		if (p == NULL)
			return -1;
		pg->skip = p;
		pg->skipcap = cap;
	}
	for (i = pg->nskip; i > 0 && pg->skip[i - 1] > r; i--)
		pg->skip[i] = pg->skip[i - 1];
	pg->skip[i] = r;
	pg->nskip++;
	return 0;
}

/* ---- talking to the server ---- */

static void
log_connected(struct pg *pg, const char *before, const char *verb)
{
	fprintf(stderr, "pgsql: %s%s%s to database %s on %s port %s as %s "
	    "(backend pid %d)\n", before, before[0] ? "; " : "", verb,
	    PQdb(pg->conn), PQhost(pg->conn),
	    PQport(pg->conn), PQuser(pg->conn), PQbackendPID(pg->conn));
	fflush(stderr);
}

static int
connect_db(struct pg *pg, char *why, size_t size)
{
	const char *const keys[] = { "dbname", "client_encoding",
	    "fallback_application_name", NULL };
	const char *const values[] = { pg->conninfo, "UTF8", pg->appname,
	    NULL };

	pg->conn = PQconnectdbParams(keys, values, 1);
	if (pg->conn != NULL && PQstatus(pg->conn) == CONNECTION_OK)
		return 0;
	oneline(why, size, pg->conn != NULL ? PQerrorMessage(pg->conn) :
	    "out of memory");
	return -1;
}

/* PG_TRIES attempts with a doubling pause; 0 when connected. */
static int
reconnect(struct pg *pg, const char *after)
{
	struct timespec ts;
	char why[256] = "";
	unsigned i, ms = PG_BACKOFF_MS;

	for (i = 0; i < PG_TRIES; i++) {
		if (i > 0) {
			ts.tv_sec = ms / 1000;
			ts.tv_nsec = (long)(ms % 1000) * 1000000L;
			nanosleep(&ts, NULL);
			ms *= 2;
		}
		PQreset(pg->conn);
		if (PQstatus(pg->conn) == CONNECTION_OK) {
			snprintf(why, sizeof(why), "connection lost (%.200s)",
			    after);
			log_connected(pg, why, "reconnected");
			return 0;
		}
		oneline(why, sizeof(why), PQerrorMessage(pg->conn));
	}
	fprintf(stderr, "pgsql: connection lost (%s); %u attempts to "
	    "reconnect failed, the last: %s\n", after, PG_TRIES, why);
	fflush(stderr);
	snprintf(pg->why, sizeof(pg->why), "the connection to the server was "
	    "lost (%s) and %u attempts to reconnect failed (%s)", after,
	    PG_TRIES, why);
	return -1;
}

/* What an error result means for the transaction. */
static enum outcome
classify(struct pg *pg, const PGresult *r, uint64_t *row)
{
	const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
	const char *context = PQresultErrorField(r, PG_DIAG_CONTEXT);
	const char *line;
	char msg[256];

	oneline(msg, sizeof(msg), PQresultErrorMessage(r));
	if (PQstatus(pg->conn) != CONNECTION_OK || state == NULL ||
	    strncmp(state, "08", 2) == 0 || strncmp(state, "57P", 3) == 0) {
		snprintf(pg->why, sizeof(pg->why), "%s", msg);
		return PG_LOST;
	}
	if (strncmp(state, "40", 2) == 0) {
		snprintf(pg->why, sizeof(pg->why), "%s", msg);
		return PG_RETRY;
	}
	if ((strncmp(state, "22", 2) == 0 || strncmp(state, "23", 2) == 0) &&
	    context != NULL && (line = strstr(context, ", line ")) != NULL) {
		unsigned long long n = strtoull(line + 7, NULL, 10);
		if (n >= 1 && line_row(pg, n) < pg->rows) {
			*row = line_row(pg, n);
			snprintf(pg->why, sizeof(pg->why), "%s", msg);
			return PG_BADROW;
		}
	}
	snprintf(pg->why, sizeof(pg->why), "%s", msg);
	return PG_FATAL;
}

/* Read every pending result; the first error decides. */
static enum outcome
drain(struct pg *pg, uint64_t *row)
{
	enum outcome o = PG_OK;
	PGresult *r;
	unsigned n;

	for (n = 0; n < 100 && (r = PQgetResult(pg->conn)) != NULL; n++) {
		ExecStatusType st = PQresultStatus(r);

		if (st == PGRES_COPY_IN)
			PQputCopyEnd(pg->conn, "consumersd: transaction "
			    "abandoned");
		else if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK &&
		    o == PG_OK)
			o = classify(pg, r, row);
		PQclear(r);
		if (PQstatus(pg->conn) != CONNECTION_OK)
			break;
	}
	if (o == PG_OK && PQstatus(pg->conn) != CONNECTION_OK) {
		oneline(pg->why, sizeof(pg->why), PQerrorMessage(pg->conn));
		o = PG_LOST;
	}
	return o;
}

/* Run one command; PG_OK or what went wrong. */
static enum outcome
command(struct pg *pg, const char *sql, int nparams, const char *param,
    ExecStatusType want, int *found)
{
	PGresult *r;
	enum outcome o = PG_OK;
	uint64_t row;

	r = PQexecParams(pg->conn, sql, nparams, NULL, &param, NULL, NULL, 0);
	if (r == NULL || PQresultStatus(r) != want) {
		if (r != NULL && PQresultStatus(r) != PGRES_FATAL_ERROR) {
			snprintf(pg->why, sizeof(pg->why), "unexpected "
			    "answer to %.40s: %s", sql,
			    PQresStatus(PQresultStatus(r)));
			o = PG_FATAL;
		} else if (r != NULL)
			o = classify(pg, r, &row);
		else {
			oneline(pg->why, sizeof(pg->why),
			    PQerrorMessage(pg->conn));
			o = PQstatus(pg->conn) != CONNECTION_OK ? PG_LOST :
			    PG_FATAL;
		}
		if (o == PG_BADROW)
			o = PG_FATAL;
	} else if (found != NULL)
		*found = PQntuples(r) > 0;
	PQclear(r);
	return o;
}

static void
new_token(struct pg *pg)
{
	unsigned char b[16];
	size_t i;

	if (getrandom(b, sizeof(b), 0) != sizeof(b)) {
		/* Never expected; still unique enough per process. */
		struct timespec ts;
		uint64_t x;

		clock_gettime(CLOCK_REALTIME, &ts);
		x = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
		memcpy(b, &x, 8);
		x = (uint64_t)getpid() ^ ((uint64_t)pg->restarts << 32);
		memcpy(b + 8, &x, 8);
	}
	for (i = 0; i < sizeof(b); i++)
		snprintf(pg->token + 2 * i, 3, "%02x", b[i]);
}

/* Send the spool's rows from the start, leaving out the skipped ones. */
static enum outcome
replay(struct pg *pg, uint64_t *row)
{
	int fd = fcntl(pg->spool_fd, F_DUPFD_CLOEXEC, 0);
	FILE *f = fd != -1 ? fdopen(fd, "r") : NULL;
	struct buf b = { 0 };
	char *line = NULL;
	size_t cap = 0;
	ssize_t n;
	uint64_t r, bytes = 0;
	enum outcome o = PG_OK;

	/* The duplicate shares the spool's file offset: rewind it. */
	if (f == NULL || fseeko(f, 0, SEEK_SET) != 0) {
		snprintf(pg->why, sizeof(pg->why), "cannot read the "
		    "transaction's temporary file back (%s)", strerror(errno));
		if (f != NULL)
			fclose(f);
		else if (fd != -1)
			close(fd);
		return PG_FATAL;
	}
	for (r = 0; o == PG_OK && r < pg->rows; r++) {
		if ((n = getline(&line, &cap, f)) <= 0 ||
		    line[n - 1] != '\n') {
			snprintf(pg->why, sizeof(pg->why), "cannot read the "
			    "transaction's temporary file back (%s)",
			    ferror(f) ? strerror(errno) : "it is short");
			o = PG_FATAL;
			break;
		}
		bytes += (uint64_t)n;
		if (!skipped(pg, r) && buf_add(&b, line, (size_t)n) != 0) {
			snprintf(pg->why, sizeof(pg->why), "out of memory");
			o = PG_FATAL;
		} else if (b.len >= PG_FLUSH || r + 1 == pg->rows) {
			if (b.len > 0 && PQputCopyData(pg->conn, b.p,
			    (int)b.len) != 1)
				o = drain(pg, row);
			b.len = 0;
		}
	}
	free(line);
	free(b.p);
	fclose(f);
	if (o == PG_OK && bytes != pg->spool_size) {
		snprintf(pg->why, sizeof(pg->why), "the transaction's "
		    "temporary file does not hold its rows");
		o = PG_FATAL;
	}
	if (o == PG_OK && (!PQconsumeInput(pg->conn) ||
	    PQstatus(pg->conn) != CONNECTION_OK)) {
		oneline(pg->why, sizeof(pg->why), PQerrorMessage(pg->conn));
		o = PG_LOST;
	}
	return o;
}

/* BEGIN, the token, COPY, and the spool's rows again. */
static enum outcome
begin(struct pg *pg, uint64_t *row)
{
	enum outcome o;
	PGresult *r;

	new_token(pg);
	if ((o = command(pg, "BEGIN", 0, NULL, PGRES_COMMAND_OK, NULL)) !=
	    PG_OK || (o = command(pg, "INSERT INTO " PG_BOOK " (token) "
	    "VALUES ($1)", 1, pg->token, PGRES_COMMAND_OK, NULL)) != PG_OK)
		return o;
	r = PQexec(pg->conn, pg->copy_sql);
	if (r == NULL || PQresultStatus(r) != PGRES_COPY_IN) {
		o = r != NULL ? classify(pg, r, row) : PG_LOST;
		if (r == NULL)
			oneline(pg->why, sizeof(pg->why),
			    PQerrorMessage(pg->conn));
		PQclear(r);
		return o == PG_BADROW ? PG_FATAL : o;
	}
	PQclear(r);
	if (pg->spool_size > 0) {
		if (!pg->spool_ok) {
			snprintf(pg->why, sizeof(pg->why), "%s",
			    pg->spool_err);
			return PG_FATAL;
		}
		return replay(pg, row);
	}
	return PG_OK;
}

/* The transaction went wrong (o): get back to an open COPY that has all
 * the spool's rows, or mark it down or failed. */
static void
recover(struct pg *pg, enum outcome o, uint64_t row)
{
	while (o != PG_OK) {
		pg->sending = 0;
		if (o == PG_FATAL) {
			pg->failed = 1;
			return;
		}
		if (o == PG_LOST) {
			/* Still down from before: not a new loss. */
			if (!pg->down && pg->losses++ == 0) {
				pg->lost_seq = pg->last_seq;
				snprintf(pg->lost_why, sizeof(pg->lost_why),
				    "%.200s", pg->why[0] ? pg->why :
				    "connection closed");
			}
			if (reconnect(pg, pg->lost_why) != 0) {
				pg->down = 1;
				return;
			}
			pg->down = 0;
		} else {
			if (o == PG_BADROW) {
				if (pg->nskip == 0) {
					pg->bad_first = row_seq(pg, row);
					snprintf(pg->bad_why,
					    sizeof(pg->bad_why), "%.200s",
					    pg->why);
				}
				if (skip_add(pg, row) != 0) {
					snprintf(pg->why, sizeof(pg->why),
					    "out of memory");
					pg->failed = 1;
					return;
				}
			}
			o = command(pg, "ROLLBACK", 0, NULL, PGRES_COMMAND_OK,
			    NULL);
			if (o == PG_LOST)
				continue;
		}
		if (++pg->restarts > PG_RESTARTS) {
			snprintf(pg->why, sizeof(pg->why), "gave up after %u "
			    "new transactions (the last went wrong: %s)",
			    PG_RESTARTS, pg->bad_why[0] ? pg->bad_why :
			    pg->lost_why);
			pg->failed = 1;
			return;
		}
		pg->why[0] = '\0';
		o = begin(pg, &row);
	}
	pg->sending = 1;
}

/* Write the pending rows to the spool, then to the server. */
static void
flush(struct pg *pg)
{
	uint64_t row = 0;
	enum outcome o = PG_OK;

	if (pg->out.len == 0)
		return;
	spool_write(pg, pg->out.p, pg->out.len);
	if (pg->sending) {
		/* libpq keeps a failed write to itself until it reads: read
		 * what the server said, to see a lost connection early. */
		if (PQputCopyData(pg->conn, pg->out.p, (int)pg->out.len) != 1)
			o = drain(pg, &row);
		else if (!PQconsumeInput(pg->conn) ||
		    PQstatus(pg->conn) != CONNECTION_OK) {
			oneline(pg->why, sizeof(pg->why),
			    PQerrorMessage(pg->conn));
			o = PG_LOST;
		}
		if (o != PG_OK)
			recover(pg, o, row);
	}
	pg->out.len = 0;
}

/* ---- rows ---- */

static int
add_real(struct buf *b, double d)
{
	char s[40];

	/* The shortest of %.15g and %.17g that reads back the same. */
	snprintf(s, sizeof(s), "%.15g", d);
	if (strtod(s, NULL) != d)
		snprintf(s, sizeof(s), "%.17g", d);
	return buf_add(b, s, strlen(s));
}

static int
add_value(struct buf *b, json_t *v)
{
	char s[32];

	switch (v == NULL ? JSON_NULL : json_typeof(v)) {
	case JSON_NULL:
		return buf_add(b, "\\N", 2);
	case JSON_TRUE:
		return buf_add(b, "true", 4);
	case JSON_FALSE:
		return buf_add(b, "false", 5);
	case JSON_INTEGER:
		snprintf(s, sizeof(s), "%" JSON_INTEGER_FORMAT,
		    json_integer_value(v));
		return buf_add(b, s, strlen(s));
	case JSON_REAL:
		return add_real(b, json_real_value(v));
	case JSON_STRING:
		return buf_add_copy(b, json_string_value(v),
		    json_string_length(v));
	default:
		return json_dump_callback(v, dump_cb, b, JSON_COMPACT |
		    JSON_ENCODE_ANY);
	}
}

/* The item's row in pg->row; 1 if the item cannot be a row (why set). */
static int
make_row(struct pg *pg, json_t *item, const char **why)
{
	struct buf *b = &pg->row;
	size_t i;

	b->len = 0;
	*why = NULL;
	if (pg->cols == NULL) {
		if (json_dump_callback(item, dump_cb, b, JSON_COMPACT |
		    JSON_ENCODE_ANY) != 0)
			*why = "out of memory";
	} else if (!json_is_object(item)) {
		*why = "the item is not an object (kwargs \"columns\" takes "
		    "its fields)";
	} else {
		for (i = 0; *why == NULL && i < pg->ncols; i++) {
			json_t *v = json_object_get(item, pg->cols[i].field);
			if (json_is_string(v) && memchr(json_string_value(v),
			    '\0', json_string_length(v)) != NULL)
				*why = "a string field holds \\u0000, which "
				    "PostgreSQL text cannot store";
			else if ((i > 0 && buf_add(b, "\t", 1) != 0) ||
			    add_value(b, v) != 0)
				*why = "out of memory";
		}
	}
	if (*why == NULL && buf_add(b, "\n", 1) != 0)
		*why = "out of memory";
	return *why != NULL;
}

static int
note_row(struct pg *pg, uint64_t seq)
{
	struct run *p;

	if (pg->nruns == 0 || seq != pg->last_seq + 1) {
		if (pg->nruns == pg->runcap) {
			size_t cap = pg->runcap ? 2 * pg->runcap : 64;
			p = realloc(pg->runs, cap * sizeof(*p));
			if (p == NULL)
				return -1;
			pg->runs = p;
			pg->runcap = cap;
		}
		pg->runs[pg->nruns].seq = seq;
		pg->runs[pg->nruns].row = pg->rows;
		pg->nruns++;
	}
	pg->last_seq = seq;
	pg->rows++;
	return 0;
}

/* "1-500, 1001-1500 (and 3 more ranges)": the seqs of the spool's rows
 * that were not skipped. */
static void
seq_ranges(const struct pg *pg, char *dst, size_t size)
{
	size_t i, n = 0, shown = 0, more = 0, len = 0;
	uint64_t a = 0, b = 0, r;

	dst[0] = '\0';
	for (i = 0; i < pg->nruns; i++) {
		uint64_t end = i + 1 < pg->nruns ? pg->runs[i + 1].row :
		    pg->rows;
		for (r = pg->runs[i].row; r < end; r++) {
			uint64_t s = pg->runs[i].seq + (r - pg->runs[i].row);
			if (skipped(pg, r))
				continue;
			if (n > 0 && s == b + 1) {
				b = s;
				continue;
			}
			if (n++ > 0) {
				if (shown++ < PG_REPORT_RUNS && len < size)
					len += (size_t)snprintf(dst + len,
					    size - len, "%s%" PRIu64 "-%"
					    PRIu64, shown > 1 ? ", " : "", a,
					    b);
				else
					more++;
			}
			a = b = s;
		}
	}
	if (n > 0) {
		if (shown++ < PG_REPORT_RUNS && len < size)
			len += (size_t)snprintf(dst + len, size - len,
			    "%s%" PRIu64 "-%" PRIu64, shown > 1 ? ", " : "",
			    a, b);
		else
			more++;
	}
	if (more > 0 && len < size)
		snprintf(dst + len, size - len, " (and %zu more range%s)",
		    more, more == 1 ? "" : "s");
}

/* ---- the plugin ---- */

static void
pg_free(struct pg *pg)
{
	size_t i;

	if (pg == NULL)
		return;
	if (pg->conn != NULL)
		PQfinish(pg->conn);
	if (pg->spool_fd != -1)
		close(pg->spool_fd);
	for (i = 0; i < pg->ncols; i++) {
		free(pg->cols[i].field);
		free(pg->cols[i].name);
	}
	free(pg->cols);
	free(pg->conninfo);
	free(pg->table);
	free(pg->copy_sql);
	free(pg->out.p);
	free(pg->row.p);
	free(pg->runs);
	free(pg->skip);
	free(pg);
}

static int
parse_columns(struct pg *pg, const cns_ctx *ctx, json_t *columns)
{
	const char *key, *why;
	json_t *field;
	size_t i = 0;

	if (!json_is_object(columns) || json_object_size(columns) == 0) {
		cns_fail(ctx, "kwargs \"columns\" must be a non-empty object "
		    "{\"column\": \"field\", ...}, not %s%s",
		    json_is_object(columns) ? "an empty one" :
		    type_name(columns), "");
		return -1;
	}
	pg->cols = calloc(json_object_size(columns), sizeof(*pg->cols));
	if (pg->cols == NULL) {
		cns_fail(ctx, "out of memory");
		return -1;
	}
	json_object_foreach(columns, key, field) {
		if (!json_is_string(field) ||
		    json_string_length(field) == 0) {
			cns_fail(ctx, "kwargs \"columns\": column \"%s\" must "
			    "name an item field with a non-empty string, not "
			    "%s", key, json_is_string(field) ? "\"\"" :
			    type_name(field));
			return -1;
		}
		pg->cols[i].name = ident(key, &why);
		if (pg->cols[i].name == NULL) {
			cns_fail(ctx, "kwargs \"columns\": \"%s\" is not a "
			    "plain SQL column name: it %s", key, why);
			return -1;
		}
		pg->cols[i].field = strdup(json_string_value(field));
		pg->ncols = ++i;
		if (pg->cols[i - 1].field == NULL) {
			cns_fail(ctx, "out of memory");
			return -1;
		}
	}
	return 0;
}

static int
parse_kwargs(struct pg *pg, const cns_ctx *ctx, int *create)
{
	json_t *kw = cns_kwargs(ctx), *v, *args = cns_args(ctx);
	const char *key, *why, *table = "items";

	if (json_array_size(args) > 0) {
		cns_fail(ctx, "the pgsql plugin takes no \"args\": give it "
		    "kwargs (conninfo, table, columns, create)");
		return -1;
	}
	json_object_foreach(kw, key, v) {
		if (strcmp(key, "conninfo") == 0 || strcmp(key, "table") == 0) {
			if (!json_is_string(v)) {
				cns_fail(ctx, "kwargs \"%s\" must be a string, "
				    "not %s", key, type_name(v));
				return -1;
			}
		} else if (strcmp(key, "create") == 0) {
			if (!json_is_boolean(v)) {
				cns_fail(ctx, "kwargs \"create\" must be true "
				    "or false, not %s", type_name(v));
				return -1;
			}
			*create = json_is_true(v);
		} else if (strcmp(key, "columns") == 0) {
			if (parse_columns(pg, ctx, v) != 0)
				return -1;
		} else {
			cns_fail(ctx, "unknown kwargs key \"%s\" for the pgsql "
			    "plugin (known: conninfo, table, columns, create)",
			    key);
			return -1;
		}
	}
	if ((v = json_object_get(kw, "conninfo")) == NULL) {
		cns_fail(ctx, "kwargs \"conninfo\" is required: a libpq "
		    "connection string, e.g. \"dbname=app "
		    "host=/run/postgresql\"");
		return -1;
	}
	if ((pg->conninfo = strdup(json_string_value(v))) == NULL) {
		cns_fail(ctx, "out of memory");
		return -1;
	}
	if ((v = json_object_get(kw, "table")) != NULL)
		table = json_string_value(v);
	if ((pg->table = ident(table, &why)) == NULL) {
		cns_fail(ctx, "kwargs \"table\": \"%s\" is not a plain SQL "
		    "table name: it %s", table, why);
		return -1;
	}
	return 0;
}

static char *
make_sql(const struct pg *pg, const char *head, const char *each,
    const char *tail)
{
	struct buf b = { 0 };
	size_t i;

	if (buf_add(&b, head, strlen(head)) != 0 ||
	    buf_add(&b, pg->table, strlen(pg->table)) != 0 ||
	    buf_add(&b, " (", 2) != 0)
		goto fail;
	for (i = 0; i < (pg->cols ? pg->ncols : 1); i++) {
		const char *name = pg->cols ? pg->cols[i].name : "item";
		if ((i > 0 && buf_add(&b, ", ", 2) != 0) ||
		    buf_add(&b, name, strlen(name)) != 0 ||
		    buf_add(&b, each, strlen(each)) != 0)
			goto fail;
	}
	if (buf_add(&b, tail, strlen(tail) + 1) != 0)
		goto fail;
	return b.p;
fail:
	free(b.p);
	return NULL;
}

/* The tables: ours always, the user's with create.  Workers of a pool
 * start together, and concurrent CREATE TABLE IF NOT EXISTS can still
 * collide in the catalogue: an advisory lock serialises them. */
static int
setup_tables(struct pg *pg, const cns_ctx *ctx, int create)
{
	char *ddl = NULL;
	enum outcome o;
	int found = 0;

	if (create && (ddl = make_sql(pg, "CREATE TABLE IF NOT EXISTS ",
	    pg->cols ? " text" : " jsonb", ")")) == NULL) {
		cns_fail(ctx, "out of memory");
		return -1;
	}
	o = command(pg, "BEGIN", 0, NULL, PGRES_COMMAND_OK, NULL);
	if (o == PG_OK)
		o = command(pg, "SELECT pg_advisory_xact_lock(" PG_LOCK_KEY
		    ")", 0, NULL, PGRES_TUPLES_OK, NULL);
	/* No "already exists, skipping" notices in the log. */
	if (o == PG_OK)
		o = command(pg, "SET LOCAL client_min_messages = warning", 0,
		    NULL, PGRES_COMMAND_OK, NULL);
	if (o == PG_OK)
		o = command(pg, "CREATE TABLE IF NOT EXISTS " PG_BOOK " ("
		    "token text PRIMARY KEY, "
		    "at timestamptz NOT NULL DEFAULT now())", 0, NULL,
		    PGRES_COMMAND_OK, NULL);
	if (o == PG_OK && ddl != NULL)
		o = command(pg, ddl, 0, NULL, PGRES_COMMAND_OK, NULL);
	if (o == PG_OK)
		o = command(pg, "COMMIT", 0, NULL, PGRES_COMMAND_OK, NULL);
	if (o != PG_OK) {
		cns_fail(ctx, "cannot create the tables (%s): %s", ddl != NULL ?
		    ddl : "CREATE TABLE " PG_BOOK, pg->why);
		free(ddl);
		return -1;
	}
	free(ddl);
	if (!create) {
		o = command(pg, "SELECT 1 WHERE to_regclass($1) IS NOT NULL", 1,
		    pg->table, PGRES_TUPLES_OK, &found);
		if (o != PG_OK || !found) {
			cns_fail(ctx, "table %s does not exist%s%s (create it, "
			    "or set kwargs \"create\" to true)", pg->table,
			    o != PG_OK ? ": " : "", o != PG_OK ? pg->why : "");
			return -1;
		}
	}
	return 0;
}

static int
pgsql_init(const cns_ctx *ctx, void **state)
{
	struct pg *pg;
	char why[512];
	int create = 1;

	if ((pg = calloc(1, sizeof(*pg))) == NULL) {
		cns_fail(ctx, "out of memory");
		return -1;
	}
	pg->spool_fd = -1;
	snprintf(pg->appname, sizeof(pg->appname), "consumersd %s worker %u",
	    cns_pool(ctx), cns_worker(ctx));
	if (parse_kwargs(pg, ctx, &create) != 0 ||
	    (pg->copy_sql = make_sql(pg, "COPY ", "", ") FROM STDIN")) ==
	    NULL || spool_open(pg, ctx) != 0)
		goto fail;
	if (connect_db(pg, why, sizeof(why)) != 0) {
		cns_fail(ctx, "cannot connect to PostgreSQL: %s%s", why,
		    strstr(why, "Address family not supported") != NULL ?
		    " (under systemd, consumersd.service allows only AF_UNIX: "
		    "see consumers-pgsql(3) for the drop-in that allows "
		    "TCP)" : "");
		goto fail;
	}
	log_connected(pg, "", "connected");
	if (setup_tables(pg, ctx, create) != 0)
		goto fail;
	*state = pg;
	return 0;
fail:
	pg_free(pg);
	return -1;
}

static void
pgsql_fini(void *state)
{
	pg_free(state);
}

static void
reset_tx(struct pg *pg)
{
	if (ftruncate(pg->spool_fd, 0) != 0 && pg->spool_ok) {
		snprintf(pg->spool_err, sizeof(pg->spool_err), "cannot "
		    "truncate the transaction's temporary file (%s)",
		    strerror(errno));
		pg->spool_ok = 0;
	} else
		pg->spool_ok = 1;
	pg->spool_size = 0;
	pg->out.len = 0;
	pg->nruns = pg->nskip = 0;
	pg->rows = pg->last_seq = 0;
	pg->sending = pg->down = pg->failed = 0;
	pg->restarts = 0;
	pg->why[0] = '\0';
	pg->losses = 0;
	pg->lost_seq = 0;
	pg->lost_why[0] = '\0';
	pg->local_bad = pg->local_first = 0;
	pg->bad_first = 0;
	pg->bad_why[0] = '\0';
	pg->commit_found = 0;
}

/* Leave no transaction open on a live connection (a failed one would
 * refuse the next stream's commands). */
static void
end_tx(struct pg *pg)
{
	uint64_t row;
	char why[sizeof(pg->why)];

	if (PQstatus(pg->conn) != CONNECTION_OK)
		return;
	/* What ended the transaction is reported, not how it was ended. */
	memcpy(why, pg->why, sizeof(why));
	if (PQtransactionStatus(pg->conn) == PQTRANS_ACTIVE) {
		PQputCopyEnd(pg->conn, "consumersd: transaction abandoned");
		drain(pg, &row);
	}
	if (PQstatus(pg->conn) == CONNECTION_OK &&
	    PQtransactionStatus(pg->conn) != PQTRANS_IDLE)
		command(pg, "ROLLBACK", 0, NULL, PGRES_COMMAND_OK, NULL);
	memcpy(pg->why, why, sizeof(why));
}

/* End the COPY and commit; 1 when the rows are known committed. */
static int
commit(struct pg *pg)
{
	PGresult *r;
	enum outcome o;
	uint64_t row = 0;
	int found;

	while (pg->sending) {
		PQputCopyEnd(pg->conn, NULL);
		o = drain(pg, &row);
		if (o != PG_OK) {
			recover(pg, o, row);
			continue;
		}
		r = PQexec(pg->conn, "COMMIT");
		if (r != NULL && PQresultStatus(r) == PGRES_COMMAND_OK &&
		    strcmp(PQcmdStatus(r), "COMMIT") == 0) {
			PQclear(r);
			command(pg, "DELETE FROM " PG_BOOK " WHERE token = $1",
			    1, pg->token, PGRES_COMMAND_OK, NULL);
			return 1;
		}
		o = r != NULL && PQresultStatus(r) == PGRES_FATAL_ERROR ?
		    classify(pg, r, &row) : PQstatus(pg->conn) !=
		    CONNECTION_OK ? PG_LOST : PG_FATAL;
		if (o == PG_FATAL && pg->why[0] == '\0')
			snprintf(pg->why, sizeof(pg->why), "COMMIT answered "
			    "%s", r != NULL ? PQcmdStatus(r) : "nothing");
		PQclear(r);
		if (o != PG_LOST) {
			if (o == PG_BADROW)
				o = PG_FATAL;
			recover(pg, o, row);
			continue;
		}
		/* Lost during COMMIT: did it commit?  The token says. */
		pg->sending = 0;
		if (pg->losses++ == 0) {
			pg->lost_seq = pg->last_seq;
			snprintf(pg->lost_why, sizeof(pg->lost_why),
			    "during COMMIT: %.200s", pg->why);
		}
		for (;;) {
			if (reconnect(pg, pg->lost_why) != 0) {
				snprintf(pg->why, sizeof(pg->why), "the "
				    "connection was lost during COMMIT and "
				    "could not be opened again, so whether "
				    "the transaction committed is not known "
				    "(look for token %s in table " PG_BOOK
				    ")", pg->token);
				pg->down = 0;
				pg->failed = 1;
				return 0;
			}
			found = 0;
			o = command(pg, "SELECT 1 FROM " PG_BOOK " WHERE "
			    "token = $1", 1, pg->token, PGRES_TUPLES_OK,
			    &found);
			if (o == PG_OK)
				break;
			if (o != PG_LOST || ++pg->restarts > PG_RESTARTS) {
				pg->failed = 1;
				return 0;
			}
		}
		if (found) {
			pg->commit_found = 1;
			command(pg, "DELETE FROM " PG_BOOK " WHERE token = $1",
			    1, pg->token, PGRES_COMMAND_OK, NULL);
			return 1;
		}
		if (++pg->restarts > PG_RESTARTS) {
			pg->failed = 1;
			return 0;
		}
		pg->why[0] = '\0';
		recover(pg, begin(pg, &row), row);
	}
	return 0;
}

/* One cns_fail message for everything the client should hear. */
static void
report(struct pg *pg, const cns_ctx *ctx, int committed)
{
	char msg[2048], ranges[512];
	size_t len = 0;

	msg[0] = '\0';
#define ADD(...) do { if (len < sizeof(msg)) len += (size_t)snprintf( \
	msg + len, sizeof(msg) - len, __VA_ARGS__); } while (0)
	if (pg->losses > 0) {
		if (pg->lost_seq > 0)
			ADD("connection to the server lost at seq %" PRIu64,
			    pg->lost_seq);
		else
			ADD("connection to the server lost before this "
			    "stream's first row");
		ADD(" (%s)", pg->lost_why);
		if (pg->losses > 1)
			ADD(", %u times in all", pg->losses);
		if (committed && pg->commit_found)
			ADD("; reconnected and found that the transaction "
			    "had committed");
		else if (committed && pg->lost_seq > 0)
			ADD("; reconnected and re-sent %" PRIu64 " rows in "
			    "a new transaction", pg->rows - pg->nskip);
		else if (committed)
			ADD("; reconnected");
	}
	if (pg->nskip > 0)
		ADD("%s%zu row%s refused by the server and left out "
		    "(first: seq %" PRIu64 ": %s)", len ? "; " : "",
		    pg->nskip, pg->nskip == 1 ? "" : "s", pg->bad_first,
		    pg->bad_why);
	if (pg->local_bad > 0)
		ADD("%s%" PRIu64 " item%s not inserted (first: seq %" PRIu64
		    ": %s)", len ? "; " : "", pg->local_bad,
		    pg->local_bad == 1 ? "" : "s", pg->local_first,
		    pg->local_why);
	if (!committed && pg->rows > pg->nskip) {
		seq_ranges(pg, ranges, sizeof(ranges));
		ADD("%s%" PRIu64 " rows not committed (%s): seqs %s",
		    len ? "; " : "", pg->rows - pg->nskip,
		    pg->why[0] ? pg->why : "no transaction", ranges);
	}
#undef ADD
	if (len > 0)
		cns_fail(ctx, "%s", msg);
}

static json_t *
pgsql_consume(cns_items *items, const cns_ctx *ctx)
{
	struct pg *pg = cns_state(ctx);
	const char *why;
	json_t *item;
	int committed = 0;

	uint64_t row = 0;

	reset_tx(pg);
	end_tx(pg);
	if (PQstatus(pg->conn) != CONNECTION_OK) {
		oneline(pg->why, sizeof(pg->why), PQerrorMessage(pg->conn));
		recover(pg, PG_LOST, 0);
	} else
		recover(pg, begin(pg, &row), row);
	while ((item = cns_next(items)) != NULL) {
		if (make_row(pg, item, &why)) {
			if (pg->local_bad++ == 0) {
				pg->local_first = cns_seq(items);
				snprintf(pg->local_why, sizeof(pg->local_why),
				    "%s", why);
			}
			continue;
		}
		if (note_row(pg, cns_seq(items)) != 0 ||
		    buf_add(&pg->out, pg->row.p, pg->row.len) != 0) {
			/* Unrecoverable here: the row is not spooled. */
			pg->failed = 1;
			pg->sending = 0;
			snprintf(pg->why, sizeof(pg->why), "out of memory");
		}
		if (pg->out.len >= PG_FLUSH)
			flush(pg);
	}
	flush(pg);
	if (pg->down && !pg->failed)
		recover(pg, PG_LOST, 0);
	if (pg->sending && !pg->failed)
		committed = commit(pg);
	if (!committed)
		end_tx(pg);
	report(pg, ctx, committed);
	return json_integer(committed ? (json_int_t)(pg->rows - pg->nskip) :
	    0);
}

static json_t *
pgsql_complete(json_t *results, const cns_ctx *ctx)
{
	json_int_t total = 0;
	size_t i;
	json_t *r;

	(void)ctx;
	json_array_foreach(results, i, r)
		total += json_integer_value(r);
	return json_integer(total);
}

CONSUMERS_PLUGIN(.init = pgsql_init, .consume = pgsql_consume,
    .complete = pgsql_complete, .fini = pgsql_fini);
