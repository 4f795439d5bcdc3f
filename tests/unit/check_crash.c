/*
 * check_crash.c - unit tests for src/crash.c: the failure policy.  Each
 * function there is a pure decision, so each test hands it facts and
 * checks the verdict field by field.  What they guard is the behaviour
 * the daemon had before the policy moved into crash.c (lane_crashed in
 * stream.c, worker_watch and worker_gone in worker.c, pool_worker_gone in
 * pool.c): which item is blamed, when an item is poison, when a lane is
 * lost and what the stream is told why, where redeliver sends again from,
 * what counts as a failed start, the respawn backoff, the item_timeout
 * watch and how a worker's end is described.
 */
/* config.h (included first by the build) defines _GNU_SOURCE. */
#include <sys/wait.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "consumersd.h"

/* ---- crash_spools, crash_blame ---- */

START_TEST(test_spools)
{
	ck_assert_int_eq(crash_spools(CRASH_REPLAY), 1);
	ck_assert_int_eq(crash_spools(CRASH_REDELIVER), 1);
	ck_assert_int_eq(crash_spools(CRASH_FAIL), 0);
}
END_TEST

static const struct {
	uint64_t	 cur, last_done, timed_out;
	uint64_t	 blame;
} blames[] = {
	/* Not timed out: what its page says. */
	{ 7, 0, 0, 7 },
	{ 7, 6, 0, 7 },
	{ 0, 6, 0, 0 },
	/* Timed out on an item it did not finish: that item. */
	{ 7, 0, 9, 9 },
	{ 7, 8, 9, 9 },
	{ 0, 3, 5, 5 },
	{ 0, 0, TIMEOUT_COMPLETE - 1, TIMEOUT_COMPLETE - 1 },
	/* It finished it between the look and the kill: its page. */
	{ 7, 9, 9, 7 },
	{ 7, 10, 9, 7 },
	{ 0, 9, 9, 0 },
	/* Timed out after its items ended, or completing: its page. */
	{ 7, 0, TIMEOUT_END, 7 },
	{ 0, 0, TIMEOUT_END, 0 },
	{ 7, 0, TIMEOUT_COMPLETE, 7 },
	{ 0, 0, TIMEOUT_COMPLETE, 0 },
};

START_TEST(test_blame)
{
	ck_assert_uint_eq(crash_blame(blames[_i].cur, blames[_i].last_done,
	    blames[_i].timed_out), blames[_i].blame);
}
END_TEST

/* ---- crash_lane ---- */

/*
 * A worker that died between items: it was sent items 1..10 and took 4,
 * finished 3, the last of them 3 (one of the lane's).  Tests change what
 * they are about.
 */
static struct crash_facts
facts(int policy)
{
	struct crash_facts f;

	memset(&f, 0, sizeof f);
	f.policy = policy;
	f.max_attempts = 3;
	f.last_done = 3;
	f.last_done_held = 1;
	f.ndone = 3;
	f.started = 4;
	f.sent = 10;
	f.resend_from = 1;
	f.spool_ok = 1;
	f.stream_crashes = 1;
	return f;
}

/* crash_lane, which must write every field of its verdict. */
static struct crash_verdict
lane(const struct crash_facts *f)
{
	struct crash_verdict v;

	memset(&v, 0xa5, sizeof v);
	crash_lane(f, &v);
	ck_assert_ptr_nonnull(memchr(v.why, '\0', sizeof v.why));
	return v;
}

/* A lost lane: nothing else happens to it. */
static void
check_lost(const struct crash_facts *f, const struct crash_verdict *v,
    const char *why)
{
	ck_assert_int_eq(v->action, CRASH_LANE_LOST);
	ck_assert_str_eq(v->why, why);
	ck_assert_uint_eq(v->blame, 0);
	ck_assert_uint_eq(v->attempts, 0);
	ck_assert_int_eq(v->quarantine, 0);
	ck_assert_int_eq(v->plugin_works, 0);
	ck_assert_uint_eq(v->resend_from, f->resend_from);
	ck_assert_uint_eq(v->acked, 0);
	ck_assert_int_eq(v->note, CRASH_NOTE_NONE);
	ck_assert_int_eq(v->bad_progress, 0);
}

START_TEST(test_lane_fail)
{
	struct crash_facts f = facts(CRASH_FAIL);
	struct crash_verdict v;

	/* Lost, said how by the caller alone, whatever else is true. */
	f.blame = 4;
	f.blame_held = 1;
	f.attempts = 2;
	f.end_crashes = 1;
	f.fruitless = 2;
	f.resend_from = 2;
	f.spool_ok = 0;
	f.stream_crashes = CRASHES_MAX + 1;
	v = lane(&f);
	check_lost(&f, &v, "");
	ck_assert_uint_eq(v.end_crashes, 1);
	ck_assert_uint_eq(v.fruitless, 2);

	f = facts(CRASH_FAIL);
	f.ended = 1;
	f.end_crashes = 5;
	v = lane(&f);
	check_lost(&f, &v, "");
	ck_assert_uint_eq(v.end_crashes, 5);
	ck_assert_uint_eq(v.fruitless, 0);
}
END_TEST

#define NO_SPOOL	" (its items could not be spooled, so they cannot be " \
			"sent again)"

START_TEST(test_lane_no_spool)
{
	int policies[] = { CRASH_REPLAY, CRASH_REDELIVER };

	for (size_t i = 0; i < sizeof policies / sizeof policies[0]; i++) {
		struct crash_facts f = facts(policies[i]);
		struct crash_verdict v;

		/* Before the item's attempt is counted, or the stream's. */
		f.blame = 4;
		f.blame_held = 1;
		f.attempts = 2;
		f.stream_crashes = CRASHES_MAX + 1;
		f.fruitless = 1;
		f.end_crashes = 2;
		f.spool_ok = 0;
		v = lane(&f);
		check_lost(&f, &v, NO_SPOOL);
		ck_assert_uint_eq(v.end_crashes, 2);
		ck_assert_uint_eq(v.fruitless, 1);
	}
}
END_TEST

