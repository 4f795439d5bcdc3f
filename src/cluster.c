/*
 * cluster.c - cluster pools on Redis Streams (issue 15, doc/cluster.md).
 *
 * One hiredis connection on the master's own event base (the libevent
 * adapter: no library threads, fork stays safe), reconnected with backoff
 * on a timer; hiredis 0.14 has no command timeout, so a tick drops the
 * connection when a command goes unanswered for CMD_TIMEOUT seconds.
 *
 * A stream submitted to a cluster pool stays a struct stream for its
 * client (s->cl is its ingress here): the ingress takes a stream id from
 * Redis, claims lanes for its own idle workers first, and offers the rest
 * as jobs on the pool's jobs stream (consumer group "workers"); every
 * instance serving the pool reads jobs while it has idle workers and
 * claims a lane with a script that refuses once the ingress sealed the
 * lease.  The ingress then cuts the client's lines into batches as feed.c
 * does and appends them to per-lane streams (entry id: the batch's first
 * seq, so a resend is refused, not duplicated), within a credit window
 * per lane read from the owners' progress.  An owner runs its lane as a
 * local stream of one lane (s->lane_only) whose source (source.h) is the
 * lane stream; its rejections and its last line go back on the stream's
 * events stream, where the ingress reads them, relays rejections, and once
 * every lane returned runs the completion on one of its own workers
 * (s->complete_only) and sends the final line.
 *
 * Keys: cns:streamid (INCR), cns:{P}:jobs (lane jobs), cns:{P}:inst (who
 * serves P: workers, idle, when), and per stream S: cns:{S}:meta (pool,
 * params, state), cns:{S}:owners (lane -> instance), cns:{S}:prog (lane ->
 * lines its owner read), cns:{S}:lane:I (batches), cns:{S}:events.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "consumersd.h"

#ifdef HAVE_HIREDIS
#include <hiredis/hiredis.h>
#include <hiredis/async.h>
#include <hiredis/adapters/libevent.h>

#define CMD_TIMEOUT	5.0	/* seconds a command may go unanswered */
#define POLL_SEC	0.002	/* an idle lane or ingress looks again */
#define JOBS_SEC	0.01	/* idle workers look for lane jobs */
#define KEY_TTL		"600"	/* seconds a finished stream's keys stay */
#define BATCH_MAX	(1u << 20)
#define BATCH_MIN	(64u << 10)
#define HOLD_MIN	(512u << 10) /* input a batch waits for */
#define HOLD_SEC	0.005	/* a short batch waits for more */
#define INFLIGHT_MAX	(4u << 20) /* batch bytes Redis has not answered */
#define SNDBUF		(4 << 20) /* so Redis reads a batch in one turn */
#define LANE_READ_MAX	(1u << 20) /* an owner's unread buffer */
#define WINDOW_FACTOR	8	/* a lane's window: this many worker ones */

static struct {
	char		*instance;
	char		*redis;		/* as configured, for messages */
	char		*path;		/* unix socket, or NULL: host:port */
	char		*host;
	int		 port;
	int		 db;
	char		*password_file;
	double		 heartbeat;
	double		 claim_idle;
	redisAsyncContext *ac;
	int		 up;		/* connected, AUTH and SELECT done */
	char		 why[300];	/* why it is down */
	unsigned	 backoff_ms;
	unsigned	 pending;	/* commands not answered yet */
	double		 progress_at;	/* the last answer, or first command */
	struct event	*retry_ev, *tick_ev, *beat_ev, *jobs_ev;
	json_t		*instances;	/* pool -> {instance -> info} */
	json_t		*polling;	/* pool -> 1: an XREADGROUP is out */
	json_t		*claiming;	/* pool -> lane claims out */
} R;

/* ---- commands ---- */

typedef void rfn(redisReply *, void *);

struct rcall {
	rfn	*fn;
	void	*arg;
};

static void
rcall_cb(redisAsyncContext *ac, void *reply, void *priv)
{
	struct rcall *rc = priv;

	(void)ac;
	if (R.pending > 0)
		R.pending--;
	R.progress_at = cns_now();
	if (rc->fn != NULL)
		rc->fn(reply, rc->arg);
	free(rc);
}

static int
rsend(rfn *fn, void *arg, int argc, const char **argv, const size_t *len)
{
	struct rcall *rc;

	if (R.ac == NULL)
		return -1;
	if ((rc = malloc(sizeof *rc)) == NULL)
		fatal("%s: malloc", __func__);
	rc->fn = fn;
	rc->arg = arg;
	if (redisAsyncCommandArgv(R.ac, rcall_cb, rc, argc, argv, len) !=
	    REDIS_OK) {
		free(rc);
		return -1;
	}
	if (R.pending++ == 0)
		R.progress_at = cns_now();
	return 0;
}

/* A command of NUL-terminated words; NULL ends the list. */
static int
rdo(rfn *fn, void *arg, ...)
{
	const char *argv[32];
	size_t len[32];
	int argc = 0;
	va_list ap;

	va_start(ap, arg);
	while (argc < 32 && (argv[argc] = va_arg(ap, const char *)) != NULL) {
		len[argc] = strlen(argv[argc]);
		argc++;
	}
	va_end(ap);
	return rsend(fn, arg, argc, argv, len);
}

static int
reply_error(const redisReply *r, char *why, size_t whylen)
{
	if (r == NULL) {
		snprintf(why, whylen, "%.200s", R.why[0] != '\0' ? R.why :
		    "the connection to Redis was lost");
		return 1;
	}
	if (r->type == REDIS_REPLY_ERROR) {
		snprintf(why, whylen, "Redis answered: %.*s",
		    (int)(r->len > 200 ? 200 : r->len), r->str);
		return 1;
	}
	return 0;
}

static char *
reply_str(const redisReply *r)
{
	char *s;

	if (r == NULL || (r->type != REDIS_REPLY_STRING &&
	    r->type != REDIS_REPLY_STATUS))
		return NULL;
	if ((s = strndup(r->str, r->len)) == NULL)
		fatal("%s: strndup", __func__);
	return s;
}

static json_t *
reply_json(const redisReply *r)
{
	if (r == NULL || r->type != REDIS_REPLY_STRING)
		return NULL;
	return json_loadb(r->str, r->len, JSON_DECODE_ANY, NULL);
}

/* ---- the connection ---- */

static void	redis_connect(void);

static void
redis_retry(evutil_socket_t fd, short ev, void *arg)
{
	(void)fd;
	(void)ev;
	(void)arg;
	redis_connect();
}

static void
redis_later(void)
{
	struct timeval tv;

	if (R.backoff_ms == 0)
		R.backoff_ms = 100;
	else if (R.backoff_ms < 5000)
		R.backoff_ms *= 2;
	tv = cns_tv(R.backoff_ms / 1000.0);
	evtimer_add(R.retry_ev, &tv);
}

static void
redis_down(const char *why)
{
	if (R.up || R.why[0] == '\0' || strcmp(R.why, why) != 0)
		log_warnx("cluster: Redis at %s: %s; cluster pools refuse "
		    "streams until it is back (retrying)", R.redis, why);
	R.up = 0;
	snprintf(R.why, sizeof R.why, "%s", why);
}

/* Drop the connection (a timeout, a refused AUTH): pending commands get
 * NULL replies, and a new connection is tried later. */
static void
redis_drop(const char *why)
{
	redisAsyncContext *ac = R.ac;

	redis_down(why);
	R.ac = NULL;
	R.pending = 0;
	if (ac != NULL)
		redisAsyncFree(ac);
	if (!evtimer_pending(R.retry_ev, NULL))
		redis_later();
}

static void
on_connect(const redisAsyncContext *ac, int status)
{
	char why[300];

	if (status == REDIS_OK) {
		fcntl(ac->c.fd, F_SETFD, FD_CLOEXEC);
		return;
	}
	snprintf(why, sizeof why, "cannot connect to Redis: %s", ac->errstr);
	if (ac == R.ac) {
		R.ac = NULL;	/* hiredis frees it */
		R.pending = 0;
		redis_down(why);
		redis_later();
	}
}

static void
on_disconnect(const redisAsyncContext *ac, int status)
{
	char why[300];

	if (ac != R.ac)
		return;
	snprintf(why, sizeof why, "the connection to Redis was lost: %s",
	    status == REDIS_OK ? "closed" : ac->errstr);
	R.ac = NULL;
	R.pending = 0;
	redis_down(why);
	redis_later();
}

static void
on_setup(redisReply *r, void *arg)
{
	char why[300];

	(void)arg;
	if (reply_error(r, why, sizeof why)) {
		if (r != NULL)
			redis_drop(why);
		return;
	}
}

static void
on_ready(redisReply *r, void *arg)
{
	char why[300];

	(void)arg;
	if (reply_error(r, why, sizeof why)) {
		if (r != NULL)
			redis_drop(why);
		return;
	}
	if (!R.up)
		log_info("cluster: connected to Redis at %s as instance %s",
		    R.redis, R.instance);
	R.up = 1;
	R.why[0] = '\0';
	R.backoff_ms = 0;
}

static void
group_created(redisReply *r, void *arg)
{
	(void)r;
	(void)arg;	/* BUSYGROUP: it was there */
}

static void
create_groups(void)
{
	struct pool *p;
	char key[300];

	TAILQ_FOREACH(p, pool_all(), entry) {
		if (!p->pc->cluster)
			continue;
		snprintf(key, sizeof key, "cns:{%s}:jobs", p->pc->name);
		rdo(group_created, NULL, "XGROUP", "CREATE", key, "workers",
		    "0", "MKSTREAM", NULL);
	}
}

static void
redis_connect(void)
{
	redisAsyncContext *ac;
	char why[300];

	ac = R.path != NULL ? redisAsyncConnectUnix(R.path) :
	    redisAsyncConnect(R.host, R.port);
	if (ac == NULL)
		fatalx("%s: out of memory", __func__);
	if (ac->err) {
		snprintf(why, sizeof why, "cannot connect to Redis: %s", ac->errstr);
		redisAsyncFree(ac);
		redis_down(why);
		redis_later();
		return;
	}
	fcntl(ac->c.fd, F_SETFD, FD_CLOEXEC);
	{
		/* Redis reads a large argument in one read() per turn: let
		 * the socket hold a whole batch (capped by wmem_max). */
		int sz = SNDBUF;
		(void)setsockopt(ac->c.fd, SOL_SOCKET, SO_SNDBUF, &sz,
		    sizeof sz);
	}
	if (redisLibeventAttach(ac, cns_base) != REDIS_OK) {
		redisAsyncFree(ac);
		redis_down("cannot attach to the event loop");
		redis_later();
		return;
	}
	redisAsyncSetConnectCallback(ac, on_connect);
	redisAsyncSetDisconnectCallback(ac, on_disconnect);
	R.ac = ac;
	R.pending = 0;
	if (R.password_file != NULL) {
		char buf[512];
		FILE *f = fopen(R.password_file, "re");
		size_t n = 0;
		if (f != NULL) {
			n = fread(buf, 1, sizeof buf - 1, f);
			fclose(f);
		}
		if (f == NULL) {
			snprintf(why, sizeof why, "cannot read password_file "
			    "%s: %s", R.password_file, strerror(errno));
			redis_drop(why);
			return;
		}
		buf[n] = '\0';
		buf[strcspn(buf, "\r\n")] = '\0';
		rdo(on_setup, NULL, "AUTH", buf, NULL);
		explicit_bzero(buf, sizeof buf);
	}
	if (R.db != 0) {
		char db[16];
		snprintf(db, sizeof db, "%d", R.db);
		rdo(on_setup, NULL, "SELECT", db, NULL);
	}
	create_groups();
	rdo(on_ready, NULL, "PING", NULL);
}

/* Commands unanswered too long: hiredis 0.14 has no timeout of its own. */
static void
redis_tick(evutil_socket_t fd, short ev, void *arg)
{
	char why[100];

	(void)fd;
	(void)ev;
	(void)arg;
	if (R.ac != NULL && R.pending > 0 &&
	    cns_now() - R.progress_at > CMD_TIMEOUT) {
		snprintf(why, sizeof why, "Redis gave no answer for %g s",
		    CMD_TIMEOUT);
		redis_drop(why);
	}
}

