/*
 * child/child.c - a worker process, apart from the master's rooms in
 * src/: none of this runs in the master.  Forked by the master, it loads the pool's
 * plugin, calls init once, then serves streams one after another: a
 * blocking loop that reads a frame, acts and replies.  The plugin API
 * (cns_next and friends) is implemented here, since only workers run it.
 */
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef __SANITIZE_ADDRESS__
#include <sanitizer/lsan_interface.h>
#endif

#include "consumersd.h"
#include "consumers/plugin.h"

#define CHILD_READ	(256u << 10)

struct child {
	int			 fd;
	const struct pool_conf	*pc;
	unsigned		 slot;
	const struct cns_plugin	*pl;
	void			*state;
	char			*buf;		/* frames read from the master */
	size_t			 cap, start, end;
	struct worker_shm	*shm;		/* where consume is, for the master */
	/* An ACK held back to leave with the next frame written (or before
	 * the next read that waits): see child_ack(). */
	int			 ack_held;
	uint64_t		 ack_stream;
	uint32_t		 ack[2];
};

#define UNREAD_RANGES	64

struct cns_ctx {
	struct child		*ch;
	json_t			*params;
	json_t			*args, *kwargs;	/* the stream's, or NULL */
	char			*error;		/* from cns_fail */
};

struct cns_items {
	struct cns_ctx		*ctx;
	uint64_t		 stream;
	char			*p, *end;	/* lines left in the batch */
	uint64_t		 next_seq, seq;
	uint32_t		 batch_items, batch_bytes;
	json_t			*cur;
	int			 ended;
	uint64_t		 consumed, rejected, skipped;
	/* Seqs handed back (cns_unread) or left when consume returned:
	 * ranges for the master, UNREAD_RANGES at most (then merged). */
	struct { uint64_t first, last; } unread[UNREAD_RANGES];
	size_t			 nunread;
	int			 unread_inexact;
};

/* Progress for the master: plain stores, one cache line, no syscall. */
static void
shm_set(uint64_t *p, uint64_t v)
{
	__atomic_store_n(p, v, __ATOMIC_RELAXED);
}

/* The item consume held is finished (it asked for the next, or returned). */
static void
shm_done(struct worker_shm *m)
{
	uint64_t cur = __atomic_load_n(&m->cur, __ATOMIC_RELAXED);

	if (cur == 0)
		return;
	shm_set(&m->last_done, cur);
	shm_set(&m->ndone, m->ndone + 1);
	shm_set(&m->cur, 0);
}

static void
shm_hold(struct worker_shm *m, uint64_t seq)
{
	shm_set(&m->started, m->started + 1);
	shm_set(&m->cur, seq);
}

static _Noreturn void
child_exit(struct child *ch, int code)
{
	(void)ch;
	fflush(NULL);
#ifdef __SANITIZE_ADDRESS__
	/* _exit skips LeakSanitizer's exit check: run it here, so workers
	 * are checked for leaks like the master. */
	__lsan_do_leak_check();
#endif
	_exit(code);
}

static _Noreturn void
child_protocol(struct child *ch, const char *why)
{
	log_warnx("pool %s: worker %u: protocol error from the master: %s",
	    ch->pc->name, ch->slot, why);
	child_exit(ch, 2);
}

static void
child_write(struct child *ch, uint16_t type, uint64_t stream,
    const void *a, size_t alen, const void *b, size_t blen)
{
	struct frame_hdr h = {
		.version = FRAME_VERSION, .type = type,
		.len = (uint32_t)(alen + blen), .stream = stream
	};
	struct frame_hdr ah = {
		.version = FRAME_VERSION, .type = F_ACK,
		.len = sizeof ch->ack, .stream = ch->ack_stream
	};
	struct iovec iov[5] = {
		{ &ah, sizeof ah }, { ch->ack, sizeof ch->ack },
		{ &h, sizeof h }, { (void *)a, alen }, { (void *)b, blen }
	};
	struct iovec *v = iov;
	int n = 5;

	/* A held ACK goes first, in the same write. */
	if (!ch->ack_held) {
		v += 2;
		n -= 2;
	}
	ch->ack_held = 0;

	while (n > 0) {
		ssize_t w = writev(ch->fd, v, n);
		if (w == -1) {
			if (errno == EINTR)
				continue;
			/* The master is gone: nothing left to serve. */
			child_exit(ch, 0);
		}
		while (n > 0 && (size_t)w >= v->iov_len) {
			w -= (ssize_t)v->iov_len;
			v++;
			n--;
		}
		if (n > 0) {
			v->iov_base = (char *)v->iov_base + w;
			v->iov_len -= (size_t)w;
		}
	}
}

