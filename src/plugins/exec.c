/*
 * exec - consumers written in any language.  Each consume call runs the
 * pool's program once: its standard input gets this consumer's items as
 * NDJSON and is closed when they end; its standard output, once it has
 * exited, is one JSON value, the consumer's result.  kwargs.complete
 * names a completion program the same way: it reads the results array as
 * one line and writes the completion.  See consumers-exec(3).
 *
 * One poll() loop writes the program's input and reads its output and
 * errors, so a program that writes a lot before it has read its input
 * cannot deadlock it; an item is pulled from the daemon only when the
 * program's stdin can take more, so a slow program slows the client and
 * the worker holds at most a pipe's worth of items.
 */
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <consumers/plugin.h>

extern char **environ;

#define CHUNK		(64u << 10)	/* input bytes pulled ahead at most */
#define STDERR_TAIL	2048		/* default kwargs.stderr_tail */
#define STDERR_TAIL_MAX	(1u << 20)
#define MAX_OUTPUT	(16u << 20)	/* default kwargs.max_output */
#define MAX_OUTPUT_MAX	(256u << 20)	/* a result frame's limit */

struct prog {
	char		*path;		/* what is executed */
	char		**argv;		/* argv[0] as the pool gave it */
	char		*label;		/* path and arguments, for errors */
};

struct exec_conf {
	struct prog	 run;
	struct prog	 complete;	/* path NULL without one */
	size_t		 stderr_tail;
	size_t		 max_output;
};

/* Bytes: the input not yet written, the output read so far. */
struct buf {
	char		*p;
	size_t		 len, off, cap;
};

/* Each input line appended, by where it ends, until the program read it. */
struct mark {
	uint64_t	 seq;
	uint64_t	 end;		/* offset just past its newline */
};

struct run {
	const struct exec_conf	*ec;
	const struct prog	*prog;
	const cns_ctx		*ctx;
	cns_items		*items;		/* NULL: the input is `in` only */
	pid_t			 pid;
	int			 fd_in, fd_keep, fd_out, fd_err, pidfd;
	int			 status, exited, killed_big, exec_errno;
	int			 items_ended;
	struct buf		 in, out;
	uint64_t		 appended, written;
	struct mark		*marks;		/* a ring */
	size_t			 mhead, mlen, mcap;
	char			*tail;		/* the last stderr bytes, a ring */
	size_t			 tail_len, tail_pos;
	uint64_t		 err_total;
};

static void
prog_free(struct prog *p)
{
	if (p->argv != NULL)
		for (char **a = p->argv; *a != NULL; a++)
			free(*a);
	free(p->argv);
	free(p->path);
	free(p->label);
}

static void
conf_free(struct exec_conf *ec)
{
	if (ec == NULL)
		return;
	prog_free(&ec->run);
	prog_free(&ec->complete);
	free(ec);
}

/* A regular file we may execute: 0, or -1 with why. */
static int
check_file(const char *path, char *why, size_t len)
{
	struct stat st;

	if (stat(path, &st) == -1) {
		snprintf(why, len, "%s", strerror(errno));
		return -1;
	}
	if (!S_ISREG(st.st_mode)) {
		snprintf(why, len, "not a regular file");
		return -1;
	}
	if (access(path, X_OK) == -1) {
		snprintf(why, len, "not executable (%s)", strerror(errno));
		return -1;
	}
	return 0;
}

/*
 * The program to run: an absolute path as is, a bare name looked up on
 * the worker's PATH once, here.  A relative path with a slash would
 * depend on the worker's working directory: refused.
 */