/* spool_full "pause": the lines wait in memory for room, so the call
 * runs again (lost only if spool_wait passes first, in stream.c). */
START_TEST(test_lane_spool_pending)
{
	struct crash_facts f = facts(CRASH_REPLAY);
	struct crash_verdict v;

	f.spool_ok = 0;
	f.spool_pending = 1;
	f.blame = 4;
	f.blame_held = 1;
	v = lane(&f);
	ck_assert_int_eq(v.action, CRASH_RERUN);
	ck_assert_uint_eq(v.blame, 4);
	ck_assert_uint_eq(v.attempts, 1);
	ck_assert_uint_eq(v.resend_from, 1);

	/* Under fail nothing is spooled: pending changes nothing. */
	f = facts(CRASH_FAIL);
	f.spool_ok = 0;
	f.spool_pending = 1;
	v = lane(&f);
	check_lost(&f, &v, "");
}
END_TEST

START_TEST(test_lane_stream_crashes)
{
	struct crash_facts f = facts(CRASH_REPLAY);
	struct crash_verdict v;

	/* The thousandth worker lost is still replaced. */
	f.stream_crashes = CRASHES_MAX;
	v = lane(&f);
	ck_assert_int_eq(v.action, CRASH_RERUN);
	ck_assert_str_eq(v.why, "");

	/* One more is too many, before the item is blamed. */
	f.stream_crashes = CRASHES_MAX + 1;
	f.blame = 4;
	f.blame_held = 1;
	f.fruitless = 1;
	v = lane(&f);
	check_lost(&f, &v, " (the stream lost 1000 workers, the most it may)");
	ck_assert_uint_eq(v.fruitless, 1);
	ck_assert_uint_eq(v.end_crashes, 0);

	f.policy = CRASH_REDELIVER;
	v = lane(&f);
	check_lost(&f, &v, " (the stream lost 1000 workers, the most it may)");
}
END_TEST

/* Died on item 4, one of the lane's: its attempts count towards poison. */
static const struct {
	unsigned	 max_attempts;
	unsigned	 attempts;	/* before this crash */
	unsigned	 want_attempts;
	int		 want_quarantine;
} poison[] = {
	{ 3, 0, 1, 0 },
	{ 3, 1, 2, 0 },
	{ 3, 2, 3, 1 },
	{ 3, 5, 6, 1 },
	{ 1, 0, 1, 1 },
	{ 2, 0, 1, 0 },
	{ 2, 1, 2, 1 },
	{ 10, 8, 9, 0 },
	{ 10, 9, 10, 1 },
};

START_TEST(test_lane_item)
{
	struct crash_facts f = facts(CRASH_REPLAY);
	struct crash_verdict v;

	f.max_attempts = poison[_i].max_attempts;
	f.attempts = poison[_i].attempts;
	f.blame = 4;
	f.blame_held = 1;
	f.fruitless = 1;
	f.end_crashes = 1;
	f.resend_from = 2;
	v = lane(&f);
	ck_assert_int_eq(v.action, CRASH_RERUN);
	ck_assert_str_eq(v.why, "");
	ck_assert_uint_eq(v.blame, 4);
	ck_assert_uint_eq(v.attempts, poison[_i].want_attempts);
	ck_assert_int_eq(v.quarantine, poison[_i].want_quarantine);
	ck_assert_int_eq(v.note, CRASH_NOTE_ITEM);
	ck_assert_uint_eq(v.end_crashes, 1);
	ck_assert_uint_eq(v.fruitless, 0);	/* it took items */
	ck_assert_int_eq(v.plugin_works, 1);
	/* A replay sends every item again. */
	ck_assert_uint_eq(v.resend_from, 2);
	ck_assert_uint_eq(v.acked, 0);
}
END_TEST

START_TEST(test_lane_item_wins)
{
	struct crash_facts f = facts(CRASH_REPLAY);
	struct crash_verdict v;

	/* A blamed item is neither an end crash nor a fruitless one... */
	f.blame = 4;
	f.blame_held = 1;
	f.ended = 1;
	f.end_crashes = 2;
	v = lane(&f);
	ck_assert_int_eq(v.action, CRASH_RERUN);
	ck_assert_uint_eq(v.blame, 4);
	ck_assert_uint_eq(v.attempts, 1);
	ck_assert_uint_eq(v.end_crashes, 2);
	ck_assert_int_eq(v.note, CRASH_NOTE_ITEM);

	f = facts(CRASH_REPLAY);
	f.blame = 4;
	f.blame_held = 1;
	f.started = 0;
	f.ndone = 0;
	f.fruitless = 2;
	v = lane(&f);
	ck_assert_int_eq(v.action, CRASH_RERUN);
	ck_assert_uint_eq(v.blame, 4);
	ck_assert_uint_eq(v.fruitless, 2);
	ck_assert_int_eq(v.plugin_works, 0);
	ck_assert_int_eq(v.note, CRASH_NOTE_ITEM);
}
END_TEST