/* Write the held ACK now, alone. */
static void
child_ack_flush(struct child *ch)
{
	ch->ack_held = 0;
	child_write(ch, F_ACK, ch->ack_stream, ch->ack, sizeof ch->ack, NULL,
	    0);
}

/*
 * Acknowledge a finished batch.  The ACK is held, to leave in the same
 * write as the next frame, when that frame is sure to come before the
 * worker waits for the master: `hold` (its RESULT follows), or the END
 * of the items already read.  A one-item stream then wakes the master
 * once, not twice.  Otherwise it goes at once, so that the master can
 * refill the window.  child_fill writes a held ACK before it waits.
 */
static void
child_ack(struct child *ch, uint64_t stream, uint32_t items, uint32_t bytes,
    int hold)
{
	struct frame_hdr h;

	if (ch->ack_held)
		child_ack_flush(ch);
	ch->ack_stream = stream;
	ch->ack[0] = items;
	ch->ack[1] = bytes;
	ch->ack_held = 1;
	if (hold)
		return;
	if (ch->end - ch->start >= FRAME_HDR_SIZE) {
		memcpy(&h, ch->buf + ch->start, sizeof h);
		if (h.type == F_END && h.stream == stream)
			return;
	}
	child_ack_flush(ch);
}

/*
 * Send a reply object.  One too large to frame loses its `big` member
 * (the plugin's return value) to an error that says so; the counts stay.
 */
static void
child_write_json(struct child *ch, uint16_t type, uint64_t stream,
    json_t *v, const char *big)
{
	char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
	size_t len;

	if (s == NULL)
		child_exit(ch, 1);
	len = strlen(s);
	if (len > FRAME_MAX && big != NULL) {
		free(s);
		json_object_set_new(v, big, json_null());
		json_object_set_new(v, "error", json_sprintf("the %s is %zu "
		    "bytes of JSON, more than the %u-byte limit", big, len,
		    FRAME_MAX));
		if ((s = json_dumps(v, JSON_COMPACT)) == NULL)
			child_exit(ch, 1);
		len = strlen(s);
	}
	child_write(ch, type, stream, s, len, NULL, 0);
	free(s);
}

/* Make `want` bytes available from buf[start]; 0 on EOF before any. */
static int
child_fill(struct child *ch, size_t want)
{
	if (ch->cap - ch->start < want) {
		memmove(ch->buf, ch->buf + ch->start, ch->end - ch->start);
		ch->end -= ch->start;
		ch->start = 0;
		if (ch->cap < want) {
			char *nb = realloc(ch->buf, want);
			if (nb == NULL)
				fatal("%s: realloc", __func__);
			ch->buf = nb;
			ch->cap = want;
		}
	}
	if (ch->ack_held && ch->end - ch->start < want)
		child_ack_flush(ch);	/* before waiting for the master */
	while (ch->end - ch->start < want) {
		ssize_t r = read(ch->fd, ch->buf + ch->end, ch->cap - ch->end);
		if (r == -1 && errno == EINTR)
			continue;
		if (r <= 0) {
			if (r == 0 && ch->end == ch->start)
				return 0;
			child_protocol(ch, r == 0 ? "truncated frame" :
			    strerror(errno));
		}
		ch->end += (size_t)r;
	}
	return 1;
}

/* The next frame; its payload stays valid until the next call. */
static int
child_read(struct child *ch, struct frame_hdr *h, char **payload)
{
	char why[128];

	if (!child_fill(ch, FRAME_HDR_SIZE))
		return 0;
	memcpy(h, ch->buf + ch->start, sizeof *h);
	if (frame_check(h, 0, why, sizeof why) == -1)
		child_protocol(ch, why);
	if (!child_fill(ch, FRAME_HDR_SIZE + (size_t)h->len))
		child_protocol(ch, "truncated frame");
	*payload = ch->buf + ch->start + FRAME_HDR_SIZE;
	ch->start += FRAME_HDR_SIZE + (size_t)h->len;
	return 1;
}