static char *
resolve(const cns_ctx *ctx, const char *what, const char *name)
{
	const char *path = getenv("PATH"), *p, *e;
	char why[256], *full;

	if (name[0] == '/') {
		if (check_file(name, why, sizeof why) == -1) {
			cns_fail(ctx, "%s: program %s: %s", what, name, why);
			return NULL;
		}
		if ((full = strdup(name)) == NULL)
			cns_fail(ctx, "out of memory");
		return full;
	}
	if (strchr(name, '/') != NULL || name[0] == '\0') {
		cns_fail(ctx, "%s: program \"%s\" is a relative path: give an "
		    "absolute path, or a bare name to look up on PATH", what,
		    name);
		return NULL;
	}
	for (p = path != NULL ? path : ""; *p != '\0'; p = *e ? e + 1 : e) {
		if ((e = strchr(p, ':')) == NULL)
			e = p + strlen(p);
		if (e == p || *p != '/')
			continue;	/* empty or relative: not a place */
		if (asprintf(&full, "%.*s/%s", (int)(e - p), p, name) == -1) {
			cns_fail(ctx, "out of memory");
			return NULL;
		}
		if (check_file(full, why, sizeof why) == 0)
			return full;
		free(full);
	}
	cns_fail(ctx, "%s: program \"%s\" not found on PATH (%s): give its "
	    "absolute path, or set PATH in the pool's \"env\"", what, name,
	    path != NULL ? path : "unset");
	return NULL;
}

/* "/usr/bin/python3 /srv/count.py": what errors call the program, cut
 * short at LABEL_MAX bytes. */
#define LABEL_MAX	120
static int
label(const cns_ctx *ctx, struct prog *p)
{
	size_t len = strlen(p->path);

	for (char **a = p->argv + 1; *a != NULL; a++)
		len += 1 + strlen(*a);
	if ((p->label = malloc(len + 1)) == NULL) {
		cns_fail(ctx, "out of memory");
		return -1;
	}
	strcpy(p->label, p->path);
	for (char **a = p->argv + 1; *a != NULL; a++) {
		strcat(p->label, " ");
		strcat(p->label, *a);
	}
	if (len > LABEL_MAX)
		strcpy(p->label + LABEL_MAX - 3, "...");
	return 0;
}

/* A program and its arguments from a JSON array of strings. */
static int
prog_load(const cns_ctx *ctx, const char *what, json_t *a, struct prog *p)
{
	size_t i, n;
	json_t *v;

	if (!json_is_array(a) || (n = json_array_size(a)) == 0) {
		cns_fail(ctx, "%s must be a non-empty array of strings: the "
		    "program and its arguments, e.g. [\"/usr/bin/python3\", "
		    "\"/srv/count.py\"]", what);
		return -1;
	}
	if ((p->argv = calloc(n + 1, sizeof *p->argv)) == NULL) {
		cns_fail(ctx, "out of memory");
		return -1;
	}
	json_array_foreach(a, i, v) {
		if (!json_is_string(v) || strlen(json_string_value(v)) !=
		    json_string_length(v)) {
			cns_fail(ctx, "%s[%zu] must be a string without NUL "
			    "bytes", what, i);
			return -1;
		}
		if ((p->argv[i] = strdup(json_string_value(v))) == NULL) {
			cns_fail(ctx, "out of memory");
			return -1;
		}
	}
	if ((p->path = resolve(ctx, what, p->argv[0])) == NULL)
		return -1;
	return label(ctx, p);
}

static int
get_size(const cns_ctx *ctx, json_t *kw, const char *key, size_t min,
    size_t max, size_t *out)
{
	json_t *v = json_object_get(kw, key);

	if (v == NULL)
		return 0;
	if (!json_is_integer(v) || json_integer_value(v) < (json_int_t)min ||
	    (uint64_t)json_integer_value(v) > max) {
		cns_fail(ctx, "kwargs.%s must be an integer from %zu to %zu "
		    "(bytes)", key, min, max);
		return -1;
	}
	*out = (size_t)json_integer_value(v);
	return 0;
}

/*
 * Python consumers import consumers_client from where make install put
 * it, whatever the pool's environment: PYTHONPATH gets its directory,
 * after the pool's own PYTHONPATH if it has one.  It is looked for under
 * what this plugin is installed under, so a staged or moved install
 * (DESTDIR, a package's root) finds its own copy; run from the build
 * tree, nothing is added.
 */