START_TEST(test_lane_blame_not_held)
{
	struct crash_facts f = facts(CRASH_REPLAY);
	struct crash_verdict v;

	/* Not one of the lane's items: nobody is blamed. */
	f.blame = 40;
	f.blame_held = 0;
	f.attempts = 2;
	v = lane(&f);
	ck_assert_int_eq(v.action, CRASH_RERUN);
	ck_assert_uint_eq(v.blame, 0);
	ck_assert_uint_eq(v.attempts, 0);
	ck_assert_int_eq(v.quarantine, 0);
	ck_assert_int_eq(v.note, CRASH_NOTE_BETWEEN);

	/* Held, but before resend_from: done already, not blamed. */
	f.blame = 4;
	f.blame_held = 1;
	f.resend_from = 5;
	v = lane(&f);
	ck_assert_uint_eq(v.blame, 0);
	ck_assert_uint_eq(v.attempts, 0);
	ck_assert_int_eq(v.quarantine, 0);
	ck_assert_int_eq(v.note, CRASH_NOTE_BETWEEN);
	ck_assert_uint_eq(v.resend_from, 5);

	/* At resend_from it is blamed. */
	f.resend_from = 4;
	v = lane(&f);
	ck_assert_uint_eq(v.blame, 4);
	ck_assert_uint_eq(v.attempts, 3);
	ck_assert_int_eq(v.quarantine, 1);
	ck_assert_int_eq(v.note, CRASH_NOTE_ITEM);
	ck_assert_uint_eq(v.resend_from, 4);
}
END_TEST

/* Consume died after its items ended, with nothing to blame. */
static const struct {
	unsigned	 max_attempts;
	unsigned	 end_crashes;	/* before this crash */
	unsigned	 want;
	int		 lost;
	const char	*why;
} ends[] = {
	{ 3, 0, 1, 0, "" },
	{ 3, 1, 2, 0, "" },
	{ 3, 2, 3, 1, " (consume died after its items ended 3 times)" },
	{ 3, 7, 8, 1, " (consume died after its items ended 8 times)" },
	{ 1, 0, 1, 1, " (consume died after its items ended 1 times)" },
	{ 2, 0, 1, 0, "" },
	{ 12, 11, 12, 1, " (consume died after its items ended 12 times)" },
};

START_TEST(test_lane_ended)
{
	struct crash_facts f = facts(CRASH_REPLAY);
	struct crash_verdict v;

	f.ended = 1;
	f.max_attempts = ends[_i].max_attempts;
	f.end_crashes = ends[_i].end_crashes;
	f.fruitless = 1;
	f.resend_from = 2;
	v = lane(&f);
	ck_assert_uint_eq(v.end_crashes, ends[_i].want);
	ck_assert_str_eq(v.why, ends[_i].why);
	ck_assert_uint_eq(v.blame, 0);
	ck_assert_uint_eq(v.attempts, 0);
	ck_assert_int_eq(v.quarantine, 0);
	ck_assert_int_eq(v.note, CRASH_NOTE_NONE);
	ck_assert_uint_eq(v.resend_from, 2);
	ck_assert_uint_eq(v.acked, 0);
	if (ends[_i].lost) {
		/* Lost before the items it took reset anything. */
		ck_assert_int_eq(v.action, CRASH_LANE_LOST);
		ck_assert_uint_eq(v.fruitless, 1);
		ck_assert_int_eq(v.plugin_works, 0);
	} else {
		ck_assert_int_eq(v.action, CRASH_RERUN);
		ck_assert_uint_eq(v.fruitless, 0);
		ck_assert_int_eq(v.plugin_works, 1);
	}
}
END_TEST

START_TEST(test_lane_ended_first)
{
	struct crash_facts f = facts(CRASH_REPLAY);
	struct crash_verdict v;

	/* Ended without taking an item: an end crash, not a fruitless one. */
	f.ended = 1;
	f.started = 0;
	f.ndone = 0;
	f.fruitless = 2;
	v = lane(&f);
	ck_assert_int_eq(v.action, CRASH_RERUN);
	ck_assert_uint_eq(v.end_crashes, 1);
	ck_assert_uint_eq(v.fruitless, 2);
	ck_assert_int_eq(v.plugin_works, 0);
	ck_assert_int_eq(v.note, CRASH_NOTE_NONE);
}
END_TEST

/* Consume died before it took an item it was sent. */
static const struct {
	unsigned	 max_attempts;
	unsigned	 fruitless;	/* before this crash */
	unsigned	 want;
	int		 lost;
	const char	*why;
} untaken[] = {
	{ 3, 0, 1, 0, "" },
	{ 3, 1, 2, 0, "" },
	{ 3, 2, 3, 1, " (consume died 3 times before it took an item)" },
	{ 3, 4, 5, 1, " (consume died 5 times before it took an item)" },
	{ 1, 0, 1, 1, " (consume died 1 times before it took an item)" },
	{ 5, 3, 4, 0, "" },
	{ 5, 4, 5, 1, " (consume died 5 times before it took an item)" },
};

START_TEST(test_lane_fruitless)
{
	struct crash_facts f = facts(CRASH_REPLAY);
	struct crash_verdict v;

	f.started = 0;
	f.ndone = 0;
	f.last_done = 0;
	f.last_done_held = 0;
	f.sent = 3;
	f.rejected = 2;
	f.max_attempts = untaken[_i].max_attempts;
	f.fruitless = untaken[_i].fruitless;
	f.end_crashes = 1;
	f.resend_from = 2;
	v = lane(&f);
	ck_assert_int_eq(v.action,
	    untaken[_i].lost ? CRASH_LANE_LOST : CRASH_RERUN);
	ck_assert_uint_eq(v.fruitless, untaken[_i].want);
	ck_assert_str_eq(v.why, untaken[_i].why);
	ck_assert_uint_eq(v.end_crashes, 1);
	ck_assert_uint_eq(v.blame, 0);
	ck_assert_uint_eq(v.attempts, 0);
	ck_assert_int_eq(v.quarantine, 0);
	ck_assert_int_eq(v.plugin_works, 0);
	ck_assert_int_eq(v.note, CRASH_NOTE_NONE);
	ck_assert_uint_eq(v.resend_from, 2);
	ck_assert_uint_eq(v.acked, 0);
}
END_TEST