static json_t *
child_parse(struct child *ch, const char *payload, size_t len)
{
	json_t *v = json_loadb(payload, len, 0, NULL);

	if (v == NULL || !json_is_object(v))
		child_protocol(ch, "payload is not a JSON object");
	return v;
}

/* The next line of this consumer's items, or -1 at the end. */
static int
items_line(struct cns_items *it, char **line, size_t *len)
{
	struct child *ch = it->ctx->ch;
	struct frame_hdr h;
	char *payload, *nl;
	uint32_t count;

	if (it->ended)
		return -1;
	while (it->p == it->end) {
		if (it->batch_items > 0) {
			child_ack(ch, it->stream, it->batch_items,
			    it->batch_bytes, 0);
			it->batch_items = 0;
		}
		if (!child_read(ch, &h, &payload))
			child_exit(ch, 0);
		if (h.stream != it->stream)
			child_protocol(ch, "frame for another stream");
		if (h.type == F_END) {
			it->ended = 1;
			shm_set(&ch->shm->ended, 1);
			return -1;
		}
		if (h.type != F_ITEMS)
			child_protocol(ch, "unexpected frame inside a stream");
		memcpy(&it->next_seq, payload, 8);
		memcpy(&count, payload + 8, 4);
		it->p = payload + ITEMS_HDR_SIZE;
		it->end = payload + h.len;
		if (count == 0 || it->end == it->p || it->end[-1] != '\n')
			child_protocol(ch, "malformed item batch");
		it->batch_items = count;
		it->batch_bytes = h.len - ITEMS_HDR_SIZE;
	}
	if ((nl = memchr(it->p, '\n', (size_t)(it->end - it->p))) == NULL)
		child_protocol(ch, "item line without newline");
	*nl = '\0';
	*line = it->p;
	*len = (size_t)(nl - it->p);
	it->p = nl + 1;
	it->seq = it->next_seq++;
	return 0;
}

json_t *
cns_next(cns_items *it)
{
	json_error_t err;
	char *line;
	size_t len;

	json_decref(it->cur);
	it->cur = NULL;
	shm_done(it->ctx->ch->shm);
	while (items_line(it, &line, &len) == 0) {
		if (memchr(line, '\0', len) != NULL) {
			/* jansson would stop at the NUL and call the rest
			 * garbage; say what it is. */
			size_t at = (size_t)((char *)memchr(line, '\0', len) -
			    line);
			char why[100];
			int n = snprintf(why, sizeof why, "invalid JSON: a NUL "
			    "byte at column %zu", at + 1);
			it->rejected++;
			child_write(it->ctx->ch, F_REJECT, it->stream, &it->seq,
			    8, why, n < 0 ? 0 : (size_t)n);
			continue;
		}
		it->cur = json_loadb(line, len, JSON_DECODE_ANY, &err);
		if (it->cur != NULL) {
			it->consumed++;
			shm_hold(it->ctx->ch->shm, it->seq);
			return it->cur;
		}
		char why[300];
		int n = snprintf(why, sizeof why, "invalid JSON: %s at "
		    "column %d", err.text, err.column);
		it->rejected++;
		child_write(it->ctx->ch, F_REJECT, it->stream, &it->seq, 8,
		    why, n < 0 ? 0 : (size_t)n < sizeof why ? (size_t)n :
		    sizeof why - 1);
	}
	return NULL;
}

const char *
cns_next_raw(cns_items *it, size_t *len)
{
	char *line;

	json_decref(it->cur);
	it->cur = NULL;
	shm_done(it->ctx->ch->shm);
	if (items_line(it, &line, len) == -1)
		return NULL;
	it->consumed++;
	shm_hold(it->ctx->ch->shm, it->seq);
	return line;
}

/* A seq not consumed, in increasing order, into the ranges. */
static void
unread_add(struct cns_items *it, uint64_t seq)
{
	if (it->nunread > 0 && seq <= it->unread[it->nunread - 1].last)
		return;		/* not increasing: already counted */
	if (it->nunread > 0 && seq == it->unread[it->nunread - 1].last + 1) {
		it->unread[it->nunread - 1].last = seq;
		return;
	}
	if (it->nunread == UNREAD_RANGES) {
		/* Too many gaps: the last range stretches over them. */
		it->unread[it->nunread - 1].last = seq;
		it->unread_inexact = 1;
		return;
	}
	it->unread[it->nunread].first = it->unread[it->nunread].last = seq;
	it->nunread++;
}

