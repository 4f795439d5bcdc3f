/*
 * consumersd.c - the master: options, the configuration, the event loop,
 * signals, and an orderly stop.  It routes bytes between clients and
 * workers and never runs plugin code.  It calls every room below it and
 * none calls it: the rooms say that a worker, a stream or a tap came or
 * went with cns_changed(), and daemon_changed() looks, on a later turn,
 * whether the first start or a stop can go on.
 */
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <errno.h>
#include <getopt.h>
#include <stddef.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#ifdef HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

#include "consumersd.h"
#include "consumers/plugin.h"

#ifndef CNS_CONF_FILE
#define CNS_CONF_FILE "/etc/consumersd/consumersd.conf"
#endif
#define STOP_GRACE	5	/* seconds before workers are killed */
#define STARTUP_WAIT	10	/* seconds the first workers may take */

struct conf_overrides	 cns_overrides;	/* -s, -P: kept for reloads */
int			 cns_debug;	/* -d: debug logs whatever the config */

int			 cns_startup;
static int		 starting;	/* the first workers are not all up */
static struct event	*startup_timer;
static int		 draining;	/* open streams may still finish */
static struct event	*drain_timer;
static struct event	*stop_timer;
static int		 grace_over;	/* STOP_GRACE ran out */

static void	maybe_exit(void);

#define USAGE	"usage: consumersd [-dthV] [-c file] [-s socket] " \
		"[-P plugin_dir]\n"

static _Noreturn void
usage(void)
{
	fprintf(stderr, USAGE "Try consumersd --help.\n");
	exit(2);
}

/* --help: what each option does, on stdout; see consumersd(8). */
static _Noreturn void
help(void)
{
	printf(USAGE
	    "Keep pools of consumer processes and stream clients' items to "
	    "them.\n\n"
	    "  -c, --config FILE     the configuration (default %s)\n"
	    "  -s, --socket PATH     listen here instead of the configured "
	    "socket\n"
	    "  -P, --plugin-dir DIR  look for plugins here\n"
	    "  -d, --debug           log at the debug level\n"
	    "  -t, --test            check the configuration and exit\n"
	    "  -V, --version         print the version and exit\n"
	    "  -h, --help            print this help and exit\n\n"
	    "See consumersd(8) and consumersd.conf(5).\n", CNS_CONF_FILE);
	exit(0);
}

/* Clients are accepted once every first worker is ready or has failed,
 * so the first streams get the pool's full width. */
static void
accept_clients(void)
{
	starting = 0;
	if (startup_timer != NULL) {
		event_free(startup_timer);
		startup_timer = NULL;
	}
	client_accepting();
	log_info("ready: accepting clients on %s", cns_conf->socket);
	notify_ready();
}

static void
on_startup_timer(evutil_socket_t fd, short ev, void *arg)
{
	(void)fd;
	(void)ev;
	(void)arg;
	log_warnx("%u worker%s still starting after %d s; accepting clients "
	    "anyway", worker_starting(), worker_starting() == 1 ? "" : "s",
	    STARTUP_WAIT);
	accept_clients();
}

static void
on_stop_timer(evutil_socket_t fd, short ev, void *arg)
{
	(void)fd;
	(void)ev;
	(void)arg;
	if (worker_count() > 0)
		log_warnx("%u worker%s still running after %d s; killing them",
		    worker_count(), worker_count() == 1 ? "" : "s", STOP_GRACE);
	worker_kill_all();
	/* A worker's output pipe may be held open by something it started:
	 * past the grace, the daemon does not wait for it. */
	grace_over = 1;
	maybe_exit();
}

static void
maybe_exit(void)
{
	/* Not while open streams may still finish (their clients read
	 * their final lines); the taps too: a worker's last lines may
	 * still be in its pipe. */
	if (cns_stopping && !draining && worker_count() == 0 &&
	    (tap_count() == 0 || grace_over))
		event_base_loopexit(cns_base, NULL);
}

/* The last phase of a stop: workers are told to exit, then killed. */
static void
stop_workers(void)
{
	struct timeval tv = { STOP_GRACE, 0 };

	draining = 0;
	if (drain_timer != NULL)
		evtimer_del(drain_timer);
	pool_stop_all();
	worker_stop_all();
	if (stop_timer == NULL) {
		stop_timer = evtimer_new(cns_base, on_stop_timer, NULL);
		evtimer_add(stop_timer, &tv);
	}
	maybe_exit();
}

