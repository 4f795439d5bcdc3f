/*
 * check_flow.c - unit tests for src/flow.c: cutting buffered client bytes
 * into batches of lines that fit a worker's window, and the credit window
 * arithmetic.  Ends with a randomised run of the master's loop.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>
#include <event2/buffer.h>

#include "consumersd.h"

static struct flow_room
room_of(size_t max_item, size_t bytes, size_t soft_bytes, unsigned items)
{
	struct flow_room r = {
		.max_item = max_item, .bytes = bytes,
		.soft_bytes = soft_bytes, .items = items
	};
	return r;
}

/* Cut a buffer holding just `text`. */
static struct cut
cut_text(const char *text, size_t len, struct flow_room r)
{
	struct evbuffer *b = evbuffer_new();
	struct cut c;

	evbuffer_add(b, text, len);
	memset(&c, 0xa5, sizeof c);
	flow_cut(b, &r, &c);
	/* flow_cut only looks. */
	ck_assert_uint_eq(evbuffer_get_length(b), len);
	evbuffer_free(b);
	return c;
}

static struct cut
cut_str(const char *text, struct flow_room r)
{
	return cut_text(text, strlen(text), r);
}

#define BIG	((size_t)1 << 20)

START_TEST(test_cut_batch)
{
	const char *t = "alpha\nbe\ngamma-delta\n";
	struct cut c = cut_str(t, room_of(100, BIG, BIG, 100));

	ck_assert_int_eq(c.kind, CUT_BATCH);
	ck_assert_uint_eq(c.n, 3);
	ck_assert_uint_eq(c.nbytes, strlen(t));

	/* An incomplete last line is left for later. */
	c = cut_str("alpha\nbe\ngam", room_of(100, BIG, BIG, 100));
	ck_assert_int_eq(c.kind, CUT_BATCH);
	ck_assert_uint_eq(c.n, 2);
	ck_assert_uint_eq(c.nbytes, strlen("alpha\nbe\n"));

	/* A batch stops before an empty or over-long line. */
	c = cut_str("a\nbb\n\nccc\n", room_of(100, BIG, BIG, 100));
	ck_assert_int_eq(c.kind, CUT_BATCH);
	ck_assert_uint_eq(c.n, 2);
	ck_assert_uint_eq(c.nbytes, 5);
	c = cut_str("a\nbb\n0123456789\nccc\n", room_of(9, BIG, BIG, 100));
	ck_assert_int_eq(c.kind, CUT_BATCH);
	ck_assert_uint_eq(c.n, 2);
	ck_assert_uint_eq(c.nbytes, 5);
	/* ... and before a too-long one still coming in. */
	c = cut_str("a\nbb\n0123456789", room_of(9, BIG, BIG, 100));
	ck_assert_int_eq(c.kind, CUT_BATCH);
	ck_assert_uint_eq(c.n, 2);
	ck_assert_uint_eq(c.nbytes, 5);
}
END_TEST

START_TEST(test_cut_items)
{
	const char *t = "1\n22\n333\n4444\n";
	struct cut c;

	for (unsigned items = 1; items <= 6; items++) {
		size_t want_n = items < 4 ? items : 4, want_bytes = 0;
		for (size_t i = 1; i <= want_n; i++)
			want_bytes += i + 1;
		c = cut_str(t, room_of(100, BIG, BIG, items));
		ck_assert_int_eq(c.kind, CUT_BATCH);
		ck_assert_uint_eq(c.n, want_n);
		ck_assert_uint_eq(c.nbytes, want_bytes);
	}
}
END_TEST