void
cns_unread(cns_items *it, uint64_t seq)
{
	if (seq == 0 || seq > it->seq || it->consumed == 0 ||
	    (it->nunread > 0 && seq <= it->unread[it->nunread - 1].last))
		return;
	unread_add(it, seq);
	it->consumed--;
	it->skipped++;
}

uint64_t
cns_seq(const cns_items *it)
{
	return it->seq;
}

json_t *
cns_args(const cns_ctx *ctx)
{
	return ctx->args != NULL ? ctx->args : ctx->ch->pc->args;
}

json_t *
cns_kwargs(const cns_ctx *ctx)
{
	return ctx->kwargs != NULL ? ctx->kwargs : ctx->ch->pc->kwargs;
}

json_t *
cns_options(const cns_ctx *ctx)
{
	return ctx->ch->pc->plugin_options;
}

json_t *
cns_params(const cns_ctx *ctx)
{
	static json_t *null;

	if (ctx->params != NULL)
		return ctx->params;
	if (null == NULL)
		null = json_null();
	return null;
}

void *
cns_state(const cns_ctx *ctx)
{
	return ctx->ch->state;
}

const char *
cns_pool(const cns_ctx *ctx)
{
	return ctx->ch->pc->name;
}

unsigned
cns_worker(const cns_ctx *ctx)
{
	return ctx->ch->slot;
}

void
cns_fail(const cns_ctx *cctx, const char *fmt, ...)
{
	/* The context belongs to the daemon; const only keeps plugins out. */
	struct cns_ctx *ctx = (struct cns_ctx *)cctx;
	va_list ap;

	free(ctx->error);
	ctx->error = NULL;
	va_start(ap, fmt);
	if (vasprintf(&ctx->error, fmt, ap) == -1)
		ctx->error = NULL;
	va_end(ap);
	/* The message goes into JSON: a plugin's bytes may not be UTF-8. */
	if (ctx->error != NULL)
		utf8_clean(ctx->error);
}

/* A stream's params, and its args/kwargs when its client gave them (the
 * master sends them only for a pool with "client_args"). */
static void
child_stream_ctx(struct cns_ctx *ctx, json_t *req)
{
	json_t *v;

	ctx->params = json_object_get(req, "params");
	if ((v = json_object_get(req, "args")) != NULL && json_is_array(v))
		ctx->args = v;
	if ((v = json_object_get(req, "kwargs")) != NULL && json_is_object(v))
		ctx->kwargs = v;
}

static void
child_consume(struct child *ch, uint64_t stream, const char *p, size_t len)
{
	struct cns_ctx ctx = { .ch = ch };
	struct cns_items it = { .ctx = &ctx, .stream = stream };
	json_t *begin = child_parse(ch, p, len), *result, *reply;

	child_stream_ctx(&ctx, begin);
	memset(ch->shm, 0, sizeof *ch->shm);
	result = ch->pl->consume(&it, &ctx);
	json_decref(it.cur);
	it.cur = NULL;
	shm_done(ch->shm);
	/* A consume that returned early leaves lines behind: count them. */
	{
		char *line;
		size_t n;
		while (items_line(&it, &line, &n) == 0) {
			it.skipped++;
			unread_add(&it, it.seq);
		}
	}
	if (it.batch_items > 0)		/* leaves with the RESULT */
		child_ack(ch, stream, it.batch_items, it.batch_bytes, 1);
	reply = json_pack("{s:o,s:s?,s:I,s:I,s:I}",
	    "result", result != NULL ? result : json_null(),
	    "error", ctx.error,
	    "consumed", (json_int_t)it.consumed,
	    "rejected", (json_int_t)it.rejected,
	    "skipped", (json_int_t)it.skipped);
	if (reply == NULL)
		child_exit(ch, 1);
	if (it.nunread > 0) {
		json_t *seqs = json_array();
		for (size_t i = 0; i < it.nunread; i++)
			json_array_append_new(seqs, json_pack("[I,I]",
			    (json_int_t)it.unread[i].first,
			    (json_int_t)it.unread[i].last));
		json_object_set_new(reply, "unconsumed", seqs);
		if (it.unread_inexact)
			json_object_set_new(reply, "unconsumed_inexact",
			    json_true());
	}
	child_write_json(ch, F_RESULT, stream, reply, "result");
	json_decref(reply);
	json_decref(begin);
	free(ctx.error);
}

