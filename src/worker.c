/*
 * worker.c - the master's side of worker processes: spawning, the table
 * keyed by pid, reading their frames, and the one path for "a worker is
 * gone", whether it exited, crashed, was killed or broke the protocol.
 */
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/util.h>

#include "consumersd.h"

#define WORKER_HASH	64
#define WORKER_FD	3	/* the socket's number in the child */

static struct worker	*worker_table[WORKER_HASH];
static unsigned		 worker_total;

static void	worker_gone(struct worker *);
static void	worker_readcb(struct bufferevent *, void *);

struct worker *
worker_find(pid_t pid)
{
	struct worker *w = worker_table[(unsigned)pid % WORKER_HASH];

	while (w != NULL && w->pid != pid)
		w = w->hnext;
	return w;
}

static void
worker_unhash(struct worker *w)
{
	struct worker **pp = &worker_table[(unsigned)w->pid % WORKER_HASH];

	while (*pp != NULL && *pp != w)
		pp = &(*pp)->hnext;
	if (*pp == w)
		*pp = w->hnext;
	worker_total--;
}

unsigned
worker_count(void)
{
	return worker_total;
}

char *
worker_describe_exit(int status)
{
	char *s = NULL;
	int r;

	if (WIFSIGNALED(status))
		r = asprintf(&s, "killed by signal %d (%s)%s", WTERMSIG(status),
		    strsignal(WTERMSIG(status)),
		    WCOREDUMP(status) ? ", core dumped" : "");
	else
		r = asprintf(&s, "exited with status %d", WEXITSTATUS(status));
	if (r == -1)
		fatal("%s: asprintf", __func__);
	return s;
}

/* Close the master's end of the worker's socket, dropping unsent frames. */
static void
worker_drop_socket(struct worker *w)
{
	if (w->bev == NULL)
		return;
	flush_cancel(&w->out, 0);
	bufferevent_free(w->bev);
	w->bev = NULL;
}

/* A worker that breaks the protocol is killed; worker_gone follows. */
static void
worker_protocol(struct worker *w, const char *why)
{
	log_warnx("pool %s: worker %u (pid %ld): protocol error: %s; "
	    "killing it", w->pool->pc->name, w->slot, (long)w->pid, why);
	kill(w->pid, SIGKILL);
	worker_drop_socket(w);
	w->closed = 1;
	if (w->reaped)
		worker_gone(w);
}

static json_t *
worker_json(struct worker *w, struct evbuffer *in, size_t len)
{
	json_t *v = json_loadb((const char *)evbuffer_pullup(in,
	    (ev_ssize_t)len), len, JSON_DECODE_ANY, NULL);

	evbuffer_drain(in, len);
	if (v == NULL || !json_is_object(v)) {
		json_decref(v);
		worker_protocol(w, "payload is not a JSON object");
		return NULL;
	}
	return v;
}

/* Handle one frame; returns -1 when the worker was dropped. */
static int
worker_dispatch(struct worker *w, const struct frame_hdr *h,
    struct evbuffer *in)
{
	struct stream *s = w->stream;
	uint32_t ack[2];
	uint64_t seq;
	json_t *v;
	int r;

