/*
 * worker.c - the master's side of worker processes, as processes:
 * spawning, the table keyed by pid, their sockets, reaping, stopping, and
 * the one path for "a worker is gone", whether it exited, crashed, was
 * killed or broke the protocol.  What a worker's frames and its end mean
 * is dispatch.c's: it hears them through the two hooks set with
 * worker_on(), as a tmux peer's dispatch callback does (a gone worker is
 * that path's NULL message).  A gone worker leaves the table at once and
 * is freed once the callback that saw it go has returned (cns_later), so
 * no caller is left holding freed memory.
 */
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
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
static unsigned long	 worker_strangers;	/* reaped orphans */
static int		(*hook_frame)(struct worker *, const struct frame_hdr *,
			    struct evbuffer *);
static void		(*hook_gone)(struct worker *, const char *how);

/* Who hears a worker's frames (returns -1 when it dropped the worker)
 * and its end. */
void
worker_on(int (*frame)(struct worker *, const struct frame_hdr *,
    struct evbuffer *), void (*gone)(struct worker *, const char *))
{
	hook_frame = frame;
	hook_gone = gone;
}

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
void
worker_protocol(struct worker *w, const char *why)
{
	log_warnx("pool %s: worker %u (pid %ld): protocol error: %s; "
	    "killing it", w->pool->pc->name, w->slot, (long)w->pid, why);
	if (!w->reaped)		/* else its pid may be another process's */
		kill(w->pid, SIGKILL);
	worker_drop_socket(w);
	w->closed = 1;
	if (w->reaped)
		worker_gone(w);
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
		if (hook_frame(w, &h, in) == -1)
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
		/* It leads its own process group: what it starts is killed
		 * with it (worker_kill_descendants). */
		setpgid(0, 0);
		close(sv[0]);
		if (dup2(sv[1], WORKER_FD) == -1)
			_exit(1);
		if (out[1] != -1 && (dup2(out[1], STDOUT_FILENO) == -1 ||
		    dup2(out[1], STDERR_FILENO) == -1))
			_exit(1);
		close_range(WORKER_FD + 1, ~0U, 0);
		child_main(WORKER_FD, p->pc, slot, shm);
	}
	setpgid(pid, pid);	/* either side may do it first */
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
	w->forked_at = cns_now();
	w->forked_wall = time(NULL);
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
 * Everything a dead worker started dies with it: the processes of the
 * group it led, and any orphan reparented to the master (a subreaper, see
 * main) that is not a worker, such as a program a plugin ran in a group
 * of its own.  An orphan still in the group of a live worker is that
 * worker's (a daemon its plugin started with a double fork) and lives on.
 * They are found in /proc (no waiting), killed with SIGKILL and later
 * reaped by worker_reap as strangers.  Returns how many.
 */
static unsigned
worker_kill_descendants(pid_t pgid)
{
	char path[64], buf[512], state, *end, *p;
	long pid, ppid, pgrp, self = (long)getpid();
	struct worker *owner;
	struct dirent *de;
	unsigned n = 0;
	ssize_t len;
	DIR *d;
	int fd;

	if ((d = opendir("/proc")) != NULL) {
		while ((de = readdir(d)) != NULL) {
			pid = strtol(de->d_name, &end, 10);
			if (*end != '\0' || pid <= 0 || pid == self)
				continue;
			snprintf(path, sizeof path, "/proc/%ld/stat", pid);
			if ((fd = open(path, O_RDONLY | O_CLOEXEC)) == -1)
				continue;
			len = read(fd, buf, sizeof buf - 1);
			close(fd);
			if (len <= 0)
				continue;
			buf[len] = '\0';
			if ((p = strrchr(buf, ')')) == NULL ||
			    sscanf(p + 1, " %c %ld %ld", &state, &ppid,
			    &pgrp) != 3 || state == 'Z' || state == 'X')
				continue;
			if (pgrp != (long)pgid && (ppid != self ||
			    worker_find((pid_t)pid) != NULL))
				continue;
			if (pgrp != (long)pgid && pgrp > 0 &&
			    (owner = worker_find((pid_t)pgrp)) != NULL &&
			    !owner->reaped)
				continue;
			if (kill((pid_t)pid, SIGKILL) == 0)
				n++;
		}
		closedir(d);
	}
	kill(-pgid, SIGKILL);	/* any that /proc did not show */
	return n;
}

/*
 * What a dead worker wrote and the loop has not read yet (its INITFAIL,
 * its last RESULT), into its input.  A bufferevent keeps its input's end
 * frozen but while it reads itself, and evbuffer_read fails on a frozen
 * buffer: unfrozen here, else the frames would be dropped with the
 * socket whenever SIGCHLD is heard before the socket's read event.
 * What a dead worker left is at most a socket buffer; a process that
 * still holds its end (one of its descendants not killed yet) could keep
 * writing, so the reading stops after 16 MiB.  (evbuffer_read may read
 * less than asked while more is there: a short read is not the end.)
 */