START_TEST(test_lane_between)
{
	struct crash_facts f = facts(CRASH_REPLAY);
	struct crash_verdict v;

	/* Took items: the plugin works, its fruitless count starts over. */
	f.fruitless = 2;
	f.end_crashes = 1;
	v = lane(&f);
	ck_assert_int_eq(v.action, CRASH_RERUN);
	ck_assert_str_eq(v.why, "");
	ck_assert_int_eq(v.note, CRASH_NOTE_BETWEEN);
	ck_assert_uint_eq(v.fruitless, 0);
	ck_assert_int_eq(v.plugin_works, 1);
	ck_assert_uint_eq(v.end_crashes, 1);
	ck_assert_uint_eq(v.blame, 0);
	ck_assert_uint_eq(v.attempts, 0);
	ck_assert_int_eq(v.quarantine, 0);
	ck_assert_uint_eq(v.resend_from, 1);
	ck_assert_uint_eq(v.acked, 0);

	/* Took none, but every line it was sent it rejected: between. */
	f.started = 0;
	f.ndone = 0;
	f.sent = 4;
	f.rejected = 4;
	v = lane(&f);
	ck_assert_int_eq(v.action, CRASH_RERUN);
	ck_assert_int_eq(v.note, CRASH_NOTE_BETWEEN);
	ck_assert_uint_eq(v.fruitless, 2);
	ck_assert_int_eq(v.plugin_works, 0);

	/* Was sent nothing: between. */
	f.sent = 0;
	f.rejected = 0;
	v = lane(&f);
	ck_assert_int_eq(v.note, CRASH_NOTE_BETWEEN);
	ck_assert_uint_eq(v.fruitless, 2);
	ck_assert_int_eq(v.plugin_works, 0);

	/* One line not rejected: fruitless, the third time. */
	f.sent = 5;
	f.rejected = 4;
	v = lane(&f);
	check_lost(&f, &v, " (consume died 3 times before it took an item)");
	ck_assert_uint_eq(v.fruitless, 3);
}
END_TEST

START_TEST(test_lane_replay)
{
	struct crash_facts f = facts(CRASH_REPLAY);
	struct crash_verdict v;

	/* What would move a redeliver on leaves a replay where it was. */
	f.blame = 7;
	f.blame_held = 1;
	f.last_done = 6;
	f.ndone = 6;
	f.resend_from = 2;
	v = lane(&f);
	ck_assert_uint_eq(v.resend_from, 2);
	ck_assert_uint_eq(v.acked, 0);
	ck_assert_int_eq(v.note, CRASH_NOTE_ITEM);

	f.blame_held = 0;
	v = lane(&f);
	ck_assert_uint_eq(v.resend_from, 2);
	ck_assert_uint_eq(v.acked, 0);
	ck_assert_int_eq(v.note, CRASH_NOTE_BETWEEN);

	/* Nor is progress that does not add up looked at. */
	f.ndone = 20;
	v = lane(&f);
	ck_assert_uint_eq(v.resend_from, 2);
	ck_assert_uint_eq(v.acked, 0);
	ck_assert_int_eq(v.note, CRASH_NOTE_BETWEEN);
}
END_TEST

/*
 * on_crash redeliver: where the lane goes on from, and what is acked.
 * Progress that does not add up is noted instead of ITEM or BETWEEN (the
 * code before crash.c logged both lines then; only the note changed).
 */
static const struct {
	const char	*what;
	uint64_t	 blame;
	int		 blame_held;
	uint64_t	 last_done;
	int		 last_done_held;
	uint64_t	 ndone, sent, rejected, resend_from;
	uint64_t	 want_from, want_acked;
	enum crash_note	 want_note;
	int		 want_bad;	/* progress that does not add up */
} redelivers[] = {
	{ "from the blamed item", 7, 1, 6, 1, 6, 10, 0, 1,
	    7, 6, CRASH_NOTE_ITEM, 0 },
	{ "blame before its last done", 7, 1, 9, 1, 6, 10, 0, 1,
	    7, 6, CRASH_NOTE_ITEM, 0 },
	{ "after its last done, held", 0, 0, 6, 1, 6, 10, 0, 1,
	    7, 6, CRASH_NOTE_BETWEEN, 0 },
	{ "blame not held: its last done", 40, 0, 6, 1, 6, 10, 0, 1,
	    7, 6, CRASH_NOTE_BETWEEN, 0 },
	{ "last done not held", 0, 0, 6, 0, 6, 10, 0, 1,
	    1, 0, CRASH_NOTE_BETWEEN, 1 },
	{ "nothing done", 0, 0, 0, 0, 0, 10, 0, 3,
	    3, 0, CRASH_NOTE_BETWEEN, 0 },
	{ "last done 0 though held", 0, 0, 0, 1, 0, 10, 0, 3,
	    3, 0, CRASH_NOTE_BETWEEN, 0 },
	{ "done, but no last done", 0, 0, 0, 0, 2, 10, 0, 3,
	    3, 0, CRASH_NOTE_BETWEEN, 1 },
	{ "all it was sent, less rejected", 9, 1, 8, 1, 7, 10, 3, 1,
	    9, 7, CRASH_NOTE_ITEM, 0 },
	{ "more done than sent less rejected", 9, 1, 8, 1, 8, 10, 3, 1,
	    1, 0, CRASH_NOTE_ITEM, 1 },
	{ "more done than sent", 0, 0, 8, 1, 11, 10, 0, 1,
	    1, 0, CRASH_NOTE_BETWEEN, 1 },
	{ "from before resend_from", 0, 0, 3, 1, 3, 10, 0, 5,
	    5, 0, CRASH_NOTE_BETWEEN, 1 },
	{ "from at resend_from", 0, 0, 4, 1, 4, 10, 0, 5,
	    5, 4, CRASH_NOTE_BETWEEN, 0 },
	{ "blame at resend_from", 5, 1, 4, 1, 4, 10, 0, 5,
	    5, 4, CRASH_NOTE_ITEM, 0 },
	{ "blame before resend_from", 4, 1, 3, 1, 3, 10, 0, 5,
	    5, 0, CRASH_NOTE_BETWEEN, 1 },
	{ "blamed, progress off", 7, 1, 6, 1, 11, 10, 0, 1,
	    1, 0, CRASH_NOTE_ITEM, 1 },
};