	if (h->type != F_READY && h->type != F_INITFAIL &&
	    (s == NULL || h->stream != s->id)) {
		if (w->state == W_EXITING) {
			/* Stopped inside a stream that ended without it:
			 * what it still says is moot. */
			evbuffer_drain(in, h->len);
			return 0;
		}
		worker_protocol(w, "frame for a stream it does not hold");
		return -1;
	}
	switch (h->type) {
	case F_READY:
		if (w->state == W_EXITING) {
			/* Stopped while it started (its pool retired). */
			evbuffer_drain(in, h->len);
			break;
		}
		if (w->state != W_STARTING) {
			worker_protocol(w, "READY twice");
			return -1;
		}
		if ((v = worker_json(w, in, h->len)) == NULL)
			return -1;
		w->pool->has_complete = json_is_true(json_object_get(v,
		    "complete"));
		json_decref(v);
		log_debug("pool %s: worker %u (pid %ld) ready",
		    w->pool->pc->name, w->slot, (long)w->pid);
		if (w->startup) {
			w->startup = 0;
			cns_worker_settled();
		}
		pool_idle(w->pool, w);
		break;
	case F_INITFAIL: {
		char *msg = malloc((size_t)h->len + 1);
		if (msg == NULL)
			fatal("%s: malloc", __func__);
		evbuffer_remove(in, msg, h->len);
		msg[h->len] = '\0';
		utf8_clean(msg);
		log_warnx("pool %s: worker %u (pid %ld) failed to start: %s",
		    w->pool->pc->name, w->slot, (long)w->pid, msg);
		free(w->pool->last_error);
		w->pool->last_error = msg;
		w->init_failed = 1;
		break;
	}
	case F_ACK:
		evbuffer_remove(in, ack, sizeof ack);
		if (stream_ack(s, w, ack[0], ack[1]) == -1) {
			worker_protocol(w, "acknowledged more than it was sent");
			return -1;
		}
		break;
	case F_REJECT: {
		size_t tlen = h->len - 8;
		char *why = malloc(tlen + 1);
		if (why == NULL)
			fatal("%s: malloc", __func__);
		evbuffer_remove(in, &seq, 8);
		evbuffer_remove(in, why, tlen);
		why[tlen] = '\0';
		utf8_clean(why);
		r = stream_reject(s, w, seq, why);
		free(why);
		if (r == -1) {
			worker_protocol(w, "a rejection for an item it does "
			    "not hold");
			return -1;
		}
		break;
	}
	case F_RESULT:
		if ((v = worker_json(w, in, h->len)) == NULL)
			return -1;
		r = stream_result(s, w, v);
		json_decref(v);
		if (r == -1) {
			worker_protocol(w, "a result that does not add up");
			return -1;
		}
		break;
	case F_COMPLETION:
		if ((v = worker_json(w, in, h->len)) == NULL)
			return -1;
		stream_completion(s, w, v);
		json_decref(v);
		break;
	}
	return 0;
}

static void
worker_readcb(struct bufferevent *bev, void *arg)
{
	struct worker *w = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	struct frame_hdr h;
	char why[128];
	int r;

	while ((r = frame_pull(in, &h, why, sizeof why)) == 1)
		if (worker_dispatch(w, &h, in) == -1)
			return;
	if (r == -1)
		worker_protocol(w, why);
}

/* What the socket did not take at once has drained. */
static void
worker_writecb(struct bufferevent *bev, void *arg)
{
	struct worker *w = arg;

	(void)bev;
	flush_drained(&w->out);
}

static void
worker_eventcb(struct bufferevent *bev, short what, void *arg)
{
	struct worker *w = arg;

	(void)bev;
	if (!(what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)))
		return;
	worker_drop_socket(w);
	w->closed = 1;
	if (w->reaped)
		worker_gone(w);
	else if (w->state != W_EXITING)
		kill(w->pid, SIGKILL);	/* closed its socket but lives on */
}

