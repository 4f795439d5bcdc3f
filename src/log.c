/*
 * log.c - logs: warn (with errno), warnx, info, debug, fatal, and a
 * worker's multi-line message as one entry.  When stderr is the journal
 * ($JOURNAL_STREAM names it) an entry goes through the journal's own API
 * with its priority and the fields set by log_set_fields (POOL, STREAM,
 * WORKER_PID, CLIENT_UID), a multi-line message as one entry; built
 * without libsystemd, each line carries its sd-daemon priority prefix
 * instead.  Elsewhere each line starts with an ISO 8601 timestamp.
 */
#include <sys/stat.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifdef HAVE_SYSTEMD
#include <systemd/sd-journal.h>
#endif

#include "consumersd.h"

enum { LOG_TEXT, LOG_PREFIX, LOG_NATIVE, LOG_BARE };

static int	 log_level = LOG_LVL_INFO;
static int	 log_journal = LOG_TEXT;
static char	 log_tag[64] = "consumersd";
static struct log_fields log_fields_now = { NULL, 0, 0, (uid_t)-1 };

/*
 * Is stderr the journal?  $JOURNAL_STREAM is "DEV:INODE" of the stream
 * systemd connected it to; it is inherited, so it counts only while
 * stderr is still that stream (not a shell's redirection, not a pipe).
 */
int
log_stderr_is_journal(void)
{
	const char *e = getenv("JOURNAL_STREAM");
	unsigned long long dev, ino;
	struct stat st;
	int end = 0;

	if (e == NULL || sscanf(e, "%llu:%llu%n", &dev, &ino, &end) != 2 ||
	    e[end] != '\0')
		return 0;
	if (fstat(STDERR_FILENO, &st) == -1)
		return 0;
	return (unsigned long long)st.st_dev == dev &&
	    (unsigned long long)st.st_ino == ino;
}

void
log_init(int level, const char *tag)
{
	log_level = level;
	log_journal = LOG_TEXT;
	if (log_stderr_is_journal())
#ifdef HAVE_SYSTEMD
		log_journal = LOG_NATIVE;
#else
		log_journal = LOG_PREFIX;
#endif
	if (tag != NULL)
		snprintf(log_tag, sizeof log_tag, "%s", tag);
}

/*
 * In a worker: its stderr is the master's tap, which logs each line with
 * its own priority prefix or journal entry and fields, so under the
 * journal its lines are bare ("consumersd: ...").  Nor may it use the
 * journal's socket it inherited: the worker closes every fd it does not
 * know, and the number may come back as a plugin's.
 */
void
log_worker(void)
{
	if (log_journal != LOG_TEXT)
		log_journal = LOG_BARE;
}

/* The fields the next entries carry in the journal; NULL: none. */
void
log_set_fields(const struct log_fields *f)
{
	static const struct log_fields none = { NULL, 0, 0, (uid_t)-1 };

	log_fields_now = f != NULL ? *f : none;
}

void
log_setlevel(int level)
{
	log_level = level;
}

int
log_parse_level(const char *s)
{
	static const char *names[] = { "error", "warning", "info", "debug" };
	for (int i = 0; i < 4; i++)
		if (strcmp(s, names[i]) == 0)
			return i;
	return -1;
}

/* Now in ISO 8601, local time to the millisecond with its UTC offset:
 * 2026-12-05T15:04:05.123+01:00. */
static void
log_timestamp(char *buf, size_t len)
{
	struct timespec ts;
	struct tm tm;
	long off;

	clock_gettime(CLOCK_REALTIME, &ts);
	if (localtime_r(&ts.tv_sec, &tm) == NULL) {
		snprintf(buf, len, "-");
		return;
	}
	off = tm.tm_gmtoff / 60;
	snprintf(buf, len, "%04d-%02d-%02dT%02d:%02d:%02d.%03ld%c%02ld:%02ld",
	    tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
	    tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000, off < 0 ? '-' : '+',
	    labs(off) / 60, labs(off) % 60);
}

/* syslog priorities: err 3, warning 4, info 6, debug 7 */
static const int log_prio[] = { 3, 4, 6, 7 };