static void
python_path(void)
{
#if defined(CNS_PYTHON_DIR) && defined(CNS_PLUGIN_DIR)
	const char *pp = getenv("PYTHONPATH");
	size_t dl, pl = strlen(CNS_PLUGIN_DIR);
	char dir[PATH_MAX], mod[PATH_MAX], *slash, *both;
	Dl_info info;
	int n;

	if (dladdr((void *)python_path, &info) == 0 || info.dli_fname == NULL ||
	    snprintf(dir, sizeof dir, "%s", info.dli_fname) >= (int)sizeof dir ||
	    (slash = strrchr(dir, '/')) == NULL)
		return;
	*slash = '\0';
	dl = strlen(dir);
	if (dl < pl || strcmp(dir + dl - pl, CNS_PLUGIN_DIR) != 0)
		return;
	dir[dl - pl] = '\0';		/* DESTDIR, or "" */
	n = snprintf(mod, sizeof mod, "%s%s/consumers_client.py", dir,
	    CNS_PYTHON_DIR);
	if (n < 0 || n >= (int)sizeof mod || access(mod, R_OK) == -1)
		return;
	*strrchr(mod, '/') = '\0';
	if (pp == NULL || *pp == '\0')
		setenv("PYTHONPATH", mod, 1);
	else if (asprintf(&both, "%s:%s", pp, mod) != -1) {
		setenv("PYTHONPATH", both, 1);
		free(both);
	}
#endif
}

static int
exec_init(const cns_ctx *ctx, void **state)
{
	json_t *kw = cns_kwargs(ctx), *v;
	struct exec_conf *ec;
	const char *k;

	json_object_foreach(kw, k, v)
		if (strcmp(k, "complete") != 0 && strcmp(k, "stderr_tail") != 0 &&
		    strcmp(k, "max_output") != 0) {
			cns_fail(ctx, "unknown key kwargs.%s (the exec plugin "
			    "knows complete, stderr_tail and max_output)", k);
			return -1;
		}
	if ((ec = calloc(1, sizeof *ec)) == NULL) {
		cns_fail(ctx, "out of memory");
		return -1;
	}
	ec->stderr_tail = STDERR_TAIL;
	ec->max_output = MAX_OUTPUT;
	if (prog_load(ctx, "args", cns_args(ctx), &ec->run) == -1 ||
	    ((v = json_object_get(kw, "complete")) != NULL &&
	    prog_load(ctx, "kwargs.complete", v, &ec->complete) == -1) ||
	    get_size(ctx, kw, "stderr_tail", 0, STDERR_TAIL_MAX,
	    &ec->stderr_tail) == -1 ||
	    get_size(ctx, kw, "max_output", 1, MAX_OUTPUT_MAX,
	    &ec->max_output) == -1) {
		conf_free(ec);
		return -1;
	}
	/* Every write goes to a pipe whose read end this process holds
	 * too, so EPIPE cannot happen; should it anyway, it is an error
	 * to report, not a reason for the worker to die. */
	signal(SIGPIPE, SIG_IGN);
	python_path();
	*state = ec;
	return 0;
}

static void
exec_fini(void *state)
{
	conf_free(state);
}

/* consumersd -t: the settings parse and every program exists and is
 * executable, as init would find them (no program is run). */
CNS_PLUGIN_EXPORT int consumers_plugin_check(const cns_ctx *);

int
consumers_plugin_check(const cns_ctx *ctx)
{
	void *state = NULL;

	if (exec_init(ctx, &state) == -1)
		return -1;
	exec_fini(state);
	return 0;
}

static int
buf_reserve(struct buf *b, size_t more)
{
	size_t cap;
	char *np;

	if (b->cap - b->len >= more)
		return 0;
	for (cap = b->cap ? b->cap : 4096; cap - b->len < more; cap *= 2)
		;
	if ((np = realloc(b->p, cap)) == NULL)
		return -1;
	b->p = np;
	b->cap = cap;
	return 0;
}

/* Forget the marks of lines the program has read (FIONREAD tells what
 * is still in the pipe); room for one more, growing if need be. */
static int
marks_room(struct run *r)
{
	int unread = 0;

	if (r->mlen < r->mcap)
		return 0;
	if (ioctl(r->fd_keep, FIONREAD, &unread) == 0 && unread >= 0)
		while (r->mlen > 0 && r->marks[r->mhead].end <=
		    r->written - (uint64_t)unread) {
			r->mhead = (r->mhead + 1) % r->mcap;
			r->mlen--;
		}
	if (r->mlen < r->mcap)
		return 0;
	size_t ncap = r->mcap ? r->mcap * 2 : 1024;
	struct mark *nm = malloc(ncap * sizeof *nm);
	if (nm == NULL)
		return -1;
	for (size_t i = 0; i < r->mlen; i++)
		nm[i] = r->marks[(r->mhead + i) % r->mcap];
	free(r->marks);
	r->marks = nm;
	r->mhead = 0;
	r->mcap = ncap;
	return 0;
}