START_TEST(test_cut_bytes)
{
	/* 4 lines of 10 bytes each with their newlines. */
	const char *t = "aaaaaaaaa\nbbbbbbbbb\nccccccccc\nddddddddd\n";
	struct cut c;

	/* The first line must fit room.bytes. */
	c = cut_str(t, room_of(100, 9, BIG, 100));
	ck_assert_int_eq(c.kind, CUT_FULL);
	ck_assert_uint_eq(c.n, 0);
	c = cut_str(t, room_of(100, 10, 10, 100));
	ck_assert_int_eq(c.kind, CUT_BATCH);
	ck_assert_uint_eq(c.n, 1);
	ck_assert_uint_eq(c.nbytes, 10);
	/* Further lines stop at soft_bytes, counted from the front. */
	for (size_t soft = 0; soft <= 45; soft++) {
		size_t n = soft / 10 < 1 ? 1 : soft / 10 > 4 ? 4 : soft / 10;
		c = cut_str(t, room_of(100, 10, soft, 100));
		ck_assert_int_eq(c.kind, CUT_BATCH);
		ck_assert_msg(c.n == n, "soft %zu: n %u, want %zu", soft, c.n,
		    n);
		ck_assert_uint_eq(c.nbytes, 10 * n);
	}
	/* room.bytes larger than soft_bytes only helps the first line. */
	c = cut_str(t, room_of(100, 25, 5, 100));
	ck_assert_int_eq(c.kind, CUT_BATCH);
	ck_assert_uint_eq(c.n, 1);
}
END_TEST

START_TEST(test_cut_empty)
{
	struct cut c = cut_str("\nabc\n", room_of(100, BIG, BIG, 100));

	ck_assert_int_eq(c.kind, CUT_EMPTY);
	ck_assert_uint_eq(c.nbytes, 1);
	ck_assert_uint_eq(c.n, 0);
	/* Even when the window could not take a byte. */
	c = cut_str("\n", room_of(100, 0, 0, 100));
	ck_assert_int_eq(c.kind, CUT_EMPTY);
	ck_assert_uint_eq(c.nbytes, 1);
	/* Nothing at all is just waiting. */
	c = cut_str("", room_of(100, BIG, BIG, 100));
	ck_assert_int_eq(c.kind, CUT_NEED);
	ck_assert_uint_eq(c.n, 0);
	ck_assert_uint_eq(c.nbytes, 0);
}
END_TEST

START_TEST(test_cut_long)
{
	char t[64];
	struct cut c;

	/* 20 bytes and a newline, max 10. */
	memset(t, 'x', 20);
	memcpy(t + 20, "\nok\n", 4);
	c = cut_text(t, 24, room_of(10, BIG, BIG, 100));
	ck_assert_int_eq(c.kind, CUT_LONG);
	ck_assert_int_eq(c.newline, 1);
	ck_assert_uint_eq(c.nbytes, 21);
	ck_assert_uint_eq(c.n, 0);
	/* No newline yet but already more than max_item: all of it. */
	c = cut_text(t, 20, room_of(10, BIG, BIG, 100));
	ck_assert_int_eq(c.kind, CUT_LONG);
	ck_assert_int_eq(c.newline, 0);
	ck_assert_uint_eq(c.nbytes, 20);
	c = cut_text(t, 11, room_of(10, BIG, BIG, 100));
	ck_assert_int_eq(c.kind, CUT_LONG);
	ck_assert_int_eq(c.newline, 0);
	ck_assert_uint_eq(c.nbytes, 11);
	/* An over-long line is rejected whatever the window says. */
	c = cut_text(t, 24, room_of(10, 0, 0, 100));
	ck_assert_int_eq(c.kind, CUT_LONG);
	ck_assert_uint_eq(c.nbytes, 21);
}
END_TEST

START_TEST(test_cut_need)
{
	char t[16];
	struct cut c;

	c = cut_str("abc", room_of(10, BIG, BIG, 100));
	ck_assert_int_eq(c.kind, CUT_NEED);
	ck_assert_uint_eq(c.n, 0);
	ck_assert_uint_eq(c.nbytes, 0);
	/* Exactly max_item bytes with no newline may still be fine. */
	memset(t, 'y', 10);
	c = cut_text(t, 10, room_of(10, BIG, BIG, 100));
	ck_assert_int_eq(c.kind, CUT_NEED);
}
END_TEST

START_TEST(test_cut_exact_max)
{
	char t[32];
	struct cut c;

	memset(t, 'z', sizeof t);
	/* max_item bytes and a newline: taken, with a window of exactly
	 * that. */
	t[10] = '\n';
	c = cut_text(t, 11, room_of(10, 11, 11, 100));
	ck_assert_int_eq(c.kind, CUT_BATCH);
	ck_assert_uint_eq(c.n, 1);
	ck_assert_uint_eq(c.nbytes, 11);
	/* One more byte is too long. */
	t[10] = 'z';
	t[11] = '\n';
	c = cut_text(t, 12, room_of(10, BIG, BIG, 100));
	ck_assert_int_eq(c.kind, CUT_LONG);
	ck_assert_int_eq(c.newline, 1);
	ck_assert_uint_eq(c.nbytes, 12);
}
END_TEST