struct worker *
worker_spawn(struct pool *p, unsigned slot)
{
	struct worker_shm *shm;
	struct worker *w;
	int sv[2], out[2] = { -1, -1 };
	pid_t pid;

	shm = mmap(NULL, sizeof *shm, PROT_READ | PROT_WRITE,
	    MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (shm == MAP_FAILED) {
		log_warn("pool %s: mmap", p->pc->name);
		return NULL;
	}
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == -1) {
		log_warn("pool %s: socketpair", p->pc->name);
		munmap(shm, sizeof *shm);
		return NULL;
	}
	if (tap_pipe(out) == -1)
		out[0] = out[1] = -1;
	fflush(NULL);
	if ((pid = fork()) == -1) {
		log_warn("pool %s: fork", p->pc->name);
		close(sv[0]);
		close(sv[1]);
		if (out[0] != -1) {
			close(out[0]);
			close(out[1]);
		}
		munmap(shm, sizeof *shm);
		return NULL;
	}
	if (pid == 0) {
		close(sv[0]);
		if (dup2(sv[1], WORKER_FD) == -1)
			_exit(1);
		if (out[1] != -1 && (dup2(out[1], STDOUT_FILENO) == -1 ||
		    dup2(out[1], STDERR_FILENO) == -1))
			_exit(1);
		close_range(WORKER_FD + 1, ~0U, 0);
		child_main(WORKER_FD, p->pc, slot, shm);
	}
	close(sv[1]);
	if (out[0] != -1) {
		close(out[1]);
		tap_start(out[0], p->pc->name, slot, pid);
	}
	/* Workers forked later must not see this one's page. */
	madvise(shm, sizeof *shm, MADV_DONTFORK);
	if ((w = calloc(1, sizeof *w)) == NULL)
		fatal("%s: calloc", __func__);
	w->pid = pid;
	w->shm = shm;
	w->pool = p;
	w->slot = slot;
	w->state = W_STARTING;
	w->startup = cns_startup;
	evutil_make_socket_nonblocking(sv[0]);
	w->bev = bufferevent_socket_new(cns_base, sv[0], BEV_OPT_CLOSE_ON_FREE);
	if (w->bev == NULL)
		fatalx("%s: bufferevent_socket_new", __func__);
	bufferevent_setcb(w->bev, worker_readcb, worker_writecb, worker_eventcb,
	    w);
	bufferevent_set_max_single_read(w->bev, 256u << 10);
	bufferevent_enable(w->bev, EV_READ);
	flush_init(&w->out, w->bev, 0);
	w->hnext = worker_table[(unsigned)pid % WORKER_HASH];
	worker_table[(unsigned)pid % WORKER_HASH] = w;
	worker_total++;
	TAILQ_INSERT_TAIL(&p->workers, w, entry);
	p->nworkers++;
	log_debug("pool %s: worker %u started, pid %ld", p->pc->name, slot,
	    (long)pid);
	return w;
}

/*
 * SIGCHLD: reap every child.  A dead worker's last frames may still sit in
 * its socket, so they are read before it is declared gone.
 */
void
worker_reap(void)
{
	struct worker *w;
	int status;
	pid_t pid;

	while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
		if ((w = worker_find(pid)) == NULL)
			continue;
		w->status = status;
		w->reaped = 1;
		if (w->bev != NULL) {
			struct evbuffer *in = bufferevent_get_input(w->bev);
			int fd = bufferevent_getfd(w->bev);
			while (evbuffer_read(in, fd, 256u << 10) > 0)
				;
			worker_readcb(w->bev, w);
			if (worker_find(pid) != w)
				continue;	/* already dropped */
			worker_drop_socket(w);
			w->closed = 1;
		}
		if (w->closed)
			worker_gone(w);
	}
}

static void
worker_gone(struct worker *w)
{
	struct pool *p = w->pool;
	char *how;

	if (w->timed_out != 0) {
		int r;
		if (w->timed_out == TIMEOUT_END)
			r = asprintf(&how, "killed after item_timeout (%g s): "
			    "consume did not return after its items ended",
			    p->pc->item_timeout);
		else if (w->timed_out == TIMEOUT_COMPLETE)
			r = asprintf(&how, "killed after item_timeout (%g s) "
			    "in the completion handler", p->pc->item_timeout);
		else
			r = asprintf(&how, "killed after item_timeout (%g s) "
			    "on item %" PRIu64, p->pc->item_timeout,
			    w->timed_out);
		if (r == -1)
			fatal("%s: asprintf", __func__);
	} else
		how = worker_describe_exit(w->status);

	worker_unhash(w);
	TAILQ_REMOVE(&p->workers, w, entry);
	p->nworkers--;
	if (w->state == W_IDLE)
		p->nidle--;
	if (w->state == W_EXITING && WIFEXITED(w->status) &&
	    WEXITSTATUS(w->status) == 0)
		log_debug("pool %s: worker %u (pid %ld) exited", p->pc->name,
		    w->slot, (long)w->pid);
	else if (!w->init_failed)
		log_warnx("pool %s: worker %u (pid %ld) %s%s", p->pc->name,
		    w->slot, (long)w->pid, how, w->stream != NULL ?
		    " during a stream" : "");
	if (w->stream != NULL)
		stream_worker_gone(w->stream, w, how);
	if (w->startup)
		cns_worker_settled();
	/* A worker that dies before it served any stream counts as a failed
	 * start, so a plugin that crashes just after init backs off. */
	pool_worker_gone(p, w, w->init_failed ||
	    (w->streams_served == 0 && w->stream == NULL &&
	    w->state != W_EXITING));
	free(how);
	if (w->shm != NULL)
		munmap(w->shm, sizeof *w->shm);
	free(w);
	cns_maybe_exit();
}