/* Append the next item as one compact line; 0 at the end of the items. */
static int
pull_item(struct run *r)
{
	json_t *item = cns_next(r->items);
	size_t need, room;

	if (item == NULL)
		return 0;
	if (marks_room(r) == -1)
		return -1;
	/* Encoded straight into the free space; grown and encoded again
	 * only when it did not fit (or left no room for the newline). */
	room = r->in.cap - r->in.len;
	need = json_dumpb(item, room > 0 ? r->in.p + r->in.len : NULL, room,
	    JSON_COMPACT | JSON_ENCODE_ANY);
	if (need == 0)
		return -1;
	if (need >= room) {
		if (buf_reserve(&r->in, need + 1) == -1)
			return -1;
		if (need > room && json_dumpb(item, r->in.p + r->in.len, need,
		    JSON_COMPACT | JSON_ENCODE_ANY) != need)
			return -1;
	}
	r->in.len += need;
	r->in.p[r->in.len++] = '\n';
	r->appended += need + 1;
	r->marks[(r->mhead + r->mlen++) % r->mcap] = (struct mark){
		.seq = cns_seq(r->items), .end = r->appended };
	return 1;
}

/* stdin can take more: write what is pending, pulling items as it goes. */
static int
feed(struct run *r)
{
	for (int rounds = 0; rounds < 64; rounds++) {
		if (r->in.off == r->in.len) {
			r->in.off = r->in.len = 0;
			while (r->items != NULL && !r->items_ended &&
			    r->in.len < CHUNK) {
				int got = pull_item(r);
				if (got == -1)
					return -1;
				if (got == 0)
					r->items_ended = 1;
			}
		}
		if (r->in.off == r->in.len) {
			/* All written: the program sees the end of input. */
			close(r->fd_in);
			r->fd_in = -1;
			return 0;
		}
		ssize_t n = write(r->fd_in, r->in.p + r->in.off,
		    r->in.len - r->in.off);
		if (n == -1) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN)
				return 0;
			/* EPIPE and the like: the rest stays unread. */
			close(r->fd_in);
			r->fd_in = -1;
			return 0;
		}
		r->in.off += (size_t)n;
		r->written += (uint64_t)n;
	}
	return 0;
}

static void
write_all(int fd, const char *p, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, p, len);
		if (n == -1 && errno == EINTR)
			continue;
		if (n <= 0)
			return;
		p += n;
		len -= (size_t)n;
	}
}

static void
kill_prog(struct run *r)
{
	if (kill(-r->pid, SIGKILL) == -1)
		kill(r->pid, SIGKILL);
}

/* Read what the pipe has; -1 at its end. */
static int
drain_out(struct run *r)
{
	for (;;) {
		if (r->killed_big) {
			char junk[4096];
			ssize_t n = read(r->fd_out, junk, sizeof junk);
			if (n > 0 || (n == -1 && errno == EINTR))
				continue;
			return n == 0 || errno != EAGAIN ? -1 : 0;
		}
		if (buf_reserve(&r->out, 65536) == -1) {
			r->killed_big = 1;	/* out of memory: as too big */
			kill_prog(r);
			continue;
		}
		ssize_t n = read(r->fd_out, r->out.p + r->out.len,
		    r->out.cap - r->out.len);
		if (n == -1 && errno == EINTR)
			continue;
		if (n <= 0)
			return n == 0 || errno != EAGAIN ? -1 : 0;
		r->out.len += (size_t)n;
		if (r->out.len > r->ec->max_output) {
			r->killed_big = 1;
			kill_prog(r);
		}
	}
}

/* stderr: passed on to the worker's (the daemon logs it, tagged), and
 * its last bytes kept for error messages. */