/*
 * A worker, a stream or a tap came or went (cns_changed): clients are
 * accepted once the first workers are up; a stop goes on once the open
 * streams are done, and ends once the workers and their taps are gone.
 */
static void
daemon_changed(void)
{
	if (starting && !cns_stopping && worker_starting() == 0)
		accept_clients();
	if (draining && stream_count() == 0) {
		log_info("every open stream has finished");
		stop_workers();
	}
	maybe_exit();
}

static void
on_drain_timer(evutil_socket_t fd, short ev, void *arg)
{
	char why[160];

	(void)fd;
	(void)ev;
	(void)arg;
	log_warnx("%u stream%s still open after shutdown_timeout (%g s); "
	    "ending them", stream_count(), stream_count() == 1 ? "" : "s",
	    cns_conf->shutdown_timeout);
	snprintf(why, sizeof why, "consumersd is shutting down: the stream "
	    "was still open after shutdown_timeout (%g s)",
	    cns_conf->shutdown_timeout);
	draining = 0;
	client_abort_all(why);
	cluster_abort_all(why);
	stop_workers();
}

/*
 * SIGTERM, SIGINT: stop accepting, let open streams finish for up to
 * shutdown_timeout (queued ones are refused: they have not started), then
 * end what is left and stop the workers.  A second signal ends the wait.
 */
static void
stop(int sig)
{
	struct timeval tv;
	struct pool *p;

	if (cns_stopping) {
		if (draining) {
			log_info("%s again: ending the open streams now",
			    strsignal(sig));
			draining = 0;
			client_abort_all("consumersd is shutting down");
			cluster_abort_all("consumersd is shutting down");
			stop_workers();
		}
		return;
	}
	cns_stopping = 1;
	notify_stopping();
	if (startup_timer != NULL) {
		/* No "ready" any more while stopping. */
		event_free(startup_timer);
		startup_timer = NULL;
	}
	client_close_listener();
	if (cns_conf->shutdown_timeout <= 0 || stream_count() == 0) {
		log_info("%s: stopping", strsignal(sig));
		client_abort_all("consumersd is shutting down");
		cluster_abort_all("consumersd is shutting down");
		stop_workers();
		return;
	}
	log_info("%s: stopping; %u open stream%s may finish within %g s "
	    "(shutdown_timeout)", strsignal(sig), stream_count(),
	    stream_count() == 1 ? "" : "s", cns_conf->shutdown_timeout);
	draining = 1;
	TAILQ_FOREACH(p, pool_all(), entry)
		pool_dispatch(p);	/* refuses what is queued */
	tv = cns_tv(cns_conf->shutdown_timeout);
	drain_timer = evtimer_new(cns_base, on_drain_timer, NULL);
	evtimer_add(drain_timer, &tv);
	daemon_changed();	/* the refused ones may be all there was */
}

static void
on_signal(evutil_socket_t sig, short ev, void *arg)
{
	(void)ev;
	(void)arg;
	switch (sig) {
	case SIGCHLD:
		worker_reap();
		return;
	case SIGHUP:
		if (cns_stopping)
			log_info("SIGHUP while stopping: ignored");
		else {
			char why[512];
			cns_reload(why, sizeof why);
		}
		return;
	}
	stop((int)sig);
}

