/*
 * client.c - the listening socket and client connections: reading the
 * header line, opening a stream, and writing replies.  A connection is
 * its stream's source (source.h): the stream reads items and sends
 * replies through client_source's ops, never by name.  A connection that
 * is done (refused, or its final line flushed) is freed here, with its
 * stream.  Here too are the limits on what a client may hold: a deadline
 * for its header, an idle limit while its stream reads it, and a count of
 * connections per uid; and the ops that are one reply, status and pools,
 * with who may ask them (access.c decides).
 */
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <errno.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#include "consumersd.h"

#define CLIENT_OUT_MAX	(1u << 20)	/* replies queued before we pause */
#define WRITE_TIMEOUT	60		/* seconds replies may stay unread */
#define LINGER_TIMEOUT	2		/* seconds to discard input after
					   the last line, so it is not lost
					   to a reset */
#define TRIM_AFTER	(1u << 20)	/* reply bytes freed before the heap
					   is given back (malloc_trim) */
#define DENIED_MAX	64		/* refused at the uid limit and
					   lingering, at most */

struct client {
	struct bufferevent	*bev;
	struct flushable	 out;		/* bev's output, per turn */
	struct stream		*stream;
	uid_t			 uid;		/* the peer, from SO_PEERCRED */
	gid_t			 gid;
	pid_t			 pid;
	struct peer		 peer;		/* the same, and its groups */
	int			 counted;	/* holds a place in its uid's count */
	int			 denied;	/* refused at the uid limit */
	int			 eof;		/* its write side is closed */
	int			 gone;		/* nothing can reach it */
	int			 closing;	/* free once output drains */
	int			 lingering;	/* last line sent, discarding */
	int			 reading;	/* its stream wants its input */
	int			 fetching;	/* op result: Redis answers */
	int			 idled;		/* input ended by idle_timeout */
	/* One timer, by phase: the header deadline, the idle check while
	 * the stream reads, the end of lingering. */
	struct event		*timer;
	struct timespec		 last_in;	/* input, or reading resumed */
	TAILQ_ENTRY(client)	 entry;
};

/* Open connections of one uid; a sorted array, one entry per uid with a
 * connection open, so its size follows the distinct uids connected. */
struct uid_count {
	uid_t			 uid;
	unsigned		 n;
};

static TAILQ_HEAD(, client) clients = TAILQ_HEAD_INITIALIZER(clients);

/*
 * Reply bytes queued for all clients: with more than max_client_buffer
 * queued, a stream whose client has replies waiting stops reading it, so
 * many clients that do not read cannot add up to more than the cap (and
 * a batch each).  What clients' buffers freed since the heap was last
 * trimmed: after a client with much queued leaves, the memory goes back
 * to the system.
 */
size_t			 cns_client_out;
double			 cns_started_at;
time_t			 cns_started_wall;
static size_t		 client_freed;
static int		 client_trim_due;
static struct evconnlistener	*listener;
static struct event		*accept_retry;
static char			*listen_path;
static char			*socket_abs;	/* for workers: CONSUMERS_SOCKET */
static int			 accepting;
static struct uid_count		*uids;
static size_t			 nuids, capuids;
static unsigned			 ndenied;	/* denied, still open */

/* The index of uid's entry, or where it would go; *found says which. */
static size_t
uid_search(uid_t uid, int *found)
{
	size_t lo = 0, hi = nuids;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (uids[mid].uid < uid)
			lo = mid + 1;
		else
			hi = mid;
	}
	*found = lo < nuids && uids[lo].uid == uid;
	return lo;
}

/* Count one more connection of uid; -1 if it already holds `limit`. */
static int
uid_take(uid_t uid, unsigned limit)
{
	int found;
	size_t i = uid_search(uid, &found);

	if (found) {
		if (limit > 0 && uids[i].n >= limit)
			return -1;
		uids[i].n++;
		return 0;
	}
	if (nuids == capuids) {
		size_t cap = capuids == 0 ? 8 : capuids * 2;
		struct uid_count *u = reallocarray(uids, cap, sizeof *u);
		if (u == NULL)
			fatal("%s: reallocarray", __func__);
		uids = u;
		capuids = cap;
	}
	memmove(&uids[i + 1], &uids[i], (nuids - i) * sizeof *uids);
	uids[i].uid = uid;
	uids[i].n = 1;
	nuids++;
	return 0;
}

