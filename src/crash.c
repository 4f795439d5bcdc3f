/*
 * crash.c - the failure policy, in one place: decisions only.  Whoever
 * sees a worker die (stream.c for a consume call, dispatch.c and pool.c
 * for a start, worker.c for the item_timeout watch) gathers the facts and
 * asks here; this file does no I/O and keeps no state (crash_describe
 * only formats), so each rule is a function of its facts, unit-tested in
 * tests/unit/check_crash.c.
 *
 * A consume call (a lane) that loses its worker: on_crash "fail" loses
 * its items; "replay" runs the call again on a new worker over every item
 * it took (kept in a spool file); "redeliver" sends again only what the
 * dead worker had not finished.  An item a consumer died on max_attempts
 * times is poison: quarantined (reported and skipped).  A call that dies
 * max_attempts times after its items ended, or before it took any, is
 * lost, and so is one whose items could not be spooled (unless, under
 * spool_full "pause", they wait in memory for room).  A worker that dies
 * in init, or within start_seconds of it, is a failed start; failed
 * starts back off exponentially and mark the pool failed.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "consumersd.h"

/* Whether the pool keeps its lanes' items in spool files. */
int
crash_spools(int policy)
{
	return policy != CRASH_FAIL;
}

/*
 * The item to blame for a death: the one its page says it held, or, when
 * item_timeout killed it, the one it was stuck on (unless it finished that
 * one between the look and the kill).
 */
uint64_t
crash_blame(uint64_t cur, uint64_t last_done, uint64_t timed_out)
{
	if (timed_out != 0 && timed_out < TIMEOUT_COMPLETE &&
	    last_done < timed_out)
		return timed_out;
	return cur;
}

static void
lost(struct crash_verdict *v, const char *fmt, unsigned n)
{
	v->action = CRASH_LANE_LOST;
	if (fmt != NULL)
		snprintf(v->why, sizeof v->why, fmt, n);
}

/*
 * A lane's worker died inside its consume call.  The caller applies the
 * verdict: counts, the quarantine, and the lane lost or waiting for a new
 * worker from v->resend_from on.
 */
void
crash_lane(const struct crash_facts *f, struct crash_verdict *v)
{
	uint64_t blame = f->blame_held && f->blame >= f->resend_from ?
	    f->blame : 0;

	memset(v, 0, sizeof *v);
	v->resend_from = f->resend_from;
	v->end_crashes = f->end_crashes;
	v->fruitless = f->fruitless;
	if (f->policy == CRASH_FAIL) {
		lost(v, NULL, 0);
		return;
	}
	/* Lines that wait in memory for room in the spool go again once
	 * they are written (or the lane is lost after spool_wait). */
	if (!f->spool_ok && !f->spool_pending) {
		lost(v, " (its items could not be spooled, so they cannot be "
		    "sent again)", 0);
		return;
	}
	if (f->stream_crashes > CRASHES_MAX) {
		lost(v, " (the stream lost %u workers, the most it may)",
		    CRASHES_MAX);
		return;
	}
	if (blame != 0) {
		v->blame = blame;
		v->attempts = f->attempts + 1;
		v->quarantine = v->attempts >= f->max_attempts;
		v->note = CRASH_NOTE_ITEM;
	} else if (f->ended) {
		if (++v->end_crashes >= f->max_attempts) {
			lost(v, " (consume died after its items ended %u "
			    "times)", v->end_crashes);
			return;
		}
	} else if (f->sent > f->rejected && f->started == 0) {
		if (++v->fruitless >= f->max_attempts) {
			lost(v, " (consume died %u times before it took an "
			    "item)", v->fruitless);
			return;
		}
	} else
		v->note = CRASH_NOTE_BETWEEN;
	if (f->started > 0) {
		v->fruitless = 0;
		v->plugin_works = 1;
	}
	v->action = CRASH_RERUN;
	if (f->policy == CRASH_REDELIVER) {
		/* What it finished stays done; the rest goes again. */
		uint64_t from = blame != 0 ? blame : f->last_done != 0 &&
		    f->last_done_held ? f->last_done + 1 : 0;
		if (f->ndone <= f->sent - f->rejected && from != 0 &&
		    from >= f->resend_from) {
			v->acked = f->ndone;
			v->resend_from = from;
		} else if (f->ndone > 0)
			v->bad_progress = 1;
	}
}

/*
 * A worker is gone: whether it was a failed start (back off), a worker
 * that had started (its death is a crash of a running worker: respawn at
 * once, and the backoff starts over), or neither (told to exit, or lost
 * inside a stream, which the stream's policy handles).  supervisord's
 * startsecs rule: a worker that finished init and stayed up start_seconds,
 * or served a stream, has started; one that dies in init, or sooner after
 * it, has not.  An init that failed (INITFAIL) always counts.
 */
enum start_verdict
crash_start(const struct start_facts *f)
{
	if (f->init_failed)
		return START_FAILED;
	if (f->exiting || f->in_stream)
		return START_NONE;
	if (!f->ready)
		return START_FAILED;
	if (f->streams_served > 0 || f->up >= f->start_seconds)
		return START_STARTED;
	return START_FAILED;
}