const char *
cluster_unavailable(void)
{
	if (R.instance == NULL)
		return "this daemon has no \"cluster\" section";
	return R.up ? NULL : R.why[0] != '\0' ? R.why : "connecting";
}

/* ---- who serves which pool ---- */

struct pool;
static void	lanes_beat(struct pool *);
static void	lanes_sweep(struct pool *);

static void
on_instances(redisReply *r, void *arg)
{
	char *pool = arg;
	json_t *o;

	if (r != NULL && r->type == REDIS_REPLY_ARRAY) {
		o = json_object();
		for (size_t i = 0; i + 1 < r->elements; i += 2) {
			char *k = reply_str(r->element[i]);
			json_t *v = reply_json(r->element[i + 1]);
			if (k != NULL && json_is_object(v))
				json_object_set(o, k, v);
			free(k);
			json_decref(v);
		}
		json_object_set_new(R.instances, pool, o);
	}
	free(pool);
}

static double
wall_now(void)
{
	struct timeval tv;

	gettimeofday(&tv, NULL);
	return tv.tv_sec + tv.tv_usec / 1e6;
}

/* Every heartbeat: say how many workers serve each cluster pool here, and
 * read what the others said. */
static void
redis_beat(evutil_socket_t fd, short ev, void *arg)
{
	struct pool *p;
	char key[300], *info;
	json_t *v;

	(void)fd;
	(void)ev;
	(void)arg;
	if (!R.up)
		return;
	TAILQ_FOREACH(p, pool_all(), entry) {
		char *name;
		if (!p->pc->cluster || p->retiring)
			continue;
		snprintf(key, sizeof key, "cns:{%s}:inst", p->pc->name);
		v = json_pack("{s:i,s:i,s:i,s:f,s:b}", "workers",
		    (int)p->pc->workers, "stream_workers",
		    (int)p->pc->stream_workers, "idle", (int)p->nidle, "at",
		    wall_now(), "failed", p->failed);
		info = json_dumps(v, JSON_COMPACT);
		json_decref(v);
		rdo(NULL, NULL, "HSET", key, R.instance, info, NULL);
		free(info);
		lanes_beat(p);
		if (!cns_stopping && !p->failed)
			lanes_sweep(p);
		if ((name = strdup(p->pc->name)) == NULL)
			fatal("%s: strdup", __func__);
		if (rdo(on_instances, name, "HGETALL", key, NULL) == -1)
			free(name);
	}
}

/* Instances that said they serve the pool within claim_idle (or three
 * heartbeats): how many workers they have. */
static unsigned
cluster_workers(struct pool *p, int stream_workers)
{
	json_t *o = json_object_get(R.instances, p->pc->name), *v;
	const char *k;
	double now = wall_now(),
	    live = cns_conf->cluster != NULL ? cns_conf->cluster->claim_idle :
	    3;
	unsigned n = 0, self = 0;

	if (live < 3 * R.heartbeat)
		live = 3 * R.heartbeat;
	json_object_foreach(o, k, v) {
		double at = json_number_value(json_object_get(v, "at"));
		json_int_t w = json_integer_value(json_object_get(v,
		    stream_workers ? "stream_workers" : "workers"));
		if (strcmp(k, R.instance) == 0) {
			self = 1;
			w = stream_workers ? p->pc->stream_workers :
			    p->pc->workers;
		} else if (now - at > live ||
		    json_is_true(json_object_get(v, "failed")))
			continue;
		if (w > 0 && w <= CNS_MAX_WORKERS)
			n += (unsigned)w;
	}
	if (!self)
		n += stream_workers ? p->pc->stream_workers : p->pc->workers;
	return n > CNS_MAX_WORKERS ? CNS_MAX_WORKERS : n;
}

json_t *
cluster_status(const struct pool *p)
{
	json_t *o = json_object_get(R.instances, p->pc->name);
	const char *why = cluster_unavailable();

	return json_pack("{s:s,s:s,s:s?,s:O?}", "redis", R.redis != NULL ?
	    R.redis : "", "instance", R.instance != NULL ? R.instance : "",
	    "unavailable", why, "instances", o);
}

/* ---- a lane's owner: a local stream of one lane, fed from Redis ---- */

struct segmap {
	uint64_t	 lfirst;	/* the local stream's seq */
	uint64_t	 gfirst;	/* the cluster stream's */
	uint64_t	 n;
};

struct olane {
	struct stream	*s;
	unsigned	 refs;
	uint64_t	 S;
	unsigned	 lane;
	uint64_t	 token;		/* its claim: a later one fences it */
	uint64_t	 takeovers;	/* owners lost before this one */
	char		 alive[300];	/* cns:{P}:alive */
	char		 tokkey[128];	/* cns:{S}:tokens */
	char		 member[64];	/* S:lane, in alive */
	int		 lost;		/* another instance claimed it */
	LIST_ENTRY(olane) entry;	/* olanes, while it runs */
	char		 key[128];	/* cns:{S}:lane:I */
	char		 evkey[128];	/* cns:{S}:events */
	char		 progkey[128];	/* cns:{S}:prog */
	char		 last_id[48];
	struct evbuffer	*in;
	int		 reading;
	int		 inflight;	/* an XREAD is out */
	int		 end_seen;
	uint64_t	 lcount;	/* lines read */
	struct segmap	*map;
	size_t		 nmap, capmap;
	struct event	*poll_ev;
};

static void	olane_poll(struct olane *);
static LIST_HEAD(, olane) olanes = LIST_HEAD_INITIALIZER(olanes);

static void
olane_unref(struct olane *ol)
{
	if (--ol->refs > 0)
		return;
	LIST_REMOVE(ol, entry);
	if (ol->in != NULL)
		evbuffer_free(ol->in);
	if (ol->poll_ev != NULL)
		event_free(ol->poll_ev);
	free(ol->map);
	free(ol);
}

static uint64_t
olane_gseq(const struct olane *ol, uint64_t lseq)
{
	size_t lo = 0, hi = ol->nmap;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		const struct segmap *m = &ol->map[mid];
		if (lseq < m->lfirst)
			hi = mid;
		else if (lseq >= m->lfirst + m->n)
			lo = mid + 1;
		else
			return m->gfirst + (lseq - m->lfirst);
	}
	return lseq;
}

/* The local seqs a line of the lane speaks of, as the client's. */
static void
olane_map(const struct olane *ol, json_t *v)
{
	const char *k;
	json_t *o, *seq, *seqs, *e, *r;
	size_t i, j;

	json_object_foreach(v, k, o) {
		if (json_is_object(o) && json_is_integer(seq =
		    json_object_get(o, "seq")))
			json_object_set_new(o, "seq", json_integer((json_int_t)
			    olane_gseq(ol, (uint64_t)json_integer_value(seq))));
	}
	json_array_foreach(json_object_get(v, "errors"), i, e) {
		json_t *out;
		if (!json_is_array(seqs = json_object_get(e, "seqs")))
			continue;
		out = json_array();
		json_array_foreach(seqs, j, r) {
			uint64_t a = (uint64_t)json_integer_value(
			    json_array_get(r, 0)), b = (uint64_t)
			    json_integer_value(json_array_get(r, 1));
			/* A local range may span batches: split it. */
			while (a != 0 && a <= b) {
				uint64_t ga = olane_gseq(ol, a), end = a;
				while (end < b && olane_gseq(ol, end + 1) ==
				    ga + (end + 1 - a))
					end++;
				json_array_append_new(out, json_pack("[I,I]",
				    (json_int_t)ga, (json_int_t)(ga + end -
				    a)));
				a = end + 1;
			}
		}
		json_object_set_new(e, "seqs", out);
	}
}

/*
 * A line for the ingress, fenced: only the lane's current owner (its
 * claim token) may add to the events; the last line also takes the lane
 * off the heartbeats.
 */
static const char say_lua[] =
    "if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then return 0 end "
    "redis.call('XADD', KEYS[1], '*', 'lane', ARGV[1], ARGV[3], ARGV[4]) "
    "if ARGV[3] == 'final' then redis.call('ZREM', KEYS[3], ARGV[5]) end "
    "return 1";

static void
lane_said(redisReply *r, void *arg)
{
	struct olane *ol = arg;

	if (r != NULL && r->type == REDIS_REPLY_INTEGER && r->integer == 0)
		log_warnx("cluster stream %" PRIu64 " lane %u: another "
		    "instance owns the lane now (claim %" PRIu64 " is stale): "
		    "what this one says is refused", ol->S, ol->lane,
		    ol->token);
	olane_unref(ol);
}

static void
lane_say(struct olane *ol, const char *field, json_t *v)
{
	char *line, lane[16], tok[32];

	line = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
	if (line == NULL)
		return;
	snprintf(lane, sizeof lane, "%u", ol->lane);
	snprintf(tok, sizeof tok, "%" PRIu64, ol->token);
	ol->refs++;
	if (rdo(lane_said, ol, "EVAL", say_lua, "3", ol->evkey, ol->tokkey,
	    ol->alive, lane, tok, field, line, ol->member, NULL) == -1) {
		ol->refs--;
		log_warnx("cluster stream %" PRIu64 " lane %u: cannot send "
		    "its %s: %s", ol->S, ol->lane, field,
		    cluster_unavailable());
	}
	free(line);
}

/* A line for the ingress: a rejection, a quarantine, the lane's last. */
static void
olane_say(struct olane *ol, const char *field, json_t *v)
{
	olane_map(ol, v);
	lane_say(ol, field, v);
}

static struct evbuffer *
olane_input(void *arg)
{
	struct olane *ol = arg;
	return ol->in;
}

static void
olane_reading(void *arg, int on)
{
	struct olane *ol = arg;

	ol->reading = on;
	if (on)
		olane_poll(ol);
}

static int
olane_full(void *arg)
{
	(void)arg;
	return 0;
}

static void
olane_event(void *arg, json_t *v)
{
	struct olane *ol = arg;
	json_t *copy;

	if (json_object_get(v, "ok") != NULL)
		return;		/* the lease: the ingress said it */
	copy = json_deep_copy(v);
	olane_say(ol, "ev", copy);
	json_decref(copy);
}

static void
olane_free_later(void *arg)
{
	struct olane *ol = arg;

	if (ol->s != NULL) {
		stream_free(ol->s);
		ol->s = NULL;
	}
	olane_unref(ol);
}

static void
olane_finish(void *arg, json_t *v)
{
	struct olane *ol = arg;

	json_object_set_new(v, "instance", json_string(R.instance));
	json_object_set_new(v, "read", json_integer((json_int_t)ol->lcount));
	if (ol->takeovers > 0)
		json_object_set_new(v, "takeovers", json_integer(
		    (json_int_t)ol->takeovers));
	olane_say(ol, "final", v);
	json_decref(v);
	ol->reading = 0;
	evtimer_del(ol->poll_ev);
	cns_later(olane_free_later, ol);
}

static const struct source_ops olane_source = {
	.input = olane_input,
	.reading = olane_reading,
	.full = olane_full,
	.event = olane_event,
	.finish = olane_finish,
};

static void
olane_fail(struct olane *ol, const char *why)
{
	if (ol->s != NULL && ol->s->state != S_DONE) {
		char msg[400];
		snprintf(msg, sizeof msg, "cluster lane %u of stream %" PRIu64
		    ": %s", ol->lane, ol->S, why);
		stream_abort(ol->s, msg);
	}
}