static void
child_complete(struct child *ch, uint64_t stream, const char *p, size_t len)
{
	struct cns_ctx ctx = { .ch = ch };
	json_t *req = child_parse(ch, p, len), *results, *completion, *reply;

	child_stream_ctx(&ctx, req);
	results = json_object_get(req, "results");
	if (!json_is_array(results))
		child_protocol(ch, "complete without results");
	completion = ch->pl->complete != NULL ?
	    ch->pl->complete(results, &ctx) : NULL;
	reply = json_pack("{s:o,s:s?}",
	    "completion", completion != NULL ? completion : json_null(),
	    "error", ctx.error);
	if (reply == NULL)
		child_exit(ch, 1);
	child_write_json(ch, F_COMPLETION, stream, reply, "completion");
	json_decref(reply);
	json_decref(req);
	free(ctx.error);
}

static _Noreturn void
child_initfail(struct child *ch, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static _Noreturn void
child_initfail(struct child *ch, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	if (n < 0)
		n = 0;
	if ((size_t)n >= sizeof msg)
		n = sizeof msg - 1;
	child_write(ch, F_INITFAIL, 0, msg, (size_t)n, NULL, 0);
	child_exit(ch, 1);
}

/* dlopen a plugin and check its descriptor; -1 with why on a problem. */
static int
plugin_open(const char *path, const struct cns_plugin **out, char *why,
    size_t whylen)
{
	const struct cns_plugin *pl;
	void *h;

	if ((h = dlopen(path, RTLD_NOW | RTLD_LOCAL)) == NULL) {
		snprintf(why, whylen, "cannot load plugin: %s", dlerror());
		return -1;
	}
	if ((pl = dlsym(h, CNS_PLUGIN_SYMBOL)) == NULL)
		snprintf(why, whylen, "plugin %s has no \"%s\" descriptor: "
		    "build it with CONSUMERS_PLUGIN() from <consumers/plugin.h>",
		    path, CNS_PLUGIN_SYMBOL);
	else if (pl->abi != CNS_PLUGIN_ABI)
		snprintf(why, whylen, "plugin %s was built for plugin ABI %u, "
		    "this consumersd speaks ABI %u: rebuild it against this "
		    "version's <consumers/plugin.h>", path, pl->abi,
		    CNS_PLUGIN_ABI);
	else if (pl->size < sizeof *pl)
		snprintf(why, whylen, "plugin %s has a truncated descriptor "
		    "(%zu bytes, expected %zu)", path, pl->size, sizeof *pl);
	else if (pl->consume == NULL)
		snprintf(why, whylen, "plugin %s has no consume function",
		    path);
	else {
		*out = pl;
		return 0;
	}
	dlclose(h);
	return -1;
}

/*
 * "nice" is absolute, as systemd's Nice=, not added to the daemon's own:
 * a worker of a daemon started under nice(1) gets what the pool says.
 * Going below the daemon's niceness needs CAP_SYS_NICE (or RLIMIT_NICE);
 * without it the start fails and says so, like a user that cannot be.
 */
static void
child_nice(struct child *ch, int value)
{
	int cur, e;

	errno = 0;
	cur = getpriority(PRIO_PROCESS, 0);
	if (cur == -1 && errno != 0)
		cur = 0;
	if (setpriority(PRIO_PROCESS, 0, value) == 0)
		return;
	e = errno;
	if ((e == EACCES || e == EPERM) && value < cur)
		child_initfail(ch, "nice %d: cannot set the workers' niceness "
		    "(%s): going below consumersd's own niceness (%d) needs "
		    "CAP_SYS_NICE or a large enough RLIMIT_NICE; set \"nice\" "
		    "to %d or more, or start consumersd with that privilege",
		    value, strerror(e), cur, cur);
	child_initfail(ch, "nice %d: cannot set the workers' niceness: %s",
	    value, strerror(e));
}

/*
 * Before any plugin code runs: limits, priority, a clean environment, and
 * the pool's user and group.  Failing here is a failed start.
 */
static void
child_identity(struct child *ch, pid_t master)
{
	const struct pool_conf *pc = ch->pc;
	struct rlimit rl;
	json_t *keep, *v;
	const char *k;
	size_t i;

	if (pc->rlimit_nofile > 0) {
		rl.rlim_cur = rl.rlim_max = (rlim_t)pc->rlimit_nofile;
		if (setrlimit(RLIMIT_NOFILE, &rl) == -1)
			child_initfail(ch, "rlimit_nofile %llu: %s",
			    (unsigned long long)pc->rlimit_nofile,
			    strerror(errno));
	}
	if (pc->rlimit_as > 0) {
		rl.rlim_cur = rl.rlim_max = (rlim_t)pc->rlimit_as;
		if (setrlimit(RLIMIT_AS, &rl) == -1)
			child_initfail(ch, "rlimit_as %llu: %s",
			    (unsigned long long)pc->rlimit_as, strerror(errno));
	}
	if (pc->nice != NICE_INHERITED)
		child_nice(ch, pc->nice);
	/* The environment: cleared, but for PATH, CONSUMERS_SOCKET (our own
	 * socket, so a plugin can stream into another pool), env_keep and
	 * env; the last two may override it. */
	keep = json_object();
	json_array_foreach(pc->env_keep, i, v) {
		const char *val = getenv(json_string_value(v));
		if (val != NULL)
			json_object_set_new(keep, json_string_value(v),
			    json_string(val));
	}
	clearenv();
	setenv("PATH", "/usr/local/bin:/usr/bin:/bin", 1);
	if (cns_socket_abs != NULL)
		setenv("CONSUMERS_SOCKET", cns_socket_abs, 1);
	json_object_foreach(keep, k, v)
		setenv(k, json_string_value(v), 1);
	json_object_foreach(pc->env, k, v)
		setenv(k, json_string_value(v), 1);
	json_decref(keep);
	if (pc->user != NULL) {
		if (initgroups(pc->user, pc->gid) == -1 ||
		    setgid(pc->gid) == -1 || setuid(pc->uid) == -1)
			child_initfail(ch, "cannot run as user %s (uid %lu, gid "
			    "%lu): %s", pc->user, (unsigned long)pc->uid,
			    (unsigned long)pc->gid, strerror(errno));
		setenv("USER", pc->user, 1);
		setenv("LOGNAME", pc->user, 1);
	}
	/* A change of credentials clears the parent-death signal. */
	prctl(PR_SET_PDEATHSIG, SIGTERM);
	if (getppid() != master)
		child_exit(ch, 0);
}

static void
child_load(struct child *ch)
{
	struct cns_ctx ctx = { .ch = ch };
	char why[1024];

	if (plugin_open(ch->pc->plugin, &ch->pl, why, sizeof why) == -1)
		child_initfail(ch, "%s", why);
	if (ch->pl->init != NULL && ch->pl->init(&ctx, &ch->state) != 0)
		child_initfail(ch, "init failed: %s", ctx.error != NULL ?
		    ctx.error : "init returned non-zero");
	free(ctx.error);
}

/* The plugin's own check of the pool's settings, when it exports one
 * (CNS_PLUGIN_CHECK_SYMBOL): in the probe's child, without init. */
static int
probe_check(const struct pool_conf *pc, const struct cns_plugin *pl,
    char *why, size_t whylen)
{
	struct child ch = { .fd = -1, .pc = pc, .pl = pl };
	struct cns_ctx ctx = { .ch = &ch };
	int (*check)(const cns_ctx *);
	Dl_info info;
	void *h;
	int rc;

	/* In the plugin itself (loaded already: NOLOAD), not elsewhere. */
	if (dladdr(pl, &info) == 0 || (h = dlopen(info.dli_fname,
	    RTLD_NOW | RTLD_NOLOAD)) == NULL)
		return 0;
	*(void **)&check = dlsym(h, CNS_PLUGIN_CHECK_SYMBOL);
	if (check == NULL)
		return 0;
	rc = check(&ctx);
	if (rc != 0)
		snprintf(why, whylen, "%s", ctx.error != NULL ? ctx.error :
		    "the plugin's check failed");
	free(ctx.error);
	return rc != 0 ? -1 : 0;
}

/*
 * For consumersd -t: load a pool's plugin in a child process (loading
 * runs the plugin's constructors, which the master never does) and check
 * its descriptor.  Returns 0, or -1 with why.
 */
int
child_probe(const struct pool_conf *pc, char *why, size_t whylen)
{
	const struct cns_plugin *pl;
	int fds[2], status;
	ssize_t n;
	pid_t pid;

	if (pipe2(fds, O_CLOEXEC) == -1) {
		snprintf(why, whylen, "pipe: %s", strerror(errno));
		return -1;
	}
	fflush(NULL);
	if ((pid = fork()) == -1) {
		snprintf(why, whylen, "fork: %s", strerror(errno));
		close(fds[0]);
		close(fds[1]);
		return -1;
	}
	if (pid == 0) {
		close(fds[0]);
		/* Loading runs the plugin's constructors: as its user. */
		if (pc->user != NULL && geteuid() == 0 &&
		    (initgroups(pc->user, pc->gid) == -1 ||
		    setgid(pc->gid) == -1 || setuid(pc->uid) == -1)) {
			snprintf(why, whylen, "cannot run as user %s: %s",
			    pc->user, strerror(errno));
			if (write(fds[1], why, strlen(why)) == -1)
				_exit(2);
			_exit(0);
		}
		/* The worker's environment, so a plugin's check finds
		 * programs on the PATH the worker will have. */
		{
			const char *k;
			json_t *keep = json_object(), *v;
			size_t i;

			json_array_foreach(pc->env_keep, i, v) {
				const char *val = getenv(json_string_value(v));
				if (val != NULL)
					json_object_set_new(keep,
					    json_string_value(v),
					    json_string(val));
			}
			clearenv();
			setenv("PATH", "/usr/local/bin:/usr/bin:/bin", 1);
			json_object_foreach(keep, k, v)
				setenv(k, json_string_value(v), 1);
			json_object_foreach(pc->env, k, v)
				setenv(k, json_string_value(v), 1);
			json_decref(keep);
		}
		if (plugin_open(pc->plugin, &pl, why, whylen) == -1 ||
		    probe_check(pc, pl, why, whylen) == -1) {
			if (write(fds[1], why, strlen(why)) == -1)
				_exit(2);
		}
		_exit(0);
	}
	close(fds[1]);
	n = read(fds[0], why, whylen - 1);
	close(fds[0]);
	while (waitpid(pid, &status, 0) == -1 && errno == EINTR)
		;
	if (n > 0) {
		why[n] = '\0';
		return -1;
	}
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		char *how = cns_describe_exit(status);
		snprintf(why, whylen, "loading plugin %s: the process %s",
		    pc->plugin, how);
		free(how);
		return -1;
	}
	return 0;
}