static int
drain_err(struct run *r)
{
	char b[4096];

	for (;;) {
		ssize_t n = read(r->fd_err, b, sizeof b);
		if (n == -1 && errno == EINTR)
			continue;
		if (n <= 0)
			return n == 0 || errno != EAGAIN ? -1 : 0;
		write_all(STDERR_FILENO, b, (size_t)n);
		r->err_total += (uint64_t)n;
		for (ssize_t i = 0; i < n && r->ec->stderr_tail > 0; i++) {
			r->tail[r->tail_pos] = b[i];
			r->tail_pos = (r->tail_pos + 1) % r->ec->stderr_tail;
			if (r->tail_len < r->ec->stderr_tail)
				r->tail_len++;
		}
	}
}

/* It has exited (or is about to be made to): kill what it left in its
 * process group, while its pid, a zombie's, cannot be reused; then reap. */
static void
reap(struct run *r)
{
	kill(-r->pid, SIGKILL);
	while (waitpid(r->pid, &r->status, 0) == -1 && errno == EINTR)
		;
	r->exited = 1;
}

static int
nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);

	return fl == -1 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

static char **
make_env(const cns_ctx *ctx)
{
	static const char *ours[] = { "CONSUMERS_POOL=", "CONSUMERS_WORKER=",
	    "CONSUMERS_PARAMS=" };
	size_t n = 0, k = 0;
	char **env, *params;

	while (environ[n] != NULL)
		n++;
	if ((env = calloc(n + 4, sizeof *env)) == NULL)
		return NULL;
	for (size_t i = 0; i < n; i++) {
		int skip = 0;
		for (size_t j = 0; j < 3; j++)
			skip |= strncmp(environ[i], ours[j],
			    strlen(ours[j])) == 0;
		if (!skip && (env[k++] = strdup(environ[i])) == NULL)
			goto fail;
	}
	params = json_dumps(cns_params(ctx), JSON_COMPACT | JSON_ENCODE_ANY);
	if (params == NULL)
		goto fail;
	if (asprintf(&env[k++], "CONSUMERS_POOL=%s", cns_pool(ctx)) == -1 ||
	    asprintf(&env[k++], "CONSUMERS_WORKER=%u", cns_worker(ctx)) ==
	    -1 || asprintf(&env[k++], "CONSUMERS_PARAMS=%s", params) == -1) {
		env[--k] = NULL;
		free(params);
		goto fail;
	}
	free(params);
	return env;
fail:
	for (size_t i = 0; i < k; i++)
		free(env[i]);
	free(env);
	return NULL;
}

static void
env_free(char **env)
{
	if (env == NULL)
		return;
	for (char **e = env; *e != NULL; e++)
		free(*e);
	free(env);
}

/* In the child, between fork and exec: only async-signal-safe calls. */
static _Noreturn void
child(struct run *r, pid_t parent, int in_r, int out_w, int err_w,
    int report, char **env)
{
	struct sigaction sa;
	sigset_t none;
	int e;

	/* The daemon ignores SIGPIPE and this worker did too: an ignored
	 * signal stays ignored across exec, which a pipeline's writer does
	 * not expect.  A blocked one stays blocked. */
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = SIG_DFL;
	sigaction(SIGPIPE, &sa, NULL);
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	setpgid(0, 0);
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() != parent)
		_exit(127);	/* the worker died before the line above */
	if (dup2(in_r, STDIN_FILENO) == -1 ||
	    dup2(out_w, STDOUT_FILENO) == -1 ||
	    dup2(err_w, STDERR_FILENO) == -1)
		goto fail;
	/* Nothing but 0, 1, 2 reaches the program; `report` (close on
	 * exec) stays until exec, to say why it failed. */
	if (report > 3)
		close_range(3, (unsigned)report - 1, 0);
	close_range((unsigned)report + 1, ~0U, 0);
	execve(r->prog->path, r->prog->argv, env);
fail:
	e = errno;
	if (write(report, &e, sizeof e) == -1)
		_exit(127);
	_exit(127);
}

static void
close_fd(int *fd)
{
	if (*fd != -1) {
		close(*fd);
		*fd = -1;
	}
}