static void
olane_read(redisReply *r, void *arg)
{
	struct olane *ol = arg;
	char why[300], prog[32], lane[16];
	size_t got = 0;

	ol->inflight = 0;
	if (ol->s == NULL || ol->s->state == S_DONE) {
		olane_unref(ol);
		return;
	}
	if (reply_error(r, why, sizeof why)) {
		olane_fail(ol, why);
		olane_unref(ol);
		return;
	}
	/* [[key, [[id, [field, value, ...]], ...]]], or nil: nothing new */
	if (r->type == REDIS_REPLY_ARRAY && r->elements == 1 &&
	    r->element[0]->type == REDIS_REPLY_ARRAY &&
	    r->element[0]->elements == 2) {
		redisReply *es = r->element[0]->element[1];
		for (size_t i = 0; es->type == REDIS_REPLY_ARRAY &&
		    i < es->elements; i++) {
			redisReply *e = es->element[i], *f;
			const char *d = NULL;
			size_t dlen = 0;
			uint64_t n = 0, g;
			int end = 0;
			if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 ||
			    e->element[0]->type != REDIS_REPLY_STRING)
				continue;
			snprintf(ol->last_id, sizeof ol->last_id, "%.*s",
			    (int)e->element[0]->len, e->element[0]->str);
			g = strtoull(ol->last_id, NULL, 10);
			f = e->element[1];
			for (size_t j = 0; f->type == REDIS_REPLY_ARRAY &&
			    j + 1 < f->elements; j += 2) {
				redisReply *k = f->element[j],
				    *v = f->element[j + 1];
				if (k->len == 1 && k->str[0] == 'd') {
					d = v->str;
					dlen = v->len;
				} else if (k->len == 1 && k->str[0] == 'n')
					n = strtoull(v->str, NULL, 10);
				else if (k->len == 3 &&
				    memcmp(k->str, "end", 3) == 0)
					end = 1;
			}
			got++;
			if (end) {
				ol->end_seen = 1;
				break;
			}
			if (d == NULL || n == 0)
				continue;
			if (ol->nmap == ol->capmap) {
				ol->capmap = ol->capmap ? ol->capmap * 2 : 64;
				ol->map = reallocarray(ol->map, ol->capmap,
				    sizeof *ol->map);
				if (ol->map == NULL)
					fatal("%s: reallocarray", __func__);
			}
			ol->map[ol->nmap++] = (struct segmap){ ol->lcount + 1,
			    g, n };
			ol->lcount += n;
			evbuffer_add(ol->in, d, dlen);
		}
	}
	if (got > 0) {
		snprintf(prog, sizeof prog, "%" PRIu64, ol->lcount);
		snprintf(lane, sizeof lane, "%u", ol->lane);
		rdo(NULL, NULL, "HSET", ol->progkey, lane, prog, NULL);
	}
	if (ol->end_seen)
		stream_eof(ol->s);
	else if (got > 0)
		stream_input(ol->s);
	if (ol->s != NULL && ol->s->state != S_DONE && ol->reading &&
	    !ol->inflight && !ol->end_seen) {
		if (got > 0)
			olane_poll(ol);
		else {
			struct timeval tv = cns_tv(POLL_SEC);
			evtimer_add(ol->poll_ev, &tv);
		}
	}
	olane_unref(ol);
}

static void
olane_poll(struct olane *ol)
{
	if (ol->inflight || ol->end_seen || ol->s == NULL ||
	    evbuffer_get_length(ol->in) > LANE_READ_MAX)
		return;
	evtimer_del(ol->poll_ev);
	ol->refs++;
	ol->inflight = 1;
	if (rdo(olane_read, ol, "XREAD", "COUNT", "16", "STREAMS", ol->key,
	    ol->last_id, NULL) == -1) {
		ol->inflight = 0;
		ol->refs--;
		olane_fail(ol, cluster_unavailable());
	}
}

static void
olane_tick(evutil_socket_t fd, short ev, void *arg)
{
	struct olane *ol = arg;

	(void)fd;
	(void)ev;
	if (ol->reading)
		olane_poll(ol);
}

/* This instance owns lane `lane` of cluster stream S: run it here. */
static struct olane *
olane_new(struct pool *p, uint64_t S, unsigned lane, uint64_t token)
{
	struct olane *ol;

	if ((ol = calloc(1, sizeof *ol)) == NULL)
		fatal("%s: calloc", __func__);
	LIST_INSERT_HEAD(&olanes, ol, entry);
	ol->refs = 1;
	ol->S = S;
	ol->lane = lane;
	ol->token = token;
	ol->takeovers = token > 0 ? token - 1 : 0;
	snprintf(ol->alive, sizeof ol->alive, "cns:{%s}:alive", p->pc->name);
	snprintf(ol->tokkey, sizeof ol->tokkey, "cns:{%" PRIu64 "}:tokens",
	    S);
	snprintf(ol->member, sizeof ol->member, "%" PRIu64 ":%u", S, lane);
	snprintf(ol->evkey, sizeof ol->evkey, "cns:{%" PRIu64 "}:events", S);
	return ol;
}

static void
olane_start(struct pool *p, uint64_t S, unsigned lane, uint64_t token,
    json_t *params, json_t *args, json_t *kwargs)
{
	struct olane *ol = olane_new(p, S, lane, token);

	snprintf(ol->key, sizeof ol->key, "cns:{%" PRIu64 "}:lane:%u", S,
	    lane);
	snprintf(ol->progkey, sizeof ol->progkey, "cns:{%" PRIu64 "}:prog",
	    S);
	strcpy(ol->last_id, "0");
	if ((ol->in = evbuffer_new()) == NULL)
		fatalx("%s: evbuffer_new", __func__);
	ol->poll_ev = evtimer_new(cns_base, olane_tick, ol);
	log_debug("cluster stream %" PRIu64 ": lane %u runs here (claim %"
	    PRIu64 ")", S, lane, token);
	ol->s = stream_new(&olane_source, ol, p, 1, params);
	ol->s->lane_only = 1;
	if (p->pc->client_args) {
		ol->s->args = json_incref(args);
		ol->s->kwargs = json_incref(kwargs);
	}
	pool_dispatch(p);
}

/* ---- heartbeats, and lanes whose owner stopped them ---- */

static unsigned	pool_free_workers(struct pool *);
static size_t	ing_beating(const char *alive, const char **argv, size_t *n,
		    char (*nums)[2][24]);
static void	ing_lost(const char *member, size_t len);
static void	ing_rescue(struct pool *, uint64_t S, uint64_t token,
		    unsigned K, json_t *params, json_t *args, json_t *kwargs);

static void
count_add(json_t *o, const char *pool, int d)
{
	json_int_t n = json_integer_value(json_object_get(o, pool));

	json_object_set_new(o, pool, json_integer(n + d));
}

#define polling_add(pool, d)	count_add(R.polling, pool, d)
#define claiming_add(pool, d)	count_add(R.claiming, pool, d)

/* KEYS alive; ARGV (member, tokens key, lane, token)...: the lanes still
 * ours get a fresh time; those claimed by another are returned. */
static const char beat_lua[] =
    "local t = redis.call('TIME') "
    "local now = t[1] * 1000 + math.floor(t[2] / 1000) "
    "local lost = {} "
    "for i = 1, #ARGV, 4 do "
    "if redis.call('HGET', ARGV[i + 1], ARGV[i + 2]) == ARGV[i + 3] then "
    "redis.call('ZADD', KEYS[1], 'XX', now, ARGV[i]) "
    "else table.insert(lost, ARGV[i]) end end "
    "return lost";

static void
on_beat(redisReply *r, void *arg)
{
	struct olane *ol, *next;

	(void)arg;
	if (r == NULL || r->type != REDIS_REPLY_ARRAY)
		return;
	for (size_t i = 0; i < r->elements; i++) {
		redisReply *m = r->element[i];
		if (m->type != REDIS_REPLY_STRING)
			continue;
		ing_lost(m->str, m->len);
		for (ol = LIST_FIRST(&olanes); ol != NULL; ol = next) {
			next = LIST_NEXT(ol, entry);
			if (ol->lost || strlen(ol->member) != m->len ||
			    memcmp(ol->member, m->str, m->len) != 0 ||
			    ol->s == NULL || ol->s->state == S_DONE)
				continue;
			ol->lost = 1;
			log_warnx("cluster stream %" PRIu64 " lane %u: another "
			    "instance claimed the lane (this one missed its "
			    "heartbeats for claim_idle); stopping it here",
			    ol->S, ol->lane);
			olane_fail(ol, "another instance claimed the lane");
		}
	}
}

static void
lanes_beat(struct pool *p)
{
	const char **argv;
	size_t *lens, n = 0, cap = 4;
	char alive[300], (*nums)[2][24];
	struct olane *ol;
	size_t nl = 0, k = 0;

	snprintf(alive, sizeof alive, "cns:{%s}:alive", p->pc->name);
	LIST_FOREACH(ol, &olanes, entry)
		if (!ol->lost && ol->s != NULL && strcmp(ol->alive, alive) == 0)
			nl++;
	nl += ing_beating(alive, NULL, NULL, NULL);
	if (nl == 0)
		return;
	cap += 4 * nl;
	if ((argv = calloc(cap, sizeof *argv)) == NULL ||
	    (lens = calloc(cap, sizeof *lens)) == NULL ||
	    (nums = calloc(nl, sizeof *nums)) == NULL)
		fatal("%s: calloc", __func__);
	argv[n++] = "EVAL";
	argv[n++] = beat_lua;
	argv[n++] = "1";
	argv[n++] = alive;
	LIST_FOREACH(ol, &olanes, entry) {
		if (ol->lost || ol->s == NULL || strcmp(ol->alive, alive) != 0)
			continue;
		snprintf(nums[k][0], sizeof nums[k][0], "%u", ol->lane);
		snprintf(nums[k][1], sizeof nums[k][1], "%" PRIu64, ol->token);
		argv[n++] = ol->member;
		argv[n++] = ol->tokkey;
		argv[n++] = nums[k][0];
		argv[n++] = nums[k][1];
		k++;
	}
	ing_beating(alive, argv, &n, nums + k);
	for (size_t i = 0; i < n; i++)
		lens[i] = strlen(argv[i]);
	rsend(on_beat, NULL, (int)n, argv, lens);
	free(argv);
	free(lens);
	free(nums);
}

/*
 * KEYS alive; ARGV claim_idle (ms), instance, at most: lanes not
 * heartbeated for claim_idle (Redis's clock) are claimed here with a new
 * token, which fences the old owner, as many as there are idle workers;
 * a stream's ingress needs no worker to be closed, so it is claimed
 * whatever.  Lanes of finished streams go.
 */
static const char sweep_lua[] =
    "local t = redis.call('TIME') "
    "local now = t[1] * 1000 + math.floor(t[2] / 1000) "
    "local stale = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', "
    "now - tonumber(ARGV[1]), 'LIMIT', 0, 100) "
    "local out = {} "
    "local n = 0 "
    "for _, m in ipairs(stale) do "
    "local S, lane = string.match(m, '^(%d+):(%d+)$') "
    "if not S then S, lane = string.match(m, '^(%d+):(ingress)$') end "
    "local meta = 'cns:{' .. (S or '') .. '}:meta' "
    "if not S or redis.call('HGET', meta, 'state') ~= 'running' then "
    "redis.call('ZREM', KEYS[1], m) "
    "elseif lane == 'ingress' or n < tonumber(ARGV[3]) then "
    "if lane ~= 'ingress' then n = n + 1 end "
    "local tok = redis.call('HINCRBY', 'cns:{' .. S .. '}:tokens', lane, "
    "1) "
    "local hk = 'cns:{' .. S .. '}:owners' "
    "if lane == 'ingress' then hk = meta end "
    "local prev = redis.call('HGET', hk, lane) "
    "redis.call('HSET', hk, lane, ARGV[2]) "
    "redis.call('ZADD', KEYS[1], now, m) "
    "local v = redis.call('HMGET', meta, 'params', 'args', 'kwargs', "
    "'lanes') "
    "table.insert(out, {S, lane, tok, v[1], v[2], v[3], prev, v[4]}) "
    "end end "
    "return out";