START_TEST(test_lane_redeliver)
{
	struct crash_facts f = facts(CRASH_REDELIVER);
	struct crash_verdict v;

	f.blame = redelivers[_i].blame;
	f.blame_held = redelivers[_i].blame_held;
	f.last_done = redelivers[_i].last_done;
	f.last_done_held = redelivers[_i].last_done_held;
	f.ndone = redelivers[_i].ndone;
	f.sent = redelivers[_i].sent;
	f.rejected = redelivers[_i].rejected;
	f.resend_from = redelivers[_i].resend_from;
	v = lane(&f);
	ck_assert_msg(v.action == CRASH_RERUN, "%s", redelivers[_i].what);
	ck_assert_msg(v.resend_from == redelivers[_i].want_from,
	    "%s: resend_from %" PRIu64 ", want %" PRIu64,
	    redelivers[_i].what, v.resend_from, redelivers[_i].want_from);
	ck_assert_msg(v.acked == redelivers[_i].want_acked,
	    "%s: acked %" PRIu64 ", want %" PRIu64,
	    redelivers[_i].what, v.acked, redelivers[_i].want_acked);
	ck_assert_msg(v.note == redelivers[_i].want_note, "%s: note %d, "
	    "want %d", redelivers[_i].what, v.note, redelivers[_i].want_note);
	ck_assert_msg(v.bad_progress == redelivers[_i].want_bad, "%s: "
	    "bad_progress %d, want %d", redelivers[_i].what, v.bad_progress,
	    redelivers[_i].want_bad);
	ck_assert_str_eq(v.why, "");
}
END_TEST

START_TEST(test_lane_redeliver_poison)
{
	struct crash_facts f = facts(CRASH_REDELIVER);
	struct crash_verdict v;

	/* Poison: quarantined, and the lane goes on from it (the caller
	 * skips it). */
	f.blame = 7;
	f.blame_held = 1;
	f.attempts = 2;
	f.last_done = 6;
	f.ndone = 6;
	v = lane(&f);
	ck_assert_int_eq(v.action, CRASH_RERUN);
	ck_assert_uint_eq(v.blame, 7);
	ck_assert_uint_eq(v.attempts, 3);
	ck_assert_int_eq(v.quarantine, 1);
	ck_assert_uint_eq(v.resend_from, 7);
	ck_assert_uint_eq(v.acked, 6);
	ck_assert_int_eq(v.note, CRASH_NOTE_ITEM);

	/* Its progress not adding up does not stop the quarantine. */
	f.ndone = 11;
	v = lane(&f);
	ck_assert_uint_eq(v.blame, 7);
	ck_assert_int_eq(v.quarantine, 1);
	ck_assert_uint_eq(v.resend_from, 1);
	ck_assert_uint_eq(v.acked, 0);
	ck_assert_int_eq(v.note, CRASH_NOTE_ITEM);
	ck_assert_int_eq(v.bad_progress, 1);
}
END_TEST

START_TEST(test_lane_redeliver_lost)
{
	struct crash_facts f = facts(CRASH_REDELIVER);
	struct crash_verdict v;

	/* A lost lane is not moved on. */
	f.ended = 1;
	f.end_crashes = 2;
	f.last_done = 6;
	f.ndone = 6;
	v = lane(&f);
	check_lost(&f, &v, " (consume died after its items ended 3 times)");

	f = facts(CRASH_REDELIVER);
	f.started = 0;
	f.fruitless = 2;
	f.last_done = 6;
	f.ndone = 6;
	v = lane(&f);
	check_lost(&f, &v, " (consume died 3 times before it took an item)");

	/* Not lost yet: moved on. */
	f.fruitless = 1;
	v = lane(&f);
	ck_assert_int_eq(v.action, CRASH_RERUN);
	ck_assert_uint_eq(v.fruitless, 2);
	ck_assert_uint_eq(v.resend_from, 7);
	ck_assert_uint_eq(v.acked, 6);
	ck_assert_int_eq(v.note, CRASH_NOTE_NONE);
}
END_TEST

/* ---- starts: crash_start, crash_refuse, crash_backoff_ms,
 * crash_pool_failed ---- */