void
child_main(int fd, const struct pool_conf *pc, unsigned slot,
    struct worker_shm *shm)
{
	struct child ch = { .fd = fd, .pc = pc, .slot = slot, .shm = shm };
	struct frame_hdr h;
	sigset_t all;
	char *payload;
	json_t *ready;
	int null;

	for (int sig = 1; sig < NSIG; sig++)
		signal(sig, SIG_DFL);
	sigemptyset(&all);
	sigprocmask(SIG_SETMASK, &all, NULL);
	prctl(PR_SET_PDEATHSIG, SIGTERM);
	log_worker();
	if ((null = open("/dev/null", O_RDONLY | O_CLOEXEC)) != -1) {
		dup2(null, STDIN_FILENO);
		close(null);
	}
	cns_proctitle("consumersd: pool %s worker %u", pc->name, slot);
	if ((ch.buf = malloc(CHILD_READ)) == NULL)
		fatal("%s: malloc", __func__);
	ch.cap = CHILD_READ;

	child_identity(&ch, getppid());
	child_load(&ch);
	ready = json_pack("{s:b}", "complete", ch.pl->complete != NULL);
	child_write_json(&ch, F_READY, 0, ready, NULL);
	json_decref(ready);

	while (child_read(&ch, &h, &payload)) {
		if (h.type == F_BEGIN)
			child_consume(&ch, h.stream, payload, h.len);
		else if (h.type == F_COMPLETE)
			child_complete(&ch, h.stream, payload, h.len);
		else
			child_protocol(&ch, "unexpected frame between streams");
	}
	if (ch.pl->fini != NULL)
		ch.pl->fini(ch.state);
	child_exit(&ch, 0);
}