static int
check_config(const char *file, const struct conf_overrides *ov, int quiet)
{
	json_t *errors = json_array();
	struct conf *c = conf_load(file, ov, errors);
	size_t i;
	json_t *e;
	int bad = 0;

	if (c != NULL && conf_check_root(c, errors) == -1) {
		conf_free(c);
		c = NULL;
	}
	json_array_foreach(errors, i, e)
		fprintf(stderr, "%s\n", json_string_value(e));
	json_decref(errors);
	if (c == NULL) {
		fprintf(stderr, "consumersd: %s: configuration is not valid\n",
		    file);
		return 1;
	}
	/* Each plugin is loaded and checked in a child process. */
	for (i = 0; i < c->npools; i++) {
		const struct pool_conf *pc = &c->pools[i];
		char why[1024];
		if (child_probe(pc, why, sizeof why) == -1) {
			fprintf(stderr, "%s:%d:%d: %s\n", pc->file,
			    pc->plugin_line, pc->plugin_column, why);
			bad = 1;
		}
	}
	{
		/* The daemon would not start: an error.  But the default,
		 * the socket's (runtime) directory, may only exist once the
		 * service runs: a warning there. */
		char why[1024];
		const char *slash = strrchr(c->socket, '/');
		int runtime = slash != NULL && slash != c->socket &&
		    strlen(c->spool_dir) == (size_t)(slash - c->socket) &&
		    strncmp(c->spool_dir, c->socket, (size_t)(slash -
		    c->socket)) == 0;

		if (spool_check(c, why, sizeof why) == -1) {
			fprintf(stderr, "consumersd: %s%s\n", runtime ?
			    "warning: " : "", why);
			bad |= !runtime;
		}
	}
	if (bad)
		fprintf(stderr, "consumersd: %s: configuration is not valid\n",
		    file);
	else if (!quiet)
		printf("consumersd: %s: configuration is valid (%zu pool%s)\n",
		    file, c->npools, c->npools == 1 ? "" : "s");
	conf_free(c);
	return bad;
}

#ifdef HAVE_SYSTEMD
/* The path `fd` is bound to, as cns_activated_socket; kept till exit. */
static void
activated_path(int fd)
{
	static char path[sizeof ((struct sockaddr_un *)0)->sun_path + 1];
	struct sockaddr_un sun;
	socklen_t len = sizeof sun;

	memset(&sun, 0, sizeof sun);
	if (getsockname(fd, (struct sockaddr *)&sun, &len) == 0 &&
	    len > offsetof(struct sockaddr_un, sun_path) &&
	    sun.sun_path[0] != '\0') {
		memcpy(path, sun.sun_path, sizeof sun.sun_path);
		cns_activated_socket = path;
	}
}
#endif

/* The listening socket handed over by systemd, or -1. */
static int
inherited_socket(void)
{
#ifdef HAVE_SYSTEMD
	int n = sd_listen_fds(1);

	if (n > 1)
		fatalx("systemd passed %d sockets; consumersd takes one", n);
	if (n == 1) {
		if (sd_is_socket_unix(SD_LISTEN_FDS_START, SOCK_STREAM, 1,
		    NULL, 0) <= 0)
			fatalx("the socket passed by systemd is not a "
			    "listening Unix stream socket");
		/* systemd passes it blocking (unless NonBlocking=yes), and
		 * libevent's listener accepts until EAGAIN: a blocking
		 * accept() there would hang the master. */
		if (evutil_make_socket_nonblocking(SD_LISTEN_FDS_START) == -1 ||
		    evutil_make_socket_closeonexec(SD_LISTEN_FDS_START) == -1)
			fatal("the socket passed by systemd");
		activated_path(SD_LISTEN_FDS_START);
		return SD_LISTEN_FDS_START;
	}
#endif
	return -1;
}