void
worker_send(struct worker *w, uint16_t type, uint64_t stream,
    const void *p, size_t len)
{
	if (w->bev != NULL) {
		frame_put(bufferevent_get_output(w->bev), type, stream, p, len);
		flush_later(&w->out);
	}
}

void
worker_send_json(struct worker *w, uint16_t type, uint64_t stream, json_t *v)
{
	if (w->bev != NULL) {
		frame_put_json(bufferevent_get_output(w->bev), type, stream, v);
		flush_later(&w->out);
	}
}

/* The worker's output, for frames the caller adds now (written at the
 * end of the loop turn); NULL once its socket is gone. */
struct evbuffer *
worker_output(struct worker *w)
{
	if (w->bev == NULL)
		return NULL;
	flush_later(&w->out);
	return bufferevent_get_output(w->bev);
}

/* Its socket is still there: frames can be sent to it. */
int
worker_alive(const struct worker *w)
{
	return w->bev != NULL;
}

/* Ask a worker to exit: it sees EOF on its socket, runs fini and exits. */
void
worker_stop(struct worker *w)
{
	if (w->state == W_IDLE)
		w->pool->nidle--;
	w->state = W_EXITING;
	if (w->bev != NULL) {
		flush_cancel(&w->out, 1);	/* frames before the EOF */
		shutdown(bufferevent_getfd(w->bev), SHUT_WR);
	}
}

void
worker_stop_all(void)
{
	for (unsigned i = 0; i < WORKER_HASH; i++)
		for (struct worker *w = worker_table[i]; w; w = w->hnext)
			worker_stop(w);
}

void
worker_kill_all(void)
{
	for (unsigned i = 0; i < WORKER_HASH; i++)
		for (struct worker *w = worker_table[i]; w; w = w->hnext)
			kill(w->pid, SIGKILL);
}

/*
 * item_timeout: a leased worker that has held the same item since `now`
 * minus the timeout is killed, and handled as a crash on that item.  So
 * is one whose consume call has not returned that long after its items
 * ended, or whose completion handler runs that long: nothing else would
 * end those streams.
 */
void
worker_watch(struct worker *w, double now)
{
	struct stream *s = w->stream;
	uint64_t cur, started = 0;
	const char *what;

	if (w->shm == NULL || s == NULL || w->state != W_LEASED ||
	    w->timed_out != 0 || w->reaped || w->closed)
		return;
	if (s->state == S_COMPLETING && w == s->completer)
		cur = TIMEOUT_COMPLETE;
	else if (s->state != S_RUNNING || w->returned)
		cur = 0;
	else {
		cur = shm_load(&w->shm->cur);
		started = shm_load(&w->shm->started);
		if (cur == 0 && shm_load(&w->shm->ended))
			cur = TIMEOUT_END;
	}
	if (cur == 0) {
		w->watch_cur = 0;
		return;
	}
	if (cur != w->watch_cur || started != w->watch_started) {
		w->watch_cur = cur;
		w->watch_started = started;
		w->watch_since = now;
		return;
	}
	if (now - w->watch_since < w->pool->pc->item_timeout)
		return;
	what = cur == TIMEOUT_COMPLETE ? "in its completion handler" :
	    cur == TIMEOUT_END ? "in consume after its items ended" : NULL;
	if (what != NULL)
		log_warnx("pool %s: worker %u (pid %ld) has spent more than %g "
		    "s %s, stream %" PRIu64 " (item_timeout); killing it",
		    w->pool->pc->name, w->slot, (long)w->pid,
		    w->pool->pc->item_timeout, what, s->id);
	else
		log_warnx("pool %s: worker %u (pid %ld) has spent more than %g "
		    "s on item %" PRIu64 " of stream %" PRIu64 " (item_timeout);"
		    " killing it", w->pool->pc->name, w->slot, (long)w->pid,
		    w->pool->pc->item_timeout, cur, s->id);
	w->timed_out = cur;
	kill(w->pid, SIGKILL);
}
