/*
 * consumersd.h - the daemon's one internal header: shared types, and the
 * prototypes of every file grouped under that file's name.
 */
#ifndef CONSUMERSD_H
#define CONSUMERSD_H

#include <sys/types.h>
#include <sys/queue.h>
#include <sys/time.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>
#include <jansson.h>

#include "proto.h"
#include "source.h"

struct event_base;
struct event;
struct evbuffer;
struct bufferevent;

#define CNS_MAX_WORKERS		1024	/* per pool */
#define CNS_MAX_ITEM_BYTES	(64u << 20)
#define CNS_HEADER_MAX		65536	/* a client's header line */
#define CNS_PROTOCOL_VERSION	1	/* {"op":"hello"} answers it */

/* conf.c: the configuration, parsed into a fresh structure and swapped whole */
enum { CRASH_REPLAY, CRASH_REDELIVER, CRASH_FAIL, CRASH_NPOLICIES };
enum { MODE_STATIC, MODE_DYNAMIC, MODE_ONDEMAND, MODE_NMODES };
/* spool_full: what a stream does when its spool cannot be written */
enum { SPOOL_FULL_PAUSE, SPOOL_FULL_CONTINUE, SPOOL_FULL_NMODES };

struct pool_conf {
	char		*name;		/* the pool file's stem */
	char		*file;		/* the pool file, for messages */
	char		*plugin;	/* resolved path of the .so */
	dev_t		 plugin_dev;	/* which file: a rebuilt one is new */
	ino_t		 plugin_ino;
	struct timespec	 plugin_mtime;
	int		 plugin_line;	/* where "plugin" stands in file */
	int		 plugin_column;
	unsigned	 workers;
	unsigned	 stream_workers;
	json_t		*args;		/* array */
	json_t		*kwargs;	/* object */
	json_t		*plugin_options; /* any JSON, the plugin's (cns_options) */
	int		 client_args;	/* a stream's header may replace args */
	double		 queue_timeout;	/* seconds a stream may wait */
	double		 min_item_rate;	/* items/s a stream keeps while
					   others wait; 0: off */
	int		 on_crash;	/* CRASH_* */
	int		 spool_full;	/* SPOOL_FULL_* */
	double		 spool_wait;	/* pause: seconds before the end */
	unsigned	 max_attempts;	/* crashes on one item: poison */
	double		 item_timeout;	/* seconds on one item, 0: none */
	unsigned	 max_init_failures; /* in a row: the pool fails */
	double		 start_seconds;	/* up this long after init: started */
	double		 slow_stream;	/* open longer: logged, 0: never */
	int		 mode;		/* MODE_*: how many workers run */
	unsigned	 min_spare;	/* dynamic: idle workers kept, at least */
	unsigned	 max_spare;	/* dynamic: idle workers kept, at most */
	double		 idle_timeout;	/* ondemand: an idle worker's life */
	unsigned	 max_streams;	/* a worker is replaced after; 0: never */
	char		*user;		/* workers run as this user, or NULL */
	uid_t		 uid;
	char		*group;		/* and group (default: user's) */
	gid_t		 gid;
	uint64_t	 rlimit_nofile;	/* 0: inherited */
	uint64_t	 rlimit_as;	/* bytes; 0: inherited */
	int		 nice;		/* absolute, as systemd's Nice=;
					 * NICE_INHERITED: the daemon's */
#define NICE_INHERITED	100	/* outside -20..19: "nice" not given */
	json_t		*env;		/* object: variables workers get */
	json_t		*env_keep;	/* array: names kept from the daemon's */
	int		 allow;		/* "allow" given: only these submit */
	uid_t		*allow_uids;
	size_t		 nallow_uids;
	gid_t		*allow_gids;
	size_t		 nallow_gids;
	int		 cluster;	/* "cluster": true: lanes on every
					   instance, through Redis */
};

