/*
 * client.c - the listening socket and client connections: reading the
 * header line, opening a stream, and writing replies.  A connection that
 * is done (refused, or its final line flushed) is freed here, with its
 * stream.
 */
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#include "consumersd.h"

#define CLIENT_OUT_MAX	(1u << 20)	/* replies queued before we pause */
#define HEADER_TIMEOUT	30		/* seconds to send the header */
#define WRITE_TIMEOUT	60		/* seconds replies may stay unread */
#define LINGER_TIMEOUT	2		/* seconds to discard input after
					   the last line, so it is not lost
					   to a reset */

struct client {
	struct bufferevent	*bev;
	struct stream		*stream;
	int			 eof;		/* its write side is closed */
	int			 gone;		/* nothing can reach it */
	int			 closing;	/* free once output drains */
	int			 lingering;	/* last line sent, discarding */
	TAILQ_ENTRY(client)	 entry;
};

static TAILQ_HEAD(, client) clients = TAILQ_HEAD_INITIALIZER(clients);
static struct evconnlistener	*listener;
static struct event		*accept_retry;
static char			*listen_path;
static int			 accepting;

static void
client_free(struct client *c)
{
	TAILQ_REMOVE(&clients, c, entry);
	if (c->stream != NULL)
		stream_free(c->stream);
	bufferevent_free(c->bev);
	free(c);
}

struct evbuffer *
client_input(struct client *c)
{
	return bufferevent_get_input(c->bev);
}

void
client_read(struct client *c, int on)
{
	if (on && !c->eof && !c->closing)
		bufferevent_enable(c->bev, EV_READ);
	else
		bufferevent_disable(c->bev, EV_READ);
}

int
client_output_full(struct client *c)
{
	return !c->gone && evbuffer_get_length(bufferevent_get_output(
	    c->bev)) > CLIENT_OUT_MAX;
}

void
client_send_json(struct client *c, json_t *v)
{
	char *s;

	if (c->gone)
		return;
	if (v == NULL || (s = json_dumps(v, JSON_COMPACT)) == NULL) {
		/* Never reached with cleaned text; never fatal either. */
		log_warnx("%s: a reply could not be encoded", __func__);
		evbuffer_add_printf(bufferevent_get_output(c->bev), "%s\n",
		    "{\"ok\":false,\"error\":\"internal error: a reply "
		    "could not be encoded\"}");
		return;
	}
	evbuffer_add_printf(bufferevent_get_output(c->bev), "%s\n", s);
	free(s);
}

/* The last line: send it and close, or log it if the client is gone. */
void
client_finish(struct client *c, json_t *final)
{
	if (c->gone) {
		char *s = final != NULL ? json_dumps(final, JSON_COMPACT) :
		    NULL;
		log_info("client gone; final line: %.900s", s ? s : "?");
		free(s);
		json_decref(final);
		c->closing = 1;
		/* Free on the next loop turn: callers still hold the stream. */
		bufferevent_trigger(c->bev, EV_WRITE, BEV_TRIG_DEFER_CALLBACKS |
		    BEV_TRIG_IGNORE_WATERMARKS);
		return;
	}
	client_send_json(c, final);
	json_decref(final);
	c->closing = 1;
	bufferevent_disable(c->bev, EV_READ);
	bufferevent_enable(c->bev, EV_WRITE);
	bufferevent_trigger(c->bev, EV_WRITE, BEV_TRIG_DEFER_CALLBACKS |
	    BEV_TRIG_IGNORE_WATERMARKS);
}