static void
on_sweep(redisReply *r, void *arg)
{
	char *pool = arg;
	struct pool *p = pool_find(pool);

	claiming_add(pool, -1);
	for (size_t i = 0; r != NULL && r->type == REDIS_REPLY_ARRAY &&
	    i < r->elements; i++) {
		redisReply *e = r->element[i];
		char *sS, *sl, *prev;
		json_t *params, *args, *kwargs;
		uint64_t S, tok;
		unsigned long lane;
		if (e->type != REDIS_REPLY_ARRAY || e->elements != 8 ||
		    e->element[2]->type != REDIS_REPLY_INTEGER)
			continue;
		sS = reply_str(e->element[0]);
		sl = reply_str(e->element[1]);
		prev = reply_str(e->element[6]);
		S = sS != NULL ? strtoull(sS, NULL, 10) : 0;
		lane = sl != NULL ? strtoul(sl, NULL, 10) : 0;
		tok = (uint64_t)e->element[2]->integer;
		params = reply_json(e->element[3]);
		args = reply_json(e->element[4]);
		kwargs = reply_json(e->element[5]);
		if (p == NULL || !p->pc->cluster || p->retiring)
			log_warnx("cluster stream %" PRIu64 " lane %lu: claimed "
			    "but pool %s is gone here", S, lane, pool);
		else if (sl != NULL && strcmp(sl, "ingress") == 0) {
			char *k = reply_str(e->element[7]);
			log_warnx("cluster stream %" PRIu64 ": its ingress, "
			    "instance %s, stopped heartbeating for claim_idle "
			    "(%g s); closing the stream here at the last batch "
			    "Redis accepted", S, prev != NULL ? prev : "?",
			    R.claim_idle);
			ing_rescue(p, S, tok, k != NULL ? (unsigned)strtoul(k,
			    NULL, 10) : 0, params, args, kwargs);
			free(k);
		} else if (p->pc->on_crash == CRASH_FAIL) {
			struct olane *ol = olane_new(p, S, (unsigned)lane, tok);
			char msg[300];
			json_t *v;
			snprintf(msg, sizeof msg, "instance %s, which ran the "
			    "lane, stopped heartbeating it for claim_idle (%g "
			    "s); on_crash fail", prev != NULL ? prev : "?",
			    R.claim_idle);
			v = json_pack("{s:b,s:s,s:s,s:i}", "ok", 0, "error",
			    msg, "instance", prev != NULL ? prev : "?",
			    "takeovers", 1);
			ol->lost = 1;
			lane_say(ol, "final", v);
			json_decref(v);
			olane_unref(ol);
		} else {
			log_warnx("cluster stream %" PRIu64 " lane %lu: "
			    "instance %s stopped heartbeating it for "
			    "claim_idle (%g s); running it again here from its "
			    "first batch", S, lane, prev != NULL ? prev : "?",
			    R.claim_idle);
			olane_start(p, S, (unsigned)lane, tok, params,
			    json_is_array(args) ? args : NULL,
			    json_is_object(kwargs) ? kwargs : NULL);
		}
		json_decref(params);
		json_decref(args);
		json_decref(kwargs);
		free(sS);
		free(sl);
		free(prev);
	}
	free(pool);
}

static void
lanes_sweep(struct pool *p)
{
	char alive[300], idle[32], most[16], *name;
	unsigned n;

	n = pool_free_workers(p);
	if (json_integer_value(json_object_get(R.claiming, p->pc->name)) > 0)
		return;
	snprintf(alive, sizeof alive, "cns:{%s}:alive", p->pc->name);
	snprintf(idle, sizeof idle, "%.0f", R.claim_idle * 1000);
	snprintf(most, sizeof most, "%u", n);
	if ((name = strdup(p->pc->name)) == NULL)
		fatal("%s: strdup", __func__);
	claiming_add(name, 1);
	if (rdo(on_sweep, name, "EVAL", sweep_lua, "1", alive, idle,
	    R.instance, most, NULL) == -1) {
		claiming_add(name, -1);
		free(name);
	}
}

/* ---- lane jobs: idle workers look for lanes of other instances ---- */

struct claim {
	char	*pool;
	uint64_t S;
	unsigned lane;
};


static void
on_claim(redisReply *r, void *arg)
{
	struct claim *cl = arg;
	struct pool *p = pool_find(cl->pool);
	json_t *params = NULL, *args = NULL, *kwargs = NULL;

	claiming_add(cl->pool, -1);
	/* The stream's pool, params, args and kwargs; nil: taken by another,
	 * or the ingress sealed its lease. */
	if (r != NULL && r->type == REDIS_REPLY_ARRAY && r->elements == 4 &&
	    p != NULL && p->pc->cluster && !p->retiring) {
		params = reply_json(r->element[1]);
		args = reply_json(r->element[2]);
		kwargs = reply_json(r->element[3]);
		olane_start(p, cl->S, cl->lane, 1, params, json_is_array(args) ?
		    args : NULL, json_is_object(kwargs) ? kwargs : NULL);
	}
	json_decref(params);
	json_decref(args);
	json_decref(kwargs);
	free(cl->pool);
	free(cl);
}

/* KEYS meta owners tokens alive, ARGV lane instance member */
static const char claim_lua[] =
    "if redis.call('HGET', KEYS[1], 'state') ~= 'leasing' then "
    "return nil end "
    "if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 0 then "
    "return nil end "
    "redis.call('HSET', KEYS[3], ARGV[1], 1) "
    "local t = redis.call('TIME') "
    "redis.call('ZADD', KEYS[4], t[1] * 1000 + math.floor(t[2] / 1000), "
    "ARGV[3]) "
    "return redis.call('HMGET', KEYS[1], 'pool', 'params', 'args', "
    "'kwargs')";

static void
on_jobs(redisReply *r, void *arg)
{
	char *pool = arg, key[300], meta[128], owners[128], lane[16];
	char tokens[128], alive[300], member[64];
	struct pool *p = pool_find(pool);
	redisReply *es;

	polling_add(pool, -1);
	snprintf(key, sizeof key, "cns:{%s}:jobs", pool);
	if (r != NULL && r->type == REDIS_REPLY_ERROR &&
	    strstr(r->str, "NOGROUP") != NULL)
		rdo(group_created, NULL, "XGROUP", "CREATE", key, "workers",
		    "0", "MKSTREAM", NULL);
	if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements != 1 ||
	    r->element[0]->type != REDIS_REPLY_ARRAY ||
	    r->element[0]->elements != 2) {
		free(pool);
		return;
	}
	es = r->element[0]->element[1];
	for (size_t i = 0; es->type == REDIS_REPLY_ARRAY && i < es->elements;
	    i++) {
		redisReply *e = es->element[i], *f;
		struct claim *cl;
		char id[48];
		uint64_t S = 0;
		long ln = -1;
		if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 ||
		    e->element[0]->type != REDIS_REPLY_STRING)
			continue;
		snprintf(id, sizeof id, "%.*s", (int)e->element[0]->len,
		    e->element[0]->str);
		f = e->element[1];
		for (size_t j = 0; f->type == REDIS_REPLY_ARRAY &&
		    j + 1 < f->elements; j += 2) {
			if (f->element[j]->len == 1 &&
			    f->element[j]->str[0] == 's')
				S = strtoull(f->element[j + 1]->str, NULL, 10);
			else if (f->element[j]->len == 4 &&
			    memcmp(f->element[j]->str, "lane", 4) == 0)
				ln = strtol(f->element[j + 1]->str, NULL, 10);
		}
		rdo(NULL, NULL, "XACK", key, "workers", id, NULL);
		rdo(NULL, NULL, "XDEL", key, id, NULL);
		if (S == 0 || ln < 0 || ln >= CNS_MAX_WORKERS)
			continue;
		snprintf(lane, sizeof lane, "%ld", ln);
		if (p == NULL || pool_free_workers(p) == 0) {
			/* The idle worker went to a stream meanwhile: the
			 * job goes back for another instance. */
			char sid[32];
			snprintf(sid, sizeof sid, "%" PRIu64, S);
			rdo(NULL, NULL, "XADD", key, "*", "s", sid, "lane",
			    lane, NULL);
			continue;
		}
		if ((cl = calloc(1, sizeof *cl)) == NULL ||
		    (cl->pool = strdup(pool)) == NULL)
			fatal("%s: calloc", __func__);
		cl->S = S;
		cl->lane = (unsigned)ln;
		snprintf(meta, sizeof meta, "cns:{%" PRIu64 "}:meta", S);
		snprintf(owners, sizeof owners, "cns:{%" PRIu64 "}:owners", S);
		snprintf(tokens, sizeof tokens, "cns:{%" PRIu64 "}:tokens", S);
		snprintf(alive, sizeof alive, "cns:{%s}:alive", pool);
		snprintf(member, sizeof member, "%" PRIu64 ":%ld", S, ln);
		claiming_add(pool, 1);
		if (rdo(on_claim, cl, "EVAL", claim_lua, "4", meta, owners,
		    tokens, alive, lane, R.instance, member, NULL) == -1) {
			claiming_add(pool, -1);
			free(cl->pool);
			free(cl);
		}
	}
	free(pool);
}

/* Idle workers not promised to a stream already. */
static unsigned
pool_free_workers(struct pool *p)
{
	struct stream *s;
	unsigned queued = 0, busy;

	TAILQ_FOREACH(s, &p->queue, qentry)
		queued += s->want;
	busy = queued + (unsigned)json_integer_value(json_object_get(
	    R.claiming, p->pc->name));
	return p->nidle > busy ? p->nidle - busy : 0;
}

static void
redis_jobs(evutil_socket_t fd, short ev, void *arg)
{
	struct pool *p;
	char key[300], count[16];

	(void)fd;
	(void)ev;
	(void)arg;
	if (!R.up || cns_stopping)
		return;
	TAILQ_FOREACH(p, pool_all(), entry) {
		unsigned n;
		char *name;
		if (!p->pc->cluster || p->retiring || p->failed ||
		    json_integer_value(json_object_get(R.polling,
		    p->pc->name)) > 0 || (n = pool_free_workers(p)) == 0)
			continue;
		snprintf(key, sizeof key, "cns:{%s}:jobs", p->pc->name);
		snprintf(count, sizeof count, "%u", n);
		if ((name = strdup(p->pc->name)) == NULL)
			fatal("%s: strdup", __func__);
		polling_add(name, 1);
		if (rdo(on_jobs, name, "XREADGROUP", "GROUP", "workers",
		    R.instance, "COUNT", count, "STREAMS", key, ">",
		    NULL) == -1) {
			polling_add(name, -1);
			free(name);
		}
	}
}

/* ---- the ingress: the client's side of a cluster stream ---- */

enum { I_ID, I_LEASING, I_RESCUE, I_RUNNING, I_ENDING, I_COMPLETING,
    I_DONE };

struct ilane {
	char		*instance;	/* its owner, once sealed */
	uint64_t	 sent;		/* lines appended to its stream */
	uint64_t	 read;		/* lines its owner read */
	uint64_t	 said;		/* the highest seq relayed from it: a
					   lane run again says them again */
	json_t		*final;		/* its last line */
};

struct ingress {
	struct stream	*s;
	unsigned	 refs;
	int		 phase;
	uint64_t	 S;
	char		*pool;
	unsigned	 K;		/* lanes asked for */
	struct ilane	*lanes;
	unsigned	*live;		/* lanes with an owner, after sealing */
	unsigned	 nlive, rr, finals;
	json_t		*args, *kwargs;
	double		 deadline;	/* the lease: queue_timeout */
	struct event	*tick;
	int		 ticking;	/* a look at Redis is out */
	char		 evid[48];	/* the last events entry read */
	size_t		 inflight;	/* batch bytes Redis has not answered */
	int		 choked;	/* by inflight: an answer resumes it */
	double		 held;		/* since when a short batch waits */
	json_t		*completion;
	json_t		*errors;	/* besides the stream's own */
	struct stream	*cs;		/* the completion's local stream */
	uint64_t	 token;		/* its claim on the stream's ingress */
	char		 member[64];	/* S:ingress, in alive */
	char		 tokkey[128];
	char		 alive[300];
	int		 rescued;	/* its ingress died: closed here */
	unsigned	 nlast;		/* rescue: lanes' last entries asked */
	int		 lost;
	LIST_ENTRY(ingress) entry;	/* ingresses */
};
static LIST_HEAD(, ingress) ingresses = LIST_HEAD_INITIALIZER(ingresses);

static void	ing_final(struct ingress *);
static void	cluster_input(struct stream *);
static void	cluster_abort(struct stream *, const char *);
static void	cluster_stream_free(struct stream *);

static const struct ingress_ops ingress_ops = {
	.input = cluster_input,
	.abort = cluster_abort,
	.free = cluster_stream_free,
};
static void	ing_tick_later(struct ingress *, double);

/* The ingresses of pool `alive` that heartbeat; with argv, their
 * (member, tokens key, field, token) appended. */
