/*
 * libconsumers - the client side of doc/protocol.md, as a library: streams
 * (open, put, close) and one-question asks.  The CLI and plugins that feed
 * other pools use it.
 *
 * A stream never deadlocks: items are queued in user space and sent in
 * large non-blocking writes; whenever a write would block, the library
 * polls both directions and reads the daemon's replies meanwhile, so the
 * daemon (which stops reading a client whose replies pile up) always sees
 * its replies taken.  Nothing here prints, exits or raises SIGPIPE.
 */
#include <sys/socket.h>
#include <sys/un.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "consumers/client.h"

#ifndef CNS_DEFAULT_SOCKET
#define CNS_DEFAULT_SOCKET "/run/consumersd/consumersd.sock"
#endif

#define OUT_CAP		(256u << 10)	/* queued items before a write blocks */
#define FLUSH_AT	(64u << 10)	/* queued items worth a write */
#define IN_CHUNK	(64u << 10)
#define REPLY_MAX	(512u << 20)	/* a final line with big results */

struct cns_stream {
	int		 fd;
	char		*out;		/* queued bytes: [outoff, outlen) */
	size_t		 outoff, outlen, outcap;
	char		*in;		/* a partial reply line */
	size_t		 inlen, incap;
	json_t		*final;		/* the last line: final or refusal */
	char		*final_line;	/* its bytes, as the daemon sent them */
	cns_reply_fn	*fn;
	void		*arg;
	uint64_t	 id, sent;
	unsigned	 workers;
	int		 wclosed;	/* no more writes: ended or half-closed */
	int		 eof;		/* the daemon closed its side */
	int		 broken;	/* a local or protocol failure: error */
	char		 error[512];
};

static void
seterr(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void
seterr(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (err == NULL || errlen == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

const char *
cns_socket_path(const char *socket)
{
	const char *env;

	if (socket != NULL && *socket != '\0')
		return socket;
	if ((env = getenv("CONSUMERS_SOCKET")) != NULL && *env != '\0')
		return env;
	return CNS_DEFAULT_SOCKET;
}

/* A connected, close-on-exec socket, or -1 with why. */
static int
connect_to(const char *path, char *err, size_t errlen)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	int fd, saved;

	if (strlen(path) >= sizeof sun.sun_path) {
		seterr(err, errlen, "socket path %s is too long (at most %zu "
		    "bytes)", path, sizeof sun.sun_path - 1);
		errno = ENAMETOOLONG;
		return -1;
	}
	memcpy(sun.sun_path, path, strlen(path) + 1);
	if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) == -1) {
		seterr(err, errlen, "socket: %s", strerror(errno));
		return -1;
	}
	while (connect(fd, (struct sockaddr *)&sun, sizeof sun) == -1) {
		if (errno == EINTR)
			continue;
		saved = errno;
		seterr(err, errlen, "cannot connect to consumersd at %s: %s "
		    "(is the daemon running? use -s or $CONSUMERS_SOCKET to "
		    "name its socket)", path, strerror(saved));
		close(fd);
		errno = saved;
		return -1;
	}
	return fd;
}

/* Make room for n more bytes in a buffer; -1 past REPLY_MAX or no memory. */
static int
grow(char **buf, size_t *cap, size_t used, size_t n, size_t max)
{
	size_t ncap = *cap ? *cap : n;
	char *p;

	if (*cap - used >= n)
		return 0;
	if (used + n > max)
		return -1;
	while (ncap - used < n)
		ncap = ncap > max / 2 ? max : ncap * 2;
	if ((p = realloc(*buf, ncap)) == NULL)
		return -1;
	*buf = p;
	*cap = ncap;
	return 0;
}