/*
 * Lines cut across chains: every piece is a separate reference, so the
 * buffer's chains end in the middle of lines and of newline searches.
 */
START_TEST(test_cut_chains)
{
	static const char text[] =
	    "first line\nsecond, longer line\n\nthird\nfourth-is-long\nfif";
	const size_t pieces[] = { 3, 1, 9, 2, 7, 13, 1, 1, 4, 6, 8 };
	struct evbuffer *b = evbuffer_new(), *tmp = evbuffer_new();
	struct cut c;
	struct flow_room r = room_of(20, BIG, BIG, 100);
	size_t off = 0;

	for (size_t i = 0; i < sizeof pieces / sizeof pieces[0]; i++) {
		evbuffer_add_reference(tmp, text + off, pieces[i], NULL, NULL);
		off += pieces[i];
	}
	ck_assert_uint_lt(off, strlen(text));
	evbuffer_add_reference(tmp, text + off, strlen(text) - off, NULL,
	    NULL);
	evbuffer_add_buffer(b, tmp);
	ck_assert_uint_eq(evbuffer_get_length(b), strlen(text));
	ck_assert_int_gt(evbuffer_peek(b, -1, NULL, NULL, 0), 10);

	flow_cut(b, &r, &c);
	ck_assert_int_eq(c.kind, CUT_BATCH);
	ck_assert_uint_eq(c.n, 2);
	ck_assert_uint_eq(c.nbytes, strlen("first line\nsecond, longer line\n"));
	evbuffer_drain(b, c.nbytes);
	flow_cut(b, &r, &c);
	ck_assert_int_eq(c.kind, CUT_EMPTY);
	ck_assert_uint_eq(c.nbytes, 1);
	evbuffer_drain(b, c.nbytes);
	/* max_item 10 now: "fourth-is-long" (14) is too long. */
	r.max_item = 10;
	flow_cut(b, &r, &c);
	ck_assert_int_eq(c.kind, CUT_BATCH);
	ck_assert_uint_eq(c.n, 1);
	ck_assert_uint_eq(c.nbytes, 6);
	evbuffer_drain(b, c.nbytes);
	flow_cut(b, &r, &c);
	ck_assert_int_eq(c.kind, CUT_LONG);
	ck_assert_int_eq(c.newline, 1);
	ck_assert_uint_eq(c.nbytes, 15);
	evbuffer_drain(b, c.nbytes);
	flow_cut(b, &r, &c);
	ck_assert_int_eq(c.kind, CUT_NEED);
	ck_assert_uint_eq(evbuffer_get_length(b), 3);
	evbuffer_free(b);
	evbuffer_free(tmp);
}
END_TEST

START_TEST(test_credit_empty_window)
{
	struct credit cr = { 0, 0 };
	struct flow_room r;

	/* A window smaller than one line still takes one line. */
	ck_assert_int_eq(credit_room(&cr, 100, 10, 1000, &r), 1);
	ck_assert_uint_eq(r.max_item, 1000);
	ck_assert_uint_ge(r.bytes, 1001);
	ck_assert_uint_le(r.soft_bytes, 100);
	ck_assert_uint_eq(r.items, 10);
	/* A big window gives its size. */
	ck_assert_int_eq(credit_room(&cr, 5000, 10, 1000, &r), 1);
	ck_assert_uint_eq(r.bytes, 5000);
	ck_assert_uint_eq(r.soft_bytes, 5000);
	/* And that line moves through flow_cut. */
	{
		char line[1001];
		struct cut c;
		memset(line, 'q', 1000);
		line[1000] = '\n';
		ck_assert_int_eq(credit_room(&cr, 100, 10, 1000, &r), 1);
		c = cut_text(line, sizeof line, r);
		ck_assert_int_eq(c.kind, CUT_BATCH);
		ck_assert_uint_eq(c.n, 1);
		ck_assert_uint_eq(c.nbytes, 1001);
	}
}
END_TEST