static void
client_refuse(struct client *c, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void
client_refuse(struct client *c, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	utf8_clean(msg);	/* a name cut at 100 bytes may split a char */
	log_info("client refused: %s", msg);
	client_finish(c, json_pack("{s:b,s:s}", "ok", 0, "error", msg));
}

static void
client_submit(struct client *c, json_t *h)
{
	const char *name;
	struct pool *p;
	struct worker **ws;
	json_t *jw;
	unsigned want, n;

	name = json_string_value(json_object_get(h, "pool"));
	if ((p = pool_find(name)) == NULL) {
		char names[512] = "";
		struct pool *q;
		TAILQ_FOREACH(q, pool_all(), entry) {
			if (names[0] != '\0')
				strncat(names, ", ", sizeof names -
				    strlen(names) - 1);
			strncat(names, q->pc->name, sizeof names -
			    strlen(names) - 1);
		}
		client_refuse(c, "no pool named \"%.100s\" (pools: %s)", name,
		    names);
		return;
	}
	want = p->pc->stream_workers;
	if ((jw = json_object_get(h, "workers")) != NULL &&
	    json_integer_value(jw) < (json_int_t)want)
		want = (unsigned)json_integer_value(jw);
	c->stream = stream_new(c, p, want, json_object_get(h, "params"));
	if (pool_unavailable(p) != NULL) {
		pool_dispatch(p);	/* refuses with the reason */
		return;
	}
	if (p->nidle > 0 && TAILQ_FIRST(&p->queue) == c->stream) {
		TAILQ_REMOVE(&p->queue, c->stream, qentry);
		if ((ws = calloc(want, sizeof *ws)) == NULL)
			fatal("%s: calloc", __func__);
		n = pool_lease(p, want, ws);
		stream_leased(c->stream, ws, n);
	} else
		log_debug("stream %" PRIu64 ": waiting for a %s worker",
		    c->stream->id, name);
}

/* Read the header line; returns 1 once it was handled. */
static int
client_header(struct client *c)
{
	struct evbuffer *in = bufferevent_get_input(c->bev);
	struct evbuffer_ptr e;
	char why[512];
	json_t *h;
	char *line;
	size_t len;

	e = evbuffer_search(in, "\n", 1, NULL);
	if (e.pos == -1) {
		if (evbuffer_get_length(in) > CNS_HEADER_MAX)
			client_refuse(c, "the header line is longer than %d "
			    "bytes", CNS_HEADER_MAX);
		else if (c->eof)
			client_refuse(c, "the connection ended before a "
			    "complete header line");
		return c->closing;
	}
	len = (size_t)e.pos;
	if (len > CNS_HEADER_MAX) {
		client_refuse(c, "the header line is longer than %d bytes",
		    CNS_HEADER_MAX);
		return 1;
	}
	line = (char *)evbuffer_pullup(in, (ev_ssize_t)len + 1);
	h = header_parse(line, len, why, sizeof why);
	evbuffer_drain(in, len + 1);
	if (h == NULL) {
		client_refuse(c, "%s", why);
		return 1;
	}
	client_submit(c, h);
	json_decref(h);
	return 1;
}

static void
client_readcb(struct bufferevent *bev, void *arg)
{
	struct timeval write_tv = { WRITE_TIMEOUT, 0 };
	struct client *c = arg;

	(void)bev;
	if (c->lingering) {
		struct evbuffer *in = bufferevent_get_input(c->bev);
		evbuffer_drain(in, evbuffer_get_length(in));
		return;
	}
	if (c->closing)
		return;
	if (c->stream == NULL) {
		if (!client_header(c) || c->closing)
			return;
		bufferevent_set_timeouts(c->bev, NULL, &write_tv);
	}
	if (c->stream != NULL)
		stream_input(c->stream);
}

/*
 * The last line is out but the client is still sending: close our side
 * and discard its input for a while, since closing a socket with unread
 * input resets it and the client could lose the line it has not read.
 */
static void
client_linger(struct client *c)
{
	struct timeval tv = { LINGER_TIMEOUT, 0 };

	c->lingering = 1;
	shutdown(bufferevent_getfd(c->bev), SHUT_WR);
	bufferevent_disable(c->bev, EV_WRITE);
	bufferevent_set_timeouts(c->bev, &tv, NULL);
	bufferevent_setwatermark(c->bev, EV_READ, 0, 0);
	bufferevent_enable(c->bev, EV_READ);
}

static void
client_writecb(struct bufferevent *bev, void *arg)
{
	struct client *c = arg;

	(void)bev;
	if (c->closing) {
		if (c->gone)
			client_free(c);
		else if (evbuffer_get_length(
		    bufferevent_get_output(c->bev)) > 0 || c->lingering)
			return;
		else if (c->eof)
			client_free(c);
		else
			client_linger(c);
		return;
	}
	/* Replies drained: the stream may read again. */
	if (c->stream != NULL)
		stream_input(c->stream);
}

static void
client_eventcb(struct bufferevent *bev, short what, void *arg)
{
	struct client *c = arg;

	(void)bev;
	if (c->lingering) {
		client_free(c);		/* EOF, error or linger timeout */
		return;
	}
	if ((what & BEV_EVENT_TIMEOUT) && (what & BEV_EVENT_READING)) {
		client_refuse(c, "no header line within %d s", HEADER_TIMEOUT);
		return;
	}
	if (what & BEV_EVENT_TIMEOUT) {
		log_warnx("a client has not read its replies for %d s; "
		    "dropping it", WRITE_TIMEOUT);
		what |= BEV_EVENT_ERROR;
	}
	if (what & BEV_EVENT_ERROR) {
		/* Nothing more reaches it: drop what was queued for it. */
		struct evbuffer *out = bufferevent_get_output(c->bev);
		c->gone = 1;
		evbuffer_drain(out, evbuffer_get_length(out));
	}
	if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
		c->eof = 1;
	if (c->closing) {
		if (c->gone)
			client_free(c);
		return;
	}
	if (c->stream == NULL && !c->gone)
		client_header(c);
	if (c->closing)
		return;
	if (c->stream == NULL) {
		client_free(c);
		return;
	}
	/* End of the client's items (or of the client): close the stream. */
	bufferevent_disable(c->bev, EV_READ);
	stream_client_eof(c->stream);
}

static void
client_accept(struct evconnlistener *l, evutil_socket_t fd,
    struct sockaddr *sa, int salen, void *arg)
{
	struct timeval tv = { HEADER_TIMEOUT, 0 };
	struct client *c;

	(void)l;
	(void)sa;
	(void)salen;
	(void)arg;
	if ((c = calloc(1, sizeof *c)) == NULL)
		fatal("%s: calloc", __func__);
	c->bev = bufferevent_socket_new(cns_base, fd, BEV_OPT_CLOSE_ON_FREE);
	if (c->bev == NULL)
		fatalx("%s: bufferevent_socket_new", __func__);
	TAILQ_INSERT_TAIL(&clients, c, entry);
	bufferevent_setcb(c->bev, client_readcb, client_writecb,
	    client_eventcb, c);
	/* Bounded input: one item, plus a read's worth. */
	bufferevent_setwatermark(c->bev, EV_READ, 0,
	    cns_conf->max_item_bytes > CNS_HEADER_MAX ?
	    cns_conf->max_item_bytes + 1 : CNS_HEADER_MAX + 1);
	bufferevent_set_max_single_read(c->bev, 256u << 10);
	bufferevent_set_timeouts(c->bev, &tv, NULL);
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
}

static void
client_accept_again(evutil_socket_t fd, short ev, void *arg)
{
	(void)fd;
	(void)ev;
	(void)arg;
	if (listener != NULL && accepting)
		evconnlistener_enable(listener);
}

void
client_accepting(void)
{
	accepting = 1;
	if (listener != NULL)
		evconnlistener_enable(listener);
}

/* Out of fds (EMFILE and the like): pause accepting instead of spinning. */
static void
client_accept_error(struct evconnlistener *l, void *arg)
{
	struct timeval tv = { 1, 0 };

	(void)arg;
	log_warn("accept");
	evconnlistener_disable(l);
	evtimer_add(accept_retry, &tv);
}

static int
client_bind(const struct conf *conf)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	int fd;

	if (strlen(conf->socket) >= sizeof sun.sun_path) {
		log_warnx("socket path %s is too long (at most %zu bytes)",
		    conf->socket, sizeof sun.sun_path - 1);
		return -1;
	}
	strcpy(sun.sun_path, conf->socket);
	if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK,
	    0)) == -1) {
		log_warn("socket");
		return -1;
	}
	/* A socket file left by a dead daemon is replaced; a live one is
	 * not stolen. */
	if (connect(fd, (struct sockaddr *)&sun, sizeof sun) == 0) {
		log_warnx("another daemon is listening on %s", conf->socket);
		close(fd);
		return -1;
	}
	if (errno == ECONNREFUSED) {
		struct stat st;
		if (lstat(conf->socket, &st) == 0 && S_ISSOCK(st.st_mode))
			unlink(conf->socket);
	}
	close(fd);
	if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK,
	    0)) == -1) {
		log_warn("socket");
		return -1;
	}
	if (bind(fd, (struct sockaddr *)&sun, sizeof sun) == -1) {
		log_warn("bind %s", conf->socket);
		close(fd);
		return -1;
	}
	if (chmod(conf->socket, conf->socket_mode) == -1) {
		log_warn("chmod %s", conf->socket);
		close(fd);
		unlink(conf->socket);
		return -1;
	}
	if ((listen_path = strdup(conf->socket)) == NULL)
		fatal("%s: strdup", __func__);
	return fd;
}