int
main(int argc, char **argv)
{
	struct conf_overrides ov = { 0 };
	const char *file = CNS_CONF_FILE;
	struct event *sigs[5];
	const int signums[5] = { SIGCHLD, SIGTERM, SIGINT, SIGHUP, 0 };
	json_t *errors;
	int ch, test = 0, debug = 0, lfd;

	static const struct option longopts[] = {
		{ "config",	required_argument,	NULL, 'c' },
		{ "debug",	no_argument,		NULL, 'd' },
		{ "plugin-dir",	required_argument,	NULL, 'P' },
		{ "socket",	required_argument,	NULL, 's' },
		{ "test",	no_argument,		NULL, 't' },
		{ "version",	no_argument,		NULL, 'V' },
		{ "help",	no_argument,		NULL, 'h' },
		{ NULL,		0,			NULL, 0 }
	};

	while ((ch = getopt_long(argc, argv, "c:dhP:s:tV", longopts,
	    NULL)) != -1) {
		switch (ch) {
		case 'h':
			help();
		case 'c':
			file = optarg;
			break;
		case 'd':
			debug = 1;
			break;
		case 'P':
			ov.plugin_dir = optarg;
			break;
		case 's':
			ov.socket = optarg;
			break;
		case 't':
			test = 1;
			break;
		case 'V':
			printf("consumersd %s (plugin ABI %d)\n", PACKAGE_VERSION,
			    CNS_PLUGIN_ABI);
			return 0;
		default:
			usage();
		}
	}
	if (optind != argc)
		usage();
	log_init(LOG_LVL_INFO, "consumersd");
	if (test)
		return check_config(file, &ov, 0);

	/* Before the configuration: the spool defaults to the directory of
	 * the socket systemd passed, not the configured one's. */
	lfd = inherited_socket();
	errors = json_array();
	cns_conf = conf_load(file, &ov, errors);
	if (cns_conf != NULL && conf_check_root(cns_conf, errors) == -1) {
		conf_free(cns_conf);
		cns_conf = NULL;
	}
	if (cns_conf == NULL) {
		size_t i;
		json_t *e;
		json_array_foreach(errors, i, e)
			fprintf(stderr, "%s\n", json_string_value(e));
		fprintf(stderr, "consumersd: %s: configuration is not valid; "
		    "not starting\n", file);
		json_decref(errors);
		return 1;
	}
	json_decref(errors);
	log_setlevel(debug ? LOG_LVL_DEBUG : cns_conf->log_level);
	/* Copies: the process title is written over argv's strings. */
	if ((ov.socket != NULL && (cns_overrides.socket = strdup(ov.socket)) ==
	    NULL) || (ov.plugin_dir != NULL && (cns_overrides.plugin_dir =
	    strdup(ov.plugin_dir)) == NULL))
		fatal("strdup");
	cns_debug = debug;
	cns_proctitle_init(argc, argv);
	signal(SIGPIPE, SIG_IGN);
	/* A spool file past RLIMIT_FSIZE (systemd's LimitFSIZE=) fails its
	 * write with EFBIG, reported like a full disk, instead of killing. */
	signal(SIGXFSZ, SIG_IGN);

	cns_started_at = cns_now();
	cns_started_wall = time(NULL);
	if ((cns_base = event_base_new()) == NULL)
		fatalx("event_base_new");
	cns_on_change(daemon_changed);
	dispatch_init();
	notify_init(cns_base);
	{
		char why[1024];
		if (spool_check(cns_conf, why, sizeof why) == -1)
			fatalx("%s", why);
	}
	if (client_listen(cns_base, cns_conf, lfd) == -1)
		fatalx("cannot listen on %s", cns_conf->socket);
	for (int i = 0; signums[i] != 0; i++) {
		sigs[i] = evsignal_new(cns_base, signums[i], on_signal, NULL);
		evsignal_add(sigs[i], NULL);
	}
	/* What a worker starts and leaves behind comes back to the master
	 * (reaped as a stranger by worker_reap), not to PID 1. */
	if (prctl(PR_SET_CHILD_SUBREAPER, 1) == -1)
		log_warn("prctl PR_SET_CHILD_SUBREAPER");
	cns_proctitle("consumersd: master");
	log_info("listening on %s; starting %zu pool%s", lfd >= 0 ?
	    "the socket from systemd" : cns_conf->socket, cns_conf->npools,
	    cns_conf->npools == 1 ? "" : "s");
	cns_startup = 1;
	for (size_t i = 0; i < cns_conf->npools; i++) {
		struct pool *p = pool_new(&cns_conf->pools[i]);
		p->conf = conf_ref(cns_conf);
		pool_add(p);
		pool_start(p);
	}
	cns_startup = 0;
	cluster_init(cns_base, cns_conf);	/* after the pools: their jobs */
	starting = 1;
	if (worker_starting() == 0)
		accept_clients();
	else {
		struct timeval tv = { STARTUP_WAIT, 0 };
		startup_timer = evtimer_new(cns_base, on_startup_timer, NULL);
		evtimer_add(startup_timer, &tv);
	}
	event_base_dispatch(cns_base);

	log_info("stopped");
	client_free_all();
	cluster_free();		/* its lanes' streams, before their pools */
	pool_free_all();
	tap_free_all();
	cns_on_change(NULL);	/* the loop is over: nothing to start or stop */
	cns_later_free();	/* the frees put off to a next turn */
	for (int i = 0; signums[i] != 0; i++)
		event_free(sigs[i]);
	if (stop_timer != NULL)
		event_free(stop_timer);
	if (drain_timer != NULL)
		event_free(drain_timer);
	if (startup_timer != NULL)
		event_free(startup_timer);
	notify_free();
	event_base_free(cns_base);
	conf_unref(cns_conf);
	free((char *)cns_overrides.socket);
	free((char *)cns_overrides.plugin_dir);
	return 0;
}