#define F START_FAILED
#define S START_STARTED
#define N START_NONE
static const struct {
	int		 init_failed, ready;
	double		 up, start_seconds;
	unsigned	 streams_served;
	int		 in_stream, exiting;
	enum start_verdict want;
} starts[] = {
	/* Its init failed: always a failed start. */
	{ 1, 0, 0, 1, 0, 0, 0, F },
	{ 1, 0, 0, 1, 0, 0, 1, F },
	{ 1, 0, 0, 1, 0, 1, 0, F },
	{ 1, 0, 0, 1, 0, 1, 1, F },
	{ 1, 0, 0, 1, 1, 0, 0, F },
	{ 1, 1, 9, 1, 5, 1, 1, F },
	/* Died in init (never READY), not told to exit. */
	{ 0, 0, 0, 1, 0, 0, 0, F },
	{ 0, 0, 0, 0, 0, 0, 0, F },
	/* READY, died sooner than start_seconds after, idle, no stream. */
	{ 0, 1, 0, 1, 0, 0, 0, F },
	{ 0, 1, 0.999, 1, 0, 0, 0, F },
	{ 0, 1, 1.5, 2, 0, 0, 0, F },
	/* Up start_seconds or longer: it had started (supervisord's
	 * startsecs), whoever killed it. */
	{ 0, 1, 1, 1, 0, 0, 0, S },
	{ 0, 1, 1.5, 1, 0, 0, 0, S },
	{ 0, 1, 3600, 1, 0, 0, 0, S },
	{ 0, 1, 0, 0, 0, 0, 0, S },
	/* Served a stream: started, however young. */
	{ 0, 1, 0.1, 1, 1, 0, 0, S },
	{ 0, 1, 0, 1, UINT_MAX, 0, 0, S },
	/* Told to exit, or lost inside a stream: no news for the pool. */
	{ 0, 0, 0, 1, 0, 0, 1, N },
	{ 0, 1, 0, 1, 0, 0, 1, N },
	{ 0, 1, 0, 1, 0, 1, 0, N },
	{ 0, 1, 5, 1, 0, 1, 0, N },
	{ 0, 1, 0, 1, 1, 1, 1, N },
	{ 0, 1, 5, 1, 3, 0, 1, N },
};
#undef F
#undef S
#undef N

START_TEST(test_start)
{
	struct start_facts f = {
		.init_failed = starts[_i].init_failed,
		.ready = starts[_i].ready,
		.up = starts[_i].up,
		.start_seconds = starts[_i].start_seconds,
		.streams_served = starts[_i].streams_served,
		.in_stream = starts[_i].in_stream,
		.exiting = starts[_i].exiting,
	};

	ck_assert_msg(crash_start(&f) == starts[_i].want,
	    "row %d: init_failed %d ready %d up %g start_seconds %g "
	    "streams_served %u in_stream %d exiting %d: %d, want %d", _i,
	    f.init_failed, f.ready, f.up, f.start_seconds, f.streams_served,
	    f.in_stream, f.exiting, crash_start(&f), starts[_i].want);
}
END_TEST

START_TEST(test_refuse)
{
	/* A queued stream: refused only when failed and died in init. */
	ck_assert_int_eq(crash_refuse(0, 0, 0), 0);
	ck_assert_int_eq(crash_refuse(0, 1, 0), 0);
	ck_assert_int_eq(crash_refuse(1, 0, 0), 0);
	ck_assert_int_eq(crash_refuse(1, 1, 0), 1);
	/* A waiting lane: as soon as the pool is failed. */
	ck_assert_int_eq(crash_refuse(0, 0, 1), 0);
	ck_assert_int_eq(crash_refuse(0, 1, 1), 0);
	ck_assert_int_eq(crash_refuse(1, 0, 1), 1);
	ck_assert_int_eq(crash_refuse(1, 1, 1), 1);
}
END_TEST

static const struct {
	unsigned	 failures, ms;
} backoffs[] = {
	{ 0, 100 }, { 1, 200 }, { 2, 400 }, { 3, 800 }, { 4, 1600 },
	{ 5, 3200 }, { 6, 6400 }, { 7, 12800 }, { 8, 25600 },
	{ 9, 30000 }, { 10, 30000 }, { 11, 30000 },
	/* Past where an uncapped shift would overflow (100 << 30 is 0 in
	 * 32 bits) or be undefined. */
	{ 25, 30000 }, { 26, 30000 }, { 29, 30000 }, { 30, 30000 },
	{ 31, 30000 }, { 32, 30000 }, { 33, 30000 }, { 40, 30000 },
	{ 64, 30000 }, { 1000, 30000 }, { UINT_MAX, 30000 },
};

START_TEST(test_backoff)
{
	ck_assert_msg(crash_backoff_ms(backoffs[_i].failures) ==
	    backoffs[_i].ms, "after %u failures: %u ms, want %u",
	    backoffs[_i].failures, crash_backoff_ms(backoffs[_i].failures),
	    backoffs[_i].ms);
}
END_TEST

START_TEST(test_backoff_bounds)
{
	ck_assert_uint_eq(crash_backoff_ms(0), RESPAWN_MIN_MS);
	ck_assert_uint_eq(crash_backoff_ms(9), RESPAWN_MAX_MS);
	for (unsigned n = 1; n < 200; n++)
		ck_assert_uint_ge(crash_backoff_ms(n), crash_backoff_ms(n - 1));
}
END_TEST

START_TEST(test_pool_failed)
{
	ck_assert_int_eq(crash_pool_failed(0, 5), 0);
	ck_assert_int_eq(crash_pool_failed(4, 5), 0);
	ck_assert_int_eq(crash_pool_failed(5, 5), 1);
	ck_assert_int_eq(crash_pool_failed(6, 5), 1);
	ck_assert_int_eq(crash_pool_failed(0, 1), 0);
	ck_assert_int_eq(crash_pool_failed(1, 1), 1);
	ck_assert_int_eq(crash_pool_failed(0, 0), 1);
	ck_assert_int_eq(crash_pool_failed(UINT_MAX, UINT_MAX), 1);
	ck_assert_int_eq(crash_pool_failed(UINT_MAX - 1, UINT_MAX), 0);
}
END_TEST

/* ---- crash_watch ---- */