static void
worker_read_rest(struct worker *w)
{
	struct evbuffer *in = bufferevent_get_input(w->bev);
	int fd = bufferevent_getfd(w->bev), got;
	size_t total = 0;

	evbuffer_unfreeze(in, 0);
	while (total < (16u << 20) &&
	    (got = evbuffer_read(in, fd, 256 << 10)) > 0)
		total += (size_t)got;
	evbuffer_freeze(in, 0);
}

/*
 * SIGCHLD: reap every child.  A dead worker's descendants are killed
 * while it is still a zombie: until it is reaped its pid, the number of
 * its process group, cannot be given to a new process, which
 * worker_kill_descendants would otherwise kill.  Its last frames may
 * still sit in its socket, so they are read before it is declared gone.
 */
void
worker_reap(void)
{
	struct worker *w;
	siginfo_t si;
	unsigned n;
	int status;
	pid_t pid, r;

	for (;;) {
		memset(&si, 0, sizeof si);
		if (waitid(P_ALL, 0, &si, WEXITED | WNOHANG | WNOWAIT) == -1) {
			if (errno == EINTR)
				continue;
			break;
		}
		if ((pid = si.si_pid) == 0)
			break;
		if ((w = worker_find(pid)) != NULL &&
		    (n = worker_kill_descendants(pid)) > 0)
			log_warnx("pool %s: worker %u (pid %ld) is gone; killed "
			    "%u descendant%s", w->pool->pc->name, w->slot,
			    (long)pid, n, n == 1 ? "" : "s");
		while ((r = waitpid(pid, &status, WNOHANG)) == -1 &&
		    errno == EINTR)
			;
		if (r != pid) {
			log_warn("waitpid %ld", (long)pid);
			break;		/* cannot happen; never spin */
		}
		if (w == NULL) {
			/* An orphan of a worker, reparented to the master. */
			worker_strangers++;
			log_debug("reaped pid %ld, left by a worker (%lu so "
			    "far)", (long)pid, worker_strangers);
			continue;
		}
		w->status = status;
		w->reaped = 1;
		if (w->bev != NULL) {
			worker_read_rest(w);
			worker_readcb(w->bev, w);
			if (w->gone)
				continue;	/* already dropped */
			worker_drop_socket(w);
			w->closed = 1;
		}
		if (w->closed)
			worker_gone(w);
	}
}

static void
worker_free(void *arg)
{
	struct worker *w = arg;

	if (w->shm != NULL)
		munmap(w->shm, sizeof *w->shm);
	free(w);
}

static void
worker_gone(struct worker *w)
{
	struct pool *p = w->pool;
	char *how;

	if (w->gone)
		return;
	w->gone = 1;
	tap_sync(w->pid);	/* its last words before its death */
	how = crash_describe(w->timed_out, p->pc->item_timeout, w->status);
	worker_unhash(w);
	TAILQ_REMOVE(&p->workers, w, entry);
	p->nworkers--;
	if (w->state == W_IDLE)
		p->nidle--;
	if (w->state == W_EXITING && WIFEXITED(w->status) &&
	    WEXITSTATUS(w->status) == 0)
		log_debug("pool %s: worker %u (pid %ld) exited", p->pc->name,
		    w->slot, (long)w->pid);
	else if (!w->init_failed) {
		struct log_fields f = { p->pc->name, 0, w->pid, (uid_t)-1 };
		if (w->stream != NULL)
			stream_log_fields(w->stream, &f);
		f.worker_pid = w->pid;
		log_set_fields(&f);
		log_warnx("pool %s: worker %u (pid %ld) %s%s", p->pc->name,
		    w->slot, (long)w->pid, how, w->stream != NULL ?
		    " during a stream" : "");
		log_set_fields(NULL);
	}
	hook_gone(w, how);
	free(how);
	cns_later(worker_free, w);
	cns_changed();		/* a stop, or the start, may wait for it */
}

/* The worker starts a consume call of stream s, as its lane i. */
void
worker_bind(struct worker *w, struct stream *s, unsigned i)
{
	w->stream = s;
	w->index = i;
	memset(&w->credit, 0, sizeof w->credit);
	w->sent = w->rejected = 0;
	w->returned = 0;
	w->watch_cur = w->watch_started = 0;
	w->timed_out = 0;
	/* The page still says where its last stream was; a worker that dies
	 * before it reads BEGIN must not be taken to be there. */
	if (w->shm != NULL)
		memset(w->shm, 0, sizeof *w->shm);
}

/* Workers of the first start not yet ready nor gone. */
unsigned
worker_starting(void)
{
	unsigned n = 0;

	for (unsigned i = 0; i < WORKER_HASH; i++)
		for (struct worker *w = worker_table[i]; w; w = w->hnext)
			n += w->startup != 0;
	return n;
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
		for (struct worker *w = worker_table[i]; w; w = w->hnext) {
			kill(w->pid, SIGKILL);
			kill(-w->pid, SIGKILL);
		}
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
	switch (crash_watch(cur, started, w->watch_cur, w->watch_started,
	    w->watch_since, now, w->pool->pc->item_timeout)) {
	case WATCH_NONE:
		w->watch_cur = 0;
		return;
	case WATCH_MOVED:
		w->watch_cur = cur;
		w->watch_started = started;
		w->watch_since = now;
		return;
	case WATCH_WAIT:
		return;
	case WATCH_KILL:
		break;
	}
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