static size_t
ing_beating(const char *alive, const char **argv, size_t *n,
    char (*nums)[2][24])
{
	struct ingress *g;
	size_t k = 0;

	LIST_FOREACH(g, &ingresses, entry) {
		if (g->token == 0 || g->lost || g->phase < I_RUNNING ||
		    g->phase == I_DONE || strcmp(g->alive, alive) != 0)
			continue;
		if (argv != NULL) {
			snprintf(nums[k][1], sizeof nums[k][1], "%" PRIu64,
			    g->token);
			argv[(*n)++] = g->member;
			argv[(*n)++] = g->tokkey;
			argv[(*n)++] = "ingress";
			argv[(*n)++] = nums[k][1];
		}
		k++;
	}
	return k;
}

static void	ing_fail(struct ingress *, const char *);

static void
ing_lost(const char *member, size_t len)
{
	struct ingress *g;

	LIST_FOREACH(g, &ingresses, entry) {
		if (g->lost || strlen(g->member) != len ||
		    memcmp(g->member, member, len) != 0 || g->phase == I_DONE)
			continue;
		g->lost = 1;
		log_warnx("cluster stream %" PRIu64 ": another instance took "
		    "over as its ingress (this one missed its heartbeats)",
		    g->S);
		ing_fail(g, "another instance closed the stream: this "
		    "instance missed its heartbeats for claim_idle");
	}
}

static void
ing_unref(struct ingress *g)
{
	if (--g->refs > 0)
		return;
	LIST_REMOVE(g, entry);
	for (unsigned i = 0; i < g->K; i++) {
		free(g->lanes[i].instance);
		json_decref(g->lanes[i].final);
	}
	free(g->lanes);
	free(g->live);
	free(g->pool);
	json_decref(g->args);
	json_decref(g->kwargs);
	json_decref(g->completion);
	json_decref(g->errors);
	if (g->tick != NULL)
		event_free(g->tick);
	free(g);
}

/* The ingress's stream is gone (its client is done with it). */
static void
cluster_stream_free(struct stream *s)
{
	struct ingress *g = s->cl;

	s->cl = NULL;
	g->s = NULL;
	if (g->tick != NULL)
		evtimer_del(g->tick);
	ing_unref(g);
}

static void
ing_refuse(struct ingress *g, const char *code, const char *why)
{
	struct stream *s = g->s;
	json_t *reply;

	g->phase = I_DONE;
	if (s == NULL)
		return;
	s->state = S_DONE;
	log_info("stream %" PRIu64 ": pool %s: refused: %s", s->id,
	    s->pool->pc->name, why);
	reply = json_pack("{s:b,s:s,s:s}", "ok", 0, "error", why, "code",
	    code);
	s->src.ops->finish(s->src.arg, reply);
}

/* Something failed on the way: the stream ends now, with exact counts. */
static void
ing_fail(struct ingress *g, const char *why)
{
	if (g->phase == I_DONE)
		return;
	if (g->phase < I_RUNNING) {
		char msg[500];
		snprintf(msg, sizeof msg, "cluster pool %s cannot take "
		    "streams now: %s", g->pool, why);
		ing_refuse(g, "cluster_unavailable", msg);
		return;
	}
	json_array_append_new(g->errors, json_pack("{s:s,s:s}", "stage",
	    "cluster", "error", why));
	ing_final(g);
}

static void
cluster_abort(struct stream *s, const char *why)
{
	ing_fail(s->cl, why);
}

struct sent {
	struct ingress	*g;
	size_t		 len;
};

static void
ing_sent(redisReply *r, void *arg)
{
	struct sent *x = arg;
	struct ingress *g = x->g;
	char why[300];

	g->inflight -= x->len;
	free(x);
	if (r != NULL && r->type == REDIS_REPLY_ERROR && r->str != NULL &&
	    strstr(r->str, "equal or smaller than the target stream top") !=
	    NULL) {
		/* The lane ended under it: another instance closed the
		 * stream, having seen no heartbeat of this one for
		 * claim_idle (they queue behind this ingress's batches). */
		log_warnx("cluster stream %" PRIu64 ": another instance "
		    "closed it (this one's heartbeats reached Redis later "
		    "than claim_idle)", g->S);
		ing_fail(g, "another instance closed the stream: this "
		    "instance's heartbeats reached Redis later than "
		    "claim_idle (raise claim_idle if Redis is slow)");
	} else if (reply_error(r, why, sizeof why))
		ing_fail(g, why);
	else if (g->s != NULL && g->phase == I_RUNNING && g->choked &&
	    g->inflight <= INFLIGHT_MAX) {
		g->choked = 0;
		cluster_input(g->s);
	}
	ing_unref(g);
}

/* A batch (or the end) to lane i. */
static void
ing_xadd(struct ingress *g, unsigned i, uint64_t first, unsigned n,
    const char *data, size_t len)
{
	char key[128], id[48], cnt[16];
	const char *argv[7];
	size_t lens[7];
	struct sent *x;
	int argc;

	snprintf(key, sizeof key, "cns:{%" PRIu64 "}:lane:%u", g->S, i);
	snprintf(id, sizeof id, "%" PRIu64 "-0", first);
	snprintf(cnt, sizeof cnt, "%u", n);
	argv[0] = "XADD";
	argv[1] = key;
	argv[2] = id;
	if (data != NULL) {
		argv[3] = "n";
		argv[4] = cnt;
		argv[5] = "d";
		argv[6] = data;
		argc = 7;
	} else {
		argv[3] = "end";
		argv[4] = "1";
		argc = 5;
	}
	for (int k = 0; k < argc; k++)
		lens[k] = data != NULL && k == 6 ? len : strlen(argv[k]);
	if ((x = malloc(sizeof *x)) == NULL)
		fatal("%s: malloc", __func__);
	*x = (struct sent){ g, len };
	g->refs++;
	g->inflight += len;
	if (rsend(ing_sent, x, argc, argv, lens) == -1) {
		g->refs--;
		g->inflight -= len;
		free(x);
		ing_fail(g, cluster_unavailable());
	}
}

static void
ing_reject(struct ingress *g, uint64_t seq, const char *why)
{
	json_t *v = json_pack("{s:{s:I,s:s}}", "rejected", "seq",
	    (json_int_t)seq, "error", why);

	g->s->rejected++;
	g->s->src.ops->event(g->s->src.arg, v);
	json_decref(v);
	{
		char meta[128];
		snprintf(meta, sizeof meta, "cns:{%" PRIu64 "}:meta", g->S);
		rdo(NULL, NULL, "HINCRBY", meta, "rejected", "1", NULL);
	}
}

/* The next live lane, round robin, whose window has room. */
static int
ing_pick(struct ingress *g, unsigned *room)
{
	unsigned win = cns_conf->window_items * WINDOW_FACTOR;

	for (unsigned t = 0; t < g->nlive; t++) {
		unsigned i = g->live[g->rr++ % g->nlive];
		uint64_t out = g->lanes[i].sent - g->lanes[i].read;
		if (g->lanes[i].sent < g->lanes[i].read)
			out = 0;
		if (out < win) {
			*room = win - (unsigned)out;
			return (int)i;
		}
	}
	return -1;
}

/* What a batch waits for: HOLD_MIN, or half the client's input buffer
 * (client.c: the larger of max_item_bytes and a header, plus one). */
static size_t
hold_min(void)
{
	size_t hi = cns_conf->max_item_bytes > CNS_HEADER_MAX ?
	    cns_conf->max_item_bytes : CNS_HEADER_MAX;

	return hi / 2 < HOLD_MIN ? hi / 2 : HOLD_MIN;
}

/* Read the client into the lanes' streams, as feed_pump does locally. */
static void
cluster_input(struct stream *s)
{
	struct ingress *g = s->cl;
	const struct source *src = &s->src;
	struct evbuffer *in = src->ops->input(src->arg);
	size_t max_item = cns_conf->max_item_bytes;
	struct cut cut;

	if (g->phase != I_RUNNING) {
		if (g->phase < I_RUNNING)
			src->ops->reading(src->arg, 0);
		return;
	}
	for (;;) {
		struct flow_room room;
		unsigned items;
		size_t share;
		int i;

		if (s->skipping) {
			struct evbuffer_ptr e = evbuffer_search(in, "\n", 1,
			    NULL);
			if (e.pos == -1) {
				evbuffer_drain(in, evbuffer_get_length(in));
				break;
			}
			evbuffer_drain(in, (size_t)e.pos + 1);
			s->skipping = 0;
		}
		if (evbuffer_get_length(in) == 0)
			break;
		if (g->inflight > INFLIGHT_MAX) {
			/* Redis is behind: its answers resume the input. */
			g->choked = 1;
			src->ops->reading(src->arg, 0);
			return;
		}
		/* Every XADD costs Redis a turn or two, and each turn an
		 * fsync under appendfsync always: wait for a large batch
		 * while the client sends, but not longer than HOLD_SEC
		 * (the tick looks again).  Before ing_pick, which moves
		 * the round robin on. */
		if (!s->eof && evbuffer_get_length(in) < hold_min()) {
			double now = cns_now();
			if (g->held == 0)
				g->held = now;
			if (now - g->held < HOLD_SEC)
				break;
		}
		if (src->ops->full(src->arg) ||
		    (i = ing_pick(g, &items)) == -1) {
			/* The lanes are behind: the tick looks again. */
			src->ops->reading(src->arg, 0);
			return;
		}
		g->held = 0;
		/* What is buffered spread over the lanes, as feed.c does,
		 * but in batches of 64 KiB at least: every XADD is a round
		 * through Redis. */
		share = evbuffer_get_length(in) / g->nlive;
		if (share < BATCH_MIN)
			share = BATCH_MIN;
		room.max_item = max_item;
		room.bytes = max_item + 1;
		room.soft_bytes = share < BATCH_MAX ? share : BATCH_MAX;
		room.items = items;
		flow_cut(in, &room, &cut);
		switch (cut.kind) {
		case CUT_BATCH: {
			const char *d = (const char *)evbuffer_pullup(in,
			    (ev_ssize_t)cut.nbytes);
			ing_xadd(g, (unsigned)i, s->seq + 1, cut.n, d,
			    cut.nbytes);
			if (g->phase != I_RUNNING)
				return;
			s->seq += cut.n;
			g->lanes[i].sent += cut.n;
			cns_items_in += cut.n;
			evbuffer_drain(in, cut.nbytes);
			continue;
		}
		case CUT_EMPTY:
			evbuffer_drain(in, cut.nbytes);
			continue;
		case CUT_LONG: {
			char msg[160];
			ing_reject(g, ++s->seq, flow_too_long(&cut, max_item,
			    msg, sizeof msg));
			evbuffer_drain(in, cut.nbytes);
			s->skipping = !cut.newline;
			continue;
		}
		case CUT_NEED:
		case CUT_FULL:
			break;
		}
		break;
	}
	if (s->eof && !s->skipping && evbuffer_get_length(in) > 0) {
		ing_reject(g, ++s->seq, FLOW_TRUNCATED);
		evbuffer_drain(in, evbuffer_get_length(in));
	}
	if (s->eof && evbuffer_get_length(in) == 0) {
		s->ended = 1;
		g->phase = I_ENDING;
		for (unsigned k = 0; k < g->nlive && g->phase == I_ENDING; k++)
			ing_xadd(g, g->live[k], s->seq + 1, 0, NULL, 0);
	} else
		src->ops->reading(src->arg, 1);
}

/* ---- the completion, on one of the ingress's workers ---- */

static struct evbuffer *
cs_input(void *arg)
{
	static struct evbuffer *none;

	(void)arg;
	if (none == NULL && (none = evbuffer_new()) == NULL)
		fatalx("%s: evbuffer_new", __func__);
	return none;
}

static void
cs_reading(void *arg, int on)
{
	(void)arg;
	(void)on;
}

static void
cs_event(void *arg, json_t *v)
{
	(void)arg;
	(void)v;
}

static void
cs_free_later(void *arg)
{
	struct ingress *g = arg;

	if (g->cs != NULL) {
		stream_free(g->cs);
		g->cs = NULL;
	}
	ing_unref(g);
}

static void
cs_finish(void *arg, json_t *v)
{
	struct ingress *g = arg;
	json_t *e;
	size_t i;

	json_decref(g->completion);
	g->completion = json_incref(json_object_get(v, "completion"));
	json_array_foreach(json_object_get(v, "errors"), i, e)
		json_array_append(g->errors, e);
	if (json_is_string(json_object_get(v, "error")))
		json_array_append_new(g->errors, json_pack("{s:s,s:O}",
		    "stage", "complete", "error", json_object_get(v,
		    "error")));
	json_decref(v);
	cns_later(cs_free_later, g);
	if (g->phase == I_COMPLETING)
		ing_final(g);
}

