/*
 * log.c - one-line logs to stderr: warn (with errno), warnx, info, debug,
 * fatal.  Under the journal (JOURNAL_STREAM set) each line carries its
 * sd-daemon priority prefix so the journal files it at the right level;
 * elsewhere it starts with an ISO 8601 timestamp.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "consumersd.h"

static int	 log_level = LOG_LVL_INFO;
static int	 log_journal;
static char	 log_tag[64] = "consumersd";

void
log_init(int level, const char *tag)
{
	log_level = level;
	log_journal = getenv("JOURNAL_STREAM") != NULL;
	if (tag != NULL)
		snprintf(log_tag, sizeof log_tag, "%s", tag);
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

static void
log_vline(int level, int with_errno, const char *fmt, va_list ap)
{
	/* syslog priorities: err 3, warning 4, info 6, debug 7 */
	static const int prio[] = { 3, 4, 6, 7 };
	int saved = errno;
	char msg[2048];

	if (level > log_level)
		return;
	vsnprintf(msg, sizeof msg, fmt, ap);
	if (log_journal)
		fprintf(stderr, "<%d>%s: %s%s%s\n", prio[level], log_tag, msg,
		    with_errno ? ": " : "", with_errno ? strerror(saved) : "");
	else {
		char ts[80];
		log_timestamp(ts, sizeof ts);
		fprintf(stderr, "%s %s[%ld]: %s%s%s\n", ts, log_tag,
		    (long)getpid(), msg, with_errno ? ": " : "",
		    with_errno ? strerror(saved) : "");
	}
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