static void
uid_release(uid_t uid)
{
	int found;
	size_t i = uid_search(uid, &found);

	if (!found)
		fatalx("%s: uid %lu holds no connection", __func__,
		    (unsigned long)uid);
	if (--uids[i].n > 0)
		return;
	memmove(&uids[i], &uids[i + 1], (nuids - i - 1) * sizeof *uids);
	nuids--;
	/* Give back what a burst of uids took. */
	if (capuids > 8 && nuids < capuids / 4) {
		struct uid_count *u = reallocarray(uids, capuids / 2,
		    sizeof *u);
		if (u != NULL) {
			uids = u;
			capuids /= 2;
		}
	}
	if (nuids == 0) {
		free(uids);
		uids = NULL;
		capuids = 0;
	}
}

static void
now_mono(struct timespec *ts)
{
	clock_gettime(CLOCK_MONOTONIC, ts);
}

static void
timer_set(struct client *c, double seconds)
{
	struct timeval tv = cns_tv(seconds);

	evtimer_add(c->timer, &tv);
}

/* Each client's output buffer reports here what it gains and loses. */
static void
client_out_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info,
    void *arg)
{
	(void)buf;
	(void)arg;
	cns_client_out += info->n_added;
	cns_client_out -= info->n_deleted < cns_client_out ? info->n_deleted :
	    cns_client_out;
	client_freed += info->n_deleted;
}

static void
client_trim(void *arg)
{
	(void)arg;
	client_trim_due = 0;
	client_freed = 0;
#ifdef __GLIBC__
	malloc_trim(0);
#endif
}

static void
client_free(struct client *c)
{
	struct evbuffer *out = bufferevent_get_output(c->bev);

	/* What it still had queued is freed with it, and counted (the
	 * bufferevent keeps the output's start frozen: a drain needs it
	 * thawed). */
	evbuffer_unfreeze(out, 1);
	evbuffer_drain(out, evbuffer_get_length(out));
	client_freed += evbuffer_get_length(bufferevent_get_input(c->bev));
	if (client_freed >= TRIM_AFTER && !client_trim_due) {
		client_trim_due = 1;
		cns_later(client_trim, NULL);
	}
	TAILQ_REMOVE(&clients, c, entry);
	if (c->fetching)
		cluster_result_cancel(c);
	if (c->stream != NULL) {
		stream_free(c->stream);
	}
	peer_clear(&c->peer);
	if (c->counted)
		uid_release(c->uid);
	if (c->denied)
		ndenied--;
	event_free(c->timer);
	flush_cancel(&c->out, 0);
	bufferevent_free(c->bev);
	free(c);
}

static struct evbuffer *
client_input(void *arg)
{
	struct client *c = arg;

	return bufferevent_get_input(c->bev);
}

/*
 * The stream reads its client (on) or pauses it, for backpressure or
 * while its replies are unread.  Only a client that is read can be idle:
 * its idle clock starts when reading starts or resumes.
 */
static void
client_read(struct client *c, int on)
{
	if (on && !c->eof && !c->closing && !c->idled && !c->stream->eof) {
		bufferevent_enable(c->bev, EV_READ);
		if (!c->reading) {
			c->reading = 1;
			now_mono(&c->last_in);
			if (cns_conf->idle_timeout > 0)
				timer_set(c, cns_conf->idle_timeout);
		}
		return;
	}
	bufferevent_disable(c->bev, EV_READ);
	if (c->reading) {
		c->reading = 0;
		if (!c->closing)
			evtimer_del(c->timer);
	}
}

static int
client_output_full(void *arg)
{
	struct client *c = arg;
	size_t own;

	if (c->gone)
		return 0;
	own = evbuffer_get_length(bufferevent_get_output(c->bev));
	if (own > 0 && cns_client_out > cns_conf->max_client_buffer) {
		static double warned;
		if (cns_now() - warned > 60) {
			warned = cns_now();
			log_warnx("clients have %zu bytes of replies unread, "
			    "more than max_client_buffer (%zu): streams whose "
			    "clients do not read are paused", cns_client_out,
			    cns_conf->max_client_buffer);
		}
		return 1;
	}
	return own > CLIENT_OUT_MAX;
}