static const struct {
	const char	*what;
	uint64_t	 cur, started, seen_cur, seen_started;
	double		 since, now, timeout;
	enum watch_verdict want;
} watches[] = {
	{ "nothing to watch", 0, 0, 0, 0, 0.0, 100.0, 1.0, WATCH_NONE },
	{ "nothing now, an item before", 0, 3, 5, 2, 0.0, 100.0, 1.0,
	    WATCH_NONE },
	{ "nothing, started moved", 0, 4, 0, 3, 0.0, 100.0, 1.0, WATCH_NONE },
	{ "a first item", 5, 1, 0, 0, 0.0, 100.0, 1.0, WATCH_MOVED },
	{ "another item", 6, 2, 5, 1, 0.0, 100.0, 1.0, WATCH_MOVED },
	{ "another item, same count", 6, 1, 5, 1, 0.0, 100.0, 1.0,
	    WATCH_MOVED },
	{ "same item, took more", 5, 2, 5, 1, 0.0, 100.0, 1.0, WATCH_MOVED },
	{ "items ended", TIMEOUT_END, 3, 5, 3, 0.0, 100.0, 1.0,
	    WATCH_MOVED },
	{ "completing", TIMEOUT_COMPLETE, 0, TIMEOUT_END, 3, 0.0, 100.0,
	    1.0, WATCH_MOVED },
	{ "same item, in time", 5, 1, 5, 1, 100.0, 102.0, 2.5, WATCH_WAIT },
	{ "same item, just in time", 5, 1, 5, 1, 100.0, 102.4375, 2.5,
	    WATCH_WAIT },
	{ "same item, exactly the timeout", 5, 1, 5, 1, 100.0, 102.5, 2.5,
	    WATCH_KILL },
	{ "same item, past the timeout", 5, 1, 5, 1, 100.0, 103.0, 2.5,
	    WATCH_KILL },
	{ "quarter seconds, exactly", 5, 1, 5, 1, 0.25, 1.0, 0.75,
	    WATCH_KILL },
	{ "quarter seconds, in time", 5, 1, 5, 1, 0.25, 0.75, 0.75,
	    WATCH_WAIT },
	{ "just looked, timeout 0", 5, 1, 5, 1, 7.0, 7.0, 0.0, WATCH_KILL },
	{ "ended, in time", TIMEOUT_END, 3, TIMEOUT_END, 3, 10.0, 10.5, 1.0,
	    WATCH_WAIT },
	{ "ended, too long", TIMEOUT_END, 3, TIMEOUT_END, 3, 10.0, 11.0,
	    1.0, WATCH_KILL },
	{ "completing, in time", TIMEOUT_COMPLETE, 0, TIMEOUT_COMPLETE, 0,
	    10.0, 10.5, 1.0, WATCH_WAIT },
	{ "completing, too long", TIMEOUT_COMPLETE, 0, TIMEOUT_COMPLETE, 0,
	    10.0, 11.0, 1.0, WATCH_KILL },
};

START_TEST(test_watch)
{
	enum watch_verdict got;

	got = crash_watch(watches[_i].cur, watches[_i].started,
	    watches[_i].seen_cur, watches[_i].seen_started, watches[_i].since,
	    watches[_i].now, watches[_i].timeout);
	ck_assert_msg(got == watches[_i].want, "%s: %d, want %d",
	    watches[_i].what, got, watches[_i].want);
}
END_TEST

/* ---- crash_describe ---- */

static void
check_describe(uint64_t timed_out, double item_timeout, int status,
    const char *want)
{
	char *how = crash_describe(timed_out, item_timeout, status);

	ck_assert_ptr_nonnull(how);
	ck_assert_str_eq(how, want);
	free(how);
}

START_TEST(test_describe_exit)
{
	char want[128];

	check_describe(0, 2.5, W_EXITCODE(3, 0), "exited with status 3");
	check_describe(0, 2.5, W_EXITCODE(0, 0), "exited with status 0");
	check_describe(0, 2.5, W_EXITCODE(255, 0), "exited with status 255");
	snprintf(want, sizeof want, "killed by signal %d (%s)", SIGKILL,
	    strsignal(SIGKILL));
	check_describe(0, 2.5, W_EXITCODE(0, SIGKILL), want);
	snprintf(want, sizeof want, "killed by signal %d (%s), core dumped",
	    SIGSEGV, strsignal(SIGSEGV));
	check_describe(0, 2.5, W_EXITCODE(0, SIGSEGV) | WCOREFLAG, want);
}
END_TEST

START_TEST(test_describe_timeout)
{
	/* Killed for item_timeout: how it exited is not said. */
	check_describe(TIMEOUT_END, 2.5, W_EXITCODE(0, SIGKILL),
	    "killed after item_timeout (2.5 s): consume did not return after "
	    "its items ended");
	check_describe(TIMEOUT_COMPLETE, 30, W_EXITCODE(0, SIGKILL),
	    "killed after item_timeout (30 s) in the completion handler");
	check_describe(42, 0.25, W_EXITCODE(0, SIGKILL),
	    "killed after item_timeout (0.25 s) on item 42");
	check_describe(1, 1500000, W_EXITCODE(1, 0),
	    "killed after item_timeout (1.5e+06 s) on item 1");
	check_describe(TIMEOUT_COMPLETE - 1, 0.001, 0,
	    "killed after item_timeout (0.001 s) on item "
	    "18446744073709551613");
}
END_TEST