static const struct source_ops cs_source = {
	.input = cs_input,
	.reading = cs_reading,
	.full = olane_full,
	.event = cs_event,
	.finish = cs_finish,
};

static json_t *
ing_results(struct ingress *g)
{
	json_t *results = json_array();

	for (unsigned k = 0; k < g->nlive; k++) {
		json_t *f = g->lanes[g->live[k]].final;
		json_t *r = json_array_get(json_object_get(f, "results"), 0);
		json_array_append(results, r != NULL ? r : json_null());
	}
	return results;
}

/* Every lane returned: the completion once, here, then the final line. */
static void
ing_complete(struct ingress *g)
{
	struct pool *p = g->s != NULL ? g->s->pool : NULL;

	if (p == NULL || !p->has_complete || p->retiring) {
		ing_final(g);
		return;
	}
	g->phase = I_COMPLETING;
	g->refs++;
	g->cs = stream_new(&cs_source, g, p, 1, g->s->params);
	g->cs->complete_only = ing_results(g);
	if (p->pc->client_args) {
		g->cs->args = json_incref(g->args);
		g->cs->kwargs = json_incref(g->kwargs);
	}
	pool_dispatch(p);
}

static void
ing_final(struct ingress *g)
{
	struct stream *s = g->s;
	uint64_t consumed = 0, rejected, quarantined = 0, unconsumed;
	unsigned crashes = 0;
	json_t *final, *errors, *instances, *e;
	char key[128];
	size_t i;

	if (g->phase == I_DONE || s == NULL)
		return;
	g->phase = I_DONE;
	evtimer_del(g->tick);
	rejected = s->rejected;
	errors = json_array();
	json_array_foreach(s->errors, i, e)
		json_array_append(errors, e);
	instances = json_array();
	for (unsigned k = 0; k < g->nlive; k++) {
		struct ilane *l = &g->lanes[g->live[k]];
		json_t *f = l->final;
		json_array_append_new(instances, json_string(l->instance));
		if (f == NULL)
			continue;
		consumed += (uint64_t)json_integer_value(json_object_get(f,
		    "consumed"));
		rejected += (uint64_t)json_integer_value(json_object_get(f,
		    "rejected"));
		quarantined += (uint64_t)json_integer_value(json_object_get(f,
		    "quarantined"));
		crashes += (unsigned)json_integer_value(json_object_get(f,
		    "crashes")) + (unsigned)json_integer_value(
		    json_object_get(f, "takeovers"));
		json_array_foreach(json_object_get(f, "errors"), i, e) {
			json_t *c = json_deep_copy(e);
			json_object_set_new(c, "instance", json_string(
			    l->instance));
			json_array_append_new(errors, c);
		}
		if (json_is_string(json_object_get(f, "error")))
			json_array_append_new(errors, json_pack("{s:s,s:s,s:O}",
			    "stage", "lane", "instance", l->instance, "error",
			    json_object_get(f, "error")));
	}
	json_array_foreach(g->errors, i, e)
		json_array_append(errors, e);
	if (g->rescued) {
		char msg[300];
		snprintf(msg, sizeof msg, "the stream's ingress stopped "
		    "heartbeating; instance %s closed the stream at the last "
		    "batch Redis accepted (item %" PRIu64 ")", R.instance,
		    s->seq);
		json_array_append_new(errors, json_pack("{s:s,s:s}", "stage",
		    "cluster", "error", msg));
	}
	/* What no lane accounted for (a lane lost, Redis gone) is
	 * unconsumed, so the counts always add up to the items read. */
	unconsumed = s->seq > consumed + rejected + quarantined ?
	    s->seq - consumed - rejected - quarantined : 0;
	s->state = S_DONE;
	s->consumed = consumed;
	s->unconsumed = unconsumed;
	s->quarantined = quarantined;
	final = json_pack("{s:b,s:I,s:I,s:I,s:I,s:I,s:I,s:i,s:o,s:O,s:o,"
	    "s:o}", "ok", json_array_size(errors) == 0,
	    "stream", (json_int_t)g->S,
	    "items", (json_int_t)s->seq,
	    "consumed", (json_int_t)consumed,
	    "rejected", (json_int_t)rejected,
	    "quarantined", (json_int_t)quarantined,
	    "unconsumed", (json_int_t)unconsumed,
	    "crashes", (int)crashes,
	    "results", ing_results(g),
	    "completion", g->completion != NULL ? g->completion : json_null(),
	    "errors", errors,
	    "instances", instances);
	if (final == NULL)
		fatalx("%s: json_pack", __func__);
	log_info("cluster stream %" PRIu64 " (stream %" PRIu64 "): pool %s: %"
	    PRIu64 " items, %" PRIu64 " consumed, %" PRIu64 " rejected, %"
	    PRIu64 " unconsumed on %u lanes", g->S, s->id, g->pool, s->seq,
	    consumed, rejected, unconsumed, g->nlive);
	s->pool->streams_done++;
	snprintf(key, sizeof key, "cns:{%" PRIu64 "}:meta", g->S);
	rdo(NULL, NULL, "HSET", key, "state", "done", NULL);
	/* The final line, for {"op":"result"} from any instance. */
	if (!g->lost) {
		char *line;
		json_object_set_new(final, "pool", json_string(g->pool));
		line = json_dumps(final, JSON_COMPACT);
		json_object_del(final, "pool");
		snprintf(key, sizeof key, "cns:{%" PRIu64 "}:result", g->S);
		if (line != NULL)
			rdo(NULL, NULL, "SET", key, line, "EX", KEY_TTL, NULL);
		free(line);
		rdo(NULL, NULL, "ZREM", g->alive, g->member, NULL);
	}
	/* The batches go; the rest stays a while (op result, later). */
	for (unsigned k = 0; k < g->nlive; k++) {
		snprintf(key, sizeof key, "cns:{%" PRIu64 "}:lane:%u", g->S,
		    g->live[k]);
		rdo(NULL, NULL, "DEL", key, NULL);
	}
	{
		static const char *const keys[] = { "meta", "owners", "prog",
		    "events", "tokens" };
		for (size_t k = 0; k < 5; k++) {
			snprintf(key, sizeof key, "cns:{%" PRIu64 "}:%s", g->S,
			    keys[k]);
			rdo(NULL, NULL, "EXPIRE", key, KEY_TTL, NULL);
		}
	}
	s->src.ops->finish(s->src.arg, final);
}

/* ---- the ingress's look at Redis: lease, progress, events ---- */

static void
ing_events(redisReply *r, void *arg)
{
	struct ingress *g = arg;
	char why[300];

	g->ticking = 0;
	if (g->s == NULL || g->phase == I_DONE) {
		ing_unref(g);
		return;
	}
	if (reply_error(r, why, sizeof why)) {
		ing_fail(g, why);
		ing_unref(g);
		return;
	}
	if (r->type == REDIS_REPLY_ARRAY && r->elements == 1 &&
	    r->element[0]->type == REDIS_REPLY_ARRAY &&
	    r->element[0]->elements == 2) {
		redisReply *es = r->element[0]->element[1];
		for (size_t i = 0; es->type == REDIS_REPLY_ARRAY &&
		    i < es->elements && g->phase != I_DONE; i++) {
			redisReply *e = es->element[i], *f;
			long lane = -1;
			json_t *ev = NULL, *fin = NULL;
			if (e->type != REDIS_REPLY_ARRAY || e->elements != 2)
				continue;
			snprintf(g->evid, sizeof g->evid, "%.*s",
			    (int)e->element[0]->len, e->element[0]->str);
			f = e->element[1];
			for (size_t j = 0; f->type == REDIS_REPLY_ARRAY &&
			    j + 1 < f->elements; j += 2) {
				redisReply *k = f->element[j];
				if (k->len == 4 && memcmp(k->str, "lane", 4) ==
				    0)
					lane = strtol(f->element[j + 1]->str,
					    NULL, 10);
				else if (k->len == 2 && memcmp(k->str, "ev",
				    2) == 0)
					ev = reply_json(f->element[j + 1]);
				else if (k->len == 5 && memcmp(k->str,
				    "final", 5) == 0)
					fin = reply_json(f->element[j + 1]);
			}
			if (ev != NULL && lane >= 0 && (unsigned)lane < g->K) {
				const char *k;
				json_t *o;
				uint64_t seq = 0;
				json_object_foreach(ev, k, o)
					if (json_is_object(o))
						seq = (uint64_t)json_integer_value(
						    json_object_get(o, "seq"));
				if (seq == 0 || seq > g->lanes[lane].said) {
					if (seq > 0)
						g->lanes[lane].said = seq;
					g->s->src.ops->event(g->s->src.arg, ev);
				}
			}
			if (fin != NULL && lane >= 0 && (unsigned)lane < g->K &&
			    g->lanes[lane].instance != NULL &&
			    g->lanes[lane].final == NULL) {
				const char *by = json_string_value(
				    json_object_get(fin, "instance"));
				g->lanes[lane].final = json_incref(fin);
				g->finals++;
				if (by != NULL) {
					free(g->lanes[lane].instance);
					if ((g->lanes[lane].instance =
					    strdup(by)) == NULL)
						fatal("%s: strdup", __func__);
				}
			}
			json_decref(ev);
			json_decref(fin);
		}
	}
	if (g->phase == I_ENDING && g->finals == g->nlive)
		ing_complete(g);
	else if (g->phase == I_RUNNING || g->phase == I_ENDING)
		ing_tick_later(g, POLL_SEC);
	ing_unref(g);
}

static void
ing_progress(redisReply *r, void *arg)
{
	struct ingress *g = arg;

	if (g->s != NULL && r != NULL && r->type == REDIS_REPLY_ARRAY &&
	    r->elements == g->nlive) {
		for (unsigned k = 0; k < g->nlive; k++) {
			redisReply *e = r->element[k];
			uint64_t n;
			if (e->type != REDIS_REPLY_STRING)
				continue;
			n = strtoull(e->str, NULL, 10);
			if (n > g->lanes[g->live[k]].read)
				g->lanes[g->live[k]].read = n;
		}
		if (g->phase == I_RUNNING)
			cluster_input(g->s);
	}
	ing_unref(g);
}

static void
ing_look(struct ingress *g)
{
	char key[128];
	const char *argv[2 + CNS_MAX_WORKERS];
	size_t lens[2 + CNS_MAX_WORKERS];
	char (*names)[12];
	unsigned n = 0;

	snprintf(key, sizeof key, "cns:{%" PRIu64 "}:prog", g->S);
	if ((names = calloc(g->nlive, sizeof *names)) == NULL)
		fatal("%s: calloc", __func__);
	argv[n++] = "HMGET";
	argv[n++] = key;
	for (unsigned k = 0; k < g->nlive; k++) {
		snprintf(names[k], sizeof names[k], "%u", g->live[k]);
		argv[n++] = names[k];
	}
	for (unsigned k = 0; k < n; k++)
		lens[k] = strlen(argv[k]);
	g->refs++;
	if (rsend(ing_progress, g, (int)n, argv, lens) == -1)
		g->refs--;
	free(names);
	snprintf(key, sizeof key, "cns:{%" PRIu64 "}:events", g->S);
	g->refs++;
	g->ticking = 1;
	if (rdo(ing_events, g, "XREAD", "COUNT", "256", "STREAMS", key,
	    g->evid, NULL) == -1) {
		g->refs--;
		g->ticking = 0;
		ing_fail(g, cluster_unavailable());
	}
}