static int
fail(cns_stream *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* A failure that ends the stream for this client; always -1. */
static int
fail(cns_stream *s, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(s->error, sizeof s->error, fmt, ap);
	va_end(ap);
	s->broken = 1;
	s->wclosed = 1;
	return -1;
}

/* One reply line: the lease, an event for the callback, or the last. */
static int
reply_line(cns_stream *s, const char *line, size_t len)
{
	json_error_t jerr;
	json_t *v, *ev;

	if (len == 0)
		return 0;
	if ((v = json_loadb(line, len, 0, &jerr)) == NULL)
		return fail(s, "the daemon sent a line that is not JSON: %s",
		    jerr.text);
	if (!json_is_object(v)) {
		json_decref(v);
		return fail(s, "the daemon sent a line that is not a JSON "
		    "object");
	}
	if (json_is_object(ev = json_object_get(v, "rejected")) ||
	    json_is_object(ev = json_object_get(v, "quarantined")) ||
	    json_is_object(ev = json_object_get(v, "warning"))) {
		if (s->fn != NULL)
			s->fn(v, s->arg);
	} else if (json_is_false(json_object_get(v, "ok")) ||
	    json_object_get(v, "items") != NULL) {
		/* The last line: nothing more is read, nothing more sent. */
		json_decref(s->final);
		s->final = json_incref(v);
		free(s->final_line);
		if ((s->final_line = strndup(line, len)) == NULL) {
			json_decref(v);
			return fail(s, "out of memory");
		}
		s->wclosed = 1;
	} else if (json_is_true(json_object_get(v, "ok")) && s->id == 0) {
		s->id = (uint64_t)json_integer_value(json_object_get(v,
		    "stream"));
		s->workers = (unsigned)json_integer_value(json_object_get(v,
		    "workers"));
	}
	json_decref(v);
	return 0;
}

/* Read what the socket has, without blocking; split it into lines. */
static int
read_replies(cns_stream *s)
{
	char *start, *nl;
	ssize_t n;

	while (!s->eof) {
		if (grow(&s->in, &s->incap, s->inlen, IN_CHUNK, REPLY_MAX) ==
		    -1)
			return fail(s, "a reply line is longer than %u bytes "
			    "(or out of memory)", REPLY_MAX);
		n = recv(s->fd, s->in + s->inlen, s->incap - s->inlen,
		    MSG_DONTWAIT);
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return 0;
		if (n == -1 && errno != ECONNRESET)
			return fail(s, "read from the daemon: %s",
			    strerror(errno));
		if (n <= 0) {
			s->eof = 1;
			break;
		}
		s->inlen += (size_t)n;
		start = s->in;
		while ((nl = memchr(start, '\n', s->inlen -
		    (size_t)(start - s->in))) != NULL) {
			if (reply_line(s, start, (size_t)(nl - start)) == -1)
				return -1;
			start = nl + 1;
		}
		s->inlen -= (size_t)(start - s->in);
		memmove(s->in, start, s->inlen);
	}
	return 0;
}

/* The daemon took no more items: say why, from its last line. */
static int
ended(cns_stream *s)
{
	json_t *e;

	if (s->broken)
		return -1;
	if (s->final == NULL) {
		snprintf(s->error, sizeof s->error, "the daemon closed the "
		    "stream early, without a final line yet");
		return -1;
	}
	e = json_object_get(s->final, "error");
	snprintf(s->error, sizeof s->error, "the daemon ended the stream%s%s",
	    json_is_string(e) ? ": " : " (see its final line)",
	    json_is_string(e) ? json_string_value(e) : "");
	return -1;
}

/* Write what is queued, without blocking.  0, or -1 when writing ended. */
static int
send_queued(cns_stream *s)
{
	while (s->outoff < s->outlen) {
		ssize_t n = send(s->fd, s->out + s->outoff,
		    s->outlen - s->outoff, MSG_DONTWAIT | MSG_NOSIGNAL);
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK))
			break;
		if (n == -1 && (errno == EPIPE || errno == ECONNRESET)) {
			/* The daemon ended the stream early: its last line
			 * says why. */
			s->wclosed = 1;
			return -1;
		}
		if (n == -1)
			return fail(s, "write to the daemon: %s",
			    strerror(errno));
		s->outoff += (size_t)n;
		s->sent += (uint64_t)n;
	}
	if (s->outoff == s->outlen)
		s->outoff = s->outlen = 0;
	return 0;
}

/*
 * Send queued bytes until no more than `keep` are left, reading replies
 * all along.  0, or -1 when the stream can take no more.
 */