/* The daemon's "cluster" section: where the pools' Redis is. */
struct cluster_conf {
	char		*redis;		/* "unix:/path" or "redis://host:port/db" */
	char		*instance;	/* this instance's name */
	char		*password_file;	/* Redis AUTH password, or NULL */
	double		 heartbeat;	/* seconds between job re-claims */
	double		 claim_idle;	/* a job idle this long is claimed */
};

struct conf {
	unsigned	 refs;		/* cns_conf, and each pool using it */
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
	double		 shutdown_timeout; /* open streams may finish */
	int		 root_workers;	/* running as root, pools may omit user */
	unsigned	 max_workers;	/* all pools together; 0: no limit */
	size_t		 max_client_buffer; /* replies queued, all clients */
	char		*admin_group;	/* may see status of all pools */
	gid_t		 admin_gid;
	char		*socket_group;	/* the socket's group, if set */
	gid_t		 socket_gid;
	struct cluster_conf *cluster;	/* "cluster" given, or NULL */
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
struct conf	*conf_ref(struct conf *);
void		 conf_unref(struct conf *);
int		 conf_pool_same(const struct pool_conf *,
		    const struct pool_conf *);
const char	*conf_crash_policy(int);
const char	*conf_mode(int);
int		 conf_check_root(const struct conf *, json_t *errors);
struct pool_conf *conf_pool(struct conf *, const char *name);
int		 conf_keypos(const char *text, size_t len, const char *key,
		    int *line, int *column);

/* log.c */
enum { LOG_LVL_ERR, LOG_LVL_WARN, LOG_LVL_INFO, LOG_LVL_DEBUG };
void	log_init(int level, const char *tag);
int	log_stderr_is_journal(void);
void	log_worker(void);
void	log_setlevel(int level);
/* What an entry is about, as journal fields (POOL=, STREAM=, ...). */
struct log_fields {
	const char	*pool;		/* NULL: none */
	uint64_t	 stream;	/* 0: none */
	pid_t		 worker_pid;	/* 0: none */
	uid_t		 client_uid;	/* (uid_t)-1: none */
};
void	log_set_fields(const struct log_fields *);
void	log_lines(int level, const char *prefix, const char *text);
/* Does a worker's line continue its message?  state: 0 at first. */
int	log_joins(int *state, const char *line, size_t len);
int	log_join_open(int state);
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

/* flush.c: output written at the end of the loop turn that queued it */
struct bufferevent;
struct flushable {
	struct bufferevent	*bev;
	int			 queued;
	int			 notify;	/* write callback on each drain */
	TAILQ_ENTRY(flushable)	 entry;
};
void	flush_init(struct flushable *, struct bufferevent *, int notify);
void	flush_later(struct flushable *);
void	flush_cancel(struct flushable *, int write_first);
void	flush_drained(struct flushable *);

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
const char *flow_too_long(const struct cut *, size_t max_item, char *,
	    size_t);
/* A source that ended inside a line: why its last line is rejected. */
#define FLOW_TRUNCATED	"truncated: the last line has no newline before " \
	"the end of the stream"

struct credit {
	size_t		 bytes;		/* unacked bytes in flight */
	unsigned	 items;		/* unacked items in flight */
};
int	credit_room(const struct credit *, size_t win_bytes,
	    unsigned win_items, size_t max_item, struct flow_room *);
void	credit_take(struct credit *, unsigned items, size_t bytes);
int	credit_ack(struct credit *, unsigned items, size_t bytes);

/* pool.c: the pool table, leasing and the wait queue */
/* crash_start(): how a gone worker's start went */
enum start_verdict { START_NONE, START_FAILED, START_STARTED };
struct worker;
struct stream;
TAILQ_HEAD(workerq, worker);
TAILQ_HEAD(streamq, stream);

struct lane;
TAILQ_HEAD(laneq, lane);

/* Items per second, one count per second for the last RATE_SECONDS: a
 * stream's (min_item_rate, status) and a pool's (status).  Added to as
 * items go out (crash.c), read by the pure decision crash_too_slow(). */
#define RATE_SECONDS	10
struct item_rate {
	int64_t		 sec;		/* the second n[sec % RATE_SECONDS] */
	uint32_t	 n[RATE_SECONDS];
};

struct pool {
	struct pool_conf *pc;
	struct conf	*conf;		/* holds pc; a reference */
	int		 retiring;	/* replaced or removed by a reload */
	unsigned	 nstreams;	/* streams that point here */
	unsigned	 nrunning;	/* of those, leased and not done */
	struct workerq	 workers;
	struct streamq	 queue;		/* streams waiting, FIFO */
	struct laneq	 lanes;		/* lanes waiting for a new worker */
	unsigned	 nworkers;	/* processes, any state */
	unsigned	 nidle;
	unsigned	 init_failures;	/* consecutive */
	char		*last_error;
	int		 has_complete;
	int		 failed;	/* max_init_failures reached */
	int		 last_in_init;	/* the last start died in init */
	int		 capped;	/* held back by max_workers */
	int		 freeing;	/* retired and empty: freed next turn */
	struct event	*respawn_ev;
	struct event	*watch_ev;	/* item_timeout checks */
	struct event	*manage_ev;	/* dynamic, ondemand: once a tick */
	unsigned	 spawn_rate;	/* dynamic: spawns this tick, doubling */
	uint64_t	 respawns;	/* workers started to replace others */
	uint64_t	 streams_done;
	uint64_t	 crashes;	/* workers lost inside a stream */
	/* Counts of the pool's streams that are freed (client.c adds them
	 * up); status adds the streams still held by a client. */
	uint64_t	 done_in, done_consumed, done_rejected,
			 done_quarantined;
	struct item_rate rate;		/* items sent to its workers */
	double		 since;		/* created, monotonic seconds */
	TAILQ_ENTRY(pool) entry;
};
TAILQ_HEAD(poolq, pool);

struct pool	*pool_new(struct pool_conf *);
void		 pool_free(struct pool *);
struct pool	*pool_find(const char *name);
void		 pool_add(struct pool *);
struct poolq	*pool_all(void);
struct poolq	*pool_retired(void);
void		 pool_start(struct pool *);
unsigned	 pool_lease(struct pool *, unsigned want, struct worker **out);
void		 pool_idle(struct pool *, struct worker *);
void		 pool_dispatch(struct pool *);
void		 pool_worker_gone(struct pool *, struct worker *,
		    enum start_verdict);
void		 pool_lane_wait(struct pool *, struct lane *);
void		 pool_lane_unwait(struct pool *, struct lane *);
unsigned	 pool_slot(struct pool *);
const char	*pool_unavailable(struct pool *);
void		 pool_stop_all(void);
void		 pool_retire(struct pool *, struct pool *successor);
void		 pool_retire_check(struct pool *);
void		 pool_stream_new(struct pool *);
void		 pool_stream_free(struct pool *);
void		 pool_demand(struct pool *);
void		 pool_works(struct pool *);
void		 pool_start_failed(struct pool *, char *msg);
void		 pool_free_all(void);

/* worker.c: the master's side of worker processes, a table keyed by pid */
enum worker_state { W_STARTING, W_IDLE, W_LEASED, W_EXITING };

struct range { uint64_t first, last; };

/*
 * Shared with the worker process (one page, MAP_SHARED): where its consume
 * call is.  The worker writes, the master reads, and trusts nothing it
 * reads without checking it against what it sent.
 */
struct worker_shm {
	uint64_t	 cur;		/* seq of the item consume holds, 0 none */
	uint64_t	 last_done;	/* seq of the last item it finished */
	uint64_t	 ndone;		/* items finished this consume call */
	uint64_t	 started;	/* items handed out this consume call */
	uint64_t	 ended;		/* the iterator reached the end */
};

/* One value of a worker's page, as the master reads it. */
static inline uint64_t
shm_load(const uint64_t *p)
{
	return __atomic_load_n(p, __ATOMIC_RELAXED);
}

struct worker {
	pid_t		 pid;
	struct pool	*pool;
	unsigned	 slot;		/* 1-based within the pool */
	enum worker_state state;
	struct bufferevent *bev;
	struct flushable out;		/* bev's output, written per turn */
	int		 status;	/* wait status, once reaped */
	int		 reaped;
	int		 closed;	/* its socket hit EOF */
	int		 init_failed;	/* it sent INITFAIL */
	int		 gone;		/* out of the table; freed next turn */
	int		 startup;	/* one of the first, not settled yet */
	double		 ready_at;	/* monotonic seconds at READY, 0: not */
	double		 forked_at;	/* monotonic seconds at fork */
	time_t		 forked_wall;	/* wall-clock time at fork */
	struct worker_shm *shm;
	/* item_timeout: what it held at the last look, and since when */
	uint64_t	 watch_cur, watch_started;
	double		 watch_since;
	uint64_t	 timed_out;	/* seq it was killed on, 0 if not, or: */
#define TIMEOUT_END	 UINT64_MAX	/* after its items ended */
#define TIMEOUT_COMPLETE (UINT64_MAX - 1) /* in the completion handler */
	/* while leased */
	struct stream	*stream;
	unsigned	 index;		/* in stream->w[] */
	struct credit	 credit;
	uint64_t	 sent;		/* items sent this stream */
	uint64_t	 rejected;	/* of those, rejected by the worker */
	int		 returned;	/* its consume call returned */
	unsigned	 streams_served;
	double		 idle_since;	/* monotonic seconds, while idle */
	TAILQ_ENTRY(worker) entry;	/* pool->workers */
	struct worker	*hnext;		/* pid hash chain */
};

void		 worker_on(int (*frame)(struct worker *,
		    const struct frame_hdr *, struct evbuffer *),
		    void (*gone)(struct worker *, const char *how));
struct worker	*worker_spawn(struct pool *, unsigned slot);
void		 worker_protocol(struct worker *, const char *why);
void		 worker_bind(struct worker *, struct stream *, unsigned index);
unsigned	 worker_starting(void);
struct worker	*worker_find(pid_t);
void		 worker_reap(void);
void		 worker_send(struct worker *, uint16_t type, uint64_t stream,
		    const void *, size_t);
void		 worker_send_json(struct worker *, uint16_t type,
		    uint64_t stream, json_t *);
struct evbuffer	*worker_output(struct worker *);
int		 worker_alive(const struct worker *);
void		 worker_stop(struct worker *);
void		 worker_stop_all(void);
void		 worker_kill_all(void);
unsigned	 worker_count(void);
void		 worker_watch(struct worker *, double now);

/* dispatch.c: what workers say, routed to their stream and pool */
void		 dispatch_init(void);
int		 dispatch_frame(struct worker *, const struct frame_hdr *,
		    struct evbuffer *);
void		 dispatch_gone(struct worker *, const char *how);

/* stream.c: one client stream, from lease to final line */
struct ingress;
struct ingress_ops {
	void	(*input)(struct stream *);	/* stream_input */
	void	(*abort)(struct stream *, const char *why);
	void	(*free)(struct stream *);	/* from stream_free */
};
enum stream_state { S_QUEUED, S_RUNNING, S_COMPLETING, S_DONE };

/*
 * One consume call of a stream, across the workers that run it: when its
 * worker dies the lane waits for another and (on_crash replay/redeliver)
 * resends what the spool file holds, so the call starts over.
 */
enum lane_state { L_LIVE, L_WAITING, L_RETURNED, L_DEAD };

struct lane {
	struct stream	*stream;
	unsigned	 index;
	enum lane_state	 state;
	int		 spool;		/* fd of the spool file, -1: none */
	int		 spool_broken;	/* a write failed: no resend */
	int		 spool_paused;	/* a write failed: wait for room */
	int		 spool_warned;	/* the client was told */
	struct evbuffer	*spool_stage;	/* records not yet written */
	uint64_t	 spool_len;	/* bytes written and staged */
	uint64_t	 resend_off;	/* next spool record to resend */
	uint64_t	 resend_end;	/* resend records before this */
	uint64_t	 resend_from;	/* and only seqs from this one */
	int		 end_sent;	/* END went to its current worker */
	uint64_t	 items;		/* seqs given to the lane */
	uint64_t	 rejected;	/* reported to the client */
	uint64_t	 reject_hwm;	/* highest seq reported rejected */
	uint64_t	 quarantined;
	uint64_t	 acked;		/* finished by workers that died
					   (redeliver counts them consumed) */
	unsigned	 fruitless;	/* lost before starting an item */
	unsigned	 end_crashes;	/* lost after the items ended */
	struct range	*ranges;	/* seqs given to the lane */
	size_t		 nranges, caprange;
	int		 ranges_inexact; /* merged across gaps */
	TAILQ_ENTRY(lane) wentry;	/* pool->lanes while waiting */
};

struct attempt { uint64_t seq; unsigned n; };

struct stream {
	uint64_t	 id;
	struct source	 src;		/* where items come from, replies go */
	double		 since;		/* opened, monotonic seconds */
	struct pool	*pool;
	enum stream_state state;
	unsigned	 want;
	json_t		*params;
	json_t		*args, *kwargs;	/* the client's (client_args), or NULL */
	struct worker	**w;		/* leased workers */
	struct lane	*lanes;		/* one per leased worker */
	unsigned	 nw, nlive, nreturned, nwaiting;
	unsigned	 rr;		/* round-robin cursor */
	uint64_t	 seq;		/* last sequence number given */
	uint64_t	 rejected, consumed, unconsumed, quarantined;
	struct attempt	*attempts;	/* crashes per item, for poison */
	size_t		 nattempts;
	unsigned	 crashes;
	int		 eof;		/* the client closed its side */
	int		 skipping;	/* dropping an over-long line */
	int		 ended;		/* all input is read and handed out */
	uint64_t	 orphan_from;	/* first seq read with no worker left */
	json_t		*results;	/* one slot per leased worker */
	json_t		*errors;
	json_t		*completion;
	struct worker	*completer;
	struct event	*timer;		/* queue timeout */
	double		 leased_at;	/* monotonic seconds, once leased */
	struct item_rate rate;		/* items sent, for min_item_rate */
	struct event	*slow_timer;	/* slow_stream, or NULL */
	struct event	*spool_timer;	/* spool_full pause: retry, or NULL */
	double		 spool_paused_at; /* monotonic seconds; 0: reading */
	int		 spool_cut;	/* ended by spool_wait: drop the rest */
	/* cluster.c: a cluster pool's stream at its ingress (items go to
	 * Redis, not to local workers), or NULL; stream.c reaches it only
	 * through cl_ops, as sources through source.h */
	struct ingress	*cl;
	const struct ingress_ops *cl_ops;
	int		 lane_only;	/* one lane of a cluster stream: no
					   completion here, the ingress's */
	json_t		*complete_only;	/* run only the completion over these
					   results (a cluster stream's) */
	TAILQ_ENTRY(stream) qentry;	/* pool->queue while queued */
	TAILQ_ENTRY(stream) entry;	/* every stream not yet freed */
};

struct stream	*stream_new(const struct source_ops *, void *arg,
		    struct pool *, unsigned want, json_t *params);
struct stream	*stream_alloc(const struct source_ops *, void *arg,
		    struct pool *, json_t *params);
void		 stream_free(struct stream *);
void		 stream_log_fields(struct stream *, struct log_fields *);
void		 stream_leased(struct stream *, struct worker **, unsigned);
void		 stream_refuse(struct stream *, const char *code,
		    const char *why);
void		 stream_input(struct stream *);
void		 stream_eof(struct stream *);
void		 stream_cut(struct stream *, const char *why);
int		 stream_ack(struct stream *, struct worker *, unsigned items,
		    size_t bytes);
int		 stream_reject(struct stream *, struct worker *, uint64_t seq,
		    const char *why);
int		 stream_result(struct stream *, struct worker *, json_t *);
void		 stream_completion(struct stream *, struct worker *, json_t *);
void		 stream_worker_gone(struct stream *, struct worker *,
		    const char *how);
void		 stream_abort(struct stream *, const char *why);
void		 stream_lane_leased(struct lane *, struct worker *);
void		 stream_lane_fail(struct lane *, const char *why);
unsigned	 stream_count(void);	/* streams not yet freed */
struct stream	*stream_next(struct stream *);
double		 stream_waited(const struct stream *);

/* feed.c: one item's way from the source to a worker, and back (ACK) */
enum feed_result { FEED_OK, FEED_LANE_LOST, FEED_ORPHANED };
enum feed_result feed_pump(struct stream *, struct lane **lost, char *why,
		    size_t whylen);
void		 feed_reject(struct stream *, uint64_t seq, const char *why);
int		 feed_holds(const struct lane *, uint64_t seq);
int		 feed_spool_flush(struct stream *, struct lane *);
int		 feed_spool_paused(const struct stream *);
int		 feed_spool_retry(struct stream *, char *why, size_t whylen);
void		 feed_spool_close(struct lane *);
char		*feed_spool_line(struct stream *, struct lane *, uint64_t seq);

/* crash.c: the failure policy, decisions only (no I/O, no state) */
#define RESPAWN_MIN_MS	100	/* the first wait after a failed start */
#define RESPAWN_MAX_MS	30000	/* the longest */
#define CRASHES_MAX	1000	/* workers a stream may lose in all */

/* What stream.c knows when a lane's worker died inside consume. */
struct crash_facts {
	int		 policy;	/* CRASH_* */
	unsigned	 max_attempts;
	uint64_t	 blame;		/* crash_blame(): the item it held */
	int		 blame_held;	/* blame is one of the lane's seqs */
	uint64_t	 last_done;	/* its page: the last item finished */
	int		 last_done_held;
	uint64_t	 ndone;		/* items finished by its call */
	uint64_t	 started;	/* items its call took */
	uint64_t	 ended;		/* its iterator had ended */
	uint64_t	 sent, rejected; /* lines it was sent, and rejected */
	uint64_t	 resend_from;	/* the lane's: seqs before are done */
	int		 spool_ok;	/* its lines can be sent again */
	int		 spool_pending;	/* not yet: they wait in memory for
					   room (spool_full "pause") */
	unsigned	 stream_crashes; /* workers the stream lost, this one
					   included */
	unsigned	 attempts;	/* crashes on blame before this one */
	unsigned	 end_crashes;	/* the lane's, before this one */
	unsigned	 fruitless;
};

enum crash_action { CRASH_RERUN, CRASH_LANE_LOST };
enum crash_note { CRASH_NOTE_NONE, CRASH_NOTE_ITEM, CRASH_NOTE_BETWEEN };

struct crash_verdict {
	enum crash_action action;
	char		 why[160];	/* LANE_LOST: said after how it died */
	uint64_t	 blame;		/* the item it died on, 0: none */
	unsigned	 attempts;	/* crashes on blame, this one included */
	int		 quarantine;	/* blame is poison: report, skip it */
	unsigned	 end_crashes;	/* the lane's new counts */
	unsigned	 fruitless;
	int		 plugin_works;	/* it took an item: no more backoff */
	uint64_t	 resend_from;	/* RERUN: send again from this seq */
	uint64_t	 acked;		/* RERUN: items done, counted consumed
					   (redeliver) */
	enum crash_note	 note;		/* what the log says */
	int		 bad_progress;	/* redeliver: its page does not add up,
					   so all its items go again */
};

/* What dispatch.c knows when a worker is gone, for crash_start(). */
struct start_facts {
	int		 init_failed;	/* it sent INITFAIL */
	int		 ready;		/* it finished init (READY) */
	double		 up;		/* seconds since READY */
	double		 start_seconds;	/* the pool's */
	unsigned	 streams_served;
	int		 in_stream;	/* died leased to a stream */
	int		 exiting;	/* told to exit */
};
enum watch_verdict { WATCH_NONE, WATCH_MOVED, WATCH_WAIT, WATCH_KILL };
/* crash_spool_full(): a lane's spool could not be written */
enum spool_verdict {
	SPOOL_UNPROTECTED,	/* send on without a copy (warned) */
	SPOOL_PAUSE,		/* stop reading the source, retry the write */
	SPOOL_END		/* paused spool_wait: end the stream */
};

int		 crash_spools(int policy);
uint64_t	 crash_blame(uint64_t cur, uint64_t last_done,
		    uint64_t timed_out);
void		 crash_lane(const struct crash_facts *, struct crash_verdict *);
enum start_verdict crash_start(const struct start_facts *);
int		 crash_refuse(int pool_failed, int last_start_in_init,
		    int lane);
unsigned	 crash_backoff_ms(unsigned failures);
int		 crash_pool_failed(unsigned failures, unsigned max_init_failures);
enum watch_verdict crash_watch(uint64_t cur, uint64_t started,
		    uint64_t seen_cur, uint64_t seen_started, double since,
		    double now, double timeout);
char		*crash_describe(uint64_t timed_out, double item_timeout,
		    int status);
enum spool_verdict crash_spool_full(int mode, double paused, double wait);

/* min_item_rate: struct item_rate, above struct stream */
void		 rate_add(struct item_rate *, int64_t sec, unsigned n);
double		 rate_avg(const struct item_rate *, int64_t sec);
int		 crash_too_slow(const struct item_rate *, int64_t sec,
		    double running, double min_rate);

/* spool.c: replay spool files */
struct spool_rec {
	uint64_t	 first;		/* seq of the first line */
	uint32_t	 count;		/* lines */
	uint32_t	 nbytes;	/* bytes of lines, newlines included */
};
int		 spool_check(const struct conf *, char *why, size_t whylen);
int		 spool_open(const char *dir);
void		 spool_stage(struct evbuffer *stage, uint64_t first,
		    uint32_t count, struct evbuffer *in, size_t nbytes);
int		 spool_flush(int fd, struct evbuffer *stage);
int		 spool_rec_at(int fd, uint64_t off, struct spool_rec *);
char		*spool_lines(int fd, uint64_t off, const struct spool_rec *);
char		*spool_find(int fd, uint64_t len, uint64_t seq);

/* tap.c: workers' standard output and error, logged */
int		 tap_pipe(int fds[2]);
void		 tap_start(int fd, const char *pool, unsigned slot, pid_t);
unsigned	 tap_count(void);
void		 tap_sync(pid_t);
void		 tap_free_all(void);

/* access.c: who may submit to a pool, and who is an administrator */
struct peer {
	uid_t		 uid;		/* from SO_PEERCRED */
	gid_t		 gid;
	pid_t		 pid;
	char		*user;		/* from the passwd database, or NULL */
	gid_t		*groups;	/* supplementary groups, looked up */
	int		 ngroups;	/* -1: not looked up yet */
};
void		 peer_init(struct peer *, uid_t, gid_t, pid_t);
void		 peer_clear(struct peer *);
const char	*peer_user(struct peer *);
int		 peer_in_group(struct peer *, gid_t);
int		 access_submit(struct peer *, const struct pool_conf *,
		    char *why, size_t whylen);
int		 access_admin(struct peer *, const struct conf *);
int		 access_status(struct peer *, const struct conf *,
		    const struct pool_conf *, char *why, size_t whylen);

/* status.c: the status and pools replies */
json_t		*status_pools(void);
json_t		*status_reply(struct pool *only);
json_t		*status_metrics(void);

/* header.c: a client's header line */
json_t		*header_parse(const char *line, size_t len, char *why,
		    size_t whylen);

/* client.c: the listening socket and client connections */
struct client;
extern size_t	 cns_client_out;	/* reply bytes queued, all clients */
extern double	 cns_started_at;	/* the master's start, monotonic */
extern time_t	 cns_started_wall;	/* the master's start, wall clock */
int		 client_listen(struct event_base *, const struct conf *, int fd);
void		 client_abort_all(const char *why);
void		 client_free_all(void);
void		 client_accepting(void);
void		 client_close_listener(void);

/* consumersd.c: daemon-wide state */
extern int	 cns_startup;	/* spawning the first workers */
extern struct conf_overrides cns_overrides;
extern int	 cns_debug;

/* util.c: helpers for every room; work put off to a later loop turn */
extern struct event_base *cns_base;
extern struct conf	*cns_conf;
extern int	 cns_stopping;	/* stopping: no new streams */
extern const char *cns_socket_abs; /* where clients reach us, or NULL */
/* The path of the socket systemd passed (socket activation), or NULL. */
extern const char	*cns_activated_socket;
double		 cns_now(void);
struct timeval	 cns_tv(double seconds);
void		 cns_proctitle_init(int argc, char **argv);
void		 cns_proctitle(const char *fmt, ...)
		    __attribute__((format(printf, 1, 2)));
char		*cns_describe_exit(int status);
void		 cns_later(void (*fn)(void *), void *arg);
void		 cns_later_run(void);
void		 cns_later_free(void);
void		 cns_on_change(void (*fn)(void));
void		 cns_changed(void);
char		*cns_json_dumps(const json_t *, size_t flags);

/* cluster.c: cluster pools on Redis Streams (stubs without hiredis) */
void		 cluster_init(struct event_base *, const struct conf *);
void		 cluster_free(void);
void		 cluster_abort_all(const char *why);
void		 cluster_result(uint64_t stream, void (*done)(void *, json_t *),
		    void *arg);
void		 cluster_result_cancel(void *arg);
const char	*cluster_unavailable(void);
struct stream	*cluster_submit(const struct source_ops *, void *arg,
		    struct pool *, unsigned want, json_t *header);
json_t		*cluster_status(const struct pool *);

/* reload.c: SIGHUP */
int		 cns_reload(char *why, size_t whylen);
json_t		*cns_reload_reasons(void); /* last refusal's */

/*
 * notify.c: what systemd hears (sd_notify); no-ops without libsystemd or
 * NOTIFY_SOCKET.  notify_init arms the watchdog (WATCHDOG_USEC) at start;
 * notify_ready sends READY=1 (again after a reload) and starts a STATUS=
 * line every 5 s; notify_status sets a note kept on those lines (a failed
 * reload, say) until notify_status_clear.
 */
extern uint64_t	 cns_items_in;	/* items handed to workers, ever */
void		 notify_init(struct event_base *);
void		 notify_ready(void);
void		 notify_reloading(void);
void		 notify_stopping(void);
void		 notify_status(const char *fmt, ...)
		    __attribute__((format(printf, 1, 2)));
void		 notify_status_clear(void);
void		 notify_free(void);

/* child/child.c: the worker process, never returns */
_Noreturn void	 child_main(int fd, const struct pool_conf *, unsigned slot,
		    struct worker_shm *);
int		 child_probe(const struct pool_conf *, char *why, size_t);

#endif /* CONSUMERSD_H */