static void
ing_sealed(redisReply *r, void *arg)
{
	struct ingress *g = arg;
	char why[300];
	json_t *reply, *inst;

	if (g->s == NULL || g->phase != I_LEASING) {
		ing_unref(g);
		return;
	}
	if (reply_error(r, why, sizeof why) || r->type != REDIS_REPLY_ARRAY) {
		ing_fail(g, r != NULL && r->type != REDIS_REPLY_ARRAY ?
		    "a bad answer to the lease" : why);
		ing_unref(g);
		return;
	}
	for (size_t i = 0; i + 1 < r->elements; i += 2) {
		char *k = reply_str(r->element[i]), *end = NULL;
		long lane = k != NULL ? strtol(k, &end, 10) : -1;
		if (k != NULL && (end == k || *end != '\0'))
			lane = -1;
		if (lane >= 0 && (unsigned)lane < g->K &&
		    g->lanes[lane].instance == NULL)
			g->lanes[lane].instance = reply_str(r->element[i + 1]);
		free(k);
	}
	for (unsigned i = 0; i < g->K; i++)
		if (g->lanes[i].instance != NULL)
			g->live[g->nlive++] = i;
	if (g->nlive == 0) {
		snprintf(why, sizeof why, "pool %s is busy: no instance had "
		    "an idle worker within queue_timeout (%g s)", g->pool,
		    g->s->pool->pc->queue_timeout);
		ing_refuse(g, "busy", why);
		ing_unref(g);
		return;
	}
	g->phase = I_RUNNING;
	g->s->state = S_RUNNING;
	g->s->leased_at = cns_now();
	inst = json_array();
	for (unsigned k = 0; k < g->nlive; k++)
		json_array_append_new(inst, json_string(
		    g->lanes[g->live[k]].instance));
	log_debug("cluster stream %" PRIu64 " (stream %" PRIu64 "): %u "
	    "lanes", g->S, g->s->id, g->nlive);
	reply = json_pack("{s:b,s:I,s:i,s:o}", "ok", 1, "stream",
	    (json_int_t)g->S, "workers", (int)g->nlive, "instances", inst);
	g->s->src.ops->event(g->s->src.arg, reply);
	json_decref(reply);
	ing_tick_later(g, POLL_SEC);
	cluster_input(g->s);
	ing_unref(g);
}

static const char seal_lua[] =
    "redis.call('HSET', KEYS[1], 'state', 'running') "
    "return redis.call('HGETALL', KEYS[2])";

static void
ing_owners(redisReply *r, void *arg)
{
	struct ingress *g = arg;
	char meta[128], owners[128], why[300];

	g->ticking = 0;
	if (g->s == NULL || g->phase != I_LEASING) {
		ing_unref(g);
		return;
	}
	if (reply_error(r, why, sizeof why)) {
		ing_fail(g, why);
		ing_unref(g);
		return;
	}
	if (r->type == REDIS_REPLY_INTEGER && r->integer < (long long)g->K &&
	    cns_now() < g->deadline) {
		ing_tick_later(g, POLL_SEC);
		ing_unref(g);
		return;
	}
	snprintf(meta, sizeof meta, "cns:{%" PRIu64 "}:meta", g->S);
	snprintf(owners, sizeof owners, "cns:{%" PRIu64 "}:owners", g->S);
	if (rdo(ing_sealed, g, "EVAL", seal_lua, "2", meta, owners,
	    NULL) == -1) {
		ing_fail(g, cluster_unavailable());
		ing_unref(g);
	}
}

static void
ing_tick(evutil_socket_t fd, short ev, void *arg)
{
	struct ingress *g = arg;
	char key[128];

	(void)fd;
	(void)ev;
	if (g->s == NULL || g->ticking || g->phase == I_DONE)
		return;
	if (g->phase == I_LEASING) {
		snprintf(key, sizeof key, "cns:{%" PRIu64 "}:owners", g->S);
		g->refs++;
		g->ticking = 1;
		if (rdo(ing_owners, g, "HLEN", key, NULL) == -1) {
			g->refs--;
			g->ticking = 0;
			ing_fail(g, cluster_unavailable());
		}
		return;
	}
	if (g->phase == I_RUNNING || g->phase == I_ENDING)
		ing_look(g);
}

static void
ing_tick_later(struct ingress *g, double sec)
{
	struct timeval tv = cns_tv(sec);

	if (g->s != NULL)
		evtimer_add(g->tick, &tv);
}

static void
ing_names(struct ingress *g)
{
	snprintf(g->member, sizeof g->member, "%" PRIu64 ":ingress", g->S);
	snprintf(g->tokkey, sizeof g->tokkey, "cns:{%" PRIu64 "}:tokens",
	    g->S);
	snprintf(g->alive, sizeof g->alive, "cns:{%s}:alive", g->pool);
}

/* The ingress's own lanes: claim 1, heartbeats from now. */
static const char own_lua[] =
    "redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) "
    "redis.call('HSET', KEYS[2], ARGV[1], 1) "
    "local t = redis.call('TIME') "
    "redis.call('ZADD', KEYS[3], t[1] * 1000 + math.floor(t[2] / 1000), "
    "ARGV[3]) "
    "return 1";

/* The stream's id: write what owners need, claim lanes here, offer the
 * rest as jobs. */
static void
ing_id(redisReply *r, void *arg)
{
	struct ingress *g = arg;
	struct pool *p;
	char why[300], meta[128], owners[128], jobs[300], sid[32], lane[16];
	char *params, *args, *kwargs, kk[16];
	unsigned mine;

	if (g->s == NULL) {
		ing_unref(g);
		return;
	}
	if (reply_error(r, why, sizeof why) || r->type != REDIS_REPLY_INTEGER) {
		ing_fail(g, r != NULL && r->type != REDIS_REPLY_INTEGER ?
		    "a bad answer to INCR" : why);
		ing_unref(g);
		return;
	}
	p = g->s->pool;
	g->S = (uint64_t)r->integer;
	g->phase = I_LEASING;
	snprintf(sid, sizeof sid, "%" PRIu64, g->S);
	snprintf(meta, sizeof meta, "cns:{%s}:meta", sid);
	snprintf(owners, sizeof owners, "cns:{%s}:owners", sid);
	snprintf(jobs, sizeof jobs, "cns:{%s}:jobs", g->pool);
	snprintf(kk, sizeof kk, "%u", g->K);
	params = json_dumps(g->s->params, JSON_COMPACT | JSON_ENCODE_ANY);
	args = json_dumps(g->args != NULL ? g->args : json_null(),
	    JSON_COMPACT | JSON_ENCODE_ANY);
	kwargs = json_dumps(g->kwargs != NULL ? g->kwargs : json_null(),
	    JSON_COMPACT | JSON_ENCODE_ANY);
	if (params == NULL || args == NULL || kwargs == NULL)
		fatalx("%s: json_dumps", __func__);
	rdo(NULL, NULL, "HSET", meta, "pool", g->pool, "params", params,
	    "args", args, "kwargs", kwargs, "ingress", R.instance, "lanes", kk,
	    "state", "leasing", NULL);
	rdo(NULL, NULL, "EXPIRE", meta, "86400", NULL);
	/* This instance's idle workers first. */
	mine = pool_free_workers(p);
	if (mine > g->K)
		mine = g->K;
	for (unsigned i = 0; i < g->K; i++) {
		snprintf(lane, sizeof lane, "%u", i);
		if (i < mine) {
			char tokens[128], alive[300], member[64];
			snprintf(tokens, sizeof tokens, "cns:{%s}:tokens", sid);
			snprintf(alive, sizeof alive, "cns:{%s}:alive",
			    g->pool);
			snprintf(member, sizeof member, "%s:%u", sid, i);
			rdo(NULL, NULL, "EVAL", own_lua, "3", owners, tokens,
			    alive, lane, R.instance, member, NULL);
			olane_start(p, g->S, i, 1, g->s->params, g->args,
			    g->kwargs);
		} else
			rdo(NULL, NULL, "XADD", jobs, "*", "s", sid, "lane",
			    lane, NULL);
	}
	rdo(NULL, NULL, "EXPIRE", owners, "86400", NULL);
	/* The ingress heartbeats the stream too: if it stops, another
	 * instance closes the stream. */
	ing_names(g);
	g->token = 1;
	rdo(NULL, NULL, "EVAL", own_lua, "3", meta, g->tokkey, g->alive,
	    "ingress", R.instance, g->member, NULL);
	rdo(NULL, NULL, "EXPIRE", g->tokkey, "86400", NULL);
	free(params);
	free(args);
	free(kwargs);
	g->deadline = cns_now() + p->pc->queue_timeout;
	g->tick = evtimer_new(cns_base, ing_tick, g);
	ing_tick_later(g, 0);
	ing_unref(g);
}

/* ---- a stream whose ingress died: closed here ---- */

static void
rescue_free(void *arg)
{
	struct ingress *g = arg;

	if (g->s != NULL)
		stream_free(g->s);	/* drops the stream's reference */
}

static void
rescue_finish(void *arg, json_t *v)
{
	struct ingress *g = arg;
	char *line = json_dumps(v, JSON_COMPACT);

	log_info("cluster stream %" PRIu64 ": final line, kept for op "
	    "result: %.900s", g->S, line != NULL ? line : "?");
	free(line);
	json_decref(v);
	cns_later(rescue_free, g);
}

static const struct source_ops rescue_source = {
	.input = cs_input,
	.reading = cs_reading,
	.full = olane_full,
	.event = cs_event,
	.finish = rescue_finish,
};

static void
rescue_rejected(redisReply *r, void *arg)
{
	struct ingress *g = arg;

	if (g->s != NULL && r != NULL && r->type == REDIS_REPLY_STRING)
		g->s->rejected = strtoull(r->str, NULL, 10);
	ing_unref(g);
}

/* A lane's last entry: a batch (first seq, n) or the end (seq + 1). */
static void
rescue_last(redisReply *r, void *arg)
{
	struct ingress *g = arg;
	char why[300];

	g->nlast--;
	if (g->s == NULL || g->phase != I_RESCUE) {
		ing_unref(g);
		return;
	}
	if (reply_error(r, why, sizeof why)) {
		ing_fail(g, why);
		ing_unref(g);
		return;
	}
	if (r->type == REDIS_REPLY_ARRAY && r->elements == 1 &&
	    r->element[0]->type == REDIS_REPLY_ARRAY &&
	    r->element[0]->elements == 2) {
		redisReply *e = r->element[0], *f = e->element[1];
		uint64_t id = strtoull(e->element[0]->str, NULL, 10), last = 0;
		for (size_t j = 0; f->type == REDIS_REPLY_ARRAY &&
		    j + 1 < f->elements; j += 2) {
			redisReply *k = f->element[j];
			if (k->len == 1 && k->str[0] == 'n')
				last = id + strtoull(f->element[j + 1]->str,
				    NULL, 10) - 1;
			else if (k->len == 3 && memcmp(k->str, "end", 3) == 0)
				last = id - 1;
		}
		if (last > g->s->seq)
			g->s->seq = last;
	}
	if (g->nlast == 0) {
		/* Every lane ends at the last batch Redis accepted (a lane
		 * that ended already refuses the entry). */
		g->phase = I_ENDING;
		g->s->eof = g->s->ended = 1;
		for (unsigned k = 0; k < g->nlive; k++) {
			char key[128], id[48];
			snprintf(key, sizeof key, "cns:{%" PRIu64 "}:lane:%u",
			    g->S, g->live[k]);
			snprintf(id, sizeof id, "%" PRIu64 "-0", g->s->seq + 1);
			rdo(NULL, NULL, "XADD", key, id, "end", "1", NULL);
		}
		ing_tick_later(g, 0);
	}
	ing_unref(g);
}

static void
rescue_owners(redisReply *r, void *arg)
{
	struct ingress *g = arg;
	char why[300], key[128];

	if (g->s == NULL || g->phase != I_RESCUE) {
		ing_unref(g);
		return;
	}
	if (reply_error(r, why, sizeof why) || r->type != REDIS_REPLY_ARRAY) {
		ing_fail(g, r != NULL && r->type != REDIS_REPLY_ARRAY ?
		    "a bad answer for the lanes' owners" : why);
		ing_unref(g);
		return;
	}
	for (size_t i = 0; i + 1 < r->elements; i += 2) {
		char *k = reply_str(r->element[i]);
		char *end = NULL;
		unsigned long lane = k != NULL ? strtoul(k, &end, 10) : 0;
		if (k != NULL && end != k && *end == '\0' && lane < g->K &&
		    g->lanes[lane].instance == NULL)
			g->lanes[lane].instance = reply_str(r->element[i + 1]);
		free(k);
	}
	for (unsigned i = 0; i < g->K; i++)
		if (g->lanes[i].instance != NULL)
			g->live[g->nlive++] = i;
	snprintf(key, sizeof key, "cns:{%" PRIu64 "}:meta", g->S);
	g->refs++;
	if (rdo(rescue_rejected, g, "HGET", key, "rejected", NULL) == -1)
		g->refs--;
	for (unsigned k = 0; k < g->nlive; k++) {
		snprintf(key, sizeof key, "cns:{%" PRIu64 "}:lane:%u", g->S,
		    g->live[k]);
		g->refs++;
		g->nlast++;
		if (rdo(rescue_last, g, "XREVRANGE", key, "+", "-", "COUNT",
		    "1", NULL) == -1) {
			g->refs--;
			g->nlast--;
		}
	}
	if (g->nlast == 0)
		ing_fail(g, g->nlive == 0 ? "the stream has no lanes" :
		    cluster_unavailable());
	ing_unref(g);
}