#ifdef HAVE_SYSTEMD
/* One journal entry: the message, its priority and the fields now set. */
static int
log_send(int level, const char *msg, int err)
{
	const struct log_fields *f = &log_fields_now;
	char prio[16], ident[96], pool[96], stream[40], pid[40], uid[40];
	char errbuf[24];
	struct iovec iov[8];
	char *m;
	int n = 0, r;

	if (asprintf(&m, "MESSAGE=%s", msg) == -1)
		return -1;
	iov[n].iov_base = m;
	iov[n++].iov_len = strlen(m);
#define FIELD(buf, ...) do {						\
	snprintf(buf, sizeof buf, __VA_ARGS__);				\
	iov[n].iov_base = buf;						\
	iov[n++].iov_len = strlen(buf);					\
} while (0)
	FIELD(prio, "PRIORITY=%d", log_prio[level]);
	FIELD(ident, "SYSLOG_IDENTIFIER=%s", log_tag);
	if (err != 0)
		FIELD(errbuf, "ERRNO=%d", err);
	if (f->pool != NULL)
		FIELD(pool, "POOL=%s", f->pool);
	if (f->stream != 0)
		FIELD(stream, "STREAM=%" PRIu64, f->stream);
	if (f->worker_pid > 0)
		FIELD(pid, "WORKER_PID=%ld", (long)f->worker_pid);
	if (f->client_uid != (uid_t)-1)
		FIELD(uid, "CLIENT_UID=%lu", (unsigned long)f->client_uid);
#undef FIELD
	r = sd_journal_sendv(iov, n);
	free(m);
	return r;
}
#endif

/* msg, in full: to the journal, or to stderr one line per line. */
static void
log_emit(int level, const char *prefix, const char *msg, int err)
{
	const char *p = msg, *nl;
	const char *pfx = prefix != NULL ? prefix : "";
	const char *sep = prefix != NULL ? ": " : "";
	char ts[80];

#ifdef HAVE_SYSTEMD
	if (log_journal == LOG_NATIVE) {
		char *full = NULL;
		if (prefix != NULL) {
			if (asprintf(&full, "%s: %s", prefix, msg) == -1)
				full = NULL;
		}
		if (log_send(level, full != NULL ? full : msg, err) >= 0) {
			free(full);
			return;
		}
		free(full);	/* no journal after all: as without */
	}
#else
	(void)err;
#endif
	/* Each line in one fprintf: one write to the unbuffered stderr. */
	for (;;) {
		int len;
		nl = strchr(p, '\n');
		len = nl != NULL ? (int)(nl - p) : (int)strlen(p);
		if (log_journal == LOG_BARE)
			fprintf(stderr, "%s: %s%s%.*s\n", log_tag, pfx, sep, len,
			    p);
		else if (log_journal != LOG_TEXT)
			fprintf(stderr, "<%d>%s: %s%s%.*s\n", log_prio[level],
			    log_tag, pfx, sep, len, p);
		else {
			log_timestamp(ts, sizeof ts);
			fprintf(stderr, "%s %s[%ld]: %s%s%.*s\n", ts, log_tag,
			    (long)getpid(), pfx, sep, len, p);
		}
		if (nl == NULL)
			break;
		p = nl + 1;
	}
}

static void
log_vline(int level, int with_errno, const char *fmt, va_list ap)
{
	int saved = errno;
	char msg[2048];
	size_t n;

	if (level > log_level)
		return;
	vsnprintf(msg, sizeof msg, fmt, ap);
	if (with_errno && (n = strlen(msg)) < sizeof msg)
		snprintf(msg + n, sizeof msg - n, ": %s", strerror(saved));
	log_emit(level, NULL, msg, with_errno ? saved : 0);
	errno = saved;
}

/*
 * Lines that make one message (a worker's Python traceback, say) as one
 * entry: under the journal, one entry; elsewhere, each line on its own
 * line after prefix and its timestamp.
 */
void
log_lines(int level, const char *prefix, const char *text)
{
	int saved = errno;

	if (level > log_level)
		return;
	log_emit(level, prefix, text, 0);
	errno = saved;
}