static int
drain(cns_stream *s, size_t keep)
{
	for (;;) {
		struct pollfd pfd = { .fd = s->fd, .events = POLLIN | POLLOUT };

		if (s->wclosed || send_queued(s) == -1 || read_replies(s) == -1)
			return ended(s);
		if (s->wclosed || s->eof) {
			/* A closed read side: the daemon is gone, or drops
			 * what comes now; its last line (if any) says why. */
			s->wclosed = 1;
			return ended(s);
		}
		if (s->outlen - s->outoff <= keep)
			return 0;
		if (poll(&pfd, 1, -1) == -1 && errno != EINTR)
			return fail(s, "poll: %s", strerror(errno));
	}
}

/* Room for n more queued bytes: write when the queue is full. */
static int
reserve(cns_stream *s, size_t n)
{
	if (s->wclosed)
		return ended(s);
	if (s->outlen + n > s->outcap && s->outoff > 0) {
		memmove(s->out, s->out + s->outoff, s->outlen - s->outoff);
		s->outlen -= s->outoff;
		s->outoff = 0;
	}
	if (s->outlen + n > s->outcap) {
		if (drain(s, s->outcap > n ? s->outcap - n : 0) == -1)
			return -1;
		if (s->outoff > 0) {
			memmove(s->out, s->out + s->outoff,
			    s->outlen - s->outoff);
			s->outlen -= s->outoff;
			s->outoff = 0;
		}
	}
	/* One item bigger than the queue: the queue grows to hold it. */
	if (grow(&s->out, &s->outcap, s->outlen, n, SIZE_MAX / 2) == -1)
		return fail(s, "out of memory queueing %zu bytes", n);
	return 0;
}

/* After queueing: write when there is enough for a large write. */
static int
queued(cns_stream *s)
{
	if (s->outlen - s->outoff >= FLUSH_AT &&
	    (send_queued(s) == -1 || read_replies(s) == -1 || s->wclosed))
		return ended(s);
	return 0;
}

cns_stream *
cns_stream_open(const char *socket, const char *pool, const json_t *params,
    unsigned workers, char *err, size_t errlen)
{
	cns_stream *s;
	json_t *h;
	char *hs;
	size_t hlen;
	int fd;

	if (pool == NULL) {
		seterr(err, errlen, "cns_stream_open: no pool named");
		errno = EINVAL;
		return NULL;
	}
	h = json_pack("{s:s,s:s}", "op", "submit", "pool", pool);
	if (h == NULL) {
		seterr(err, errlen, "the pool name is not UTF-8");
		errno = EINVAL;
		return NULL;
	}
	if (workers > 0)
		json_object_set_new(h, "workers", json_integer(workers));
	if (params != NULL)
		json_object_set(h, "params", (json_t *)params);
	hs = json_dumps(h, JSON_COMPACT | JSON_ENCODE_ANY);
	json_decref(h);
	if (hs == NULL || (s = calloc(1, sizeof *s)) == NULL) {
		free(hs);
		seterr(err, errlen, "out of memory");
		errno = ENOMEM;
		return NULL;
	}
	hlen = strlen(hs);
	s->outcap = hlen + 1 > OUT_CAP ? hlen + 1 : OUT_CAP;
	if ((s->out = malloc(s->outcap)) == NULL) {
		free(hs);
		free(s);
		seterr(err, errlen, "out of memory");
		errno = ENOMEM;
		return NULL;
	}
	memcpy(s->out, hs, hlen);
	s->out[hlen] = '\n';
	s->outlen = hlen + 1;
	free(hs);
	if ((fd = connect_to(cns_socket_path(socket), err, errlen)) == -1) {
		int saved = errno;
		free(s->out);
		free(s);
		errno = saved;
		return NULL;
	}
	s->fd = fd;
	/* The header goes at once: the daemon times out a slow one. */
	if (send_queued(s) == -1 && s->broken) {
		seterr(err, errlen, "%s", s->error);
		cns_stream_free(s);
		return NULL;
	}
	return s;
}

void
cns_stream_on_reply(cns_stream *s, cns_reply_fn *fn, void *arg)
{
	s->fn = fn;
	s->arg = arg;
}