START_TEST(test_credit_take_and_full)
{
	struct credit cr = { 0, 0 };
	struct flow_room r;

	credit_take(&cr, 3, 300);
	ck_assert_uint_eq(cr.items, 3);
	ck_assert_uint_eq(cr.bytes, 300);
	ck_assert_int_eq(credit_room(&cr, 1000, 10, 500, &r), 1);
	ck_assert_uint_eq(r.items, 7);
	ck_assert_uint_eq(r.soft_bytes, 700);
	ck_assert_uint_eq(r.bytes, 700);
	/* Bytes full. */
	credit_take(&cr, 1, 700);
	ck_assert_int_eq(credit_room(&cr, 1000, 10, 500, &r), 0);
	credit_take(&cr, 1, 50);
	ck_assert_int_eq(credit_room(&cr, 1000, 10, 500, &r), 0);
	/* Items full. */
	cr.items = 0;
	cr.bytes = 0;
	credit_take(&cr, 10, 10);
	ck_assert_int_eq(credit_room(&cr, 1000, 10, 500, &r), 0);
	ck_assert_int_eq(credit_ack(&cr, 1, 1), 0);
	/* One free slot of ten: too little to send into a busy window. */
	ck_assert_int_eq(credit_room(&cr, 1000, 10, 500, &r), 0);
	ck_assert_int_eq(credit_ack(&cr, 2, 2), 0);
	ck_assert_int_eq(credit_room(&cr, 1000, 10, 500, &r), 1);
	ck_assert_uint_eq(r.items, 3);
	ck_assert_uint_eq(r.bytes, 993);
	/* Bytes: less than a quarter of them free is too little too. */
	cr.items = 1;
	cr.bytes = 800;
	ck_assert_int_eq(credit_room(&cr, 1000, 10, 500, &r), 0);
	cr.bytes = 750;
	ck_assert_int_eq(credit_room(&cr, 1000, 10, 500, &r), 1);
	ck_assert_uint_eq(r.soft_bytes, 250);
}
END_TEST

START_TEST(test_credit_ack)
{
	struct credit cr = { 0, 0 };
	struct flow_room r;

	credit_take(&cr, 4, 400);
	credit_take(&cr, 2, 20);
	ck_assert_int_eq(credit_ack(&cr, 3, 300), 0);
	ck_assert_uint_eq(cr.items, 3);
	ck_assert_uint_eq(cr.bytes, 120);
	/* More than in flight: refused, nothing changes. */
	ck_assert_int_eq(credit_ack(&cr, 4, 10), -1);
	ck_assert_uint_eq(cr.items, 3);
	ck_assert_uint_eq(cr.bytes, 120);
	ck_assert_int_eq(credit_ack(&cr, 1, 121), -1);
	ck_assert_uint_eq(cr.items, 3);
	ck_assert_uint_eq(cr.bytes, 120);
	ck_assert_int_eq(credit_ack(&cr, 3, 120), 0);
	ck_assert_uint_eq(cr.items, 0);
	ck_assert_uint_eq(cr.bytes, 0);
	ck_assert_int_eq(credit_ack(&cr, 1, 0), -1);
	ck_assert_int_eq(credit_ack(&cr, 0, 1), -1);
	ck_assert_uint_eq(cr.items, 0);
	ck_assert_uint_eq(cr.bytes, 0);
	/* Back to an empty window. */
	ck_assert_int_eq(credit_room(&cr, 1000, 10, 500, &r), 1);
	ck_assert_uint_eq(r.items, 10);
	ck_assert_uint_eq(r.bytes, 1000);
}
END_TEST

/* ---- the master's loop, on random input ---- */

static uint64_t rng_state;

static uint64_t
rng(void)
{
	/* xorshift64* */
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 2685821657736338717ull;
}

static size_t
rng_below(size_t n)
{
	return n == 0 ? 0 : (size_t)(rng() % n);
}

struct sim {
	size_t		 max_item;
	size_t		 win_bytes;
	unsigned	 win_items;
	/* the input */
	char		*text;
	size_t		 len;
	char		**good;		/* lines that must come out */
	size_t		 ngood;
	size_t		 nlong;		/* lines that must be rejected */
	/* what came out */
	size_t		 next_good;
	size_t		 got_long;
	size_t		 batches, fulls;
	int		 skipping;
	struct credit	 cr;
};