/*
 * Whether a stream is refused at once rather than queued, while none of
 * the pool's workers is up: only when the pool is marked failed and its
 * last start attempt died in init, so waiting would only end in
 * queue_timeout.  A pool that only backs off (a respawn scheduled) keeps
 * its streams waiting.  A lane of a running stream, which has no
 * queue_timeout, fails once the pool is marked failed at all.
 */
int
crash_refuse(int pool_failed, int last_start_in_init, int lane)
{
	return pool_failed && (last_start_in_init || lane);
}

/* The wait before the next start after `failures` failed ones in a row. */
unsigned
crash_backoff_ms(unsigned failures)
{
	unsigned shift = failures < 9 ? failures : 9;
	unsigned ms = RESPAWN_MIN_MS << shift;

	return ms > RESPAWN_MAX_MS ? RESPAWN_MAX_MS : ms;
}

/* Whether that many failed starts in a row mark the pool failed. */
int
crash_pool_failed(unsigned failures, unsigned max_init_failures)
{
	return failures >= max_init_failures;
}

/*
 * item_timeout, at one look at a leased worker: `cur` is what it holds now
 * (an item's seq, TIMEOUT_END, TIMEOUT_COMPLETE, or 0 for nothing to
 * watch), `started` how many items its call has taken; `seen_*` and
 * `since` what the last look saw and since when.
 */
enum watch_verdict
crash_watch(uint64_t cur, uint64_t started, uint64_t seen_cur,
    uint64_t seen_started, double since, double now, double timeout)
{
	if (cur == 0)
		return WATCH_NONE;
	if (cur != seen_cur || started != seen_started)
		return WATCH_MOVED;
	if (now - since < timeout)
		return WATCH_WAIT;
	return WATCH_KILL;
}

/* How a worker ended, for the log and the stream's errors. */
char *
crash_describe(uint64_t timed_out, double item_timeout, int status)
{
	char *how;
	int r;

	if (timed_out == 0)
		return cns_describe_exit(status);
	if (timed_out == TIMEOUT_END)
		r = asprintf(&how, "killed after item_timeout (%g s): consume "
		    "did not return after its items ended", item_timeout);
	else if (timed_out == TIMEOUT_COMPLETE)
		r = asprintf(&how, "killed after item_timeout (%g s) in the "
		    "completion handler", item_timeout);
	else
		r = asprintf(&how, "killed after item_timeout (%g s) on item %"
		    PRIu64, item_timeout, timed_out);
	if (r == -1)
		fatal("%s: asprintf", __func__);
	return how;
}

/*
 * spool_full: a lane's spool file could not be written (a full file
 * system, say).  "continue" sends on without a copy, so a crash of that
 * lane loses what it took (the client is warned); "pause" stops reading
 * the source and retries the write, so nothing goes to a worker without
 * its copy, and ends the stream once it has waited spool_wait.  `paused`:
 * seconds since the stream stopped reading for it (0 at the first
 * failure).
 */
enum spool_verdict
crash_spool_full(int mode, double paused, double wait)
{
	if (mode == SPOOL_FULL_CONTINUE)
		return SPOOL_UNPROTECTED;
	if (paused >= wait)
		return SPOOL_END;
	return SPOOL_PAUSE;
}

/*
 * min_item_rate: a stream's items per second over the last RATE_SECONDS.
 * rate_add() counts n items sent in second `sec` (seconds only go
 * forward; the slots of seconds skipped are cleared).
 */
void
rate_add(struct item_rate *r, int64_t sec, unsigned n)
{
	if (sec > r->sec) {
		int64_t gap = sec - r->sec;
		if (gap >= RATE_SECONDS)
			memset(r->n, 0, sizeof r->n);
		else
			for (int64_t t = r->sec + 1; t <= sec; t++)
				r->n[t % RATE_SECONDS] = 0;
		r->sec = sec;
	}
	if (sec > r->sec - RATE_SECONDS) {
		uint32_t *slot = &r->n[sec % RATE_SECONDS];
		*slot = n > UINT32_MAX - *slot ? UINT32_MAX : *slot + n;
	}
}

/* Items per second over the RATE_SECONDS seconds up to `sec`. */
double
rate_avg(const struct item_rate *r, int64_t sec)
{
	double sum = 0;

	for (int64_t t = sec - RATE_SECONDS + 1; t <= sec; t++)
		if (t <= r->sec && t > r->sec - RATE_SECONDS)
			sum += r->n[t % RATE_SECONDS];
	return sum / RATE_SECONDS;
}

/*
 * Should a stream that has run `running` seconds be ended for sending
 * fewer than min_rate items a second (0: never)?  Only once it has run a
 * whole window, so a new stream is not judged on part of one.  The
 * caller asks only while other streams wait for its pool.
 */
int
crash_too_slow(const struct item_rate *r, int64_t sec, double running,
    double min_rate)
{
	if (min_rate <= 0 || running < RATE_SECONDS)
		return 0;
	return rate_avg(r, sec) < min_rate;
}