int
cns_stream_put_line(cns_stream *s, const char *line, size_t len)
{
	if (memchr(line, '\n', len) != NULL) {
		snprintf(s->error, sizeof s->error, "cns_stream_put_line: the "
		    "line contains a newline (one item per line)");
		errno = EINVAL;
		return -1;
	}
	if (reserve(s, len + 1) == -1)
		return -1;
	memcpy(s->out + s->outlen, line, len);
	s->out[s->outlen + len] = '\n';
	s->outlen += len + 1;
	return queued(s);
}

struct dump_to {
	cns_stream	*s;
	int		 failed;
};

static int
dump_cb(const char *buf, size_t len, void *data)
{
	struct dump_to *d = data;

	if (reserve(d->s, len) == -1) {
		d->failed = 1;
		return -1;
	}
	memcpy(d->s->out + d->s->outlen, buf, len);
	d->s->outlen += len;
	return 0;
}

int
cns_stream_put(cns_stream *s, const json_t *item)
{
	struct dump_to d = { s, 0 };
	size_t pending = s->outlen - s->outoff;
	uint64_t sent = s->sent;

	if (item == NULL) {
		snprintf(s->error, sizeof s->error, "cns_stream_put: no item "
		    "(NULL)");
		errno = EINVAL;
		return -1;
	}
	if (json_dump_callback(item, dump_cb, &d, JSON_COMPACT |
	    JSON_ENCODE_ANY) == -1) {
		/* A queue failure ends the stream; a bad item ends nothing,
		 * but what was queued of it must not be sent. */
		if (d.failed)
			return -1;
		if (s->sent != sent)
			return fail(s, "cns_stream_put: an item that cannot be "
			    "encoded as JSON was partly sent (a string that is "
			    "not UTF-8?)");
		s->outlen = s->outoff + pending;
		snprintf(s->error, sizeof s->error, "cns_stream_put: the item "
		    "cannot be encoded as JSON (a string that is not UTF-8?)");
		errno = EINVAL;
		return -1;
	}
	if (reserve(s, 1) == -1)
		return -1;
	s->out[s->outlen++] = '\n';
	return queued(s);
}

int
cns_stream_write(cns_stream *s, const void *buf, size_t len)
{
	const char *p = buf;

	while (len > 0) {
		size_t n = len < OUT_CAP ? len : OUT_CAP;
		if (reserve(s, n) == -1)
			return -1;
		memcpy(s->out + s->outlen, p, n);
		s->outlen += n;
		p += n;
		len -= n;
		if (queued(s) == -1)
			return -1;
	}
	return 0;
}

int
cns_stream_flush(cns_stream *s)
{
	if (s->wclosed)
		return ended(s);
	return drain(s, 0);
}

const char *
cns_stream_error(const cns_stream *s)
{
	return s->error;
}

uint64_t
cns_stream_id(const cns_stream *s)
{
	return s->id;
}

unsigned
cns_stream_workers(const cns_stream *s)
{
	return s->workers;
}

uint64_t
cns_stream_sent(const cns_stream *s)
{
	return s->sent;
}

/* err gets why a final line is not ok: a refusal or its first error. */
static void
final_error(const json_t *v, char *err, size_t errlen)
{
	json_t *e = json_object_get(v, "error"),
	    *first = json_array_get(json_object_get(v, "errors"), 0);

	seterr(err, errlen, "%s", "");
	if (json_is_true(json_object_get(v, "ok")))
		return;
	if (json_is_string(e))
		seterr(err, errlen, "%s", json_string_value(e));
	else if (json_is_string(json_object_get(first, "error")))
		seterr(err, errlen, "%s error: %s", json_is_string(
		    json_object_get(first, "stage")) ? json_string_value(
		    json_object_get(first, "stage")) : "stream",
		    json_string_value(json_object_get(first, "error")));
	else
		seterr(err, errlen, "the stream failed, without a reason");
}