void
log_warn(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	log_vline(LOG_LVL_WARN, 1, fmt, ap);
	va_end(ap);
}

void
log_warnx(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	log_vline(LOG_LVL_WARN, 0, fmt, ap);
	va_end(ap);
}

void
log_info(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	log_vline(LOG_LVL_INFO, 0, fmt, ap);
	va_end(ap);
}

void
log_debug(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	log_vline(LOG_LVL_DEBUG, 0, fmt, ap);
	va_end(ap);
}

void
fatal(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	log_vline(LOG_LVL_ERR, 1, fmt, ap);
	va_end(ap);
	exit(1);
}

void
fatalx(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	log_vline(LOG_LVL_ERR, 0, fmt, ap);
	va_end(ap);
	exit(1);
}

/*
 * A worker's lines join into messages: a line that starts with white
 * space continues the one before it ("Warning:" and its details), and a
 * Python traceback is one message from "Traceback (most recent call
 * last):" through its frames to the exception's line, chained ones
 * ("During handling of the above exception...") included.
 */
enum { JOIN_NONE, JOIN_LINE, JOIN_TB_FRAMES, JOIN_TB_ENDED, JOIN_TB_CHAIN };

static int
starts(const char *line, size_t len, const char *with)
{
	size_t n = strlen(with);

	return len >= n && memcmp(line, with, n) == 0;
}

int
log_joins(int *state, const char *line, size_t len)
{
	int indented = len > 0 && (line[0] == ' ' || line[0] == '\t');
	int tb = starts(line, len, "Traceback (most recent call last):");

	switch (*state) {
	case JOIN_TB_FRAMES:
		if (!indented)		/* the exception: "ValueError: ..." */
			*state = JOIN_TB_ENDED;
		return 1;
	case JOIN_TB_ENDED:
	case JOIN_TB_CHAIN:
		if (len == 0 || starts(line, len, "During handling of the "
		    "above exception") || starts(line, len, "The above "
		    "exception was the direct cause")) {
			*state = JOIN_TB_CHAIN;
			return 1;
		}
		if (indented)
			return 1;
		if (tb && *state == JOIN_TB_CHAIN) {
			*state = JOIN_TB_FRAMES;
			return 1;
		}
		break;
	case JOIN_LINE:
		if (indented)
			return 1;
		break;
	}
	*state = tb ? JOIN_TB_FRAMES : JOIN_LINE;
	return 0;
}

/* More of the message is surely coming: a traceback's frames. */
int
log_join_open(int state)
{
	return state == JOIN_TB_FRAMES || state == JOIN_TB_CHAIN;
}

/*
 * Replace every byte that is not part of valid UTF-8 with '?', in place,
 * so text from outside (a plugin's message, a truncated name) can always
 * go into JSON.
 */
void
utf8_clean(char *s)
{
	unsigned char *p = (unsigned char *)s;

	while (*p != '\0') {
		size_t n, i;
		unsigned char lo = 0x80, hi = 0xbf;	/* the second byte */

		if (*p < 0x80)
			n = 1;
		else if (*p >= 0xc2 && *p <= 0xdf)
			n = 2;
		else if (*p >= 0xe0 && *p <= 0xef) {
			n = 3;
			if (*p == 0xe0)
				lo = 0xa0;	/* no overlong forms */
			else if (*p == 0xed)
				hi = 0x9f;	/* no UTF-16 surrogates */
		} else if (*p >= 0xf0 && *p <= 0xf4) {
			n = 4;
			if (*p == 0xf0)
				lo = 0x90;	/* no overlong forms */
			else if (*p == 0xf4)
				hi = 0x8f;	/* nothing past U+10FFFF */
		} else
			n = 0;
		for (i = 1; i < n; i++) {
			unsigned char a = i == 1 ? lo : 0x80;
			unsigned char b = i == 1 ? hi : 0xbf;
			if (p[i] < a || p[i] > b)
				break;
		}
		if (n == 0 || i < n) {
			*p++ = '?';
			continue;
		}
		p += n;
	}
}