/* Listen on `fd` if it is >= 0 (handed over by systemd), else bind. */
int
client_listen(struct event_base *base, const struct conf *conf, int fd)
{
	if (fd < 0 && (fd = client_bind(conf)) == -1)
		return -1;
	/* Listening at once lets early clients queue in the backlog; they
	 * are accepted once the pools are up (client_accepting). */
	listener = evconnlistener_new(base, client_accept, NULL,
	    LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC | LEV_OPT_DISABLED,
	    128, fd);
	if (listener == NULL) {
		log_warn("listen");
		close(fd);
		return -1;
	}
	evconnlistener_set_error_cb(listener, client_accept_error);
	accept_retry = evtimer_new(base, client_accept_again, NULL);
	return 0;
}

void
client_close_listener(void)
{
	if (listener != NULL) {
		evconnlistener_free(listener);
		listener = NULL;
	}
	if (accept_retry != NULL) {
		event_free(accept_retry);
		accept_retry = NULL;
	}
	if (listen_path != NULL) {
		unlink(listen_path);
		free(listen_path);
		listen_path = NULL;
	}
}

/* Shutdown: end every stream with `why`, then drop what is left. */
void
client_abort_all(const char *why)
{
	struct client *c, *next;

	for (c = TAILQ_FIRST(&clients); c != NULL; c = next) {
		next = TAILQ_NEXT(c, entry);
		if (c->closing)
			continue;
		if (c->stream != NULL)
			stream_abort(c->stream, why);
		else
			client_refuse(c, "%s", why);
	}
}

void
client_free_all(void)
{
	struct client *c;

	while ((c = TAILQ_FIRST(&clients)) != NULL)
		client_free(c);
}