json_t *
cns_stream_close(cns_stream *s, char *err, size_t errlen)
{
	json_t *v;

	/* What is queued goes first; a daemon that ended the stream early
	 * still sends its last line. */
	if (!s->wclosed)
		(void)drain(s, 0);
	if (!s->broken) {
		shutdown(s->fd, SHUT_WR);
		s->wclosed = 1;
	}
	while (!s->broken && !s->eof) {
		struct pollfd pfd = { .fd = s->fd, .events = POLLIN };
		if (read_replies(s) == -1 || s->eof)
			break;
		if (poll(&pfd, 1, -1) == -1 && errno != EINTR)
			(void)fail(s, "poll: %s", strerror(errno));
	}
	if (s->broken) {
		seterr(err, errlen, "%s", s->error);
		return NULL;
	}
	if (s->final == NULL) {
		seterr(err, errlen, "the daemon closed the connection without "
		    "a final line");
		return NULL;
	}
	v = s->final;
	s->final = NULL;
	final_error(v, err, errlen);
	return v;
}

const char *
cns_stream_final_line(const cns_stream *s)
{
	return s->final_line;
}

void
cns_stream_free(cns_stream *s)
{
	if (s == NULL)
		return;
	if (s->fd >= 0)
		close(s->fd);
	json_decref(s->final);
	free(s->final_line);
	free(s->out);
	free(s->in);
	free(s);
}

/* ---- one question, one answer ---- */

json_t *
cns_ask(const char *socket, const json_t *header, char *err, size_t errlen)
{
	char *hs, *buf = NULL, *nl;
	size_t len = 0, cap = 0, off = 0, hlen;
	json_error_t jerr;
	json_t *v = NULL;
	int fd, saved = EPROTO;

	if (!json_is_object(header)) {
		seterr(err, errlen, "cns_ask: the header must be a JSON "
		    "object");
		errno = EINVAL;
		return NULL;
	}
	if ((hs = json_dumps(header, JSON_COMPACT)) == NULL) {
		seterr(err, errlen, "out of memory");
		errno = ENOMEM;
		return NULL;
	}
	if ((fd = connect_to(cns_socket_path(socket), err, errlen)) == -1) {
		saved = errno;
		free(hs);
		errno = saved;
		return NULL;
	}
	hlen = strlen(hs);
	hs[hlen++] = '\n';	/* over the NUL: the length says where it ends */
	while (off < hlen) {
		ssize_t n = send(fd, hs + off, hlen - off, MSG_NOSIGNAL);
		if (n == -1) {
			saved = errno;
			if (saved == EINTR)
				seterr(err, errlen, "interrupted by a signal");
			else
				seterr(err, errlen, "write to the daemon: %s",
				    strerror(saved));
			goto out;
		}
		off += (size_t)n;
	}
	shutdown(fd, SHUT_WR);
	/* Blocking reads; EINTR ends the wait, for a program's ^C. */
	for (;;) {
		ssize_t n;
		if (grow(&buf, &cap, len, IN_CHUNK, REPLY_MAX) == -1) {
			seterr(err, errlen, "a reply line is longer than %u "
			    "bytes (or out of memory)", REPLY_MAX);
			saved = ENOMEM;
			goto out;
		}
		n = read(fd, buf + len, cap - len);
		if (n == -1 && errno == ECONNRESET)
			break;
		if (n == -1) {
			saved = errno;
			if (saved == EINTR)
				seterr(err, errlen, "interrupted by a signal");
			else
				seterr(err, errlen, "read from the daemon: %s",
				    strerror(saved));
			goto out;
		}
		if (n == 0)
			break;
		len += (size_t)n;
	}
	if (len == 0 || (nl = memchr(buf, '\n', len)) == NULL) {
		seterr(err, errlen, "the daemon closed the connection without "
		    "an answer");
		goto out;
	}
	v = json_loadb(buf, (size_t)(nl - buf), 0, &jerr);
	if (v == NULL || !json_is_object(v)) {
		seterr(err, errlen, "the daemon sent a line that is not a JSON "
		    "object: %s", v == NULL ? jerr.text : "");
		json_decref(v);
		v = NULL;
	}
out:
	close(fd);
	free(hs);
	free(buf);
	if (v == NULL)
		errno = saved;
	return v;
}