/* Start the program; -1 after cns_fail, with nothing left running. */
static int
start(struct run *r)
{
	int in[2] = { -1, -1 }, out[2] = { -1, -1 }, err[2] = { -1, -1 };
	int rep[2] = { -1, -1 }, e = 0;
	pid_t parent = getpid();
	char **env;
	ssize_t n;

	if ((env = make_env(r->ctx)) == NULL) {
		cns_fail(r->ctx, "program %s: out of memory", r->prog->label);
		return -1;
	}
	if (pipe2(in, O_CLOEXEC) == -1 || pipe2(out, O_CLOEXEC) == -1 ||
	    pipe2(err, O_CLOEXEC) == -1 || pipe2(rep, O_CLOEXEC) == -1 ||
	    nonblock(in[1]) == -1 || nonblock(out[0]) == -1 ||
	    nonblock(err[0]) == -1) {
		cns_fail(r->ctx, "program %s: pipe: %s", r->prog->label,
		    strerror(errno));
		goto fail;
	}
	fflush(NULL);
	if ((r->pid = fork()) == -1) {
		cns_fail(r->ctx, "program %s: fork: %s", r->prog->label,
		    strerror(errno));
		goto fail;
	}
	if (r->pid == 0)
		child(r, parent, in[0], out[1], err[1], rep[1], env);
	setpgid(r->pid, r->pid);	/* either side may do it first */
	close_fd(&rep[1]);
	close_fd(&out[1]);
	close_fd(&err[1]);
	env_free(env);
	env = NULL;
	/* The read end of stdin stays here too: after the program exits,
	 * what is left in the pipe is what it did not read. */
	r->fd_keep = in[0];
	r->fd_in = in[1];
	r->fd_out = out[0];
	r->fd_err = err[0];
	/* The exec's outcome: EOF when it succeeded. */
	while ((n = read(rep[0], &e, sizeof e)) == -1 && errno == EINTR)
		;
	close_fd(&rep[0]);
	if (n == (ssize_t)sizeof e)
		r->exec_errno = e;
#ifdef SYS_pidfd_open
	r->pidfd = (int)syscall(SYS_pidfd_open, r->pid, 0);
#else
	r->pidfd = -1;
#endif
	return 0;
fail:
	for (int i = 0; i < 2; i++) {
		close_fd(&in[i]);
		close_fd(&out[i]);
		close_fd(&err[i]);
		close_fd(&rep[i]);
	}
	env_free(env);
	return -1;
}

/* Has it exited?  Without a pidfd (kernels before 5.3), asked now and
 * then, leaving it a zombie for reap(). */
static void
check_exit(struct run *r)
{
	siginfo_t si;

	memset(&si, 0, sizeof si);
	if (waitid(P_PID, (id_t)r->pid, &si, WEXITED | WNOHANG | WNOWAIT) ==
	    0 && si.si_pid == r->pid)
		reap(r);
}

/* Write the input, read the output, until the program has exited. */
static int
loop(struct run *r)
{
	while (!r->exited) {
		struct pollfd pfd[4];
		nfds_t n = 0;
		int ip = -1, op = -1, ep = -1, pp = -1, rc;

		if (r->fd_in != -1)
			pfd[ip = (int)n++] = (struct pollfd){ r->fd_in,
			    POLLOUT, 0 };
		if (r->fd_out != -1)
			pfd[op = (int)n++] = (struct pollfd){ r->fd_out,
			    POLLIN, 0 };
		if (r->fd_err != -1)
			pfd[ep = (int)n++] = (struct pollfd){ r->fd_err,
			    POLLIN, 0 };
		if (r->pidfd != -1)
			pfd[pp = (int)n++] = (struct pollfd){ r->pidfd,
			    POLLIN, 0 };
		rc = poll(pfd, n, r->pidfd != -1 ? -1 : 50);
		if (rc == -1) {
			if (errno == EINTR)
				continue;
			cns_fail(r->ctx, "program %s: poll: %s", r->prog->label,
			    strerror(errno));
			kill_prog(r);
			reap(r);
			return -1;
		}
		if (op != -1 && pfd[op].revents != 0 && drain_out(r) == -1)
			close_fd(&r->fd_out);
		if (ep != -1 && pfd[ep].revents != 0 && drain_err(r) == -1)
			close_fd(&r->fd_err);
		if (ip != -1 && pfd[ip].revents != 0 && feed(r) == -1) {
			cns_fail(r->ctx, "program %s: out of memory for its "
			    "input", r->prog->label);
			kill_prog(r);
			reap(r);
			return -1;
		}
		if (pp != -1 && pfd[pp].revents != 0)
			reap(r);
		else if (pp == -1)
			check_exit(r);
	}
	/* It has exited: what it wrote is all in the pipes now. */
	if (r->fd_out != -1)
		drain_out(r);
	if (r->fd_err != -1)
		drain_err(r);
	return 0;
}

