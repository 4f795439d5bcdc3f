/*
 * consumersd.h - the daemon's one internal header: shared types, and the
 * prototypes of every file grouped under that file's name.
 */
#ifndef CONSUMERSD_H
#define CONSUMERSD_H

#include <sys/types.h>
#include <sys/queue.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

#include "proto.h"

struct event_base;
struct event;
struct evbuffer;
struct bufferevent;

#define CNS_MAX_WORKERS		1024	/* per pool */
#define CNS_MAX_ITEM_BYTES	(64u << 20)
#define CNS_HEADER_MAX		65536	/* a client's header line */

/* conf.c: the configuration, parsed into a fresh structure and swapped whole */
enum { CRASH_REPLAY, CRASH_REDELIVER, CRASH_FAIL, CRASH_NPOLICIES };

struct pool_conf {
	char		*name;		/* the pool file's stem */
	char		*file;		/* the pool file, for messages */
	char		*plugin;	/* resolved path of the .so */
	int		 plugin_line;	/* where "plugin" stands in file */
	int		 plugin_column;
	unsigned	 workers;
	unsigned	 stream_workers;
	json_t		*args;		/* array */
	json_t		*kwargs;	/* object */
	double		 queue_timeout;	/* seconds a stream may wait */
	int		 on_crash;	/* CRASH_* */
	unsigned	 max_attempts;	/* crashes on one item: poison */
	double		 item_timeout;	/* seconds on one item, 0: none */
	unsigned	 max_init_failures; /* in a row: the pool fails */
};

struct conf {
	char		*file;
	char		*socket;
	mode_t		 socket_mode;
	char		*plugin_dir;
	char		*pools_dir;
	size_t		 max_item_bytes;
	size_t		 window_bytes;	/* per worker: unacked bytes */
	unsigned	 window_items;	/* per worker: unacked items */
	int		 log_level;
	char		*spool_dir;	/* replay spool files */
	double		 header_timeout; /* connect to header, at most */
	double		 idle_timeout;	/* a stream's client silent */
	unsigned	 max_conn_per_uid; /* 0: no limit */
	struct pool_conf *pools;
	size_t		 npools;
};

/* Overrides from the command line, applied after the files are read. */
struct conf_overrides {
	const char	*socket;
	const char	*plugin_dir;
};

struct conf	*conf_load(const char *file, const struct conf_overrides *,
		    json_t *errors);
void		 conf_free(struct conf *);
const char	*conf_crash_policy(int);
struct pool_conf *conf_pool(struct conf *, const char *name);
int		 conf_keypos(const char *text, size_t len, const char *key,
		    int *line, int *column);

/* log.c */
enum { LOG_LVL_ERR, LOG_LVL_WARN, LOG_LVL_INFO, LOG_LVL_DEBUG };
void	log_init(int level, const char *tag);
void	log_setlevel(int level);
int	log_parse_level(const char *);
void	utf8_clean(char *);
void	log_warn(const char *, ...) __attribute__((format(printf, 1, 2)));
void	log_warnx(const char *, ...) __attribute__((format(printf, 1, 2)));
void	log_info(const char *, ...) __attribute__((format(printf, 1, 2)));
void	log_debug(const char *, ...) __attribute__((format(printf, 1, 2)));
_Noreturn void fatal(const char *, ...) __attribute__((format(printf, 1, 2)));
_Noreturn void fatalx(const char *, ...) __attribute__((format(printf, 1, 2)));

/* frame.c: master <-> worker framing (see proto.h) */
int	frame_check(const struct frame_hdr *, int from_worker, char *why,
	    size_t whylen);
void	frame_put(struct evbuffer *, uint16_t type, uint64_t stream,
	    const void *payload, size_t len);
void	frame_put_json(struct evbuffer *, uint16_t type, uint64_t stream,
	    json_t *);
int	frame_pull(struct evbuffer *, struct frame_hdr *, char *why,
	    size_t whylen);

/* flow.c: cutting client bytes into item batches, and credit windows */
enum cut_kind {
	CUT_BATCH,	/* n complete lines, nbytes with their newlines */
	CUT_EMPTY,	/* an empty line at the front: drop it */
	CUT_LONG,	/* an over-long line: reject it, drop nbytes */
	CUT_NEED,	/* the front line is not complete yet */
	CUT_FULL	/* the front line does not fit the window */
};
struct cut {
	enum cut_kind	 kind;
	unsigned	 n;
	size_t		 nbytes;
	int		 newline;	/* CUT_LONG: its newline was found */
};
struct flow_room {
	size_t		 max_item;	/* longest line accepted */
	size_t		 bytes;		/* window room for the first line */
	size_t		 soft_bytes;	/* further lines stop the batch here */
	unsigned	 items;		/* window room in items */
};
void	flow_cut(struct evbuffer *, const struct flow_room *, struct cut *);

struct credit {
	size_t		 bytes;		/* unacked bytes in flight */
	unsigned	 items;		/* unacked items in flight */
};
int	credit_room(const struct credit *, size_t win_bytes,
	    unsigned win_items, size_t max_item, struct flow_room *);
void	credit_take(struct credit *, unsigned items, size_t bytes);
int	credit_ack(struct credit *, unsigned items, size_t bytes);

/* pool.c: the pool table, leasing and the wait queue */
struct worker;
struct stream;
TAILQ_HEAD(workerq, worker);
TAILQ_HEAD(streamq, stream);

struct pool {
	struct pool_conf *pc;
	struct workerq	 workers;
	struct streamq	 queue;		/* streams waiting, FIFO */
	unsigned	 nworkers;	/* processes, any state */
	unsigned	 nidle;
	unsigned	 init_failures;	/* consecutive */
	char		*last_error;
	int		 has_complete;
	struct event	*respawn_ev;
	uint64_t	 streams_done;
	TAILQ_ENTRY(pool) entry;
};
TAILQ_HEAD(poolq, pool);