static struct ingress *ing_new(struct stream *, struct pool *);

/* This instance claimed the ingress of stream S (its own died): close the
 * stream at the last batch Redis accepted, let its lanes finish, run the
 * completion, and keep the final line for op result. */
static void
ing_rescue(struct pool *p, uint64_t S, uint64_t token, unsigned K,
    json_t *params, json_t *args, json_t *kwargs)
{
	struct stream *s;
	struct ingress *g;
	char key[128];

	if (K == 0 || K > CNS_MAX_WORKERS) {
		log_warnx("cluster stream %" PRIu64 ": no lane count in its "
		    "meta; cannot close it", S);
		return;
	}
	s = stream_alloc(&rescue_source, NULL, p, params);
	g = ing_new(s, p);
	s->src.arg = g;
	if (p->pc->client_args) {
		g->args = json_incref(args);
		g->kwargs = json_incref(kwargs);
	}
	g->S = S;
	g->token = token;
	g->rescued = 1;
	ing_names(g);
	g->K = s->want = K;
	if ((g->lanes = calloc(g->K, sizeof *g->lanes)) == NULL ||
	    (g->live = calloc(g->K, sizeof *g->live)) == NULL)
		fatal("%s: calloc", __func__);
	g->phase = I_RESCUE;
	s->state = S_RUNNING;
	g->tick = evtimer_new(cns_base, ing_tick, g);
	snprintf(key, sizeof key, "cns:{%" PRIu64 "}:owners", S);
	g->refs++;
	if (rdo(rescue_owners, g, "HGETALL", key, NULL) == -1) {
		g->refs--;
		ing_fail(g, cluster_unavailable());
	}
}

/* ---- {"op":"result","stream":S}: a final line kept in Redis ---- */

struct fetch {
	uint64_t	 S;
	void		(*done)(void *, json_t *);
	void		*arg;
	LIST_ENTRY(fetch) entry;
};
static LIST_HEAD(, fetch) fetches = LIST_HEAD_INITIALIZER(fetches);

static json_t *
result_missing(uint64_t S, const char *why)
{
	char msg[600];

	snprintf(msg, sizeof msg, "no final line for cluster stream %" PRIu64
	    ": %s", S, why);
	return json_pack("{s:b,s:s,s:s}", "ok", 0, "error", msg, "code",
	    "not_found");
}

static void
on_result(redisReply *r, void *arg)
{
	struct fetch *f = arg;
	json_t *v = reply_json(r);
	char why[300];

	if (f->done != NULL) {
		if (reply_error(r, why, sizeof why))
			v = result_missing(f->S, why);
		else if (!json_is_object(v)) {
			json_decref(v);
			v = result_missing(f->S, "it is still open, ended more "
			    "than " KEY_TTL " s ago, or never was");
		}
		f->done(f->arg, v);
	} else
		json_decref(v);
	LIST_REMOVE(f, entry);
	free(f);
}

/* done(arg, reply) once the line is fetched (now, if Redis is down). */
void
cluster_result(uint64_t S, void (*done)(void *, json_t *), void *arg)
{
	struct fetch *f;
	char key[128];
	const char *down;

	if ((down = cluster_unavailable()) != NULL) {
		done(arg, result_missing(S, down));
		return;
	}
	if ((f = calloc(1, sizeof *f)) == NULL)
		fatal("%s: calloc", __func__);
	f->S = S;
	f->done = done;
	f->arg = arg;
	LIST_INSERT_HEAD(&fetches, f, entry);
	snprintf(key, sizeof key, "cns:{%" PRIu64 "}:result", S);
	if (rdo(on_result, f, "GET", key, NULL) == -1) {
		LIST_REMOVE(f, entry);
		free(f);
		done(arg, result_missing(S, cluster_unavailable()));
	}
}

/* arg is going away: its fetches answer no one. */
void
cluster_result_cancel(void *arg)
{
	struct fetch *f;

	LIST_FOREACH(f, &fetches, entry)
		if (f->arg == arg)
			f->done = NULL;
}

static struct ingress *
ing_new(struct stream *s, struct pool *p)
{
	struct ingress *g;

	if ((g = calloc(1, sizeof *g)) == NULL ||
	    (g->pool = strdup(p->pc->name)) == NULL)
		fatal("%s: calloc", __func__);
	LIST_INSERT_HEAD(&ingresses, g, entry);
	s->cl = g;
	s->cl_ops = &ingress_ops;
	g->s = s;
	g->refs = 1;
	g->errors = json_array();
	strcpy(g->evid, "0");
	return g;
}

struct stream *
cluster_submit(const struct source_ops *ops, void *arg, struct pool *p,
    unsigned want, json_t *h)
{
	struct stream *s = stream_alloc(ops, arg, p, json_object_get(h,
	    "params"));
	struct ingress *g;
	const char *down;
	unsigned most;

	g = ing_new(s, p);
	if (p->pc->client_args) {
		g->args = json_incref(json_object_get(h, "args"));
		g->kwargs = json_incref(json_object_get(h, "kwargs"));
	}
	if ((down = cluster_unavailable()) != NULL) {
		char why[600];
		snprintf(why, sizeof why, "cluster pool %s cannot take streams "
		    "now: its Redis (%s) is not reachable: %s; local pools "
		    "are still served", p->pc->name, R.redis != NULL ?
		    R.redis : "none", down);
		ing_refuse(g, "cluster_unavailable", why);
		return s;
	}
	most = cluster_workers(p, 0);
	g->K = want != 0 ? want : cluster_workers(p, 1);
	if (g->K > most)
		g->K = most;
	if (g->K == 0)
		g->K = 1;
	s->want = g->K;
	if ((g->lanes = calloc(g->K, sizeof *g->lanes)) == NULL ||
	    (g->live = calloc(g->K, sizeof *g->live)) == NULL)
		fatal("%s: calloc", __func__);
	g->phase = I_ID;
	g->refs++;
	if (rdo(ing_id, g, "INCR", "cns:streamid", NULL) == -1) {
		g->refs--;
		ing_fail(g, cluster_unavailable());
	}
	return s;
}

/* ---- start and stop ---- */

static int
parse_redis(const char *url)
{
	const char *hp;
	char *colon, *slash;

	if (strncmp(url, "unix:", 5) == 0) {
		if ((R.path = strdup(url + 5)) == NULL)
			fatal("strdup");
		return 0;
	}
	if (strncmp(url, "redis://", 8) != 0)
		return -1;
	hp = url + 8;
	if ((R.host = strdup(hp)) == NULL)
		fatal("strdup");
	R.port = 6379;
	if ((slash = strchr(R.host, '/')) != NULL) {
		*slash = '\0';
		if (slash[1] != '\0')
			R.db = atoi(slash + 1);
	}
	if ((colon = strrchr(R.host, ':')) != NULL) {
		*colon = '\0';
		R.port = atoi(colon + 1);
	}
	return 0;
}

void
cluster_init(struct event_base *base, const struct conf *c)
{
	const struct cluster_conf *cc = c->cluster;
	struct timeval tv;

	if (cc == NULL)
		return;
	if (R.instance != NULL) {
		if (strcmp(cc->redis, R.redis) != 0 ||
		    strcmp(cc->instance, R.instance) != 0)
			log_warnx("cluster: the \"cluster\" section changed; "
			    "it takes effect when consumersd restarts (still "
			    "instance %s on %s)", R.instance, R.redis);
		return;
	}
	if ((R.instance = strdup(cc->instance)) == NULL ||
	    (R.redis = strdup(cc->redis)) == NULL ||
	    (cc->password_file != NULL && (R.password_file =
	    strdup(cc->password_file)) == NULL))
		fatal("strdup");
	if (parse_redis(cc->redis) == -1)
		fatalx("cluster: cannot parse redis %s", cc->redis);
	R.heartbeat = cc->heartbeat;
	R.claim_idle = cc->claim_idle;
	R.instances = json_object();
	R.polling = json_object();
	R.claiming = json_object();
	snprintf(R.why, sizeof R.why, "connecting");
	R.retry_ev = evtimer_new(base, redis_retry, NULL);
	R.tick_ev = event_new(base, -1, EV_PERSIST, redis_tick, NULL);
	tv = cns_tv(0.5);
	evtimer_add(R.tick_ev, &tv);
	R.beat_ev = event_new(base, -1, EV_PERSIST, redis_beat, NULL);
	tv = cns_tv(cc->heartbeat);
	evtimer_add(R.beat_ev, &tv);
	R.jobs_ev = event_new(base, -1, EV_PERSIST, redis_jobs, NULL);
	tv = cns_tv(JOBS_SEC);
	evtimer_add(R.jobs_ev, &tv);
	redis_connect();
}

/* Shutdown: the lanes run here, and completions, end now with `why`. */
void
cluster_abort_all(const char *why)
{
	struct olane *ol;
	struct ingress *g;

	LIST_FOREACH(ol, &olanes, entry)
		if (ol->s != NULL && ol->s->state != S_DONE)
			stream_abort(ol->s, why);
	LIST_FOREACH(g, &ingresses, entry)
		if (g->cs != NULL && g->cs->state != S_DONE)
			stream_abort(g->cs, why);
}

/* After the loop, before the pools go: the local streams of lanes and
 * completions (their sources are here), then the connection. */
void
cluster_free(void)
{
	redisAsyncContext *ac = R.ac;
	struct olane *ol;
	struct ingress *g;

	if (R.instance == NULL)
		return;
	LIST_FOREACH(ol, &olanes, entry)
		if (ol->s != NULL) {
			stream_free(ol->s);
			ol->s = NULL;
		}
	LIST_FOREACH(g, &ingresses, entry)
		if (g->cs != NULL) {
			stream_free(g->cs);
			g->cs = NULL;
		}
	R.ac = NULL;
	R.up = 0;
	if (ac != NULL)
		redisAsyncFree(ac);
	event_free(R.retry_ev);
	event_free(R.tick_ev);
	event_free(R.beat_ev);
	event_free(R.jobs_ev);
	json_decref(R.instances);
	json_decref(R.polling);
	json_decref(R.claiming);
	free(R.instance);
	free(R.redis);
	free(R.path);
	free(R.host);
	free(R.password_file);
	memset(&R, 0, sizeof R);
}

#else /* !HAVE_HIREDIS: conf.c refuses "cluster", so none of this runs */

void
cluster_init(struct event_base *base, const struct conf *c)
{
	(void)base;
	(void)c;
}

void
cluster_free(void)
{
}

void
cluster_abort_all(const char *why)
{
	(void)why;
}

void
cluster_result(uint64_t S, void (*done)(void *, json_t *), void *arg)
{
	(void)S;
	done(arg, json_pack("{s:b,s:s,s:s}", "ok", 0, "error", "this "
	    "consumersd was built without cluster support", "code",
	    "not_found"));
}

void
cluster_result_cancel(void *arg)
{
	(void)arg;
}

const char *
cluster_unavailable(void)
{
	return "this consumersd was built without cluster support";
}

struct stream *
cluster_submit(const struct source_ops *ops, void *arg, struct pool *p,
    unsigned want, json_t *h)
{
	struct stream *s = stream_alloc(ops, arg, p, json_object_get(h,
	    "params"));

	(void)want;
	s->state = S_DONE;
	ops->finish(arg, json_pack("{s:b,s:s,s:s}", "ok", 0, "error",
	    "this consumersd was built without cluster support", "code",
	    "cluster_unavailable"));
	return s;
}

json_t *
cluster_status(const struct pool *p)
{
	(void)p;
	return NULL;
}

#endif /* HAVE_HIREDIS */