/* min_item_rate: the ring of per-second counts, and the decision. */
START_TEST(test_rate)
{
	struct item_rate r;

	memset(&r, 0, sizeof r);
	rate_add(&r, 1000, 5);
	rate_add(&r, 1000, 5);
	ck_assert(rate_avg(&r, 1000) == 1.0);
	rate_add(&r, 1009, 10);
	ck_assert(rate_avg(&r, 1009) == 2.0);
	/* Second 1000 leaves the window at 1010; skipped seconds are 0. */
	ck_assert(rate_avg(&r, 1010) == 1.0);
	rate_add(&r, 1012, 1);
	ck_assert(rate_avg(&r, 1012) == 1.1);
	rate_add(&r, 1100, 3);
	ck_assert(rate_avg(&r, 1100) == 0.3);
	ck_assert(rate_avg(&r, 1200) == 0.0);
	/* Saturates instead of wrapping. */
	rate_add(&r, 1200, UINT32_MAX);
	rate_add(&r, 1200, 7);
	ck_assert_uint_eq(r.n[1200 % RATE_SECONDS], UINT32_MAX);
}
END_TEST

START_TEST(test_too_slow)
{
	struct item_rate r;

	memset(&r, 0, sizeof r);
	rate_add(&r, 500, 4);			/* 0.4 items/s */
	ck_assert(!crash_too_slow(&r, 500, 60, 0));	/* off */
	ck_assert(!crash_too_slow(&r, 500, 9.9, 1));	/* too young */
	ck_assert(crash_too_slow(&r, 500, 10, 1));
	ck_assert(!crash_too_slow(&r, 500, 10, 0.4));	/* at the rate */
	ck_assert(crash_too_slow(&r, 500, 10, 0.5));
	ck_assert(crash_too_slow(&r, 510, 30, 0.1));	/* all gone */
}
END_TEST

/* ---- crash_spool_full ---- */

static const struct {
	int		 mode;
	double		 paused, wait;
	enum spool_verdict want;
} spool_fulls[] = {
	/* continue: always on, without a copy, however long */
	{ SPOOL_FULL_CONTINUE, 0, 30, SPOOL_UNPROTECTED },
	{ SPOOL_FULL_CONTINUE, 100, 30, SPOOL_UNPROTECTED },
	/* pause: wait and retry until spool_wait, then end */
	{ SPOOL_FULL_PAUSE, 0, 30, SPOOL_PAUSE },
	{ SPOOL_FULL_PAUSE, 29.9, 30, SPOOL_PAUSE },
	{ SPOOL_FULL_PAUSE, 30, 30, SPOOL_END },
	{ SPOOL_FULL_PAUSE, 31, 30, SPOOL_END },
	{ SPOOL_FULL_PAUSE, 1.5, 2, SPOOL_PAUSE },
	/* spool_wait 0: no pause at all, the stream ends at once */
	{ SPOOL_FULL_PAUSE, 0, 0, SPOOL_END },
};

START_TEST(test_spool_full)
{
	ck_assert_int_eq(crash_spool_full(spool_fulls[_i].mode,
	    spool_fulls[_i].paused, spool_fulls[_i].wait),
	    spool_fulls[_i].want);
}
END_TEST

static Suite *
crash_suite(void)
{
	Suite *s = suite_create("crash");
	TCase *tc;

	tc = tcase_create("blame");
	tcase_add_test(tc, test_spools);
	tcase_add_loop_test(tc, test_blame, 0, sizeof blames /
	    sizeof blames[0]);
	suite_add_tcase(s, tc);

	tc = tcase_create("lane");
	tcase_add_test(tc, test_lane_fail);
	tcase_add_test(tc, test_lane_no_spool);
	tcase_add_test(tc, test_lane_spool_pending);
	tcase_add_test(tc, test_lane_stream_crashes);
	tcase_add_loop_test(tc, test_lane_item, 0, sizeof poison /
	    sizeof poison[0]);
	tcase_add_test(tc, test_lane_item_wins);
	tcase_add_test(tc, test_lane_blame_not_held);
	tcase_add_loop_test(tc, test_lane_ended, 0, sizeof ends /
	    sizeof ends[0]);
	tcase_add_test(tc, test_lane_ended_first);
	tcase_add_loop_test(tc, test_lane_fruitless, 0, sizeof untaken /
	    sizeof untaken[0]);
	tcase_add_test(tc, test_lane_between);
	tcase_add_test(tc, test_lane_replay);
	tcase_add_loop_test(tc, test_lane_redeliver, 0, sizeof redelivers /
	    sizeof redelivers[0]);
	tcase_add_test(tc, test_lane_redeliver_poison);
	tcase_add_test(tc, test_lane_redeliver_lost);
	suite_add_tcase(s, tc);

	tc = tcase_create("start");
	tcase_add_test(tc, test_refuse);
	tcase_add_loop_test(tc, test_start, 0, sizeof starts /
	    sizeof starts[0]);
	tcase_add_loop_test(tc, test_backoff, 0, sizeof backoffs /
	    sizeof backoffs[0]);
	tcase_add_test(tc, test_backoff_bounds);
	tcase_add_test(tc, test_pool_failed);
	suite_add_tcase(s, tc);

	tc = tcase_create("watch");
	tcase_add_loop_test(tc, test_watch, 0, sizeof watches /
	    sizeof watches[0]);
	suite_add_tcase(s, tc);

	tc = tcase_create("spool_full");
	tcase_add_loop_test(tc, test_spool_full, 0, sizeof spool_fulls /
	    sizeof spool_fulls[0]);
	suite_add_tcase(s, tc);

	tc = tcase_create("rate");
	tcase_add_test(tc, test_rate);
	tcase_add_test(tc, test_too_slow);
	suite_add_tcase(s, tc);

	tc = tcase_create("describe");
	tcase_add_test(tc, test_describe_exit);
	tcase_add_test(tc, test_describe_timeout);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(crash_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed != 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