struct pool	*pool_new(struct pool_conf *);
void		 pool_free(struct pool *);
struct pool	*pool_find(const char *name);
void		 pool_add(struct pool *);
struct poolq	*pool_all(void);
void		 pool_start(struct pool *);
unsigned	 pool_lease(struct pool *, unsigned want, struct worker **out);
void		 pool_idle(struct pool *, struct worker *);
void		 pool_dispatch(struct pool *);
void		 pool_worker_gone(struct pool *, struct worker *, int init_failed);
unsigned	 pool_slot(struct pool *);
const char	*pool_unavailable(struct pool *);
void		 pool_stop_all(void);
void		 pool_free_all(void);

/* worker.c: the master's side of worker processes, a table keyed by pid */
enum worker_state { W_STARTING, W_IDLE, W_LEASED, W_EXITING };

struct range { uint64_t first, last; };

struct worker {
	pid_t		 pid;
	struct pool	*pool;
	unsigned	 slot;		/* 1-based within the pool */
	enum worker_state state;
	struct bufferevent *bev;
	int		 status;	/* wait status, once reaped */
	int		 reaped;
	int		 closed;	/* its socket hit EOF */
	int		 init_failed;	/* it sent INITFAIL */
	int		 startup;	/* one of the first, not settled yet */
	/* while leased */
	struct stream	*stream;
	unsigned	 index;		/* in stream->w[] */
	struct credit	 credit;
	uint64_t	 sent;		/* items sent this stream */
	uint64_t	 rejected;	/* of those, rejected by the worker */
	struct range	*ranges;	/* seqs sent this stream */
	size_t		 nranges, caprange;
	int		 ranges_inexact; /* merged across gaps */
	int		 returned;	/* its consume call returned */
	unsigned	 streams_served;
	TAILQ_ENTRY(worker) entry;	/* pool->workers */
	struct worker	*hnext;		/* pid hash chain */
};

struct worker	*worker_spawn(struct pool *, unsigned slot);
struct worker	*worker_find(pid_t);
void		 worker_reap(void);
void		 worker_send(struct worker *, uint16_t type, uint64_t stream,
		    const void *, size_t);
void		 worker_send_json(struct worker *, uint16_t type,
		    uint64_t stream, json_t *);
struct evbuffer	*worker_output(struct worker *);
void		 worker_add_range(struct worker *, uint64_t first,
		    uint64_t last);
void		 worker_stop(struct worker *);
void		 worker_stop_all(void);
void		 worker_kill_all(void);
unsigned	 worker_count(void);
char		*worker_describe_exit(int status);

/* stream.c: one client stream, from lease to final line */
enum stream_state { S_QUEUED, S_RUNNING, S_COMPLETING, S_DONE };

struct stream {
	uint64_t	 id;
	struct client	*client;
	struct pool	*pool;
	enum stream_state state;
	unsigned	 want;
	json_t		*params;
	struct worker	**w;		/* leased workers */
	unsigned	 nw, nlive, nreturned;
	unsigned	 rr;		/* round-robin cursor */
	uint64_t	 seq;		/* last sequence number given */
	uint64_t	 rejected, consumed, unconsumed;
	int		 eof;		/* the client closed its side */
	int		 skipping;	/* dropping an over-long line */
	int		 ended;		/* END sent to every worker */
	uint64_t	 orphan_from;	/* first seq read with no worker left */
	json_t		*results;	/* one slot per leased worker */
	json_t		*errors;
	json_t		*completion;
	struct worker	*completer;
	struct event	*timer;		/* queue timeout */
	TAILQ_ENTRY(stream) qentry;
};

struct stream	*stream_new(struct client *, struct pool *, unsigned want,
		    json_t *params);
void		 stream_free(struct stream *);
void		 stream_leased(struct stream *, struct worker **, unsigned);
void		 stream_refuse(struct stream *, const char *why);
void		 stream_input(struct stream *);
void		 stream_client_eof(struct stream *);
int		 stream_ack(struct stream *, struct worker *, unsigned items,
		    size_t bytes);
int		 stream_reject(struct stream *, struct worker *, uint64_t seq,
		    const char *why);
int		 stream_result(struct stream *, struct worker *, json_t *);
void		 stream_completion(struct stream *, struct worker *, json_t *);
void		 stream_worker_gone(struct stream *, struct worker *,
		    const char *how);
void		 stream_abort(struct stream *, const char *why);

/* header.c: a client's header line */
json_t		*header_parse(const char *line, size_t len, char *why,
		    size_t whylen);

/* client.c: the listening socket and client connections */
struct client;
int		 client_listen(struct event_base *, const struct conf *, int fd);
void		 client_abort_all(const char *why);
void		 client_free_all(void);
void		 client_accepting(void);
void		 client_close_listener(void);
void		 client_send_json(struct client *, json_t *);
struct evbuffer	*client_input(struct client *);
void		 client_read(struct client *, int on);
void		 client_finish(struct client *, json_t *final);
int		 client_output_full(struct client *);

/* consumersd.c: daemon-wide state */
extern struct event_base *cns_base;
extern struct conf	*cns_conf;
void		 cns_proctitle(const char *fmt, ...)
		    __attribute__((format(printf, 1, 2)));
void		 cns_maybe_exit(void);
extern int	 cns_startup;	/* spawning the first workers */
void		 cns_worker_settled(void);

/* child.c: the worker process, never returns */
_Noreturn void	 child_main(int fd, const struct pool_conf *, unsigned slot);
int		 child_probe(const struct pool_conf *, char *why, size_t);

#endif /* CONSUMERSD_H */