static void
sim_make(struct sim *s, size_t nlines)
{
	size_t cap = 0;

	s->text = NULL;
	s->len = 0;
	s->good = calloc(nlines, sizeof *s->good);
	s->ngood = s->nlong = 0;
	for (size_t i = 0; i < nlines; i++) {
		size_t roll = rng_below(10), l;
		char *line;

		if (roll == 0)
			l = 0;
		else if (roll == 1)
			l = s->max_item + 1 + rng_below(3 * s->max_item);
		else if (roll == 2)
			l = s->max_item - rng_below(2);	/* at the edge */
		else
			l = 1 + rng_below(s->max_item);
		if (s->len + l + 1 > cap) {
			cap = (s->len + l + 1) * 2;
			s->text = realloc(s->text, cap);
		}
		line = s->text + s->len;
		for (size_t j = 0; j < l; j++)
			line[j] = (char)(' ' + rng_below(95));
		line[l] = '\n';
		s->len += l + 1;
		if (l > s->max_item)
			s->nlong++;
		else if (l > 0) {
			s->good[s->ngood] = malloc(l + 1);
			memcpy(s->good[s->ngood], line, l);
			s->good[s->ngood][l] = '\0';
			s->ngood++;
		}
	}
}

static void
sim_free(struct sim *s)
{
	for (size_t i = 0; i < s->ngood; i++)
		free(s->good[i]);
	free(s->good);
	free(s->text);
}

/* A batch went out: check its lines against what was fed. */
static void
sim_batch(struct sim *s, struct evbuffer *in, const struct cut *c)
{
	char *b = malloc(c->nbytes), *p, *nl;
	unsigned n = 0;

	ck_assert_int_eq(evbuffer_remove(in, b, c->nbytes), (int)c->nbytes);
	ck_assert_int_eq(b[c->nbytes - 1], '\n');
	for (p = b; p < b + c->nbytes; p = nl + 1) {
		size_t l;
		nl = memchr(p, '\n', (size_t)(b + c->nbytes - p));
		ck_assert_ptr_nonnull(nl);
		l = (size_t)(nl - p);
		ck_assert_uint_gt(l, 0);
		ck_assert_uint_le(l, s->max_item);
		ck_assert_msg(s->next_good < s->ngood, "more lines than fed");
		ck_assert_msg(strlen(s->good[s->next_good]) == l &&
		    memcmp(s->good[s->next_good], p, l) == 0,
		    "line %zu out of order or damaged", s->next_good);
		s->next_good++;
		n++;
	}
	ck_assert_uint_eq(n, c->n);
	credit_take(&s->cr, c->n, c->nbytes);
	s->batches++;
	free(b);
}

/* What stream_input does with a client's input, minus the sending. */
static void
sim_drain(struct sim *s, struct evbuffer *in)
{
	for (int guard = 0;; guard++) {
		struct flow_room room;
		struct cut c;

		ck_assert_msg(guard < 100000, "the loop does not progress");
		if (s->skipping) {
			struct evbuffer_ptr e = evbuffer_search(in, "\n", 1,
			    NULL);
			if (e.pos == -1) {
				evbuffer_drain(in, evbuffer_get_length(in));
				return;
			}
			evbuffer_drain(in, (size_t)e.pos + 1);
			s->skipping = 0;
		}
		if (evbuffer_get_length(in) == 0)
			return;
		/* The worker acks now and then, all of it at once. */
		if (rng_below(3) == 0)
			ck_assert_int_eq(credit_ack(&s->cr, s->cr.items,
			    s->cr.bytes), 0);
		if (!credit_room(&s->cr, s->win_bytes, s->win_items,
		    s->max_item, &room)) {
			ck_assert_uint_gt(s->cr.items, 0);
			ck_assert_int_eq(credit_ack(&s->cr, s->cr.items,
			    s->cr.bytes), 0);
			continue;
		}
		flow_cut(in, &room, &c);
		switch (c.kind) {
		case CUT_BATCH:
			ck_assert_uint_gt(c.n, 0);
			ck_assert_uint_le(c.n, room.items);
			ck_assert_uint_le(c.nbytes, room.bytes);
			sim_batch(s, in, &c);
			break;
		case CUT_EMPTY:
			ck_assert_uint_eq(c.nbytes, 1);
			evbuffer_drain(in, c.nbytes);
			break;
		case CUT_LONG:
			s->got_long++;
			if (c.newline)
				ck_assert_uint_gt(c.nbytes, s->max_item + 1);
			else
				ck_assert_uint_gt(c.nbytes, s->max_item);
			evbuffer_drain(in, c.nbytes);
			s->skipping = !c.newline;
			break;
		case CUT_NEED:
			return;
		case CUT_FULL:
			/* Only a window with something in flight is full. */
			ck_assert_uint_gt(s->cr.items, 0);
			s->fulls++;
			ck_assert_int_eq(credit_ack(&s->cr, s->cr.items,
			    s->cr.bytes), 0);
			break;
		}
	}
}