static void
client_send_json(struct client *c, json_t *v)
{
	char *s;

	if (c->gone)
		return;
	/* Reals in their fewest digits: the daemon's own numbers (status,
	 * rounded to milliseconds) print as 11.37, a result of 0.1 as 0.1,
	 * and one that needs 17 digits keeps them. */
	if (v == NULL || (s = cns_json_dumps(v, JSON_COMPACT)) == NULL) {
		/* Not reached with text through utf8_clean(); not fatal. */
		log_warnx("%s: a reply could not be encoded", __func__);
		evbuffer_add_printf(bufferevent_get_output(c->bev), "%s\n",
		    "{\"ok\":false,\"error\":\"internal error: a reply "
		    "could not be encoded\"}");
		flush_later(&c->out);
		return;
	}
	evbuffer_add_printf(bufferevent_get_output(c->bev), "%s\n", s);
	flush_later(&c->out);
	free(s);
}

/* The last line: send it and close, or log it if the client is gone. */
static void
client_finish(struct client *c, json_t *final)
{
	evtimer_del(c->timer);
	c->reading = 0;
	if (c->gone) {
		char *s = final != NULL ? cns_json_dumps(final, JSON_COMPACT) :
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
	/* The line is written at the end of this turn (flush.c), and the
	 * write callback, called once it drained, closes. */
}

static void
source_reading(void *arg, int on)
{
	client_read(arg, on);
}

static void
source_event(void *arg, json_t *v)
{
	client_send_json(arg, v);
}

static void
source_finish(void *arg, json_t *v)
{
	client_finish(arg, v);
}

static struct peer *
source_peer(void *arg)
{
	struct client *c = arg;

	return &c->peer;
}

/* The local socket as a source of items (source.h). */
static const struct source_ops client_source = {
	.input = client_input,
	.reading = source_reading,
	.full = client_output_full,
	.event = source_event,
	.finish = source_finish,
	.peer = source_peer,
};

static void
client_refuse(struct client *c, const char *code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/*
 * Refuse with a sentence for people and a stable "code" for programs (the
 * table in doc/protocol.md): clients match the code, not the words.
 */
static void
client_refuse(struct client *c, const char *code, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	utf8_clean(msg);	/* a name cut at 100 bytes may split a char */
	log_info("client (pid %ld, uid %lu) refused: %s", (long)c->pid,
	    (unsigned long)c->uid, msg);
	client_finish(c, json_pack("{s:b,s:s,s:s}", "ok", 0, "error", msg,
	    "code", code));
}

/* The pool named `name`, or NULL after refusing the client. */
static struct pool *
client_pool(struct client *c, const char *name)
{
	char names[512] = "";
	struct pool *p;

	if ((p = pool_find(name)) != NULL)
		return p;
	TAILQ_FOREACH(p, pool_all(), entry) {
		if (names[0] != '\0')
			strncat(names, ", ", sizeof names - strlen(names) - 1);
		strncat(names, p->pc->name, sizeof names - strlen(names) - 1);
	}
	client_refuse(c, "unknown_pool", "no pool named \"%.100s\" (pools: %s)", name, names);
	return NULL;
}

/* A denial is a warning: it names who asked, for what, and why not. */
static void
client_denied(struct client *c, const char *op, const char *pool,
    const char *why)
{
	const char *user = peer_user(&c->peer);

	log_warnx("client (pid %ld, uid %lu, user %s, gid %lu) denied %s%s%s: "
	    "%s", (long)c->pid, (unsigned long)c->uid, user != NULL ? user :
	    "unknown", (unsigned long)c->gid, op, pool != NULL ? " of pool " :
	    "", pool != NULL ? pool : "", why);
	client_finish(c, json_pack("{s:b,s:s,s:s}", "ok", 0, "error", why,
	    "code", "denied"));
}

/* {"op":"status"}, of every pool or of one. */
static void
client_status(struct client *c, json_t *h)
{
	const char *name = json_string_value(json_object_get(h, "pool"));
	struct pool *p = NULL;
	char why[1024];

	if (name != NULL && (p = client_pool(c, name)) == NULL)
		return;
	if (!access_status(&c->peer, cns_conf, p != NULL ? p->pc : NULL, why,
	    sizeof why)) {
		client_denied(c, "status", name, why);
		return;
	}
	client_finish(c, status_reply(p));
}

/* {"op":"metrics"}: every pool's counters, for root and admin_group. */
static void
client_metrics(struct client *c)
{
	char why[1024];

	if (!access_status(&c->peer, cns_conf, NULL, why, sizeof why)) {
		client_denied(c, "metrics", NULL, why);
		return;
	}
	client_finish(c, status_metrics());
}

/* {"op":"reload"}: what SIGHUP does, for root and admin_group. */
static void
client_reload(struct client *c)
{
	char why[600];
	int r;

	if (!access_admin(&c->peer, cns_conf)) {
		snprintf(why, sizeof why, "permission denied: uid %lu may not "
		    "reload the configuration: that is for %s", (unsigned long)
		    c->uid, cns_conf->admin_group != NULL ? "root and the "
		    "admin_group" : "root (no admin_group is set)");
		client_denied(c, "reload", NULL, why);
		return;
	}
	if (cns_stopping) {
		client_finish(c, json_pack("{s:b,s:s,s:s}", "ok", 0, "error",
		    "consumersd is shutting down", "code", "draining"));
		return;
	}
	log_info("client (pid %ld, uid %lu) asks for a reload", (long)c->pid,
	    (unsigned long)c->uid);
	r = cns_reload(why, sizeof why);
	utf8_clean(why);
	/* A refusal lists its reasons, as the log has them. */
	client_finish(c, r == 0 ? json_pack("{s:b,s:s}", "ok", 1, "reloaded",
	    why) : json_pack("{s:b,s:s,s:s,s:O}", "ok", 0, "error", why, "code",
	    "reload_failed", "reasons", cns_reload_reasons()));
}

static void
client_submit(struct client *c, json_t *h)
{
	const char *name;
	struct pool *p;
	json_t *jw;
	unsigned want;
	char why[1024];

	name = json_string_value(json_object_get(h, "pool"));
	if ((p = client_pool(c, name)) == NULL)
		return;
	if (!access_submit(&c->peer, p->pc, why, sizeof why)) {
		client_denied(c, "submit", name, why);
		return;
	}
	if ((json_object_get(h, "args") != NULL ||
	    json_object_get(h, "kwargs") != NULL) && !p->pc->client_args) {
		client_refuse(c, "args_not_allowed", "pool %s takes no args or kwargs from its "
		    "clients (its pool file may allow them with \"client_args\": "
		    "true)", name);
		return;
	}
	if (p->pc->cluster) {
		/* Lanes on every instance: the header's workers are not
		 * capped by this machine's. */
		jw = json_object_get(h, "workers");
		c->stream = cluster_submit(&client_source, c, p, jw != NULL ?
		    (unsigned)json_integer_value(jw) : 0, h);
		return;
	}
	want = p->pc->stream_workers;
	if ((jw = json_object_get(h, "workers")) != NULL &&
	    json_integer_value(jw) < (json_int_t)want)
		want = (unsigned)json_integer_value(jw);
	c->stream = stream_new(&client_source, c, p, want,
	    json_object_get(h, "params"));
	/* Read by stream_bind, once a worker is leased (below at the
	 * earliest). */
	if (p->pc->client_args) {
		c->stream->args = json_incref(json_object_get(h, "args"));
		c->stream->kwargs = json_incref(json_object_get(h, "kwargs"));
	}
	/* Leased at once if workers are idle, refused if the pool cannot
	 * serve: the pool's one lease path. */
	pool_dispatch(p);
	if (c->stream->state == S_QUEUED)
		log_debug("stream %" PRIu64 ": waiting for a %s worker",
		    c->stream->id, name);
}

/* A cluster stream's final line is here: for those who may submit to
 * its pool. */
static void
client_result_done(void *arg, json_t *v)
{
	struct client *c = arg;
	const char *name = json_string_value(json_object_get(v, "pool"));
	struct pool *p = name != NULL ? pool_find(name) : NULL;
	char why[1024];

	c->fetching = 0;
	if (json_is_true(json_object_get(v, "ok")) ||
	    json_object_get(v, "items") != NULL) {
		if (p == NULL) {
			json_decref(v);
			client_refuse(c, "unknown_pool", "the stream's pool %s "
			    "is not served here", name != NULL ? name : "?");
			return;
		}
		if (!access_submit(&c->peer, p->pc, why, sizeof why)) {
			json_decref(v);
			client_denied(c, "result", name, why);
			return;
		}
	}
	client_finish(c, v);
}

/* {"op":"result","stream":S}: the final line of a cluster stream, from
 * any instance (its ingress may be gone). */
static void
client_result(struct client *c, json_t *h)
{
	json_int_t id = json_integer_value(json_object_get(h, "stream"));

	c->fetching = 1;
	cluster_result((uint64_t)id, client_result_done, c);
}

/* Read the header line; returns 1 once it was handled. */
static int
client_header(struct client *c)
{
	struct evbuffer *in = bufferevent_get_input(c->bev);
	struct evbuffer_ptr e;
	char why[512];
	const char *op;
	json_t *h;
	char *line;
	size_t len;

	e = evbuffer_search(in, "\n", 1, NULL);
	if (e.pos == -1) {
		if (evbuffer_get_length(in) > CNS_HEADER_MAX)
			client_refuse(c, "bad_header", "the header line is longer than %d "
			    "bytes", CNS_HEADER_MAX);
		else if (c->eof)
			client_refuse(c, "bad_header", "the connection ended before a "
			    "complete header line");
		return c->closing;
	}
	len = (size_t)e.pos;
	if (len > CNS_HEADER_MAX) {
		client_refuse(c, "bad_header", "the header line is longer than %d bytes",
		    CNS_HEADER_MAX);
		return 1;
	}
	line = (char *)evbuffer_pullup(in, (ev_ssize_t)len + 1);
	h = header_parse(line, len, why, sizeof why);
	evbuffer_drain(in, len + 1);
	if (h == NULL) {
		client_refuse(c, "bad_header", "%s", why);
		return 1;
	}
	evtimer_del(c->timer);		/* the header deadline is met */
	op = json_string_value(json_object_get(h, "op"));
	if (strcmp(op, "submit") == 0)
		client_submit(c, h);
	else if (strcmp(op, "status") == 0)
		client_status(c, h);
	else if (strcmp(op, "reload") == 0)
		client_reload(c);
	else if (strcmp(op, "metrics") == 0)
		client_metrics(c);
	else if (strcmp(op, "result") == 0)
		client_result(c, h);
	else if (strcmp(op, "hello") == 0)
		client_finish(c, json_pack("{s:b,s:s,s:i,s:[ssssss]}", "ok", 1,
		    "version", PACKAGE_VERSION, "protocol", CNS_PROTOCOL_VERSION,
		    "capabilities", "submit", "status", "pools", "reload",
		    "metrics", "codes"));
	else			/* "pools": anyone who may connect */
		client_finish(c, status_pools());
	json_decref(h);
	return 1;
}

/*
 * libevent 2.1 reads a socket at most 4096 bytes at a time: on a busy
 * stream that is a read, an ioctl, a callback and a small batch per 4 KiB.
 * After its read, take what else the socket holds in large reads, up to
 * the input's high-water mark (so memory stays bounded as before).
 * Returns BEV_EVENT_EOF or BEV_EVENT_ERROR when a read met the end of the
 * connection, which the caller handles at once (a short stream's END
 * frames then leave with its items), else 0.
 */
#define SLURP_MAX	(256u << 10)

static void	client_eventcb(struct bufferevent *, short, void *);

static short
client_slurp(struct client *c)
{
	struct evbuffer *in = bufferevent_get_input(c->bev);
	size_t have = evbuffer_get_length(in), high = 0;
	int fd = bufferevent_getfd(c->bev);
	short end = 0;

	bufferevent_getwatermark(c->bev, EV_READ, NULL, &high);
	/* A bufferevent keeps its input's end frozen but while it reads. */
	evbuffer_unfreeze(in, 0);
	for (int i = 0; i < 8 && have < high; i++) {
		struct evbuffer_iovec v;
		size_t want = high - have;
		ssize_t r;

		if (want > SLURP_MAX)
			want = SLURP_MAX;
		if (evbuffer_reserve_space(in, (ev_ssize_t)want, &v, 1) != 1)
			break;
		if (v.iov_len > want)
			v.iov_len = want;
		r = read(fd, v.iov_base, v.iov_len);
		if (r <= 0) {
			/* ECONNRESET is told once: libevent would not see it */
			if (r == 0)
				end = BEV_EVENT_EOF;
			else if (errno != EAGAIN && errno != EWOULDBLOCK &&
			    errno != EINTR)
				end = BEV_EVENT_ERROR;
			break;
		}
		want = v.iov_len;
		v.iov_len = (size_t)r;
		if (evbuffer_commit_space(in, &v, 1) == -1)
			break;
		have += (size_t)r;
		if ((size_t)r < want)
			break;		/* the socket is drained */
	}
	evbuffer_freeze(in, 0);
	return end;
}

static void
client_readcb(struct bufferevent *bev, void *arg)
{
	struct client *c = arg;

	(void)bev;
	if (c->lingering) {
		struct evbuffer *in = bufferevent_get_input(c->bev);
		evbuffer_drain(in, evbuffer_get_length(in));
		return;
	}
	if (c->closing || c->fetching)	/* fetching: Redis answers */
		return;
	if (c->stream == NULL) {
		if (!client_header(c) || c->closing)
			return;
	}
	if (c->stream != NULL) {
		short end = 0;
		uint64_t seq = c->stream->seq;
		if (c->reading)
			end = client_slurp(c);
		stream_input(c->stream);
		/* Only a complete item line keeps a client from idle_timeout:
		 * one that trickles bytes cannot hold its workers. */
		if (c->stream->seq != seq)
			now_mono(&c->last_in);
		if (end != 0 && !c->eof && !c->closing)
			client_eventcb(c->bev, BEV_EVENT_READING | end, c);
	}
}

/*
 * The idle timer: a stream reading its client got no complete item line
 * for idle_timeout seconds.  A complete line only notes its time, and the timer re-arms itself for
 * what is left, so reads cost no timer work.  An idle client is treated as
 * if it had closed its side: the stream ends on what was read, and the
 * final line says so (stream_cut).
 */
static void
client_idle(struct client *c)
{
	double idle = cns_conf->idle_timeout, quiet;
	struct timespec now;
	char why[128];

	if (!c->reading || c->idled || idle <= 0)
		return;
	now_mono(&now);
	quiet = (double)(now.tv_sec - c->last_in.tv_sec) +
	    (double)(now.tv_nsec - c->last_in.tv_nsec) / 1e9;
	if (quiet < idle) {
		timer_set(c, idle - quiet);
		return;
	}
	log_warnx("stream %" PRIu64 ": client (pid %ld, uid %lu) sent no "
	    "complete item line for %g s (idle_timeout); closing the stream",
	    c->stream->id, (long)c->pid, (unsigned long)c->uid, idle);
	snprintf(why, sizeof why, "idle for %g s without a complete item line "
	    "(idle_timeout)", idle);
	c->idled = 1;
	client_read(c, 0);
	stream_cut(c->stream, why);
}

static void
client_timer(evutil_socket_t fd, short ev, void *arg)
{
	struct client *c = arg;

	(void)fd;
	(void)ev;
	if (c->lingering)
		client_free(c);
	else if (c->closing)
		return;
	else if (c->stream == NULL)
		client_refuse(c, "header_timeout", "no complete header line within %g s "
		    "(header_timeout)", cns_conf->header_timeout);
	else
		client_idle(c);
}

/*
 * The last line is out but the client is still sending: close our side
 * and discard its input for a while, since closing a socket with unread
 * input resets it and the client could lose the line it has not read.
 */
static void
client_linger(struct client *c)
{
	c->lingering = 1;
	shutdown(bufferevent_getfd(c->bev), SHUT_WR);
	bufferevent_disable(c->bev, EV_WRITE);
	bufferevent_setwatermark(c->bev, EV_READ, 0, 0);
	bufferevent_enable(c->bev, EV_READ);
	/* A deadline, not an inactivity limit: a client that keeps sending
	 * cannot keep its connection this way. */
	timer_set(c, LINGER_TIMEOUT);
}

static void
client_writecb(struct bufferevent *bev, void *arg)
{
	struct client *c = arg;

	(void)bev;
	flush_drained(&c->out);
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
		client_free(c);		/* EOF or error */
		return;
	}
	if (what & BEV_EVENT_TIMEOUT) {	/* only writes have a timeout */
		log_warnx("a client has not read its replies for %d s; "
		    "dropping it", WRITE_TIMEOUT);
		what |= BEV_EVENT_ERROR;
	}
	if (what & BEV_EVENT_ERROR) {
		/* Nothing more reaches it: drop what was queued for it. */
		struct evbuffer *out = bufferevent_get_output(c->bev);
		c->gone = 1;
		evbuffer_unfreeze(out, 1);
		evbuffer_drain(out, evbuffer_get_length(out));
		evbuffer_freeze(out, 1);
	}
	if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
		c->eof = 1;
	if (c->closing || (c->fetching && !c->gone)) {
		if (c->gone)
			client_free(c);
		return;
	}
	if (c->fetching) {		/* gone: nobody waits for Redis */
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
	/* End of the client's items (or of the client): close the stream,
	 * unless idle_timeout or min_item_rate closed it already. */
	client_read(c, 0);
	if (!c->idled && !c->stream->eof)
		stream_eof(c->stream);
}

/*
 * Refuse a connection of a uid at its limit.  It holds no place, so it must
 * not hold a descriptor for long either: it lingers (LINGER_TIMEOUT at most)
 * so the client reads why, but past DENIED_MAX of them at once a flood is
 * coming, and the line goes out best effort before an immediate close.
 */
static void
client_deny(struct client *c, evutil_socket_t fd, unsigned limit)
{
	char msg[160], line[256];
	json_t *v;
	size_t n;

	snprintf(msg, sizeof msg, "too many connections from uid %lu: the "
	    "limit is %u (max_connections_per_uid)", (unsigned long)c->uid,
	    limit);
	v = json_pack("{s:b,s:s,s:s}", "ok", 0, "error", msg, "code",
	    "too_many_connections");
	if (ndenied < DENIED_MAX) {
		log_warnx("client (pid %ld, uid %lu) refused: %s", (long)c->pid,
		    (unsigned long)c->uid, msg);
		c->denied = 1;
		ndenied++;
		client_finish(c, v);
		return;
	}
	if (ndenied++ == DENIED_MAX)	/* once per flood */
		log_warnx("%d connections refused at the uid limit are still "
		    "open: refusing more at once, without lingering (this "
		    "one: pid %ld, uid %lu)", DENIED_MAX, (long)c->pid,
		    (unsigned long)c->uid);
	else
		log_debug("client (pid %ld, uid %lu) refused: %s",
		    (long)c->pid, (unsigned long)c->uid, msg);
	c->denied = 1;
	/* A new socket's buffer takes one short line. */
	n = json_dumpb(v, line, sizeof line - 1, JSON_COMPACT);
	if (n > 0 && n < sizeof line - 1) {
		line[n++] = '\n';
		(void)send(fd, line, n, MSG_DONTWAIT | MSG_NOSIGNAL);
	}
	json_decref(v);
	client_free(c);
}

/* Who is at the other end; -1 if the socket cannot say. */
static int
client_peer(struct client *c, evutil_socket_t fd)
{
	struct ucred cred;
	socklen_t len = sizeof cred;

	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == -1 ||
	    len != sizeof cred) {
		log_warn("a client's credentials (SO_PEERCRED)");
		return -1;
	}
	c->uid = cred.uid;
	c->gid = cred.gid;
	c->pid = cred.pid;
	peer_init(&c->peer, cred.uid, cred.gid, cred.pid);
	return 0;
}

static void
client_accept(struct evconnlistener *l, evutil_socket_t fd,
    struct sockaddr *sa, int salen, void *arg)
{
	struct timeval write_tv = { WRITE_TIMEOUT, 0 };
	const unsigned limit = cns_conf->max_conn_per_uid;
	struct client *c;

	(void)l;
	(void)sa;
	(void)salen;
	(void)arg;
	if ((c = calloc(1, sizeof *c)) == NULL)
		fatal("%s: calloc", __func__);
	c->uid = (uid_t)-1;
	c->gid = (gid_t)-1;
	c->pid = -1;
	peer_init(&c->peer, c->uid, c->gid, c->pid);
	c->bev = bufferevent_socket_new(cns_base, fd, BEV_OPT_CLOSE_ON_FREE);
	if (c->bev == NULL)
		fatalx("%s: bufferevent_socket_new", __func__);
	if ((c->timer = evtimer_new(cns_base, client_timer, c)) == NULL)
		fatalx("%s: evtimer_new", __func__);
	TAILQ_INSERT_TAIL(&clients, c, entry);
	bufferevent_setcb(c->bev, client_readcb, client_writecb,
	    client_eventcb, c);
	/* Bounded input: one item, plus a read's worth. */
	bufferevent_setwatermark(c->bev, EV_READ, 0,
	    cns_conf->max_item_bytes > CNS_HEADER_MAX ?
	    cns_conf->max_item_bytes + 1 : CNS_HEADER_MAX + 1);
	bufferevent_set_max_single_read(c->bev, 256u << 10);
	bufferevent_set_timeouts(c->bev, NULL, &write_tv);
	bufferevent_enable(c->bev, EV_READ);
	flush_init(&c->out, c->bev, 1);
	evbuffer_add_cb(bufferevent_get_output(c->bev), client_out_cb, NULL);
	if (client_peer(c, fd) == -1) {
		client_refuse(c, "internal", "consumersd cannot tell who is connecting "
		    "(SO_PEERCRED failed)");
		return;
	}
	if (uid_take(c->uid, limit) == -1) {
		client_deny(c, fd, limit);
		return;
	}
	c->counted = 1;
	if (cns_conf->header_timeout > 0)
		timer_set(c, cns_conf->header_timeout);
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
	/* The group first: until the mode is set, the socket has the
	 * umask's permissions, not yet the configured ones. */
	if (conf->socket_group != NULL &&
	    chown(conf->socket, (uid_t)-1, conf->socket_gid) == -1) {
		log_warn("socket_group: chown %s to group %s", conf->socket,
		    conf->socket_group);
		close(fd);
		unlink(conf->socket);
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

/*
 * The absolute path clients reach us at, for the workers' environment:
 * the bound address of the listening socket (systemd's, with socket
 * activation), else the configured path; made absolute against the
 * working directory, which the daemon never changes.
 */
static void
client_socket_abs(const struct conf *conf, int fd)
{
	struct sockaddr_un sun;
	socklen_t len = sizeof sun;
	const char *path = conf->socket;
	char cwd[4096];

	memset(&sun, 0, sizeof sun);
	if (getsockname(fd, (struct sockaddr *)&sun, &len) == 0 &&
	    sun.sun_family == AF_UNIX && len > offsetof(struct sockaddr_un,
	    sun_path) && sun.sun_path[0] != '\0')
		path = sun.sun_path;	/* NUL-terminated: zeroed, and short */
	free(socket_abs);
	if (path[0] == '/' || getcwd(cwd, sizeof cwd) == NULL) {
		if ((socket_abs = strdup(path)) == NULL)
			fatal("%s: strdup", __func__);
	} else if (asprintf(&socket_abs, "%s/%s", cwd, path) == -1)
		fatal("%s: asprintf", __func__);
	cns_socket_abs = socket_abs;
}

/* Listen on `fd` if it is >= 0 (handed over by systemd), else bind. */
int
client_listen(struct event_base *base, const struct conf *conf, int fd)
{
	if (fd < 0 && (fd = client_bind(conf)) == -1)
		return -1;
	client_socket_abs(conf, fd);
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
	free(socket_abs);
	socket_abs = NULL;
	cns_socket_abs = NULL;
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
			client_refuse(c, "draining", "%s", why);
	}
}

void
client_free_all(void)
{
	struct client *c;

	while ((c = TAILQ_FIRST(&clients)) != NULL)
		client_free(c);
}