/* "N items (first: item S)" it did not read, counting the items left. */
static void
unread(struct run *r, uint64_t *count, uint64_t *first)
{
	uint64_t read_bytes = r->written;
	int in_pipe = 0;

	*count = 0;
	*first = 0;
	if (ioctl(r->fd_keep, FIONREAD, &in_pipe) == 0 && in_pipe > 0)
		read_bytes -= (uint64_t)in_pipe;
	/* Each is handed back (cns_unread): the client hears it was not
	 * consumed, with its seq. */
	for (size_t i = 0; i < r->mlen; i++) {
		const struct mark *m = &r->marks[(r->mhead + i) % r->mcap];
		if (m->end > read_bytes) {
			if ((*count)++ == 0)
				*first = m->seq;
			if (r->items != NULL)
				cns_unread(r->items, m->seq);
		}
	}
	if (r->items != NULL && !r->items_ended)
		while (cns_next(r->items) != NULL) {
			if ((*count)++ == 0)
				*first = cns_seq(r->items);
			cns_unread(r->items, cns_seq(r->items));
		}
}

/* The stderr tail, trimmed, "..." in front when cut. */
static char *
tail_text(struct run *r)
{
	size_t len = r->tail_len, start, i;
	int cut = r->err_total > r->tail_len;
	char *s;

	if ((s = malloc(len + 4)) == NULL)
		return NULL;
	start = r->tail_len < r->ec->stderr_tail ? 0 : r->tail_pos;
	for (i = 0; i < len; i++)
		s[i + 3] = r->tail[(start + i) % (r->ec->stderr_tail ?
		    r->ec->stderr_tail : 1)];
	while (len > 0 && (s[len + 2] == '\n' || s[len + 2] == '\r' ||
	    s[len + 2] == ' ' || s[len + 2] == '\t'))
		len--;
	s[len + 3] = '\0';
	if (cut)
		memcpy(s, "...", 3);
	else
		memmove(s, s + 3, len + 1);
	return s;
}

/* How it ended, as the error says it, or NULL when all went well. */
static json_t *
outcome(struct run *r, char **what)
{
	json_error_t jerr;
	json_t *v = NULL;
	size_t i;

	*what = NULL;
	if (r->exec_errno != 0) {
		if (asprintf(what, "could not be executed: %s%s",
		    strerror(r->exec_errno), r->exec_errno == E2BIG ?
		    " (are the stream's params too large for the "
		    "environment?)" : "") == -1)
			*what = NULL;
		return NULL;
	}
	if (r->killed_big) {
		if (asprintf(what, "wrote more than max_output (%zu bytes) to "
		    "stdout, and was killed", r->ec->max_output) == -1)
			*what = NULL;
		return NULL;
	}
	if (WIFSIGNALED(r->status)) {
		if (asprintf(what, "was killed by signal %d (%s)",
		    WTERMSIG(r->status), strsignal(WTERMSIG(r->status))) == -1)
			*what = NULL;
		return NULL;
	}
	if (WEXITSTATUS(r->status) != 0) {
		if (asprintf(what, "exited with status %d",
		    WEXITSTATUS(r->status)) == -1)
			*what = NULL;
		return NULL;
	}
	for (i = 0; i < r->out.len; i++)
		if (strchr(" \t\r\n", r->out.p[i]) == NULL)
			break;
	if (i == r->out.len)
		return json_null();	/* nothing written: null */
	v = json_loadb(r->out.p, r->out.len, JSON_DECODE_ANY, &jerr);
	if (v == NULL && asprintf(what, "exited with status 0 but its stdout "
	    "(%zu bytes) is not one JSON value: %s at line %d, column %d",
	    r->out.len, jerr.text, jerr.line, jerr.column) == -1)
		*what = NULL;
	return v;
}