static void
sim_run(size_t max_item, size_t win_bytes, unsigned win_items,
    uint64_t seed, size_t nlines, size_t max_piece, int want_full)
{
	struct evbuffer *in = evbuffer_new();
	struct sim s;
	size_t off = 0;

	memset(&s, 0, sizeof s);
	rng_state = seed;
	s.max_item = max_item;
	s.win_bytes = win_bytes;
	s.win_items = win_items;
	sim_make(&s, nlines);
	ck_assert_uint_gt(s.ngood, 0);
	ck_assert_uint_gt(s.nlong, 0);
	while (off < s.len) {
		/* Pieces land as separate chains, split anywhere. */
		struct evbuffer *tmp = evbuffer_new();
		size_t left = s.len - off;
		size_t piece = 1 + rng_below(max_piece);
		if (piece > left)
			piece = left;
		for (size_t sub = 0; sub < piece;) {
			size_t k = 1 + rng_below(piece - sub);
			evbuffer_add_reference(tmp, s.text + off + sub, k,
			    NULL, NULL);
			sub += k;
		}
		evbuffer_add_buffer(in, tmp);
		evbuffer_free(tmp);
		off += piece;
		sim_drain(&s, in);
	}
	ck_assert_uint_eq(evbuffer_get_length(in), 0);
	ck_assert_int_eq(s.skipping, 0);
	ck_assert_msg(s.next_good == s.ngood, "%zu of %zu lines came out",
	    s.next_good, s.ngood);
	ck_assert_msg(s.got_long == s.nlong, "%zu over-long lines counted, "
	    "%zu fed", s.got_long, s.nlong);
	ck_assert_uint_gt(s.batches, 0);
	if (want_full)
		ck_assert_uint_gt(s.fulls, 0);
	sim_free(&s);
	evbuffer_free(in);
}

START_TEST(test_sim_wide_window)
{
	sim_run(64, 4096, 50, 0x5eed0001, 3000, 300, 0);
}
END_TEST

START_TEST(test_sim_small_window)
{
	/* A window smaller than one line, and few items. */
	sim_run(64, 40, 3, 0x5eed0002, 3000, 150, 1);
}
END_TEST

START_TEST(test_sim_tiny_pieces)
{
	sim_run(16, 64, 4, 0x5eed0003, 1500, 5, 0);
}
END_TEST

START_TEST(test_sim_max_item_one)
{
	sim_run(1, 8, 8, 0x5eed0004, 2000, 12, 0);
}
END_TEST

static Suite *
flow_suite(void)
{
	Suite *s = suite_create("flow");
	TCase *tc;

	tc = tcase_create("cut");
	tcase_add_test(tc, test_cut_batch);
	tcase_add_test(tc, test_cut_items);
	tcase_add_test(tc, test_cut_bytes);
	tcase_add_test(tc, test_cut_empty);
	tcase_add_test(tc, test_cut_long);
	tcase_add_test(tc, test_cut_need);
	tcase_add_test(tc, test_cut_exact_max);
	tcase_add_test(tc, test_cut_chains);
	suite_add_tcase(s, tc);

	tc = tcase_create("credit");
	tcase_add_test(tc, test_credit_empty_window);
	tcase_add_test(tc, test_credit_take_and_full);
	tcase_add_test(tc, test_credit_ack);
	suite_add_tcase(s, tc);

	tc = tcase_create("master_loop");
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_sim_wide_window);
	tcase_add_test(tc, test_sim_small_window);
	tcase_add_test(tc, test_sim_tiny_pieces);
	tcase_add_test(tc, test_sim_max_item_one);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(flow_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed != 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