static void
run_free(struct run *r)
{
	close_fd(&r->fd_in);
	close_fd(&r->fd_keep);
	close_fd(&r->fd_out);
	close_fd(&r->fd_err);
	close_fd(&r->pidfd);
	free(r->in.p);
	free(r->out.p);
	free(r->marks);
	free(r->tail);
}

/*
 * Run a program over items (consume) or over one line (complete), and
 * return what it wrote as JSON; errors go through cns_fail.
 */
static json_t *
run_prog(const struct exec_conf *ec, const struct prog *prog,
    const cns_ctx *ctx, cns_items *items, const char *line)
{
	struct run r = { .ec = ec, .prog = prog, .ctx = ctx, .items = items,
	    .fd_in = -1, .fd_keep = -1, .fd_out = -1, .fd_err = -1,
	    .pidfd = -1 };
	uint64_t nunread, first;
	char *what, *tail;
	json_t *v = NULL;

	if ((ec->stderr_tail > 0 && (r.tail = malloc(ec->stderr_tail)) ==
	    NULL) || (line != NULL && (buf_reserve(&r.in, strlen(line) + 1) ==
	    -1 || marks_room(&r) == -1))) {
		cns_fail(ctx, "program %s: out of memory", prog->label);
		goto drain;
	}
	if (line != NULL) {
		r.in.len = strlen(line);
		memcpy(r.in.p, line, r.in.len);
		r.in.p[r.in.len++] = '\n';
		r.appended = r.in.len;
		r.marks[r.mlen++] = (struct mark){ .seq = 0, .end = r.appended };
	}
	if (start(&r) == -1)
		goto drain;
	if (r.exec_errno != 0) {
		reap(&r);
		outcome(&r, &what);
		cns_fail(ctx, "program %s %s", prog->label, what != NULL ?
		    what : "could not be executed");
		free(what);
		goto drain;
	}
	if (loop(&r) == -1)
		goto drain;
	v = outcome(&r, &what);
	unread(&r, &nunread, &first);
	if (what == NULL && v == NULL)
		what = strdup("failed (out of memory)");
	if (nunread > 0 || what != NULL) {
		char *msg = NULL, more[160] = "";
		if (nunread > 0 && items != NULL)
			snprintf(more, sizeof more, "%s%" PRIu64 " item%s not "
			    "read, first: item %" PRIu64 "%s", what != NULL ?
			    " (" : "exited before reading all its input: ",
			    nunread, nunread == 1 ? "" : "s", first,
			    what != NULL ? ")" : "");
		else if (nunread > 0)
			snprintf(more, sizeof more, "%s", what != NULL ?
			    " (before reading its input, the results array)" :
			    "exited before reading all its input, the results "
			    "array");
		tail = tail_text(&r);
		if (asprintf(&msg, "program %s %s%s%s%s", prog->label,
		    what != NULL ? what : "", more,
		    tail != NULL && tail[0] != '\0' ? ": " : "",
		    tail != NULL ? tail : "") == -1)
			msg = NULL;
		cns_fail(ctx, "%s", msg != NULL ? msg : "out of memory");
		free(msg);
		free(tail);
		free(what);
	}
	run_free(&r);
	return v;
drain:
	/* The stream still has to end: its items go nowhere, counted. */
	if (items != NULL && !r.items_ended)
		while (cns_next(items) != NULL)
			;
	run_free(&r);
	return NULL;
}

static json_t *
exec_consume(cns_items *items, const cns_ctx *ctx)
{
	const struct exec_conf *ec = cns_state(ctx);

	return run_prog(ec, &ec->run, ctx, items, NULL);
}

/* Without kwargs.complete the completion is null: the results are in
 * the final line already. */
static json_t *
exec_complete(json_t *results, const cns_ctx *ctx)
{
	const struct exec_conf *ec = cns_state(ctx);
	json_t *v;
	char *line;

	if (ec->complete.path == NULL)
		return NULL;
	if ((line = json_dumps(results, JSON_COMPACT)) == NULL) {
		cns_fail(ctx, "program %s: out of memory", ec->complete.label);
		return NULL;
	}
	v = run_prog(ec, &ec->complete, ctx, NULL, line);
	free(line);
	return v;
}

CONSUMERS_PLUGIN(.init = exec_init, .consume = exec_consume,
    .complete = exec_complete, .fini = exec_fini);
